"""One meta-step as a pure function: restart finished runs, estimate the meta-gradient, update φ.

``meta_step`` is what ``l2l_jax.meta.meta_train`` scans over; it is jittable and holds
no host logic (no validation, checkpoints or progress), so it can be embedded in
your own loop or benchmark.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from l2l_jax.meta.estimators.base import Estimate, EstimatorState, GradientEstimator
from l2l_jax.meta.horizons import HorizonFn
from l2l_jax.optimizers.base import MetaParams


class MetaTrainState(NamedTuple):
    """The whole state of a meta-training run; a checkpoint is exactly this.

    Attributes:
      step: meta-steps done.
      meta_params: the current φ.
      meta_opt_state: the meta-optimizer's state.
      inner: the estimator's state (the inner runs); with several ``Member`` s, a
        tuple of their states.
      healthy: ``False`` after a non-finite step: the inner runs are restarted.
      skipped: meta-updates skipped for a non-finite loss, gradient or result (see ``meta_step``).
      best_meta_params: the best φ on validation so far.
      best_val: its validation loss (+inf before any validation).
      best_step: the step it was reached at.
    """

    step: jax.Array
    meta_params: MetaParams
    meta_opt_state: optax.OptState
    inner: Any
    healthy: jax.Array
    skipped: jax.Array
    best_meta_params: MetaParams
    best_val: jax.Array
    best_step: jax.Array


class Member(NamedTuple):
    """One estimator's share of a meta-step (one member of a task mixture).

    Attributes:
      estimator: the estimator over this member's tasks.
      weight: the weight of its meta-loss and meta-gradient in the step's (weights sum to 1).
    """

    estimator: GradientEstimator
    weight: float


def global_norm(tree: Any) -> jax.Array:
    """The global L2 norm of a pytree, computed without overflow.

    Unlike a plain ``sqrt(sum(x**2))``, finite entries as large as ~1e38 in
    float32 give a finite norm: the entries are divided by the largest magnitude
    before squaring. A NaN or infinite entry gives a non-finite norm.
    """
    leaves = [jnp.asarray(x) for x in jax.tree.leaves(tree)]
    if not leaves:
        return jnp.zeros((), jnp.float32)
    dtype = jnp.result_type(*leaves, jnp.float32)
    largest = jnp.max(
        jnp.stack([jnp.max(jnp.abs(x)).astype(dtype) if x.size else jnp.zeros((), dtype) for x in leaves])
    )
    scale = jnp.where(jnp.isfinite(largest) & (largest > 0), largest, jnp.ones((), dtype))
    total = sum(jnp.sum(jnp.square(x.astype(dtype) / scale)) for x in leaves)
    return scale * jnp.sqrt(total)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """``optax.clip_by_global_norm`` with the norm of ``global_norm`` (no overflow)."""

    def update_fn(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, optax.EmptyState]:
        del params
        norm = global_norm(updates)
        factor = jnp.where(norm < max_norm, 1.0, max_norm / norm)
        return jax.tree.map(lambda t: t * factor.astype(t.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def all_finite(tree: Any) -> jax.Array:
    """Whether every floating-point entry of a pytree is finite (integer leaves count as finite); jittable."""
    checks = [
        jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
    ]
    return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


def stays_finite(new: Any, old: Any) -> jax.Array:
    """Whether ``new`` has no non-finite entry where ``old`` (same structure) has a finite one; jittable.

    The test for a meta-optimizer's state after an update: a state may hold
    infinities by design (e.g. a best value that starts at +inf), but an update
    must not turn finite entries into NaN or infinity.
    """

    def ok(a: Any, b: Any) -> jax.Array:
        if not jnp.issubdtype(jnp.result_type(a), jnp.inexact):
            return jnp.array(True)
        return jnp.all(jnp.isfinite(a) | ~jnp.isfinite(b))

    checks = [ok(a, b) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old))]
    return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


def init_members(members: Sequence[Member], meta_params: MetaParams, key: jax.Array) -> EstimatorState:
    """Every member's fresh state from ``key``: the state itself for one member, else a tuple.

    Member ``k`` of several draws its tasks from ``fold_in(key, k)``.
    """
    if len(members) == 1:
        return members[0].estimator.init(meta_params, key)
    return tuple(m.estimator.init(meta_params, jax.random.fold_in(key, k)) for k, m in enumerate(members))


def initial_state(
    members: Sequence[Member], meta_optimizer: optax.GradientTransformation, meta_params: MetaParams, key: jax.Array
) -> MetaTrainState:
    """The state of a run that starts from ``meta_params``: step 0, fresh inner runs from ``key``, nothing validated.

    Args:
      members: the estimators and their weights.
      meta_optimizer: the optax transformation that will update φ.
      meta_params: φ to start from.
      key: the key of the first runs' tasks (``init_members``).
    """
    return MetaTrainState(
        step=jnp.zeros((), jnp.int32),
        meta_params=meta_params,
        meta_opt_state=meta_optimizer.init(meta_params),
        inner=init_members(members, meta_params, key),
        healthy=jnp.array(True),
        skipped=jnp.zeros((), jnp.int32),
        best_meta_params=meta_params,
        best_val=jnp.array(jnp.inf, jnp.float32),
        best_step=jnp.zeros((), jnp.int32),
    )


def _states(members: Sequence[Member], inner: EstimatorState) -> Sequence[EstimatorState]:
    return (inner,) if len(members) == 1 else inner


def _estimate(members: Sequence[Member], meta_params: MetaParams, inner: EstimatorState, key: jax.Array) -> Estimate:
    """The members' weighted meta-loss and meta-gradient, and their new states (as ``init_members`` lays them out).

    Member ``k`` of several estimates with ``fold_in(key, k)``.
    """
    if len(members) == 1:
        return members[0].estimator.estimate(meta_params, inner, key)
    estimates = [
        m.estimator.estimate(meta_params, s, jax.random.fold_in(key, k)) for k, (m, s) in enumerate(zip(members, inner))
    ]
    loss = sum(m.weight * e.meta_loss for m, e in zip(members, estimates))
    grads = jax.tree.map(lambda *g: sum(m.weight * x for m, x in zip(members, g)), *(e.meta_grad for e in estimates))
    return Estimate(loss, grads, tuple(e.state for e in estimates))


def meta_step(
    state: MetaTrainState,
    members: Sequence[Member],
    meta_optimizer: optax.GradientTransformation,
    *,
    horizon: int | HorizonFn,
    task_key: jax.Array,
    perturbation_key: jax.Array,
    constrain: Callable[[EstimatorState], EstimatorState] | None = None,
    truncation: int | None = None,
) -> tuple[MetaTrainState, dict[str, jax.Array]]:
    """One meta-step: restart the inner runs if due, estimate the meta-gradient, update φ.

    The runs restart (``init_members`` from ``fold_in(task_key, state.step)``) after
    ``horizon`` inner steps and after a non-finite step. With ``horizon`` a function
    (``l2l_jax.meta.horizons``), the runs that started at meta-step s last
    ``horizon(s)`` inner steps. Each member estimates its
    meta-gradient with ``fold_in(perturbation_key, state.step)`` (folded with its
    index when there are several); the step's meta-loss and meta-gradient are the
    members' weighted sums. A non-finite loss or gradient leaves φ and the
    meta-optimizer's state unchanged, counts in ``skipped`` and marks the state
    unhealthy, so the next step restarts the runs. An update whose result is not
    finite (``all_finite`` of the new φ, ``stays_finite`` of the new
    meta-optimizer state: e.g. Adam's second moment overflowing on meta-gradients
    near 1e30, or a learning rate that overflows) is skipped and counted the same
    way, but the inner runs, which were finite, carry on. So φ and the
    meta-optimizer's state stay finite if they start finite.

    Args:
      state: the run's state; ``state.inner`` as ``init_members`` makes it.
      members: the estimators (one per member of a task mixture) and their weights.
      meta_optimizer: the optax transformation that updates φ.
      horizon: inner steps of a run, T; or ``horizon(restart_step)``, the length of
        the runs started at that meta-step.
      task_key: the key that restarted runs' tasks are drawn from.
      perturbation_key: the key of the estimators' randomness.
      constrain: applied to restarted states (e.g. a sharding constraint).
      truncation: inner steps per meta-step; needed when ``horizon`` is a function
        (the step the runs started at is ``state.step`` − their inner step / ``truncation``).

    Returns:
      ``(new_state, metrics)`` with scalar ``meta_loss``, ``grad_norm`` and ``skipped``.
    """
    step_key = jax.random.fold_in(task_key, state.step)

    def fresh() -> EstimatorState:
        inner = init_members(members, state.meta_params, step_key)
        return inner if constrain is None else constrain(inner)

    first = members[0].estimator.inner_step(_states(members, state.inner)[0])
    if callable(horizon):
        if truncation is None:
            raise TypeError("meta_step needs truncation= when horizon is a function")
        horizon = horizon(state.step - first // truncation)
    inner = jax.lax.cond((first >= horizon) | ~state.healthy, fresh, lambda: state.inner)
    key = jax.random.fold_in(perturbation_key, state.step)
    loss, grads, inner = _estimate(members, state.meta_params, inner, key)
    grad_norm = global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, meta_opt_state = meta_optimizer.update(grads, state.meta_opt_state, state.meta_params)
    new_phi = optax.apply_updates(state.meta_params, updates)
    applied = finite & all_finite(new_phi) & stays_finite(meta_opt_state, state.meta_opt_state)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(applied, a, b), new, old)
    skipped = state.skipped + (~applied).astype(jnp.int32)
    new_state = state._replace(
        step=state.step + 1,
        meta_params=keep(new_phi, state.meta_params),
        meta_opt_state=keep(meta_opt_state, state.meta_opt_state),
        inner=inner,
        healthy=finite,
        skipped=skipped,
    )
    return new_state, {"meta_loss": loss, "grad_norm": grad_norm, "skipped": skipped}
