"""Plots of meta-training histories: written for any sign of meta-loss, quietly."""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest

from l2l_jax.evaluation import plot_loss_curves, plot_meta_training


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


def _capture_figures(monkeypatch) -> list:
    """The Figures the plotting functions draw, kept for inspection."""
    from l2l_jax.evaluation import plots

    figures = []
    make = plots._figure

    def keep(*args, **kwargs):
        figures.append(make(*args, **kwargs))
        return figures[-1]

    monkeypatch.setattr(plots, "_figure", keep)
    return figures


def test_meta_training_plot_has_a_title_and_a_meta_loss_label_naming_the_weighting(tmp_path, monkeypatch):
    figures = _capture_figures(monkeypatch)
    plot_meta_training(_history(+1.0), tmp_path / "w.png", weighting="uniform", title="meta-training lstm on quadratic")
    plot_meta_training(_history(+1.0), tmp_path / "plain.png")
    with_weighting, plain = (fig.axes[0] for fig in figures)
    assert with_weighting.get_title() == "meta-training lstm on quadratic"
    assert with_weighting.get_ylabel().startswith("meta-loss") and "uniform" in with_weighting.get_ylabel()
    assert plain.get_title() == "meta-training" and plain.get_ylabel().startswith("meta-loss")
    assert plain.get_xlabel() == "meta-step"


def test_a_short_run_ticks_whole_meta_steps_only(tmp_path, monkeypatch):
    figures = _capture_figures(monkeypatch)
    rows = [{"step": s, "meta_loss": 1.0 / s} for s in (1, 2, 3, 4)]
    plot_meta_training(rows, tmp_path / "short.png")
    (axes,) = figures[0].axes
    figures[0].canvas.draw()
    ticks = [t for t in axes.get_xticks() if axes.get_xlim()[0] <= t <= axes.get_xlim()[1]]
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks


def test_rows_without_a_meta_loss_are_skipped_not_fatal(tmp_path):
    rows = _history(+1.0)
    damaged = [rows[0], {"step": 1}, {"meta_loss": 2.0}, {"step": 3, "meta_loss": "x"}, "not a row", *rows[4:]]
    path = plot_meta_training(damaged, tmp_path / "damaged.png")
    assert path is not None and path.stat().st_size > 0
    assert plot_meta_training([{"step": 1}], tmp_path / "none.png") is None


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_plots_are_written_with_the_users_umask_and_leave_no_temporary_files(tmp_path, umask):
    old = os.umask(umask)
    try:
        curves = {"sgd": np.ones((3, 5)), "learned lstm": np.full((3, 5), 0.5)}
        written = [
            plot_meta_training(_history(+1.0), tmp_path / "meta_training.png"),
            plot_loss_curves(curves, tmp_path / "loss_curves.png"),
        ]
    finally:
        os.umask(old)
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
        assert path.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss_curves.png", "meta_training.png"]


def test_a_plot_replaces_an_older_one_whole(tmp_path):
    path = tmp_path / "meta_training.png"
    path.write_bytes(b"old")
    plot_meta_training(_history(+1.0), path)
    assert path.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("weighting", ["uniform", "final", "log", None])
def test_non_finite_steps_leave_gaps_without_warnings(tmp_path, weighting):
    rows = _history(-1.0 if weighting == "log" else +1.0)
    rows[2]["meta_loss"], rows[3]["meta_loss"] = float("nan"), float("inf")
    rows[4]["val_loss"] = float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = plot_meta_training(rows, tmp_path / "gaps.png", weighting=weighting)
    assert path is not None and path.stat().st_size > 0
