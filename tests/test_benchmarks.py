"""The benchmark scripts: they explain themselves, refuse bad options, and their small modes run."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import re
import runpy
import shlex
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import pytest

from l2l_jax import errors, pretrained
from l2l_jax import run_directory as rd
from l2l_jax.evaluation import learned_curves, sample_tasks
from l2l_jax.evaluation.baselines import BASELINES

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
MNIST_FIXTURE = Path(__file__).parent / "fixtures" / "mnist"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "harness.py")


def benchmark(name: str) -> types.ModuleType:
    """The benchmark script ``name`` as a module (``benchmarks/`` on the path while it imports its siblings)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


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


@pytest.fixture
def run_here(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> Callable[..., subprocess.CompletedProcess]:
    """Runs a script as ``python benchmarks/NAME ARGS`` would, but in this process (no JAX start-up).

    For runs that stop while parsing their options: ``--help`` and refused options.
    A script that switches on float64 gets it switched back.
    """

    def run(name: str, *args: str) -> subprocess.CompletedProcess:
        monkeypatch.syspath_prepend(str(BENCHMARKS))
        monkeypatch.chdir(BENCHMARKS.parent)
        monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / name), *args])
        x64 = jax.config.jax_enable_x64
        try:
            runpy.run_path(str(BENCHMARKS / name), run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        finally:
            jax.config.update("jax_enable_x64", x64)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(sys.argv, code, out.out, out.err)

    return run


def run_for_rows(tmp_path: Path, name: str, key: str, *options: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """A benchmark script with ``options``, successful: the process and the rows it wrote under ``key``."""
    result = tmp_path / "result.json"
    out = run_script(name, *options, "--out", str(result))
    assert out.returncode == 0, out.stderr
    assert not list(tmp_path.glob("*.tmp"))  # written whole, through a temporary file
    return out, json.loads(result.read_text())[key]


def run_fit(tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    return run_for_rows(tmp_path, "fit_wide_mlp.py", "fit", *options)


def test_there_are_benchmark_scripts():
    assert {"mnist.py", "update_speed.py", "fit_wide_mlp.py", "bf16_state.py", "gpu_plan.py"} <= set(SCRIPTS)
    assert "harness.py" not in SCRIPTS  # the scripts' shared module, not a script


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_prints_usage_and_runs_nothing(run_here, name):
    # A benchmark can take an hour: --help must answer at once, not start it.
    out = run_here(name, "--help")
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
        (["--ship", "--variants", "ReLU"], "evaluate every variant"),
        (["--eval-only", "--shipped", "--variants", "tanh"], "invalid choice: 'tanh'"),
    ],
)
def test_mnist_refuses_contradictory_options(run_here, args, message):
    out = run_here("mnist.py", *args)
    assert out.returncode == 2
    assert message in out.stderr


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("fit_wide_mlp.py", ["10"], "at least 100 parameters"),
        ("fit_wide_mlp.py", ["1e4", "--steps", "0"], "--steps: must be at least 1, got 0"),
        ("update_speed.py", ["--repeats", "0"], "--repeats: must be at least 1, got 0"),
        ("update_memory.py", ["--sizes", "1e6", "0.5"], "--sizes: must be at least 1, got 0.5"),
        ("meta_training_speed.py", ["--tasks-per-chunk", "0"], "neither 'all' nor a positive number"),
        ("meta_train_runs.py", ["--meta-steps", "4", "--steps-per-call", "4"], "--meta-steps must exceed"),
    ],
)
def test_scripts_refuse_options_that_cannot_run(run_here, tmp_path, name, args, message):
    out = run_here(name, *args, "--out", str(tmp_path / "result.json"))
    assert out.returncode == 2
    assert message in out.stderr
    assert not (tmp_path / "result.json").exists()


@pytest.mark.slow  # the same rows, machine and command: test_update_memory_plans_the_update_without_running_it
def test_update_speed_writes_a_row_per_setting_with_the_machine_and_the_command(tmp_path):
    options = ["--sizes", "1000", "--implementations", "fused", "--state-dtypes", "float32", "bfloat16",
               "--transformer", "", "--repeats", "2"]  # fmt: skip
    out, rows = run_for_rows(tmp_path, "update_speed.py", "updates", *options)
    results = json.loads((tmp_path / "result.json").read_text())
    command = ["python", "benchmarks/update_speed.py", *options, "--out", str(tmp_path / "result.json")]
    assert results["command"] == shlex.join(command)
    assert "CPU cores" in results["machine"] and "jax" in results["machine"]
    assert out.stdout.startswith(results["machine"])
    assert results["train_steps"] == []
    assert [(r["parameters"], r["state_dtype"]) for r in rows] == [(1000, "float32"), (1000, "bfloat16")]
    for row in rows:
        assert row["seconds"] > 0 and row["adam_seconds"] > 0
        assert row["ratio_to_adam"] == pytest.approx(row["seconds"] / row["adam_seconds"])
    # Read gradient and parameters, write parameters, read and write 2 layers x (h, c) x 20 units.
    assert rows[0]["minimal_bytes"] == 1000 * (3 * 4 + 2 * 80 * 4)
    assert rows[1]["minimal_bytes"] == 1000 * (3 * 4 + 2 * 80 * 2)
    # Every shipped optimizer, as loaded, against Adam in the same run.
    shipped = results["shipped_updates"]
    assert [r["optimizer"] for r in shipped] == pretrained.available()
    assert all(
        r["parameters"] == 1000 and r["ratio_to_adam"] == pytest.approx(r["seconds"] / r["adam_seconds"])
        for r in shipped
    )


def test_update_memory_plans_the_update_without_running_it(tmp_path):
    _, rows = run_for_rows(
        tmp_path, "update_memory.py", "memory", "--sizes", "1e5", "--implementations", "fused", "--state-dtypes",
        "float32",
    )  # fmt: skip
    (row,) = rows
    assert (row["parameters"], row["implementation"], row["state_dtype"]) == (100000, "fused", "float32")
    # At least the parameters, the gradient and the 80 state floats a parameter.
    assert row["bytes"] >= 100000 * (2 + 80) * 4 > row["adam_bytes"] >= 100000 * 4 * 4


def test_a_setting_that_runs_out_of_memory_is_a_result_and_the_run_goes_on(tmp_path):
    # 1e12 parameters: allocating their gradient fails at once with XLA's RESOURCE_EXHAUSTED.
    out, rows = run_for_rows(
        tmp_path, "update_meta_gradient.py", "meta_gradients", "--sizes", "1e12", "1000", "--implementations",
        "fused", "--repeats", "1",
    )  # fmt: skip
    too_large, small = rows
    assert too_large["parameters"] == 10**12 and too_large["implementation"] == "fused"
    assert too_large["out_of_memory"].startswith("RESOURCE_EXHAUSTED") and "seconds" not in too_large
    assert small["parameters"] == 1000 and small["seconds"] > 0 and "out_of_memory" not in small
    assert out.stdout.count("out of memory") == 1


def test_fit_trains_a_model_of_the_asked_size(tmp_path):
    _, rows = run_fit(tmp_path, "2e4", "--steps", "3", "--implementations", "fused", "--state-dtypes", "float32")
    assert [(r["implementation"], r["state_dtype"]) for r in rows] == [("adam", None), ("fused", "float32")]
    for row in rows:
        assert abs(row["parameters"] / 2e4 - 1) < 0.15
        assert row["steps"] == 3 and len(row["losses"]) == 3 and row["seconds_per_step"] > 0
        assert row["planned_bytes"] > 0
        assert (row["first_loss"], row["last_loss"]) == (row["losses"][0], row["losses"][-1])
        for loss in row["losses"]:
            assert math.isfinite(loss) and 0 < loss < 10
    # Same model, same data, same initialisation: the first loss is the same for both.
    assert rows[0]["first_loss"] == pytest.approx(rows[1]["first_loss"], rel=1e-6)
    # The shipped optimizer's update is scaled down with the width, by default 32 / width.
    assert rows[0]["update_scale"] is None
    assert rows[1]["update_scale"] == pytest.approx(32 / rows[1]["width"])


@pytest.mark.slow  # the fit itself: test_fit_trains_a_model_of_the_asked_size
def test_fit_takes_an_explicit_update_scale(tmp_path):
    _, (_, row) = run_fit(
        tmp_path, "1e3", "--steps", "1", "--implementations", "fused", "--state-dtypes", "bfloat16",
        "--update-scale", "0.5",
    )  # fmt: skip
    assert row["update_scale"] == 0.5 and row["state_dtype"] == "bfloat16"
    assert row["seconds_per_step"] > 0 and row["compile_seconds"] > 0  # compiled before the timed step


@pytest.mark.slow  # out of memory as a result: test_a_setting_that_runs_out_of_memory_is_a_result_and_the_run_goes_on
def test_a_fit_that_does_not_fit_in_memory_is_recorded_and_the_run_goes_on(tmp_path):
    # 1e13 parameters: the allocation fails at once with XLA's RESOURCE_EXHAUSTED.
    out, rows = run_fit(
        tmp_path, "1e13", "--depth", "100", "--steps", "1", "--implementations", "fused", "--state-dtypes", "float32",
    )  # fmt: skip
    assert [r["implementation"] for r in rows] == ["adam", "fused"]
    for row in rows:
        assert row["out_of_memory"].startswith("RESOURCE_EXHAUSTED")
        assert "losses" not in row
    assert out.stdout.count("out of memory") == 2


@pytest.mark.slow  # its meta-step: test_gpu_lowering.py lowers it at every implementation
def test_meta_training_throughput_writes_a_row_per_setting(tmp_path):
    _, rows = run_for_rows(
        tmp_path, "meta_training_speed.py", "rows", "--batch-sizes", "1", "--tasks-per-chunk", "all",
        "--implementations", "fused", "--steps", "2", "--data-dir", str(MNIST_FIXTURE),
    )  # fmt: skip
    assert [(r["batch_size"], r["remat"]) for r in rows] == [(1, False), (1, True)]
    for row in rows:
        assert row["meta_loss_finite"] and row["optimizee_steps_per_second"] > 0


@pytest.mark.slow  # the meta-gradients themselves: test_fast_paths.py
def test_meta_gradient_times_the_backward_pass_of_each_implementation(tmp_path):
    # Larger than one CPU block, so that the fused step's blocked backward pass runs.
    _, rows = run_for_rows(
        tmp_path, "update_meta_gradient.py", "meta_gradients", "--sizes", "40000",
        "--implementations", "reference", "fused", "--repeats", "1",
    )  # fmt: skip
    assert [(r["parameters"], r["implementation"]) for r in rows] == [(40000, "reference"), (40000, "fused")]
    assert all(r["seconds"] > 0 for r in rows)


def mnist_training_kept(tmp_path: Path, earlier: dict) -> dict:
    """The training figures ``mnist.py --eval-only --shipped`` writes, given an earlier ``mnist.json``."""
    results = tmp_path / "results"
    results.mkdir(parents=True)
    (results / "mnist.json").write_text(json.dumps(earlier))
    out = run_script(
        "mnist.py", "--eval-only", "--shipped", "--tune-inits", "1", "--test-inits", "1", "--variants", "ReLU",
        "--no-progress", "--results-dir", str(results),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "not written into" in out.stdout  # a partial evaluation leaves the package alone
    written = json.loads((results / "mnist.json").read_text())
    assert written["variants"] == ["ReLU"] and {r["variant"] for r in written["rows"]} == {"ReLU"}
    fields = ("meta_training_seconds", "stage_seconds", "meta_training_wall_seconds", "best_step", "finetune_best_step")
    return {k: written[k] for k in fields}


@pytest.mark.slow  # a whole (tiny) evaluation of the shipped optimizer, on one MLP variant
def test_mnist_shipped_evaluation_keeps_the_training_times_only_of_the_same_training(tmp_path):
    from l2l_jax import pretrained

    shipped = pretrained.info("mnist-lstm")
    earlier = {
        "config": shipped["stage1"],
        # A config written before a field existed still describes the same training.
        "finetune_config": {k: v for k, v in shipped["training_config"].items() if k != "tasks_per_chunk"},
        "finetune_best_step": shipped["best_step"],
        "meta_training_seconds": 2625.4,
        "stage_seconds": [1779.3, 846.1],
        "meta_training_wall_seconds": None,
        "best_step": 3900,
    }
    assert mnist_training_kept(tmp_path / "same", earlier) == {
        "meta_training_seconds": 2625.4,
        "stage_seconds": [1779.3, 846.1],
        "meta_training_wall_seconds": None,
        "best_step": 3900,
        "finetune_best_step": shipped["best_step"],
    }
    # Another training (here, another best fine-tuning step): no times. The same function as the
    # script's, called directly, where a second whole evaluation would add minutes and nothing else.
    mnist = benchmark("mnist")
    (tmp_path / "other.json").write_text(json.dumps({**earlier, "finetune_best_step": shipped["best_step"] + 1}))
    assert mnist._training_of_shipped(shipped, tmp_path / "other.json") == {
        "meta_training_seconds": None,
        "stage_seconds": None,
        "meta_training_wall_seconds": None,
        "best_step": None,
        "finetune_best_step": shipped["best_step"],
    }
    (tmp_path / "same.json").write_text(json.dumps(earlier))
    assert mnist._training_of_shipped(shipped, tmp_path / "same.json")["best_step"] == 3900
    assert mnist._training_of_shipped(shipped, tmp_path / "missing.json")["best_step"] is None


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


def ptxas_report(tmp_path: Path, log: str, warps: int) -> dict:
    """``gpu_plan.py --ptxas-log``'s report of ``log`` (no JAX, no CUDA plugin needed)."""
    path = tmp_path / "ptxas.log"
    path.write_text(log)
    out = run_script("gpu_plan.py", "--ptxas-log", str(path), "--warps", str(warps), timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_gpu_plan_reads_each_kernels_registers_and_spills_from_xlas_ptxas_log(tmp_path):
    assert ptxas_report(tmp_path, PTXAS_LOG, warps=8) == {
        "loop_pad_fusion": {"registers": 10, "spill_store_bytes": 0, "spill_load_bytes": 0, "programs_per_sm": 8},
        "coordinatewise_lstm_step": {
            "registers": 255, "spill_store_bytes": 16, "spill_load_bytes": 24, "programs_per_sm": 1,
        },
    }  # fmt: skip
    assert ptxas_report(tmp_path, "no compiler output", warps=8) == {}


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
def test_gpu_plan_counts_the_programs_an_sm_holds_by_registers_and_warps(tmp_path, registers, warps, programs):
    log = PTXAS_LOG.replace("Used 255 registers", f"Used {registers} registers")
    assert ptxas_report(tmp_path, log, warps)["coordinatewise_lstm_step"]["programs_per_sm"] == programs


def test_gpu_plan_reads_a_ptxas_log_only_for_a_number_of_warps(tmp_path):
    out = run_script("gpu_plan.py", "--ptxas-log", str(tmp_path / "ptxas.log"), timeout=300)
    assert out.returncode == 2
    assert "--ptxas-log and --warps go together" in out.stderr


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


def test_gpu_bandwidth_measures_the_copy_and_the_matrix_product(tmp_path):
    out = run_script("gpu_bandwidth.py", "--copy-elements", "1e5", "--matmul-size", "64", "--repeats", "2",
                     "--out", str(tmp_path / "result.json"), timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "result.json").read_text())
    (copy,) = results["copy"]
    (matmul,) = results["matmul"]
    assert copy["copy_GB_per_s"] == pytest.approx(8 * 100000 / copy["seconds"] / 1e9)
    assert matmul["bf16_TFLOP_per_s"] == pytest.approx(2 * 64**3 / matmul["seconds"] / 1e12)


@pytest.mark.slow  # the tiled steps against the reference: tests/test_fast_paths.py's blocks of coordinates
def test_kernel_tiling_times_each_step_and_checks_it_against_the_reference(tmp_path):
    # Off a GPU the Pallas kernel runs in the interpreter.
    _, rows = run_for_rows(tmp_path, "kernel_tiling.py", "rows", "--size", "100", "--tilings", "16x2", "--repeats", "1")
    assert [r["kernel"] for r in rows] == ["xla-fused", "xla-reference", "pallas-16x2"]
    for row in rows:
        # x (2 features), out, h and c of 2 layers x 20 units read and written: 652 bytes a coordinate.
        assert row["minimal_bytes"] == 100 * 652 and row["seconds"] > 0
        assert row["relative_error"] < 1e-5


@pytest.mark.slow  # the estimators' statistics themselves: test_estimators.py
def test_estimator_variance_compares_each_estimate_with_the_exact_and_the_smoothed_full_run_gradient(tmp_path):
    options = ["--horizon", "4", "--truncations", "2", "--pairs", "1", "2", "--samples", "4", "--reference-draws", "3",
               "--tasks", "1", "--estimators", "tbptt-first-order", "pes", "--data-dir", str(MNIST_FIXTURE)]  # fmt: skip
    _, rows = run_for_rows(tmp_path, "estimator_variance.py", "rows", *options)
    data = json.loads((tmp_path / "result.json").read_text())
    assert [(r["reference"], r["truncation"], r["draws"]) for r in data["references"]] == [
        ("exact", None, 1),
        ("smoothed", 2, 3),  # its own draws, for each truncation K
    ]
    exact, smoothed = data["references"]
    assert exact["variance"] == 0 and smoothed["variance"] > 0
    assert [(r["estimator"], r["truncation"], r["pairs"], r["estimates_per_task"]) for r in rows] == [
        ("tbptt-first-order", 2, None, 1),
        ("pes", 2, 1, 4),
        ("pes", 2, 2, 2),  # the means of disjoint pairs of the 4 one-pair draws
    ]
    for row in rows:
        for prefix, reference in (("", exact), ("smoothed_", smoothed)):
            for field in ("bias2", "bias2_se", "noise", "mse", "relative_mse", "cosine", "reference_norm2"):
                assert math.isfinite(row[prefix + field]), (row["estimator"], prefix + field)
            # MSE = mean ‖e − ref‖² − v_ref/M = bias² + v, with bias² = ‖mean − ref‖² − v/n − v_ref/M.
            assert row[prefix + "mse"] == pytest.approx(row[prefix + "bias2"] + row["variance"], rel=1e-9)
            assert row[prefix + "relative_mse"] == pytest.approx(
                row[prefix + "mse"] / row[prefix + "reference_norm2"], rel=1e-9
            )
            n = row["estimates_per_task"]
            assert row[prefix + "noise"] == pytest.approx(
                row["variance"] / n + reference["variance"] / reference["draws"], rel=1e-9
            )
            assert -1 <= row[prefix + "cosine"] <= 1 and row[prefix + "bias2_se"] >= 0
            assert row[prefix + "reference_norm2"] == pytest.approx(reference["norm2"], rel=1e-12)
    tbptt, pes1, pes2 = rows
    assert tbptt["variance"] == 0 and tbptt["bias2_se"] == 0  # deterministic, against a deterministic reference
    assert tbptt["smoothed_bias2_se"] > 0  # the smoothed reference is itself a mean of random draws
    assert pes1["variance"] > 0 and pes2["variance"] > 0
    # The mean of the 2-pair estimates is that of the 4 one-pair draws: the same noise of the mean, the same s.e.
    assert pes2["smoothed_bias2_se"] == pytest.approx(pes1["smoothed_bias2_se"], rel=1e-9)
    text = (tmp_path / "result.md").read_text()
    assert data["command"] in text
    assert text.count("| pes | 2 |") == 4  # a row against each reference
    assert "## Against the exact gradient" in text and "## Against the smoothed gradient" in text


@pytest.mark.slow  # ES's and PES's state does not grow with T: test_estimators.py (the state's shapes)
def test_estimator_memory_of_a_whole_es_or_pes_run_does_not_grow_with_its_length(tmp_path):
    options = ["--families", "quadratic", "--horizons", "20", "80", "--truncation", "10", "--estimators", "es", "pes",
               "--bptt", "bptt"]  # fmt: skip
    _, per_truncation = run_for_rows(tmp_path, "estimator_memory.py", "per_truncation", *options)
    whole = json.loads((tmp_path / "result.json").read_text())["whole_run"]
    expected = [("es", 20), ("es", 80), ("pes", 20), ("pes", 80)]
    assert [(r["estimator"], r["horizon"]) for r in per_truncation] == expected
    assert [(r["method"], r["horizon"]) for r in whole] == [
        ("es", 20), ("pes", 20), ("bptt", 20), ("es", 80), ("pes", 80), ("bptt", 80),
    ]  # fmt: skip
    for row in per_truncation + whole:
        assert row["compiled_memory_bytes"] > 0 and row["temp_bytes"] >= 0 and row["argument_bytes"] > 0
    memory = {(r["method"], r["horizon"]): r["compiled_memory_bytes"] for r in whole}
    for name in ("es", "pes"):
        first, last = (r for r in per_truncation if r["estimator"] == name)
        assert first["program"] == last["program"]  # one estimate is the same program for every T
        # The whole run's program: a loop of 2 or 8 estimates (a single one is no loop, and compiles otherwise).
        assert memory[name, 20] == memory[name, 80]
    assert memory["bptt", 80] > memory["bptt", 20]  # untruncated BPTT keeps every step for its backward pass
    assert "# Compiled memory" in (tmp_path / "result.md").read_text()


@pytest.mark.slow  # PES meta-training and evaluation: tests/test_meta_training_estimators.py, test_mnist_task.py
def test_long_horizon_meta_trains_with_pes_from_the_shipped_optimizer_and_compares_paired(tmp_path):
    options = ["--meta-steps", "2", "--horizon", "4", "--truncation", "2", "--batch-size", "1", "--pairs", "1",
               "--val-tasks", "1", "--steps-per-call", "1", "--tune-inits", "2", "--test-inits", "3",
               "--eval-steps", "2", "4", "--baselines", "adam", "--no-progress", "--tag", "_tiny",
               "--run-dir", str(tmp_path / "run"), "--results-dir", str(tmp_path), "--data-dir", str(MNIST_FIXTURE)]  # fmt: skip
    out = run_script("long_horizon.py", *options, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "long_horizon_tiny.json").read_text())
    assert results["config"]["estimator"] == "pes" and results["init"] == "shipped mnist-lstm"
    assert [(r["steps"], r["optimizer"]) for r in results["rows"]] == [
        (steps, name) for steps in (2, 4) for name in ("PES LSTM", "mnist-lstm", "adam")
    ]
    for row in results["rows"]:
        assert math.isfinite(row["mean_loss"]) and row["stderr"] >= 0
        assert ("reference_minus_this" in row) == (row["optimizer"] != "PES LSTM")
        assert (row["learning_rate"] is None) == (row["optimizer"] != "adam")
    table = (tmp_path / "long_horizon_tiny.md").read_text()
    assert "| 4 | adam |" in table and "PES: σ = 0.01" in table
    assert (tmp_path / "long_horizon_tiny.png").stat().st_size > 1000


@pytest.mark.slow  # its mechanism: test_estimators.py::test_pes_is_unbiased_and_truncated_bptt_and_es_are_not
def test_worked_example_estimators_recover_the_exact_gradient_where_they_are_unbiased(tmp_path):
    out = run_script("worked_example_estimators.py", "--samples", "4000", "--sigmas", "0.01",
                     "--results-dir", str(tmp_path), timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "worked_example_estimators.json").read_text())
    rows = {(r["estimator"], r["truncation"], r["setting"]): r for r in results["meta_losses"]["f(θ2)"]["rows"]}
    # Truncated BPTT over the whole run, second order, is the worked example's exact meta-gradient.
    assert rows[("tbptt", 2, "second order")]["mean"] == pytest.approx([-113.4, -5.4, 11.34], abs=1e-9)
    pes = next(r for (name, k, _), r in rows.items() if name == "pes" and k == 1)
    es = next(r for (name, k, _), r in rows.items() if name == "es" and k == 1)
    # PES over two truncations is unbiased for its target; truncated ES is far from it.
    assert pes["max_deviation_in_standard_errors"] < 5
    assert es["max_deviation_in_standard_errors"] > 20
    assert "| pes | 1 |" in (tmp_path / "worked_example_estimators.md").read_text()


@pytest.mark.slow  # its tuning: test_coarse_to_fine_tuning_finds_the_rate_of_the_full_grid_search
def test_generalisation_tunes_every_baseline_per_task_and_horizon_and_compares_paired(tmp_path):
    # generalist-v2 has no step bound: the bound that never binds, below, is then the only one.
    options = ["--tasks", "base MLP", "logistic regression", "--max-steps", "3", "--tune-inits", "2",
               "--test-inits", "3", "--no-progress", "--generalist", "generalist-v2", "--others", "generalist-v1",
               "mnist-lstm", "--results-dir", str(tmp_path), "--data-dir", str(MNIST_FIXTURE)]  # fmt: skip
    # With a cache: this run fills it, the run at the end reads the same curves back.
    cache = ["--cache-dir", str(tmp_path / "cache")]
    out = run_script("generalisation.py", *options, *cache, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "generalisation.json").read_text())
    optimizers = ["generalist", "generalist-v1", "mnist-lstm", "sgd", "momentum", "nag", "rmsprop", "adam"]
    # Every horizon is capped at 3 steps: one row per optimizer and task.
    assert [(r["task"], r["steps"], r["optimizer"]) for r in results["rows"]] == [
        (task, 3, name) for task in ("base MLP", "logistic regression") for name in optimizers
    ]
    for row in results["rows"]:
        assert math.isfinite(row["mean_loss"]) and row["stderr"] >= 0 and isinstance(row["diverged"], bool)
        assert ("reference_minus_this" in row) == (row["optimizer"] != "generalist")
        assert (row["learning_rate"] is None) == (row["optimizer"] in ("generalist", "generalist-v1", "mnist-lstm"))
        assert row["held_out"] == (row["task"] == "logistic regression")
    table = (tmp_path / "generalisation.md").read_text()
    assert "| logistic regression | 3 | adam |" in table and "- base MLP, 3 steps: beats" in table
    assert (tmp_path / "generalisation_base_mlp.png").stat().st_size > 1000
    # The φ each learned optimizer ran with, by its name in the rows (what shipping checks its rows by).
    v2_phi = pretrained.load_meta_params("generalist-v2")[1]
    assert results["phi_sha256"]["generalist"] == benchmark("generalisation").fingerprint(v2_phi)
    assert results["seed"] == 1

    filled = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.npz")}
    assert len(filled) == 2 * 8
    assert run_script("generalisation.py", *options, *cache, timeout=600).returncode == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.npz")} == filled  # read, not rewritten
    again = json.loads((tmp_path / "generalisation.json").read_text())["rows"]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("task_seconds", "rate_from")} for r in rows]
    assert strip(again) == strip(results["rows"])

    # Rates read from the first run's file instead of searched: the same rates and the same test curves;
    # the generalist with a step bound that never binds gives the same curves too.
    first = tmp_path / "first.json"
    first.write_text(json.dumps(results))
    reuse = ["--tasks", "logistic regression", *options[3:-4], "--results-dir", str(tmp_path / "reuse")]
    reuse += ["--data-dir", str(MNIST_FIXTURE), "--generalist-options", "step_bound=1e6"]
    out = run_script("generalisation.py", *reuse, "--rates-from", str(first), "--others", timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    reused_results = json.loads((tmp_path / "reuse" / "generalisation.json").read_text())
    assert reused_results["generalist_options"] == {"step_bound": 1e6}
    reused = reused_results["rows"]
    assert {r["rate_from"] for r in reused if r["learning_rate"] is not None} == {"recorded"}
    others = ("generalist-v1", "mnist-lstm")
    expected = [
        r for r in strip(results["rows"]) if r["optimizer"] not in others and r["task"] == "logistic regression"
    ]
    assert strip(reused) == expected


def test_recorded_rates_are_reused_when_the_task_was_tuned_the_same_way_up_to_the_grids_last_bits():
    generalisation = benchmark("generalisation")
    task = generalisation.Task("toy", "logistic_regression", {"dim": 3}, (10, 20), 4, True, uses_mnist=False)
    definition = {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(task))).items() if k != "skip"}
    rows = [{"task": "toy", "optimizer": b, "steps": s, "learning_rate": 0.01} for b in BASELINES for s in (10, 20)]
    results = {"tasks": [definition], "tune_inits": 16, "rows": rows}
    expected = {(b, s): 0.01 for b in BASELINES for s in (10, 20)}
    assert generalisation.recorded_rates(results, task, 16, None, (10, 20)) == expected
    # A grid written by another NumPy build differs in its last bits: still the same grid.
    nudged = [float(np.nextafter(x, np.inf)) for x in definition["grid"]]
    assert nudged != definition["grid"]
    same_grid = {**results, "tasks": [{**definition, "grid": nudged}]}
    assert generalisation.recorded_rates(same_grid, task, 16, None, (10, 20)) == expected
    # Anything else that differs means the rates were tuned another way: none are reused.
    other_grid = {**results, "tasks": [{**definition, "grid": [2 * x for x in definition["grid"]]}]}
    other_options = {**results, "tasks": [{**definition, "options": {"dim": 4}}]}
    not_a_flag = {**results, "tasks": [{**definition, "held_out": 1.0}]}  # a number is not True
    for other in (other_grid, other_options, not_a_flag, {**results, "tune_inits": 8}):
        assert generalisation.recorded_rates(other, task, 16, None, (10, 20)) is None
    assert generalisation.recorded_rates(results, task, 16, None, (10, 50)) is None  # no rate at 50 steps


def test_another_seed_draws_other_test_initialisations_and_keeps_the_rates_tuned_with_the_first(tmp_path):
    generalisation, subsets = benchmark("generalisation"), benchmark("battery_subsets")
    task = generalisation.Task("toy", "logistic_regression", {"features": 3}, (2,), 3, True, uses_mnist=False)
    family = generalisation.build_family(task, None)
    recorded = {(b, 2): 0.1 for b in BASELINES}
    run = lambda seed: generalisation.evaluate_task(task, family, {}, (2,), 2, 3, tmp_path, False, recorded, seed=seed)
    first, _ = run(1)
    again, _ = run(1)
    other, _ = run(2)
    assert [r["mean_loss"] for r in again] == [r["mean_loss"] for r in first]
    # The same rates on other initialisations: other losses from the first step on.
    assert [r["learning_rate"] for r in other] == [r["learning_rate"] for r in first]
    assert all(a["initial_loss"] != b["initial_loss"] for a, b in zip(first, other, strict=True))
    # The seed is part of each curve's cache key, so one seed's curves never stand in for another's
    # (the default seed's keys are as they were before seeds could be chosen: earlier caches stay valid).
    assert json.loads((tmp_path / "toy__adam.json").read_text())["seed"] == 2
    key = {"task": {k: v for k, v in dataclasses.asdict(task).items() if k != "skip"}, "test_inits": 3}
    generalisation.cached(tmp_path, "toy__mine", key, lambda: {"curves": np.zeros((3, 3))})
    with pytest.raises(ValueError, match="different tasks or test initialisations"):
        subsets.subset_rows(tmp_path, task, "mine", ["adam"], [(0, 3)])
    assert [r["mean_loss"] for r in run(1)[0]] == [r["mean_loss"] for r in first]
    assert "seed" not in json.loads((tmp_path / "toy__adam.json").read_text())
    assert len(subsets.subset_rows(tmp_path, task, "mine", ["adam"], [(0, 3)])) == 1
    # Each recorded rate keeps the seed of the initialisations it was tuned on (a file without one: the default).
    rows = [{"task": "toy", "optimizer": b, "steps": 2, "learning_rate": 0.1} for b in BASELINES]
    assert set(generalisation.tuning_seeds({"rows": rows}, task).values()) == {generalisation.SEED}
    assert set(generalisation.tuning_seeds({"rows": rows, "seed": 2}, task).values()) == {2}
    rows[0]["rate_tuned_with_seed"] = 1
    assert generalisation.tuning_seeds({"rows": rows, "seed": 2}, task)[(rows[0]["optimizer"], 2)] == 1


def test_battery_subsets_pairs_the_cached_curves_on_each_range_of_test_initialisations(tmp_path):
    subsets, generalisation = benchmark("battery_subsets"), benchmark("generalisation")
    task = generalisation.Task("toy", "logistic_regression", {"dim": 3}, (2, 4), 6, True, uses_mnist=False)
    key = {"task": dataclasses.asdict(task), "test_inits": 6}
    rng = np.random.default_rng(0)
    mine, adam_2, adam_4 = (rng.normal(size=(6, 5)) for _ in range(3))
    generalisation.cached(tmp_path, "toy__generalist + prior", {**key, "optimizer": "a"}, lambda: {"curves": mine})
    arrays = {"rates": np.array([0.1, 0.01]), "curves_2": adam_2, "curves_4": adam_4}
    generalisation.cached(tmp_path, "toy__adam", {**key, "baseline": "adam"}, lambda: arrays)
    rows = subsets.subset_rows(tmp_path, task, "generalist + prior", ["adam"], [(0, 2), (2, 6)])
    assert [(r["steps"], r["inits"]) for r in rows] == [(2, "0:2"), (2, "2:6"), (4, "0:2"), (4, "2:6")]
    for r in rows:  # Each horizon against the baseline's curves tuned for it, on the range's runs only.
        start, stop = map(int, r["inits"].split(":"))
        other = {2: adam_2, 4: adam_4}[r["steps"]]
        d = mine[start:stop, r["steps"]] - other[start:stop, r["steps"]]
        assert r["reference_minus_this"] == pytest.approx(d.mean())
        assert r["reference_minus_this_stderr"] == pytest.approx(d.std() / np.sqrt(len(d)))
        assert r["verdict"] == generalisation.verdict(r)
    with pytest.raises(ValueError, match="'toy' has 6 test initialisations"):
        subsets.subset_rows(tmp_path, task, "generalist + prior", ["adam"], [(0, 7)])
    with pytest.raises(FileNotFoundError, match="no cached curves of 'nag' on 'toy'"):
        subsets.subset_rows(tmp_path, task, "generalist + prior", ["nag"], [(0, 2)])
    generalisation.cached(tmp_path, "toy__sgd", {**key, "test_inits": 5}, lambda: arrays)
    with pytest.raises(ValueError, match="different tasks or test initialisations"):
        subsets.subset_rows(tmp_path, task, "generalist + prior", ["sgd"], [(0, 2)])
    for bad in ("3:3", "4:2", "2", "a:b"):
        with pytest.raises(subsets.argparse.ArgumentTypeError, match="START:STOP"):
            subsets.init_range(bad)
    # From the command line, a task the cache does not hold is a clear error, not a traceback.
    out = run_script("battery_subsets.py", "--cache-dir", str(tmp_path), "--task", "CNN", "--against", "adam",
                     "--inits", "0:4", timeout=120)  # fmt: skip
    assert out.returncode == 2 and "no cached curves of 'generalist' on 'CNN'" in out.stderr


def test_learned_rate_scales_only_eta_and_weights_the_members_as_the_mixture_samples_them(
    tmp_path, monkeypatch, capsys
):
    learned_rate, generalist = benchmark("learned_rate"), benchmark("generalist")
    _, phi = pretrained.load_meta_params("generalist")
    doubled = learned_rate.scaled(phi, 2.0)
    assert float(np.exp(doubled["log_lr"])) == pytest.approx(2 * float(np.exp(phi["log_lr"])), rel=1e-6)
    assert all(doubled[k] is phi[k] for k in phi if k != "log_lr")
    # The paper's MLP is sampled twice as often as any other member of the mixture, so it counts twice.
    members = generalist.V11_CONFIG.task_options["members"]
    weights = [m.get("weight", 1.0) for m in members]
    scores = [1.0] + [0.0] * (len(members) - 1)
    assert learned_rate.weighted_score(scores, weights) == pytest.approx(2 / (len(members) + 1))
    labels = [learned_rate.member_label(m) for m in members]
    assert labels[0] == "mnist 20x1 sigmoid 28px" and len(set(labels)) == len(labels)
    assert "mnist 128x1 relu 8px (scaled)" in labels and labels[-1] == "quadratic"
    rows = [{"task": "t", "steps": 100, "optimizer": o, "learning_rate": r} for o, r in (("nag", 0.5), ("adam", 0.1))]
    assert learned_rate.nag_rates({"rows": rows}) == {("t", 100): 0.5}
    # Bad input from the command line: a clear message and exit 2, nothing run.
    for argv, message in (
        (["--tasks", "MLP"], "unknown task(s) 'MLP'"),
        (["--rates-from", str(tmp_path / "none.json")], "none.json: no such file"),
        (["--optimizer", "mnist-lstm"], "a 'lstm' optimizer has no learned rate"),
        (["--optimizer-options", "warmup_steps"], "'warmup_steps' is not KEY=VALUE"),
        (["--optimizer-options", "warmup_steps=0"], "warmup_steps must be a positive integer"),
        (["--optimizer-options", "hidden_sizes=[8]"], "change the shape of φ"),
    ):
        monkeypatch.setattr(sys, "argv", ["learned_rate.py", *argv, "--results-dir", str(tmp_path)])
        with pytest.raises(SystemExit) as exit_:
            learned_rate.main()
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_learned_rate_reports_each_factors_first_step_from_the_same_runs(tmp_path):
    learned_rate, generalisation = benchmark("learned_rate"), benchmark("generalisation")
    optimizer, phi = pretrained.load_meta_params("generalist")
    label = "regression network"
    rows = [{"task": label, "steps": n, "optimizer": "nag", "learning_rate": 0.1} for n in (100, 200)]
    (tmp_path / "rates.json").write_text(json.dumps({"rows": rows}))
    args = types.SimpleNamespace(tasks=[label], data_dir=None, inits=3, max_steps=2, rates_from=tmp_path / "rates.json")
    got = learned_rate.task_rows(optimizer, phi, (1.0, 2.0), args)
    family = generalisation.build_family({t.label: t for t in generalisation.TASKS}[label], None)
    runs = sample_tasks(family, learned_rate.step_bound.TUNE_SEED, 3, "tune")
    for factor in (1.0, 2.0):
        curves = learned_curves(optimizer, learned_rate.scaled(phi, factor), family, runs, 2)
        change = curves[:, 1] - curves[:, 0]
        mine = [r for r in got if r["factor"] == factor]
        assert len(mine) == 2  # one row a nominal step, both cut to step 2, the same first step
        for r in mine:
            assert r["first_step"] == pytest.approx(float(np.mean(change)), abs=1e-6)
            assert r["first_step_stderr"] == pytest.approx(float(np.std(change) / np.sqrt(3)), abs=1e-6)
    assert got[0]["first_step"] != got[1]["first_step"]  # factors 1 and 2 take different first steps


def test_generalisation_adds_options_to_the_generalist_only_where_its_phi_still_fits():
    generalisation = benchmark("generalisation")
    assert generalisation.option("step_bound=3") == ("step_bound", 3)
    assert generalisation.option('output="bounded"') == ("output", "bounded")
    for bad in ("step_bound", "=3", "step_bound=three"):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            generalisation.option(bad)
    optimizer, phi = pretrained.load_meta_params("generalist")
    bounded, same = generalisation.with_options(optimizer, phi, {"step_bound": 3.0})
    assert bounded.config() == {**optimizer.config(), "step_bound": 3.0} and same is phi
    with pytest.raises(errors.ConfigError, match="change the shape of φ"):
        generalisation.with_options(optimizer, phi, {"hidden_sizes": [8]})


def test_generalisation_names_the_optimizer_under_test_by_its_label(tmp_path):
    out = run_script("generalisation.py", "--label", "mnist-lstm", "--results-dir", str(tmp_path), timeout=300)
    assert out.returncode == 2 and "--label 'mnist-lstm' is also among --others" in out.stderr
    assert not list(tmp_path.iterdir())
    generalisation = benchmark("generalisation")
    row = {"task": "base MLP", "held_out": False, "steps": 100, "learning_rate": None, "lr_at_grid_edge": False,
           "stderr": 0.01, "diverged": False}  # fmt: skip
    rows = [
        {**row, "optimizer": "mine", "mean_loss": 0.2},
        {**row, "optimizer": "adam", "learning_rate": 0.01, "mean_loss": 0.3, "reference_minus_this": -0.1,
         "reference_minus_this_stderr": 0.01},
    ]  # fmt: skip
    compact = generalisation.compact_table(rows, "mine")
    assert "| mine vs Adam |" in compact
    assert "| base MLP | 100 | 0.2000 | 0.3000 | wins | adam (0.3000) | wins | no |" in compact
    assert "| mine − this, paired (± s.e.) | mine |" in generalisation.table(rows, "mine")


def test_the_battery_runs_the_character_level_lm_past_step_100_with_its_own_tuned_baselines():
    generalisation = benchmark("generalisation")
    lm = [t for t in generalisation.TASKS if t.task == "char_lm"]
    assert all(t.held_out and t.grid == generalisation.WIDE_GRID and t.test_inits >= 16 for t in lm)
    assert {100, 200, 500} <= {h for t in lm for h in t.horizons}
    assert len({t.label for t in lm}) == len(lm)  # Each its own rows, tuned per horizon.


def test_the_v4_recipe_adds_no_held_out_family_to_the_mixture_and_is_not_shipped(tmp_path):
    generalisation = benchmark("generalisation")
    generalist = benchmark("generalist")

    members = [generalist.base_member(m) for m in generalist.V4_MEMBERS]
    held_out = {t.task for t in generalisation.TASKS if t.held_out} - {"mnist"}  # the wide MLPs are "mnist" tasks
    wide = min(t.options["hidden_units"] for t in generalisation.TASKS if t.held_out and t.task == "mnist")
    assert held_out and not {m["task"] for m in members} & held_out
    assert all(m["options"]["hidden_units"] < wide for m in members if m["task"] == "mnist")
    assert {m["options"].get("objective", "classify") for m in members if m["task"] == "mnist"} == {
        "classify",
        "autoencode",
    }
    assert generalist.V4_CONFIG.batch_size >= len(members) and generalist.V4_MEMBERS[:7] == generalist.V2_MEMBERS
    # v6 is v4 with the step bound, nothing else.
    v4, v6 = generalist.V4_CONFIG.to_dict(), generalist.V6_CONFIG.to_dict()
    assert v6["optimizer_options"] == {**v4["optimizer_options"], "step_bound": generalist.STEP_BOUND}
    assert {k: x for k, x in v6.items() if k != "optimizer_options"} == {
        k: x for k, x in v4.items() if k != "optimizer_options"
    }
    out = run_script("generalist.py", "--recipe", "v4", "--ship", "--run-dir", str(tmp_path / "run"), timeout=300)
    assert out.returncode == 2 and "--ship: recipe v4 is not shipped" in out.stderr
    out = run_script("generalist.py", "--recipe", "v4", "--val-tasks", "9", "--run-dir", str(tmp_path / "run"))
    assert out.returncode == 2 and "--val-tasks 9: validation takes at least one task of each of 10" in out.stderr
    assert not (tmp_path / "run").exists()


def test_the_battery_cache_keeps_an_optimizer_given_as_a_run_directory_in_one_file(tmp_path):
    generalisation = benchmark("generalisation")
    calls = []

    def compute():
        calls.append(1)
        return {"curves": np.arange(3.0)}

    for _ in range(2):
        out = generalisation.cached(tmp_path, "cnn__runs/generalist-v5", {"phi": "abc"}, compute)
        np.testing.assert_array_equal(out["curves"], np.arange(3.0))
    assert len(calls) == 1 and sorted(p.name for p in tmp_path.iterdir()) == [
        "cnn__runs_generalist-v5.json",
        "cnn__runs_generalist-v5.npz",
    ]
    generalisation.cached(tmp_path, "cnn__runs/generalist-v5", {"phi": "other"}, compute)
    assert len(calls) == 2  # another key: computed again


def test_the_v9_recipe_is_v5_with_one_recurrent_member_that_no_battery_task_is():
    generalisation = benchmark("generalisation")
    generalist = benchmark("generalist")
    v5, v9 = generalist.V5_CONFIG.to_dict(), generalist.V9_CONFIG.to_dict()
    assert generalist.V9_MEMBERS[:-1] == v5["task_options"]["members"] == generalist.V4_MEMBERS
    (added,) = generalist.V9_MEMBERS[-1:]
    assert added["task"] == "mnist_rnn" and added["task"] not in {t.task for t in generalisation.TASKS}
    unchanged = ("task_options", "batch_size")
    assert {k: x for k, x in v9.items() if k not in unchanged} == {k: x for k, x in v5.items() if k not in unchanged}
    # v5's members keep their tasks per meta-step; the GRU gets one more.
    mixture = generalist.with_data_dir(generalist.V9_CONFIG, str(MNIST_FIXTURE)).build_task()
    v5_mixture = generalist.with_data_dir(generalist.V5_CONFIG, str(MNIST_FIXTURE)).build_task()
    assert mixture.split_batch(v9["batch_size"]) == (*v5_mixture.split_batch(v5["batch_size"]), 1)
    assert mixture.families[-1].config()["data_dir"] == str(MNIST_FIXTURE)
    assert generalist.INTERPOLATIONS["v10"][:3] == ("v9", 0.5, {"step_bound": generalist.STEP_BOUND})


def test_the_v11_recipe_is_v5_run_longer_and_the_shipped_v12_is_v7s_construction_on_it():
    generalist = benchmark("generalist")
    v5, v11 = generalist.V5_CONFIG.to_dict(), generalist.V11_CONFIG.to_dict()
    assert v11["num_meta_steps"] == 5000 > v5["num_meta_steps"]
    assert {k: x for k, x in v11.items() if k != "num_meta_steps"} == {
        k: x for k, x in v5.items() if k != "num_meta_steps"
    }
    # A constant meta-learning rate after the warm-up: v11's first meta-steps are v5's, so a v5 run can be resumed into it.
    assert v11["meta_lr_schedule"] == "constant"
    assert generalist.INTERPOLATIONS["v12"][:3] == ("v11", 0.5, {"step_bound": generalist.STEP_BOUND})
    # v12 ships as the generalist; v7, the generalist before it, keeps its own name; v11 alone does not ship.
    assert generalist.SHIPPED_NAMES["v12"] == "generalist" and generalist.SHIPPED_NAMES["v7"] == "generalist-v7"
    assert "v11" not in generalist.SHIPPED_NAMES
    assert len(set(generalist.SHIPPED_NAMES.values())) == len(generalist.SHIPPED_NAMES)


def test_shipping_records_a_batterys_rows_only_if_they_are_of_the_phi_it_ships(tmp_path):
    generalist, generalisation = benchmark("generalist"), benchmark("generalisation")
    shipped, other = {"w": np.ones(3, np.float32)}, {"w": np.zeros(3, np.float32)}
    rows = [{"optimizer": "generalist", "mean_loss": 0.1}, {"optimizer": "adam", "mean_loss": 0.2}]
    results = tmp_path / "generalisation.json"
    results.write_text(json.dumps({"rows": rows, "phi_sha256": {"generalist": generalisation.fingerprint(shipped)}}))
    assert generalist.battery_rows(results, "generalist", shipped) == rows[:1]
    # Rows run under the shipped name with another optimizer's φ are refused, not recorded as this one's.
    with pytest.raises(errors.ConfigError, match="rows named 'generalist' are of another φ"):
        generalist.battery_rows(results, "generalist", other)
    # A file written before batteries recorded their φ is taken as it is; no file, no rows.
    results.write_text(json.dumps({"rows": rows}))
    assert generalist.battery_rows(results, "generalist", other) == rows[:1]
    assert generalist.battery_rows(tmp_path / "none.json", "generalist", shipped) is None


def test_v7_lies_halfway_in_phi_from_v2_to_its_fine_tune_with_the_step_bound_added(tmp_path):
    generalist = benchmark("generalist")
    tuned_dir = pretrained.locate("mnist-feature-mlp")  # a fine-tune of v2, as v5 is
    optimizer = generalist.interpolate("v7", tuned_dir, tmp_path / "v7")
    (_, start), (_, tuned) = (pretrained.load_meta_params(n) for n in (generalist.V3_INIT, tuned_dir))
    loaded, halfway = pretrained.load_meta_params(tmp_path / "v7")
    for a, b, c in zip(jax.tree.leaves(start), jax.tree.leaves(tuned), jax.tree.leaves(halfway)):
        np.testing.assert_allclose(c, (np.asarray(a) + np.asarray(b)) / 2, rtol=1e-6, atol=1e-7)
    assert loaded.config() == optimizer.config() and optimizer.config()["step_bound"] == generalist.STEP_BOUND
    info = pretrained.info(tmp_path / "v7")
    assert info["added_after_training"] == {"step_bound": generalist.STEP_BOUND}
    assert info["interpolation"]["alpha"] == 0.5 and info["interpolation"]["start"] == generalist.V3_INIT
    with pytest.raises(errors.ConfigError, match="not a fine-tune of"):
        generalist.interpolate("v7", pretrained.locate("generalist-v1"), tmp_path / "not")


def test_the_v13_recipe_fine_tunes_the_shipped_generalist_with_the_papers_mlp_weighted_more():
    generalist = benchmark("generalist")
    v11, v13 = generalist.V11_CONFIG.to_dict(), generalist.V13_CONFIG.to_dict()
    (paper, *rest), (paper13, *rest13) = (c["task_options"]["members"] for c in (v11, v13))
    assert rest13 == rest and paper13 == {**paper, "weight": generalist.PAPER_WEIGHT} and paper["weight"] == 2.0
    assert paper["options"] == {t.label: t for t in benchmark("generalisation").TASKS}["base MLP"].options
    # It starts from the shipped generalist (v12), pinned by checksum, and keeps v12's step bound in meta-training.
    assert v13["init"] == "generalist" == generalist.SHIPPED_NAMES["v12"] == generalist.start_of("v13")
    assert v13["init_sha256"] == rd.optimizer_params_sha256(pretrained.locate("generalist"))
    assert pretrained.load_meta_params("generalist")[0].config()["step_bound"] == generalist.STEP_BOUND
    assert v13["optimizer_options"] == {**v11["optimizer_options"], "step_bound": generalist.STEP_BOUND}
    changed = ("task_options", "optimizer_options", "init", "init_sha256", "meta_lr", "num_meta_steps", "seed")
    assert {k: x for k, x in v13.items() if k not in changed} == {k: x for k, x in v11.items() if k not in changed}
    assert v13["meta_lr"] < v11["meta_lr"] and v13["num_meta_steps"] < v11["num_meta_steps"]
    assert generalist.INTERPOLATIONS["v14"][:3] == ("v13", 0.5, {}) and generalist.start_of("v14") == "generalist"
    assert not {"v13", "v14"} & set(generalist.SHIPPED_NAMES)


def test_the_v15_recipe_is_v13_with_tensor_features_switched_on_over_the_shipped_generalist():
    generalist = benchmark("generalist")
    v13, v15 = generalist.V13_CONFIG.to_dict(), generalist.V15_CONFIG.to_dict()
    assert v15["optimizer_options"] == {**v13["optimizer_options"], "tensor_features": True}
    assert {k: x for k, x in v15.items() if k != "optimizer_options"} == {
        k: x for k, x in v13.items() if k != "optimizer_options"
    }
    assert generalist.start_of("v15") == "generalist" and not {"v15", "v16"} & set(generalist.SHIPPED_NAMES)
    assert generalist.INTERPOLATIONS["v16"][:3] == ("v15", 0.5, {}) and generalist.start_of("v16") == "generalist"
    _, start = generalist.V15_CONFIG.resolve_init()
    assert start.optimizer.tensor_features and not np.any(np.asarray(start.meta_params["tensor_w"]))


def test_the_v17_recipe_meta_trains_v15_first_then_continues_its_run_on_v11s_mixture(tmp_path):
    generalist = benchmark("generalist")
    v15, v17 = generalist.V15_CONFIG.to_dict(), generalist.V17_CONFIG.to_dict()
    assert v17["task_options"] == generalist.V11_CONFIG.task_options != v15["task_options"]
    assert v17["seed"] != v15["seed"] and v17["init"] is None and v17["init_sha256"] is None
    changed = ("task_options", "seed", "init", "init_sha256")
    assert {k: x for k, x in v17.items() if k not in changed} == {k: x for k, x in v15.items() if k not in changed}
    args = types.SimpleNamespace(recipe="v17", run_dir=tmp_path / "generalist-v17", meta_steps=3, finetune_steps=2)
    (first, first_steps, first_dir), (second, second_steps, second_dir) = generalist.stages_for(args)
    assert (first, first_steps, first_dir) == (generalist.V15_CONFIG, 3, tmp_path / "generalist-v15")
    assert second == dataclasses.replace(generalist.V17_CONFIG, init=str(tmp_path / "generalist-v15"))
    assert (second_steps, second_dir) == (2, tmp_path / "generalist-v17")
    assert generalist.start_of("v17") == "generalist" and "v17" not in generalist.SHIPPED_NAMES
    # Its metadata: the mixture it was meta-trained on last (v11's, not v15's), and v15's run as its start.
    assert generalist.trained_config("v17", [first, second]) is second
    assert generalist.trained_config("v1", [first, second]) is first
    optimizer, phi = pretrained.load_meta_params("generalist")
    rd.save_optimizer(first_dir, {"optimizer": optimizer.name, "optimizer_config": optimizer.config()}, phi)
    assert generalist.continuation_start("v17", first_dir) == {
        "source": str(first_dir),
        "recipe": "v15",
        "phi_sha256": rd.optimizer_params_sha256(first_dir),
        "source_start": "generalist",
    }


def test_v14_lies_halfway_in_phi_from_the_shipped_generalist_to_its_fine_tune(tmp_path, monkeypatch):
    generalist = benchmark("generalist")
    optimizer, start = pretrained.load_meta_params("generalist")
    tuned = jax.tree.map(lambda x: x + 0.25, start)
    rd.save_optimizer(tmp_path / "v13", {"optimizer": optimizer.name, "optimizer_config": optimizer.config()}, tuned)
    built = generalist.interpolate("v14", tmp_path / "v13", tmp_path / "v14")
    loaded, halfway = pretrained.load_meta_params(tmp_path / "v14")
    for a, c in zip(jax.tree.leaves(start), jax.tree.leaves(halfway)):
        np.testing.assert_allclose(c, np.asarray(a) + 0.125, rtol=1e-6, atol=1e-6)
    assert loaded.config() == built.config() == optimizer.config()
    record = pretrained.info(tmp_path / "v14")["interpolation"]
    assert record["start"] == "generalist" and record["alpha"] == 0.5
    assert record["start_phi_sha256"] == generalist.V12_PHI_SHA256
    # v7's fine-tunes start from v2, v14's from the generalist: a fine-tune of the other is refused.
    with pytest.raises(errors.ConfigError, match="not a fine-tune of generalist"):
        generalist.interpolate("v14", pretrained.locate("generalist-v2"), tmp_path / "not")
    # A generalist other than the one v13 started from (a later release) is refused, not interpolated from.
    other = dataclasses.replace(generalist.V13_CONFIG, init_sha256="0" * 64)
    monkeypatch.setitem(generalist.FINETUNES, "v13", (other, "v13 from another generalist"))
    with pytest.raises(errors.ConfigError, match="starts from the generalist whose φ has sha256 0000"):
        generalist.interpolate("v14", tmp_path / "v13", tmp_path / "not")
    assert not (tmp_path / "not").exists()


def test_v16_lies_halfway_from_the_shipped_generalist_with_zero_tensor_weights_to_its_fine_tune(tmp_path):
    generalist = benchmark("generalist")
    _, start = pretrained.load_meta_params("generalist")
    _, extended = generalist.V15_CONFIG.resolve_init()
    tuned = jax.tree.map(lambda x: x + 0.25, extended.meta_params)
    optimizer = extended.optimizer
    rd.save_optimizer(tmp_path / "v15", {"optimizer": optimizer.name, "optimizer_config": optimizer.config()}, tuned)
    built = generalist.interpolate("v16", tmp_path / "v15", tmp_path / "v16")
    loaded, halfway = pretrained.load_meta_params(tmp_path / "v16")
    assert loaded.config() == built.config() == optimizer.config() and loaded.tensor_features
    np.testing.assert_allclose(halfway["tensor_w"], 0.125, rtol=1e-6)  # From zero to 0.25.
    rest = {k: v for k, v in halfway.items() if k != "tensor_w"}
    for a, c in zip(jax.tree.leaves(start), jax.tree.leaves(rest)):
        np.testing.assert_allclose(c, np.asarray(a) + 0.125, rtol=1e-6, atol=1e-6)
    assert pretrained.info(tmp_path / "v16")["interpolation"]["start_phi_sha256"] == generalist.V12_PHI_SHA256


def test_the_v18_recipe_is_v15_with_the_warm_up_and_v19_lies_halfway_from_the_shipped_generalist_to_it(tmp_path):
    generalist = benchmark("generalist")
    v15, v18 = generalist.V15_CONFIG.to_dict(), generalist.V18_CONFIG.to_dict()
    assert v18["optimizer_options"] == {**v15["optimizer_options"], "warmup_steps": generalist.WARMUP_STEPS}
    assert {k: x for k, x in v18.items() if k != "optimizer_options"} == {
        k: x for k, x in v15.items() if k != "optimizer_options"
    }
    assert generalist.start_of("v19") == "generalist" and not {"v18", "v19"} & set(generalist.SHIPPED_NAMES)
    resolved, start = generalist.V18_CONFIG.resolve_init()  # The warm-up is a free option over v12: no weights.
    assert start.optimizer.warmup_steps == 2 and not np.any(np.asarray(start.meta_params["tensor_w"]))
    optimizer = resolved.build_optimizer()
    tuned = jax.tree.map(lambda x: x + 0.25, start.meta_params)
    rd.save_optimizer(tmp_path / "v18", {"optimizer": optimizer.name, "optimizer_config": optimizer.config()}, tuned)
    built = generalist.interpolate("v19", tmp_path / "v18", tmp_path / "v19")
    loaded, halfway = pretrained.load_meta_params(tmp_path / "v19")
    assert loaded.config() == built.config() == optimizer.config()
    _, shipped = pretrained.load_meta_params("generalist")
    np.testing.assert_allclose(halfway["log_lr"], np.asarray(shipped["log_lr"]) + 0.125, rtol=1e-6)


def test_the_recipes_data_directory_reaches_every_member_that_reads_mnist():
    generalist = benchmark("generalist")
    members = [
        {"task": "mnist_cnn", "options": {}},
        {"task": "scale_augmented", "options": {"task": "mnist", "options": {}, "min_scale": 0.5, "max_scale": 2.0}},
        {"task": "quadratic", "options": {"dim": 3}},
    ]
    config = generalist.MetaTrainConfig.from_dict(
        {**generalist.V4_CONFIG.to_dict(), "task_options": {"members": members}}
    )
    given = generalist.with_data_dir(config, "DIR").task_options["members"]
    assert [generalist.base_member(m)["options"].get("data_dir") for m in given] == ["DIR", "DIR", None]
    assert generalist.with_data_dir(config, None).task_options["members"][0]["options"] == {"data_dir": None}


def test_lm_stall_variants_change_only_the_rate_or_the_correction_term():
    import jax.numpy as jnp

    lm_stall = benchmark("lm_stall")
    optimizer, phi = pretrained.load_meta_params("generalist")
    rated = lm_stall.variant(phi, 0.01, False)
    assert float(jnp.exp(rated["log_lr"])) == pytest.approx(0.01)
    assert jax.tree.leaves(rated["layers"]) == jax.tree.leaves(phi["layers"])
    plain = lm_stall.variant(phi, None, True)
    assert plain["log_lr"] is phi["log_lr"] and all(a is b for a, b in zip(plain["layers"][:-1], phi["layers"][:-1]))
    np.testing.assert_array_equal(plain["layers"][-1]["w"][:, 1], phi["layers"][-1]["w"][:, 1])
    # Without d the first update is −exp(m) · η · n, and n is the gradient's sign then: every coordinate moves against it.
    grads = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4) + 0.05, "b": jnp.array([0.3, -2.0, 1e-3, 4.0])}
    params = jax.tree.map(jnp.ones_like, grads)
    tx = optimizer.as_optax(plain)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert all(bool(jnp.all(updates[k] * jnp.sign(grads[k]) < 0)) for k in grads)


@pytest.mark.slow  # the same scaling of a part of the LM: test_recurrence_prior_scales_exactly_the_updates_of_the_tensors_feeding_the_lms_recurrence
def test_lm_stall_scales_the_update_of_the_named_part_of_the_lm_and_nothing_else():
    lm_stall, generalisation = benchmark("lm_stall"), benchmark("generalisation")
    family = generalisation.build_family({t.label: t for t in generalisation.TASKS}[lm_stall.PART_TASK], None)
    task = family.sample(jax.random.PRNGKey(0))
    params = family.init(task, jax.random.PRNGKey(1))
    names = [
        jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in jax.tree_util.tree_leaves_with_path(params)
    ]

    def selected(part: str) -> set[str]:
        return {n for n, m in zip(names, jax.tree.leaves(lm_stall.part_mask(params, lm_stall.PARTS[part]))) if m}

    hidden = {f"GRUCell_0/{g}/kernel" for g in ("hn", "hr", "hz")}
    assert selected("GRU hidden-to-hidden kernels") == hidden
    assert (
        selected("GRU cell")
        == selected("GRU input kernels and biases") | hidden
        == {n for n in names if n.startswith("GRUCell_0/")}
    )
    assert selected("embedding") == {"Embed_0/embedding"}
    assert selected("read-out") == {"Dense_0/kernel", "Dense_0/bias"}
    assert selected("everything") == set(names)
    optimizer, phi = pretrained.load_meta_params("generalist")
    grads = jax.grad(family.loss, argnums=1)(task, params, jax.random.PRNGKey(2))
    shipped = optimizer.as_optax(phi)
    full, _ = shipped.update(grads, shipped.init(params), params)
    scaled_tx = lm_stall.scaled_part(optimizer, lm_stall.PARTS["embedding"], 0.25)(phi)
    scaled, _ = scaled_tx.update(grads, scaled_tx.init(params), params)
    for name, a, b in zip(names, jax.tree.leaves(full), jax.tree.leaves(scaled)):
        np.testing.assert_allclose(b, a * (0.25 if name == "Embed_0/embedding" else 1.0), rtol=1e-6, err_msg=name)


def test_lm_stall_streams_are_the_step_bound_tuning_runs_and_the_battery_test_runs():
    lm_stall, generalisation, step_bound = benchmark("lm_stall"), benchmark("generalisation"), benchmark("step_bound")
    family = generalisation.build_family({t.label: t for t in generalisation.TASKS}["char LM"], None)
    leaves = lambda runs: [np.asarray(x) for x in jax.tree.leaves((runs.task_params, runs.keys))]
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))
    tune, test = lm_stall.stream_runs(family, "tune", 2), lm_stall.stream_runs(family, "test", 2)
    assert same(tune, sample_tasks(family, step_bound.TUNE_SEED, 2, "tune"))
    assert same(test, sample_tasks(family, generalisation.SEED, 2, "test")) and not same(tune, test)
    assert set(lm_stall.STREAMS) == set(lm_stall.STREAM_SEEDS) == {"tune", "test"}


@pytest.mark.slow  # its parts: the two tests above; the other stream: the test above
def test_lm_stall_runs_the_four_variants_paired_with_the_optimizer_as_shipped(tmp_path):
    options = ["--max-steps", "3", "--inits", "2", "--results-dir", str(tmp_path), "--data-dir", str(MNIST_FIXTURE)]
    out = run_script("lm_stall.py", *options, "--stream", "test", timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm_stall_test.json", "lm_stall_test.md"]
    results = json.loads((tmp_path / "lm_stall_test.json").read_text())
    assert results["stream"] == "test"
    # The battery's own test runs: the LM's first two, as generalisation.py samples them.
    generalisation = benchmark("generalisation")
    family = generalisation.build_family({t.label: t for t in generalisation.TASKS}["char LM"], None)
    optimizer, phi = pretrained.load_meta_params("generalist")
    runs = sample_tasks(family, generalisation.SEED, 2, "test")
    shipped = results["rows"][0]
    assert shipped["variant"] == "as shipped" and shipped["task"] == "char LM"
    expected = np.mean(learned_curves(optimizer, phi, family, runs, 3)[:, 3])
    assert shipped["mean"] == pytest.approx(float(expected), rel=1e-6)
    assert results["rate"] == pytest.approx(float(np.exp(pretrained.load_meta_params("generalist-v1")[1]["log_lr"])))
    variants = ["as shipped", "η = rate", "d = 0", "both"]
    assert [(r["task"], r["variant"], r["steps"]) for r in results["rows"]] == [
        (task, v, 3) for task in ("char LM", "base MLP") for v in variants
    ]
    for r in results["rows"]:
        assert math.isfinite(r["mean"]) and r["inits"] == 2
        assert ("minus_shipped" in r) == (r["variant"] != "as shipped")
    scale = results["rate"] / float(np.exp(pretrained.load_meta_params("generalist")[1]["log_lr"]))
    adam_500 = lm_stall_rates()[500]
    assert [r["variant"] for r in results["parts"]] == [f"{p} ×{scale:.3g}" for p in benchmark("lm_stall").PARTS] + [
        f"tuned Adam ({adam_500:.3g})"
    ]
    for r in results["parts"]:
        assert r["steps"] == 3 and r["inits"] == 2 and math.isfinite(r["mean"]) and math.isfinite(r["minus_shipped"])
        assert ("minus_adam" in r) == (not r["variant"].startswith("tuned Adam"))
    adam_row = results["parts"][-1]
    for r in results["parts"][:-1]:  # Both differences are paired on the same runs, so they differ by Adam's.
        assert r["minus_shipped"] - r["minus_adam"] == pytest.approx(adam_row["minus_shipped"], abs=1e-5)
    md = (tmp_path / "lm_stall_test.md").read_text()
    assert "| char LM | both | 3 |" in md and f"| char LM | GRU cell ×{scale:.3g} | 3 |" in md


def lm_stall_rates() -> dict[int, float]:
    """The battery's tuned Adam rates on the character-level LM, per horizon, as ``lm_stall.py`` reads them."""
    lm_stall = benchmark("lm_stall")
    return lm_stall.battery_rates(lm_stall.harness.RESULTS / "generalisation.json", ("char LM", "char LM long"))


def test_lm_stall_reads_the_battery_tuned_adam_rate_for_each_lm_horizon(tmp_path):
    def row(task: str, optimizer: str, steps: int, rate: float | None) -> dict:
        return {"task": task, "optimizer": optimizer, "steps": steps, "learning_rate": rate}

    rows = [
        row("char LM", "adam", 100, 0.03),
        row("char LM", "nag", 100, 1.0),
        row("char LM", "generalist", 100, None),
        row("char LM long", "adam", 200, 0.02),
        row("char LM long", "adam", 500, 0.01),
        row("CNN", "adam", 200, 0.5),
    ]
    (tmp_path / "generalisation.json").write_text(json.dumps({"rows": rows}))
    rates = benchmark("lm_stall").battery_rates(tmp_path / "generalisation.json", ("char LM", "char LM long"))
    assert rates == {100: 0.03, 200: 0.02, 500: 0.01}
    assert sorted(lm_stall_rates()) == [100, 200, 500]  # the battery's own file has all three horizons


@pytest.mark.slow  # the bound itself: tests/test_feature_mlp.py
def test_step_bound_runs_every_optimizer_at_every_bound_on_tuning_initialisations(tmp_path):
    options = ["--tasks", "char LM", "base MLP", "--bounds", "none", "3", "--max-steps", "3", "--inits", "2",
               "--outliers", "--results-dir", str(tmp_path), "--data-dir", str(MNIST_FIXTURE)]  # fmt: skip
    out = run_script("step_bound.py", *options, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "step_bound.json").read_text())
    rows = results["rows"]
    assert [r["step"] for r in results["outliers"]] == [1, 2, 3]
    assert all(r["largest_step_in_lr"] >= r["median_step_in_lr"] >= 0 for r in results["outliers"])
    assert [(r["optimizer"], r["task"], r["step_bound"]) for r in rows] == [
        ("generalist", task, kappa) for task in ("char LM", "base MLP") for kappa in (None, 3.0)
    ]
    for r in rows:
        assert r["steps"] == 3 and r["inits"] == 2 and r["rise"] >= 0 and math.isfinite(r["end"])
    assert "| generalist | 3 | char LM | 3 |" in (tmp_path / "step_bound.md").read_text()
    out = run_script("step_bound.py", "--optimizers", "mnist-lstm", "--results-dir", str(tmp_path / "no"))
    assert out.returncode == 2 and "only feature_mlp has a step bound" in out.stderr


@pytest.mark.slow  # compiles a PES meta-step per family
def test_task_speed_times_each_family_and_counts_its_parameters(tmp_path):
    out_file = tmp_path / "speed.json"
    only = ["--only", "quadratic (10-d)", "quadratic (dim=20)"]
    out = run_script("task_speed.py", *only, "--repeats", "1", "--out", str(out_file), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out_file.read_text())["rows"]
    assert [(r["family"], r["parameters"]) for r in rows] == [("quadratic (dim=20)", 20), ("quadratic (10-d)", 10)]
    assert all(r["optimizee_steps_per_second"] > 0 for r in rows)


def test_generalisation_refuses_an_unknown_task(tmp_path):
    out = run_script("generalisation.py", "--tasks", "ImageNet", "--results-dir", str(tmp_path), timeout=300)
    assert out.returncode == 2 and "unknown task(s) 'ImageNet'" in out.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow  # PES on a mixture: tests/test_meta_training_estimators.py; shipping: test_pretrained.py
def test_generalist_meta_trains_on_its_mixture_and_records_what_it_was_built_from(tmp_path):
    run = tmp_path / "run"
    # Validation takes at least one task of each of the mixture's 7 members.
    options = ["--meta-steps", "2", "--horizon", "4", "--truncation", "2", "--val-tasks", "8", "--start-inits", "1",
               "--start-steps", "3", "--no-progress", "--run-dir", str(run), "--results-dir", str(tmp_path),
               "--data-dir", str(MNIST_FIXTURE)]  # fmt: skip
    out = run_script("generalist.py", *options, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    meta = json.loads((run / "optimizer.json").read_text())
    assert meta["optimizer"] == "feature_mlp" and meta["architecture"]["options"]["output"] == "nominal"
    assert meta["architecture"]["options"]["reference_fan_in"] == 128.0
    # The fan-out factor is added after meta-training, and recorded as such.
    architecture = meta["architecture"]["options"]
    assert architecture["reference_fan_out"] == 128.0 == meta["optimizer_config"]["reference_fan_out"]
    assert meta["added_after_training"] == {"reference_fan_out": 128.0}
    assert "reference_fan_out" not in meta["training_config"]["optimizer_options"]
    assert [e["estimator"] for e in meta["estimator"]] == ["pes"] and len(meta["mixture"]) == 7
    assert {m["options"].get("image_size", 28) for m in meta["mixture"] if m["task"] == "mnist"} == {8, 14, 28}
    assert meta["training"]["meta_steps"] == [2] and meta["training"]["optimizee_steps"] == 2 * 8 * 2 * 2 * 2
    # v2 starts from v1's φ with the learning rate that did best on the members.
    start = meta["training"]["start"]
    assert start["source"] == "generalist-v1" and start["chosen_lr"] in start["lrs"]
    assert start["chosen_lr"] == start["lrs"][int(np.nanargmin(start["scores"]))]
    # Where the data lay is kept only in the command that was run, not in the configs that rebuild tasks.
    assert str(MNIST_FIXTURE) not in json.dumps({k: v for k, v in meta.items() if k != "training"})
    assert meta["evaluation"] is None  # no battery results in tmp_path
    out = run_script("generalist.py", *options, "--ship", timeout=300)
    assert out.returncode == 2 and "--ship ships the documented recipe" in out.stderr


@pytest.mark.slow  # meta-trains on the mixture: the optimizer options are tested in tests/test_feature_mlp.py
def test_feature_ablation_meta_trains_the_full_optimizer_and_compares_every_row_with_it(tmp_path):
    # Every variant is meta-trained by the same call with only its options changed: each variant's options
    # must make a feature MLP whose φ initialises; the full optimizer alone is meta-trained here.
    feature_ablation = benchmark("feature_ablation")
    from l2l_jax import optimizers

    for changes in feature_ablation.VARIANTS.values():
        optimizer = optimizers.get("feature_mlp", **{**feature_ablation.generalist.OPTIMIZER_OPTIONS, **changes})
        assert jax.tree.leaves(optimizer.init(jax.random.PRNGKey(0)))
    options = ["--meta-steps", "1", "--horizon", "4", "--truncation", "2", "--val-tasks", "4", "--test-inits", "3",
               "--variants", "full", "--run-root", str(tmp_path / "runs"), "--no-progress",
               "--results-dir", str(tmp_path), "--data-dir", str(MNIST_FIXTURE)]  # fmt: skip
    out = run_script("feature_ablation.py", *options, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "feature_ablation.json").read_text())["rows"]
    variants = ["full", "untrained (Adam, lr 0.01)"]
    assert [(r["task"], r["steps"], r["variant"]) for r in rows] == [
        (task, steps, v) for task in ("base MLP", "ReLU") for steps in (100, 200) for v in variants
    ]
    assert all(math.isfinite(r["mean_loss"]) for r in rows)
    assert all(r["full_minus_this"] == 0 for r in rows if r["variant"] == "full")
    assert all(r["full_minus_this"] != 0 for r in rows if r["variant"] != "full")


def test_coarse_to_fine_tuning_finds_the_rate_of_the_full_grid_search():
    harness = benchmark("harness")
    from l2l_jax import tasks
    from l2l_jax.evaluation import sample_tasks

    family = tasks.get("quadratic", dim=4)
    tune, test = sample_tasks(family, 0, 8, "tune"), sample_tasks(family, 0, 4, "test")
    for name in ("sgd", "adam"):
        full = harness.tune_learning_rate(BASELINES[name], family, tune, test, (5, 20))
        fast = harness.tune_learning_rate(BASELINES[name], family, tune, test, (5, 20), coarse_to_fine=True)
        for steps in (5, 20):
            assert fast[steps][0] == full[steps][0], (name, steps)
            np.testing.assert_array_equal(fast[steps][1], full[steps][1])


def test_step_adaptation_shrinks_only_the_steps_of_tensors_whose_gradient_turns_against_their_last_step():
    import jax.numpy as jnp
    import optax

    step_adaptation = benchmark("step_adaptation")
    inner = optax.with_extra_args_support(optax.sgd(0.1))
    params = {"flips": jnp.ones(3), "keeps": jnp.ones(2)}
    g1 = {"flips": jnp.array([1.0, -2.0, 0.5]), "keeps": jnp.array([0.3, 0.4])}
    g2 = {"flips": -g1["flips"], "keeps": 2 * g1["keeps"]}

    def run(beta: float, grads: list) -> list:
        tx, out = step_adaptation.adapt_steps(inner, beta), []
        state = tx.init(params)
        for g in grads:
            u, state = tx.update(g, state, params)
            out.append(u)
        return out

    plain = run(0.0, [g1, g2])
    for u, g in zip(plain, [g1, g2]):  # β = 0: the inner optimizer's updates exactly.
        assert all(bool(jnp.array_equal(u[k], -0.1 * g[k])) for k in g)
    first, second = run(0.5, [g1, g2])
    np.testing.assert_allclose(first["flips"], -0.1 * g1["flips"], rtol=1e-6)  # No last step yet: nothing to adapt.
    # cos(g2, u1) = +1 for the tensor whose gradient flipped: its steps shrink by exp(−β).
    np.testing.assert_allclose(second["flips"], np.exp(-0.5) * -0.1 * g2["flips"], rtol=1e-6)
    # cos = −1 for the other: its multiplier would grow, but never beyond the inner optimizer's step.
    np.testing.assert_allclose(second["keeps"], -0.1 * g2["keeps"], rtol=1e-6)
    flipping = [g1 if i % 2 == 0 else g2 for i in range(40)]
    last = run(0.5, flipping)[-1]
    np.testing.assert_allclose(last["flips"], step_adaptation.FLOOR * -0.1 * g2["flips"], rtol=1e-5)


def test_step_adaptation_refuses_a_negative_beta():
    out = run_script("step_adaptation.py", "--betas", "0.1", "-1", timeout=120)
    assert out.returncode == 2 and "β must be a number >= 0, got '-1'" in out.stderr


@pytest.mark.slow  # its mechanism: test_step_adaptation_shrinks_only_the_steps_of_tensors_whose_gradient_turns_...
def test_step_adaptation_runs_each_beta_paired_with_the_generalist_as_shipped(tmp_path):
    options = ["--max-steps", "3", "--inits", "2", "--betas", "0.1", "--tasks", "char LM long", "base MLP"]
    out = run_script("step_adaptation.py", *options, "--results-dir", str(tmp_path), "--data-dir", str(MNIST_FIXTURE))
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "step_adaptation.json").read_text())
    expected = [(t, b, 3) for t in ("char LM long", "base MLP") for b in (0.0, 0.1)]
    assert [(r["task"], r["beta"], r["steps"]) for r in results["rows"]] == expected
    for r in results["rows"]:
        assert r["inits"] == 2 and math.isfinite(r["mean"]) and ("minus_shipped" in r) == (r["beta"] > 0)
    assert "| base MLP | 0.1 | 3 |" in (tmp_path / "step_adaptation.md").read_text()
    # Where the multipliers went: one row per tensor of each task and β > 0, each in [floor, 1].
    tensors = {t: [r["tensor"] for r in results["multipliers"] if r["task"] == t] for t in ("char LM long", "base MLP")}
    assert tensors["base MLP"] == ["Dense_0/bias", "Dense_0/kernel", "Dense_1/bias", "Dense_1/kernel"]
    assert "Dense_0/kernel" in tensors["char LM long"] and "GRUCell_0/hn/kernel" in tensors["char LM long"]
    for r in results["multipliers"]:
        assert r["beta"] == 0.1 and r["steps"] == 3 and benchmark("step_adaptation").FLOOR <= r["multiplier"] <= 1
    assert "| Dense_0/kernel |" in (tmp_path / "step_adaptation.md").read_text()


@pytest.mark.slow  # its mechanism: test_step_adaptation_shrinks_only_the_steps_of_tensors_whose_gradient_turns_...
def test_step_adaptation_runs_report_the_curves_of_the_adapted_optimizer_and_its_multipliers():
    import jax

    from l2l_jax import pretrained
    from l2l_jax.evaluation import loss_curves, sample_tasks
    from l2l_jax.tasks import TeacherStudentFamily

    step_adaptation = benchmark("step_adaptation")
    optimizer, phi = pretrained.load_meta_params("generalist")
    family = TeacherStudentFamily(features=4, examples=32, hidden_units=8, batch_size=8)
    runs = sample_tasks(family, 0, 3, "tune")
    curves, multipliers = step_adaptation.adapted_runs(optimizer, phi, family, runs, 0.5, (2, 5, 6))
    # Cut where the multipliers are read, the run is the same run as one uncut run.
    expected = loss_curves(lambda p: step_adaptation.adapt_steps(optimizer.as_optax(p), 0.5), phi, family, runs, 6)
    np.testing.assert_allclose(curves, expected, rtol=1e-5)
    params = family.init(jax.tree.map(lambda x: x[0], runs.task_params), jax.random.PRNGKey(0))
    paths = [
        jax.tree_util.keystr(path, simple=True, separator="/")
        for path, _ in jax.tree_util.tree_leaves_with_path(params)
    ]
    assert list(multipliers) == [2, 5, 6] and len(paths) == 4  # two kernels and two biases, by their paths
    for tensors in multipliers.values():
        assert list(tensors) == paths and all(step_adaptation.FLOOR <= m <= 1 for m in tensors.values())
    assert any(multipliers[6][t] < 1 for t in paths)  # β = 0.5 over 6 steps does shrink some tensor's steps
    _, unchanged = step_adaptation.adapted_runs(optimizer, phi, family, runs, 0.0, (3, 6))
    assert all(m == 1.0 for tensors in unchanged.values() for m in tensors.values())  # β = 0: ℓ stays 0


def test_recurrence_prior_scales_exactly_the_updates_of_the_tensors_feeding_the_lms_recurrence():
    import jax

    from l2l_jax import pretrained, tasks

    generalisation = benchmark("generalisation")
    optimizer, phi = pretrained.load_meta_params("generalist")
    family = tasks.CharLMFamily(seq_len=8, batch_size=2, hidden_size=8, embed_dim=4)
    mask = generalisation.recurrence_mask(family)
    names = generalisation.flagged_names(mask)
    assert "Embed_0/embedding" in names and "GRUCell_0/hn/kernel" in names and "Dense_0/kernel" not in names
    mnist = tasks.MNISTFamily(data_dir=str(MNIST_FIXTURE))
    assert generalisation.flagged_names(generalisation.recurrence_mask(mnist)) == []
    task = family.sample(jax.random.key(0))
    params = family.init(task, jax.random.key(1))
    grads = jax.grad(family.loss, argnums=1)(task, params, jax.random.key(2))
    shipped, prior = optimizer.as_optax(phi), generalisation.with_prior(optimizer, mask, 0.25)(phi)
    library = pretrained.load("generalist", recurrent=mask, recurrent_scale=0.25)  # what the docs tell users
    plain, _ = shipped.update(grads, shipped.init(params), params)
    scaled, _ = prior.update(grads, prior.init(params), params)
    loaded, _ = library.update(grads, library.init(params), params)
    for p, q, r, flagged in zip(*map(jax.tree.leaves, (plain, scaled, loaded, mask)), strict=True):
        np.testing.assert_allclose(q, 0.25 * p if flagged else p, rtol=1e-6)
        np.testing.assert_array_equal(r, q)


@pytest.mark.slow  # its mechanism: test_recurrence_prior_scales_exactly_the_updates_of_the_tensors_feeding_...
def test_the_battery_gives_the_generalist_the_recurrence_prior_only_where_a_task_has_a_recurrence(monkeypatch):
    from l2l_jax.evaluation import loss_curves, sample_tasks

    generalisation = benchmark("generalisation")
    monkeypatch.setattr(generalisation, "BASELINES", {"adam": generalisation.BASELINES["adam"]})  # one is enough here
    optimizer, phi = pretrained.load_meta_params("generalist")
    learned, recorded = {"mine": (optimizer, phi), "plain": (optimizer, phi)}, {("adam", 3): 0.01}
    lm_options = {"seq_len": 8, "batch_size": 2, "hidden_size": 8, "embed_dim": 4}
    lm = generalisation.Task("tiny LM", "char_lm", lm_options, (3,), 2, True, uses_mnist=False)
    mlp = generalisation.Task("tiny MLP", "mnist", {"hidden_units": 8}, (3,), 2, False)
    rows, curves = {}, {}
    for task in (lm, mlp):
        family = generalisation.build_family(task, str(MNIST_FIXTURE))
        out = generalisation.evaluate_task(task, family, learned, (3,), 2, 2, None, False, recorded, "mine", 0.25)
        rows[task.label], curves[task.label] = {r["optimizer"]: r for r in out[0]}, out[1]
    # On the LM the reference runs with the prior (its embedding and cell's updates × 0.25), "plain" without.
    family = generalisation.build_family(lm, None)
    prior = generalisation.with_prior(optimizer, generalisation.recurrence_mask(family), 0.25)
    test = sample_tasks(family, generalisation.SEED, 2, "test")
    np.testing.assert_allclose(curves["tiny LM"]["mine"], loss_curves(prior, phi, family, test, 3), rtol=1e-6)
    assert rows["tiny LM"]["plain"]["same_as"] is None
    assert rows["tiny LM"]["plain"]["reference_minus_this"] != 0
    # On the MLP nothing is flagged: one optimizer, computed once, and no "best other" in the compact table.
    assert rows["tiny MLP"]["plain"]["same_as"] == "mine" and curves["tiny MLP"]["plain"] is curves["tiny MLP"]["mine"]
    assert rows["tiny MLP"]["plain"]["reference_minus_this"] == 0
    assert "| plain (" not in generalisation.compact_table(list(rows["tiny MLP"].values()), "mine")
    # An optimizer that records no factor cannot run with the prior.
    out = run_script("generalisation.py", "--recurrence-prior", "--generalist", "generalist-v7", timeout=300)
    assert out.returncode == 2 and "--recurrence-prior: 'generalist-v7' records no scale" in out.stderr


def test_recurrence_prior_refuses_a_scale_that_is_not_positive():
    out = run_script("recurrence_prior.py", "--scale", "0", timeout=120)
    assert out.returncode == 2 and "argument --scale: must be a positive number, got 0" in out.stderr


@pytest.mark.slow  # its mechanism: test_recurrence_prior_scales_exactly_the_updates_of_the_tensors_feeding_...
def test_recurrence_prior_flags_every_battery_task_and_runs_the_lm_and_the_row_gru(tmp_path):
    from l2l_jax import pretrained
    from l2l_jax.evaluation import learned_curves, sample_tasks

    generalisation = benchmark("generalisation")
    options = ["--max-steps", "3", "--inits", "2", "--results-dir", str(tmp_path), "--data-dir", str(MNIST_FIXTURE)]
    out = run_script("recurrence_prior.py", *options, "--streams", "test")
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "recurrence_prior.json").read_text())
    flags = {r["task"]: r["flagged"] for r in results["flags"]}
    assert list(flags) == [t.label for t in generalisation.TASKS]
    assert [t for t, names in flags.items() if names] == ["char LM", "char LM long"]
    assert [(r["task"], r["steps"]) for r in results["rows"]] == [("char LM, test runs", 3)] * 3 + [
        ("MNIST row GRU, test runs", 3)
    ] * 3
    gru = {r["variant"]: r for r in results["rows"] if r["task"].startswith("MNIST row GRU")}
    assert gru["as shipped"]["mean"] != gru[f"recurrence prior ×{results['scale']:.3g}"]["mean"]
    assert any(v.startswith("tuned Adam (") for v in gru)  # its rate tuned on the row GRU's own tuning runs
    shipped = next(r for r in results["rows"] if r["stream"] == "test" and r["variant"] == "as shipped")
    family = generalisation.build_family({t.label: t for t in generalisation.TASKS}["char LM"], str(MNIST_FIXTURE))
    runs = sample_tasks(family, generalisation.SEED, 2, "test")
    curves = learned_curves(*pretrained.load_meta_params("generalist"), family, runs, 3)
    assert shipped["mean"] == pytest.approx(float(np.mean(curves[:, 3])), rel=1e-6)
    assert "| char LM | Embed_0/embedding, GRUCell_0/hn/bias" in (tmp_path / "recurrence_prior.md").read_text()


def test_benchmark_standard_errors_are_the_population_deviation_over_the_root_of_the_count():
    harness = benchmark("harness")
    x = np.array([1.0, 2.0, 4.0, 9.0])
    assert harness.stderr(x) == pytest.approx(np.sqrt(np.mean((x - x.mean()) ** 2)) / 2)
    assert harness.paired_difference(x, x - 1.0) == pytest.approx((1.0, 0.0))
    assert harness.paired_difference(x, np.zeros(4)) == pytest.approx((x.mean(), harness.stderr(x)))
