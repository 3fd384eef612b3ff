"""Evaluating a run directory's learned optimizer against tuned baselines, written into the run directory."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from l2l_jax import pretrained
from l2l_jax import run_directory as rd
from l2l_jax import tasks as tasks_lib
from l2l_jax.errors import ConfigError, RunDirectoryError, UnknownNameError
from l2l_jax.evaluation.compare import Comparison, compare_with_baselines
from l2l_jax.evaluation.plots import plot_loss_curves
from l2l_jax.meta.init_source import load_source
from l2l_jax.tasks.base import TaskFamily


def evaluate_run(
    run_dir: str | Path,
    *,
    num_tasks: int = 128,
    num_tune_tasks: int = 100,
    num_steps: int | None = None,
    seed: int = 1,
    progress: bool = True,
    task: str | None = None,
    task_options: dict[str, Any] | None = None,
    against: Sequence[str] | None = None,
    **compare_kwargs: Any,
) -> Comparison:
    """Compares a run's learned optimizer with baselines tuned on other held-out tasks.

    Writes ``evaluation.json`` (rows, paired differences, mean curves, tuning
    sweeps), ``evaluation.md`` (the tables) and ``loss_curves.png`` into the run
    directory, and adds the rows to its ``optimizer.json``. Other trained
    optimizers (``against``; by default the one the run started from, if it
    started from one) run on the same test tasks, and the run's optimizer is
    compared with every other one task by task (``Comparison.paired``). The run directory is data: a task named there as
    ``module:function`` is refused unless the caller names it in ``task``, since
    building it imports and runs that code. Likewise the task options that
    reach the network or choose where data lies (``CALLER_ONLY_OPTIONS``:
    ``download``, ``data_dir``) are dropped from the run's recorded options, at
    any depth, and taken from ``task_options`` only.

    Args:
      run_dir: a run directory written by meta-training.
      num_tasks: held-out test tasks.
      num_tune_tasks: other held-out tasks on which each baseline's rate is tuned.
      num_steps: inner steps per run; ``None``: the run's validation horizon (its
        ``horizon`` unless it set ``validation_horizon``).
      seed: seeds the held-out task sets.
      progress: show progress bars.
      task: the task family to evaluate on (a registered name or
        ``module:function``, which is imported and run); ``None``: the run's own
        task, which must then be a registered name.
      task_options: options of the task family, replacing the run's recorded
        ones key by key (nested objects merged); the only source of
        ``CALLER_ONLY_OPTIONS``. ``None``: the recorded options without those.
      against: trained optimizers to compare with: shipped names or run
        directories. ``None``: the run's ``init`` source, checked to be the one
        it started from (none if it started from a fresh φ); ``()``: none.
      **compare_kwargs: passed to ``compare_with_baselines`` (``baselines``, ``grid``).

    Returns:
      The ``Comparison``.

    Raises:
      RunDirectoryError: if the run directory is damaged, or names a
        ``module:function`` task that ``task`` does not name.
      RunDirectoryBusyError: if another process is writing to it.
      ConfigError: if ``task_options`` is not a dict, the run was meta-trained on a task mixture (evaluate each
        member family with ``compare_with_baselines`` instead), or its ``init``
        source has changed since the run started from it.
      UnknownNameError: if a name in ``against`` is neither shipped nor an existing path.
    """
    run_dir = Path(run_dir)
    if task_options is not None and not isinstance(task_options, dict):
        raise ConfigError(f"task_options must be a dict of the task family's options, got {task_options!r}")
    if not run_dir.is_dir():
        raise RunDirectoryError(f"{run_dir} is not a run directory (it does not exist or is not a directory)")
    with rd.lock(run_dir):
        info = pretrained.info(run_dir)
        optimizer, phi = pretrained.load_meta_params(run_dir)
        task = _task_name(run_dir, info, task)
        options = _task_options(run_dir, info, task_options)
        if task == "mixture":
            # Refused before anything is built: members may name code to import (module:function).
            raise ConfigError(
                f"{run_dir} was meta-trained on a task mixture; it has no single task to evaluate on: "
                "evaluate it on each member family in Python with l2l_jax.evaluation.compare_with_baselines"
            )
        family = tasks_lib.get(task, **options)
        training = info.get("training_config")
        training = training if isinstance(training, dict) else {}
        if num_steps is None:
            num_steps = _run_horizon(training)
        reference = f"learned {info['optimizer']}"
        learned = {reference: (optimizer, phi), **_others(training, against)}
        t0 = time.perf_counter()
        comparison = compare_with_baselines(
            learned,
            family,
            num_steps=num_steps,
            num_tune_tasks=num_tune_tasks,
            num_test_tasks=num_tasks,
            seed=seed,
            progress=progress,
            **compare_kwargs,
        )
        _write_evaluation(
            run_dir,
            comparison,
            family,
            reference=reference,
            seed=seed,
            num_tune_tasks=num_tune_tasks,
            num_tasks=num_tasks,
            started=t0,
        )
        return comparison


def _task_name(run_dir: Path, info: dict[str, Any], task: str | None) -> str:
    """The task family to evaluate on: ``task``, or else the run's recorded task if that is safe to build.

    Args:
      run_dir: the run directory (for messages).
      info: the run's ``optimizer.json``.
      task: the caller's task, or ``None`` for the run's own.

    Returns:
      ``task`` if given, else the run's recorded task name.

    Raises:
      RunDirectoryError: if the run records no task name, or (with ``task`` ``None``)
        records a ``module:function`` task or one not registered here.
    """
    saved_task = info.get("task")
    if not isinstance(saved_task, str):
        raise RunDirectoryError(f"{run_dir / rd.OPTIMIZER_META} is corrupt: no task name")
    if task is not None:
        return task
    if ":" in saved_task:
        raise RunDirectoryError(
            f"{run_dir} was trained on the task {saved_task!r}, which is code to import and run; "
            f"if you trust it, name it yourself: --task {saved_task} (task=...)"
        )
    if saved_task not in tasks_lib.available():
        raise RunDirectoryError(
            f"{run_dir} was trained on the task {saved_task!r}, which is not registered here; "
            "register it (l2l_jax.tasks.register) or pass --task (task=...)"
        )
    return saved_task


def _task_options(run_dir: Path, info: dict[str, Any], task_options: dict[str, Any] | None) -> dict[str, Any]:
    """The options to build the task family with: the run's recorded ones, then the caller's.

    Args:
      run_dir: the run directory (for messages).
      info: the run's ``optimizer.json``; its ``task_options`` rebuild the task as it
        was built for training (older files only have the family's ``task_config``).
      task_options: the caller's options, replacing the recorded ones key by key
        (nested objects merged); ``None``: none.

    Returns:
      The recorded options without ``CALLER_ONLY_OPTIONS``, merged with ``task_options``.

    Raises:
      RunDirectoryError: if the recorded options are not an object.
    """
    options = info.get("task_options", info.get("task_config", {}))
    if not isinstance(options, dict):
        raise RunDirectoryError(f"{run_dir / rd.OPTIMIZER_META} is corrupt: task_options is not an object")
    return _merged(_without_caller_only(options), task_options or {})


def _write_evaluation(
    run_dir: Path,
    comparison: Comparison,
    family: TaskFamily,
    *,
    reference: str,
    seed: int,
    num_tune_tasks: int,
    num_tasks: int,
    started: float,
) -> None:
    """Writes ``evaluation.json``, ``evaluation.md`` and ``loss_curves.png`` into the run directory.

    Args:
      run_dir: the run directory, locked by the caller.
      comparison: the finished comparison.
      family: the task family evaluated on (its ``name`` titles the plot).
      reference: the label of the run's own optimizer in ``comparison``.
      seed: the seed of the held-out task sets.
      num_tune_tasks: the tasks each baseline's rate was tuned on.
      num_tasks: the held-out test tasks.
      started: ``time.perf_counter()`` when the comparison started; the recorded
        ``seconds`` run from there to now.
    """
    results = {
        **comparison.to_json(),
        "reference": reference,
        "paired": comparison.paired(reference),
        "seed": seed,
        "num_tune_tasks": num_tune_tasks,
        "seconds": time.perf_counter() - started,
    }
    tables = f"{comparison.table()}\n\n{comparison.paired_table(reference)}"
    rd.save_evaluation(run_dir, results, tables, comparison.rows())
    plot_loss_curves(
        comparison.curves,
        run_dir / rd.LOSS_CURVES_PLOT,
        title=f"{family.name}: mean over {num_tasks} held-out tasks (baselines' lr tuned)",
    )


#: Task options that reach the network or choose where data is read and written:
#: ``evaluate_run`` takes them from its caller only, never from a run directory.
CALLER_ONLY_OPTIONS: tuple[str, ...] = ("download", "data_dir")


def _without_caller_only(options: Any) -> Any:
    """``options`` without ``CALLER_ONLY_OPTIONS`` keys in any object, however nested (JSON values)."""
    if isinstance(options, dict):
        return {k: _without_caller_only(v) for k, v in options.items() if k not in CALLER_ONLY_OPTIONS}
    if isinstance(options, list):
        return [_without_caller_only(v) for v in options]
    return options


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override``'s keys replacing its own, objects merged key by key."""
    out = dict(base)
    for key, value in override.items():
        old = out.get(key)
        out[key] = _merged(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return out


def _run_horizon(training: dict[str, Any]) -> int:
    """The length of a run's validation runs, from its recorded training config (100 if it has none)."""
    for key in ("validation_horizon", "horizon"):
        value = training.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 100


def _others(training: dict[str, Any], against: Sequence[str] | None) -> dict[str, tuple[Any, Any]]:
    """``label -> (optimizer, φ)`` of the trained optimizers to compare with (see ``evaluate_run``).

    The run's own source is checked to be the one it started from, and labelled ``"NAME (start)"``.
    """
    init, sha = training.get("init"), training.get("init_sha256")
    init = init if isinstance(init, str) else None
    names = ([] if init is None else [init]) if against is None else list(against)
    others = {}
    for name in names:
        if name == init:
            try:
                source = load_source(name, sha if isinstance(sha, str) else None)
            except UnknownNameError as e:
                raise UnknownNameError(
                    f"{e}: the run started from it (--init); pass it again from here with --against PATH "
                    "(against=[...]), or compare with the baselines only: --no-against (against=())"
                ) from None
            others[f"{name} (start)"] = (source.optimizer, source.meta_params)
        else:
            others[name] = pretrained.load_meta_params(name)
    return others
