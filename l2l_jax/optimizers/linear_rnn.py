"""The worked example's optimizer: a coordinatewise linear RNN with three weights.

Owns `LinearRNN`, its state and its constructor `linear_rnn`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from l2l_jax.checks import finite_float
from l2l_jax.errors import ConfigError
from l2l_jax.optimizers.base import (
    LearnedOptimizer,
    MetaParams,
    PyTree,
    coordinatewise,
)


class LinearRNNState(NamedTuple):
    """Hidden state h_{t-1} of the linear RNN, one array per parameter leaf."""

    hidden: PyTree


class LinearRNN(LearnedOptimizer):
    """h_t = φ1·∇_t + φ2·h_{t-1},  g_t = φ3·h_t, applied to every coordinate.

    Meta-parameters are a dict ``{"phi1", "phi2", "phi3"}`` of scalars. With
    φ = (η, β, -1) this is heavy-ball momentum; the worked example starts from
    φ = (0.1, 0.5, -1.0).

    Non-finite gradients: see `LearnedOptimizer` (g_t = 0, h_{t-1} kept).
    """

    name = "linear_rnn"

    def __init__(self, phi: tuple[float, float, float] = (0.1, 0.5, -1.0)) -> None:
        try:
            values = tuple(phi)
        except TypeError:
            raise ConfigError(f"linear_rnn needs three numbers as initial weights, got {phi!r}") from None
        if len(values) != 3:
            raise ConfigError(f"linear_rnn needs three initial weights, got {phi!r}")
        self.phi = tuple(finite_float(f"phi[{i}]", p) for i, p in enumerate(values))

    def config(self) -> dict[str, Any]:
        return {"phi": list(self.phi)}

    def init(self, key: jax.Array) -> MetaParams:
        del key  # Deterministic: the worked example fixes φ.
        return {f"phi{i + 1}": jnp.asarray(p, dtype=float) for i, p in enumerate(self.phi)}

    def _transformation(self, meta_params: MetaParams) -> optax.GradientTransformationExtraArgs:
        def update_leaf(
            phi: MetaParams, grad: jax.Array, keep: jax.Array, h_prev: jax.Array
        ) -> tuple[jax.Array, jax.Array]:
            dt = h_prev.dtype
            phi1, phi2, phi3 = (jnp.asarray(phi[k], dt) for k in ("phi1", "phi2", "phi3"))
            grad_in = jnp.where(keep, grad, jnp.zeros((), grad.dtype)).astype(dt)
            h = jnp.where(keep, phi1 * grad_in + phi2 * h_prev, h_prev)
            step = jnp.where(keep, phi3 * h, jnp.zeros((), dt))
            return step.astype(grad.dtype), h

        return coordinatewise(LinearRNNState, [()], update_leaf, shared=meta_params)


def linear_rnn(phi: tuple[float, float, float] = (0.1, 0.5, -1.0)) -> LinearRNN:
    """The worked example's learned optimizer.

    Args:
      phi: the initial meta-parameters (φ1, φ2, φ3) that `LinearRNN.init` returns.

    Returns:
      A `LinearRNN`, which keeps the non-finite contract of `LearnedOptimizer`.

    Raises:
      ConfigError: if ``phi`` is not three finite numbers.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> opt = linear_rnn()
      >>> tx = opt.as_optax(opt.init(jax.random.key(0)))
      >>> theta = jnp.array(10.0)
      >>> state = tx.init(theta)
      >>> g, state = tx.update(2 * (theta - 5), state)
      >>> float(theta + g)
      9.0
    """
    return LinearRNN(phi)
