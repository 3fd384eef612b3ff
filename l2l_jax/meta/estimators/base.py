"""The interface every meta-gradient estimator implements: ``GradientEstimator`` and ``Estimate``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from l2l_jax.checks import one_of, positive_int
from l2l_jax.meta.unroll import WEIGHTINGS, check_tasks_per_chunk
from l2l_jax.optimizers.base import MetaParams

PyTree = Any
EstimatorState = Any


class Estimate(NamedTuple):
    """One meta-gradient estimate.

    Attributes:
      meta_loss: the mean weighted loss of the truncation just run (over tasks,
        and over each antithetic pair's two runs for ES and PES).
      meta_grad: the estimate of the meta-loss's gradient in φ (the pytree of φ).
      state: the estimator's state after the truncation (detached from φ).
    """

    meta_loss: jax.Array
    meta_grad: MetaParams
    state: EstimatorState


class GradientEstimator(NamedTuple):
    """A meta-gradient estimator over truncations of a batch of inner runs.

    Like an ``optax.GradientTransformation``, a pair of pure functions (plus one
    accessor); all three are jittable and work on states whose leaves have a leading
    task axis (split over devices by ``l2l_jax.meta.sharding``).

    Attributes:
      init: ``init(meta_params, key) -> state``: draws the batch of tasks and their
        θ0 from ``key`` and starts their inner runs (step 0).
      estimate: ``estimate(meta_params, state, key) -> Estimate``: runs the next
        truncation of every inner run and estimates the meta-gradient; ``key`` draws
        whatever randomness the estimator needs (ES and PES perturbations).
      inner_step: ``inner_step(state) -> int scalar``: the inner step the runs
        have reached (all runs move in step), so that the caller restarts them
        with ``init`` after a whole horizon.
      name: ``"tbptt"``, ``"es"`` or ``"pes"``.
    """

    init: Callable[[MetaParams, jax.Array], EstimatorState]
    estimate: Callable[[MetaParams, EstimatorState, jax.Array], Estimate]
    inner_step: Callable[[EstimatorState], jax.Array]
    name: str


def check_common_options(batch_size: object, truncation: object, weighting: object, tasks_per_chunk: object) -> None:
    """Raises ``ConfigError`` for an option every estimator takes that is not valid."""
    check_tasks_per_chunk(tasks_per_chunk, positive_int("batch_size", batch_size))
    positive_int("truncation", truncation)
    one_of("weighting", weighting, WEIGHTINGS)
