"""Hand-designed baselines, each a function of its learning rate alone."""

from __future__ import annotations

from typing import Callable

import jax
import optax

from l2l_jax.checks import positive_float
from l2l_jax.errors import ConfigError, UnknownNameError


def sgd(learning_rate: jax.Array | float) -> optax.GradientTransformation:
    """Plain gradient descent, g_t = -η∇_t."""
    return optax.sgd(learning_rate)


def momentum(learning_rate: jax.Array | float) -> optax.GradientTransformation:
    """Heavy-ball momentum (β = 0.9)."""
    return optax.sgd(learning_rate, momentum=0.9)


def nag(learning_rate: jax.Array | float) -> optax.GradientTransformation:
    """Nesterov's accelerated gradient (β = 0.9)."""
    return optax.sgd(learning_rate, momentum=0.9, nesterov=True)


def rmsprop(learning_rate: jax.Array | float) -> optax.GradientTransformation:
    """RMSprop (decay 0.9, ε = 1e-8, optax's defaults)."""
    return optax.rmsprop(learning_rate)


def adam(learning_rate: jax.Array | float) -> optax.GradientTransformation:
    """Adam (β1 = 0.9, β2 = 0.999, ε = 1e-8)."""
    return optax.adam(learning_rate)


BASELINES: dict[str, Callable[[jax.Array | float], optax.GradientTransformation]] = {
    "sgd": sgd,
    "momentum": momentum,
    "nag": nag,
    "rmsprop": rmsprop,
    "adam": adam,
}


def get(name: str) -> Callable[[jax.Array | float], optax.GradientTransformation]:
    """The baseline factory ``lr -> optax transformation`` called ``name``."""
    if name not in BASELINES:
        raise UnknownNameError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    return BASELINES[name]


def check_learning_rates(grid: list[float] | tuple[float, ...]) -> None:
    """Raises ``ConfigError`` unless every rate is a positive finite number."""
    if len(grid) == 0:
        raise ConfigError("the learning-rate grid is empty")
    for lr in grid:
        positive_float("every learning rate", lr)
