"""What a run directory and the command line do with hostile or broken surroundings.

Links planted in a run directory, options recorded in it, files stripped of
their checksums, deeply nested JSON, read-only or full filesystems, diverged
loss curves and early interrupts: each gets one clear error or is handled, and
nothing outside the run directory is touched.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from l2l_jax import cli, errors, pretrained
from l2l_jax import run_directory as rd
from l2l_jax.evaluation import report
from l2l_jax.evaluation.plots import plot_loss_curves

BASE = [
    "--task",
    "quadratic",
    "--task-option",
    "dim=3",
    "--horizon",
    "2",
    "--truncation",
    "2",
    "--batch-size",
    "2",
    "--val-tasks",
    "2",
    "--validate-every",
    "2",
    "--checkpoint-every",
    "2",
    "--optimizer-option",
    "hidden_size=4",
    "--no-progress",
]
EVALUATE = ["--tasks", "2", "--tune-tasks", "2", "--steps", "3", "--no-progress"]
MNIST_FIXTURE = str(Path(__file__).parent / "fixtures" / "mnist")
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main(["meta-train", *BASE, "--meta-steps", "2", "--run-dir", str(run)]) == 0
    return run


@pytest.fixture
def run(finished_run, tmp_path) -> Path:
    """A private copy of a finished 2-step run."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("l2l-jax: error: ") and err.count("\n") == 1, err
    return err


# ----------------------------------------------------------------------------- links and lock files


def test_a_lock_symlink_is_refused_and_its_target_left_alone(run, tmp_path, capsys):
    precious = tmp_path / "precious.txt"
    precious.write_text("precious\n")
    (run / rd.LOCK).symlink_to(precious)
    assert cli.main(["evaluate", str(run), *EVALUATE]) == 2
    assert "symbolic link" in one_error_line(capsys)
    assert precious.read_text() == "precious\n"


def test_a_dangling_lock_symlink_creates_nothing_outside(tmp_path, capsys):
    run, outside = tmp_path / "run", tmp_path / "elsewhere" / "created"
    run.mkdir()
    outside.parent.mkdir()
    (run / rd.LOCK).symlink_to(outside)
    assert cli.main(["meta-train", *BASE, "--meta-steps", "2", "--run-dir", str(run)]) == 2
    assert str(run / rd.LOCK) in one_error_line(capsys)
    assert not outside.exists() and list(outside.parent.iterdir()) == []


@pytest.mark.parametrize("make", [os.mkfifo, os.mkdir], ids=["fifo", "directory"])
def test_a_lock_that_is_not_a_regular_file_is_refused(tmp_path, make):
    run = tmp_path / "run"
    run.mkdir()
    make(run / rd.LOCK)  # Opening a FIFO would wait for a writer; it must not.
    with pytest.raises(errors.RunDirectoryError, match="not a regular file"), rd.lock(run):
        pass


def test_a_users_own_lock_file_is_never_written_or_removed(tmp_path, capsys):
    mine = tmp_path / "my-folder"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (mine / rd.LOCK).write_text("precious\n")
    assert cli.main(["meta-train", *BASE, "--meta-steps", "2", "--run-dir", str(mine)]) == 2
    one_error_line(capsys)
    assert (mine / rd.LOCK).read_text() == "precious\n"
    assert sorted(p.name for p in mine.iterdir()) == [rd.LOCK, "notes.txt"]


def test_the_lock_names_its_holder_and_leaves_no_file(tmp_path):
    run = tmp_path / "run"
    with rd.lock(run):
        assert (run / rd.LOCK).read_text() == f"l2l-jax {os.getpid()}\n"
        with pytest.raises(errors.RunDirectoryBusyError, match=f"process {os.getpid()}"), rd.lock(run):
            pass
    assert not (run / rd.LOCK).exists()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / rd.LOCK).write_text("l2l-jax 999999999\n")  # Its holder was killed: no flock on it.
    with rd.lock(run):
        assert (run / rd.LOCK).read_text() == f"l2l-jax {os.getpid()}\n"
    assert not (run / rd.LOCK).exists()


def test_writing_a_run_file_replaces_a_symlink_instead_of_writing_through_it(run, tmp_path):
    precious = tmp_path / "precious.json"
    precious.write_text("precious\n")
    (run / rd.CONFIG).unlink()
    (run / rd.CONFIG).symlink_to(precious)
    rd.write_json(run / rd.CONFIG, {"a": 1})
    assert precious.read_text() == "precious\n"
    assert not (run / rd.CONFIG).is_symlink() and json.loads((run / rd.CONFIG).read_text()) == {"a": 1}


# ----------------------------------------------------------------------------- options that reach outside


def _run_recording_task(tmp_path: Path, task: str, options: dict) -> Path:
    """A run directory whose optimizer.json (checksums valid) records ``task`` built with ``options``."""
    source = pretrained.locate("quadratic-lstm")
    meta = {**rd.read_optimizer_meta(source), "task": task, "task_options": options}
    _, phi = pretrained.load_meta_params(source)
    run = tmp_path / "run"
    rd.save_optimizer(run, meta, phi)
    return run


@pytest.fixture
def built_tasks(monkeypatch) -> list[tuple[str, dict]]:
    """The (name, options) of every task family evaluate builds; building fails as if MNIST were missing."""
    built = []

    def get(name, **options):
        built.append((name, options))
        raise errors.DataError("MNIST not found.")

    monkeypatch.setattr(report.tasks_lib, "get", get)
    return built


@pytest.mark.parametrize(
    "task, recorded, expected",
    [
        ("mnist", {"download": True, "data_dir": "PLANTED", "hidden_units": 5}, {"hidden_units": 5}),
        (
            "scale_augmented",
            {"task": "mnist", "options": {"download": True, "data_dir": "PLANTED"}},
            {"task": "mnist", "options": {}},
        ),
    ],
)
def test_evaluate_never_takes_download_or_data_dir_from_a_run_directory(
    tmp_path, built_tasks, capsys, task, recorded, expected
):
    run = _run_recording_task(tmp_path, task, json.loads(json.dumps(recorded).replace("PLANTED", str(tmp_path))))
    assert cli.main(["evaluate", str(run), *EVALUATE]) == 2
    assert built_tasks == [(task, expected)]
    err = one_error_line(capsys)
    assert "--task-option data_dir=DIR" in err and "--task-option download=true" in err


def test_evaluate_takes_data_options_from_the_command_line(tmp_path, built_tasks, capsys):
    run = _run_recording_task(tmp_path, "mnist", {"download": True, "data_dir": str(tmp_path), "hidden_units": 5})
    assert cli.main(["evaluate", str(run), *EVALUATE, "--task-option", f"data_dir={MNIST_FIXTURE}"]) == 2
    assert built_tasks == [("mnist", {"hidden_units": 5, "data_dir": MNIST_FIXTURE})]
    assert "--task-option data_dir" not in one_error_line(capsys)  # The user chose where the data lies.


# ----------------------------------------------------------------------------- checksums


def _strip_checksums(run: Path) -> None:
    meta = json.loads((run / rd.OPTIMIZER_META).read_text())
    del meta["sha256"], meta["format"]
    (run / rd.OPTIMIZER_META).write_text(json.dumps(meta))


def test_an_optimizer_without_checksums_is_refused_unless_the_user_opts_in(run):
    _strip_checksums(run)
    params = bytearray((run / rd.OPTIMIZER_PARAMS).read_bytes())
    params[-1] ^= 1
    (run / rd.OPTIMIZER_PARAMS).write_bytes(bytes(params))
    with pytest.raises(errors.RunDirectoryError, match="no checksums.*allow_unverified=True"):
        pretrained.load(run)
    with pytest.warns(UserWarning, match="no checksums"):
        assert rd.read_optimizer_meta(run, allow_unverified=True)["optimizer"] == "lstm"


def test_an_optimizer_whose_params_checksum_was_removed_is_refused(run):
    meta = json.loads((run / rd.OPTIMIZER_META).read_text())
    del meta["sha256"][rd.OPTIMIZER_PARAMS]  # optimizer.json's own checksum still matches its content.
    (run / rd.OPTIMIZER_META).write_text(json.dumps(meta))
    with pytest.raises(errors.RunDirectoryError, match="corrupt or was edited"):
        pretrained.load(run)


def test_every_shipped_optimizer_carries_its_checksums():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in pretrained.available():
            meta = rd.read_optimizer_meta(pretrained.locate(name))
            assert set(meta["sha256"]) == {rd.OPTIMIZER_META, rd.OPTIMIZER_PARAMS}, name


# ----------------------------------------------------------------------------- deeply nested JSON


def test_deeply_nested_json_in_an_option_names_the_flag(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["meta-train", *BASE, "--task-option", f"x={DEEP}", "--run-dir", str(run)]) == 2
    assert "--task-option x=" in one_error_line(capsys)
    assert not run.exists()


@pytest.mark.parametrize("name", [rd.OPTIMIZER_META, rd.CONFIG])
def test_deeply_nested_json_in_a_run_file_names_the_file(run, name):
    (run / name).write_text(DEEP)
    with pytest.raises(errors.RunDirectoryError, match=f"{run / name} is corrupt.*nested"):
        rd.read_json(run / name)


def test_a_metrics_row_nested_too_deeply_is_skipped_when_reading_for_plots(run):
    rows = rd.read_metrics(run / rd.METRICS)
    with open(run / rd.METRICS, "a") as f:
        f.write(DEEP + "\n")
    assert rd.read_metrics(run / rd.METRICS) == rows


# ----------------------------------------------------------------------------- read-only and full filesystems


def test_a_full_disk_gives_one_line_naming_the_file_and_keeps_the_old_one(run, monkeypatch, capsys):
    before = (run / rd.CONFIG).read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    assert cli.main(["meta-train", *BASE, "--meta-steps", "4", "--run-dir", str(run)]) == 2
    err = one_error_line(capsys)
    assert str(run / rd.CONFIG) in err and os.strerror(errno.ENOSPC) in err
    assert (run / rd.CONFIG).read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_run_directory_gives_one_line_naming_a_file(run, capsys):
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    run.chmod(0o555)
    try:
        assert cli.main(["meta-train", *BASE, "--meta-steps", "4", "--run-dir", str(run)]) == 2
    finally:
        run.chmod(0o755)
    assert str(run) in one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


# ----------------------------------------------------------------------------- plots of diverged runs


def test_loss_curves_that_are_all_nan_still_plot(tmp_path):
    nan = np.full((2, 4), np.nan)
    path = plot_loss_curves({"learned lstm": nan, "adam": nan}, tmp_path / "all_nan.png")
    assert path.stat().st_size > 1000
    path = plot_loss_curves({"learned lstm": nan, "adam": np.ones((2, 4))}, tmp_path / "one_nan.png")
    assert path.stat().st_size > 1000


# ----------------------------------------------------------------------------- the command line


def test_meta_train_refuses_bad_evaluate_options_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "meta_train", lambda *a, **k: pytest.fail("meta-trained before refusing --tasks 0"))
    run = tmp_path / "run"
    argv = ["meta-train", *BASE, "--meta-steps", "2", "--evaluate", "--run-dir", str(run)]
    assert cli.main([*argv, "--tasks", "0"]) == 2
    assert "--tasks must be a positive integer" in one_error_line(capsys)
    assert cli.main([*argv, "--tune-tasks", "-1"]) == 2
    assert "--tune-tasks must be a positive integer" in one_error_line(capsys)
    assert not run.exists()


def _interrupted_meta_train(monkeypatch, write_checkpoint: bool):
    """Makes ``meta_train`` start, optionally write a checkpoint, then get Ctrl-C."""

    def fake(config, run_dir, *, on_start, **kwargs):
        on_start(0)
        if write_checkpoint:
            (run_dir / rd.CHECKPOINT).write_bytes(b"new")
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "meta_train", fake)


@pytest.mark.parametrize(
    "before, writes, said",
    [
        (False, False, "no checkpoint was saved"),
        (True, False, "resume from the last one"),
        (False, True, "checkpoint saved"),
    ],
)
def test_an_interrupt_says_whether_a_checkpoint_was_saved(tmp_path, monkeypatch, capsys, before, writes, said):
    run = tmp_path / "run"
    run.mkdir()
    if before:
        (run / rd.CHECKPOINT).write_bytes(b"old")
    _interrupted_meta_train(monkeypatch, writes)
    with pytest.raises(cli.Interrupted) as exit:
        cli.main(["meta-train", *BASE, "--meta-steps", "2", "--run-dir", str(run)])
    assert exit.value.code == 130
    out = capsys.readouterr().out
    assert said in out
    assert ("checkpoint saved" in out) == writes


def test_pretrained_loads_an_optimizer_without_checksums_only_when_the_user_opts_in(run):
    _strip_checksums(run)
    with pytest.raises(errors.RunDirectoryError, match="no checksums"):
        pretrained.load_meta_params(run)
    with pytest.warns(UserWarning, match="no checksums"):
        tx = pretrained.load(run, allow_unverified=True)
    updates, _ = tx.update({"w": jnp.ones(3)}, tx.init({"w": jnp.ones(3)}))
    assert bool(jnp.all(jnp.isfinite(updates["w"])))
