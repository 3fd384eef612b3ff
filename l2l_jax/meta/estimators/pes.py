"""Persistent evolution strategies (PES) with antithetic pairs: unbiased over the whole run."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from l2l_jax.meta.estimators import _antithetic as at
from l2l_jax.meta.estimators.base import Estimate, GradientEstimator
from l2l_jax.meta.unroll import InnerState, Weighting
from l2l_jax.optimizers.base import LearnedOptimizer, MetaParams
from l2l_jax.tasks.base import TaskFamily


class PESState(NamedTuple):
    """PES's state; every leaf has leading axes ``(tasks, pairs)``.

    Attributes:
      positive: each pair's run driven by φ + ε at every truncation.
      negative: each pair's run driven by φ − ε.
      accumulated: Σ ε over the truncations of the current runs (zero at a restart).
    """

    positive: InnerState
    negative: InnerState
    accumulated: MetaParams


def truncated_pes(
    optimizer: LearnedOptimizer,
    family: TaskFamily,
    *,
    batch_size: int,
    truncation: int,
    sigma: float = 0.01,
    num_pairs: int = 1,
    weighting: Weighting = "uniform",
    tasks_per_chunk: int | None = None,
) -> GradientEstimator:
    """Truncated antithetic PES: each pair keeps its two runs and the sum of its perturbations.

    Every truncation draws ε ~ N(0, σ² I) per pair; the positive run continues with
    φ + ε and the negative run with φ − ε, and the pair adds ε to its accumulated
    perturbation ξ. The estimate is ξ (L⁺ − L⁻) / (2σ²) averaged over pairs and
    tasks. Because ξ holds every perturbation that shaped the runs' current states,
    the sum of a run's estimates is an unbiased estimate of the gradient of the
    whole run's loss smoothed by independent perturbations per truncation; ``init``
    (a restart) sets ξ to zero. Forward passes only: memory does not grow with the
    horizon.

    Args:
      optimizer: the learned optimizer.
      family: the task family.
      batch_size: tasks per estimate.
      truncation: inner steps per estimate.
      sigma: the perturbation's standard deviation σ.
      num_pairs: antithetic pairs per task.
      weighting: per-step loss weights (see ``l2l_jax.meta.weighted_loss``).
      tasks_per_chunk: run the tasks in chunks of this many (``lax.map``) to bound
        memory; ``None``: all at once.

    Returns:
      A ``GradientEstimator`` whose state is a ``PESState``.

    Raises:
      ConfigError: for an option that is not valid.

    References:
      Vicol, Metz and Sohl-Dickstein (2021), "Unbiased gradient estimation in unrolled
      computation graphs with persistent evolution strategies", Algorithm 2.
    """
    at.check_options(batch_size, truncation, weighting, tasks_per_chunk, sigma, num_pairs)

    def init(meta_params: MetaParams, key: jax.Array) -> PESState:
        inner = at.init_pairs(optimizer, meta_params, family, key, batch_size, num_pairs)
        zeros = jax.tree.map(
            lambda x: jnp.zeros((batch_size, num_pairs, *jnp.shape(x)), jnp.result_type(x)), meta_params
        )
        return PESState(inner, inner, zeros)

    def estimate(meta_params: MetaParams, state: PESState, key: jax.Array) -> Estimate:
        eps = at.perturbations(key, meta_params, (batch_size, num_pairs), sigma)

        def one_pair(
            positive: InnerState, negative: InnerState, accumulated: MetaParams, e: MetaParams
        ) -> tuple[PESState, jax.Array, MetaParams]:
            positive, negative, loss_plus, loss_minus = at.antithetic_pair(
                optimizer, family, meta_params, e, positive, negative, truncation, weighting
            )
            accumulated = jax.tree.map(jnp.add, accumulated, e)
            grad = at.scaled(accumulated, (loss_plus - loss_minus) / (2 * sigma**2))
            return PESState(positive, negative, accumulated), (loss_plus + loss_minus) / 2, grad

        per_task = functools.partial(at.over_pairs, one_pair)
        after, losses, grads = at.over_tasks(
            per_task, tasks_per_chunk, state.positive, state.negative, state.accumulated, eps
        )
        return Estimate(jnp.mean(losses), at.mean_over_runs(grads), after)

    return GradientEstimator(init, estimate, lambda state: state.positive.step[0, 0], "pes")
