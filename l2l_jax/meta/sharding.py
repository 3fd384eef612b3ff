"""Spreading the batch of tasks over devices: data parallelism for meta-training.

φ and the meta-optimizer state are small: every device keeps a full copy. The inner
runs (each task's θ, optimizer state, keys) are split along their leading task axis
over a one-dimensional mesh named ``"tasks"``. ``jax.jit`` then runs each device's
share of the ``vmap``-ed unroll locally and averages the meta-gradient with
all-reduces (one per meta-step for ES and PES; one per inner step for truncated
BPTT, whose φ gradient XLA reduces inside the backward loop); the numbers are
those of one device, up to float reassociation.

Several processes (``jax.distributed``): the mesh spans every process's devices,
each process places its own share of the state, and process 0 alone writes the
run directory (see the guide page "Meta-training on several hosts").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from l2l_jax.errors import ConfigError

PyTree = Any
TASK_AXIS = "tasks"


def task_mesh(devices: int | Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"tasks"``.

    Args:
      devices: ``None`` for all devices (of every host), a number for the first
        that many, or an explicit list.
    """
    all_devices = jax.devices()
    if devices is None:
        chosen = all_devices
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(all_devices):
            raise ConfigError(f"devices must be between 1 and {len(all_devices)} (the devices present), got {devices}")
        chosen = all_devices[:devices]
    else:
        chosen = list(devices)
        if not chosen:
            raise ConfigError("devices is an empty list")
    return Mesh(np.asarray(chosen), (TASK_AXIS,))


def check_divisible(batch_size: int, mesh: Mesh) -> None:
    """Raises ``ConfigError`` unless the tasks split evenly over the mesh."""
    n = mesh.devices.size
    if batch_size % n:
        raise ConfigError(
            f"batch_size={batch_size} tasks cannot be split evenly over {n} devices; "
            f"use a multiple of {n}, or fewer devices (devices=...)"
        )


def task_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (task) axis split over the mesh, the rest whole."""
    return NamedSharding(mesh, PartitionSpec(TASK_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def shard_tasks(tree: PyTree, mesh: Mesh) -> PyTree:
    """Places every leaf (leading axis = tasks) split over the mesh."""
    return put(tree, task_sharding(mesh))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Places every leaf whole on every device of the mesh."""
    return put(tree, replicated(mesh))


def put(tree: PyTree, sharding: jax.sharding.Sharding) -> PyTree:
    """``jax.device_put(tree, sharding)``; over several processes, each places its shards of the (same) whole value."""
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)

    def place(x: Any) -> jax.Array:
        whole = np.asarray(x)
        return jax.make_array_from_callback(whole.shape, sharding, lambda index: whole[index])

    return jax.tree.map(place, tree)
