"""Where a meta-training run's tasks live: the mesh they are split over, and the state placed on it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

from l2l_jax.errors import ConfigError
from l2l_jax.meta import sharding as sh
from l2l_jax.meta.step import MetaTrainState


def task_mesh(
    devices: int | Sequence[jax.Device] | None, batch_sizes: Sequence[int], tasks_per_chunk: int | None
) -> sh.Mesh | None:
    """The mesh to split tasks over, or ``None`` to stay on the default device.

    ``batch_sizes``: the tasks of each member of the meta-step (one entry without a mixture).

    Raises:
      ConfigError: if given ``devices`` cannot split every member's tasks, or ``tasks_per_chunk``, evenly.
    """
    if devices is None:
        n = len(jax.devices())
        if n == 1 or any(b % n for b in batch_sizes) or any((tasks_per_chunk or b) % n for b in batch_sizes):
            return None
    mesh = sh.task_mesh(devices)
    for b in batch_sizes:
        sh.check_divisible(b, mesh)
    if tasks_per_chunk is not None and tasks_per_chunk % mesh.devices.size:
        n = mesh.devices.size
        raise ConfigError(
            f"tasks_per_chunk={tasks_per_chunk} tasks cannot be split evenly over {n} devices; "
            f"use a multiple of {n}, fewer devices (devices=...), or tasks_per_chunk=None"
        )
    return mesh if mesh.devices.size > 1 else None


def place(state: MetaTrainState, mesh: sh.Mesh) -> MetaTrainState:
    """Tasks split over the mesh; φ, its optimizer state and counters on every device."""
    inner = state.inner
    state = sh.replicate(state._replace(inner=()), mesh)
    return state._replace(inner=sh.shard_tasks(inner, mesh))


def place_runs(inner: Any, num_tasks: int, mesh: sh.Mesh | None) -> Any:
    """``num_tasks`` runs split over the mesh if they divide evenly, else on every device (as is without a mesh)."""
    if mesh is None:
        return inner
    return sh.shard_tasks(inner, mesh) if num_tasks % mesh.devices.size == 0 else sh.replicate(inner, mesh)


def task_constraint(mesh: sh.Mesh | None) -> Callable[[Any], Any] | None:
    """The sharding constraint for restarted inner runs inside a compiled call (``None`` without a mesh)."""
    if mesh is None:
        return None
    return lambda inner: jax.lax.with_sharding_constraint(inner, sh.task_sharding(mesh))
