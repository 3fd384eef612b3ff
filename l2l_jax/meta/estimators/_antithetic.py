"""What truncated ES and PES share: Gaussian perturbations of φ and antithetic pairs of inner runs.

Every task of a batch carries ``num_pairs`` pairs of runs; the leaves of their
states have leading axes ``(tasks, pairs)``. The two runs of a pair see the same
task, θ0 and minibatches and differ only in the sign of φ's perturbation; all the
pairs of a task share its task, data key and inner step, hence its minibatches,
which ``over_pairs`` draws once per task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from l2l_jax.checks import MAX_COUNT, positive_float32, positive_int
from l2l_jax.meta.estimators.base import check_common_options
from l2l_jax.meta.unroll import (
    InnerState,
    Weighting,
    init_inner,
    join_chunks,
    split_chunks,
    unroll_task,
    weighted_loss,
)
from l2l_jax.optimizers.base import LearnedOptimizer, MetaParams
from l2l_jax.tasks.base import TaskFamily

PyTree = Any


def check_options(
    batch_size: object, truncation: object, weighting: object, tasks_per_chunk: object, sigma: object, num_pairs: object
) -> None:
    """Raises ``ConfigError`` for an option of ES or PES that is not valid."""
    check_common_options(batch_size, truncation, weighting, tasks_per_chunk)
    positive_float32("sigma", sigma)
    positive_int("num_pairs", num_pairs, at_most=MAX_COUNT)


def perturbations(key: jax.Array, meta_params: MetaParams, shape: tuple[int, ...], sigma: float) -> MetaParams:
    """ε ~ N(0, σ² I) in the shape of φ, with leading axes ``shape``, in φ's dtypes."""
    leaves, treedef = jax.tree.flatten(meta_params)
    keys = jax.random.split(key, max(len(leaves), 1))
    return treedef.unflatten(
        [sigma * jax.random.normal(k, shape + jnp.shape(x), jnp.result_type(x)) for k, x in zip(keys, leaves)]
    )


def init_pairs(
    optimizer: LearnedOptimizer,
    meta_params: MetaParams,
    family: TaskFamily,
    key: jax.Array,
    batch_size: int,
    num_pairs: int,
) -> InnerState:
    """``batch_size`` fresh tasks (as ``init_inner``), each repeated for ``num_pairs`` pairs: axes ``(tasks, pairs)``."""
    inner = init_inner(optimizer, meta_params, family, key, batch_size)
    return jax.tree.map(lambda x: jnp.broadcast_to(x[:, None], (x.shape[0], num_pairs, *x.shape[1:])), inner)


def run_perturbed(
    optimizer: LearnedOptimizer,
    family: TaskFamily,
    meta_params: MetaParams,
    inner: InnerState,
    num_steps: int,
    weighting: Weighting,
) -> tuple[InnerState, jax.Array]:
    """One run (no leading axes) advanced by ``num_steps`` steps of the optimizer at ``meta_params``.

    Returns:
      ``(inner_after, weighted_loss)``; no gradient flows anywhere (forward only).
    """
    inner_after, losses = unroll_task(optimizer.as_optax(meta_params), family, inner, num_steps)
    return jax.lax.stop_gradient(inner_after), jax.lax.stop_gradient(weighted_loss(losses, weighting))


def antithetic_pair(
    optimizer: LearnedOptimizer,
    family: TaskFamily,
    meta_params: MetaParams,
    eps: MetaParams,
    positive: InnerState,
    negative: InnerState,
    num_steps: int,
    weighting: Weighting,
) -> tuple[InnerState, InnerState, jax.Array, jax.Array]:
    """Advances ``positive`` with φ + ε and ``negative`` with φ − ε (one pair, no leading axes).

    Returns:
      ``(positive_after, negative_after, loss_plus, loss_minus)``: the runs after
      ``num_steps`` steps and their weighted losses (forward only).
    """
    plus = jax.tree.map(jnp.add, meta_params, eps)
    minus = jax.tree.map(jnp.subtract, meta_params, eps)
    positive, loss_plus = run_perturbed(optimizer, family, plus, positive, num_steps, weighting)
    negative, loss_minus = run_perturbed(optimizer, family, minus, negative, num_steps, weighting)
    return positive, negative, loss_plus, loss_minus


def over_pairs(per_pair: Callable[..., tuple[Any, ...]], *args: PyTree) -> tuple[Any, ...]:
    """``vmap(per_pair)`` over the pair axis of one task's ``args``; what the pairs share goes in once.

    Every run of a task (each pair, either sign) has the task's ``task_params``,
    data key and inner step: ``init_pairs`` repeats them over the pairs, and an
    unroll advances every run's step alike. So for each ``InnerState`` among
    ``args`` those three fields are taken from the first pair and passed unbatched:
    the minibatches (their draw, gather and conversion), and whatever else depends
    on them alone, are computed once per task and step rather than once per run.
    The results are those of a plain ``vmap`` (the same keys draw the same data);
    the outputs keep the pair axis (shared fields are broadcast back over it), so
    the state keeps its shapes.
    """

    def in_axis(x: PyTree) -> PyTree:
        return InnerState(None, 0, 0, None, None) if isinstance(x, InnerState) else 0

    def shared(x: PyTree) -> PyTree:
        if not isinstance(x, InnerState):
            return x
        first = jax.tree.map(lambda a: a[0], (x.task_params, x.key, x.step))
        return x._replace(task_params=first[0], key=first[1], step=first[2])

    return jax.vmap(per_pair, in_axes=tuple(in_axis(a) for a in args))(*(shared(a) for a in args))


def over_tasks(per_task: Callable[..., tuple[Any, ...]], tasks_per_chunk: int | None, *args: PyTree) -> tuple[Any, ...]:
    """``vmap(per_task)`` over the leading task axis of ``args``, or ``lax.map`` over chunks of that many tasks."""
    if tasks_per_chunk is None or tasks_per_chunk == jax.tree.leaves(args)[0].shape[0]:
        return jax.vmap(per_task)(*args)
    out = jax.lax.map(lambda chunk: jax.vmap(per_task)(*chunk), split_chunks(args, tasks_per_chunk))
    return join_chunks(out)


def scaled(tree: PyTree, factor: jax.Array) -> PyTree:
    """Every leaf times ``factor`` (a scalar), in the leaf's dtype."""
    return jax.tree.map(lambda x: x * factor.astype(x.dtype), tree)


def mean_over_runs(tree: PyTree) -> PyTree:
    """The mean over the leading ``(tasks, pairs)`` axes of every leaf."""
    return jax.tree.map(lambda x: jnp.mean(x, axis=(0, 1)), tree)
