"""Learned optimizers: ``init(key) -> φ`` and ``as_optax(φ) -> optax transformation``.

Re-exports the optimizers and owns the registry of their names (`get`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from l2l_jax.errors import ConfigError, L2LError, UnknownNameError
from l2l_jax.optimizers.base import LearnedOptimizer, MetaParams, check_meta_params
from l2l_jax.optimizers.feature_mlp import FeatureMLP, FeatureMLPState, feature_mlp
from l2l_jax.optimizers.linear_rnn import LinearRNN, LinearRNNState, linear_rnn
from l2l_jax.optimizers.lstm import PRESETS as LSTM_PRESETS
from l2l_jax.optimizers.lstm import CoordinatewiseLSTM, LSTMState, lstm
from l2l_jax.optimizers.preprocessing import preprocess
from l2l_jax.optimizers.sharding import state_shardings

_REGISTRY: dict[str, Callable[..., LearnedOptimizer]] = {
    "feature_mlp": FeatureMLP,
    "linear_rnn": LinearRNN,
    "lstm": lstm,
}


def get(name: str, **kwargs: Any) -> LearnedOptimizer:
    """Builds a learned optimizer by registry name.

    Args:
      name: ``"lstm"``, ``"feature_mlp"`` or ``"linear_rnn"``.
      **kwargs: the optimizer's options (see `lstm`, `feature_mlp`, `linear_rnn`).

    Returns:
      The learned optimizer.

    Raises:
      UnknownNameError: for an unknown name.
      ConfigError: for options the optimizer does not take.
    """
    if name not in _REGISTRY:
        raise UnknownNameError(f"unknown learned optimizer {name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    try:
        return _REGISTRY[name](**kwargs)
    except L2LError:
        raise
    except (TypeError, ValueError, OverflowError) as e:
        raise ConfigError(f"bad options for learned optimizer {name!r}: {e}") from None


__all__ = [
    "LSTM_PRESETS",
    "CoordinatewiseLSTM",
    "FeatureMLP",
    "FeatureMLPState",
    "LSTMState",
    "LearnedOptimizer",
    "LinearRNN",
    "LinearRNNState",
    "MetaParams",
    "check_meta_params",
    "feature_mlp",
    "get",
    "linear_rnn",
    "lstm",
    "preprocess",
    "state_shardings",
]
