"""A run directory: what meta-training writes and what :func:`l2l_jax.pretrained.load` reads.

Layout::

    config.json          the MetaTrainConfig of the run
    metrics.jsonl        one JSON object per logged meta-step
    checkpoint.msgpack   the whole training state, for exact resumption
    optimizer.json       the learned optimizer's architecture, task and figures
    optimizer.msgpack    its best meta-parameters φ (flax.serialization, no pickle)
    meta_training.png    meta-loss and validation curves
    evaluation.{json,md}, loss_curves.png   comparison with tuned baselines, if evaluated

Files are written to a temporary name and renamed, so an interruption never
leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
from flax import serialization

from l2l_jax.errors import RunDirectoryError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.msgpack"
OPTIMIZER_META = "optimizer.json"
OPTIMIZER_PARAMS = "optimizer.msgpack"
PLOT = "meta_training.png"
EVALUATION_JSON = "evaluation.json"
EVALUATION_TABLE = "evaluation.md"
LOSS_CURVES_PLOT = "loss_curves.png"
#: Everything a run writes; a fresh start removes all of it, so nothing stale survives.
RUN_FILES = (CHECKPOINT, METRICS, OPTIMIZER_PARAMS, OPTIMIZER_META, PLOT, EVALUATION_JSON, EVALUATION_TABLE, LOSS_CURVES_PLOT)


def write_atomic(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    """Reads a JSON file of a run directory, with a clear error if missing or corrupt."""
    if not path.is_file():
        raise RunDirectoryError(f"{path.parent} is not a complete run directory: {path.name} is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirectoryError(f"{path} is corrupt (not valid JSON: {e})") from None


def save_tree(path: Path, tree: Any) -> None:
    """Saves a pytree of arrays with flax's msgpack serialization, atomically."""
    write_atomic(path, serialization.to_bytes(jax.device_get(tree)))


def load_tree(path: Path, target: Any) -> Any:
    """Loads a pytree saved by :func:`save_tree` into the structure of ``target``.

    Raises:
      RunDirectoryError: if the file is missing, corrupt, or does not fit ``target``.
    """
    if not path.is_file():
        raise RunDirectoryError(f"{path.parent} is not a complete run directory: {path.name} is missing")
    try:
        restored = serialization.from_bytes(target, path.read_bytes())
    except Exception as e:  # msgpack raises many kinds of errors on bad bytes.
        raise RunDirectoryError(f"{path} is corrupt or does not fit this optimizer/config: {e}") from None
    for (p, want), got in zip(
        jax.tree_util.tree_leaves_with_path(target), jax.tree_util.tree_leaves(restored)
    ):
        if getattr(want, "shape", None) != getattr(got, "shape", None):
            raise RunDirectoryError(
                f"{path} does not fit: {jax.tree_util.keystr(p)} has shape "
                f"{getattr(got, 'shape', None)}, expected {getattr(want, 'shape', None)}"
            )
    return restored


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The logged rows; unreadable lines (a torn last line after a hard kill) are skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    """Writes the logged rows (one JSON object per line), atomically."""
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows).encode())
