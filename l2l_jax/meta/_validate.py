"""Validating φ during meta-training: full runs on held-out tasks, started once from the initial φ."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from l2l_jax.meta import sharding as sh
from l2l_jax.meta._devices import place_runs
from l2l_jax.meta.unroll import InnerState, init_inner, unroll, weighted_loss
from l2l_jax.optimizers.base import LearnedOptimizer, MetaParams
from l2l_jax.tasks.base import TaskFamily


def validation_loss(
    optimizer: LearnedOptimizer,
    meta_params: MetaParams,
    family: TaskFamily,
    inner: InnerState,
    num_steps: int,
    weighting: str,
) -> jax.Array:
    """Mean meta-loss of full ``num_steps`` runs from ``inner`` (no gradient in φ)."""
    tx = optimizer.as_optax(meta_params)

    def one(s: InnerState) -> jax.Array:
        _, _, losses = unroll(
            tx, lambda p, k: family.loss(s.task_params, p, k), s.params, s.opt_state, s.key, num_steps
        )
        return weighted_loss(losses, weighting)

    return jnp.mean(jax.vmap(one)(inner))


def validator(
    optimizer: LearnedOptimizer,
    parts: Sequence[tuple[TaskFamily, int, float]],
    meta_params: MetaParams,
    key: jax.Array,
    *,
    num_steps: int,
    weighting: str,
    mesh: sh.Mesh | None,
) -> Callable[[MetaParams], jax.Array]:
    """The compiled validation of φ: the weighted mean meta-loss of full runs on held-out tasks.

    The runs start from ``meta_params`` (the run's initial φ, so a resumed run
    validates on exactly the same states) and from ``key`` (folded with each
    member's index when there are several).

    Args:
      optimizer: the learned optimizer.
      parts: ``(family, num_tasks, weight)`` per member (one without a mixture).
      meta_params: φ that the runs' optimizer state starts from.
      key: the key of the held-out tasks.
      num_steps: the inner steps of each run.
      weighting: the meta-loss's weighting (``l2l_jax.meta.weighted_loss``).
      mesh: the devices the tasks are split over (``None``: the default device).

    Returns:
      ``validate(φ)``, returning a scalar from one compiled call.
    """
    keys = [key] if len(parts) == 1 else [jax.random.fold_in(key, k) for k in range(len(parts))]
    inners = [_runs(optimizer, f, meta_params, k, n, mesh) for (f, n, _), k in zip(parts, keys)]

    @jax.jit
    def loss(phi: MetaParams, inners: list[InnerState]) -> jax.Array:
        losses = [
            validation_loss(optimizer, phi, f, inner, num_steps, weighting) for (f, _, _), inner in zip(parts, inners)
        ]
        return losses[0] if len(losses) == 1 else sum(w * x for (_, _, w), x in zip(parts, losses))

    def validate(phi: MetaParams) -> jax.Array:
        # The runs are an argument, not a constant: over several processes each holds only its share.
        return loss(phi, inners)

    return validate


def _runs(
    optimizer: LearnedOptimizer,
    family: TaskFamily,
    meta_params: MetaParams,
    key: jax.Array,
    num_tasks: int,
    mesh: sh.Mesh | None,
) -> InnerState:
    """``num_tasks`` fresh runs of ``family`` from ``key``, placed on the mesh."""
    inner = jax.jit(lambda phi, key: init_inner(optimizer, phi, family, key, num_tasks))(meta_params, key)
    return place_runs(inner, num_tasks, mesh)
