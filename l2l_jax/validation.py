"""Argument checks shared by the whole library: one set of rules for user input.

Each check returns the value in its canonical Python type, or raises
``ConfigError`` with a message that names the argument. The
rules are the same everywhere:

- an *integer* is a Python or NumPy integer (``True``/``False`` and floats such
  as ``2.0`` are refused);
- a *number* is a real Python or NumPy number, not a string and not a bool;
- a *choice* is one of a fixed set of strings; the error lists them.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable
from typing import Any

from l2l_jax.errors import ConfigError

__all__ = [
    "boolean",
    "finite_float",
    "json_options",
    "name",
    "non_negative_float",
    "non_negative_int",
    "one_of",
    "positive_float",
    "positive_int",
]


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def positive_int(name: str, value: object) -> int:
    """``value`` as an ``int`` ≥ 1.

    Raises:
      ConfigError: naming ``name``, if ``value`` is not an integer ≥ 1.
    """
    if not _is_integer(value) or int(value) < 1:  # type: ignore[call-overload]
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def non_negative_int(name: str, value: object, *, below: int | None = None) -> int:
    """``value`` as an ``int`` ≥ 0 (and < ``below`` when given).

    Raises:
      ConfigError: naming ``name``, if ``value`` is not such an integer.
    """
    if not _is_integer(value) or int(value) < 0 or (below is not None and int(value) >= below):  # type: ignore[call-overload]
        bound = "a non-negative integer" if below is None else f"an integer from 0 to {below - 1}"
        raise ConfigError(f"{name} must be {bound}, got {value!r}")
    return int(value)  # type: ignore[call-overload]


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
        whose values are JSON values (no NaN or infinity).
    """
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{what} must be a dict of keyword options, got {value!r}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{what} must hold JSON values (numbers, strings, lists, dicts): {e}") from None
    return value
