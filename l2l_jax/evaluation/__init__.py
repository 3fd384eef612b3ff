"""Baselines, held-out evaluation and comparison tables."""

from l2l_jax.evaluation.baselines import BASELINES
from l2l_jax.evaluation.compare import (
    DEFAULT_LR_GRID,
    Comparison,
    EvalTasks,
    Tuning,
    compare_with_baselines,
    learned_curves,
    loss_curves,
    sample_tasks,
    search_learning_rates,
    tune_learning_rate,
)
from l2l_jax.evaluation.plots import plot_loss_curves, plot_meta_training
from l2l_jax.evaluation.report import evaluate_run

__all__ = [
    "BASELINES",
    "Comparison",
    "DEFAULT_LR_GRID",
    "EvalTasks",
    "Tuning",
    "compare_with_baselines",
    "evaluate_run",
    "learned_curves",
    "loss_curves",
    "plot_loss_curves",
    "plot_meta_training",
    "sample_tasks",
    "search_learning_rates",
    "tune_learning_rate",
]
