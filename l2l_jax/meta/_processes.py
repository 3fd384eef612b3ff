"""Meta-training over several processes of one ``jax.distributed`` job: one writer, shared outcomes and stops.

Every process runs the same meta-training over a mesh of every process's devices.
Process 0 alone touches the run directory; the others receive what it read and
learn whether its writes succeeded. The helpers that exchange data (``together``,
``on_writer``, ``check_same``, ``broadcast_bytes``, ``gather``, ``agreed_stop``)
are collectives: every process calls them at the same point of the run, or the
job waits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

from l2l_jax.errors import ConfigError, MetaTrainingError
from l2l_jax.meta import sharding as sh

T = TypeVar("T")
_MESSAGE_BYTES = 1024


def several() -> bool:
    """Whether this is one of several processes of a ``jax.distributed`` job."""
    return jax.process_count() > 1


def is_writer() -> bool:
    """Whether this process writes the run directory (process 0)."""
    return jax.process_index() == 0


def check_mesh(mesh: sh.Mesh | None, batch_sizes: list[int]) -> None:
    """Raises ``ConfigError`` unless the tasks are split over devices of every process.

    Args:
      mesh: the run's mesh (``None``: tasks on one device).
      batch_sizes: the tasks of each member of the meta-step.
    """
    processes = jax.process_count()
    devices = len(jax.devices())
    if mesh is None:
        raise ConfigError(
            f"meta-training over {processes} processes splits the tasks over the devices of every process: "
            f"the tasks of a meta-step ({_tasks(batch_sizes)}) must split evenly over devices of every process "
            f"(devices=None: all {devices})"
        )
    missing = set(range(processes)) - {d.process_index for d in mesh.devices.flat}
    if missing:
        raise ConfigError(
            f"devices= leaves out every device of process(es) {sorted(missing)}: over several processes, "
            "each must hold some of the tasks; pass devices=None or a list with devices of every process"
        )


def _tasks(batch_sizes: list[int]) -> str:
    """``"8"``, or ``"2 + 6 of the mixture's members"``."""
    if len(batch_sizes) == 1:
        return str(batch_sizes[0])
    return " + ".join(map(str, batch_sizes)) + " of the mixture's members"


def together(fn: Callable[[], T]) -> T:
    """``fn()`` in every process, raising in every process if it failed in any (see ``_shared``)."""
    return _shared(fn, run_here=True)  # type: ignore[return-value]


def on_writer(fn: Callable[[], T]) -> T | None:
    """``fn()`` in process 0 only (``None`` elsewhere), raising in every process if it failed (see ``_shared``)."""
    return _shared(fn, run_here=is_writer())


def _shared(fn: Callable[[], T], *, run_here: bool) -> T | None:
    """Runs ``fn`` here if ``run_here``; then every process learns whether it failed anywhere.

    The process where ``fn`` raised (anything, a ``KeyboardInterrupt`` included)
    re-raises its own exception; the others raise ``MetaTrainingError`` naming
    that process and its error, so no process goes on to wait for a peer that has
    stopped.
    """
    result, error = None, None
    if run_here:
        try:
            result = fn()
        except BaseException as e:  # Shared with the peers, then re-raised below.
            error = e
    text = "" if error is None else f"{type(error).__name__}: {error}"
    data = text.encode()[:_MESSAGE_BYTES]
    mine = np.zeros(_MESSAGE_BYTES + 1, np.uint8)
    mine[0] = error is not None
    mine[1 : 1 + len(data)] = np.frombuffer(data, np.uint8)
    everyone = np.asarray(multihost_utils.process_allgather(mine))
    if error is not None:
        raise error
    for index, row in enumerate(everyone):
        if row[0]:
            message = bytes(row[1:]).rstrip(b"\0").decode(errors="replace")
            raise MetaTrainingError(f"process {index} of the meta-training job failed, so this one stops: {message}")
    return result


def check_same(label: str, value: Any) -> None:
    """Raises ``ConfigError`` on every process unless ``value`` (JSON-able) is the same on all of them."""
    digest = np.frombuffer(hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).digest(), np.uint8)
    everyone = np.asarray(multihost_utils.process_allgather(digest))
    differ = [i for i, row in enumerate(everyone) if not np.array_equal(row, everyone[0])]
    if differ:
        raise ConfigError(
            f"process(es) {differ} of the job were started with other settings than process 0 ({label}); "
            "start every process with the same ones"
        )


def broadcast_bytes(data: bytes | None) -> bytes:
    """Process 0's ``data`` on every process (the others pass ``None``)."""
    size = np.frombuffer((0 if data is None else len(data)).to_bytes(8, "little"), np.uint8).copy()
    size = int.from_bytes(bytes(np.asarray(multihost_utils.broadcast_one_to_all(size), np.uint8)), "little")
    if size == 0:
        return b""
    payload = np.zeros(size, np.uint8) if data is None else np.frombuffer(data, np.uint8).copy()
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(payload), np.uint8))


def gather(tree: Any) -> Any:
    """Every leaf's whole value as a NumPy array on every process (split leaves are gathered)."""
    leaves, treedef = jax.tree.flatten(tree)
    out = []
    split = []
    for i, x in enumerate(leaves):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                x = x.addressable_data(0)
            else:
                split.append(i)
        out.append(x)
    whole = multihost_utils.process_allgather([leaves[i] for i in split], tiled=True) if split else []
    for i, x in zip(split, whole):
        out[i] = x
    return jax.tree.unflatten(treedef, [np.asarray(x) for x in out])


@contextlib.contextmanager
def peer_failures(run_path: Any) -> Iterator[None]:
    """Turns a failed computation or collective of the job (``JaxRuntimeError``) into ``MetaTrainingError``."""
    try:
        yield
    except jax.errors.JaxRuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = f" from process 0's last checkpoint in {run_path}" if run_path is not None else ""
        raise MetaTrainingError(
            f"meta-training over {jax.process_count()} processes failed in a computation or a collective "
            f"(did a process of the job stop?): {first}. Start every process again to resume{where}"
        ) from e


def agreed_stop(requested: int) -> int:
    """The signal that any process was asked to stop by (the largest number; 0: none)."""
    return int(np.max(np.asarray(multihost_utils.process_allgather(np.asarray(requested, np.int32)))))
