"""Plots of meta-training histories: written for any sign of meta-loss, quietly."""

from __future__ import annotations

import warnings
from pathlib import Path

from l2l_jax.evaluation import plot_meta_training


def _history(sign: float) -> list[dict]:
    rows = [{"step": i, "meta_loss": sign * (1.0 + 1.0 / (i + 1))} for i in range(10)]
    rows[4]["val_loss"] = sign * 1.5
    rows[9]["val_loss"] = sign * 1.2
    return rows


def test_positive_meta_loss_is_plotted_without_warnings(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = plot_meta_training(_history(+1.0), tmp_path / "pos.png")
    assert path is not None and path.stat().st_size > 0


def test_negative_log_weighted_meta_loss_is_plotted_without_warnings(tmp_path: Path) -> None:
    # weighting="log" gives Σ log f < 0: a log axis would be empty and matplotlib would warn.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = plot_meta_training(_history(-1.0), tmp_path / "neg.png")
    assert path is not None and path.stat().st_size > 0


def test_empty_history_writes_nothing(tmp_path: Path) -> None:
    assert plot_meta_training([], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
