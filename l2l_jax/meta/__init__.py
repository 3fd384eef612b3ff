"""Inner loops, meta-losses, meta-gradient estimators, the meta-step and meta-training."""

from l2l_jax.meta import estimators
from l2l_jax.meta.estimators import Estimate, GradientEstimator, tbptt, truncated_es, truncated_pes
from l2l_jax.meta.horizons import log_uniform_horizons
from l2l_jax.meta.step import Member, MetaTrainState, meta_step
from l2l_jax.meta.training import MetaTrainConfig, MetaTrainResult, meta_train
from l2l_jax.meta.unroll import (
    InnerState,
    init_inner,
    meta_value_and_grad,
    truncation_loss,
    unroll,
    unroll_task,
    weighted_loss,
)

__all__ = [
    "Estimate",
    "GradientEstimator",
    "InnerState",
    "Member",
    "MetaTrainConfig",
    "MetaTrainResult",
    "MetaTrainState",
    "estimators",
    "init_inner",
    "log_uniform_horizons",
    "meta_step",
    "meta_train",
    "meta_value_and_grad",
    "tbptt",
    "truncated_es",
    "truncated_pes",
    "truncation_loss",
    "unroll",
    "unroll_task",
    "weighted_loss",
]
