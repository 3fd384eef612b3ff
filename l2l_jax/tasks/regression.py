"""Teacher-student regression: a small ReLU network fits the outputs of a random tanh network."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from l2l_jax.checks import non_negative_float, positive_int
from l2l_jax.tasks.base import PyTree, TaskFamily


class RegressionMLP(nn.Module):
    """Inputs → hidden ReLU layers → one output, with Flax's default initialisation.

    Attributes:
      hidden: widths of the hidden layers.
    """

    hidden: tuple[int, ...] = (32,)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = jax.nn.relu(nn.Dense(width)(x))
        return nn.Dense(1)(x)[..., 0]


class TeacherStudentFamily(TaskFamily):
    """A student MLP regresses a random teacher network's outputs; every task has its own teacher and data.

    A task draws ``examples`` inputs x ~ N(0, I_d) and a teacher with one hidden layer
    of ``teacher_units`` tanh units, weights N(0, 1/fan-in); the targets are
    y = teacher(x) + ``noise`` · N(0, 1). The student (``RegressionMLP``: ReLU hidden
    layers, one output, Flax's default initialisation) minimises the mean squared
    error on minibatches of ``batch_size`` examples drawn with replacement from the
    task's data.

    Args:
      features: d, the input dimension.
      examples: examples per task.
      teacher_units: the teacher's hidden width.
      hidden_units: the student's width (every hidden layer).
      hidden_layers: the student's hidden layers.
      batch_size: minibatch size.
      noise: the standard deviation of the targets' noise.

    Raises:
      ConfigError: if a size is not a positive integer or ``noise`` is not a finite
        non-negative number.

    Example:
      >>> import jax
      >>> family = TeacherStudentFamily(features=4, hidden_units=8)
      >>> task = family.sample(jax.random.key(0))
      >>> params = family.init(task, jax.random.key(1))
      >>> float(family.loss(task, params, jax.random.key(2))) > 0
      True
    """

    name = "teacher_student"

    def __init__(
        self,
        features: int = 16,
        examples: int = 512,
        teacher_units: int = 32,
        hidden_units: int = 32,
        hidden_layers: int = 1,
        batch_size: int = 64,
        noise: float = 0.1,
    ) -> None:
        self.features = positive_int("features", features)
        self.examples = positive_int("examples", examples)
        self.teacher_units = positive_int("teacher_units", teacher_units)
        self.hidden_units = positive_int("hidden_units", hidden_units)
        self.hidden_layers = positive_int("hidden_layers", hidden_layers)
        self.batch_size = positive_int("batch_size", batch_size)
        self.noise = non_negative_float("noise", noise)
        self.model = RegressionMLP(hidden=(self.hidden_units,) * self.hidden_layers)

    def config(self) -> dict[str, Any]:
        return {
            "features": self.features,
            "examples": self.examples,
            "teacher_units": self.teacher_units,
            "hidden_units": self.hidden_units,
            "hidden_layers": self.hidden_layers,
            "batch_size": self.batch_size,
            "noise": self.noise,
        }

    def sample(self, key: jax.Array) -> PyTree:
        kx, k1, k2, kn = jax.random.split(key, 4)
        d, h = self.features, self.teacher_units
        x = jax.random.normal(kx, (self.examples, d))
        w1 = jax.random.normal(k1, (d, h)) / jnp.sqrt(d)
        w2 = jax.random.normal(k2, (h,)) / jnp.sqrt(h)
        y = jnp.tanh(x @ w1) @ w2 + self.noise * jax.random.normal(kn, (self.examples,))
        return {"x": x, "y": y}

    def init(self, task_params: PyTree, key: jax.Array) -> PyTree:
        del task_params
        return self.model.init(key, jnp.zeros((1, self.features)))["params"]

    def loss(self, task_params: PyTree, params: PyTree, key: jax.Array) -> jax.Array:
        idx = jax.random.randint(key, (self.batch_size,), 0, self.examples)
        prediction = self.model.apply({"params": params}, task_params["x"][idx])
        return jnp.mean(jnp.square(prediction - task_params["y"][idx]))
