"""The command line: runs, and bad input gets one clear line instead of a traceback."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
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


def _with(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with the value after ``flag`` replaced."""
    i = argv.index(flag)
    return [*argv[: i + 1], value, *argv[i + 2 :]]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished run of ``meta-train`` with TINY (run once for the module); tests use copies (``shutil.copytree``)."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    assert cli.main(["meta-train", *TINY, "--run-dir", str(run)]) == 0
    return run


#: ``evaluate``'s options for a TINY run: the tests that evaluate one use the same, so they share compiled programs.
EVALUATE_TINY = ["--tasks", "4", "--tune-tasks", "4", "--steps", "10", "--no-progress"]


def test_meta_train_then_evaluate(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["meta-train", "--task", "quadratic", *TINY, "--steps-per-call", "3", "--tasks-per-chunk", "2"]
    assert cli.main([*argv, "--run-dir", str(run)]) == 0
    assert (run / "optimizer.msgpack").is_file()
    assert (run / "meta_training.png").stat().st_size > 1000  # The CLI plots the run.
    assert json.loads((run / "config.json").read_text())["tasks_per_chunk"] == 2
    code = cli.main(["evaluate", str(run), *EVALUATE_TINY])
    assert code == 0
    out = capsys.readouterr().out
    assert "| learned lstm | learned |" in out and "| adam |" in out
    results = json.loads((run / "evaluation.json").read_text())
    assert {r["optimizer"] for r in results["rows"]} == {"learned lstm", "sgd", "momentum", "nag", "rmsprop", "adam"}
    assert (run / "loss_curves.png").stat().st_size > 1000
    assert "evaluation" in json.loads((run / "optimizer.json").read_text())


def test_meta_train_with_pes_on_a_task_mixture_records_both_and_evaluate_refuses_the_mixture(tmp_path, capsys):
    run = tmp_path / "run"
    members = '[{"task": "quadratic", "options": {"dim": 2}}, {"task": "quadratic", "options": {"dim": 4}}]'
    # Without validation: this test is about what the run records. A PES mixture validates in
    # test_meta_training_estimators.py::test_a_task_mixture_meta_trains_validates_and_resumes_exactly.
    argv = ["meta-train", "--task", "mixture", "--task-option", f"members={members}"]
    argv += [*_with(TINY[2:], "--validate-every", "0"), "--estimator", "pes", "--sigma", "0.05", "--pairs", "2"]
    assert cli.main([*argv, "--run-dir", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["estimator"], config["estimator_options"]) == ("pes", {"sigma": 0.05, "num_pairs": 2})
    assert [m["options"]["dim"] for m in config["task_options"]["members"]] == [2, 4]
    assert config["components"]["task"]["type"] == "TaskMixture"
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("l2l-jax: error: ") and "task mixture" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["meta-train", "--task", "imagenet", "--run-dir", "X"], "unknown task 'imagenet'"),
        (["meta-train", "--optimizer", "gru", "--run-dir", "X"], "unknown learned optimizer 'gru'"),
        (["meta-train", "--preset", "pytorch", "--run-dir", "X"], "unknown LSTM preset"),
        (["meta-train", "--horizon", "0", "--run-dir", "X"], "horizon must be a positive integer"),
        (
            ["meta-train", "--tasks-per-chunk", "3", "--run-dir", "X"],
            "--tasks-per-chunk=3 must divide the batch of 128",
        ),
        (["meta-train", "--steps-per-call", "0", "--run-dir", "X"], "--steps-per-call must be a positive integer"),
        (["meta-train", "--meta-lr", "-1", "--run-dir", "X"], "--meta-lr must be a positive number"),
        (["meta-train", "--task-option", "dim", "--run-dir", "X"], "--task-option takes KEY=VALUE"),
        (["meta-train", "--task-option", "dim=0", "--run-dir", "X"], "dimension (dim) must be a positive integer"),
        (["evaluate", "does/not/exist"], "does/not/exist is not a run directory"),
        (["meta-train", "--optimizer-option", "hidden_size=abc", "--run-dir", "X"], "hidden_size"),
        (["meta-train", "--task-option", "dim=abc", "--run-dir", "X"], "dim) must be a positive integer"),
        (["meta-train", "--optimizer", "linear_rnn", "--optimizer-option", "phi=[1,2]", "--run-dir", "X"], "three"),
        (["seed-example", "--meta-steps", "0"], "--meta-steps must be a positive integer"),
        (["evaluate", "RUN", "--steps", "0"], "--steps must be a positive integer"),  # RUN: a copy of tiny_run
        (["evaluate", "X", "--baseline", "lion"], "unknown baseline 'lion'; choose one of sgd, momentum"),
        (["meta-train", "--evaluate", "--baseline", "lion", "--run-dir", "X"], "unknown baseline 'lion'"),
        (["demo", "--baseline", "lion", "--run-dir", "X"], "unknown baseline 'lion'"),
        (["meta-train", "--baseline", "adam", "--run-dir", "X"], "add --evaluate, or drop --baseline"),
        (["meta-train", "--estimator", "reinforce", "--run-dir", "X"], "unknown estimator 'reinforce'"),
        (
            ["meta-train", "--sigma", "0.1", "--run-dir", "X"],
            "unknown option(s) sigma for meta-gradient estimator 'tbptt' (--estimator-option); its options: first_order, remat",
        ),
        (
            ["meta-train", "--estimator", "pes", "--second-order", "--run-dir", "X"],
            "unknown option(s) first_order for meta-gradient estimator 'pes' (--estimator-option); its options: num_pairs, sigma",
        ),
        (
            ["meta-train", "--estimator-option", "x=1", "--run-dir", "X"],
            "unknown option(s) x for meta-gradient estimator 'tbptt'",
        ),
        (["meta-train", "--estimator-option", "sigma", "--run-dir", "X"], "--estimator-option takes KEY=VALUE"),
        (["meta-train", "--estimator", "es", "--sigma", "-1", "--run-dir", "X"], "sigma must be a positive number"),
        (["meta-train", "--estimator", "pes", "--pairs", "0", "--run-dir", "X"], "num_pairs must be a positive"),
        (
            ["meta-train", "--num-processes", "2", "--run-dir", "X"],
            "--num-processes and --process-id need --coordinator",
        ),
        (["meta-train", "--coordinator", "host", "--run-dir", "X"], "--coordinator must be HOST:PORT or auto"),
        (
            ["meta-train", "--coordinator", "h:1", "--num-processes", "0", "--process-id", "0", "--run-dir", "X"],
            "--num-processes must be a positive integer",
        ),
        (
            ["meta-train", "--coordinator", "h:1", "--num-processes", "2", "--process-id", "2", "--run-dir", "X"],
            "--process-id must be between 0 and 1, got 2",
        ),
        (
            ["meta-train", "--coordinator", "auto", "--process-id", "1", "--run-dir", "X"],
            "--coordinator auto takes the processes from the cluster",
        ),
    ],
)
def test_bad_input_prints_one_clear_line(argv, message, tmp_path, request, capsys):
    argv = [str(tmp_path / a) if a in ("X",) else a for a in argv]
    if "RUN" in argv:
        run = shutil.copytree(request.getfixturevalue("tiny_run"), tmp_path / "run")
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
        [sys.executable, "-m", "l2l_jax", "evaluate", str(run)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "is corrupt" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- what a user expects of the command line


def test_version_prints_the_package_version(capsys):
    import l2l_jax

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"l2l-jax {l2l_jax.__version__}"


def test_the_quick_top_level_help_is_the_parsers_own(monkeypatch, capsys):
    # `l2l-jax --help` answers without building the parser; it cannot go stale.
    from l2l_jax import __main__ as entry

    monkeypatch.setenv("COLUMNS", "80")
    assert cli.build_parser().format_help() == entry.TOP_LEVEL_HELP
    assert entry.main(["--help"]) == 0 and capsys.readouterr().out == entry.TOP_LEVEL_HELP
    assert entry.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"l2l-jax {cli.__version__}"  # as cli.main(["--version"]) says


def test_the_top_level_help_and_import_l2l_jax_import_no_jax():
    code = (
        "import sys, l2l_jax; from l2l_jax.__main__ import main; main(['--help']); "
        "assert 'jax' not in sys.modules, 'jax imported'; "
        "assert callable(l2l_jax.data.load_mnist) and callable(l2l_jax.lstm) and 'jax' in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "meta-train" in proc.stdout


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _option_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Option string -> its entry in ``parser``'s --help, on one line."""
    entries: dict[str, str] = {}
    for line in parser.format_help().split("options:", 1)[1].splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            entries[current] = line.strip()
        elif line.strip() and entries:
            entries[current] += " " + line.strip()
    return entries


def test_every_option_of_every_subcommand_shows_its_default_in_help(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # No wrapping inside the words checked.
    subparsers = _subparsers(cli.build_parser())
    assert set(subparsers) == {"demo", "meta-train", "evaluate", "seed-example"}
    for name, parser in subparsers.items():
        entries = _option_help(parser)
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or action.required:
                continue  # Flags (off unless given) and required options have no default to show.
            entry = entries[action.option_strings[0]]
            assert entry.count("default: ") == 1, f"{name}: {entry!r}"
            assert "(default: None)" not in entry, f"{name}: {entry!r}"


def test_meta_train_defaults_are_meta_train_config_defaults():
    from l2l_jax.meta import MetaTrainConfig

    args = cli.build_parser().parse_args(["meta-train", "--run-dir", "X"])
    config = cli.config_from_args(args)
    assert config == MetaTrainConfig().to_dict() | {"optimizer_options": {}, "task_options": {}}
    help_text = _subparsers(cli.build_parser())["meta-train"].format_help()
    assert f"(default: {MetaTrainConfig().num_val_tasks}; with --init: 16)" in " ".join(help_text.split())


def test_meta_train_defaults_with_init_are_the_recipes():
    from l2l_jax.meta.recipes import specialise_config

    args = cli.build_parser().parse_args(["meta-train", "--init", "generalist", "--horizon", "200", "--run-dir", "X"])
    config = cli.config_from_args(args)
    assert config == specialise_config("generalist", "quadratic", 200).to_dict()


def test_task_help_lists_the_registered_tasks_and_says_module_function_runs_code(monkeypatch):
    from l2l_jax import tasks

    monkeypatch.setenv("COLUMNS", "1000")
    for command in ("meta-train", "evaluate"):
        task_line = _option_help(_subparsers(cli.build_parser())[command])["--task"]
        assert all(name in task_line for name in tasks.available())
        assert "module:function" in task_line and "imports and runs" in task_line


def test_top_level_help_has_no_rst_markup():
    help_text = cli.build_parser().format_help()
    assert "``" not in help_text and "l2l-jax" in help_text


def test_unknown_task_option_lists_the_valid_options(tmp_path, capsys):
    assert cli.main(["meta-train", "--task-option", "dimension=3", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "'dimension'" in err and "'dim', 'init_scale'" in err
    assert "__init__" not in err and "keyword argument" not in err


def test_a_task_option_named_like_a_meta_training_field_is_not_written_as_its_flag(tmp_path, capsys):
    # char_lm has a batch_size option, as meta-train has --batch-size: the valid options stay option names.
    argv = ["meta-train", "--task", "char_lm", "--task-option", "size=3", "--run-dir", str(tmp_path / "r")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "'seq_len', 'batch_size', 'hidden_size', 'embed_dim'" in err and "--batch-size" not in err


def test_a_bad_task_option_value_names_the_task_and_the_option_not_a_meta_training_flag(tmp_path, capsys):
    argv = ["meta-train", "--task", "char_lm", "--task-option", "batch_size=-1", "--run-dir", str(tmp_path / "r")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == "l2l-jax: error: task 'char_lm': 'batch_size' must be a positive integer, got -1\n"
    assert not (tmp_path / "r").exists()


def test_unknown_task_option_in_the_python_api_names_the_valid_options():
    from l2l_jax import tasks
    from l2l_jax.errors import ConfigError

    with pytest.raises(ConfigError, match=r"no option 'size'.*valid options: 'dim', 'init_scale'$"):
        tasks.get("quadratic", size=3)


def test_missing_mnist_data_suggests_the_download_option(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("L2L_JAX_DATA_DIR", str(tmp_path / "no-data"))
    run = tmp_path / "run"
    assert cli.main(["meta-train", "--task", "mnist", *TINY[4:], "--run-dir", str(run)]) == 2
    captured = capsys.readouterr()
    assert "--task-option download=true" in captured.err and captured.err.count("\n") == 1
    assert "meta-training" not in captured.out  # Nothing announced before the error.


def test_no_meta_training_line_before_a_run_directory_error(tmp_path, capsys):
    mine = tmp_path / "my-folder"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert cli.main(["meta-train", *TINY, "--run-dir", str(mine)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("l2l-jax: error: ") and captured.err.count("\n") == 1
    assert (mine / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in mine.iterdir() if p.name != ".lock") == ["notes.txt"]  # No run files written.


def test_overwrite_flag_lets_meta_train_use_a_non_empty_folder(tmp_path, capsys):
    mine = tmp_path / "my-folder"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert cli.main(["meta-train", *TINY, "--run-dir", str(mine), "--overwrite"]) == 0
    assert (mine / "optimizer.msgpack").is_file()


def test_demo_passes_overwrite_to_meta_train(tmp_path, monkeypatch):
    seen = {}

    def fake_train(config_dict, run_dir, **kwargs):
        seen.update(kwargs)

    monkeypatch.setattr(cli, "_train", fake_train)
    monkeypatch.setattr(cli, "_evaluate_run", lambda *a, **k: "")
    assert cli.main(["demo", "--run-dir", str(tmp_path / "d"), "--overwrite", "--no-progress"]) == 0
    assert seen["overwrite"] is True
    assert cli.main(["demo", "--run-dir", str(tmp_path / "d"), "--no-progress"]) == 0
    assert seen["overwrite"] is False


def test_resumed_run_says_what_ran_in_this_call_and_in_total(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["meta-train", *TINY, "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"meta-training lstm on quadratic into {run}\n" in out
    assert re.search(r"^meta-trained 4 meta-steps in [0-9.]+ s \(steps 1-4 of 4", out, re.MULTILINE), out
    assert "best validation meta-loss" in out

    # Extending the finished run: 2 more steps.
    extended = _with(TINY, "--meta-steps", "6")
    assert cli.main(["meta-train", *extended, "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"meta-training lstm on quadratic into {run}, resuming at step 4\n" in out
    assert re.search(r"^meta-trained 2 meta-steps in [0-9.]+ s \(steps 5-6 of 6", out, re.MULTILINE), out

    # Nothing left to do.
    assert cli.main(["meta-train", *extended, "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "nothing to do: " in out and "all 6 meta-steps" in out
    assert "meta-trained" not in out
    # ... and with progress bars on, no bar is drawn for it.
    assert cli.main(["meta-train", *[a for a in extended if a != "--no-progress"], "--run-dir", str(run)]) == 0
    captured = capsys.readouterr()
    assert "nothing to do: " in captured.out and "6/6" not in captured.err, captured.err


def test_run_without_validation_says_no_validation_yet(tmp_path, capsys):
    argv = _with(TINY, "--validate-every", "0")
    assert cli.main(["meta-train", *argv, "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "no validation yet" in out and "inf" not in out


def test_a_run_directory_in_use_fails_at_once_with_one_line(tmp_path, tiny_run, capsys):
    import fcntl

    run = shutil.copytree(tiny_run, tmp_path / "run")  # A finished run of TINY.
    capsys.readouterr()
    extended = _with(TINY, "--meta-steps", "6")
    with open(run / ".lock", "a") as lock:  # Another process writing to the run.
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            assert cli.main(["meta-train", *extended, "--run-dir", str(run)]) == 2
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    captured = capsys.readouterr()
    assert captured.err.startswith("l2l-jax: error: ") and captured.err.count("\n") == 1
    assert "meta-trained" not in captured.out


NAN_TASK = """
import jax.numpy as jnp
from l2l_jax.tasks import QuadraticFamily


class NaNQuadratics(QuadraticFamily):
    def loss(self, task_params, params, key):
        return super().loss(task_params, params, key) * jnp.nan


def make(dim=3):
    return NaNQuadratics(dim=dim)
"""


def test_a_run_whose_every_step_was_non_finite_fails_with_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "h3_nan_task.py").write_text(NAN_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["meta-train", *_with(TINY, "--validate-every", "0"), "--task", "h3_nan_task:make"]
    assert cli.main([*argv, "--run-dir", str(tmp_path / "run")]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("l2l-jax: error: ") and captured.err.count("\n") == 1
    assert "meta-trained" not in captured.out


def test_evaluate_passes_task_to_evaluate_run(tmp_path, monkeypatch):
    seen = {}

    def fake_evaluate_run(run_dir, **kwargs):
        seen.update(kwargs)
        raise cli.ConfigError("stop here")

    monkeypatch.setattr("l2l_jax.evaluation.report.evaluate_run", fake_evaluate_run)
    (tmp_path / "run").mkdir()
    assert cli.main(["evaluate", str(tmp_path / "run"), "--task", "my_tasks:make"]) == 2
    assert seen["task"] == "my_tasks:make"
    seen.clear()
    assert cli.main(["evaluate", str(tmp_path / "run")]) == 2
    assert seen["task"] is None  # Nothing to import unless the user names it.


OWN_TASK = """
from l2l_jax.tasks import QuadraticFamily


def make(dim=3):
    return QuadraticFamily(dim=dim)
"""


def test_evaluate_runs_a_module_function_task_only_when_the_user_names_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "h3_own_task.py").write_text(OWN_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    assert cli.main(["meta-train", *TINY, "--task", "h3_own_task:make", "--run-dir", str(run)]) == 0
    capsys.readouterr()
    evaluate = ["evaluate", str(run), *EVALUATE_TINY]
    assert cli.main(evaluate) == 2
    err = capsys.readouterr().err
    assert err.startswith("l2l-jax: error: ") and err.count("\n") == 1 and "h3_own_task:make" in err
    assert not (run / "evaluation.json").exists()
    assert cli.main([*evaluate, "--task", "h3_own_task:make"]) == 0
    assert (run / "evaluation.json").is_file()


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--val-tasks", "10000000000000"], "--val-tasks must be at most"),
        (["--batch-size", "10000000000000"], "--batch-size must be at most"),
        (["--tasks-per-chunk", "3"], "--tasks-per-chunk"),
    ],
)
def test_a_bad_option_is_named_by_its_flag_not_its_python_field(flags, named, tmp_path, capsys):
    base = ["meta-train", "--task", "quadratic", "--task-option", "dim=3", "--horizon", "2", "--truncation", "2"]
    base += ["--batch-size", "2", "--meta-steps", "1", "--no-progress", "--run-dir", str(tmp_path / "run")]
    assert cli.main(base + flags) == 2
    err = capsys.readouterr().err
    assert named in err, err
    assert not any(field in err for field in ("num_val_tasks", "batch_size", "tasks_per_chunk")), err


def test_process_0_refuses_a_coordinator_port_in_use(tmp_path, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = ["meta-train", "--run-dir", str(tmp_path / "run"), "--coordinator", f"127.0.0.1:{port}"]
        assert cli.main([*argv, "--num-processes", "2", "--process-id", "0"]) == 2
    err = capsys.readouterr().err
    assert f"process 0 cannot listen on port {port}" in err and "Traceback" not in err
