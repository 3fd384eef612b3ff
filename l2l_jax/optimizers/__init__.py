"""Learned optimizers: ``init(key) -> φ`` and ``as_optax(φ) -> optax transformation``.

Re-exports the optimizers and owns the registry of their names (`register`, `get`,
`available`, `options`).
"""

from __future__ import annotations

import inspect
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


def register(name: str, factory: Callable[..., LearnedOptimizer]) -> None:
    """Makes a learned optimizer buildable by name (``get``, ``MetaTrainConfig``, the command line).

    Args:
      name: the registry name; the optimizer's ``name`` attribute should be the
        same, since run directories record it.
      factory: a class or function taking the optimizer's options as keywords.

    Raises:
      ConfigError: if ``name`` is already taken by another factory.
    """
    if _REGISTRY.get(name, factory) is not factory:
        raise ConfigError(f"a learned optimizer named {name!r} is already registered")
    _REGISTRY[name] = factory


def available() -> list[str]:
    """The registered learned optimizers' names, sorted."""
    return sorted(_REGISTRY)


def options(name: str) -> list[str]:
    """The options the learned optimizer ``name`` takes (its constructor's keywords), sorted.

    Raises:
      UnknownNameError: for an unknown name.
    """
    factory = _factory(name)
    if factory is lstm:
        return sorted({"preset", *_keywords(CoordinatewiseLSTM)})
    return sorted(_keywords(factory))


def _keywords(factory: Callable[..., Any]) -> set[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n for n, p in inspect.signature(factory).parameters.items() if p.kind in kinds}


def _factory(name: str) -> Callable[..., LearnedOptimizer]:
    if name not in _REGISTRY:
        raise UnknownNameError(f"unknown learned optimizer {name!r}; choose one of {', '.join(available())}")
    return _REGISTRY[name]


def get(name: str, **kwargs: Any) -> LearnedOptimizer:
    """Builds a learned optimizer by registry name.

    Args:
      name: ``"lstm"``, ``"feature_mlp"`` or ``"linear_rnn"``.
      **kwargs: the optimizer's options (see `lstm`, `feature_mlp`, `linear_rnn`).

    Returns:
      The learned optimizer.

    Raises:
      UnknownNameError: for an unknown name.
      ConfigError: for options the optimizer does not take (the message lists
        those it takes) or values that make no sense.
    """
    factory = _factory(name)
    unknown = sorted(set(kwargs) - set(options(name)))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for learned optimizer {name!r}; "
            f"its options: {', '.join(options(name))}"
        )
    try:
        return factory(**kwargs)
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
    "available",
    "check_meta_params",
    "feature_mlp",
    "get",
    "linear_rnn",
    "lstm",
    "options",
    "preprocess",
    "register",
    "state_shardings",
]
