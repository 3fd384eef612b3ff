"""Truncated evolution strategies with antithetic pairs: forward unrolls only, memory independent of T."""

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


class ESState(NamedTuple):
    """Truncated ES's state.

    Attributes:
      inner: every pair's run, leading axes ``(tasks, pairs)``; both runs of a pair
        start each truncation from it, and it carries on as the positive run ended.
    """

    inner: InnerState


def truncated_es(
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
    """Truncated antithetic ES: the gradient of each truncation's Gaussian-smoothed loss.

    For each pair, with ε ~ N(0, σ² I) drawn afresh every truncation, both runs
    start from the pair's state and run ``truncation`` steps, one with φ + ε and one
    with φ − ε; the estimate is ε (L⁺ − L⁻) / (2σ²), averaged over pairs and tasks.
    Only forward passes run, so memory does not grow with the horizon, and
    chaotic inner runs do not blow up the estimate the way they do BPTT's. Like
    truncated BPTT it ignores φ's effect on later truncations (biased).

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
      A ``GradientEstimator`` whose state is an ``ESState``.

    Raises:
      ConfigError: for an option that is not valid.

    References:
      Vicol, Metz and Sohl-Dickstein (2021), "Unbiased gradient estimation in unrolled
      computation graphs with persistent evolution strategies", §3.
    """
    at.check_options(batch_size, truncation, weighting, tasks_per_chunk, sigma, num_pairs)

    def init(meta_params: MetaParams, key: jax.Array) -> ESState:
        return ESState(at.init_pairs(optimizer, meta_params, family, key, batch_size, num_pairs))

    def estimate(meta_params: MetaParams, state: ESState, key: jax.Array) -> Estimate:
        eps = at.perturbations(key, meta_params, (batch_size, num_pairs), sigma)

        def one_pair(inner: InnerState, e: MetaParams) -> tuple[InnerState, jax.Array, MetaParams]:
            after, _, loss_plus, loss_minus = at.antithetic_pair(
                optimizer, family, meta_params, e, inner, inner, truncation, weighting
            )
            grad = at.scaled(e, (loss_plus - loss_minus) / (2 * sigma**2))
            return after, (loss_plus + loss_minus) / 2, grad

        per_task = functools.partial(at.over_pairs, one_pair)
        after, losses, grads = at.over_tasks(per_task, tasks_per_chunk, state.inner, eps)
        return Estimate(jnp.mean(losses), at.mean_over_runs(grads), ESState(after))

    return GradientEstimator(init, estimate, lambda state: state.inner.step[0, 0], "es")
