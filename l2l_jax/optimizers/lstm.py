"""The paper's optimizer: a coordinatewise LSTM with weights shared over coordinates.

Every coordinate of every parameter leaf runs its own copy of a small stacked LSTM
(2 layers of 20 units in the paper) with the same weights, reading its own
preprocessed gradient and writing its own update. That is what lets one φ of a few
thousand numbers optimize models of any size.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from l2l_jax.errors import ConfigError, finite_float, positive_int
from l2l_jax.optimizers.base import LearnedOptimizer, MetaParams, PyTree, check_float_tree, state_dtype
from l2l_jax.optimizers.preprocessing import check_preprocessing, num_features, preprocess

#: Settings of the paper (Andrychowicz et al., 2016, §3 and appendix A) and of
#: deepmind/learning-to-learn's released code (``LogAndSign`` with k = 5,
#: ``scale = 0.01``).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"hidden_size": 20, "num_layers": 2, "preprocessing": "log_sign", "p": 10.0, "output_scale": 0.1},
    "deepmind": {"hidden_size": 20, "num_layers": 2, "preprocessing": "log_sign", "p": 5.0, "output_scale": 0.01},
}


class LSTMState(NamedTuple):
    """Per-coordinate LSTM state; each leaf has shape ``(num_layers, *param.shape, hidden_size)``."""

    h: PyTree
    c: PyTree


class CoordinatewiseLSTM(LearnedOptimizer):
    """A stacked LSTM applied independently to every coordinate (see :func:`lstm`)."""

    name = "lstm"

    def __init__(
        self,
        hidden_size: int = 20,
        num_layers: int = 2,
        preprocessing: str = "log_sign",
        p: float = 10.0,
        output_scale: float = 0.1,
        state_dtype: str | None = None,
    ) -> None:
        hidden_size = positive_int("hidden_size", hidden_size)
        num_layers = positive_int("num_layers", num_layers)
        p = finite_float("p", p)
        output_scale = finite_float("output_scale", output_scale)
        check_preprocessing(preprocessing, p)
        if not output_scale > 0:
            raise ConfigError(f"output_scale must be positive, got {output_scale!r}")
        if state_dtype is not None:
            try:
                dt = jnp.dtype(state_dtype)
            except TypeError:
                raise ConfigError(f"state_dtype {state_dtype!r} is not a dtype") from None
            if not jnp.issubdtype(dt, jnp.floating):
                raise ConfigError(f"state_dtype must be a floating dtype, got {state_dtype!r}")
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.preprocessing = preprocessing
        self.p = float(p)
        self.output_scale = float(output_scale)
        self.state_dtype = None if state_dtype is None else str(jnp.dtype(state_dtype))

    def config(self) -> dict[str, Any]:
        return {
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "preprocessing": self.preprocessing,
            "p": self.p,
            "output_scale": self.output_scale,
            "state_dtype": self.state_dtype,
        }

    def init(self, key: jax.Array) -> MetaParams:
        """Uniform(±1/√H) weights (PyTorch's LSTM default), forget-gate bias 1."""
        hidden = self.hidden_size
        bound = 1.0 / hidden**0.5
        keys = jax.random.split(key, self.num_layers + 1)
        meta: dict[str, Any] = {}
        in_size = num_features(self.preprocessing)
        for layer in range(self.num_layers):
            # One matrix for [input, h] so each step is a single matmul.
            w = jax.random.uniform(keys[layer], (in_size + hidden, 4 * hidden), minval=-bound, maxval=bound)
            b = jnp.zeros((4 * hidden,)).at[hidden : 2 * hidden].set(1.0)
            meta[f"layer_{layer}"] = {"w": w, "b": b}
            in_size = hidden
        meta["out"] = {
            "w": jax.random.uniform(keys[-1], (hidden,), minval=-bound, maxval=bound),
            "b": jnp.zeros(()),
        }
        return meta

    def _transformation(self, meta_params: MetaParams) -> optax.GradientTransformationExtraArgs:
        hidden, layers = self.hidden_size, self.num_layers

        def init_fn(params: PyTree) -> LSTMState:
            check_float_tree(params, "parameters")

            def zeros(p: Any) -> jax.Array:
                dt = state_dtype(jnp.result_type(p), self.state_dtype)
                return jnp.zeros((layers, *jnp.shape(p), hidden), dt)

            return LSTMState(h=jax.tree.map(zeros, params), c=jax.tree.map(zeros, params))

        def leaf_update(grad: jax.Array, h: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
            # Compute in at least float32 even when the state is stored in bfloat16.
            dt = jnp.promote_types(h.dtype, jnp.float32)
            x = preprocess(grad.astype(dt), self.preprocessing, self.p)
            new_h, new_c = [], []
            for layer in range(layers):
                w = jnp.asarray(meta_params[f"layer_{layer}"]["w"], dt)
                b = jnp.asarray(meta_params[f"layer_{layer}"]["b"], dt)
                h_prev, c_prev = h[layer].astype(dt), c[layer].astype(dt)
                z = jnp.concatenate([x, h_prev], axis=-1) @ w + b
                i, f, g, o = jnp.split(z, 4, axis=-1)
                c_next = jax.nn.sigmoid(f) * c_prev + jax.nn.sigmoid(i) * jnp.tanh(g)
                h_next = jax.nn.sigmoid(o) * jnp.tanh(c_next)
                new_h.append(h_next.astype(h.dtype))
                new_c.append(c_next.astype(c.dtype))
                x = h_next
            w_out = jnp.asarray(meta_params["out"]["w"], dt)
            b_out = jnp.asarray(meta_params["out"]["b"], dt)
            step = (x @ w_out + b_out) * self.output_scale
            return step.astype(grad.dtype), jnp.stack(new_h), jnp.stack(new_c)

        def update_fn(
            updates: PyTree, state: LSTMState, params: PyTree | None = None, **extra_args: Any
        ) -> tuple[PyTree, LSTMState]:
            del params, extra_args
            check_float_tree(updates, "gradients")
            triples = jax.tree.map(leaf_update, updates, state.h, state.c)
            outer = jax.tree.structure(updates)
            new_updates, h, c = jax.tree.transpose(outer, jax.tree.structure((0, 0, 0)), triples)
            return new_updates, LSTMState(h=h, c=c)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def lstm(preset: str = "paper", **overrides: Any) -> CoordinatewiseLSTM:
    """The paper's coordinatewise LSTM optimizer.

    Args:
      preset: ``"paper"`` (log/sign preprocessing with p = 10, output × 0.1) or
        ``"deepmind"`` (deepmind/learning-to-learn's code: p = 5, output × 0.01).
        Both use 2 layers of 20 units.
      **overrides: any of ``hidden_size``, ``num_layers``, ``preprocessing``
        (``"log_sign"`` or ``"none"``), ``p``, ``output_scale``, ``state_dtype``.

    Returns:
      A :class:`CoordinatewiseLSTM`; ``init(key)`` gives φ, ``as_optax(φ)`` the optimizer.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> opt = lstm()
      >>> tx = opt.as_optax(opt.init(jax.random.key(0)))
      >>> params = {"w": jnp.ones((3, 2))}
      >>> updates, state = tx.update(params, tx.init(params))
      >>> updates["w"].shape, state.h["w"].shape
      ((3, 2), (2, 3, 2, 20))

    References:
      Andrychowicz et al., "Learning to learn by gradient descent by gradient
      descent", NeurIPS 2016.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown LSTM preset {preset!r}; choose one of {', '.join(PRESETS)}")
    unknown = set(overrides) - set(PRESETS["paper"]) - {"state_dtype"}
    if unknown:
        raise ConfigError(f"unknown LSTM option(s) {', '.join(sorted(unknown))}")
    return CoordinatewiseLSTM(**{**PRESETS[preset], **overrides})
