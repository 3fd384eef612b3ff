"""The run directory format: every file of a meta-training run, and the only code that touches them.

Meta-training (``l2l_jax.meta.meta_train``), evaluation
(``l2l_jax.evaluation.evaluate_run``), ``l2l_jax.pretrained`` and the CLI
read and write run directories through this module.

Layout::

    config.json          the MetaTrainConfig of the run
    metrics.jsonl        one JSON object per logged meta-step
    checkpoint.msgpack   the whole training state, for exact resumption
    optimizer.json       the learned optimizer's architecture, task, figures and checksums
    optimizer.msgpack    its best meta-parameters φ (flax.serialization, no pickle)
    meta_training.png    meta-loss and validation curves
    evaluation.{json,md}, loss_curves.png   comparison with tuned baselines, if evaluated
    .lock                held (``flock``) by the one process writing the run

Guarantees:

* Every file is written to a temporary name and renamed, so an interruption
  never leaves a half-written file; temporary files left by a hard kill are
  removed when the directory is next opened for writing.
* Data files are verified when read: ``checkpoint.msgpack`` carries the SHA-256
  of its own payload and of ``metrics.jsonl`` as it was at that checkpoint;
  ``optimizer.json`` carries the SHA-256 of ``optimizer.msgpack`` and of its own
  content. A damaged file raises ``RunDirectoryError``
  naming it; it is never read half-way or trained through.
* Files are created with the permissions the user's umask gives.
* Nothing in a run directory is ever executed or imported.
* Writing never follows a symbolic link: files are created under fresh names
  (``O_EXCL``) and renamed, and ``.lock`` is opened with ``O_NOFOLLOW``. A
  ``.lock`` that l2l-jax did not write is never changed or removed.
* A file that cannot be written (read-only or full filesystem) raises
  ``OSError`` naming it, leaving the previous file intact.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from l2l_jax.errors import ConfigError, RunDirectoryBusyError, RunDirectoryError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.msgpack"
OPTIMIZER_META = "optimizer.json"
OPTIMIZER_PARAMS = "optimizer.msgpack"
PLOT = "meta_training.png"
EVALUATION_JSON = "evaluation.json"
EVALUATION_TABLE = "evaluation.md"
LOSS_CURVES_PLOT = "loss_curves.png"
LOCK = ".lock"
#: Everything a run writes; a fresh start removes all of it, so nothing stale survives.
RUN_FILES = (
    CONFIG,
    CHECKPOINT,
    METRICS,
    OPTIMIZER_PARAMS,
    OPTIMIZER_META,
    PLOT,
    EVALUATION_JSON,
    EVALUATION_TABLE,
    LOSS_CURVES_PLOT,
)
#: Version of the checkpoint and optimizer metadata formats written here.
FORMAT = 2
_CHECKSUMS = "sha256"


def sha256(data: bytes) -> str:
    """The hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _umask() -> int:
    """The process's umask, read without changing it where the OS allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temporary file and ``os.replace``.

    The temporary file is created exclusively (``O_EXCL | O_NOFOLLOW``) and
    renamed over ``path``, so no symbolic link is ever followed, and an error
    leaves the previous file intact. The file gets the permissions an ordinary
    ``open(path, "w")`` would give (``0o666`` less the umask).

    Raises:
      OSError: if the file cannot be written (read-only or full filesystem, no
        permission); its ``filename`` is ``path``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if hasattr(os, "fchmod"):  # On the open file: a name could be swapped for a link.
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            else:
                os.chmod(tmp, 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def _is_stray_temp(name: str) -> bool:
    """Whether ``name`` is a temporary file of ``write_atomic`` for one of the run's files."""
    return name.endswith(".tmp") and any(name.startswith(f".{f}.") for f in RUN_FILES)


def remove_stray_temp_files(run_path: Path) -> list[str]:
    """Removes temporary files that an interrupted ``write_atomic`` left; returns their names.

    Call it only while holding the directory's ``lock``.
    """
    removed = []
    for p in run_path.iterdir():
        if _is_stray_temp(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def user_files(run_path: Path) -> list[str]:
    """Names in ``run_path`` other than its lock and stray temporary files (sorted)."""
    if not run_path.is_dir():
        return []
    return sorted(p.name for p in run_path.iterdir() if p.name != LOCK and not _is_stray_temp(p.name))


#: What ``lock`` writes into a ``.lock`` file it created: ``l2l-jax`` and the holder's process id.
_LOCK_CONTENT = re.compile(rb"l2l-jax (\d+)\n")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _open_lock(path: Path) -> tuple[int, bool]:
    """``(fd, created)``: ``path`` created exclusively, or the regular file already there (never a link)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666), True
    except FileExistsError:
        pass
    flags = os.O_NONBLOCK | _NOFOLLOW  # O_NONBLOCK: opening a FIFO must not wait for a writer.
    try:
        try:
            fd = os.open(path, os.O_RDWR | flags)
        except PermissionError:
            fd = os.open(path, os.O_RDONLY | flags)  # flock needs no write access.
    except OSError as e:
        if e.errno == errno.ELOOP or path.is_symlink():
            raise RunDirectoryError(
                f"{path} is a symbolic link; l2l-jax never follows links in a run directory: remove it"
            ) from None
        if e.errno != errno.EISDIR:
            raise
        fd = None
    if fd is None or not stat.S_ISREG(os.fstat(fd).st_mode):
        if fd is not None:
            os.close(fd)
        raise RunDirectoryError(f"{path} is not a regular file; l2l-jax uses it as the directory's lock: remove it")
    return fd, False


def _holder(fd: int) -> int | None:
    """The process id written into a lock file by ``lock``, if it holds one."""
    match = _LOCK_CONTENT.fullmatch(os.pread(fd, 64, 0))
    return int(match.group(1)) if match else None


@contextlib.contextmanager
def lock(run_path: Path) -> Iterator[None]:
    """Holds an exclusive lock on a run directory (created if missing) for the ``with`` block.

    The lock is ``flock`` on ``run_path/.lock``, opened without following links.
    A ``.lock`` this function creates holds ``l2l-jax PID`` and is removed on
    release; one left by a killed l2l-jax process is taken over. Any other
    ``.lock`` (a user's own file) is locked as it is: never written, truncated
    or removed.

    Raises:
      RunDirectoryBusyError: at once, if another process holds it (naming that
        process where it is known).
      RunDirectoryError: if ``run_path`` exists and is not a directory, or its
        ``.lock`` is a symbolic link or not a regular file.
    """
    if run_path.exists() and not run_path.is_dir():
        raise RunDirectoryError(f"run directory {run_path} exists and is not a directory")
    run_path.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # No flock on this platform: no protection against a second writer.
        yield
        return
    path = run_path / LOCK
    for _ in range(100):  # Retried only while other processes remove the file under us.
        try:
            fd, created = _open_lock(path)
        except RunDirectoryError:  # A FileNotFoundError too, but not a race: a link or not a file.
            raise
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            who = f" (process {holder})" if holder is not None else ""
            raise RunDirectoryBusyError(
                f"{run_path} is in use by another l2l-jax process{who}; "
                "wait for it to finish or use another run directory"
            ) from None
        st = os.fstat(fd)
        try:
            current = os.lstat(path)
        except FileNotFoundError:
            current = None
        if current is None or (current.st_dev, current.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)  # Its holder removed it on release: lock the file now there.
            continue
        break
    else:
        raise RunDirectoryBusyError(f"{run_path}: could not lock {path}; it keeps being replaced")
    # Ours: created here, or left by a killed l2l-jax process (a single link holding ``l2l-jax PID``).
    writable = (fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE) == os.O_RDWR
    ours = created or (writable and st.st_nlink == 1 and _holder(fd) is not None)
    try:
        if ours:
            content = f"l2l-jax {os.getpid()}\n".encode()
            os.pwrite(fd, content, 0)
            os.ftruncate(fd, len(content))
        yield
    finally:
        try:
            if ours:  # Leave no trace; the next writer creates its own (or takes over one left here).
                with contextlib.suppress(OSError):
                    path.unlink()
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise RunDirectoryError(f"{path.parent} is not a complete run directory: {path.name} is missing")
    return path.read_bytes()


#: The deepest nesting of lists and objects accepted in a run directory's JSON or a JSON option.
MAX_JSON_DEPTH = 64


def json_depth(obj: Any) -> int:
    """How deeply lists and dicts nest in ``obj`` (0 for a scalar); computed without recursion."""
    depth, level = 0, [obj]
    while containers := [o for o in level if isinstance(o, (list, dict))]:
        depth += 1
        level = [c for o in containers for c in (o.values() if isinstance(o, dict) else o)]
    return depth


def parse_json(text: str | bytes) -> Any:
    """``json.loads(text)``, refusing values nested more than ``MAX_JSON_DEPTH`` deep.

    Raises:
      ValueError: if ``text`` is not JSON (``json.JSONDecodeError``) or nests too
        deeply; the message says which.
    """
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def read_json(path: Path) -> Any:
    """Reads a JSON file of a run directory, with a clear error if missing, corrupt or nested too deeply."""
    data = _read_bytes(path)
    try:
        return parse_json(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirectoryError(f"{path} is corrupt (not valid JSON: {e})") from None
    except ValueError as e:
        raise RunDirectoryError(f"{path} is corrupt (its JSON is {e})") from None


def _restore(path: Path, target: Any, data: bytes) -> Any:
    """``data`` restored into the structure of ``target``, shapes checked."""
    try:
        restored = serialization.from_bytes(target, data)
    except Exception as e:  # msgpack raises many kinds of errors on bad bytes.
        raise RunDirectoryError(f"{path} is corrupt or does not fit this optimizer/config: {e}") from None
    for (p, want), got in zip(jax.tree_util.tree_leaves_with_path(target), jax.tree_util.tree_leaves(restored)):
        if getattr(want, "shape", None) != getattr(got, "shape", None):
            raise RunDirectoryError(
                f"{path} does not fit: {jax.tree_util.keystr(p)} has shape "
                f"{getattr(got, 'shape', None)}, expected {getattr(want, 'shape', None)}"
            )
    return restored


# ----------------------------------------------------------------------------- metrics


def metrics_bytes(rows: list[dict[str, Any]]) -> bytes:
    """The contents of ``metrics.jsonl`` for ``rows`` (one JSON object per line)."""
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The logged rows of a metrics file, unverified (for reports and plots).

    Lines that are not JSON objects with an integer ``step`` (a torn last line
    after a hard kill) are skipped. Use ``load_checkpoint`` to read the
    metrics of a run that is to be resumed: that verifies them.
    """
    if not path.is_file():
        return []
    rows = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            row = parse_json(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def _parse_metrics(path: Path, data: bytes) -> list[dict[str, Any]]:
    rows = []
    for i, line in enumerate(data.decode("utf-8").splitlines()):
        try:
            row = parse_json(line)
        except ValueError as e:
            raise RunDirectoryError(f"{path} is corrupt: line {i + 1} is not a metrics row ({e})") from None
        if not (isinstance(row, dict) and isinstance(row.get("step"), int) and "meta_loss" in row):
            raise RunDirectoryError(f"{path} is corrupt: line {i + 1} is not a metrics row")
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- checkpoint


def save_checkpoint(run_path: Path, state: Any, history: list[dict[str, Any]]) -> None:
    """Writes ``metrics.jsonl`` for ``history``, then ``checkpoint.msgpack`` for ``state``.

    The checkpoint records the SHA-256 of its own payload and of the metrics file
    as written here, so ``load_checkpoint`` detects damage to either. A kill
    between the two writes leaves a metrics file that extends the checkpoint's;
    that is accepted, and the extra rows are dropped on resume.
    """
    metrics = metrics_bytes(history)
    write_atomic(run_path / METRICS, metrics)
    payload = serialization.to_bytes(jax.device_get(state))
    record = {
        "format": FORMAT,
        "state": payload,
        "state_sha256": sha256(payload),
        "metrics_bytes": len(metrics),
        "metrics_sha256": sha256(metrics),
    }
    write_atomic(run_path / CHECKPOINT, serialization.msgpack_serialize(record))


def load_checkpoint(run_path: Path, target: Any) -> tuple[Any, list[dict[str, Any]]]:
    """The verified state (in the structure of ``target``) and metrics rows of a checkpoint.

    Raises:
      RunDirectoryError: naming the file, if the checkpoint or the metrics file is
        missing, damaged, truncated, or does not fit ``target``.
    """
    path = run_path / CHECKPOINT
    data = _read_bytes(path)
    try:
        record = serialization.msgpack_restore(data)
    except Exception:  # msgpack raises many kinds of errors on bad bytes.
        record = None
    payload = record.get("state") if isinstance(record, dict) and record.get("format") == FORMAT else None
    if not isinstance(payload, bytes):
        raise RunDirectoryError(f"{path} is corrupt (not a checkpoint of this l2l-jax version)")
    if sha256(payload) != record.get("state_sha256"):
        raise RunDirectoryError(f"{path} is corrupt: its checksum does not match its contents")
    state = _restore(path, target, payload)

    metrics_path = run_path / METRICS
    n = record.get("metrics_bytes")
    data = metrics_path.read_bytes() if metrics_path.is_file() else None
    if data is None and n:
        raise RunDirectoryError(f"{metrics_path} is missing; the checkpoint expects {n} bytes of metrics")
    data = (data or b"")[: n if isinstance(n, int) else 0]
    if len(data) != n or sha256(data) != record.get("metrics_sha256"):
        raise RunDirectoryError(
            f"{metrics_path} is damaged (truncated or changed since the checkpoint); "
            "restore it, or start over with overwrite=True (--overwrite)"
        )
    try:
        rows = _parse_metrics(metrics_path, data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunDirectoryError(f"{metrics_path} is corrupt: {e}") from None
    return state, rows


# ----------------------------------------------------------------------------- optimizer


def _canonical(meta: dict[str, Any]) -> bytes:
    core = {k: v for k, v in meta.items() if k != _CHECKSUMS}
    return json.dumps(core, sort_keys=True, separators=(",", ":")).encode()


def _check_finite(path: Path, tree: Any) -> None:
    for p, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not np.all(np.isfinite(np.asarray(leaf))):
            raise RunDirectoryError(
                f"{path} holds non-finite meta-parameters ({jax.tree_util.keystr(p)} has NaN or inf); "
                "refusing to load them"
            )


def save_optimizer(directory: Path, meta: dict[str, Any], meta_params: Any) -> None:
    """Writes ``optimizer.msgpack`` (φ) and ``optimizer.json`` (``meta`` plus checksums)."""
    payload = serialization.to_bytes(jax.device_get(meta_params))
    write_atomic(directory / OPTIMIZER_PARAMS, payload)
    meta = {**meta, "format": FORMAT}
    write_json(directory / OPTIMIZER_META, _with_checksums(meta, sha256(payload)))


def _with_checksums(meta: dict[str, Any], params_sha: str) -> dict[str, Any]:
    meta = {k: v for k, v in meta.items() if k != _CHECKSUMS}
    return {**meta, _CHECKSUMS: {OPTIMIZER_PARAMS: params_sha, OPTIMIZER_META: sha256(_canonical(meta))}}


def read_optimizer_meta(directory: Path, *, allow_unverified: bool = False) -> dict[str, Any]:
    """The verified metadata of a trained optimizer (``optimizer.json``).

    Args:
      directory: a run directory or a shipped optimizer's folder.
      allow_unverified: accept a file without checksums (written by l2l-jax
        before they were added, or with them removed), with a warning. Its φ
        (``optimizer.msgpack``) then cannot be verified either.

    Raises:
      RunDirectoryError: if it is missing, not a JSON object, has no checksums
        (unless ``allow_unverified``), or its content does not match its checksum.
    """
    path = directory / OPTIMIZER_META
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise RunDirectoryError(f"{path} is corrupt: not a JSON object")
    sums = meta.get(_CHECKSUMS)
    if sums is None:
        if not allow_unverified:
            raise RunDirectoryError(
                f"{path} has no checksums, so it and {OPTIMIZER_PARAMS} cannot be verified (written by an "
                "older l2l-jax, or edited); if you trust them, load with allow_unverified=True"
            )
        warnings.warn(f"{path} has no checksums; loading it unverified", stacklevel=2)
        return meta
    if (
        not isinstance(sums, dict)
        or not isinstance(sums.get(OPTIMIZER_PARAMS), str)
        or sums.get(OPTIMIZER_META) != sha256(_canonical(meta))
    ):
        raise RunDirectoryError(f"{path} is corrupt or was edited: its checksum does not match its contents")
    return meta


def update_optimizer_meta(directory: Path, **fields: Any) -> dict[str, Any]:
    """Adds or replaces ``fields`` in a verified ``optimizer.json`` (φ unchanged); returns the new metadata."""
    meta = read_optimizer_meta(directory)
    sums = meta.get(_CHECKSUMS) or {}
    params_sha = sums.get(OPTIMIZER_PARAMS) or sha256(_read_bytes(directory / OPTIMIZER_PARAMS))
    new = _with_checksums({**meta, **fields}, params_sha)
    write_json(directory / OPTIMIZER_META, new)
    return new


def optimizer_params_sha256(directory: Path) -> str:
    """The SHA-256 of a trained optimizer's φ file (``optimizer.msgpack``) as it is on disk."""
    return sha256(_read_bytes(directory / OPTIMIZER_PARAMS))


def load_optimizer_params(directory: Path, target: Any, meta: dict[str, Any]) -> Any:
    """φ from ``optimizer.msgpack``, verified against ``meta``'s checksum and for finiteness.

    ``meta`` is what ``read_optimizer_meta`` returned; if that had no checksums
    (accepted only with ``allow_unverified``), φ is checked for fit and finiteness only.

    Raises:
      RunDirectoryError: if the file is missing, damaged, does not fit ``target``,
        or holds NaN or infinite values.
    """
    path = directory / OPTIMIZER_PARAMS
    data = _read_bytes(path)
    expected = (meta.get(_CHECKSUMS) or {}).get(OPTIMIZER_PARAMS)
    if expected is not None and sha256(data) != expected:
        raise RunDirectoryError(f"{path} is corrupt: its checksum does not match the one in {OPTIMIZER_META}")
    params = _restore(path, target, data)
    _check_finite(path, params)
    return params


def _json_value(obj: Any) -> Any:
    """``obj`` as JSON stores it (tuples become lists)."""
    return json.loads(json.dumps(obj))


def config_differences(
    saved: Any,
    config: dict[str, Any],
    may_differ: Iterable[str] = (),
    migrate: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> list[str] | None:
    """The options in which a saved config differs from ``config``.

    Args:
      saved: the contents of a run's ``config.json``.
      config: the config of the run being started, as a dict.
      may_differ: options allowed to differ (e.g. the run's length).
      migrate: brings a config written by an earlier version to today's fields
        (options added since, options renamed or moved).

    Returns:
      The sorted names of the differing options, or ``None`` if ``saved`` is not
      a config at all (not a JSON object).
    """
    if not isinstance(saved, dict):
        return None
    mine = _json_value(config)
    saved = _json_value(migrate(saved) if migrate is not None else saved)
    allowed = set(may_differ)
    return sorted(k for k in set(saved) | set(mine) if k not in allowed and saved.get(k) != mine.get(k))


def open_for_training(
    run_path: Path,
    config: dict[str, Any],
    fresh: Any,
    *,
    resume: bool,
    overwrite: bool,
    may_differ: Iterable[str] = (),
    migrate: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """Restores the checkpoint of a run of ``config``, or starts a new run where that loses nothing.

    Call it with the directory's ``lock`` held. A new run starts only in an
    empty directory, one holding just this config (a run killed before its first
    checkpoint), or anywhere with ``overwrite`` (which replaces the run's files
    and keeps others). Resuming rewrites ``config.json`` (its allowed differences,
    e.g. a longer run, are taken) and removes evaluation files that describe an
    earlier φ.

    Args:
      run_path: the run directory.
      config: the run's config as a dict (``l2l_jax.meta.MetaTrainConfig.to_dict``).
      fresh: the initial training state; also the target that a checkpoint is restored into.
      resume: resume from a checkpoint if there is one.
      overwrite: start a new run whatever the directory holds.
      may_differ: config options in which a resumed run may differ from the saved one.
      migrate: brings a saved config to today's fields (see ``config_differences``).

    Returns:
      ``(state, history)``: the restored state and metrics rows, or ``(fresh, [])``.

    Raises:
      RunDirectoryError: if the directory holds other files or another run (without
        ``overwrite``), or a damaged file.
      ConfigError: if it holds a checkpoint of a run with a different config.
    """
    remove_stray_temp_files(run_path)
    files = user_files(run_path)
    differ = None
    if CONFIG in files and not overwrite:
        differ = config_differences(read_json(run_path / CONFIG), config, may_differ, migrate)
        if differ is None:
            raise RunDirectoryError(f"{run_path / CONFIG} is corrupt: not a JSON object")
    if not overwrite and resume and CHECKPOINT in files:
        if differ is None:
            raise RunDirectoryError(f"{run_path} holds a checkpoint but no {CONFIG}; it cannot be resumed")
        if differ:
            raise ConfigError(
                f"{run_path} holds a run with a different configuration ({', '.join(differ)} differ); "
                "use another run directory, or --overwrite (overwrite=True) to replace that run"
            )
        state, history = load_checkpoint(run_path, fresh)
        step = int(state.step)
        history = [r for r in history if r["step"] <= step]
        write_json(run_path / CONFIG, _json_value(config))
        if step < config["num_meta_steps"]:
            for name in (EVALUATION_JSON, EVALUATION_TABLE, LOSS_CURVES_PLOT):
                (run_path / name).unlink(missing_ok=True)
        return state, history
    same_run = differ == [] and (not resume or files == [CONFIG])
    if files and not (overwrite or same_run):
        foreign = [f for f in files if f not in RUN_FILES]
        if foreign:
            listed = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            why = f"it holds files that meta-training did not write ({listed})"
        elif differ:
            why = f"it holds a run with a different configuration ({', '.join(differ)} differ)"
        else:
            why = f"it holds a run with no checkpoint to resume ({', '.join(files)})"
        raise RunDirectoryError(
            f"refusing to start a new run in {run_path}: {why}; use another run directory, "
            "or --overwrite (overwrite=True) to replace its run files"
        )
    for name in RUN_FILES:
        (run_path / name).unlink(missing_ok=True)
    write_json(run_path / CONFIG, _json_value(config))
    return fresh, []


def save_trained_optimizer(run_path: Path, meta: dict[str, Any], meta_params: Any) -> None:
    """Saves a run's current best φ and its metadata (see ``save_optimizer``).

    Fields that evaluation added to the previous ``optimizer.json`` are kept when
    they describe the same φ (same ``best_step`` and ``meta_steps``) and dropped
    otherwise.

    Args:
      run_path: the run directory.
      meta: the metadata; must hold ``best_step`` and ``meta_steps``.
      meta_params: φ.
    """
    old: dict[str, Any] = {}
    if (run_path / OPTIMIZER_META).is_file():
        try:
            old = read_optimizer_meta(run_path)
        except RunDirectoryError:
            old = {}
    if old.get("best_step") != meta["best_step"] or old.get("meta_steps") != meta["meta_steps"]:
        old = {}
    save_optimizer(run_path, {**old, **meta}, meta_params)


def save_evaluation(run_path: Path, results: dict[str, Any], table: str, rows: list[dict[str, Any]]) -> None:
    """Writes an evaluation of the run's optimizer.

    Writes ``evaluation.json`` and ``evaluation.md``, and adds ``rows`` to ``optimizer.json``.

    Args:
      run_path: the run directory.
      results: everything the evaluation measured (JSON values).
      table: the Markdown table.
      rows: the summary rows to record in ``optimizer.json`` under ``evaluation``.
    """
    write_json(run_path / EVALUATION_JSON, results)
    write_atomic(run_path / EVALUATION_TABLE, (table + "\n").encode())
    update_optimizer_meta(run_path, evaluation=rows)
