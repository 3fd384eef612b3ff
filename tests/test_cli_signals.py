"""Interrupting ``l2l-jax meta-train``: Ctrl-C and SIGTERM save a checkpoint and exit 130 and 143."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# A run far too long to finish, checkpointed after every meta-step: the first
# checkpoint on disk shows that training is under way.
ARGV = [
    "meta-train",
    "--task-option",
    "dim=3",
    "--optimizer-option",
    "hidden_size=6",
    "--meta-steps",
    "1000000",
    "--horizon",
    "10",
    "--truncation",
    "5",
    "--batch-size",
    "4",
    "--validate-every",
    "0",
    "--checkpoint-every",
    "1",
    "--no-progress",
]


# The default sizes: XLA compiles the meta-step for several seconds.
ARGV_LONG_COMPILE = ["meta-train", "--meta-steps", "1000000", "--validate-every", "0", "--no-progress"]


def _start_then_signal(
    run: Path, signum: int, when: str = "training", argv: list[str] = ARGV
) -> subprocess.CompletedProcess[str]:
    """Starts meta-training, sends ``signum`` once it is compiling (``when="compiling"``) or training."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    if when == "compiling":  # A cached program would skip the compile window this waits for.
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
    # Ctrl-C as at a terminal: a shell runs background jobs with SIGINT ignored, and the
    # child would inherit that from a test run started in the background (a handled
    # signal, unlike an ignored one, is reset to its default in the child).
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "l2l_jax", *argv, "--run-dir", str(run)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    finally:
        signal.signal(signal.SIGINT, ignored)
    out = ""
    try:
        if when == "compiling":
            # The CLI announces the run just before meta_train compiles its step;
            # the meta-step's compilation starts soon after and lasts seconds.
            out = proc.stdout.readline()
            assert out.startswith("meta-training "), (out, proc.communicate())
            time.sleep(2)
        else:
            deadline = time.monotonic() + 180
            while not (run / "checkpoint.msgpack").is_file():
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "meta-training did not start"
                time.sleep(0.05)
        proc.send_signal(signum)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out + rest, err)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_meta_training_saves_a_checkpoint_and_exits_128_plus_the_signal(tmp_path, signum, code):
    run = tmp_path / "run"
    done = _start_then_signal(run, signum)
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "interrupted: checkpoint saved" in done.stdout
    assert "run the same command again to resume" in done.stdout
    assert "Traceback" not in done.stderr
    assert (run / "checkpoint.msgpack").is_file()


def test_ctrl_c_while_xla_compiles_exits_130_without_crashing(tmp_path):
    # jaxlib stops waiting for a compilation on Ctrl-C while XLA's thread compiles
    # on; finalising the interpreter under it crashed (SIGSEGV) or hung.
    done = _start_then_signal(tmp_path / "run", signal.SIGINT, when="compiling", argv=ARGV_LONG_COMPILE)
    assert done.returncode == 130, (done.returncode, done.stdout, done.stderr)
    assert "interrupted: checkpoint saved" in done.stdout
    assert "Fatal Python error" not in done.stderr and "Traceback" not in done.stderr
