"""Meta-training: truncated BPTT over batches of tasks, with validation and exact resume."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import numbers
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from l2l_jax import optimizers as optimizers_lib
from l2l_jax import tasks as tasks_lib
from l2l_jax.errors import ConfigError, MetaTrainingError, RunDirectoryError, Terminated, positive_int
from l2l_jax.meta import run_directory as rd
from l2l_jax.meta import sharding as sh
from l2l_jax.meta.unroll import (
    WEIGHTINGS,
    InnerState,
    check_remat,
    check_tasks_per_chunk,
    init_inner,
    meta_value_and_grad,
    unroll,
    weighted_loss,
)
from l2l_jax.optimizers.base import LearnedOptimizer, MetaParams, check_meta_params
from l2l_jax.tasks.base import TaskFamily

META_LR_SCHEDULES = ("constant", "cosine")
META_OPTIMIZERS = {"adam": optax.adam, "sgd": optax.sgd, "rmsprop": optax.rmsprop, "adamw": optax.adamw}


@dataclasses.dataclass(frozen=True)
class MetaTrainConfig:
    """Everything that determines a meta-training run (with the seed, exactly).

    Attributes:
      task: registered task family name (see :func:`l2l_jax.tasks.available`).
      task_options: keyword arguments of the task family.
      optimizer: ``"lstm"`` or ``"linear_rnn"``.
      optimizer_options: keyword arguments of the learned optimizer (for the LSTM:
        ``preset`` and any override such as ``hidden_size``).
      num_meta_steps: meta-updates of φ; each is one truncation of every task.
      horizon: T, the inner steps of one run before tasks are resampled (paper: 100).
      truncation: K, the inner steps per meta-update (paper: 20); must divide T.
      batch_size: tasks per meta-step (vmapped).
      meta_optimizer: ``"adam"`` (paper), ``"adamw"``, ``"rmsprop"`` or ``"sgd"``.
      meta_lr: the meta-optimizer's learning rate.
      meta_lr_schedule: ``"constant"``, or ``"cosine"`` (decay to 0.1·meta_lr over
        ``num_meta_steps``).
      clip_norm: clip the meta-gradient to this global norm (``None``: no clipping).
      first_order: drop second derivatives (paper's default) or keep them.
      weighting: ``"uniform"`` (w_t = 1), ``"final"`` (last loss only) or
        ``"log"`` (Σ log f(θ_t); see :func:`l2l_jax.meta.weighted_loss`).
      remat: ``True``: ``jax.checkpoint`` each inner step (less memory, more
        compute); ``"segments"``: also checkpoint √K-step segments, for long
        truncations (see :func:`l2l_jax.meta.unroll`).
      tasks_per_chunk: ``None``: unroll the whole batch at once (``vmap``); a
        divisor c of ``batch_size``: unroll it in chunks of c tasks, one after the
        other (see :func:`l2l_jax.meta.meta_value_and_grad`). Same result up to
        float rounding; on a CPU, 1 is the fastest. With several devices, c must
        be a multiple of their number.
      validate_every: validate φ on held-out tasks every this many meta-steps and
        keep the best (0, or before the first validation: the latest φ is kept).
      num_val_tasks: held-out tasks for validation (full T-step runs).
      checkpoint_every: write a resumable checkpoint every this many meta-steps.
      seed: the seed; the run is a deterministic function of the config.
    """

    task: str = "quadratic"
    task_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    optimizer: str = "lstm"
    optimizer_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    num_meta_steps: int = 1000
    horizon: int = 100
    truncation: int = 20
    batch_size: int = 128
    meta_optimizer: str = "adam"
    meta_lr: float = 1e-3
    meta_lr_schedule: str = "constant"
    clip_norm: float | None = None
    first_order: bool = True
    weighting: str = "uniform"
    remat: bool | str = False
    tasks_per_chunk: int | None = None
    validate_every: int = 100
    num_val_tasks: int = 64
    checkpoint_every: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        def count(name: str, allow_zero: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (0 if allow_zero else 1):
                raise ConfigError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} integer, got {v!r}")

        def choice(name: str, choices: Sequence[str]) -> None:
            v = getattr(self, name)
            if not isinstance(v, str) or v not in choices:
                raise ConfigError(f"unknown {name} {v!r}; choose one of {', '.join(choices)}")

        def is_number(v: object) -> bool:
            return isinstance(v, numbers.Real) and not isinstance(v, bool)

        for name in ("task", "optimizer"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{name} must be a non-empty name, got {getattr(self, name)!r}")
        for name in ("task_options", "optimizer_options"):
            v = getattr(self, name)
            if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
                raise ConfigError(f"{name} must be a dict of keyword options, got {v!r}")
            try:
                json.dumps(v, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{name} must hold JSON values (numbers, strings, lists, dicts): {e}") from None
        for name in ("num_meta_steps", "horizon", "truncation", "batch_size", "num_val_tasks", "checkpoint_every"):
            count(name)
        count("validate_every", allow_zero=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be an integer from 0 to 2**32 - 1, got {self.seed!r}")
        if self.horizon % self.truncation:
            raise ConfigError(
                f"the truncation length ({self.truncation}) must divide the horizon ({self.horizon}), "
                "so every run splits into whole truncations"
            )
        if not (is_number(self.meta_lr) and math.isfinite(self.meta_lr) and self.meta_lr > 0):
            raise ConfigError(f"meta_lr must be a positive number, got {self.meta_lr!r}")
        choice("meta_lr_schedule", META_LR_SCHEDULES)
        if self.clip_norm is not None and not (
            is_number(self.clip_norm) and math.isfinite(self.clip_norm) and self.clip_norm > 0
        ):
            raise ConfigError(f"clip_norm must be a positive number or None, got {self.clip_norm!r}")
        if not isinstance(self.first_order, bool):
            raise ConfigError(f"first_order must be True or False, got {self.first_order!r}")
        check_remat(self.remat)
        check_tasks_per_chunk(self.tasks_per_chunk, self.batch_size)
        choice("weighting", WEIGHTINGS)
        choice("meta_optimizer", tuple(META_OPTIMIZERS))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MetaTrainConfig:
        """The config from :meth:`to_dict`'s output (e.g. a run's ``config.json``).

        Raises:
          ConfigError: if ``d`` is not a dict, names unknown options, or holds invalid values.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"a meta-training config must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown meta-training option(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def build_optimizer(self) -> LearnedOptimizer:
        return optimizers_lib.get(self.optimizer, **self.optimizer_options)

    def build_task(self) -> TaskFamily:
        return tasks_lib.get(self.task, **self.task_options)

    def build_meta_optimizer(self) -> optax.GradientTransformation:
        lr: float | optax.Schedule = self.meta_lr
        if self.meta_lr_schedule == "cosine":
            lr = optax.cosine_decay_schedule(self.meta_lr, self.num_meta_steps, alpha=0.1)
        tx = META_OPTIMIZERS[self.meta_optimizer](lr)
        if self.clip_norm is not None:
            tx = optax.chain(clip_by_global_norm(self.clip_norm), tx)
        return tx


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
    """``optax.clip_by_global_norm`` with the norm of :func:`global_norm` (no overflow)."""

    def update_fn(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, optax.EmptyState]:
        del params
        norm = global_norm(updates)
        factor = jnp.where(norm < max_norm, 1.0, max_norm / norm)
        return jax.tree.map(lambda t: t * factor.astype(t.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


class MetaTrainState(NamedTuple):
    """The whole state of a meta-training run; a checkpoint is exactly this."""

    step: jax.Array
    meta_params: MetaParams
    meta_opt_state: optax.OptState
    inner: InnerState
    healthy: jax.Array  # False after a non-finite step: the inner runs are restarted.
    skipped: jax.Array  # Meta-updates skipped for a non-finite loss or gradient.
    best_meta_params: MetaParams
    best_val: jax.Array
    best_step: jax.Array


@dataclasses.dataclass
class MetaTrainResult:
    """What :func:`meta_train` returns."""

    optimizer: LearnedOptimizer
    meta_params: MetaParams  # The best φ on validation (the last one if never validated).
    final_meta_params: MetaParams
    config: MetaTrainConfig
    history: list[dict[str, Any]]
    skipped: int
    best_val: float  # +inf when no validation ran.
    run_dir: Path | None
    start_step: int = 0  # The step this call started from (> 0 when it resumed).

    @property
    def steps_run(self) -> int:
        """Meta-steps run by this call (``config.num_meta_steps`` in total)."""
        return self.config.num_meta_steps - self.start_step

    def as_optax(self) -> optax.GradientTransformationExtraArgs:
        """The trained optimizer (best φ) as an optax transformation."""
        return self.optimizer.as_optax(self.meta_params)


def validation_loss(
    optimizer: LearnedOptimizer,
    meta_params: MetaParams,
    family: TaskFamily,
    inner: InnerState,
    num_steps: int,
    weighting: str,
) -> jax.Array:
    """Mean meta-loss of full ``num_steps`` runs from ``inner`` (no gradient in φ)."""
    tx = optimizer.as_optax(meta_params)

    def one(s: InnerState) -> jax.Array:
        _, _, losses = unroll(
            tx, lambda p, k: family.loss(s.task_params, p, k), s.params, s.opt_state, s.key, num_steps
        )
        return weighted_loss(losses, weighting)

    return jnp.mean(jax.vmap(one)(inner))


class _Keys:
    """The run's keys, all derived from the seed so that the run is reproducible."""

    def __init__(self, seed: int) -> None:
        base = jax.random.PRNGKey(seed)
        self.meta_init, self.tasks, self.validation = (jax.random.fold_in(base, i) for i in range(3))

    def tasks_at(self, step: int) -> jax.Array:
        return jax.random.fold_in(self.tasks, step)


def meta_train(
    config: MetaTrainConfig,
    run_dir: str | Path | None = None,
    *,
    family: TaskFamily | None = None,
    optimizer: LearnedOptimizer | None = None,
    meta_optimizer: optax.GradientTransformation | None = None,
    progress: bool = True,
    resume: bool = True,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
    init_meta_params: MetaParams | None = None,
    devices: int | Sequence[jax.Device] | None = None,
    steps_per_call: int = 1,
    overwrite: bool = False,
    on_start: Callable[[int], None] | None = None,
) -> MetaTrainResult:
    """Meta-trains a learned optimizer by truncated BPTT.

    Each meta-step unrolls every task in the batch for ``config.truncation`` inner
    steps (one ``lax.scan``, ``vmap``-ed over tasks), takes ``jax.grad`` of the
    weighted loss in φ, and updates φ. Parameters and optimizer state carry over to
    the next truncation; after ``config.horizon`` steps new tasks are drawn. A
    non-finite loss or meta-gradient skips the update (counted in ``skipped``) and
    restarts the inner runs.

    Args:
      config: the run's settings.
      run_dir: where to write config, metrics, checkpoints and the trained φ
        (see :mod:`l2l_jax.meta.run_directory`). If it holds a checkpoint of the
        same config, training resumes from it and gives the same result as an
        uninterrupted run. A new run starts only in an empty or missing
        directory, or one holding just this config (a run killed before its
        first checkpoint). The directory is locked for the whole call.
        ``None``: keep nothing on disk.
      family: a task family to use instead of building ``config.task`` by name
        (e.g. your own; then ``config.task`` is only a label).
      optimizer: a learned optimizer to use instead of ``config.optimizer``.
      meta_optimizer: any optax transformation for φ, instead of
        ``config.meta_optimizer``/``meta_lr``/``clip_norm``.
      progress: show a progress bar.
      resume: resume from ``run_dir``'s checkpoint if there is one; ``False``
        starts over in a run directory of the same config.
      on_step: called as ``on_step(step, metrics)`` after every meta-step (for
        your own logging); ``metrics`` has ``meta_loss``, ``grad_norm``,
        ``skipped`` and, on validation steps, ``val_loss``.
      init_meta_params: start from this φ (e.g. a trained one, to fine-tune)
        instead of ``optimizer.init``.
      devices: split each meta-step's batch of tasks over devices (see
        :mod:`l2l_jax.meta.sharding`): a number of devices, a list of devices, or
        ``None`` for all devices when ``batch_size`` (and ``tasks_per_chunk``, if
        set) divides evenly over them (otherwise one). The result is the same as on one device up to float
        rounding, and a run may resume on a different number of devices.
      steps_per_call: run up to this many meta-steps in one compiled call (a
        ``lax.scan`` over meta-steps, new tasks drawn inside it), which saves the
        per-call overhead of dispatch and host synchronisation. Calls end at every
        validation and checkpoint step, so the run is the same up to float rounding
        and may resume with another value; ``on_step`` then sees each call's steps
        after the call, and an interruption keeps the last whole call.
      overwrite: start a new run even in a directory holding other files or
        another run, replacing its run files (other files are kept).
      on_start: called as ``on_start(start_step)`` once the run directory is
        opened and checked, before compiling (``start_step`` is 0 for a new run).

    Returns:
      A :class:`MetaTrainResult`; ``result.as_optax()`` is the trained optimizer.

    Raises:
      ConfigError: for invalid settings, or a run directory holding another config.
      RunDirectoryError: if ``run_dir`` is not empty and is not a run directory of
        this config (without ``overwrite``), or one of its files is damaged.
      RunDirectoryBusyError: if another process is writing to ``run_dir``.
      MetaTrainingError: if every meta-step of the run was non-finite (φ untrained).
      KeyboardInterrupt: on Ctrl-C, and :class:`~l2l_jax.errors.Terminated` on
        SIGTERM, after saving a checkpoint to resume from.
    """
    steps_per_call = positive_int("steps_per_call", steps_per_call)
    run_path = Path(run_dir) if run_dir is not None else None
    with contextlib.ExitStack() as stack:
        optimizer = optimizer or config.build_optimizer()
        family = family or config.build_task()
        meta_tx = meta_optimizer or config.build_meta_optimizer()
        keys = _Keys(config.seed)

        def init_state() -> MetaTrainState:
            if init_meta_params is None:
                phi = optimizer.init(keys.meta_init)
            else:
                check_meta_params(optimizer, init_meta_params)
                phi = jax.tree.map(jnp.asarray, init_meta_params)
                if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(phi)):
                    raise ConfigError("init_meta_params holds NaN or infinite values")
            return MetaTrainState(
                step=jnp.zeros((), jnp.int32),
                meta_params=phi,
                meta_opt_state=meta_tx.init(phi),
                inner=init_inner(optimizer, phi, family, keys.tasks_at(0), config.batch_size),
                healthy=jnp.array(True),
                skipped=jnp.zeros((), jnp.int32),
                best_meta_params=phi,
                best_val=jnp.array(jnp.inf, jnp.float32),
                best_step=jnp.zeros((), jnp.int32),
            )

        mesh = _task_mesh(devices, config.batch_size, config.tasks_per_chunk)
        state = init_state()
        initial_meta_params = state.meta_params
        history: list[dict[str, Any]] = []
        if run_path is not None:
            stack.enter_context(rd.lock(run_path))
            state, history = _open_run_dir(run_path, config, state, resume, overwrite)
        start = int(state.step)
        if on_start is not None:
            on_start(start)
        if mesh is not None:
            state = _place(state, mesh)

        def train_step(state: MetaTrainState) -> tuple[MetaTrainState, dict[str, jax.Array]]:
            (loss, (inner, _)), grads = meta_value_and_grad(
                state.meta_params,
                optimizer,
                family,
                state.inner,
                config.truncation,
                first_order=config.first_order,
                weighting=config.weighting,
                remat=config.remat,
                tasks_per_chunk=config.tasks_per_chunk,
            )
            grad_norm = global_norm(grads)
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            updates, meta_opt_state = meta_tx.update(grads, state.meta_opt_state, state.meta_params)
            new_phi = optax.apply_updates(state.meta_params, updates)
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
            new_state = state._replace(
                step=state.step + 1,
                meta_params=keep(new_phi, state.meta_params),
                meta_opt_state=keep(meta_opt_state, state.meta_opt_state),
                inner=inner,
                healthy=finite,
                skipped=state.skipped + (~finite).astype(jnp.int32),
            )
            return new_state, {"meta_loss": loss, "grad_norm": grad_norm}

        def run_steps(state: MetaTrainState, num_steps: int) -> tuple[MetaTrainState, dict[str, jax.Array]]:
            """``num_steps`` meta-steps in one call; metrics stacked along a leading step axis."""

            def one(state: MetaTrainState, _: None) -> tuple[MetaTrainState, dict[str, jax.Array]]:
                # New tasks after a whole run, or after a non-finite step, drawn
                # from the step number so that the run does not depend on how the
                # steps are grouped into calls.
                def fresh() -> InnerState:
                    inner = init_inner(
                        optimizer, state.meta_params, family, keys.tasks_at(state.step), config.batch_size
                    )
                    return inner if mesh is None else jax.lax.with_sharding_constraint(inner, sh.task_sharding(mesh))

                reset = (state.inner.step[0] >= config.horizon) | ~state.healthy
                inner = jax.lax.cond(reset, fresh, lambda: state.inner)
                new_state, metrics = train_step(state._replace(inner=inner, healthy=jnp.array(True)))
                return new_state, {**metrics, "skipped": new_state.skipped}

            return jax.lax.scan(one, state, length=num_steps)

        init_inner_jit = jax.jit(lambda phi, key, n: init_inner(optimizer, phi, family, key, n), static_argnums=2)
        if mesh is None:
            run_steps = jax.jit(run_steps, static_argnums=1)
            make_inner = init_inner_jit
        else:
            state_shardings = jax.tree.map(lambda x: x.sharding, state)
            run_steps = jax.jit(run_steps, static_argnums=1, out_shardings=(state_shardings, sh.replicated(mesh)))

            def make_inner(phi: MetaParams, key: jax.Array, n: int) -> InnerState:
                inner = init_inner_jit(phi, key, n)
                return sh.shard_tasks(inner, mesh) if n % mesh.devices.size == 0 else sh.replicate(inner, mesh)

        # From the initial φ, so a resumed run validates on exactly the same states.
        val_inner = make_inner(initial_meta_params, keys.validation, config.num_val_tasks)
        validate = jax.jit(
            lambda phi: validation_loss(optimizer, phi, family, val_inner, config.horizon, config.weighting)
        )

        def checkpoint(state: MetaTrainState) -> None:
            if run_path is None:
                return
            # Optimizer first, then metrics and checkpoint: a kill in between leaves
            # an optimizer and metrics rows past the checkpoint, which the resumed
            # run rewrites.
            _write_optimizer(run_path, optimizer, state, config, family)
            rd.save_checkpoint(run_path, state, history)

        def call_length(done: int) -> int:
            """Steps in the next call: up to ``steps_per_call``, ending on every step that validates or checkpoints."""
            stops = [
                config.num_meta_steps,
                done + steps_per_call,
                (done // config.checkpoint_every + 1) * config.checkpoint_every,
            ]
            if config.validate_every:
                stops.append((done // config.validate_every + 1) * config.validate_every)
            return min(stops) - done

        bar = tqdm(
            total=config.num_meta_steps,
            initial=start,
            desc="meta-train",
            disable=not progress,
            unit="step",
            mininterval=0.5,
        )
        stack.enter_context(_sigterm_raises_terminated())
        try:
            done = start
            while done < config.num_meta_steps:
                num = call_length(done)
                t0 = time.perf_counter()
                new_state, metrics = run_steps(state, num)
                metrics = {k: np.asarray(v) for k, v in metrics.items()}  # One transfer per call.
                seconds = (time.perf_counter() - t0) / num
                rows = [
                    {
                        "step": done + i + 1,
                        "meta_loss": float(metrics["meta_loss"][i]),
                        "grad_norm": float(metrics["grad_norm"][i]),
                        "skipped": int(metrics["skipped"][i]),
                        "seconds": seconds,
                    }
                    for i in range(num)
                ]
                done += num
                # Only on the grid (calls end there), so extending a finished run
                # validates exactly where a longer run would have.
                if config.validate_every and done % config.validate_every == 0:
                    val = float(validate(new_state.meta_params))
                    rows[-1]["val_loss"] = val
                    if math.isfinite(val) and val < float(new_state.best_val):
                        new_state = new_state._replace(
                            best_meta_params=new_state.meta_params,
                            best_val=jnp.asarray(val, jnp.float32),
                            best_step=jnp.asarray(done, jnp.int32),
                        )
                # Commit the steps: `state` only ever holds completed steps, so an
                # interruption anywhere saves a consistent checkpoint.
                history.extend(rows)
                state = new_state
                bar.update(num)
                bar.set_postfix(  # refresh=False: redraws only at tqdm's own interval.
                    meta_loss=f"{rows[-1]['meta_loss']:.4g}",
                    best_val=f"{float(state.best_val):.4g}",
                    skipped=rows[-1]["skipped"],
                    refresh=False,
                )
                if done % config.checkpoint_every == 0 or done == config.num_meta_steps:
                    checkpoint(state)
                if on_step is not None:
                    for row in rows:
                        on_step(row["step"], row)
        except KeyboardInterrupt:
            # `state` is always a completed step: save it so the run resumes from here.
            with _signals_deferred():
                checkpoint(state)
            bar.close()
            raise
        bar.close()
        if run_path is not None:
            from l2l_jax.evaluation.plots import plot_meta_training

            plot_meta_training(
                history,
                run_path / rd.PLOT,
                weighting=config.weighting,
                title=f"meta-training {config.optimizer} on {config.task}",
            )
        if int(state.step) > 0 and int(state.skipped) == int(state.step):
            raise MetaTrainingError(
                f"every one of the {int(state.step)} meta-steps was skipped: the meta-loss or meta-gradient was "
                "never finite, so φ is untrained; try a smaller meta_lr or clip_norm, or check the task's loss"
            )
        return MetaTrainResult(
            optimizer=optimizer,
            meta_params=_best(state)[0],
            final_meta_params=state.meta_params,
            config=config,
            history=history,
            skipped=int(state.skipped),
            best_val=float(state.best_val),
            run_dir=run_path,
            start_step=start,
        )


def _task_mesh(
    devices: int | Sequence[jax.Device] | None, batch_size: int, tasks_per_chunk: int | None
) -> sh.Mesh | None:
    """The mesh to split tasks over, or ``None`` to stay on the default device."""
    if devices is None:
        n = len(jax.devices())
        if n == 1 or batch_size % n or (tasks_per_chunk or batch_size) % n:
            return None
    mesh = sh.task_mesh(devices)
    sh.check_divisible(batch_size, mesh)
    if tasks_per_chunk is not None and tasks_per_chunk % mesh.devices.size:
        n = mesh.devices.size
        raise ConfigError(
            f"tasks_per_chunk={tasks_per_chunk} tasks cannot be split evenly over {n} devices; "
            f"use a multiple of {n}, fewer devices (devices=...), or tasks_per_chunk=None"
        )
    return mesh if mesh.devices.size > 1 else None


def _place(state: MetaTrainState, mesh: sh.Mesh) -> MetaTrainState:
    """Tasks split over the mesh; φ, its optimizer state and counters on every device."""
    inner = state.inner
    state = sh.replicate(state._replace(inner=()), mesh)
    return state._replace(inner=sh.shard_tasks(inner, mesh))


def _best(state: MetaTrainState) -> tuple[MetaParams, int]:
    """The best validated φ and its step, or the latest if none was validated (yet)."""
    if math.isfinite(float(state.best_val)):
        return state.best_meta_params, int(state.best_step)
    return state.meta_params, int(state.step)


@contextlib.contextmanager
def _sigterm_raises_terminated() -> Iterator[None]:
    """Turns SIGTERM into :class:`Terminated` (a KeyboardInterrupt) for the block, in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ignores SIGINT and SIGTERM for the block (the last checkpoint is being saved), in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def _config_differences(saved: Any, config: MetaTrainConfig) -> list[str] | None:
    """The options in which a saved config differs from ``config`` (``None``: not a config at all).

    Only the length may differ (to extend a finished run), and only where it does
    not change the learning-rate schedule.
    """
    if not isinstance(saved, dict):
        return None
    mine = json.loads(json.dumps(config.to_dict()))  # Tuples compare as the lists JSON stores.
    may_change = {"num_meta_steps"} if config.meta_lr_schedule == "constant" else set()
    return sorted(k for k in set(saved) | set(mine) if k not in may_change and saved.get(k) != mine.get(k))


def _open_run_dir(
    run_path: Path, config: MetaTrainConfig, fresh: MetaTrainState, resume: bool, overwrite: bool
) -> tuple[MetaTrainState, list[dict[str, Any]]]:
    """Restores the checkpoint of a run of this config, or starts a new run where that loses nothing.

    Called with the directory's lock held.
    """
    rd.remove_stray_temp_files(run_path)
    files = rd.user_files(run_path)
    differ = None
    if rd.CONFIG in files and not overwrite:
        differ = _config_differences(rd.read_json(run_path / rd.CONFIG), config)
        if differ is None:
            raise RunDirectoryError(f"{run_path / rd.CONFIG} is corrupt: not a JSON object")
    if not overwrite and resume and rd.CHECKPOINT in files:
        if differ is None:
            raise RunDirectoryError(f"{run_path} holds a checkpoint but no {rd.CONFIG}; it cannot be resumed")
        if differ:
            raise ConfigError(
                f"{run_path} holds a run with a different configuration ({', '.join(differ)} differ); "
                "use another run directory, or --overwrite (overwrite=True) to replace that run"
            )
        state, history = rd.load_checkpoint(run_path, fresh)
        history = [r for r in history if r["step"] <= int(state.step)]
        rd.write_json(run_path / rd.CONFIG, json.loads(json.dumps(config.to_dict())))
        if int(state.step) < config.num_meta_steps:
            # φ will change: an earlier evaluation no longer describes it.
            for name in (rd.EVALUATION_JSON, rd.EVALUATION_TABLE, rd.LOSS_CURVES_PLOT):
                (run_path / name).unlink(missing_ok=True)
        return state, history
    same_run = differ == [] and (not resume or files == [rd.CONFIG])
    if files and not (overwrite or same_run):
        foreign = [f for f in files if f not in rd.RUN_FILES]
        if foreign:
            listed = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            why = f"it holds files that meta-training did not write ({listed})"
        elif differ:
            why = f"it holds a run with a different configuration ({', '.join(differ)} differ)"
        else:
            why = f"it holds a run with no checkpoint to resume ({', '.join(files)})"
        raise RunDirectoryError(
            f"refusing to start a new run in {run_path}: {why}; use another run directory, "
            "or --overwrite (overwrite=True) to replace its run files"
        )
    for name in rd.RUN_FILES:
        (run_path / name).unlink(missing_ok=True)
    rd.write_json(run_path / rd.CONFIG, config.to_dict())
    return fresh, []


def _write_optimizer(
    run_path: Path, optimizer: LearnedOptimizer, state: MetaTrainState, config: MetaTrainConfig, family: TaskFamily
) -> None:
    """Saves the best φ with the metadata that :func:`l2l_jax.pretrained.load` needs."""
    best_phi, best_step = _best(state)
    old: Any = {}
    if (run_path / rd.OPTIMIZER_META).is_file():
        try:
            old = rd.read_optimizer_meta(run_path)
        except RunDirectoryError:
            old = {}  # Rewritten below from the training state.
    if not isinstance(old, dict) or old.get("best_step") != best_step or old.get("meta_steps") != int(state.step):
        old = {}  # Figures added by `evaluate` describe another φ: drop them.
    rd.save_optimizer(
        run_path,
        {
            **old,  # Keeps evaluation figures that `evaluate` added for this φ.
            "optimizer": optimizer.name,
            "optimizer_config": optimizer.config(),
            "task": config.task,
            "task_options": config.task_options,  # What rebuilds the task by name.
            "task_config": family.config(),
            "meta_steps": int(state.step),
            "best_step": best_step,
            "best_val_loss": float(state.best_val) if math.isfinite(float(state.best_val)) else None,
            "skipped_meta_steps": int(state.skipped),
            "training_config": config.to_dict(),
        },
        best_phi,
    )
