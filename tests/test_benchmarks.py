"""The benchmark scripts: they explain themselves, refuse bad options, and their small modes run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py"))


def run_script(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        capture_output=True,
        check=False,  # the tests read the exit status
        text=True,
        timeout=timeout,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        cwd=BENCHMARKS.parent,
    )


def test_there_are_benchmark_scripts():
    assert {"mnist.py", "update_speed.py", "bf16_state.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_prints_usage_and_runs_nothing(name):
    # A benchmark can take an hour: --help must answer at once, not start it.
    out = run_script(name, "--help", timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage:")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shipped"], "use it with --eval-only"),
        (["--eval-only", "--shipped", "--ship"], "drop --ship"),
        (["--eval-only", "--run-dir", "no-such-run"], "no trained run in no-such-run"),
    ],
)
def test_mnist_refuses_contradictory_options(args, message):
    out = run_script("mnist.py", *args, timeout=60)
    assert out.returncode == 2
    assert message in out.stderr


def test_fit_mode_trains_a_model_of_the_asked_size(tmp_path):
    result = tmp_path / "fit.json"
    out = run_script(
        "update_speed.py", "--fit", "2e4", "--fit-steps", "3", "--implementations", "fused",
        "--state-dtypes", "float32", "--out", str(result),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = json.loads(result.read_text())["fit"]
    assert [(r["implementation"], r["state_dtype"]) for r in rows] == [("adam", None), ("fused", "float32")]
    for row in rows:
        assert abs(row["parameters"] / 2e4 - 1) < 0.15
        assert row["steps"] == 3 and row["seconds_per_step"] > 0 and row["planned_bytes"] > 0
        for loss in (row["first_loss"], row["last_loss"]):
            assert math.isfinite(loss) and 0 < loss < 10
    # Same model, same data, same initialisation: the first loss is the same for both.
    assert rows[0]["first_loss"] == rows[1]["first_loss"]
    # The shipped optimizer's update is scaled down with the width, by default 32 / width.
    assert rows[0]["update_scale"] is None
    assert rows[1]["update_scale"] == pytest.approx(32 / rows[1]["width"])


def test_fit_mode_takes_an_explicit_update_scale(tmp_path):
    result = tmp_path / "fit.json"
    out = run_script(
        "update_speed.py", "--fit", "1e3", "--fit-steps", "1", "--implementations", "fused",
        "--state-dtypes", "bfloat16", "--fit-update-scale", "0.5", "--out", str(result),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (_, row) = json.loads(result.read_text())["fit"]
    assert row["update_scale"] == 0.5 and row["state_dtype"] == "bfloat16"
    assert row["seconds_per_step"] is None  # one step is the compiling call: no timing


def test_fit_mode_refuses_a_model_too_small():
    out = run_script("update_speed.py", "--fit", "10")
    assert out.returncode == 2
    assert "--fit needs at least 100 parameters" in out.stderr
