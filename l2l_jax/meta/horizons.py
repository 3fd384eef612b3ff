"""Run lengths for meta-training: one fixed horizon, or a log-uniform draw for every restart of the inner runs."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from l2l_jax.checks import MAX_COUNT, positive_int
from l2l_jax.errors import ConfigError

#: ``horizon(restart_step) -> inner steps``: the length of the runs started at meta-step ``restart_step``.
HorizonFn = Callable[[jax.Array], jax.Array]


def log_uniform_horizons(key: jax.Array, min_horizon: int, max_horizon: int, truncation: int) -> HorizonFn:
    """Run lengths drawn log-uniformly from [``min_horizon``, ``max_horizon``], whole truncations each.

    The runs started at meta-step s last h inner steps: exp(u) rounded to the nearest
    multiple of K = ``truncation``, with u uniform on [log ``min_horizon``, log
    ``max_horizon``] drawn from ``fold_in(key, s)``, and kept within [⌈``min_horizon`` / K⌉ · K,
    ``max_horizon``]. A run's length is a function
    of the step it started at, so it needs no state and a resumed run draws the same.

    Args:
      key: the key the lengths are drawn from.
      min_horizon: the shortest run (rounded up to whole truncations).
      max_horizon: the longest run, a multiple of ``truncation``.
      truncation: inner steps per meta-step.

    Returns:
      ``horizon(restart_step)``: an int32 scalar, jittable.

    Raises:
      ConfigError: if the bounds are not positive integers (at most 2**31 - 1) with ``truncation`` ≤
        ``min_horizon`` ≤ ``max_horizon`` and ``max_horizon`` a multiple of ``truncation``.

    Example:
      >>> import jax
      >>> horizon = log_uniform_horizons(jax.random.key(0), 100, 2000, 50)
      >>> 100 <= int(horizon(jax.numpy.int32(3))) <= 2000
      True
    """
    check_horizons(min_horizon, max_horizon, truncation)
    low, high = math.log(min_horizon), math.log(max_horizon)
    shortest = -(-min_horizon // truncation) * truncation

    def horizon(restart_step: jax.Array) -> jax.Array:
        u = jax.random.uniform(jax.random.fold_in(key, restart_step), (), minval=low, maxval=high)
        steps = jnp.round(jnp.exp(u) / truncation).astype(jnp.int32) * truncation
        return jnp.clip(steps, shortest, max_horizon)

    return horizon


def check_horizons(min_horizon: object, max_horizon: object, truncation: object) -> None:
    """Raises ``ConfigError`` unless ``truncation`` ≤ ``min_horizon`` ≤ ``max_horizon`` = a multiple of ``truncation``."""
    low = positive_int("min_horizon", min_horizon, at_most=MAX_COUNT)
    high = positive_int("horizon", max_horizon, at_most=MAX_COUNT)
    k = positive_int("truncation", truncation, at_most=MAX_COUNT)
    if not k <= low <= high:
        raise ConfigError(
            f"sampled horizons need truncation ≤ min_horizon ≤ horizon, got truncation {k}, "
            f"min_horizon {low}, horizon {high}"
        )
    if high % k:
        raise ConfigError(f"the truncation length ({k}) must divide the horizon ({high})")
