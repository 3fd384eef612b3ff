"""Evaluating a run directory's learned optimizer against tuned baselines, written into the run directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from l2l_jax import pretrained
from l2l_jax import run_directory as rd
from l2l_jax import tasks as tasks_lib
from l2l_jax.errors import ConfigError, RunDirectoryError
from l2l_jax.evaluation.compare import Comparison, compare_with_baselines
from l2l_jax.evaluation.plots import plot_loss_curves


def evaluate_run(
    run_dir: str | Path,
    *,
    num_tasks: int = 128,
    num_tune_tasks: int = 100,
    num_steps: int = 100,
    seed: int = 1,
    progress: bool = True,
    task: str | None = None,
    **compare_kwargs: Any,
) -> Comparison:
    """Compares a run's learned optimizer with baselines tuned on other held-out tasks.

    Writes ``evaluation.json`` (rows, mean curves, tuning sweeps), ``evaluation.md``
    (the table) and ``loss_curves.png`` into the run directory, and adds the rows
    to its ``optimizer.json``. The run directory is data: a task named there as
    ``module:function`` is refused unless the caller names it in ``task``, since
    building it imports and runs that code.

    Args:
      run_dir: a run directory written by meta-training.
      num_tasks: held-out test tasks.
      num_tune_tasks: other held-out tasks on which each baseline's rate is tuned.
      num_steps: inner steps per run.
      seed: seeds the held-out task sets.
      progress: show progress bars.
      task: the task family to evaluate on (a registered name or
        ``module:function``, which is imported and run); ``None``: the run's own
        task, which must then be a registered name.
      **compare_kwargs: passed to ``compare_with_baselines`` (``baselines``, ``grid``).

    Returns:
      The ``Comparison``.

    Raises:
      RunDirectoryError: if the run directory is damaged, or names a
        ``module:function`` task that ``task`` does not name.
      RunDirectoryBusyError: if another process is writing to it.
      ConfigError: if the run was meta-trained on a task mixture (evaluate each
        member family with ``compare_with_baselines`` instead).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirectoryError(f"{run_dir} is not a run directory (it does not exist or is not a directory)")
    with rd.lock(run_dir):
        info = pretrained.info(run_dir)
        optimizer, phi = pretrained.load_meta_params(run_dir)
        saved_task = info.get("task")
        if not isinstance(saved_task, str):
            raise RunDirectoryError(f"{run_dir / rd.OPTIMIZER_META} is corrupt: no task name")
        if task is None:
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
            task = saved_task
        # task_options rebuild the task as it was built for training; older files
        # only have the family's config.
        options = info.get("task_options", info.get("task_config", {}))
        if not isinstance(options, dict):
            raise RunDirectoryError(f"{run_dir / rd.OPTIMIZER_META} is corrupt: task_options is not an object")
        if task == "mixture":
            # Refused before anything is built: members may name code to import (module:function).
            raise ConfigError(
                f"{run_dir} was meta-trained on a task mixture; it has no single task to evaluate on: "
                "evaluate it on each member family in Python with l2l_jax.evaluation.compare_with_baselines"
            )
        family = tasks_lib.get(task, **options)
        t0 = time.perf_counter()
        comparison = compare_with_baselines(
            {f"learned {info['optimizer']}": (optimizer, phi)},
            family,
            num_steps=num_steps,
            num_tune_tasks=num_tune_tasks,
            num_test_tasks=num_tasks,
            seed=seed,
            progress=progress,
            **compare_kwargs,
        )
        results = {
            **comparison.to_json(),
            "seed": seed,
            "num_tune_tasks": num_tune_tasks,
            "seconds": time.perf_counter() - t0,
        }
        rd.save_evaluation(run_dir, results, comparison.table(), comparison.rows())
        plot_loss_curves(
            comparison.curves,
            run_dir / rd.LOSS_CURVES_PLOT,
            title=f"{family.name}: mean over {num_tasks} held-out tasks (baselines' lr tuned)",
        )
        return comparison
