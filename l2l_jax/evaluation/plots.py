"""Plots written to PNG files (bare matplotlib Figures: no display or backend needed).

Each file is written whole (a temporary file renamed into place) with the
permissions the user's umask gives, like every other file of a run directory.
"""

from __future__ import annotations

import io
import math
import numbers
from pathlib import Path
from typing import Any

import numpy as np

from l2l_jax import run_directory as rd

#: The y-axis label of the meta-training plot for each meta-loss weighting.
META_LOSS_LABELS: dict[str, str] = {
    "uniform": r"meta-loss $\Sigma_t\, f(\theta_t)$ (uniform weighting)",
    "final": r"meta-loss $f(\theta_K)$ (final weighting)",
    "log": r"meta-loss $\Sigma_t\, \log f(\theta_t)$ (log weighting)",
}


def _figure(size: tuple[float, float]) -> Any:
    # A bare Figure (no pyplot): never touches the backend of a notebook or GUI.
    from matplotlib.figure import Figure

    return Figure(figsize=size)


def _save(fig: Any, path: Path) -> Path:
    """Writes ``fig`` to ``path`` (format from its suffix, PNG by default) atomically, with the umask's permissions."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=120, format=path.suffix[1:].lower() or "png")
    rd.write_atomic(path, buffer.getvalue())
    return path


def plot_loss_curves(curves: dict[str, np.ndarray], path: Path, title: str = "", ylabel: str = "loss") -> Path:
    """Plots the mean loss per step with a ±1 standard-error band, one line per optimizer.

    Non-finite means (a diverged task) are gaps in a line; an optimizer with no
    finite mean at all is named in the legend as not shown. The y-axis is
    logarithmic when every value shown is positive, linear otherwise.

    Args:
      curves: optimizer name -> losses of shape ``(tasks, steps)``.
      path: the image file to write (replaced whole if it exists).
      title: the plot's title.
      ylabel: the y-axis label.

    Returns:
      ``path``.
    """
    fig = _figure((6.4, 4.4))
    ax = fig.subplots()
    shown: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, c in curves.items():
        c = np.asarray(c, dtype=np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            mean = np.mean(c, axis=0)
            se = np.std(c, axis=0) / np.sqrt(c.shape[0])
        finite = np.isfinite(mean)
        if finite.any():
            shown[name] = (np.where(finite, mean, np.nan), se)
        else:
            ax.plot([], [], linestyle="none", label=f"{name}: no finite loss (not shown)")
    log = bool(shown) and all(np.nanmin(mean) > 0 for mean, _ in shown.values())
    for name, (mean, se) in shown.items():
        steps = np.arange(mean.shape[0])
        style = {"linewidth": 2.5} if "lstm" in name or "learned" in name else {"linewidth": 1.2}
        ax.plot(steps, mean, label=name, **style)
        ax.fill_between(steps, np.maximum(mean - se, 1e-12) if log else mean - se, mean + se, alpha=0.15)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if curves:
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def _number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def plot_meta_training(
    history: list[dict[str, Any]],
    path: Path,
    weighting: str | None = None,
    title: str = "meta-training",
) -> Path | None:
    """Plots the meta-loss per meta-step and the validation meta-loss, from a run's metrics.

    Args:
      history: the run's metrics rows (``step``, ``meta_loss`` and, on validation
        steps, ``val_loss``); rows without a numeric ``step`` and ``meta_loss``
        are skipped.
      path: the image file to write (replaced whole if it exists).
      weighting: the run's meta-loss weighting, named in the y-axis label
        (``None``: just "meta-loss").
      title: the plot's title.

    Returns:
      ``path``, or ``None`` (nothing written) if no row has a meta-loss.
    """
    rows = [r for r in history if isinstance(r, dict) and _number(r.get("step")) and _number(r.get("meta_loss"))]
    if not rows:
        return None
    fig = _figure((6.4, 4.0))
    ax = fig.subplots()

    def gap(v: float) -> float:  # Non-finite steps are gaps in the line.
        return v if math.isfinite(v) else math.nan

    steps = [r["step"] for r in rows]
    losses = [gap(r["meta_loss"]) for r in rows]
    ax.plot(steps, losses, linewidth=0.8, alpha=0.6, label="meta-loss (train batch)")
    val = [(r["step"], gap(r["val_loss"])) for r in rows if _number(r.get("val_loss"))]
    if val:
        ax.plot(*zip(*val), "o-", label="validation meta-loss")
    values = [v for v in losses + [v for _, v in val] if not math.isnan(v)]
    if values and all(v > 0 for v in values):  # The "log" weighting's meta-loss Σ log f is negative.
        ax.set_yscale("log")
    ax.set_xlabel("meta-step")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # Meta-steps are whole: no tick at 2.5.
    ax.set_ylabel(META_LOSS_LABELS.get(weighting or "", "meta-loss"))
    ax.set_title(title)
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
