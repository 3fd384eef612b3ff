"""Scale augmentation: a task family reparameterised by a random scale per parameter tensor."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from l2l_jax.checks import positive_float
from l2l_jax.errors import ConfigError
from l2l_jax.tasks.base import PyTree, TaskFamily


class ScaleAugmentedFamily(TaskFamily):
    """``family`` with each parameter tensor reparameterised as θ = s · θ̃, s drawn per task and tensor.

    A task draws the wrapped family's task and, for every leaf of its parameters, a
    scale s log-uniform in [``min_scale``, ``max_scale``]. The optimizer works on
    θ̃: the starting point is θ0 / s and the loss is f(s · θ̃). The problem is the
    same, but the parameters' magnitudes change by 1/s and the gradients by s, so a
    learned optimizer meta-trained on such tasks cannot lean on one family's
    parameter and gradient scales.

    Args:
      family: the task family to augment.
      min_scale: the smallest scale.
      max_scale: the largest scale (≥ ``min_scale``).

    Attributes:
      name: ``"scale_augmented"``.
      family: the wrapped family.

    Raises:
      ConfigError: if ``family`` is not a ``TaskFamily`` or the scales are not
        positive finite numbers with ``min_scale`` ≤ ``max_scale``.

    References:
      Moudgil et al. (2025), "Learning versatile optimizers on a compute diet" (Celo);
      learned_optimization's ``ReparamWeights`` task augmentation (Metz et al., 2022).
    """

    name = "scale_augmented"

    def __init__(self, family: TaskFamily, min_scale: float = 0.1, max_scale: float = 10.0) -> None:
        if not isinstance(family, TaskFamily):
            raise ConfigError(f"scale augmentation needs a TaskFamily, got {type(family).__name__}")
        self.family = family
        self.min_scale = positive_float("min_scale", min_scale)
        self.max_scale = positive_float("max_scale", max_scale)
        if self.min_scale > self.max_scale:
            raise ConfigError(f"min_scale ({min_scale}) must not exceed max_scale ({max_scale})")
        record = getattr(family, "data_record", None)
        if record is not None:
            self.data_record = record

    def config(self) -> dict[str, Any]:
        """``{"task": name, "options": the wrapped family's config, "min_scale", "max_scale"}``."""
        return {
            "task": self.family.name,
            "options": self.family.config(),
            "min_scale": self.min_scale,
            "max_scale": self.max_scale,
        }

    def sample(self, key: jax.Array) -> PyTree:
        k_task, k_shape, k_scale = jax.random.split(key, 3)
        inner = self.family.sample(k_task)
        shapes = jax.eval_shape(self.family.init, inner, k_shape)
        leaves, treedef = jax.tree.flatten(shapes)
        low, high = math.log(self.min_scale), math.log(self.max_scale)
        logs = jax.random.uniform(k_scale, (len(leaves),), minval=low, maxval=high)
        scales = [jnp.exp(logs[i]).astype(leaf.dtype) for i, leaf in enumerate(leaves)]
        return {"task": inner, "scales": jax.tree.unflatten(treedef, scales)}

    def init(self, task_params: PyTree, key: jax.Array) -> PyTree:
        params = self.family.init(task_params["task"], key)
        return jax.tree.map(lambda p, s: p / s, params, task_params["scales"])

    def loss(self, task_params: PyTree, params: PyTree, key: jax.Array) -> jax.Array:
        scaled = jax.tree.map(lambda p, s: p * s, params, task_params["scales"])
        return self.family.loss(task_params["task"], scaled, key)
