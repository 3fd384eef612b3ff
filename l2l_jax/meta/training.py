"""Meta-training's host loop: ``MetaTrainConfig`` and ``meta_train``.

The trainer: compiled calls of ``l2l_jax.meta.step.meta_step`` (with the estimator the
config names), validation, checkpoints into a run directory, progress, interruption
and exact resume. What a meta-gradient is lives in ``l2l_jax.meta.estimators``.

``meta_train`` builds the run from the config here (``_build_run``) and opens its run
directory; the loop and when it stops are in ``_loop``, validation in ``_validate``,
what a checkpoint saves in ``_checkpoints``, signals in ``_signals`` and the devices
that tasks are split over in ``_devices``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from tqdm import tqdm

from l2l_jax import checks as v
from l2l_jax import optimizers as optimizers_lib
from l2l_jax import run_directory as rd
from l2l_jax import tasks as tasks_lib
from l2l_jax.errors import ConfigError, L2LError
from l2l_jax.meta import _processes as processes
from l2l_jax.meta import estimators as estimators_lib
from l2l_jax.meta import sharding as sh
from l2l_jax.meta._checkpoints import best, check_restored, save
from l2l_jax.meta._devices import task_mesh
from l2l_jax.meta._loop import RunSteps, Schedule, check_progress, compile_steps, run_loop
from l2l_jax.meta._signals import signals_recorded, sigterm_raises_terminated
from l2l_jax.meta._validate import validator
from l2l_jax.meta.horizons import HorizonFn, check_horizons, log_uniform_horizons
from l2l_jax.meta.init_source import InitSource, extended, load_source, resolve_optimizer
from l2l_jax.meta.step import Member, MetaTrainState, clip_by_global_norm, initial_state
from l2l_jax.meta.unroll import WEIGHTINGS, InnerState, check_tasks_per_chunk, init_inner
from l2l_jax.optimizers.base import LearnedOptimizer, MetaParams, check_meta_params
from l2l_jax.tasks.base import TaskFamily
from l2l_jax.tasks.mixture import TaskMixture

META_LR_SCHEDULES = ("constant", "cosine")
#: The key of ``config.json`` that records what was built (see ``components``).
COMPONENTS = "components"
META_OPTIMIZERS = {"adam": optax.adam, "sgd": optax.sgd, "rmsprop": optax.rmsprop, "adamw": optax.adamw}
#: The most array elements that a run may hold at once (see ``check_sizes``): 2**36, 256 GiB of float32.
MAX_ELEMENTS = 2**36
#: ``meta_train`` stops a run after this many meta-steps in a row were skipped (see ``max_consecutive_skipped``).
MAX_CONSECUTIVE_SKIPPED = 100


@dataclasses.dataclass(frozen=True)
class MetaTrainConfig:
    """Everything that determines a meta-training run (with the seed, exactly).

    Attributes:
      task: registered task family name (see ``l2l_jax.tasks.available``).
      task_options: keyword arguments of the task family.
      optimizer: ``"lstm"`` or ``"linear_rnn"``.
      optimizer_options: keyword arguments of the learned optimizer (for the LSTM:
        ``preset`` and any override such as ``hidden_size``).
      num_meta_steps: meta-updates of φ; each is one truncation of every task.
      horizon: T, the inner steps of one run before tasks are resampled (paper: 100);
        with ``min_horizon``, the longest run.
      min_horizon: ``None``: every run lasts ``horizon`` steps; else each restart of
        the runs draws their length log-uniformly from [``min_horizon``, ``horizon``],
        rounded up to whole truncations (see ``l2l_jax.meta.horizons``).
      validation_horizon: the length of validation runs (``None``: ``horizon``).
      truncation: K, the inner steps per meta-update (paper: 20); must divide T.
      batch_size: tasks per meta-step (vmapped).
      estimator: the meta-gradient estimator (see ``l2l_jax.meta.estimators``):
        ``"tbptt"`` (truncated BPTT, the paper's), ``"es"`` (truncated antithetic
        evolution strategies), ``"pes"`` (persistent evolution strategies), or one
        you register.
      estimator_options: the estimator's own keyword options
        (``l2l_jax.meta.estimators.options(name)``): ``first_order`` and ``remat``
        for truncated BPTT, ``sigma`` and ``num_pairs`` for ES and PES. Options equal
        to their defaults are dropped, so equal settings record equal configs.
      meta_optimizer: ``"adam"`` (paper), ``"adamw"``, ``"rmsprop"`` or ``"sgd"``.
      meta_lr: the meta-optimizer's learning rate.
      meta_lr_schedule: ``"constant"``, or ``"cosine"`` (decay to 0.1·meta_lr over
        ``num_meta_steps``).
      meta_lr_warmup: meta-steps over which the learning rate rises linearly from 0
        to ``meta_lr`` before the schedule (0: none).
      clip_norm: clip the meta-gradient to this global norm (``None``: no clipping).
      weighting: ``"uniform"`` (w_t = 1), ``"final"`` (last loss only) or
        ``"log"`` (Σ log f(θ_t); see ``l2l_jax.meta.weighted_loss``).
      tasks_per_chunk: ``None``: unroll the whole batch at once (``vmap``); a
        divisor c of ``batch_size``: unroll it in chunks of c tasks, one after the
        other (see ``l2l_jax.meta.meta_value_and_grad``). Same result up to
        float rounding. With several devices, c must
        be a multiple of their number.
      validate_every: validate φ on held-out tasks every this many meta-steps and
        keep the best (0, or before the first validation: the latest φ is kept).
      num_val_tasks: held-out tasks for validation (full T-step runs).
      checkpoint_every: write a resumable checkpoint every this many meta-steps.
      seed: the seed; the run is a deterministic function of the config.
      min_horizon: see above.
      validation_horizon: see above.
      init: start from a trained optimizer instead of ``optimizer.init``: a shipped
        name (``l2l_jax.pretrained.available()``) or a run directory. Its metadata
        sets ``optimizer`` and ``optimizer_options`` (a non-default ``optimizer`` or
        an option that differs from the source's is refused, except that an option
        among the optimizer's ``extensions`` may be switched on, e.g. a feature MLP's
        ``tensor_features``: φ then starts as the source's with the extension's weights
        at zero, and one among its ``free_options``, which have no weights, may be set,
        e.g. a feature MLP's ``warmup_steps``); no code it names is imported. ``None``:
        a fresh φ.
      init_sha256: the SHA-256 of the source's φ file; ``meta_train`` records it
        when the run starts and a resume refuses a source that has changed since.
    """

    task: str = "quadratic"
    task_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    optimizer: str = "lstm"
    optimizer_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    num_meta_steps: int = 1000
    horizon: int = 100
    truncation: int = 20
    batch_size: int = 128
    estimator: str = "tbptt"
    estimator_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    meta_optimizer: str = "adam"
    meta_lr: float = 1e-3
    meta_lr_schedule: str = "constant"
    meta_lr_warmup: int = 0
    clip_norm: float | None = None
    weighting: str = "uniform"
    tasks_per_chunk: int | None = None
    validate_every: int = 100
    num_val_tasks: int = 64
    checkpoint_every: int = 200
    seed: int = 0
    min_horizon: int | None = None
    validation_horizon: int | None = None
    init: str | None = None
    init_sha256: str | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            v.shallow(field.name, getattr(self, field.name))
        v.name("task", self.task)
        v.name("optimizer", self.optimizer)
        v.json_options("task_options", self.task_options)
        v.json_options("optimizer_options", self.optimizer_options)
        v.json_options("estimator_options", self.estimator_options)
        for name in ("num_meta_steps", "horizon", "truncation", "batch_size", "num_val_tasks", "checkpoint_every"):
            v.positive_int(name, getattr(self, name), at_most=v.MAX_COUNT)
        v.non_negative_int("validate_every", self.validate_every, at_most=v.MAX_COUNT)
        v.non_negative_int("meta_lr_warmup", self.meta_lr_warmup, at_most=v.MAX_COUNT)
        if self.min_horizon is not None:
            check_horizons(self.min_horizon, self.horizon, self.truncation)
        if self.validation_horizon is not None:
            v.positive_int("validation_horizon", self.validation_horizon, at_most=v.MAX_COUNT)
        v.non_negative_int("seed", self.seed, below=2**32)
        if self.init is not None and (not isinstance(self.init, str) or not self.init):
            raise ConfigError(f"init must be a shipped optimizer's name or a run directory, got {self.init!r}")
        if self.init_sha256 is not None:
            if self.init is None:
                raise ConfigError("init_sha256 applies only with init (the source it checks)")
            if not (isinstance(self.init_sha256, str) and len(self.init_sha256) == 64 and _is_hex(self.init_sha256)):
                raise ConfigError(f"init_sha256 must be 64 hexadecimal digits, got {self.init_sha256!r}")
        if self.horizon % self.truncation:
            raise ConfigError(
                f"the truncation length ({self.truncation}) must divide the horizon ({self.horizon}), "
                "so every run splits into whole truncations"
            )
        v.positive_float32("meta_lr", self.meta_lr)
        v.one_of("meta_lr_schedule", self.meta_lr_schedule, META_LR_SCHEDULES)
        if self.clip_norm is not None:
            v.positive_float("clip_norm", self.clip_norm)
        check_tasks_per_chunk(self.tasks_per_chunk, self.batch_size)
        v.one_of("weighting", self.weighting, WEIGHTINGS)
        v.one_of("meta_optimizer", self.meta_optimizer, tuple(META_OPTIMIZERS))
        v.one_of("estimator", self.estimator, tuple(estimators_lib.available()))
        canonical = estimators_lib.check_options(self.estimator, self.estimator_options)
        object.__setattr__(self, "estimator_options", canonical)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MetaTrainConfig:
        """The config from ``to_dict``'s output (e.g. a run's ``config.json``).

        Raises:
          ConfigError: if ``d`` is not a dict, names unknown options, or holds invalid values.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"a meta-training config must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: x for k, x in migrate(d).items() if k != COMPONENTS}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown meta-training option(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def build_optimizer(self) -> LearnedOptimizer:
        return optimizers_lib.get(self.optimizer, **self.optimizer_options)

    def resolve_init(self) -> tuple[MetaTrainConfig, InitSource | None]:
        """This config with ``init``'s optimizer, options and SHA-256 filled in, and the loaded source.

        Without ``init``: ``(self, None)``.

        Raises:
          UnknownNameError: if ``init`` is neither a shipped name nor an existing path.
          RunDirectoryError: if the source is incomplete or damaged.
          ConfigError: if ``optimizer``/``optimizer_options`` differ from the source's (other
            than an extension switched on or a free option set), or its φ's SHA-256 is
            not ``init_sha256``.
        """
        if self.init is None:
            return self, None
        source = load_source(self.init, self.init_sha256)
        given = None if self.optimizer == _DEFAULT_OPTIMIZER else self.optimizer
        name, options = resolve_optimizer(source, given, self.optimizer_options)
        resolved = dataclasses.replace(self, optimizer=name, optimizer_options=options, init_sha256=source.sha256)
        return resolved, extended(source, resolved.build_optimizer())

    def build_task(self) -> TaskFamily | TaskMixture:
        return tasks_lib.get(self.task, **self.task_options)

    def build_members(self, optimizer: LearnedOptimizer, family: TaskFamily | TaskMixture) -> list[Member]:
        """The estimator of ``config.estimator`` over ``family``: one ``Member``, or one per member of a mixture.

        Raises:
          ConfigError: if a mixture has more members than ``batch_size`` tasks, or
            ``tasks_per_chunk`` does not divide a member's share of the batch.
        """
        options = {**self.estimator_options, "weighting": self.weighting, "truncation": self.truncation}
        parts = _parts(family, self.batch_size)
        for f, n, _ in parts:
            if len(parts) > 1 and self.tasks_per_chunk is not None and n % self.tasks_per_chunk:
                raise ConfigError(
                    f"tasks_per_chunk={self.tasks_per_chunk} must divide every mixture member's share of the "
                    f"batch; {f!r} gets {n} of the {self.batch_size} tasks"
                )
        return [
            Member(
                estimators_lib.get(
                    self.estimator, optimizer, f, batch_size=n, tasks_per_chunk=self.tasks_per_chunk, **options
                ),
                w,
            )
            for f, n, w in parts
        ]

    def build_meta_optimizer(self) -> optax.GradientTransformation:
        lr: float | optax.Schedule = self.meta_lr
        if self.meta_lr_schedule == "cosine":
            lr = optax.cosine_decay_schedule(self.meta_lr, self.num_meta_steps, alpha=0.1)
        if self.meta_lr_warmup:
            warmup = optax.linear_schedule(0.0, self.meta_lr, self.meta_lr_warmup)
            after = lr if callable(lr) else optax.constant_schedule(lr)
            lr = optax.join_schedules([warmup, after], [self.meta_lr_warmup])
        tx = META_OPTIMIZERS[self.meta_optimizer](lr)
        if self.clip_norm is not None:
            tx = optax.chain(clip_by_global_norm(self.clip_norm), tx)
        return tx

    def estimator_option(self, name: str) -> Any:
        """The value of the estimator's option ``name``: given in ``estimator_options``, or its default."""
        return self.estimator_options.get(name, estimators_lib.options(self.estimator)[name])


#: Options added to ``MetaTrainConfig`` after runs were first saved, with the values those runs had (the defaults).
_ADDED_OPTIONS: dict[str, Any] = {
    f.name: f.default
    for f in dataclasses.fields(MetaTrainConfig)
    if f.name in ("estimator", "meta_lr_warmup", "min_horizon", "validation_horizon", "init", "init_sha256")
}
_ADDED_OPTIONS["estimator_options"] = {}
#: Fields that became ``estimator_options``.
_ESTIMATOR_FIELDS = ("sigma", "num_pairs", "first_order", "remat")


def migrate(saved: dict[str, Any]) -> dict[str, Any]:
    """A config dict written by any earlier version, in today's fields.

    Options added since take the values that earlier runs had; ``sigma``,
    ``num_pairs`` (ES and PES), ``first_order`` and ``remat`` (truncated BPTT),
    once fields of their own, move into ``estimator_options`` where they differ
    from their defaults.
    """
    d = {**_ADDED_OPTIONS, **saved}
    moved = {k: d.pop(k) for k in _ESTIMATOR_FIELDS if k in d}
    name, options = d["estimator"], d["estimator_options"]
    if moved and name in estimators_lib.available() and isinstance(options, dict):
        taken = {k: x for k, x in moved.items() if k in estimators_lib.options(name)}
        d["estimator_options"] = estimators_lib.check_options(name, {**taken, **options})
    return d


_DEFAULT_OPTIMIZER = MetaTrainConfig.optimizer


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def components(
    config: MetaTrainConfig,
    family: TaskFamily | TaskMixture,
    optimizer: LearnedOptimizer,
    meta_optimizer: optax.GradientTransformation | None,
) -> dict[str, Any]:
    """What a run was built from, as recorded in its ``config.json`` under ``"components"``.

    ``meta_train`` refuses to resume a run whose recorded components differ, so a
    run cannot be continued with another task family or optimizer passed in code
    (``family=``, ``optimizer=``). A ``meta_optimizer=`` given in code is recorded as
    ``"custom"``: its settings cannot be read back, so resuming such a run trusts
    the caller to pass the same one.
    """
    return {
        "task": {"type": type(family).__qualname__, "name": family.name, "config": family.config()},
        "optimizer": {"name": optimizer.name, "config": optimizer.config()},
        "meta_optimizer": "custom" if meta_optimizer is not None else config.meta_optimizer,
    }


def _parts(family: TaskFamily | TaskMixture, batch_size: int) -> list[tuple[TaskFamily, int, float]]:
    """``(family, tasks, weight)`` per member: the family itself for a plain family."""
    if isinstance(family, TaskMixture):
        return list(zip(family.families, family.split_batch(batch_size), family.weights))
    return [(family, batch_size, 1.0)]


@dataclasses.dataclass
class MetaTrainResult:
    """What ``meta_train`` returns."""

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


class _Keys:
    """The run's keys, all derived from the seed so that the run is reproducible."""

    def __init__(self, seed: int) -> None:
        base = jax.random.PRNGKey(seed)
        self.meta_init, self.tasks, self.validation, self.perturbations, self.horizons = (
            jax.random.fold_in(base, i) for i in range(5)
        )

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
    max_consecutive_skipped: int | None = MAX_CONSECUTIVE_SKIPPED,
) -> MetaTrainResult:
    """Meta-trains a learned optimizer with the estimator that ``config.estimator`` names.

    Each meta-step (``l2l_jax.meta.step.meta_step``) runs the next truncation of
    ``config.truncation`` inner steps of every task in the batch (one ``lax.scan``,
    ``vmap``-ed over tasks), estimates the meta-gradient (truncated BPTT, ES or PES:
    see ``l2l_jax.meta.estimators``) and updates φ. Parameters and optimizer state
    carry over to the next truncation; after ``config.horizon`` steps (or a sampled
    length, with ``config.min_horizon``) new tasks are drawn. With a task mixture
    every member gets its share of the batch. A non-finite loss or meta-gradient skips the update (counted in ``skipped``) and
    restarts the inner runs; an update that would make φ or the meta-optimizer's
    state non-finite is skipped and counted too (see ``l2l_jax.meta.step.meta_step``),
    so φ stays finite. Sizes are checked before anything is allocated
    (``check_sizes``). A run directory records what the run was built from
    (``components``), so a run cannot be resumed with another ``family=`` or
    ``optimizer=``.

    Over several processes of one ``jax.distributed`` job, every process calls
    ``meta_train`` with the same arguments after ``jax.distributed.initialize``.
    The tasks are split over devices of every process; process 0 alone locks,
    reads and writes ``run_dir`` and sends what it restored to the others; every
    process returns the same result. SIGINT or SIGTERM to any process stops all
    of them at the same step, after a checkpoint. See the guide page "Meta-training on
    several hosts".

    Args:
      config: the run's settings.
      run_dir: where to write config, metrics, checkpoints and the trained φ
        (see ``l2l_jax.run_directory``). If it holds a checkpoint of the
        same config, training resumes from it and gives the same result as an
        uninterrupted run. A new run starts only in an empty or missing
        directory, or one holding just this config (a run killed before its
        first checkpoint). The directory is locked for the whole call.
        ``None``: keep nothing on disk.
      family: a task family (or ``TaskMixture``) to use instead of building
        ``config.task`` by name (e.g. your own; then ``config.task`` is only a
        label, and the family's ``config()`` is what the run directory records).
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
        instead of ``optimizer.init``. To start from a shipped optimizer or a run
        directory, set ``config.init`` instead, which also records the source.
      devices: split each meta-step's batch of tasks over devices (see
        ``l2l_jax.meta.sharding``): a number of devices, a list of devices, or
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
      max_consecutive_skipped: stop the run, after saving a checkpoint, with
        ``MetaTrainingError`` once this many meta-steps in a row were skipped (φ
        cannot change while every step is skipped); checked after each call of
        ``steps_per_call`` steps. ``None``: never stop early.

    Returns:
      A ``MetaTrainResult``; ``result.as_optax()`` is the trained optimizer.

    Raises:
      ConfigError: for invalid settings, processes of a job started with different
        ones, or a run directory holding another config
        or a run built from other components, or a ``config.init`` source that has
        changed since the run in ``run_dir`` started from it.
      UnknownNameError: if ``config.init`` is neither a shipped name nor an existing path.
      RunDirectoryError: if ``run_dir`` is not empty and is not a run directory of
        this config (without ``overwrite``), or one of its files is damaged, or its
        checkpoint holds a non-finite φ or meta-optimizer state.
      RunDirectoryBusyError: if another process is writing to ``run_dir``.
      MetaTrainingError: if another process of the job failed (naming it and its
        error), or if every meta-step of the run was skipped (φ untrained), or
        ``max_consecutive_skipped`` steps in a row were (the run stops there; its
        checkpoint and best φ so far are saved).
      KeyboardInterrupt: on Ctrl-C, and ``Terminated`` on
        SIGTERM, after saving a checkpoint to resume from.
    """
    steps_per_call = v.positive_int("steps_per_call", steps_per_call, at_most=v.MAX_COUNT)
    if max_consecutive_skipped is not None:
        max_consecutive_skipped = v.positive_int("max_consecutive_skipped", max_consecutive_skipped)
    run_path = Path(run_dir) if run_dir is not None else None
    several = processes.several()

    def prepare() -> tuple[_Run, MetaTrainState]:
        cfg, opt, phi = config, optimizer, init_meta_params
        if cfg.init is not None:
            cfg, opt, phi = _from_init(cfg, run_path, opt, phi, resume=resume, overwrite=overwrite)
        return _build_run(cfg, family, opt, meta_optimizer, phi, devices)

    with contextlib.ExitStack() as stack:
        stop = _job_handling(stack, run_path) if several else None
        run, state = processes.together(prepare) if several else prepare()
        config = run.config
        if several:
            options = [run_path is None, resume, overwrite, steps_per_call, max_consecutive_skipped]
            _check_same_everywhere(run, meta_optimizer, state.meta_params, options)
        initial_meta_params = state.meta_params
        history: list[dict[str, Any]] = []
        if run_path is not None:
            open_ = functools.partial(
                _open_run_directory, stack, run_path, run, state, meta_optimizer, resume=resume, overwrite=overwrite
            )
            state, history = _opened_by_writer(open_, state)
        start = int(state.step)
        if on_start is not None:
            on_start(start)
        state, run_steps, validate = _compiled(run, state, initial_meta_params)
        bar = tqdm(
            total=config.num_meta_steps,
            initial=start,
            desc="meta-train",
            # A finished run shows no bar; in a job, only process 0 shows one.
            disable=not progress or start >= config.num_meta_steps or not processes.is_writer(),
            unit="step",
            mininterval=0.5,
        )
        if not several:
            stack.enter_context(sigterm_raises_terminated())
        state = run_loop(
            state,
            history,
            schedule=Schedule(config.num_meta_steps, steps_per_call, config.validate_every, config.checkpoint_every),
            run_steps=run_steps,
            validate=validate,
            checkpoint=functools.partial(_checkpoint, run_path, run, history),
            bar=bar,
            on_step=on_step,
            max_consecutive_skipped=max_consecutive_skipped,
            stop=stop,
        )
        bar.close()
        check_progress(state, history, config.num_meta_steps, max_consecutive_skipped, run_path)
        if several:  # Local copies: φ as one process's arrays, usable outside the job's mesh.
            state = jax.tree.map(jnp.asarray, processes.gather(state._replace(inner=())))
        return MetaTrainResult(
            optimizer=run.optimizer,
            meta_params=best(state)[0],
            final_meta_params=state.meta_params,
            config=config,
            history=history,
            skipped=int(state.skipped),
            best_val=float(state.best_val),
            run_dir=run_path,
            start_step=start,
        )


@dataclasses.dataclass(frozen=True)
class _Run:
    """What a run is built from: the config's objects (or those passed in code), its keys and devices.

    Attributes:
      config: the run's settings (``init`` resolved).
      optimizer: the learned optimizer.
      family: the task family or mixture.
      meta_optimizer: the optax transformation that updates φ.
      members: the estimators (one per member of a mixture) and their weights.
      keys: the run's keys.
      horizon: the inner steps of a run, or the function that draws them at each restart.
      val_parts: ``(family, num_tasks, weight)`` per member for validation; empty if the run never validates.
      mesh: the devices that tasks are split over (``None``: the default device).
    """

    config: MetaTrainConfig
    optimizer: LearnedOptimizer
    family: TaskFamily | TaskMixture
    meta_optimizer: optax.GradientTransformation
    members: list[Member]
    keys: _Keys
    horizon: int | HorizonFn
    val_parts: list[tuple[TaskFamily, int, float]]
    mesh: sh.Mesh | None


def _from_init(
    config: MetaTrainConfig,
    run_path: Path | None,
    optimizer: LearnedOptimizer | None,
    init_meta_params: MetaParams | None,
    *,
    resume: bool,
    overwrite: bool,
) -> tuple[MetaTrainConfig, LearnedOptimizer, MetaParams]:
    """``config`` with ``init`` resolved, and the source's optimizer and φ to start from.

    A resume of a run in ``run_path`` checks the source against the SHA-256 that
    the run recorded when it started (unless ``config.init_sha256`` is given).

    Raises:
      ConfigError: if ``optimizer`` or ``init_meta_params`` is also given, or as
        ``MetaTrainConfig.resolve_init``.
    """
    if init_meta_params is not None or optimizer is not None:
        raise ConfigError(
            "config.init sets the optimizer and its starting φ; do not also pass optimizer= or init_meta_params="
        )
    assert config.init is not None
    if config.init_sha256 is None and run_path is not None and resume and not overwrite:
        config = dataclasses.replace(config, init_sha256=_recorded_source_sha(run_path, config.init))
    config, source = config.resolve_init()
    assert source is not None
    return config, source.optimizer, source.meta_params


def _build_run(
    config: MetaTrainConfig,
    family: TaskFamily | TaskMixture | None,
    optimizer: LearnedOptimizer | None,
    meta_optimizer: optax.GradientTransformation | None,
    init_meta_params: MetaParams | None,
    devices: int | Sequence[jax.Device] | None,
) -> tuple[_Run, MetaTrainState]:
    """The run built from ``config`` and the objects passed in code, and its initial state.

    Sizes are checked (``check_sizes``) from shapes, before the state is allocated.

    Raises:
      ConfigError: for members or chunks that the batch cannot be split into, an
        ``init_meta_params`` holding NaN or infinite values, a run too large
        (``check_sizes``), or tasks that cannot be split over ``devices``.
    """
    optimizer = optimizer or config.build_optimizer()
    family = family or config.build_task()
    meta_tx = meta_optimizer or config.build_meta_optimizer()
    members = config.build_members(optimizer, family)
    parts = _parts(family, config.batch_size)
    keys = _Keys(config.seed)
    horizon = (
        config.horizon
        if config.min_horizon is None
        else log_uniform_horizons(keys.horizons, config.min_horizon, config.horizon, config.truncation)
    )
    if init_meta_params is not None:
        check_meta_params(optimizer, init_meta_params)
        init_meta_params = jax.tree.map(jnp.asarray, init_meta_params)
        if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(init_meta_params)):
            raise ConfigError("init_meta_params holds NaN or infinite values")

    def init_state() -> MetaTrainState:
        phi = optimizer.init(keys.meta_init) if init_meta_params is None else init_meta_params
        return initial_state(members, meta_tx, phi, keys.tasks_at(0))

    val_parts = _parts(family, config.num_val_tasks) if config.validate_every else []  # Only if it validates.
    check_sizes(config, jax.eval_shape(init_state), [(optimizer, f, n) for f, n, _ in val_parts])
    mesh = task_mesh(devices, [n for _, n, _ in parts], config.tasks_per_chunk)
    if processes.several():
        processes.check_mesh(mesh, [n for _, n, _ in parts])
    run = _Run(config, optimizer, family, meta_tx, members, keys, horizon, val_parts, mesh)
    return run, init_state()


def _open_run_directory(
    stack: contextlib.ExitStack,
    run_path: Path,
    run: _Run,
    fresh: MetaTrainState,
    meta_optimizer: optax.GradientTransformation | None,
    *,
    resume: bool,
    overwrite: bool,
) -> tuple[MetaTrainState, list[dict[str, Any]]]:
    """The state and metrics rows to go on from: restored from ``run_path``'s checkpoint, or ``(fresh, [])``.

    Locks the directory for ``stack``'s life first. ``meta_optimizer`` is the one
    passed in code, if any (``components`` records it as ``"custom"``).

    Raises:
      ConfigError, RunDirectoryError: as ``l2l_jax.run_directory.open_for_training``, and
        ``RunDirectoryError`` for a checkpoint holding a non-finite φ or meta-optimizer state.
    """
    stack.enter_context(rd.lock(run_path))
    config = run.config
    may_differ = ("num_meta_steps",) if config.meta_lr_schedule == "constant" else ()
    recorded = _recorded(run, meta_optimizer)
    state, history = rd.open_for_training(
        run_path,
        recorded,
        fresh,
        resume=resume,
        overwrite=overwrite,
        may_differ=may_differ,
        migrate=lambda saved: {COMPONENTS: recorded[COMPONENTS], **migrate(saved)},
    )
    if state is not fresh:
        check_restored(run_path / rd.CHECKPOINT, state, fresh)
    return state, history


def _check_same_everywhere(
    run: _Run, meta_optimizer: optax.GradientTransformation | None, meta_params: MetaParams, options: list[Any]
) -> None:
    """Raises ``ConfigError`` on every process of the job unless they all run the same run the same way."""
    phi = hashlib.sha256(b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(meta_params))).hexdigest()
    processes.check_same(
        "config, starting φ, devices, run_dir given or not, resume, overwrite, steps_per_call or "
        "max_consecutive_skipped",
        {
            "config": _recorded(run, meta_optimizer),
            "phi": phi,
            "devices": [d.id for d in run.mesh.devices.flat] if run.mesh is not None else None,
            "options": options,
        },
    )


def _job_handling(stack: contextlib.ExitStack, run_path: Path | None) -> Callable[[], int]:
    """In a job of several processes, for ``stack``'s life: signals recorded, failures named; the loop's ``stop``.

    SIGINT and SIGTERM are recorded, and every process stops at the same step
    (``run_loop``); a failure of the job's computations or collectives raises
    ``MetaTrainingError``.
    """
    stack.enter_context(processes.peer_failures(run_path))
    received = stack.enter_context(signals_recorded())
    return lambda: processes.agreed_stop(received.signum)


def _recorded(run: _Run, meta_optimizer: optax.GradientTransformation | None) -> dict[str, Any]:
    """What the run directory records of the run: its config and what it was built from (``components``)."""
    config = run.config
    return {**config.to_dict(), COMPONENTS: components(config, run.family, run.optimizer, meta_optimizer)}


def _opened_by_writer(
    open_: Callable[[], tuple[MetaTrainState, list[dict[str, Any]]]], fresh: MetaTrainState
) -> tuple[MetaTrainState, list[dict[str, Any]]]:
    """``open_()`` (``_open_run_directory``); over several processes, process 0's, sent to the others.

    Process 0 alone runs ``open_`` and sends the state and metrics rows it
    restored (if any) to the others, which start from ``fresh`` otherwise.
    """
    if not processes.several():
        return open_()

    def packed() -> tuple[bytes, bytes]:
        state, history = open_()
        if state is fresh:
            return b"", b""
        return serialization.to_bytes(state), json.dumps(history).encode()

    mine = processes.on_writer(packed)
    data = processes.broadcast_bytes(None if mine is None else mine[0])
    if not data:
        return fresh, []
    rows = processes.broadcast_bytes(None if mine is None else mine[1])
    return serialization.from_bytes(fresh, data), json.loads(rows)


def _compiled(
    run: _Run, state: MetaTrainState, initial_meta_params: MetaParams
) -> tuple[MetaTrainState, RunSteps, Callable[[MetaParams], jax.Array]]:
    """``state`` placed on the run's devices, the compiled meta-steps and the compiled validation.

    Validation runs start from ``initial_meta_params``, the run's initial φ, so a
    resumed run validates on exactly the same states.
    """
    config = run.config
    state, run_steps = compile_steps(
        state,
        run.members,
        run.meta_optimizer,
        horizon=run.horizon,
        task_key=run.keys.tasks,
        perturbation_key=run.keys.perturbations,
        truncation=config.truncation,
        mesh=run.mesh,
    )
    validate = validator(
        run.optimizer,
        run.val_parts,
        initial_meta_params,
        run.keys.validation,
        num_steps=config.validation_horizon or config.horizon,
        weighting=config.weighting,
        mesh=run.mesh,
    )
    return state, run_steps, validate


def _checkpoint(run_path: Path | None, run: _Run, history: list[dict[str, Any]], state: MetaTrainState) -> None:
    """Saves ``state``, its best φ and the metrics rows ``history`` to ``run_path`` (nothing if ``None``).

    Over several processes, every process gathers the state and process 0 writes it.
    """
    if run_path is None:
        return
    write = functools.partial(save, run_path, run.optimizer, run.family, run.config.to_dict())
    if not processes.several():
        write(state, history)
        return
    whole = processes.gather(state)
    processes.on_writer(lambda: write(whole, history))


def check_sizes(
    config: MetaTrainConfig,
    state: MetaTrainState,
    validation: Sequence[tuple[LearnedOptimizer, TaskFamily, int]] = (),
) -> None:
    """Raises ``ConfigError`` if a run would hold more than `MAX_ELEMENTS` array elements at once.

    Counted from shapes alone (``jax.eval_shape``), before anything is allocated
    or compiled: the training state (φ, the meta-optimizer's state and every inner
    run: ``batch_size`` tasks, times 2 · ``num_pairs`` for ES and PES), plus, for
    truncated BPTT without ``remat``, the inner runs' state (of one chunk of
    ``tasks_per_chunk`` tasks, if set) at each of the ``truncation`` steps that the
    backward pass keeps; and separately the validation runs (``num_tasks`` tasks
    of each ``(optimizer, family, num_tasks)``). The bound stops sizes that no
    device holds. Then the training state alone (a lower bound on what the run
    needs) must fit in the memory of the device it runs on (`device_memory_bytes`);
    a run that passes may still need more than its device has.

    Args:
      config: the run's settings.
      state: the initial training state, or its shapes (``jax.ShapeDtypeStruct`` leaves).
      validation: the validation runs: one ``(optimizer, family, num_tasks)`` per member.
    """
    total = _elements(state)
    if config.estimator == "tbptt":
        what, lower = "batch_size", "batch_size or the task's size (task_options)"
        if not config.estimator_option("remat"):
            chunk = (config.tasks_per_chunk or config.batch_size) / config.batch_size
            total += math.ceil(_elements(state.inner) * chunk) * config.truncation
            what = "batch_size (or tasks_per_chunk) × truncation: truncated BPTT without remat keeps every step"
            lower = "batch_size, truncation or the task's size (task_options), or set tasks_per_chunk or remat"
    else:
        what, lower = "batch_size × 2 · num_pairs", "batch_size, num_pairs or the task's size (task_options)"
    if total > MAX_ELEMENTS:
        raise ConfigError(
            f"this run would hold about {total:,} array elements at once ({what}, × the task's and optimizer "
            f"state's size); at most 2**36 = {MAX_ELEMENTS:,} are supported: lower {lower}"
        )
    memory = device_memory_bytes()
    if memory is not None and _bytes(state) > memory:
        raise ConfigError(
            f"this run's training state alone needs {_bytes(state) / 2**30:,.1f} GiB, more than the "
            f"{memory / 2**30:,.1f} GiB of memory of this machine's {jax.local_devices()[0].platform.upper()} "
            f"devices: lower {lower}"
        )
    val = sum(_elements(jax.eval_shape(functools.partial(_validation_inner, opt, f, n))) for opt, f, n in validation)
    if val > MAX_ELEMENTS:
        raise ConfigError(
            f"validation would hold about {val:,} array elements at once (num_val_tasks={config.num_val_tasks} "
            f"× the task's and optimizer state's size); at most 2**36 = {MAX_ELEMENTS:,} are supported: lower "
            "num_val_tasks or the task's size, or validate_every=0 for no validation"
        )


def _validation_inner(optimizer: LearnedOptimizer, family: TaskFamily, num_tasks: int) -> InnerState:
    key = jax.random.PRNGKey(0)
    return init_inner(optimizer, optimizer.init(key), family, key, num_tasks)


def device_memory_bytes() -> int | None:
    """The memory the run's devices hold together, in bytes, where it is known, else None.

    Accelerators: the sum of ``memory_stats()["bytes_limit"]`` over this process's
    devices. CPU: the machine's physical memory, or the process's cgroup limit if
    lower (CPU devices share it).
    """
    devices = jax.local_devices()
    if devices[0].platform != "cpu":
        limits = [(d.memory_stats() or {}).get("bytes_limit") for d in devices]
        return None if None in limits else sum(limits)
    limits = []
    with contextlib.suppress(AttributeError, ValueError, OSError):
        limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    with contextlib.suppress(OSError, ValueError):
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text.isdigit():
            limits.append(int(text))
    return min(limits) if limits else None


def _bytes(tree: Any) -> int:
    """The bytes of the arrays in a pytree of arrays or shapes (exact, as a Python int)."""
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _elements(tree: Any) -> int:
    """The number of array elements in a pytree of arrays or shapes (exact, as a Python int)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _recorded_source_sha(run_path: Path, init: str) -> str | None:
    """The SHA-256 of ``init`` that the checkpointed run in ``run_path`` started from, if any."""
    if not (run_path / rd.CONFIG).is_file() or not (run_path / rd.CHECKPOINT).is_file():
        return None
    try:
        saved = rd.read_json(run_path / rd.CONFIG)
    except L2LError:
        return None  # Opening the run directory reports it.
    if not isinstance(saved, dict) or saved.get("init") != init:
        return None
    sha = saved.get("init_sha256")
    return sha if isinstance(sha, str) and len(sha) == 64 and _is_hex(sha) else None
