"""Evaluating a run directory's learned optimizer against tuned baselines, written to files."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from l2l_jax import pretrained
from l2l_jax import tasks as tasks_lib
from l2l_jax.evaluation.compare import Comparison, compare_with_baselines
from l2l_jax.evaluation.plots import plot_loss_curves
from l2l_jax.meta import run_directory as rd


def evaluate_run(
    run_dir: str | Path,
    *,
    num_tasks: int = 128,
    num_tune_tasks: int = 100,
    num_steps: int = 100,
    seed: int = 1,
    progress: bool = True,
    **compare_kwargs: Any,
) -> Comparison:
    """Compares a run's learned optimizer with baselines tuned on other held-out tasks.

    Writes ``evaluation.json`` (rows, mean curves, tuning sweeps), ``evaluation.md``
    (the table) and ``loss_curves.png`` into the run directory, and adds the rows
    to its ``optimizer.json``.

    Args:
      run_dir: a run directory written by meta-training.
      num_tasks: held-out test tasks.
      num_tune_tasks: other held-out tasks on which each baseline's rate is tuned.
      num_steps: inner steps per run.
      seed: seeds the held-out task sets.
      progress: show progress bars.
      **compare_kwargs: passed to :func:`compare_with_baselines` (``baselines``, ``grid``).

    Returns:
      The :class:`Comparison`.
    """
    run_dir = Path(run_dir)
    info = pretrained.info(run_dir)
    optimizer, phi = pretrained.load_meta_params(run_dir)
    # task_options rebuild the task as it was built for training (also for your
    # own module:function tasks); older files only have the family's config.
    family = tasks_lib.get(info["task"], **info.get("task_options", info["task_config"]))
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
    rd.write_json(run_dir / rd.EVALUATION_JSON, results)
    rd.write_atomic(run_dir / rd.EVALUATION_TABLE, (comparison.table() + "\n").encode())
    plot_loss_curves(
        comparison.curves,
        run_dir / rd.LOSS_CURVES_PLOT,
        title=f"{family.name}: mean over {num_tasks} held-out tasks (baselines' lr tuned)",
    )
    meta = rd.read_json(run_dir / rd.OPTIMIZER_META)
    rd.write_json(run_dir / rd.OPTIMIZER_META, {**meta, "evaluation": comparison.rows()})
    return comparison
