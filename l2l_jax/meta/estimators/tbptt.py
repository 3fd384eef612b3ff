"""Truncated backpropagation through time: the gradient of each truncation's loss, by ``jax.grad``."""

from __future__ import annotations

import jax

from l2l_jax.checks import boolean
from l2l_jax.meta.estimators.base import Estimate, GradientEstimator, check_common_options
from l2l_jax.meta.unroll import InnerState, Remat, Weighting, check_remat, init_inner, meta_value_and_grad
from l2l_jax.optimizers.base import LearnedOptimizer, MetaParams
from l2l_jax.tasks.base import TaskFamily


def tbptt(
    optimizer: LearnedOptimizer,
    family: TaskFamily,
    *,
    batch_size: int,
    truncation: int,
    first_order: bool = True,
    weighting: Weighting = "uniform",
    remat: Remat = False,
    tasks_per_chunk: int | None = None,
) -> GradientEstimator:
    """Truncated BPTT (Andrychowicz et al., 2016): backpropagate through each truncation only.

    Each estimate unrolls every task for ``truncation`` steps and differentiates the
    weighted loss of those steps in φ (``l2l_jax.meta.meta_value_and_grad``). The
    runs' state carries over between truncations but is detached from φ, so the
    effect of φ on later truncations is ignored: the estimate is biased towards
    short-horizon behaviour, and its memory grows with ``truncation``.

    Args:
      optimizer: the learned optimizer.
      family: the task family.
      batch_size: tasks per estimate.
      truncation: inner steps per estimate.
      first_order: hold the optimizer's inputs constant in φ (the paper's choice).
      weighting: per-step loss weights (see ``l2l_jax.meta.weighted_loss``).
      remat: rematerialisation (see ``l2l_jax.meta.unroll``).
      tasks_per_chunk: run the batch in chunks of this many tasks (see
        ``l2l_jax.meta.meta_value_and_grad``).

    Returns:
      A ``GradientEstimator`` whose state is an ``InnerState`` (leading task axis);
      ``key`` is unused.

    Raises:
      ConfigError: for an option that is not valid.
    """
    check_common_options(batch_size, truncation, weighting, tasks_per_chunk)
    boolean("first_order", first_order)
    check_remat(remat)

    def init(meta_params: MetaParams, key: jax.Array) -> InnerState:
        return init_inner(optimizer, meta_params, family, key, batch_size)

    def estimate(meta_params: MetaParams, state: InnerState, key: jax.Array) -> Estimate:
        del key
        (loss, (after, _)), grads = meta_value_and_grad(
            meta_params,
            optimizer,
            family,
            state,
            truncation,
            first_order=first_order,
            weighting=weighting,
            remat=remat,
            tasks_per_chunk=tasks_per_chunk,
        )
        return Estimate(loss, grads, after)

    return GradientEstimator(init, estimate, lambda state: state.step[0], "tbptt")
