"""Argument checks shared by the whole library: one set of rules for user input.

Each check returns the value in its canonical Python type, or raises
``ConfigError`` with a message that names the argument. The
rules are the same everywhere:

- an *integer* is a Python or NumPy integer (``True``/``False`` and floats such
  as ``2.0`` are refused);
- a *number* is a real Python or NumPy number, not a string and not a bool;
- a *choice* is one of a fixed set of strings; the error lists them;
- a *count* (steps, tasks, sizes) is at most `MAX_COUNT` (2**31 - 1, what a
  32-bit integer holds) unless a check says otherwise, so an absurd value is
  refused here, before anything is allocated or compiled.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable
from typing import Any

from l2l_jax.errors import ConfigError

#: The largest count (steps, tasks, a dimension) that the library accepts: 2**31 - 1.
MAX_COUNT = 2**31 - 1
#: The deepest nesting of lists and dicts accepted in options (``json_options``).
MAX_JSON_DEPTH = 64
#: The largest finite float32, the largest scale (a learning rate, a perturbation) the library accepts.
FLOAT32_MAX = 3.4028234663852886e38

__all__ = [
    "FLOAT32_MAX",
    "MAX_COUNT",
    "MAX_JSON_DEPTH",
    "boolean",
    "finite_float",
    "json_options",
    "name",
    "non_negative_float",
    "non_negative_int",
    "one_of",
    "positive_float",
    "positive_float32",
    "positive_int",
    "shallow",
]


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def positive_int(name: str, value: object, *, at_most: int | None = None) -> int:
    """``value`` as an ``int`` ≥ 1 (and ≤ ``at_most`` when given).

    Raises:
      ConfigError: naming ``name`` (and the limit), if ``value`` is not such an integer.
    """
    if not _is_integer(value) or int(value) < 1:  # type: ignore[call-overload]
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if at_most is not None and int(value) > at_most:  # type: ignore[call-overload]
        raise ConfigError(f"{name} must be at most {_limit(at_most)}, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def non_negative_int(name: str, value: object, *, below: int | None = None, at_most: int | None = None) -> int:
    """``value`` as an ``int`` ≥ 0 (and < ``below``, ≤ ``at_most`` when given).

    Raises:
      ConfigError: naming ``name``, if ``value`` is not such an integer.
    """
    if not _is_integer(value) or int(value) < 0 or (below is not None and int(value) >= below):  # type: ignore[call-overload]
        bound = "a non-negative integer" if below is None else f"an integer from 0 to {_limit(below - 1)}"
        raise ConfigError(f"{name} must be {bound}, got {value!r}")
    if at_most is not None and int(value) > at_most:  # type: ignore[call-overload]
        raise ConfigError(f"{name} must be at most {_limit(at_most)}, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def _limit(n: int) -> str:
    """``n`` as a message shows it: ``2**31 - 1 = 2147483647`` for powers of two (minus one)."""
    for offset, suffix in ((0, ""), (1, " - 1")):
        k = (n + offset).bit_length() - 1
        if k > 10 and n + offset == 2**k:
            return f"2**{k}{suffix} = {n}"
    return str(n)


def finite_float(name: str, value: object) -> float:
    """``value`` as a finite ``float``.

    Raises:
      ConfigError: naming ``name``, if ``value`` is not a number (strings and
        bools are refused) or is NaN or infinite.
    """
    if not _is_number(value):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    x = float(value)  # type: ignore[arg-type]
    if not math.isfinite(x):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return x


def positive_float(name: str, value: object) -> float:
    """``value`` as a finite ``float`` > 0.

    Raises:
      ConfigError: naming ``name``, if ``value`` is not a finite positive number.
    """
    if not _is_number(value) or not math.isfinite(float(value)) or float(value) <= 0:  # type: ignore[arg-type]
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def positive_float32(name: str, value: object) -> float:
    """``value`` as a ``float`` > 0 that float32 holds (at most `FLOAT32_MAX`).

    Raises:
      ConfigError: naming ``name``, if ``value`` is not such a number.
    """
    x = positive_float(name, value)
    if x > FLOAT32_MAX:
        raise ConfigError(f"{name} must be at most {FLOAT32_MAX:.4g} (float32's largest number), got {value!r}")
    return x


def non_negative_float(name: str, value: object) -> float:
    """``value`` as a finite ``float`` ≥ 0.

    Raises:
      ConfigError: naming ``name``, if ``value`` is not a finite non-negative number.
    """
    if not _is_number(value) or not math.isfinite(float(value)) or float(value) < 0:  # type: ignore[arg-type]
        raise ConfigError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def boolean(name: str, value: object) -> bool:
    """``value`` if it is ``True`` or ``False``.

    Raises:
      ConfigError: naming ``name``, for anything else (``0``, ``"yes"``, ...).
    """
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    return value


def one_of(name: str, value: object, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``.

    Raises:
      ConfigError: naming ``name`` and listing ``choices`` otherwise.
    """
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value


def name(what: str, value: object) -> str:
    """``value`` if it is a non-empty string.

    Raises:
      ConfigError: naming ``what`` otherwise.
    """
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty name, got {value!r}")
    return value


def json_options(what: str, value: object) -> dict[str, Any]:
    """``value`` if it is a dict of keyword options that JSON can store exactly.

    Raises:
      ConfigError: naming ``what``, if ``value`` is not a dict with string keys
        whose values are JSON values (no NaN or infinity), nested at most
        `MAX_JSON_DEPTH` lists or dicts deep.
    """
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{what} must be a dict of keyword options, got {value!r}")
    shallow(what, value)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{what} must hold JSON values (numbers, strings, lists, dicts): {e}") from None
    return value


def shallow(what: str, value: object) -> object:
    """``value`` if it nests lists, tuples and dicts at most `MAX_JSON_DEPTH` deep (anything else passes).

    Check a value that came from a file or the command line with this before
    printing or copying it: both recurse, and a deeply nested value would
    otherwise raise ``RecursionError``.

    Raises:
      ConfigError: naming ``what``, if ``value`` is nested deeper.
    """
    if _depth(value) > MAX_JSON_DEPTH:
        raise ConfigError(f"{what} is nested more than {MAX_JSON_DEPTH} lists or dicts deep")
    return value


def _depth(value: object) -> int:
    """How many lists, tuples or dicts deep ``value`` is nested, counted without recursion.

    Stops counting past ``MAX_JSON_DEPTH + 1`` and visits a container at most once
    per depth, so the cost is bounded by the size of ``value`` (cycles included).
    """
    deepest, stack, seen = 0, [(value, 1)], set()
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, (dict, list, tuple)) or (id(item), depth) in seen:
            continue
        seen.add((id(item), depth))
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children)
    return deepest
