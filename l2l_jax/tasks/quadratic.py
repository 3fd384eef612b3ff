"""Quadratic tasks: the worked example's (θ-5)² and the paper's random ||Wθ - y||²."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from l2l_jax.checks import finite_float, non_negative_float, positive_int
from l2l_jax.errors import ConfigError
from l2l_jax.tasks.base import PyTree, TaskFamily

#: The largest ``QuadraticFamily`` dimension: W's dim² entries stay below 2**31.
MAX_DIM = 46_340


class ScalarQuadratic(TaskFamily):
    """f(θ) = (θ - target)², θ0 = ``theta0``: one deterministic task (the worked example)."""

    name = "scalar_quadratic"

    def __init__(self, target: float = 5.0, theta0: float = 10.0) -> None:
        self.target = finite_float("target", target)
        self.theta0 = finite_float("theta0", theta0)

    def config(self) -> dict[str, Any]:
        return {"target": self.target, "theta0": self.theta0}

    def sample(self, key: jax.Array) -> PyTree:
        del key
        return ()  # A single task: nothing to sample.

    def init(self, task_params: PyTree, key: jax.Array) -> PyTree:
        del task_params, key
        return jnp.asarray(self.theta0, dtype=float)

    def loss(self, task_params: PyTree, params: PyTree, key: jax.Array) -> jax.Array:
        del task_params, key
        return (params - self.target) ** 2


class QuadraticFamily(TaskFamily):
    """The paper's quadratics f(θ) = ||Wθ - y||² (Andrychowicz et al., 2016, §3.1).

    W ∈ R^{d×d} and y ∈ R^d have i.i.d. standard normal entries; θ0 has i.i.d.
    N(0, ``init_scale``²) entries (0.01 in the paper). ``dim`` is at most
    `MAX_DIM` (46,340), so that W's d² entries stay below 2**31.

    Raises:
      ConfigError: if ``dim`` is not an integer from 1 to `MAX_DIM`, or
        ``init_scale`` is negative or not finite.
    """

    name = "quadratic"

    def __init__(self, dim: int = 10, init_scale: float = 0.01) -> None:
        dim = positive_int("quadratic dimension (dim)", dim)
        if dim > MAX_DIM:
            raise ConfigError(
                f"quadratic dimension (dim) must be at most {MAX_DIM} (W has dim² entries, at most 2**31 - 1), "
                f"got {dim}"
            )
        self.dim = dim
        self.init_scale = non_negative_float("init_scale", init_scale)

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "init_scale": self.init_scale}

    def sample(self, key: jax.Array) -> PyTree:
        kw, ky = jax.random.split(key)
        return {
            "W": jax.random.normal(kw, (self.dim, self.dim)),
            "y": jax.random.normal(ky, (self.dim,)),
        }

    def init(self, task_params: PyTree, key: jax.Array) -> PyTree:
        del task_params
        return self.init_scale * jax.random.normal(key, (self.dim,))

    def loss(self, task_params: PyTree, params: PyTree, key: jax.Array) -> jax.Array:
        del key
        residual = task_params["W"] @ params - task_params["y"]
        return jnp.sum(residual**2)
