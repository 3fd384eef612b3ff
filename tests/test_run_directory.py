"""Run directories keep a user's data: no silent overwrite, one writer, damage detected, no code run."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2l_jax import errors, pretrained
from l2l_jax.evaluation import evaluate_run
from l2l_jax.meta import MetaTrainConfig, meta_train
from l2l_jax import run_directory as rd
from l2l_jax.tasks import QuadraticFamily

TINY = dict(
    task="quadratic",
    task_options={"dim": 3},
    optimizer_options={"hidden_size": 4},
    num_meta_steps=4,
    horizon=4,
    truncation=2,
    batch_size=2,
    validate_every=2,
    num_val_tasks=2,
    checkpoint_every=2,
)
CONFIG = MetaTrainConfig(**TINY)
LONGER = MetaTrainConfig(**{**TINY, "num_meta_steps": 8, "validate_every": 0, "checkpoint_every": 100})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    meta_train(CONFIG, run, progress=False)
    return run


@pytest.fixture
def run(finished_run, tmp_path) -> Path:
    """A private copy of a finished 4-step run."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def contents(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


# ----------------------------------------------------------------------------- never overwrite


def test_a_users_own_folder_is_refused_and_left_untouched(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    (folder / "config.json").write_text('{"mine": true}')
    before = contents(folder)
    with pytest.raises(errors.RunDirectoryError, match="refusing to start a new run in .*mine.*overwrite"):
        meta_train(CONFIG, folder, progress=False)
    assert contents(folder) == before


def test_a_finished_run_whose_checkpoint_was_removed_is_refused(run):
    (run / rd.EVALUATION_TABLE).write_text("| my evaluation |\n")
    (run / rd.CHECKPOINT).unlink()
    before = contents(run)
    with pytest.raises(errors.RunDirectoryError, match="no checkpoint to resume"):
        meta_train(CONFIG, run, progress=False)
    assert contents(run) == before


def test_overwrite_replaces_the_run_files_and_keeps_other_files(run):
    (run / "notes.txt").write_text("my notes")
    (run / rd.CHECKPOINT).unlink()
    result = meta_train(CONFIG, run, progress=False, overwrite=True)
    assert result.start_step == 0 and (run / rd.CHECKPOINT).is_file()
    assert (run / "notes.txt").read_text() == "my notes"


def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rd.write_json(run / rd.CONFIG, CONFIG.to_dict())  # All that a run writes before its first checkpoint.
    assert meta_train(CONFIG, run, progress=False).start_step == 0


def test_a_resumed_run_reports_where_it_started(run):
    longer = MetaTrainConfig(**{**TINY, "num_meta_steps": 6})
    result = meta_train(longer, run, progress=False)
    assert result.start_step == 4 and result.steps_run == 2
    assert [r["step"] for r in result.history] == [1, 2, 3, 4, 5, 6]


# ----------------------------------------------------------------------------- one writer


def test_a_second_writer_fails_at_once_with_a_clear_message(run):
    with rd.lock(run):
        with pytest.raises(
            errors.RunDirectoryBusyError, match=f"in use by another l2l-jax process .process {os.getpid()}"
        ):
            meta_train(CONFIG, run, progress=False)
        with pytest.raises(errors.RunDirectoryBusyError):
            evaluate_run(run, num_tasks=2, num_tune_tasks=2, num_steps=2, progress=False, baselines=("adam",))


WRITER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from l2l_jax.meta import MetaTrainConfig, meta_train

    run, seed, started = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    go = started.with_name("go")

    def slow(step, metrics):
        started.touch()
        for _ in range(600 if seed == 0 else 0):  # The first writer holds the run directory until the test says go.
            if go.exists():
                break
            time.sleep(0.1)

    config = MetaTrainConfig.from_dict({**json.loads(sys.argv[4]), "seed": seed})
    meta_train(config, run, progress=False, on_step=slow)
    print("finished", seed)
    """
)


def test_two_processes_on_one_run_directory_cannot_both_succeed(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    run, started = tmp_path / "run", tmp_path / "started"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    first = subprocess.Popen(
        [sys.executable, str(script), str(run), "0", str(started), json.dumps(LONGER.to_dict())],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(1200):
            if started.exists() or first.poll() is not None:
                break
            subprocess.run(["sleep", "0.1"])
        assert started.exists(), first.communicate()[1]
        second = subprocess.run(
            [sys.executable, str(script), str(run), "1", str(tmp_path / "s2"), json.dumps(LONGER.to_dict())],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        (tmp_path / "go").touch()
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0 and "finished 0" in out, err
    assert second.returncode != 0 and "RunDirectoryBusyError" in second.stderr and "in use by another" in second.stderr
    assert json.loads((run / rd.CONFIG).read_text())["seed"] == 0


# ----------------------------------------------------------------------------- damage is detected


def test_a_checkpoint_with_overwritten_bytes_is_refused_naming_it(run):
    data = bytearray((run / rd.CHECKPOINT).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 100] = b"\xff" * 100
    (run / rd.CHECKPOINT).write_bytes(bytes(data))
    with pytest.raises(errors.RunDirectoryError, match="checkpoint.msgpack is corrupt"):
        meta_train(MetaTrainConfig(**{**TINY, "num_meta_steps": 6}), run, progress=False)


def test_a_flipped_byte_in_the_trained_optimizer_is_refused_naming_it(run):
    data = bytearray((run / rd.OPTIMIZER_PARAMS).read_bytes())
    data[-3] ^= 0x01  # The last bytes are float32 weights: still valid msgpack.
    (run / rd.OPTIMIZER_PARAMS).write_bytes(bytes(data))
    with pytest.raises(errors.RunDirectoryError, match="optimizer.msgpack is corrupt: its checksum"):
        pretrained.load(run)


def test_an_edited_optimizer_json_is_refused(run):
    meta = json.loads((run / rd.OPTIMIZER_META).read_text())
    meta["optimizer_config"]["output_scale"] = 3.0
    (run / rd.OPTIMIZER_META).write_text(json.dumps(meta))
    with pytest.raises(errors.RunDirectoryError, match="optimizer.json is corrupt or was edited"):
        pretrained.load(run)


def test_non_finite_meta_parameters_are_refused_on_load(run):
    optimizer, phi = pretrained.load_meta_params(run)
    meta = rd.read_optimizer_meta(run)
    rd.save_optimizer(run, meta, jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), phi))  # Valid checksums.
    with pytest.raises(errors.RunDirectoryError, match="non-finite meta-parameters"):
        pretrained.load(run)


def test_non_finite_initial_meta_parameters_are_refused():
    phi = CONFIG.build_optimizer().init(jax.random.PRNGKey(0))
    bad = jax.tree.map(lambda x: x.at[...].set(jnp.inf), phi)
    with pytest.raises(errors.ConfigError, match="NaN or infinite"):
        meta_train(CONFIG, progress=False, init_meta_params=bad)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b"\xff\xfe" + b[2:], id="not-utf8"),
        pytest.param(lambda b: b.replace(b'"meta_loss"', b'"meta_lost"', 1), id="edited"),
    ],
)
def test_damaged_metrics_are_reported_on_resume_not_rewritten(run, damage):
    path = run / rd.METRICS
    path.write_bytes(damage(path.read_bytes()))
    damaged = path.read_bytes()
    with pytest.raises(errors.RunDirectoryError, match="metrics.jsonl is (damaged|missing)"):
        meta_train(MetaTrainConfig(**{**TINY, "num_meta_steps": 6}), run, progress=False)
    assert path.read_bytes() == damaged


def test_metrics_rows_past_the_checkpoint_are_accepted_and_dropped(run):
    # A kill between writing the metrics and the checkpoint leaves extra rows.
    with (run / rd.METRICS).open("a") as f:
        f.write(json.dumps({"step": 5, "meta_loss": 1.0, "grad_norm": 1.0, "skipped": 0, "seconds": 0.1}) + "\n")
    result = meta_train(MetaTrainConfig(**{**TINY, "num_meta_steps": 6}), run, progress=False)
    assert [r["step"] for r in result.history] == [1, 2, 3, 4, 5, 6] and result.history[4]["meta_loss"] != 1.0


def test_stray_temporary_files_are_removed_on_the_next_open(run):
    stray = run / f".{rd.CHECKPOINT}.abc123.tmp"
    stray.write_bytes(b"half a checkpoint")
    meta_train(MetaTrainConfig(**{**TINY, "num_meta_steps": 6}), run, progress=False)
    assert not stray.exists()


def test_run_files_follow_the_users_umask(tmp_path):
    old = os.umask(0o027)
    try:
        meta_train(CONFIG, tmp_path / "run", progress=False)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir() if p.name != rd.LOCK}
    assert modes and all(m == 0o640 for m in modes.values()), modes


# ----------------------------------------------------------------------------- SIGTERM


SIGTERMED = textwrap.dedent(
    """
    import json, os, signal, sys
    from l2l_jax import errors
    from l2l_jax.meta import MetaTrainConfig, meta_train

    def term_at_3(step, metrics):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    config = MetaTrainConfig.from_dict(json.loads(sys.argv[2]))
    try:
        meta_train(config, sys.argv[1], progress=False, on_step=term_at_3)
    except errors.Terminated as e:
        print("terminated", e.signum)
    """
)


def test_sigterm_saves_a_checkpoint_like_ctrl_c(tmp_path):
    script = tmp_path / "term.py"
    script.write_text(SIGTERMED)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run"), json.dumps(LONGER.to_dict())],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 0 and f"terminated {int(signal.SIGTERM)}" in out.stdout, out.stderr
    assert rd.read_optimizer_meta(tmp_path / "run")["meta_steps"] == 3
    assert [r["step"] for r in rd.read_metrics(tmp_path / "run" / rd.METRICS)] == [1, 2, 3]
    assert meta_train(LONGER, tmp_path / "run", progress=False).start_step == 3


# ----------------------------------------------------------------------------- a run directory is data


PLANTED_MODULE = textwrap.dedent(
    """
    from pathlib import Path
    Path(__file__).with_name("IMPORTED").write_text("the planted module ran")

    def make(**options):
        from l2l_jax.tasks import QuadraticFamily
        return QuadraticFamily(dim=3)
    """
)


def test_evaluating_a_planted_run_directory_runs_no_code_it_names(run, tmp_path, monkeypatch):
    (tmp_path / "planted_tasks.py").write_text(PLANTED_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    rd.update_optimizer_meta(run, task="planted_tasks:make", task_options={})
    with pytest.raises(errors.RunDirectoryError, match="code to import and run.*--task planted_tasks:make"):
        evaluate_run(run, num_tasks=2, num_tune_tasks=2, num_steps=2, progress=False, baselines=("adam",))
    assert not (tmp_path / "IMPORTED").exists()
    assert "planted_tasks" not in sys.modules
    # Named by the user, it is their code to run.
    evaluate_run(
        run, num_tasks=2, num_tune_tasks=2, num_steps=2, progress=False, baselines=("adam",), task="planted_tasks:make"
    )
    assert (tmp_path / "IMPORTED").exists()


def test_a_run_directory_naming_subprocess_getoutput_is_refused(run):
    rd.update_optimizer_meta(run, task="subprocess:getoutput", task_options={"cmd": "touch PWNED"})
    with pytest.raises(errors.RunDirectoryError, match="code to import and run"):
        evaluate_run(run, num_tasks=2, num_tune_tasks=2, num_steps=2, progress=False, baselines=("adam",))
    assert not Path("PWNED").exists()


def _strings(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


@pytest.mark.parametrize("name", pretrained.available())
def test_shipped_metadata_names_no_path_of_the_machine_it_was_made_on(name):
    for s in _strings(pretrained.info(name)):
        assert not any(marker in s for marker in ("/root", "/home", "/work", "/tmp", "/Users", ":\\\\")), s


def test_shipped_mnist_metadata_records_what_the_data_was():
    data = pretrained.info("mnist-lstm")["data"]
    assert data["split"] == "test" and data["examples"] == 10_000 and len(data["sha256"]) == 64


# ----------------------------------------------------------------------------- numerics of meta-training


class Huge(QuadraticFamily):
    """Quadratics scaled so that meta-gradients are finite but near 1e30."""

    name = "huge"

    def loss(self, task_params, params, key):
        return 1e26 * super().loss(task_params, params, key)


def test_huge_finite_meta_gradients_are_not_skipped_as_non_finite():
    config = MetaTrainConfig(**{**TINY, "validate_every": 0, "clip_norm": 1.0})
    result = meta_train(config, family=Huge(dim=3), progress=False)
    norms = [r["grad_norm"] for r in result.history]
    assert result.skipped == 0 and all(math.isfinite(n) and n > 1e20 for n in norms), norms
    before = CONFIG.build_optimizer().init(jax.random.fold_in(jax.random.PRNGKey(0), 0))
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), result.final_meta_params, before)
    assert max(jax.tree.leaves(moved)) > 0  # Clipped steps were applied, not zeroed.


def test_global_norm_does_not_overflow():
    from l2l_jax.meta.step import global_norm

    tree = {"a": jnp.full((4,), 1e30, jnp.float32), "b": jnp.zeros((2, 2), jnp.float32)}
    np.testing.assert_allclose(float(global_norm(tree)), 2e30, rtol=1e-6)
    assert not np.isfinite(float(global_norm({"a": jnp.array([1.0, jnp.nan])})))
    assert float(global_norm({})) == 0.0


class AlwaysNaN(QuadraticFamily):
    name = "always_nan"

    def loss(self, task_params, params, key):
        return jnp.nan * super().loss(task_params, params, key)


def test_a_run_whose_every_step_was_skipped_fails(tmp_path):
    config = MetaTrainConfig(**{**TINY, "validate_every": 0})
    with pytest.raises(errors.MetaTrainingError, match="every one of the 4 meta-steps was skipped"):
        meta_train(config, tmp_path / "run", family=AlwaysNaN(dim=3), progress=False)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"seed": "x"}, "seed must be an integer"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"seed": True}, "seed must be an integer"),
        ({"seed": -1}, "seed must be an integer"),
        ({"clip_norm": "1"}, "clip_norm must be a positive number"),
        ({"clip_norm": True}, "clip_norm must be a positive number"),
        ({"estimator_options": "no"}, "estimator_options"),
        ({"meta_lr": "0.1"}, "meta_lr must be a positive number"),
        ({"meta_optimizer": ["adam"]}, "unknown meta_optimizer"),
        ({"weighting": None}, "unknown weighting"),
        ({"task": 3}, "task must be a non-empty name"),
        ({"task_options": ["dim", 3]}, "task_options must be a dict"),
        ({"optimizer_options": {"hidden_size": object()}}, "optimizer_options must hold JSON values"),
    ],
)
def test_config_values_of_the_wrong_type_are_refused_at_construction(bad, match):
    with pytest.raises(errors.ConfigError, match=match):
        MetaTrainConfig(**{**TINY, **bad})


def test_a_config_that_is_not_a_dict_is_refused():
    with pytest.raises(errors.ConfigError, match="must be a dict"):
        MetaTrainConfig.from_dict([1, 2])
