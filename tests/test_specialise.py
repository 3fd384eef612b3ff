"""Specialising a trained optimizer: ``--init`` (``MetaTrainConfig.init``), the recipe, ``evaluate --against``."""

from __future__ import annotations

import json
import re
import shutil
import sys

import jax
import numpy as np
import pytest

from l2l_jax import MetaTrainConfig, cli, meta_train, pretrained
from l2l_jax import run_directory as rd
from l2l_jax.errors import ConfigError, RunDirectoryError, UnknownNameError
from l2l_jax.evaluation import Comparison, evaluate_run
from l2l_jax.meta.recipes import SPECIALISE_DEFAULTS, specialise_config, specialise_defaults

SOURCE = "quadratic-lstm"
#: A tiny fine-tuning run from ``SOURCE`` on 3-d quadratics; the rest is the recipe's.
TINY = [
    "--task",
    "quadratic",
    "--task-option",
    "dim=3",
    "--horizon",
    "10",
    "--meta-steps",
    "2",
    "--batch-size",
    "2",
    "--val-tasks",
    "2",
    "--validate-every",
    "1",
    "--checkpoint-every",
    "1",
    "--no-progress",
]


def tiny_config(init: str = SOURCE, **overrides) -> MetaTrainConfig:
    settings = {
        "task_options": {"dim": 3},
        "num_meta_steps": 2,
        "batch_size": 2,
        "num_val_tasks": 2,
        "validate_every": 1,
        "checkpoint_every": 1,
    }
    return specialise_config(init, "quadratic", horizon=10, **{**settings, **overrides})


def shipped_sha(name: str) -> str:
    return rd.sha256((pretrained.SHIPPED_DIR / name / rd.OPTIMIZER_PARAMS).read_bytes())


def copy_of(name: str, dest) -> str:
    shutil.copytree(pretrained.SHIPPED_DIR / name, dest)
    return str(dest)


def flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


# --- the recipe -----------------------------------------------------------------------


def test_the_recipe_fine_tunes_with_pes_on_runs_about_as_long_as_training():
    settings = specialise_defaults(200)
    assert settings["estimator"] == "pes" and settings["meta_lr"] == SPECIALISE_DEFAULTS["meta_lr"]
    assert (settings["horizon"], settings["truncation"], settings["min_horizon"]) == (200, 50, 100)
    assert settings["validation_horizon"] == 200
    assert specialise_defaults(30)["truncation"] == 30 and specialise_defaults(30)["min_horizon"] == 30
    assert specialise_defaults(120)["truncation"] == 40 and specialise_defaults(120)["min_horizon"] == 80
    assert specialise_defaults(200, truncation=20)["min_horizon"] == 100


def test_the_recipe_refuses_a_long_horizon_it_cannot_split():
    with pytest.raises(ConfigError, match="no divisor from 5 to 50"):
        specialise_defaults(101)
    assert specialise_config(SOURCE, "quadratic", 101, truncation=101).truncation == 101


# --- starting from a source ---------------------------------------------------------------


def test_init_from_a_shipped_name_starts_from_its_phi_and_records_name_and_checksum(tmp_path):
    config = tiny_config(num_meta_steps=1)
    # The recipe's warm-up starts the meta learning rate at 0: one meta-step leaves φ where the run started.
    assert config.meta_lr_warmup > 0
    result = meta_train(config, tmp_path / "run", progress=False)
    _, source_phi = pretrained.load_meta_params(SOURCE)
    np.testing.assert_allclose(flat(result.final_meta_params), flat(source_phi), atol=1e-9)
    config = json.loads((tmp_path / "run" / rd.CONFIG).read_text())
    assert config["init"] == SOURCE and config["init_sha256"] == shipped_sha(SOURCE)
    assert config["optimizer"] == "lstm" and config["optimizer_options"]["hidden_size"] == 20
    assert pretrained.info(tmp_path / "run")["training_config"]["init_sha256"] == shipped_sha(SOURCE)
    assert result.config.init_sha256 == shipped_sha(SOURCE)


def test_meta_train_init_from_a_shipped_name_and_then_from_that_run_directory(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert cli.main(["meta-train", "--init", SOURCE, *TINY, "--run-dir", str(first)]) == 0
    assert f"meta-training lstm from {SOURCE} on quadratic" in capsys.readouterr().out
    config = json.loads((first / rd.CONFIG).read_text())
    assert (config["estimator"], config["truncation"], config["min_horizon"]) == ("pes", 10, 10)
    assert config["meta_lr"] == SPECIALISE_DEFAULTS["meta_lr"] and config["estimator_options"] == {"num_pairs": 2}
    assert cli.main(["meta-train", "--init", str(first), *TINY, "--run-dir", str(second)]) == 0
    config = json.loads((second / rd.CONFIG).read_text())
    assert config["init"] == str(first)
    assert config["init_sha256"] == rd.sha256((first / rd.OPTIMIZER_PARAMS).read_bytes())
    pretrained.load(second)


def test_options_given_on_the_command_line_override_the_recipe(tmp_path):
    argv = ["meta-train", "--init", SOURCE, *TINY, "--estimator", "tbptt", "--meta-lr", "0.02", "--truncation", "5"]
    assert cli.main([*argv, "--run-dir", str(tmp_path / "run")]) == 0
    config = json.loads((tmp_path / "run" / rd.CONFIG).read_text())
    assert (config["estimator"], config["meta_lr"], config["truncation"], config["min_horizon"]) == (
        "tbptt",
        0.02,
        5,
        5,
    )


def test_a_run_directory_used_as_a_source_is_data_no_code_it_names_is_imported(tmp_path):
    source = tmp_path / "source"
    copy_of(SOURCE, source)
    meta = rd.read_optimizer_meta(source)
    _, phi = pretrained.load_meta_params(SOURCE)
    rd.save_optimizer(source, {**meta, "task": "evil_package_l2l_test:make", "task_options": {}}, phi)
    meta_train(tiny_config(init=str(source)), tmp_path / "run", progress=False)
    assert "evil_package_l2l_test" not in sys.modules


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--optimizer", "linear_rnn"], "starts from a lstm optimizer, but --optimizer is 'linear_rnn'"),
        (["--optimizer-option", "hidden_size=7"], r"hidden_size=7 \(source: 20\)"),
        (["--optimizer-option", "nonsense=1"], r"nonsense=1 \(source: 'no such option'\)"),
        (["--preset", "paper"], "preset='paper'"),
    ],
)
def test_options_that_conflict_with_the_source_are_refused(tmp_path, capsys, extra, match):
    assert cli.main(["meta-train", "--init", SOURCE, *TINY, *extra, "--run-dir", str(tmp_path / "run")]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_options_equal_to_the_sources_are_accepted(tmp_path):
    extra = ["--optimizer", "lstm", "--optimizer-option", "hidden_size=20"]
    assert cli.main(["meta-train", "--init", SOURCE, *TINY, *extra, "--run-dir", str(tmp_path / "run")]) == 0


def test_an_extension_of_the_sources_optimizer_may_be_switched_on_and_starts_from_its_updates(tmp_path, capsys):
    # A feature MLP's tensor features: φ starts as the source's, their weights at zero.
    argv = ["meta-train", "--init", "generalist", *TINY, "--optimizer-option", "tensor_features=true"]
    assert cli.main([*argv, "--run-dir", str(tmp_path / "run")]) == 0
    config = json.loads((tmp_path / "run" / rd.CONFIG).read_text())
    source, source_phi = pretrained.load_meta_params("generalist")
    assert config["optimizer_options"] == {**source.config(), "tensor_features": True}
    assert config["init_sha256"] == shipped_sha("generalist")
    resolved, start = MetaTrainConfig.from_dict(config).resolve_init()
    assert start.optimizer.config() == resolved.build_optimizer().config() and start.sha256 == shipped_sha("generalist")
    assert not np.any(np.asarray(start.meta_params["tensor_w"]))
    for a, b in zip(
        jax.tree.leaves(source_phi), jax.tree.leaves({k: v for k, v in start.meta_params.items() if k != "tensor_w"})
    ):
        np.testing.assert_array_equal(a, b)
    assert pretrained.load_meta_params(tmp_path / "run")[0].tensor_features
    # Another option still differs from the source's, and is refused.
    extra = ["--optimizer-option", "hidden_sizes=[8,8]"]
    assert cli.main([*argv, *extra, "--run-dir", str(tmp_path / "other")]) == 2
    assert "hidden_sizes=[8, 8] (source: [16, 16])" in capsys.readouterr().err


def test_a_free_option_of_the_sources_optimizer_may_be_set_and_phi_starts_as_trained(tmp_path, capsys):
    # A feature MLP's warm-up and step bound have no weights: φ is the source's, unchanged.
    source, source_phi = pretrained.load_meta_params("generalist")
    assert "warmup_steps" not in source.config() and source.config()["step_bound"] == 3.0
    argv = ["meta-train", "--init", "generalist", *TINY, "--optimizer-option", "warmup_steps=2"]
    assert cli.main([*argv, "--optimizer-option", "step_bound=2", "--run-dir", str(tmp_path / "run")]) == 0
    config = json.loads((tmp_path / "run" / rd.CONFIG).read_text())
    assert config["optimizer_options"] == {**source.config(), "warmup_steps": 2, "step_bound": 2}
    resolved, start = MetaTrainConfig.from_dict(config).resolve_init()  # as a resume resolves it
    assert start.optimizer.config() == resolved.build_optimizer().config() and start.optimizer.warmup_steps == 2
    assert start.sha256 == shipped_sha("generalist")
    assert jax.tree.structure(start.meta_params) == jax.tree.structure(source_phi)
    for a, b in zip(jax.tree.leaves(source_phi), jax.tree.leaves(start.meta_params)):
        np.testing.assert_array_equal(a, b)
    assert pretrained.load_meta_params(tmp_path / "run")[0].warmup_steps == 2
    # A free option with a bad value is refused as the optimizer refuses it; an option with weights still differs.
    assert cli.main(["meta-train", "--init", "generalist", *TINY, "--optimizer-option", "warmup_steps=0",
                     "--run-dir", str(tmp_path / "bad")]) == 2  # fmt: skip
    assert "warmup_steps" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert cli.main([*argv, "--optimizer-option", "hidden_sizes=[8,8]", "--run-dir", str(tmp_path / "other")]) == 2
    assert "hidden_sizes=[8, 8] (source: [16, 16])" in capsys.readouterr().err


def test_init_refuses_optimizer_or_phi_passed_in_code(tmp_path):
    optimizer, phi = pretrained.load_meta_params(SOURCE)
    with pytest.raises(ConfigError, match="do not also pass optimizer= or init_meta_params="):
        meta_train(tiny_config(), None, init_meta_params=phi, progress=False)
    with pytest.raises(ConfigError, match="do not also pass"):
        meta_train(tiny_config(), None, optimizer=optimizer, progress=False)


def test_a_damaged_or_missing_source_is_refused(tmp_path):
    damaged = tmp_path / "damaged"
    copy_of(SOURCE, damaged)
    data = bytearray((damaged / rd.OPTIMIZER_PARAMS).read_bytes())
    data[-1] ^= 1
    (damaged / rd.OPTIMIZER_PARAMS).write_bytes(bytes(data))
    with pytest.raises(RunDirectoryError, match="checksum"):
        meta_train(tiny_config(init=str(damaged)), tmp_path / "run", progress=False)
    edited = tmp_path / "edited"
    copy_of(SOURCE, edited)
    meta = json.loads((edited / rd.OPTIMIZER_META).read_text())
    (edited / rd.OPTIMIZER_META).write_text(json.dumps({**meta, "optimizer_config": {"hidden_size": 7}}))
    with pytest.raises(RunDirectoryError, match="edited"):
        meta_train(tiny_config(init=str(edited)), tmp_path / "run", progress=False)
    with pytest.raises(UnknownNameError, match="neither a shipped learned optimizer"):
        meta_train(tiny_config(init=str(tmp_path / "missing")), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_config_checks_init_and_its_checksum():
    with pytest.raises(ConfigError, match="init must be"):
        MetaTrainConfig(init="")
    with pytest.raises(ConfigError, match="64 hexadecimal digits"):
        MetaTrainConfig(init=SOURCE, init_sha256="abc")
    with pytest.raises(ConfigError, match="only with init"):
        MetaTrainConfig(init_sha256="0" * 64)
    with pytest.raises(ConfigError, match="has changed since this run started"):
        meta_train(tiny_config(init_sha256="0" * 64), None, progress=False)


# --- resume ---------------------------------------------------------------------------------


def test_a_specialised_run_resumes_exactly(tmp_path):
    whole = meta_train(tiny_config(num_meta_steps=4), tmp_path / "whole", progress=False)
    meta_train(tiny_config(num_meta_steps=2), tmp_path / "split", progress=False)
    resumed = meta_train(tiny_config(num_meta_steps=4), tmp_path / "split", progress=False)
    assert resumed.start_step == 2
    np.testing.assert_array_equal(flat(resumed.final_meta_params), flat(whole.final_meta_params))


def test_a_resume_refuses_a_source_that_changed_since_the_run_started(tmp_path, capsys):
    source = copy_of(SOURCE, tmp_path / "source")
    run = str(tmp_path / "run")
    argv = ["meta-train", "--init", source, *TINY, "--run-dir", run]
    assert cli.main(argv) == 0
    _, phi = pretrained.load_meta_params(source)
    rd.save_optimizer(
        tmp_path / "source", rd.read_optimizer_meta(tmp_path / "source"), jax.tree.map(lambda x: x * 2, phi)
    )
    assert cli.main(_with(argv, "--meta-steps", "4")) == 2
    assert "has changed since this run started from it" in capsys.readouterr().err
    assert cli.main([*_with(argv, "--meta-steps", "4"), "--overwrite"]) == 0


def _with(argv: list[str], flag: str, value: str) -> list[str]:
    i = argv.index(flag)
    return [*argv[: i + 1], value, *argv[i + 2 :]]


# --- evaluate --against ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def specialised_run(tmp_path_factory):
    """A finished run of ``meta-train --init SOURCE`` with TINY (run once for the module); tests evaluate copies."""
    run = tmp_path_factory.mktemp("specialised") / "run"
    assert cli.main(["meta-train", "--init", SOURCE, *TINY, "--run-dir", str(run)]) == 0
    return run


def test_evaluate_compares_with_the_source_task_by_task_at_the_runs_horizon(tmp_path, specialised_run, capsys):
    run = shutil.copytree(specialised_run, tmp_path / "run")
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), "--tasks", "6", "--tune-tasks", "4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| learned lstm minus | mean difference (step 10)" in out and f"| {SOURCE} (start) |" in out
    results = json.loads((run / rd.EVALUATION_JSON).read_text())
    assert results["num_steps"] == 10 and results["reference"] == "learned lstm"
    paired = {r["optimizer"]: r for r in results["paired"]}
    assert set(paired) == {f"{SOURCE} (start)", "sgd", "momentum", "nag", "rmsprop", "adam"}
    assert all(r["verdict"] in ("win", "loss", "tie") and r["num_tasks"] == 6 for r in paired.values())
    assert "minus" in (run / rd.EVALUATION_TABLE).read_text()
    # --against names other trained optimizers instead of the source.
    comparison = evaluate_run(  # As many tasks as above: only the generalist's curves are new programs.
        run, num_tasks=6, num_tune_tasks=4, against=["generalist"], baselines=("adam",), progress=False
    )
    assert set(comparison.curves) == {"learned lstm", "generalist", "adam"}


def test_evaluate_against_an_unknown_name_is_one_clear_line(tmp_path, specialised_run, capsys):
    run = shutil.copytree(specialised_run, tmp_path / "run")
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), "--no-progress", "--against", "no-such-optimizer"]) == 2
    assert "'no-such-optimizer' is neither a shipped learned optimizer" in capsys.readouterr().err


def test_evaluate_of_a_run_whose_source_is_gone_says_how_to_go_on(tmp_path, capsys):
    source, run = copy_of(SOURCE, tmp_path / "source"), tmp_path / "run"
    assert cli.main(["meta-train", "--init", source, *TINY, "--run-dir", str(run)]) == 0
    shutil.rmtree(source)
    capsys.readouterr()
    # As many tasks as in test_evaluate_compares_with_the_source_task_by_task_at_the_runs_horizon: the same programs.
    evaluate = ["evaluate", str(run), "--tasks", "6", "--tune-tasks", "4", "--no-progress"]
    assert cli.main(evaluate) == 2
    assert "--no-against" in capsys.readouterr().err
    assert cli.main([*evaluate, "--no-against"]) == 0
    paired = json.loads((run / rd.EVALUATION_JSON).read_text())["paired"]
    assert {r["optimizer"] for r in paired} == {"sgd", "momentum", "nag", "rmsprop", "adam"}
    assert cli.main([*evaluate, "--no-against", "--against", "generalist"]) == 2
    assert "contradict" in capsys.readouterr().err


def test_paired_differences_call_a_win_only_beyond_two_standard_errors():
    ones = np.ones((4, 3))
    curves = {
        "mine": np.stack([ones[:, 0], ones[:, 0] * np.array([1.0, 1.0, 1.0, 1.0])], axis=1),
        "close": np.stack([ones[:, 0], np.array([1.1, 0.9, 1.2, 0.8])], axis=1),
        "worse": np.stack([ones[:, 0], np.array([2.0, 2.1, 1.9, 2.0])], axis=1),
    }
    comparison = Comparison(curves, {"mine": None, "close": 0.1, "worse": 0.1}, {}, num_steps=1)
    rows = {r["optimizer"]: r for r in comparison.paired("mine")}
    assert rows["worse"]["verdict"] == "win" and rows["worse"]["mean_difference"] == pytest.approx(-1.0)
    assert rows["worse"]["paired_stderr"] == pytest.approx(np.std([0.0, -0.1, 0.1, 0.0], ddof=1) / 2)
    assert rows["close"]["verdict"] == "tie" and rows["close"]["mean_difference"] == pytest.approx(0.0)
    assert {r["optimizer"]: r["verdict"] for r in comparison.paired("worse")}["mine"] == "loss"
    with pytest.raises(ConfigError, match="no optimizer named 'other'"):
        comparison.paired("other")
