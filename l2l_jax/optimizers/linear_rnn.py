"""The worked example's optimizer: a coordinatewise linear RNN with three weights.

Owns `LinearRNN`, its state and its constructor `linear_rnn`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from l2l_jax.errors import ConfigError
from l2l_jax.optimizers.base import (
    LearnedOptimizer,
    MetaParams,
    PyTree,
    check_float_tree,
    check_update_args,
    state_dtype,
)
from l2l_jax.optimizers.sharding import zeros_like_param
from l2l_jax.validation import finite_float


class LinearRNNState(NamedTuple):
    """Hidden state h_{t-1} of the linear RNN, one array per parameter leaf."""

    hidden: PyTree


class LinearRNN(LearnedOptimizer):
    """h_t = φ1·∇_t + φ2·h_{t-1},  g_t = φ3·h_t, applied to every coordinate.

    Meta-parameters are a dict ``{"phi1", "phi2", "phi3"}`` of scalars. With
    φ = (η, β, -1) this is heavy-ball momentum; the worked example starts from
    φ = (0.1, 0.5, -1.0).

    A coordinate whose gradient is NaN or ±inf gets g_t = 0 and keeps h_{t-1}.
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
        phi1, phi2, phi3 = (meta_params[k] for k in ("phi1", "phi2", "phi3"))

        def init_fn(params: PyTree) -> LinearRNNState:
            check_float_tree(params, "parameters")
            return LinearRNNState(
                hidden=jax.tree.map(lambda p: zeros_like_param(p, (), state_dtype(jnp.result_type(p))), params)
            )

        def update_fn(
            updates: PyTree, state: LinearRNNState, params: PyTree | None = None, **extra_args: Any
        ) -> tuple[PyTree, LinearRNNState]:
            del extra_args
            check_update_args(updates, state.hidden, params)

            def leaf(grad: jax.Array, h_prev: jax.Array) -> tuple[jax.Array, jax.Array]:
                dt, grad = h_prev.dtype, jnp.asarray(grad)
                # Non-finite coordinates: computed with 0 (no NaN in the arithmetic or
                # its gradients), then update 0 and the old state.
                keep = jnp.isfinite(grad)
                grad_in = jnp.where(keep, grad, jnp.zeros((), grad.dtype)).astype(dt)
                h = jnp.where(keep, jnp.asarray(phi1, dt) * grad_in + jnp.asarray(phi2, dt) * h_prev, h_prev)
                step = jnp.where(keep, jnp.asarray(phi3, dt) * h, jnp.zeros((), dt))
                return step.astype(grad.dtype), h

            pairs = jax.tree.map(leaf, updates, state.hidden)
            # Split the per-leaf pairs along the gradients' structure (an empty tree too).
            new_updates, hidden = (jax.tree.map(lambda _, t, k=k: t[k], updates, pairs) for k in range(2))
            return new_updates, LinearRNNState(hidden=hidden)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def linear_rnn(phi: tuple[float, float, float] = (0.1, 0.5, -1.0)) -> LinearRNN:
    """The worked example's learned optimizer.

    Args:
      phi: the initial meta-parameters (φ1, φ2, φ3) that `LinearRNN.init` returns.

    Returns:
      A `LinearRNN`. A coordinate whose gradient is NaN or ±inf gets update 0
      and keeps its hidden state unchanged, like ``optax.apply_if_finite`` per
      coordinate; every other coordinate is updated exactly as if it were not there.
      The coordinate is computed with gradient 0 and its results discarded by
      selects, so meta-gradients stay finite.

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
