"""Text that every Python installation carries: the source of a fixed list of standard-library modules.

The character-level language model task (``l2l_jax.tasks.char_lm``) trains on
this text, so it needs no download and no file shipped with the package. The
price is that the text is the installed Python's: it differs slightly between
Python versions, so whoever records an experiment records ``text_record``
(the number of characters and their SHA-256) along with it.

Every problem reading the text raises `l2l_jax.errors.DataError`.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from l2l_jax.errors import DataError

#: The standard-library modules whose source files make the text, in this order.
STDLIB_MODULES: tuple[str, ...] = (
    "textwrap",
    "string",
    "json",
    "json.decoder",
    "json.encoder",
    "shlex",
    "heapq",
    "fractions",
    "functools",
)

#: Byte values below this are their own token; the vocabulary is 0 .. VOCAB_SIZE - 1.
VOCAB_SIZE = 128

#: The token of every byte ≥ ``VOCAB_SIZE`` (non-ASCII); NUL does not occur in source text.
UNKNOWN_ID = 0


def _source_path(module: str) -> Path:
    """The source file of ``module``, found without importing it (its parent package is imported)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as e:
        raise DataError(f"cannot find the standard-library module {module!r}: {e}") from None
    if spec is None or not spec.has_location or not spec.origin or not spec.origin.endswith(".py"):
        raise DataError(
            f"the standard-library module {module!r} has no Python source file in this installation "
            f"(origin: {getattr(spec, 'origin', None)!r}); the character-level task needs it"
        )
    return Path(spec.origin)


def stdlib_source(modules: Sequence[str] = STDLIB_MODULES) -> bytes:
    """The source files of ``modules``, read as bytes and concatenated in order.

    Args:
      modules: importable module names (a package stands for its ``__init__.py``).

    Returns:
      The bytes of the files, one after the other.

    Raises:
      DataError: if a module cannot be found, has no ``.py`` source file (a frozen,
        built-in or byte-code-only module), or its file cannot be read.
    """
    parts = []
    for module in modules:
        path = _source_path(module)
        try:
            parts.append(path.read_bytes())
        except OSError as e:
            raise DataError(f"cannot read the source of {module!r} at {path}: {e}") from None
    return b"".join(parts)


def byte_tokens(text: bytes) -> np.ndarray:
    """``text`` as tokens: each ASCII byte is its own id, every other byte is ``UNKNOWN_ID``.

    Returns:
      A uint8 array of ``len(text)`` ids in ``[0, VOCAB_SIZE)``.
    """
    ids = np.frombuffer(text, dtype=np.uint8)
    return np.where(ids < VOCAB_SIZE, ids, UNKNOWN_ID).astype(np.uint8)


def text_record(dataset: str, text: bytes) -> dict[str, Any]:
    """What the text was, without where it lay: a name, its length in bytes and its SHA-256.

    Args:
      dataset: a description of the text (e.g. which modules).
      text: the raw bytes, before ``byte_tokens``.
    """
    return {"dataset": dataset, "characters": len(text), "sha256": hashlib.sha256(text).hexdigest()}
