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
MNIST_FIXTURE = Path(__file__).parent / "fixtures" / "mnist"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py"))


def run_script(name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        capture_output=True,
        check=False,  # the tests read the exit status
        text=True,
        timeout=timeout,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        cwd=BENCHMARKS.parent,
    )


def run_for_rows(tmp_path: Path, name: str, key: str, *options: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """A benchmark script with ``options``, successful: the process and the rows it wrote under ``key``."""
    result = tmp_path / "result.json"
    out = run_script(name, *options, "--out", str(result))
    assert out.returncode == 0, out.stderr
    assert not list(tmp_path.glob("*.tmp"))  # written whole, through a temporary file
    return out, json.loads(result.read_text())[key]


def run_fit(tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    return run_for_rows(tmp_path, "update_speed.py", "fit", "--fit", *options)


def test_there_are_benchmark_scripts():
    assert {"mnist.py", "update_speed.py", "bf16_state.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_prints_usage_and_runs_nothing(name):
    # A benchmark can take an hour: --help must answer at once, not start it.
    out = run_script(name, "--help", timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage:")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shipped"], "use it with --eval-only"),
        (["--eval-only", "--shipped", "--ship"], "drop --ship"),
        (["--eval-only", "--run-dir", "no-such-run"], "no trained run in no-such-run"),
        (["--eval-only", "--shipped", "--run-dir", "runs/x"], "--run-dir does not apply"),
        (["--eval-only", "--meta-steps", "10"], "--meta-steps does not apply"),
        (["--ship", "--test-inits", "4"], "--ship ships the full evaluation"),
    ],
)
def test_mnist_refuses_contradictory_options(args, message):
    out = run_script("mnist.py", *args, timeout=300)
    assert out.returncode == 2
    assert message in out.stderr


def test_fit_mode_trains_a_model_of_the_asked_size(tmp_path):
    _, rows = run_fit(tmp_path, "2e4", "--fit-steps", "3", "--implementations", "fused", "--state-dtypes", "float32")
    assert [(r["implementation"], r["state_dtype"]) for r in rows] == [("adam", None), ("fused", "float32")]
    for row in rows:
        assert abs(row["parameters"] / 2e4 - 1) < 0.15
        assert row["steps"] == 3 and row["seconds_per_step"] > 0 and row["planned_bytes"] > 0
        for loss in (row["first_loss"], row["last_loss"]):
            assert math.isfinite(loss) and 0 < loss < 10
    # Same model, same data, same initialisation: the first loss is the same for both.
    assert rows[0]["first_loss"] == pytest.approx(rows[1]["first_loss"], rel=1e-6)
    # The shipped optimizer's update is scaled down with the width, by default 32 / width.
    assert rows[0]["update_scale"] is None
    assert rows[1]["update_scale"] == pytest.approx(32 / rows[1]["width"])


@pytest.mark.slow  # --fit itself: test_fit_mode_trains_a_model_of_the_asked_size
def test_fit_mode_takes_an_explicit_update_scale(tmp_path):
    _, (_, row) = run_fit(
        tmp_path, "1e3", "--fit-steps", "1", "--implementations", "fused", "--state-dtypes", "bfloat16",
        "--fit-update-scale", "0.5",
    )  # fmt: skip
    assert row["update_scale"] == 0.5 and row["state_dtype"] == "bfloat16"
    assert row["seconds_per_step"] > 0 and row["compile_seconds"] > 0  # compiled before the timed step


def test_fit_mode_refuses_a_model_too_small():
    out = run_script("update_speed.py", "--fit", "10")
    assert out.returncode == 2
    assert "--fit needs at least 100 parameters" in out.stderr


@pytest.mark.slow  # the logic: test_only_out_of_memory_is_turned_into_a_result
def test_a_setting_that_does_not_fit_in_memory_is_recorded_and_the_run_goes_on(tmp_path):
    # 1e13 parameters: the allocation fails at once with XLA's RESOURCE_EXHAUSTED.
    out, rows = run_fit(
        tmp_path, "1e13", "--fit-depth", "100", "--fit-steps", "1", "--implementations", "fused",
        "--state-dtypes", "float32",
    )  # fmt: skip
    assert [r["implementation"] for r in rows] == ["adam", "fused"]
    for row in rows:
        assert row["out_of_memory"].startswith("RESOURCE_EXHAUSTED")
        assert "losses" not in row
    assert out.stdout.count("out of memory") == 2


def test_only_out_of_memory_is_turned_into_a_result(monkeypatch):
    import jax

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from meta_training_speed import measure_unless_out_of_memory

    setting = {"batch_size": 4}
    assert measure_unless_out_of_memory(setting, lambda b: {"b": b}, 3) == {"b": 3}

    def out_of_memory():
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8 bytes.")

    row = measure_unless_out_of_memory(setting, out_of_memory)
    assert row == {
        "batch_size": 4,
        "out_of_memory": "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8 bytes.",
    }

    def other_error():
        raise jax.errors.JaxRuntimeError("INVALID_ARGUMENT: shapes do not match")

    with pytest.raises(jax.errors.JaxRuntimeError, match="INVALID_ARGUMENT"):
        measure_unless_out_of_memory(setting, other_error)


@pytest.mark.slow  # its meta-step: test_gpu_lowering.py lowers it at every implementation
def test_meta_training_throughput_mode_writes_a_row_per_setting(tmp_path):
    _, rows = run_for_rows(
        tmp_path, "meta_training_speed.py", "rows", "--batch-sizes", "1", "--tasks-per-chunk", "all",
        "--implementations", "fused", "--steps", "2", "--data-dir", str(MNIST_FIXTURE),
    )  # fmt: skip
    assert [(r["batch_size"], r["remat"]) for r in rows] == [(1, False), (1, True)]
    for row in rows:
        assert row["meta_loss_finite"] and row["optimizee_steps_per_second"] > 0


def test_mnist_shipped_evaluation_keeps_the_training_times_only_of_the_same_training(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from mnist import CONFIG, FINETUNE, _training_of_shipped

    shipped = {"stage1": CONFIG.to_dict(), "training_config": FINETUNE.to_dict(), "best_step": 300}
    earlier = {
        "config": CONFIG.to_dict(),
        "finetune_config": {k: v for k, v in FINETUNE.to_dict().items() if k != "tasks_per_chunk"},
        "finetune_best_step": 300,
        "meta_training_seconds": 2625.4,
        "stage_seconds": [1779.3, 846.1],
        "meta_training_wall_seconds": None,
        "best_step": 3900,
    }
    previous = tmp_path / "mnist.json"
    previous.write_text(json.dumps(earlier))
    # A config written before a field existed still describes the same training.
    training = _training_of_shipped(shipped, previous)
    assert training["stage_seconds"] == [1779.3, 846.1] and training["best_step"] == 3900
    assert training["finetune_best_step"] == 300

    previous.write_text(json.dumps({**earlier, "finetune_best_step": 275}))
    assert _training_of_shipped(shipped, previous) == {
        "meta_training_seconds": None,
        "stage_seconds": None,
        "meta_training_wall_seconds": None,
        "best_step": None,
        "finetune_best_step": 300,
    }
    assert _training_of_shipped(shipped, tmp_path / "absent.json")["stage_seconds"] is None


@pytest.mark.slow  # the meta-gradients themselves: test_fast_paths.py
def test_meta_gradient_mode_times_the_backward_pass_of_each_implementation(tmp_path):
    # Larger than one CPU block, so that the fused step's blocked backward pass runs.
    _, rows = run_for_rows(
        tmp_path, "update_speed.py", "meta_gradients", "--meta-gradient", "--sizes", "40000",
        "--implementations", "reference", "fused", "--repeats", "1",
    )  # fmt: skip
    assert [(r["parameters"], r["implementation"]) for r in rows] == [(40000, "reference"), (40000, "fused")]
    assert all(r["seconds"] > 0 for r in rows)


# gpu_plan.py compiles for an H100 with JAX's CUDA plugin, which CI does not install:
# here, its parsing and arithmetic, and its message when the plugin is missing.
PTXAS_LOG = """I1123 21:55:36.589130   30272 subprocess_compilation.cc:356] ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'loop_pad_fusion' for 'sm_90a'
ptxas info    : Function properties for loop_pad_fusion
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 10 registers, used 0 barriers
ptxas info    : Compile time = 2.722 ms
ptxas info    : Compiling entry function 'coordinatewise_lstm_step' for 'sm_90a'
ptxas info    : Function properties for coordinatewise_lstm_step
    8 bytes stack frame, 16 bytes spill stores, 24 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 8192 bytes smem
"""


def test_gpu_plan_reads_each_kernels_registers_and_spills_from_xlas_ptxas_log(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from gpu_plan import ptxas_report

    assert ptxas_report(PTXAS_LOG) == {
        "loop_pad_fusion": {"registers": 10, "spill_store_bytes": 0, "spill_load_bytes": 0},
        "coordinatewise_lstm_step": {"registers": 255, "spill_store_bytes": 16, "spill_load_bytes": 24},
    }
    assert ptxas_report("no compiler output") == {}


@pytest.mark.parametrize(
    ("registers", "warps", "programs"),
    [
        (170, 8, 1),  # 170 -> 176 a thread (units of 256 a warp): 2 warps in each partition of 16,384
        (128, 8, 2),
        (137, 8, 1),
        (16, 8, 8),  # registers would allow 16; warps limit it (64 a SM)
        (64, 4, 8),
        (177, 2, 4),  # 2 warps of 5,888 registers in each 16,384-register partition: 8 warps, not 10
        (16, 1, 32),  # the limit of 32 blocks an SM
    ],
)
def test_gpu_plan_counts_the_programs_an_sm_holds_by_registers_and_warps(monkeypatch, registers, warps, programs):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from gpu_plan import programs_per_sm

    assert programs_per_sm(registers, warps) == programs


def test_gpu_plan_without_the_cuda_plugin_says_how_to_install_it(tmp_path):
    import importlib.util

    if importlib.util.find_spec("jax_plugins") and importlib.util.find_spec("jax_plugins.xla_cuda12"):
        pytest.skip("the CUDA plugin is installed here")
    out = run_script("gpu_plan.py", "--sections", "kernel", "--out", str(tmp_path / "plan.json"))
    assert out.returncode != 0
    assert 'pip install -e ".[gpu]"' in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "plan.json").exists()


@pytest.mark.parametrize("tiling", ["20x2", "64x3", "8x4", "64"])
def test_gpu_plan_refuses_a_kernel_tiling_the_kernel_cannot_take(tiling):
    out = run_script("gpu_plan.py", "--kernel-tilings", tiling, timeout=300)
    assert out.returncode == 2
    assert "--kernel-tilings" in out.stderr and "Traceback" not in out.stderr
