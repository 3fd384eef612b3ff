"""The inner loop as a ``lax.scan``, the meta-loss over it and its gradient in φ."""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from l2l_jax.checks import one_of, positive_int
from l2l_jax.errors import ConfigError
from l2l_jax.optimizers.base import LearnedOptimizer, MetaParams
from l2l_jax.tasks.base import TaskFamily

PyTree = Any
LossFn = Callable[[PyTree, jax.Array], jax.Array]
Weighting = Literal["uniform", "final", "log"]
WEIGHTINGS = ("uniform", "final", "log")
Remat = bool | Literal["segments"]


def check_remat(remat: object) -> None:
    """Raises ``ConfigError`` unless ``remat`` is ``False``, ``True`` or ``"segments"``."""
    if not (isinstance(remat, bool) or remat == "segments"):
        raise ConfigError(f"remat must be False, True or 'segments', got {remat!r}")


def segment_length(num_steps: int) -> int:
    """The divisor of ``num_steps`` closest to √num_steps (segments for ``remat="segments"``)."""
    root = math.sqrt(num_steps)
    return min((d for d in range(1, num_steps + 1) if num_steps % d == 0), key=lambda d: (abs(d - root), d))


class InnerState(NamedTuple):
    """A batch of inner runs between truncations (every leaf has a leading task axis).

    Attributes:
      task_params: the sampled tasks.
      params: the optimizees' current θ_t.
      opt_state: the learned optimizer's state (hidden states).
      key: per-task keys; step t's minibatch uses ``fold_in(key, t)``.
      step: per-task inner step t.
    """

    task_params: PyTree
    params: PyTree
    opt_state: PyTree
    key: jax.Array
    step: jax.Array


def unroll(
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    params: PyTree,
    opt_state: PyTree,
    key: jax.Array,
    num_steps: int,
    *,
    start_step: int | jax.Array = 0,
    first_order: bool = True,
    remat: Remat = False,
) -> tuple[PyTree, PyTree, jax.Array]:
    """Runs ``num_steps`` optimizer steps as one ``lax.scan``.

    Args:
      tx: any optax transformation (a learned one built from φ, or a baseline).
      loss_fn: ``loss_fn(params, key) -> scalar``.
      params: θ at ``start_step``.
      opt_state: ``tx``'s state at ``start_step``.
      key: step t draws its minibatch with ``fold_in(key, t)``, so splitting a run
        into truncations does not change the data it sees.
      num_steps: how many steps (>= 1).
      start_step: the global index of the first step.
      first_order: hold ∇_t constant in φ (``stop_gradient``), as the paper does;
        ``False`` keeps second derivatives (exact meta-gradient).
      remat: ``True`` wraps each step in ``jax.checkpoint``: BPTT stores only the
        carry of every step and recomputes the rest. ``"segments"`` also splits
        the run into about √num_steps checkpointed segments of about √num_steps
        steps, so BPTT keeps O(√num_steps) carries instead of num_steps (for long,
        untruncated unrolls), at the price of running the forward pass twice.

    Returns:
      ``(params, opt_state, losses)`` with ``losses[j] = f(θ_{start+j})`` for
      ``j = 0..num_steps`` (``num_steps + 1`` values).
    """
    num_steps = positive_int("num_steps", num_steps)

    def step(carry: tuple[PyTree, PyTree], t: jax.Array) -> tuple[tuple[PyTree, PyTree], jax.Array]:
        params, opt_state = carry
        value, grads = jax.value_and_grad(loss_fn)(params, jax.random.fold_in(key, t))
        seen = (grads, value)  # What the optimizer reads.
        if first_order:
            # Only the optimizer's inputs are held constant; f(θ_t) itself (the
            # returned `value`) stays differentiable in θ_t, hence in φ.
            seen = jax.lax.stop_gradient(seen)
        updates, opt_state = tx.update(seen[0], opt_state, params, value=seen[1])
        return (optax.apply_updates(params, updates), opt_state), value

    check_remat(remat)
    tx = optax.with_extra_args_support(tx)  # Plain GradientTransformations take no value=.
    if remat:
        step = jax.checkpoint(step)
    steps = jnp.asarray(start_step) + jnp.arange(int(num_steps))
    if remat == "segments":
        seg = segment_length(int(num_steps))

        @jax.checkpoint
        def segment(carry: tuple[PyTree, PyTree], ts: jax.Array) -> tuple[tuple[PyTree, PyTree], jax.Array]:
            return jax.lax.scan(step, carry, ts)

        (params, opt_state), losses = jax.lax.scan(segment, (params, opt_state), steps.reshape(-1, seg))
        losses = losses.reshape(-1)
    else:
        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), steps)
    final = loss_fn(params, jax.random.fold_in(key, steps[-1] + 1))
    return params, opt_state, jnp.concatenate([losses, final[None].astype(losses.dtype)])


def weighted_loss(losses: jax.Array, weighting: Weighting = "uniform") -> jax.Array:
    """Σ_t w_t f(θ_t) over ``losses[..., 1:]`` (f(θ_start) does not depend on this unroll's φ).

    ``"uniform"``: w_t = 1 for every step. ``"final"``: only the last loss (the
    worked example's choice). ``"log"``: Σ_t log f(θ_t), so that halving a late,
    small loss counts as much as halving an early, large one (for positive losses;
    values are clamped at 1e-30).
    """
    one_of("weighting", weighting, WEIGHTINGS)
    if weighting == "log":
        return jnp.sum(jnp.log(jnp.maximum(losses[..., 1:], 1e-30)), axis=-1)
    if weighting == "final":
        return losses[..., -1]
    return jnp.sum(losses[..., 1:], axis=-1)


def init_inner(
    optimizer: LearnedOptimizer,
    meta_params: MetaParams,
    family: TaskFamily,
    key: jax.Array,
    batch_size: int,
) -> InnerState:
    """Samples ``batch_size`` tasks and their θ0, with fresh optimizer state (h = 0)."""
    tx = optimizer.as_optax(meta_params)

    def one(k: jax.Array) -> InnerState:
        k_task, k_init, k_data = jax.random.split(k, 3)
        task_params = family.sample(k_task)
        params = family.init(task_params, k_init)
        return InnerState(task_params, params, tx.init(params), k_data, jnp.zeros((), jnp.int32))

    return jax.vmap(one)(jax.random.split(key, batch_size))


def unroll_task(
    tx: optax.GradientTransformation,
    family: TaskFamily,
    inner: InnerState,
    num_steps: int,
    *,
    first_order: bool = True,
    remat: Remat = False,
) -> tuple[InnerState, jax.Array]:
    """Advances one task's inner run (no task axis) by ``num_steps`` steps of ``tx``.

    Args:
      tx: the optimizer (e.g. ``optimizer.as_optax(φ)`` for some φ).
      family: the task family of ``inner.task_params``.
      inner: one task's run, without the leading task axis.
      num_steps: inner steps to run.
      first_order: as for ``unroll``.
      remat: as for ``unroll``.

    Returns:
      ``(inner_after, losses)``; ``losses`` has ``num_steps + 1`` values, as for ``unroll``.
    """
    params, opt_state, losses = unroll(
        tx,
        lambda p, k: family.loss(inner.task_params, p, k),
        inner.params,
        inner.opt_state,
        inner.key,
        num_steps,
        start_step=inner.step,
        first_order=first_order,
        remat=remat,
    )
    return inner._replace(params=params, opt_state=opt_state, step=inner.step + num_steps), losses


def truncation_loss(
    meta_params: MetaParams,
    optimizer: LearnedOptimizer,
    family: TaskFamily,
    inner: InnerState,
    num_steps: int,
    *,
    first_order: bool = True,
    weighting: Weighting = "uniform",
    remat: Remat = False,
) -> tuple[jax.Array, tuple[InnerState, jax.Array]]:
    """The meta-loss of one truncation, averaged over the batch of tasks.

    Differentiate it with ``jax.grad(truncation_loss, has_aux=True)``; the optax
    transformation is built from ``meta_params`` inside, so the gradient reaches φ.

    Returns:
      ``(meta_loss, (inner_after, losses))``; ``inner_after`` is detached from φ
      (truncated BPTT) and ``losses`` has shape ``(batch, num_steps + 1)``.
    """
    tx = optimizer.as_optax(meta_params)
    after, losses = jax.vmap(lambda s: unroll_task(tx, family, s, num_steps, first_order=first_order, remat=remat))(
        inner
    )
    meta_loss = jnp.mean(weighted_loss(losses, weighting))
    return meta_loss, (jax.lax.stop_gradient(after), losses)


def check_tasks_per_chunk(tasks_per_chunk: object, batch_size: int) -> None:
    """Raises ``ConfigError`` unless ``tasks_per_chunk`` is ``None`` or a positive divisor of ``batch_size``."""
    if tasks_per_chunk is None:
        return
    tasks_per_chunk = positive_int("tasks_per_chunk", tasks_per_chunk)
    if batch_size % tasks_per_chunk:
        raise ConfigError(
            f"tasks_per_chunk={tasks_per_chunk} must divide the batch of {batch_size} tasks, "
            "so that every chunk has the same number of tasks"
        )


def split_chunks(tree: PyTree, tasks_per_chunk: int) -> PyTree:
    """(B, ...) -> (B / c, c, ...); chunk i holds tasks i, i + B/c, i + 2B/c, ...

    Interleaved rather than contiguous so that, when the task axis is split over
    devices in contiguous blocks, every chunk is spread evenly over the devices.
    """
    return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(tasks_per_chunk, -1, *x.shape[1:]), 0, 1), tree)


def join_chunks(tree: PyTree) -> PyTree:
    """The inverse of ``split_chunks``."""
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:]), tree)


def meta_value_and_grad(
    meta_params: MetaParams,
    optimizer: LearnedOptimizer,
    family: TaskFamily,
    inner: InnerState,
    num_steps: int,
    *,
    first_order: bool = True,
    weighting: Weighting = "uniform",
    remat: Remat = False,
    tasks_per_chunk: int | None = None,
) -> tuple[tuple[jax.Array, tuple[InnerState, jax.Array]], MetaParams]:
    """The meta-loss of one truncation (``truncation_loss``) and its gradient in φ.

    ``meta_params``, ``optimizer``, ``family``, ``inner``, ``num_steps``,
    ``first_order``, ``weighting`` and ``remat`` are as for ``truncation_loss``.

    Args:
      tasks_per_chunk: ``None`` unrolls all tasks at once (one ``vmap``). A divisor
        c of the batch size runs the batch as B / c chunks of c tasks, one after
        the other (``lax.map``), each with its own forward and backward pass, and
        averages their losses and gradients. The result is the same up to float
        rounding; the working set is that of c tasks. Which c is fastest
        depends on the machine (see the performance page of the docs).

    Returns:
      ``((meta_loss, (inner_after, losses)), meta_grad)``, as
      ``jax.value_and_grad(truncation_loss, has_aux=True)`` gives.
    """
    value_and_grad = jax.value_and_grad(truncation_loss, has_aux=True)
    options = {"first_order": first_order, "weighting": weighting, "remat": remat}
    batch_size = int(inner.step.shape[0])
    check_tasks_per_chunk(tasks_per_chunk, batch_size)
    if tasks_per_chunk is None or tasks_per_chunk == batch_size:
        return value_and_grad(meta_params, optimizer, family, inner, num_steps, **options)

    def chunk(part: InnerState) -> tuple[jax.Array, InnerState, jax.Array, MetaParams]:
        (loss, (after, losses)), grads = value_and_grad(meta_params, optimizer, family, part, num_steps, **options)
        return loss, after, losses, grads

    loss, after, losses, grads = jax.lax.map(chunk, split_chunks(inner, int(tasks_per_chunk)))
    # Every chunk has the same number of tasks: the mean of the chunk means is the batch mean.
    grads = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
    return (jnp.mean(loss), (join_chunks(after), join_chunks(losses))), grads
