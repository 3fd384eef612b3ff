"""A non-neural convex problem: full-batch L2-regularised logistic regression on random linear data."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from l2l_jax.checks import non_negative_float, positive_int
from l2l_jax.errors import ConfigError
from l2l_jax.tasks.base import PyTree, TaskFamily


class LogisticRegressionFamily(TaskFamily):
    """Binary logistic regression; every task has its own data set.

    A task draws a design matrix X ∈ R^{n×d} with i.i.d. standard normal entries
    and a true weight vector w* ~ N(0, I); its labels are y_i = [x_i·w* > 0],
    each flipped with probability ``label_noise`` (so the data is not separable
    and the minimiser is finite). The parameters are θ = {"w": (d,), "b": ()},
    drawn i.i.d. N(0, ``init_scale``²). The loss is full-batch (``loss``'s key is
    unused, so the problem is deterministic):

        f(θ) = mean_i BCE(x_i·w + b, y_i) + ``l2`` / 2 · ||w||²

    with BCE the binary cross-entropy of a logit (``optax.sigmoid_binary_cross_entropy``).

    Args:
      examples: n, the number of examples.
      features: d, the number of features.
      label_noise: the probability of flipping each label, in [0, 0.5].
      l2: the weight of the L2 penalty on ``w`` (not on ``b``).
      init_scale: standard deviation of θ0's entries.

    Raises:
      ConfigError: if ``examples`` or ``features`` is not a positive integer,
        ``label_noise`` is not a number in [0, 0.5], or ``l2`` or ``init_scale``
        is not a finite non-negative number.
    """

    name = "logistic_regression"

    def __init__(
        self,
        examples: int = 256,
        features: int = 32,
        label_noise: float = 0.1,
        l2: float = 0.0,
        init_scale: float = 0.01,
    ) -> None:
        self.examples = positive_int("examples", examples)
        self.features = positive_int("features", features)
        self.label_noise = non_negative_float("label_noise", label_noise)
        if self.label_noise > 0.5:
            raise ConfigError(f"label_noise must be a probability from 0 to 0.5, got {label_noise!r}")
        self.l2 = non_negative_float("l2", l2)
        self.init_scale = non_negative_float("init_scale", init_scale)

    def config(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "features": self.features,
            "label_noise": self.label_noise,
            "l2": self.l2,
            "init_scale": self.init_scale,
        }

    def sample(self, key: jax.Array) -> PyTree:
        kx, kw, kflip = jax.random.split(key, 3)
        x = jax.random.normal(kx, (self.examples, self.features))
        clean = x @ jax.random.normal(kw, (self.features,)) > 0
        flip = jax.random.bernoulli(kflip, self.label_noise, (self.examples,))
        return {"x": x, "y": jnp.logical_xor(clean, flip).astype(jnp.float32)}

    def init(self, task_params: PyTree, key: jax.Array) -> PyTree:
        del task_params
        kw, kb = jax.random.split(key)
        return {
            "w": self.init_scale * jax.random.normal(kw, (self.features,)),
            "b": self.init_scale * jax.random.normal(kb, ()),
        }

    def loss(self, task_params: PyTree, params: PyTree, key: jax.Array) -> jax.Array:
        del key  # Full batch: the problem is deterministic.
        logits = task_params["x"] @ params["w"] + params["b"]
        data_loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, task_params["y"]))
        return data_loss + 0.5 * self.l2 * jnp.sum(params["w"] ** 2)
