"""Learned optimizers: ``init(key) -> φ`` and ``as_optax(φ) -> optax transformation``.

Re-exports the optimizers and owns the registry of their names (`register`, `get`,
`available`, `options`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from l2l_jax.errors import ConfigError
from l2l_jax.optimizers.base import LearnedOptimizer, MetaParams, check_meta_params
from l2l_jax.optimizers.feature_mlp import FeatureMLP, FeatureMLPState, feature_mlp
from l2l_jax.optimizers.linear_rnn import LinearRNN, LinearRNNState, linear_rnn
from l2l_jax.optimizers.lstm import PRESETS as LSTM_PRESETS
from l2l_jax.optimizers.lstm import CoordinatewiseLSTM, LSTMState, lstm
from l2l_jax.optimizers.preprocessing import preprocess
from l2l_jax.optimizers.recurrence import recurrent_tensors, scale_recurrent
from l2l_jax.optimizers.sharding import state_shardings
from l2l_jax.registry import Registry, keyword_options

_REGISTRY: Registry[LearnedOptimizer] = Registry(
    "learned optimizer", {"feature_mlp": FeatureMLP, "linear_rnn": LinearRNN, "lstm": lstm}
)


def register(name: str, factory: Callable[..., LearnedOptimizer]) -> None:
    """Makes a learned optimizer buildable by name (``get``, ``MetaTrainConfig``, the command line).

    Args:
      name: the registry name; the optimizer's ``name`` attribute should be the
        same, since run directories record it.
      factory: a class or function taking the optimizer's options as keywords.

    Raises:
      ConfigError: if ``name`` is a shipped optimizer's (``lstm``, ``feature_mlp``,
        ``linear_rnn``); a name you registered before is taken over.
    """
    _REGISTRY.register(name, factory)


def available() -> list[str]:
    """The registered learned optimizers' names, sorted."""
    return _REGISTRY.available()


def options(name: str) -> list[str]:
    """The options the learned optimizer ``name`` takes (its constructor's keywords), sorted.

    Raises:
      UnknownNameError: for an unknown name.
    """
    if _REGISTRY.factory(name) is lstm:  # lstm(preset, **overrides): the class's keywords.
        return sorted({"preset", *(keyword_options(CoordinatewiseLSTM) or ())})
    return _REGISTRY.options(name)


def get(name: str, **kwargs: Any) -> LearnedOptimizer:
    """Builds a learned optimizer by registry name.

    Args:
      name: ``"lstm"``, ``"feature_mlp"``, ``"linear_rnn"``, or one you `register`.
      **kwargs: the optimizer's options (see `lstm`, `feature_mlp`, `linear_rnn`).

    Returns:
      The learned optimizer.

    Raises:
      UnknownNameError: for an unknown name.
      ConfigError: for options the optimizer does not take (the message lists
        those it takes) or values that make no sense.
    """
    unknown = sorted(set(kwargs) - set(options(name)))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for learned optimizer {name!r}; "
            f"its options: {', '.join(options(name))}"
        )
    return _REGISTRY.build(name, **kwargs)


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
    "available",
    "check_meta_params",
    "feature_mlp",
    "get",
    "linear_rnn",
    "lstm",
    "options",
    "preprocess",
    "recurrent_tensors",
    "register",
    "scale_recurrent",
    "state_shardings",
]
