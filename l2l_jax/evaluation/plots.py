"""Plots written to PNG files (bare matplotlib Figures: no display or backend needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _figure(size: tuple[float, float]) -> Any:
    # A bare Figure (no pyplot): never touches the backend of a notebook or GUI.
    from matplotlib.figure import Figure

    return Figure(figsize=size)


def plot_loss_curves(curves: dict[str, np.ndarray], path: Path, title: str = "", ylabel: str = "loss") -> Path:
    """Mean loss per step (log scale) with a ±1 standard-error band, one line per optimizer."""
    fig = _figure((6.4, 4.4))
    ax = fig.subplots()
    for name, c in curves.items():
        mean = np.mean(c, axis=0)
        se = np.std(c, axis=0) / np.sqrt(c.shape[0])
        steps = np.arange(c.shape[1])
        style = {"linewidth": 2.5} if "lstm" in name or "learned" in name else {"linewidth": 1.2}
        ax.plot(steps, mean, label=name, **style)
        ax.fill_between(steps, np.maximum(mean - se, 1e-12), mean + se, alpha=0.15)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_meta_training(history: list[dict[str, Any]], path: Path) -> Path | None:
    """Meta-loss per meta-step and validation loss, from a run's metrics."""
    if not history:
        return None
    fig = _figure((6.4, 4.0))
    ax = fig.subplots()
    steps = [r["step"] for r in history]
    ax.plot(steps, [r["meta_loss"] for r in history], linewidth=0.8, alpha=0.6, label="meta-loss (train batch)")
    val = [(r["step"], r["val_loss"]) for r in history if "val_loss" in r]
    if val:
        ax.plot(*zip(*val), "o-", label="validation meta-loss")
    values = [r["meta_loss"] for r in history] + [v for _, v in val]
    if all(v > 0 for v in values):  # The "log" weighting's meta-loss Σ log f is negative.
        ax.set_yscale("log")
    ax.set_xlabel("meta-step")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
