"""The task family interface: what meta-training and evaluation need from an optimizee.

A ``TaskFamily`` samples *task parameters* (a pytree, e.g. the W and y of a
quadratic) so that a batch of tasks is a ``vmap`` over them. ``init`` draws the
optimizee's starting parameters θ0; ``loss`` evaluates f(θ), with a key that
draws a minibatch for stochastic tasks.
"""

from __future__ import annotations

import abc
from typing import Any

import jax

PyTree = Any


class TaskFamily(abc.ABC):
    """A distribution over optimization problems."""

    #: Registry name, used in run directories and on the command line.
    name: str = ""

    @abc.abstractmethod
    def sample(self, key: jax.Array) -> PyTree:
        """Draws the parameters of one task (a pytree of arrays, maybe empty)."""

    @abc.abstractmethod
    def init(self, task_params: PyTree, key: jax.Array) -> PyTree:
        """Draws θ0 for the task ``task_params``."""

    @abc.abstractmethod
    def loss(self, task_params: PyTree, params: PyTree, key: jax.Array) -> jax.Array:
        """f(θ) for one task; ``key`` draws a minibatch where the task is stochastic."""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this family (JSON-serialisable)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

