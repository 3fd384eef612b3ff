"""Meta-training: it learns, is deterministic, resumes exactly, survives non-finite steps."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from l2l_jax import errors, pretrained
from l2l_jax.meta import MetaTrainConfig, init_inner, meta_train, truncation_loss
from l2l_jax import run_directory as rd
from l2l_jax.optimizers import lstm
from l2l_jax.tasks import QuadraticFamily, TaskFamily

SMALL = dict(
    task="quadratic",
    task_options={"dim": 4},
    optimizer_options={"hidden_size": 8},
    horizon=20,
    truncation=5,
    batch_size=8,
    meta_lr=3e-3,
    validate_every=5,
    num_val_tasks=8,
    checkpoint_every=4,
)


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


@pytest.fixture(scope="module")
def ten_steps():
    """SMALL meta-trained for 10 meta-steps without a run directory: the uninterrupted run several tests compare with.

    Run once for the module; no test changes it.
    """
    return meta_train(MetaTrainConfig(**{**SMALL, "num_meta_steps": 10}), progress=False)


@pytest.fixture(scope="module")
def five_step_run(tmp_path_factory):
    """A finished run of SMALL for 5 meta-steps (validated at step 5): its run directory and result.

    Run once for the module; tests that change the run directory change a copy (``shutil.copytree``).
    """
    run = tmp_path_factory.mktemp("five-steps") / "run"
    return run, meta_train(MetaTrainConfig(**{**SMALL, "num_meta_steps": 5}), run, progress=False)


def test_meta_training_lowers_the_meta_loss_on_held_out_tasks():
    config = MetaTrainConfig(**{**SMALL, "num_meta_steps": 120, "validate_every": 40, "batch_size": 16})
    result = meta_train(config, progress=False)
    family = QuadraticFamily(dim=4)
    opt = result.optimizer
    held_out = init_inner(opt, result.meta_params, family, jax.random.PRNGKey(99), 64)

    def loss(phi):
        return float(truncation_loss(phi, opt, family, held_out, 20)[0])

    before = loss(opt.init(jax.random.fold_in(jax.random.PRNGKey(0), 0)))
    after = loss(result.meta_params)
    assert after < 0.5 * before, (before, after)
    assert result.skipped == 0


def test_same_seed_same_result_and_other_seed_differs(ten_steps):
    config = MetaTrainConfig(**{**SMALL, "num_meta_steps": 10})
    a = ten_steps
    b = meta_train(config, progress=False)
    c = meta_train(MetaTrainConfig(**{**SMALL, "num_meta_steps": 10, "seed": 1}), progress=False)
    np.testing.assert_array_equal(flat(a.final_meta_params), flat(b.final_meta_params))
    assert [r["meta_loss"] for r in a.history] == [r["meta_loss"] for r in b.history]
    assert not np.allclose(flat(a.final_meta_params), flat(c.final_meta_params))


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, ten_steps):
    config = MetaTrainConfig(**{**SMALL, "num_meta_steps": 10})
    whole = ten_steps

    def interrupt_at_7(step, metrics):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        meta_train(config, tmp_path / "split", progress=False, on_step=interrupt_at_7)
    saved = json.loads((tmp_path / "split" / rd.OPTIMIZER_META).read_text())
    assert saved["meta_steps"] == 7  # Checkpointed at the interruption, not only at step 4.
    resumed = meta_train(config, tmp_path / "split", progress=False)

    np.testing.assert_array_equal(flat(whole.final_meta_params), flat(resumed.final_meta_params))
    np.testing.assert_array_equal(flat(whole.meta_params), flat(resumed.meta_params))
    assert resumed.history == [
        {**r, "seconds": s["seconds"]} for r, s in zip(whole.history, resumed.history)
    ]  # Every step logged once, same numbers (timings aside).
    rows = rd.read_metrics(tmp_path / "split" / rd.METRICS)
    assert [r["step"] for r in rows] == list(range(1, 11))


def test_finished_run_can_be_extended(tmp_path, ten_steps):
    short = meta_train(MetaTrainConfig(**{**SMALL, "num_meta_steps": 4}), tmp_path / "run", progress=False)
    longer = meta_train(MetaTrainConfig(**{**SMALL, "num_meta_steps": 10}), tmp_path / "run", progress=False)
    straight = ten_steps
    assert len(short.history) == 4 and len(longer.history) == 10
    np.testing.assert_array_equal(flat(longer.final_meta_params), flat(straight.final_meta_params))
    np.testing.assert_array_equal(flat(longer.meta_params), flat(straight.meta_params))  # Same best φ.
    # Before any validation the latest φ is the result, not the untrained one.
    np.testing.assert_array_equal(flat(short.meta_params), flat(short.final_meta_params))


def test_extending_a_run_drops_its_stale_evaluation(tmp_path, five_step_run):
    from l2l_jax.evaluation import evaluate_run

    shutil.copytree(five_step_run[0], tmp_path / "run")  # 5 meta-steps of SMALL
    evaluate_run(tmp_path / "run", num_tasks=4, num_tune_tasks=4, num_steps=5, progress=False, baselines=("adam",))
    assert "evaluation" in pretrained.info(tmp_path / "run") and (tmp_path / "run" / rd.EVALUATION_JSON).is_file()
    meta_train(MetaTrainConfig(**{**SMALL, "num_meta_steps": 10}), tmp_path / "run", progress=False)
    assert "evaluation" not in pretrained.info(tmp_path / "run")
    assert not (tmp_path / "run" / rd.EVALUATION_JSON).exists()


def test_resuming_the_same_config_with_tuple_options(tmp_path):
    config = MetaTrainConfig(
        **{**SMALL, "optimizer": "linear_rnn", "optimizer_options": {"phi": (0.01, 0.5, -1.0)}, "num_meta_steps": 2}
    )
    meta_train(config, tmp_path / "run", progress=False)
    meta_train(config, tmp_path / "run", progress=False)  # Not refused as "different".


def test_a_corrupt_config_in_the_run_directory_is_reported(tmp_path, five_step_run):
    shutil.copytree(five_step_run[0], tmp_path / "run")
    (tmp_path / "run" / rd.CONFIG).write_text("[1, 2]")
    with pytest.raises(errors.RunDirectoryError, match="not a JSON object"):
        meta_train(MetaTrainConfig(**{**SMALL, "num_meta_steps": 5}), tmp_path / "run", progress=False)


def test_a_shipped_name_shadowed_by_a_local_directory_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quadratic-lstm").mkdir()
    with pytest.raises(errors.UnknownNameError, match="both a shipped"):
        pretrained.load("quadratic-lstm")


def test_resuming_with_another_config_is_refused(tmp_path, five_step_run):
    # Another seed: the program that overwrites the run is test_same_seed_same_result_and_other_seed_differs's.
    shutil.copytree(five_step_run[0], tmp_path / "run")  # 5 meta-steps of SMALL, seed 0
    other = MetaTrainConfig(**{**SMALL, "num_meta_steps": 5, "seed": 1})
    with pytest.raises(errors.ConfigError, match="seed"):
        meta_train(other, tmp_path / "run", progress=False)
    # Not resuming does not make it ours to replace ...
    with pytest.raises(errors.RunDirectoryError, match="different configuration .seed differ"):
        meta_train(other, tmp_path / "run", progress=False, resume=False)
    # ... overwriting does.
    meta_train(other, tmp_path / "run", progress=False, overwrite=True)
    assert json.loads((tmp_path / "run" / rd.CONFIG).read_text())["seed"] == 1


class SometimesNaN(TaskFamily):
    """A quadratic whose loss is NaN for about a third of the sampled tasks."""

    name = "sometimes_nan"

    def config(self):
        return {}

    def sample(self, key):
        return {"bad": jax.random.bernoulli(key, 0.3)}

    def init(self, task_params, key):
        return jax.random.normal(key, (3,))

    def loss(self, task_params, params, key):
        return jnp.where(task_params["bad"], jnp.nan, jnp.sum(params**2))


@pytest.mark.parametrize("steps_per_call", [1, 5])
def test_non_finite_meta_steps_are_skipped_and_counted(steps_per_call):
    config = MetaTrainConfig(**{**SMALL, "num_meta_steps": 12, "batch_size": 2, "validate_every": 0})
    result = meta_train(config, family=SometimesNaN(), progress=False, steps_per_call=steps_per_call)
    skipped_rows = [r for r in result.history if not np.isfinite(r["meta_loss"])]
    assert result.skipped == len(skipped_rows) > 0
    assert len(skipped_rows) < 12  # Some steps were finite and applied.
    assert np.all(np.isfinite(flat(result.final_meta_params)))


def test_run_directory_contents_and_pretrained_load(five_step_run):
    run, result = five_step_run
    for name in (rd.CONFIG, rd.METRICS, rd.CHECKPOINT, rd.OPTIMIZER_META, rd.OPTIMIZER_PARAMS):
        assert (run / name).is_file(), name
    assert not (run / rd.PLOT).exists()  # Plotting is the caller's job (the CLI plots).
    opt, phi = pretrained.load_meta_params(run)
    np.testing.assert_array_equal(flat(phi), flat(result.meta_params))
    tx = pretrained.load(run)
    params = {"w": jnp.ones(3)}
    # Compiled: the optimizer's ops one by one would compile one program each.
    updates, _ = jax.jit(tx.update)(params, jax.jit(tx.init)(params))
    expected, _ = jax.jit(result.as_optax().update)(params, jax.jit(result.as_optax().init)(params))
    np.testing.assert_array_equal(updates["w"], expected["w"])


def test_pretrained_load_errors(tmp_path, five_step_run):
    with pytest.raises(errors.UnknownNameError, match="neither a shipped"):
        pretrained.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.RunDirectoryError, match="optimizer.json is missing"):
        pretrained.load(tmp_path / "empty")
    shutil.copytree(five_step_run[0], tmp_path / "run")
    (tmp_path / "run" / rd.OPTIMIZER_PARAMS).write_bytes(b"\x93not msgpack")
    with pytest.raises(errors.RunDirectoryError, match="corrupt"):
        pretrained.load(tmp_path / "run")
    (tmp_path / "run" / rd.OPTIMIZER_META).write_text("{not json")
    with pytest.raises(errors.RunDirectoryError, match="corrupt"):
        pretrained.load(tmp_path / "run")


def test_weights_of_another_architecture_are_reported(tmp_path, five_step_run):
    shutil.copytree(five_step_run[0], tmp_path / "run")
    meta = rd.read_optimizer_meta(tmp_path / "run")
    rd.update_optimizer_meta(tmp_path / "run", optimizer_config={**meta["optimizer_config"], "hidden_size": 20})
    with pytest.raises(errors.RunDirectoryError, match="does not fit"):
        pretrained.load(tmp_path / "run")


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"horizon": 0}, "horizon"),
        ({"truncation": 0}, "truncation"),
        ({"horizon": 10, "truncation": 3}, "divide"),
        ({"batch_size": -1}, "batch_size"),
        ({"meta_lr": -0.1}, "meta_lr"),
        ({"meta_lr": float("nan")}, "meta_lr"),
        ({"num_meta_steps": 0}, "num_meta_steps"),
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"weighting": "exp"}, "weighting"),
        ({"meta_optimizer": "lion"}, "meta_optimizer"),
        ({"tasks_per_chunk": 3}, "tasks_per_chunk=3 must divide the batch of 8 tasks"),
        ({"tasks_per_chunk": 0}, "tasks_per_chunk"),
    ],
)
def test_nonsensical_configs_are_refused(bad, match):
    with pytest.raises(errors.ConfigError, match=match):
        MetaTrainConfig(**{**SMALL, **bad})


def test_unknown_task_and_optimizer_names():
    with pytest.raises(errors.UnknownNameError, match="unknown task 'mnist2'"):
        MetaTrainConfig(task="mnist2").build_task()
    with pytest.raises(errors.UnknownNameError, match="unknown learned optimizer"):
        MetaTrainConfig(optimizer="gru").build_optimizer()
    with pytest.raises(errors.ConfigError, match="task 'quadratic' has no option 'dimension'; valid options: 'dim'"):
        MetaTrainConfig(task_options={"dimension": 3}).build_task()


def test_meta_training_in_chunks_of_tasks_follows_the_same_path(ten_steps):
    base = MetaTrainConfig(**{**SMALL, "num_meta_steps": 10})
    at_once = ten_steps
    chunked = meta_train(MetaTrainConfig(**{**base.to_dict(), "tasks_per_chunk": 2}), progress=False)
    np.testing.assert_allclose(
        [h["meta_loss"] for h in chunked.history], [h["meta_loss"] for h in at_once.history], rtol=1e-4
    )
    np.testing.assert_allclose(flat(chunked.final_meta_params), flat(at_once.final_meta_params), rtol=1e-4, atol=1e-6)


def test_several_meta_steps_per_call_follow_the_same_path(ten_steps):
    # Calls of 2 steps cross the task resets (every 4 steps: call 9-10 draws new tasks at
    # step 9) and must stop at the validation (every 5) and checkpoint (every 4) steps:
    # calls 1-2, 3-4, 5, 6-7, 8, 9-10. (Each length of call compiles its own program; calls
    # of 1 step are the plain run's. Calls of 3 would also make calls of 2.)
    config = MetaTrainConfig(**{**SMALL, "num_meta_steps": 10})
    one = ten_steps
    seen = []
    two = meta_train(config, progress=False, steps_per_call=2, on_step=lambda step, row: seen.append(step))
    assert seen == [r["step"] for r in two.history] == list(range(1, 11))
    assert [r["step"] for r in two.history if "val_loss" in r] == [5, 10]
    for key in ("meta_loss", "grad_norm", "val_loss"):
        np.testing.assert_allclose(
            [r[key] for r in two.history if key in r], [r[key] for r in one.history if key in r], rtol=1e-5
        )
    np.testing.assert_allclose(flat(two.final_meta_params), flat(one.final_meta_params), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(flat(two.meta_params), flat(one.meta_params), rtol=1e-5, atol=1e-7)


def test_a_run_resumes_with_another_number_of_steps_per_call(tmp_path):
    config = MetaTrainConfig(**{**SMALL, "num_meta_steps": 13})
    whole = meta_train(config, progress=False)

    def interrupt_at_6(step, metrics):
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        meta_train(config, tmp_path / "run", progress=False, steps_per_call=3, on_step=interrupt_at_6)
    # Calls: 1-3, 4 (checkpoint), 5 (validation), 6-8. Step 6 is reported after its
    # call has finished, so the interruption keeps the whole call.
    saved = json.loads((tmp_path / "run" / rd.OPTIMIZER_META).read_text())
    assert saved["meta_steps"] == 8
    resumed = meta_train(config, tmp_path / "run", progress=False, steps_per_call=2)
    assert [r["step"] for r in resumed.history] == list(range(1, 14))
    np.testing.assert_allclose(flat(resumed.final_meta_params), flat(whole.final_meta_params), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_a_nonsensical_number_of_steps_per_call_is_refused(bad):
    with pytest.raises(errors.ConfigError, match="steps_per_call must be a positive integer"):
        meta_train(MetaTrainConfig(**{**SMALL, "num_meta_steps": 2}), progress=False, steps_per_call=bad)


def test_lstm_meta_params_are_finite_after_training_with_second_order():
    config = MetaTrainConfig(
        **{**SMALL, "num_meta_steps": 3, "estimator_options": {"first_order": False, "remat": True}}
    )
    result = meta_train(config, progress=False)
    assert np.all(np.isfinite(flat(result.final_meta_params)))
    assert isinstance(result.optimizer, type(lstm()))


def test_log_weighting_is_the_sum_of_log_losses_after_the_start():
    from l2l_jax.meta import weighted_loss

    losses = jnp.asarray([[4.0, 2.0, 1.0, 0.5]])
    np.testing.assert_allclose(weighted_loss(losses, "log"), [np.log(2.0) + np.log(1.0) + np.log(0.5)], rtol=1e-6)
    assert np.isfinite(weighted_loss(jnp.asarray([[1.0, 0.0]]), "log")).all()  # clamped, not -inf


def test_meta_training_with_log_weighting_and_segment_remat_lowers_the_meta_loss_on_held_out_tasks():
    config = MetaTrainConfig(
        **{**SMALL, "num_meta_steps": 40, "weighting": "log", "estimator_options": {"remat": "segments"}}
    )
    result = meta_train(config, progress=False)
    vals = [h["val_loss"] for h in result.history if "val_loss" in h]
    assert result.skipped == 0
    assert result.best_val < vals[0] - 0.5  # Σ log f over 20 steps: 0.5 is a 2.5% lower geometric mean
