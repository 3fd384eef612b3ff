"""Runs saved by an earlier version resume with this one and give what that version gave."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from l2l_jax import cli, pretrained
from l2l_jax import run_directory as rd

FIXTURES = Path(__file__).parent / "fixtures" / "runs-faf7788"
COMMON = [
    "meta-train", "--task", "quadratic", "--horizon", "20", "--truncation", "10", "--batch-size", "4",
    "--validate-every", "0", "--checkpoint-every", "1", "--no-progress", "--meta-steps", "4",
]  # fmt: skip
FLAGS = {
    "tbptt": ["--optimizer", "lstm"],
    "pes": ["--optimizer", "lstm", "--optimizer-option", "hidden_size=8", "--estimator", "pes",
            "--sigma", "0.02", "--pairs", "2"],
}  # fmt: skip


def phi(run: Path) -> list[np.ndarray]:
    """The run's trained φ, leaf by leaf."""
    _, meta_params = pretrained.load_meta_params(run)
    return [np.asarray(x) for x in jax.tree.leaves(meta_params)]


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_a_run_saved_before_estimator_options_resumes_to_the_same_result(name, tmp_path, capsys):
    run = tmp_path / name
    shutil.copytree(FIXTURES / name, run)
    assert cli.main([*COMMON, *FLAGS[name], "--run-dir", str(run)]) == 0
    capsys.readouterr()
    reference = FIXTURES / f"{name}-4"
    got, want = rd.read_metrics(run / "metrics.jsonl"), rd.read_metrics(reference / "metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["meta_loss"] for r in got], [r["meta_loss"] for r in want], rtol=1e-5)
    for a, b in zip(phi(run), phi(reference), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
