"""Inner loops, meta-losses, meta-gradients and meta-training."""

from l2l_jax.meta.training import MetaTrainConfig, MetaTrainResult, MetaTrainState, meta_train
from l2l_jax.meta.unroll import InnerState, init_inner, meta_value_and_grad, truncation_loss, unroll, weighted_loss

__all__ = [
    "InnerState",
    "MetaTrainConfig",
    "MetaTrainResult",
    "MetaTrainState",
    "init_inner",
    "meta_train",
    "meta_value_and_grad",
    "truncation_loss",
    "unroll",
    "weighted_loss",
]
