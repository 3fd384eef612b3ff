"""The command line: runs, and bad input gets one clear line instead of a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from l2l_jax import cli

TINY = [
    "--task-option",
    "dim=3",
    "--optimizer-option",
    "hidden_size=6",
    "--meta-steps",
    "4",
    "--horizon",
    "10",
    "--truncation",
    "5",
    "--batch-size",
    "4",
    "--val-tasks",
    "4",
    "--validate-every",
    "2",
    "--no-progress",
]


def test_meta_train_then_evaluate(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["meta-train", "--task", "quadratic", *TINY, "--steps-per-call", "3", "--tasks-per-chunk", "2"]
    assert cli.main([*argv, "--run-dir", str(run)]) == 0
    assert (run / "optimizer.msgpack").is_file()
    assert json.loads((run / "config.json").read_text())["tasks_per_chunk"] == 2
    code = cli.main(["evaluate", str(run), "--tasks", "8", "--tune-tasks", "8", "--steps", "10", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| learned lstm | learned |" in out and "| adam |" in out
    results = json.loads((run / "evaluation.json").read_text())
    assert {r["optimizer"] for r in results["rows"]} == {"learned lstm", "sgd", "momentum", "nag", "rmsprop", "adam"}
    assert (run / "loss_curves.png").stat().st_size > 1000
    assert "evaluation" in json.loads((run / "optimizer.json").read_text())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["meta-train", "--task", "imagenet", "--run-dir", "X"], "unknown task 'imagenet'"),
        (["meta-train", "--optimizer", "gru", "--run-dir", "X"], "unknown learned optimizer 'gru'"),
        (["meta-train", "--preset", "pytorch", "--run-dir", "X"], "unknown LSTM preset"),
        (["meta-train", "--horizon", "0", "--run-dir", "X"], "horizon must be a positive integer"),
        (["meta-train", "--tasks-per-chunk", "3", "--run-dir", "X"], "tasks_per_chunk=3 must divide the batch of 128"),
        (["meta-train", "--steps-per-call", "0", "--run-dir", "X"], "steps_per_call must be a positive integer"),
        (["meta-train", "--meta-lr", "-1", "--run-dir", "X"], "meta_lr must be a positive number"),
        (["meta-train", "--task-option", "dim", "--run-dir", "X"], "--task-option takes KEY=VALUE"),
        (["meta-train", "--task-option", "dim=0", "--run-dir", "X"], "dimension (dim) must be a positive integer"),
        (["evaluate", "does/not/exist"], "neither a shipped learned optimizer"),
        (["meta-train", "--optimizer-option", "hidden_size=abc", "--run-dir", "X"], "hidden_size"),
        (["meta-train", "--task-option", "dim=abc", "--run-dir", "X"], "dim) must be a positive integer"),
        (["meta-train", "--optimizer", "linear_rnn", "--optimizer-option", "phi=[1,2]", "--run-dir", "X"], "three"),
        (["seed-example", "--meta-steps", "0"], "num_meta_steps must be a positive integer"),
        (["evaluate", "RUN", "--steps", "0"], "at least one step"),
    ],
)
def test_bad_input_prints_one_clear_line(argv, message, tmp_path, capsys):
    argv = [str(tmp_path / a) if a in ("X",) else a for a in argv]
    if "RUN" in argv:
        run = tmp_path / "run"
        cli.main(["meta-train", *TINY, "--run-dir", str(run)])
        argv = [str(run) if a == "RUN" else a for a in argv]
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("l2l-jax: error: ") and message in err
    assert "Traceback" not in err


def test_corrupt_run_directory_via_the_real_executable(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "optimizer.json").write_text("{broken")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "l2l_jax", "evaluate", str(run)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 2
    assert "is corrupt" in proc.stderr and "Traceback" not in proc.stderr
