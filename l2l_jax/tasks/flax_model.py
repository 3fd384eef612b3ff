"""Your own Flax model as a task family, for meta-training on it.

A task is "train this model from a fresh initialisation on minibatches". Give the
model (a linen module, or a function that builds an nnx module from ``nnx.Rngs``),
a pure batch sampler ``sample_batch(key) -> batch`` and a loss on
``(model outputs, batch)``. Inner loops run inside ``lax.scan``, so batches must come
from a JAX function of a key, not from a Python iterator: ``batch_sampler``
makes one from in-memory arrays, and ``stack_batches`` turns a finite number of
an iterator's batches into such arrays.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from l2l_jax.checks import positive_int
from l2l_jax.errors import ConfigError
from l2l_jax.tasks.base import PyTree, TaskFamily

Batch = Any
BatchSampler = Callable[[jax.Array], Batch]


def batch_sampler(arrays: dict[str, Any] | tuple[Any, ...], batch_size: int) -> BatchSampler:
    """A sampler of minibatches drawn with replacement from in-memory arrays.

    Args:
      arrays: arrays with a common leading (example) axis, e.g. ``{"x": x, "y": y}``.
      batch_size: examples per batch.

    Returns:
      ``sample(key) -> batch`` with the structure of ``arrays``.
    """
    leaves = jax.tree.leaves(arrays)
    if not leaves:
        raise ConfigError("batch_sampler needs at least one array")
    n = int(np.shape(leaves[0])[0])
    if any(int(np.shape(a)[0]) != n for a in leaves):
        raise ConfigError("batch_sampler: every array needs the same number of examples (leading axis)")
    batch_size = positive_int("batch_size", batch_size)
    arrays = jax.tree.map(jnp.asarray, arrays)

    def sample(key: jax.Array) -> Batch:
        idx = jax.random.randint(key, (batch_size,), 0, n)
        return jax.tree.map(lambda a: a[idx], arrays)

    return sample


def stack_batches(batches: Iterable[Batch], num_batches: int) -> Batch:
    """Takes ``num_batches`` batches from an iterator and stacks them along a new axis 0.

    ``batch_sampler(stack_batches(it, 100), 1)`` then picks one of those batches
    at random per step (squeeze the leading axis of 1 in your loss, or use
    ``iterator_sampler``).
    """
    it: Iterator[Batch] = iter(batches)
    taken = []
    for _ in range(int(num_batches)):
        try:
            taken.append(next(it))
        except StopIteration:
            break
    if not taken:
        raise ConfigError("the data iterator gave no batches")
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *taken)


def iterator_sampler(batches: Iterable[Batch], num_batches: int) -> BatchSampler:
    """A sampler that returns one of the first ``num_batches`` batches of an iterator at random."""
    stacked = stack_batches(batches, num_batches)
    count = int(jax.tree.leaves(stacked)[0].shape[0])

    def sample(key: jax.Array) -> Batch:
        i = jax.random.randint(key, (), 0, count)
        return jax.tree.map(lambda a: a[i], stacked)

    return sample


class FlaxModelFamily(TaskFamily):
    """Training a user's Flax model (linen or nnx) from fresh initialisations.

    Args:
      model: a ``flax.linen.Module``, or a function ``rngs -> nnx.Module``.
      sample_batch: ``sample_batch(key) -> batch``, a pure JAX function.
      loss_fn: ``loss_fn(outputs, batch) -> scalar``.
      inputs: ``inputs(batch) -> model input`` (default: ``batch["x"]``, or
        ``batch[0]`` for tuples).
      name: a label for run directories.

    Example:
      >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
      >>> x, y = jnp.ones((32, 3)), jnp.zeros((32,), jnp.int32)
      >>> family = FlaxModelFamily(
      ...     nn.Dense(2),
      ...     batch_sampler({"x": x, "y": y}, batch_size=8),
      ...     lambda logits, b: optax.softmax_cross_entropy_with_integer_labels(logits, b["y"]).mean(),
      ... )
      >>> params = family.init((), jax.random.key(0))
      >>> params["kernel"].shape
      (3, 2)
    """

    def __init__(
        self,
        model: nn.Module | Callable[[nnx.Rngs], nnx.Module],
        sample_batch: BatchSampler,
        loss_fn: Callable[[Any, Batch], jax.Array],
        inputs: Callable[[Batch], Any] | None = None,
        name: str = "flax_model",
    ) -> None:
        if not (isinstance(model, nn.Module) or callable(model)):
            raise ConfigError("model must be a flax.linen Module or a function rngs -> nnx.Module")
        self.model, self.sample_batch, self.loss_fn = model, sample_batch, loss_fn
        self.inputs = inputs or _default_inputs
        self.name = name
        example = jax.eval_shape(sample_batch, jax.random.PRNGKey(0))
        self._example_input = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self.inputs(example))

    def config(self) -> dict[str, Any]:
        return {"name": self.name}

    def sample(self, key: jax.Array) -> PyTree:
        del key
        return ()

    def init(self, task_params: PyTree, key: jax.Array) -> PyTree:
        del task_params
        if isinstance(self.model, nn.Module):
            return self.model.init(key, self._example_input)["params"]
        _, params, _ = nnx.split(self.model(nnx.Rngs(key)), nnx.Param, ...)
        return nnx.to_pure_dict(params)

    def apply(self, params: PyTree, x: Any) -> Any:
        """The model's outputs for input ``x`` under ``params``."""
        if isinstance(self.model, nn.Module):
            return self.model.apply({"params": params}, x)
        # nnx parameters travel through scan/vmap as a pure dict; the module built
        # here only gives the structure (its unused initial values are dead code).
        module = self.model(nnx.Rngs(0))
        graphdef, state, rest = nnx.split(module, nnx.Param, ...)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(graphdef, state, rest)(x)

    def loss(self, task_params: PyTree, params: PyTree, key: jax.Array) -> jax.Array:
        del task_params
        batch = self.sample_batch(key)
        return self.loss_fn(self.apply(params, self.inputs(batch)), batch)


def _default_inputs(batch: Batch) -> Any:
    if isinstance(batch, dict):
        if "x" not in batch:
            raise ConfigError("batches are dicts without an 'x' entry: pass inputs=lambda batch: ...")
        return batch["x"]
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch
