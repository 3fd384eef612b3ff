"""Evaluating any optimizer on held-out tasks, tuning baselines, and the comparison table."""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from l2l_jax.checks import positive_int
from l2l_jax.errors import ConfigError
from l2l_jax.evaluation import baselines as baselines_lib
from l2l_jax.meta.unroll import unroll
from l2l_jax.optimizers.base import LearnedOptimizer, MetaParams
from l2l_jax.tasks.base import TaskFamily

#: Quarter-decade grid from 1e-4 to 10.
DEFAULT_LR_GRID: tuple[float, ...] = tuple(float(x) for x in np.logspace(-4, 1, 21))

# Separate streams for tuning and test tasks, away from meta-training's keys.
_TUNE_STREAM, _TEST_STREAM = 1001, 1002


@dataclasses.dataclass(frozen=True)
class EvalTasks:
    """A fixed batch of held-out tasks and the keys for their θ0 and minibatches."""

    task_params: Any
    keys: jax.Array

    @property
    def size(self) -> int:
        return int(self.keys.shape[0])


def sample_tasks(family: TaskFamily, seed: int, num_tasks: int, stream: str = "test") -> EvalTasks:
    """Draws ``num_tasks`` held-out tasks; ``stream`` is ``"tune"`` or ``"test"``."""
    num_tasks = positive_int("num_tasks", num_tasks)
    base = jax.random.fold_in(jax.random.PRNGKey(seed), _TUNE_STREAM if stream == "tune" else _TEST_STREAM)
    k_tasks, k_runs = jax.random.split(base)
    task_params = jax.vmap(family.sample)(jax.random.split(k_tasks, num_tasks))
    return EvalTasks(task_params, jax.random.split(k_runs, num_tasks))


@functools.partial(jax.jit, static_argnums=(0, 2, 5))
def _curves(
    make_tx: Callable[[Any], optax.GradientTransformation],
    hyper: Any,
    family: TaskFamily,
    task_params: Any,
    keys: jax.Array,
    num_steps: int,
) -> jax.Array:
    tx = make_tx(hyper)

    def one(tp: Any, key: jax.Array) -> jax.Array:
        k_init, k_data = jax.random.split(key)
        params = family.init(tp, k_init)
        _, _, losses = unroll(tx, lambda p, k: family.loss(tp, p, k), params, tx.init(params), k_data, num_steps)
        return losses

    return jax.vmap(one)(task_params, keys)


def loss_curves(
    make_tx: Callable[[Any], optax.GradientTransformation],
    hyper: Any,
    family: TaskFamily,
    tasks: EvalTasks,
    num_steps: int,
) -> np.ndarray:
    """Loss curves of ``make_tx(hyper)`` on every task: shape ``(tasks, num_steps + 1)``.

    ``make_tx`` is static (compiled once), ``hyper`` is traced: one compilation
    serves a whole learning-rate grid, or any φ of a learned optimizer.
    """
    num_steps = positive_int("num_steps", num_steps)
    return np.asarray(_curves(make_tx, hyper, family, tasks.task_params, tasks.keys, num_steps))


def learned_curves(
    optimizer: LearnedOptimizer, meta_params: MetaParams, family: TaskFamily, tasks: EvalTasks, num_steps: int
) -> np.ndarray:
    """``loss_curves`` of a learned optimizer with meta-parameters φ."""
    return loss_curves(optimizer.as_optax, meta_params, family, tasks, num_steps)


def final_score(curves: np.ndarray) -> float:
    """Mean final loss; a diverged run (NaN or inf) makes it inf."""
    final = curves[:, -1]
    return float(np.mean(final)) if np.all(np.isfinite(final)) else math.inf


@dataclasses.dataclass
class Tuning:
    """A learning-rate sweep: the rates that ran, each one's score, and the best rate.

    ``grid`` is the whole grid of the sweep, or, after a coarse-to-fine search
    (``search_learning_rates``), the rates of it that ran, in the grid's order (its
    first and last always run). ``scores[i]`` is the score of ``grid[i]``.
    """

    name: str
    grid: tuple[float, ...]
    scores: tuple[float, ...]
    best_lr: float

    @property
    def at_edge(self) -> bool:
        """True when the best rate is the grid's first or last (widen the grid)."""
        return self.best_lr in (self.grid[0], self.grid[-1])


def search_learning_rates(
    make_tx: Callable[[Any], optax.GradientTransformation],
    family: TaskFamily,
    tasks: EvalTasks,
    horizons: Sequence[int],
    grid: tuple[float, ...] = DEFAULT_LR_GRID,
    coarse_to_fine: bool = False,
    *,
    name: str = "",
    progress: bool = False,
) -> dict[int, Tuning]:
    """The best learning rate of ``make_tx`` on ``tasks`` for each horizon, from one set of runs.

    Each rate that runs, runs once, for ``max(horizons)`` steps (``loss_curves``). A
    rate's score at a horizon is the mean over the tasks of the loss at that step, or
    inf when any task's loss there is NaN or inf (``final_score``), so a rate that
    diverged by then never wins over one that did not. The best rate has the lowest
    score, the first in the grid's order on a tie (as ``np.argmin``).

    Without ``coarse_to_fine`` every rate of ``grid`` runs. With it, every other rate
    (indices 0, 2, 4, ... and the last) runs first; then, horizon by horizon in the
    order given, the neighbours on ``grid`` of the best rate so far run, until the
    best rate's neighbours have all run. Where the score has one minimum along the
    grid, that finds the best rate of the whole grid, running about half of it plus
    the neighbours of the best rates. A horizon's best rate is chosen among the rates
    that had run when it was decided.

    Args:
      make_tx: learning rate -> optax optimizer (e.g. ``BASELINES["adam"]``).
      family: the task family of ``tasks``.
      tasks: the tuning tasks (``sample_tasks(..., stream="tune")``).
      horizons: the steps at which to score, each a positive integer.
      grid: the learning rates, each positive and finite; a neighbour is the next
        rate in this order.
      coarse_to_fine: search the grid coarse to fine instead of running all of it.
      name: the optimizer's name, for the ``Tuning`` and the progress bar.
      progress: show a progress bar of the runs (cleared when done).

    Returns:
      ``{horizon: Tuning}``: for each horizon, the rates that had run when it was
      decided (in the grid's order), their scores at that horizon, and the best rate.

    Raises:
      ConfigError: if ``grid`` is empty or holds a rate that is not positive and
        finite, or ``horizons`` is empty or holds one that is not a positive integer.

    Example:
      >>> from l2l_jax import tasks
      >>> from l2l_jax.evaluation.baselines import BASELINES
      >>> family = tasks.get("quadratic", dim=2)
      >>> tune = sample_tasks(family, seed=0, num_tasks=4, stream="tune")
      >>> tunings = search_learning_rates(BASELINES["sgd"], family, tune, (5, 20), coarse_to_fine=True)
      >>> sorted(tunings), len(tunings[20].grid) < len(DEFAULT_LR_GRID)
      ([5, 20], True)
    """
    baselines_lib.check_learning_rates(grid)
    if len(horizons) == 0:
        raise ConfigError("no horizons to tune the learning rate for")
    steps_list = [positive_int("num_steps", steps) for steps in horizons]
    num_steps = max(steps_list)
    sweep: dict[int, np.ndarray] = {}
    tunings: dict[int, Tuning] = {}
    with tqdm(total=len(grid), desc=f"tune {name}".rstrip(), disable=not progress, leave=False) as bar:

        def run(i: int) -> None:
            if i not in sweep:
                sweep[i] = loss_curves(make_tx, jnp.asarray(grid[i], jnp.float32), family, tasks, num_steps)
                bar.update()

        for i in sorted({*range(0, len(grid), 2), len(grid) - 1}) if coarse_to_fine else range(len(grid)):
            run(i)
        for steps in steps_list:
            while True:
                ran = sorted(sweep)
                scores = [final_score(sweep[i][:, : steps + 1]) for i in ran]
                best = ran[int(np.argmin(scores))]
                missing = [j for j in (best - 1, best + 1) if 0 <= j < len(grid) and j not in sweep]
                if not missing:
                    break
                for j in missing:
                    run(j)
            tunings[steps] = Tuning(name, tuple(float(grid[i]) for i in ran), tuple(scores), float(grid[best]))
    return tunings


def tune_learning_rate(
    name: str,
    family: TaskFamily,
    tasks: EvalTasks,
    num_steps: int,
    grid: tuple[float, ...] = DEFAULT_LR_GRID,
    progress: bool = True,
) -> Tuning:
    """Picks the rate of baseline ``name`` with the lowest mean final loss on ``tasks``.

    Every rate of ``grid`` runs for ``num_steps`` steps; scores and ties as in
    ``search_learning_rates``.
    """
    make_tx = baselines_lib.get(name)
    # Nested under the baselines' bar: only on a terminal (in a log file, its cursor moves are junk).
    nested = progress and sys.stderr.isatty()
    return search_learning_rates(make_tx, family, tasks, (num_steps,), grid, name=name, progress=nested)[num_steps]


@dataclasses.dataclass
class Comparison:
    """Loss curves of several optimizers on the same test tasks."""

    curves: dict[str, np.ndarray]  # name -> (tasks, steps + 1)
    learning_rates: dict[str, float | None]
    tunings: dict[str, Tuning]
    num_steps: int

    def rows(self) -> list[dict[str, Any]]:
        """One dict per optimizer, best mean final loss first."""
        out = []
        for name, c in self.curves.items():
            final = c[:, -1]
            out.append(
                {
                    "optimizer": name,
                    "learning_rate": self.learning_rates.get(name),
                    "mean_final_loss": float(np.mean(final)),
                    "stderr_final_loss": float(np.std(final) / np.sqrt(len(final))),
                    "median_final_loss": float(np.median(final)),
                    "mean_loss_over_run": float(np.mean(c[:, 1:])),
                    "num_tasks": int(c.shape[0]),
                }
            )
        return sorted(out, key=lambda r: (not math.isfinite(r["mean_final_loss"]), r["mean_final_loss"]))

    def table(self) -> str:
        """A Markdown table of ``rows``."""
        lines = [
            f"| optimizer | tuned lr | mean final loss (step {self.num_steps}) | ± s.e. | median final | mean loss over run |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in self.rows():
            lr = "learned" if r["learning_rate"] is None else f"{r['learning_rate']:.3g}"
            lines.append(
                f"| {r['optimizer']} | {lr} | {r['mean_final_loss']:.4g} | {r['stderr_final_loss']:.2g} "
                f"| {r['median_final_loss']:.4g} | {r['mean_loss_over_run']:.4g} |"
            )
        return "\n".join(lines)

    def paired(self, reference: str) -> list[dict[str, Any]]:
        """``reference``'s final loss minus every other optimizer's, task by task.

        Every optimizer ran on the same test tasks (the same θ0 and minibatches), so
        the differences are paired: their mean, its standard error, and a verdict
        that calls a win or a loss only beyond 2 standard errors.

        Args:
          reference: the name of one of the compared optimizers.

        Returns:
          One dict per other optimizer, in ``rows`` order: ``optimizer``,
          ``mean_difference`` (negative: ``reference`` lower), ``paired_stderr``,
          ``verdict`` (``"win"``, ``"loss"`` or ``"tie"``, for ``reference``) and ``num_tasks``.

        Raises:
          ConfigError: if ``reference`` is not one of the compared optimizers.
        """
        if reference not in self.curves:
            raise ConfigError(f"no optimizer named {reference!r} in this comparison ({', '.join(self.curves)})")
        ref = self.curves[reference][:, -1].astype(np.float64)
        out = []
        for row in self.rows():
            name = row["optimizer"]
            if name == reference:
                continue
            diff = ref - self.curves[name][:, -1].astype(np.float64)
            mean = float(np.mean(diff))
            se = float(np.std(diff, ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else math.inf
            verdict = "tie" if not math.isfinite(mean) or abs(mean) <= 2 * se else ("win" if mean < 0 else "loss")
            out.append(
                {
                    "optimizer": name,
                    "mean_difference": mean,
                    "paired_stderr": se,
                    "verdict": verdict,
                    "num_tasks": len(diff),
                }
            )
        return out

    def paired_table(self, reference: str) -> str:
        """A Markdown table of ``paired(reference)``."""
        lines = [
            f"| {reference} minus | mean difference (step {self.num_steps}) | ± paired s.e. | verdict |",
            "| --- | --- | --- | --- |",
        ]
        for r in self.paired(reference):
            lines.append(
                f"| {r['optimizer']} | {r['mean_difference']:+.4g} | {r['paired_stderr']:.2g} | {r['verdict']} |"
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "num_steps": self.num_steps,
            "rows": self.rows(),
            "mean_curves": {k: [float(x) for x in np.mean(c, axis=0)] for k, c in self.curves.items()},
            "tuning": {
                k: {"grid": t.grid, "scores": t.scores, "best_lr": t.best_lr, "at_edge": t.at_edge}
                for k, t in self.tunings.items()
            },
        }


def compare_with_baselines(
    learned: dict[str, tuple[LearnedOptimizer, MetaParams]],
    family: TaskFamily,
    *,
    num_steps: int = 100,
    num_tune_tasks: int = 100,
    num_test_tasks: int = 128,
    seed: int = 0,
    baselines: tuple[str, ...] = ("sgd", "momentum", "nag", "rmsprop", "adam"),
    grid: tuple[float, ...] = DEFAULT_LR_GRID,
    progress: bool = True,
) -> Comparison:
    """Tunes each baseline's rate on held-out tasks, then evaluates everything on other ones.

    Args:
      learned: ``name -> (learned optimizer, φ)``.
      family: the task family to draw held-out tasks from.
      num_steps: inner steps per run.
      num_tune_tasks: tasks for learning-rate tuning.
      num_test_tasks: other tasks for the reported curves.
      seed: seeds both task sets (distinct from meta-training's streams).
      baselines: names from ``l2l_jax.evaluation.baselines.BASELINES``.
      grid: learning rates to try.
      progress: show progress bars.

    Returns:
      A ``Comparison``.
    """
    tune_tasks = sample_tasks(family, seed, num_tune_tasks, "tune")
    test_tasks = sample_tasks(family, seed, num_test_tasks, "test")
    curves: dict[str, np.ndarray] = {}
    lrs: dict[str, float | None] = {}
    tunings: dict[str, Tuning] = {}
    for name, (opt, phi) in learned.items():
        curves[name] = learned_curves(opt, phi, family, test_tasks, num_steps)
        lrs[name] = None
    for name in tqdm(baselines, desc="baselines", disable=not progress):
        tuning = tune_learning_rate(name, family, tune_tasks, num_steps, grid, progress)
        tunings[name] = tuning
        lrs[name] = tuning.best_lr
        curves[name] = loss_curves(
            baselines_lib.get(name), jnp.asarray(tuning.best_lr, jnp.float32), family, test_tasks, num_steps
        )
    return Comparison(curves, lrs, tunings, num_steps)
