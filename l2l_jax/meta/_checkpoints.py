"""What a meta-training checkpoint holds besides the state: the best φ and its metadata; restored states checked."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from l2l_jax import run_directory as rd
from l2l_jax.errors import RunDirectoryError
from l2l_jax.meta.step import MetaTrainState, stays_finite
from l2l_jax.optimizers.base import LearnedOptimizer, MetaParams
from l2l_jax.tasks.base import TaskFamily
from l2l_jax.tasks.mixture import TaskMixture


def best(state: MetaTrainState) -> tuple[MetaParams, int]:
    """The best validated φ and its step, or the latest if none was validated (yet)."""
    if math.isfinite(float(state.best_val)):
        return state.best_meta_params, int(state.best_step)
    return state.meta_params, int(state.step)


def save(
    run_path: Path,
    optimizer: LearnedOptimizer,
    family: TaskFamily | TaskMixture,
    training_config: dict[str, Any],
    state: MetaTrainState,
    history: Sequence[dict[str, Any]],
) -> None:
    """Writes the best φ of ``state`` with its metadata, then the metrics rows ``history`` and the checkpoint.

    Optimizer first, then metrics and checkpoint: a kill in between leaves an
    optimizer and metrics rows past the checkpoint, which the resumed run rewrites.

    Args:
      run_path: the run directory.
      optimizer: the learned optimizer.
      family: the task family or mixture.
      training_config: the run's ``MetaTrainConfig.to_dict()``.
      state: the state after the last completed meta-step.
      history: the metrics rows up to ``state.step``.
    """
    best_phi, best_step = best(state)
    meta = optimizer_meta(optimizer, family, training_config, state, best_step, history)
    rd.save_trained_optimizer(run_path, meta, best_phi)
    rd.save_checkpoint(run_path, state, history)


def optimizer_meta(
    optimizer: LearnedOptimizer,
    family: TaskFamily | TaskMixture,
    training_config: dict[str, Any],
    state: MetaTrainState,
    best_step: int,
    history: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """The metadata that ``l2l_jax.pretrained.load`` needs with the best φ of ``state`` (from ``best_step``).

    ``trained_steps`` counts the meta-updates that reached that φ (``best_step``
    less the steps skipped by then, from the metrics rows ``history``): 0 marks an
    untrained φ, which ``l2l_jax.pretrained.load`` refuses unless asked.
    """
    skipped = skipped_by(history, best_step)
    trained = {} if skipped is None else {"trained_steps": best_step - skipped}
    return {
        "optimizer": optimizer.name,
        "optimizer_config": optimizer.config(),
        "task": training_config["task"],
        "task_options": training_config["task_options"],  # What rebuilds the task by name.
        "task_config": family.config(),
        "meta_steps": int(state.step),
        "best_step": best_step,
        "best_val_loss": float(state.best_val) if math.isfinite(float(state.best_val)) else None,
        "skipped_meta_steps": int(state.skipped),
        **trained,
        "training_config": training_config,
    }


def skipped_by(history: Sequence[dict[str, Any]], step: int) -> int | None:
    """Meta-steps skipped up to and including ``step``, from the metrics rows (0 for step 0; ``None``: no row)."""
    if step == 0:
        return 0
    for row in reversed(history):
        if row["step"] == step:
            return int(row["skipped"])
    return None


def check_restored(path: Path, state: MetaTrainState, fresh: MetaTrainState) -> None:
    """Raises ``RunDirectoryError`` naming ``path`` if a restored state holds a non-finite φ or meta-optimizer state.

    The meta-optimizer's state may be non-finite only where a fresh one (``fresh``) is.
    """
    phis = jax.tree.leaves((state.meta_params, state.best_meta_params))
    if not all(np.all(np.isfinite(np.asarray(x))) for x in phis):
        what = "meta-parameters (φ)"
    elif not bool(stays_finite(state.meta_opt_state, fresh.meta_opt_state)):
        what = "meta-optimizer state"
    else:
        return
    raise RunDirectoryError(
        f"{path} holds non-finite {what} (NaN or inf), so the run cannot be resumed; start over "
        "with overwrite=True (--overwrite) or resume from a good copy of the run directory"
    )
