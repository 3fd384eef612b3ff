"""Which tests only CI's full run needs, and running code on fake devices.

The environment is set up in the repository's ``conftest.py``.
"""

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

#: Tests that only CI's full run needs (``pytest -m slow``), in files whose other tests run by
#: default: (file, test function, parametrization id, or one part of it, or None for all) ->
#: the faster default test that covers the same ground. (In the files of the benchmarks and
#: of the README, ``@pytest.mark.slow`` stands at the test itself.)
SLOW: dict[tuple[str, str, "str | None"], str] = {
    # A run directory of the user's own: test_meta_training.py::test_run_directory_contents_and_pretrained_load.
    ("test_flax_dropin.py", "test_nnx_training_loop", "own run"): "the same loop with the shipped optimizer",
    ("test_flax_dropin.py", "test_linen_train_state_loop", "own run"): "the same loop with the shipped optimizer",
    ("test_flax_dropin.py", "test_nnx_run_saved_and_resumed_continues_identically", "own run"): "shipped",
    ("test_flax_dropin.py", "test_benchmark_unroll_equals_an_ordinary_linen_loop", "own run"): "shipped",
    # The same contract with the LSTM: the generalist's ([generalist]) runs by default.
    ("test_flax_dropin.py", "test_benchmark_unroll_equals_an_ordinary_linen_loop", "shipped"): "[generalist]",
    ("test_meta_training.py", "test_meta_training_lowers_the_meta_loss_on_held_out_tasks", None): (
        "test_meta_training_with_log_weighting_and_segment_remat_lowers_the_meta_loss_on_held_out_tasks"
    ),
    ("test_meta_training.py", "test_a_run_resumes_with_another_number_of_steps_per_call", None): (
        "test_interrupted_run_resumes_to_the_uninterrupted_result, "
        "test_several_meta_steps_per_call_follow_the_same_path"
    ),
    # PES unbiased and truncated ES biased, on the LSTM: on the worked example by default.
    ("test_estimators.py", "test_pes_is_unbiased_and_truncated_bptt_and_es_are_not", None): (
        "test_benchmarks.py::test_worked_example_estimators_recover_the_exact_gradient_where_they_are_unbiased"
    ),
    ("test_meta_gradients.py", "test_remat_gives_the_same_meta_gradient", None): (
        "test_fast_paths.py::test_rematerialised_unroll_equals_the_plain_one"
    ),
    # Two blocks and 5 coordinates, interpreted on the CPU: one block ([64]) and part of one ([37]) run by default.
    ("test_fast_paths.py", "test_pallas_step_has_the_reference_values_and_vjp", "133"): "[37] and [64]",
    ("test_fast_paths.py", "test_pallas_step_in_float32_is_within_the_stated_tolerance", "133"): "[37]",
    # One block, and a whole number of blocks: the overlapping last blocks ([37], [11]) run by default.
    ("test_fast_paths.py", "test_the_step_in_blocks_of_coordinates_equals_one_call", "10-None"): "[37-None], [11-None]",
    ("test_fast_paths.py", "test_the_step_in_blocks_of_coordinates_equals_one_call", "30-None"): "[37-None], [11-None]",
    # The XLA step on a leaf of any shape: the fused step's runs by default (the same contract).
    (
        "test_fast_paths.py",
        "test_a_step_on_a_leaf_of_any_shape_equals_the_step_on_its_flat_coordinates",
        "lstm_step_reference",
    ): "[lstm_step_fused-*]",
    # A user's own Flax model meta-trained (a linen model, from the command line) and meta-training that
    # lowers the meta-loss on held-out tasks run by default; the CNNs (nnx and linen) in CI's full run.
    ("test_own_model.py", "test_meta_training_on_a_users_cnn_improves_its_training", None): (
        "test_own_task_from_the_command_line, "
        "test_meta_training.py::test_meta_training_with_log_weighting_and_segment_remat_lowers_the_meta_loss_on_held_out_tasks"
    ),
    # The shipped LSTM sharded over two processes: the generalist's run ([generalist]) is the same contract.
    ("test_multiprocess.py", "test_a_model_sharded_over_two_processes_gets_the_one_process_updates", "mnist-lstm"): (
        "[generalist]"
    ),
    # SIGTERM through the command line: SIGINT's run ([2-130]) and test_run_directory.py's SIGTERM checkpoint
    # (test_sigterm_saves_a_checkpoint_like_ctrl_c) run by default.
    (
        "test_cli_signals.py",
        "test_interrupted_meta_training_saves_a_checkpoint_and_exits_128_plus_the_signal",
        "15-143",
    ): ("[2-130], test_run_directory.py::test_sigterm_saves_a_checkpoint_like_ctrl_c"),
    # Chunks of 1 and 2 of 6 tasks, first and second order, run by default.
    ("test_fast_paths.py", "test_unrolling_the_batch_in_chunks_equals_unrolling_it_at_once", "True-3"): "[True-1]",
    ("test_fast_paths.py", "test_unrolling_the_batch_in_chunks_equals_unrolling_it_at_once", "False-1"): "[True-1]",
    ("test_fast_paths.py", "test_unrolling_the_batch_in_chunks_equals_unrolling_it_at_once", "False-3"): "[False-2]",
    # Two-process jobs with their one-process runs: by default a job starts and stops on differing settings
    # (test_processes_started_with_different_settings_all_stop_with_an_error), and a model sharded over two
    # processes gets the one-process updates; the jobs that meta-train run in CI's slow run.
    ("test_multiprocess.py", "test_a_job_stops_together_on_sigterm_and_resumes_after_a_process_is_killed", None): (
        "test_processes_started_with_different_settings_all_stop_with_an_error"
    ),
    (
        "test_multiprocess.py",
        "test_meta_training_over_two_processes_equals_the_one_process_run_on_four_devices",
        None,
    ): ("test_processes_started_with_different_settings_all_stop_with_an_error"),
    # ES, PES and a mixture on 4 fake devices in a child process: test_sharding.py runs the same machinery (tbptt).
    ("test_meta_training_estimators.py", "test_sharded_meta_training_matches_one_device", None): (
        "test_sharding.py::test_sharded_meta_training_matches_one_device"
    ),
    ("test_meta_training_estimators.py", "test_a_task_mixture_meta_trains_validates_and_resumes_exactly", "tbptt"): (
        "[pes]"
    ),
    ("test_meta_training_estimators.py", "test_a_non_finite_step_is_skipped_and_restarts_the_runs", "es"): "[pes]",
    ("test_meta_training_estimators.py", "test_non_finite_meta_steps_are_skipped_and_counted", "es"): "[pes]",
    # ES's draws in chunks of tasks: PES's in chunks ([pes-chunks-of-2], the same chunking code), ES's over all
    # tasks at once ([es-all-tasks]) and ES chunked against at once (test_tasks_per_chunk_gives_the_same_estimate)
    # run by default.
    (
        "test_estimators.py",
        "test_es_and_pes_draw_a_tasks_minibatches_once_for_all_its_runs_and_estimate_as_if_each_run_drew_its_own",
        "es-chunks-of-2",
    ): "[pes-chunks-of-2], [es-all-tasks], test_tasks_per_chunk_gives_the_same_estimate[es]",
    # The interpreted Pallas kernel under automatic sharding, in a child process of its own: the kernel under
    # explicit sharding ([lstm_pallas-explicit]) and XLA's step under automatic sharding ([lstm-auto]) run by default.
    ("test_state_sharding.py", "test_init_under_jit_shards_the_state_like_its_parameters", "lstm_pallas-auto"): (
        "[lstm_pallas-explicit], [lstm-auto]"
    ),
    (
        "test_state_sharding.py",
        "test_sharded_updates_equal_the_unsharded_ones_and_keep_the_layout",
        "lstm_pallas-auto",
    ): "[lstm_pallas-explicit], [lstm-auto]",
    # The task batch in chunks over 8 devices, in a child process of its own: the batch split over the devices
    # and the batch in chunks on one device run by default.
    ("test_sharding.py", "test_sharded_meta_training_in_chunks_of_tasks_matches_one_device", None): (
        "test_sharded_meta_training_matches_one_device, "
        "test_fast_paths.py::test_unrolling_the_batch_in_chunks_equals_unrolling_it_at_once"
    ),
    # Meta-training is the same on any family; the MNIST family's loss, batches and Adam's descent run by default.
    ("test_mnist_task.py", "test_a_few_meta_steps_on_mnist_run_and_stay_finite", None): (
        "test_meta_training.py, test_initial_loss_is_near_log_10_and_adam_lowers_it"
    ),
    # A specialised run is a meta-training run that starts from a shipped φ: resuming one is meta-training's resume.
    ("test_specialise.py", "test_a_specialised_run_resumes_exactly", None): (
        "test_meta_training.py::test_interrupted_run_resumes_to_the_uninterrupted_result, "
        "test_a_resume_refuses_a_source_that_changed_since_the_run_started"
    ),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        name = getattr(item, "originalname", None)
        callspec = getattr(item, "callspec", None)
        for file, function, param in SLOW:
            if item.path.name != file or name != function:
                continue
            ids = [] if callspec is None else [callspec.id, *callspec.id.split("-")]
            if param is None or param in ids:
                item.add_marker(pytest.mark.slow)


def _run_with_fake_devices(script: str, num_devices: int, *args: str, timeout: float = 600) -> Any:
    """Runs ``python -c script *args`` on ``num_devices`` fake CPU devices; the JSON it printed after ``RESULT``."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={num_devices}",
    }
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], check=False, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


@pytest.fixture(scope="session")
def fake_devices() -> Callable[..., Any]:
    """``fake_devices(script, n, *args)``: runs a script in a child process with n fake CPU devices.

    JAX fixes its device count when it starts, so multi-device code runs in a fresh
    interpreter with ``--xla_force_host_platform_device_count``. The script prints one
    line ``RESULT<json>``; the fixture's function returns the parsed JSON.
    """
    return _run_with_fake_devices
