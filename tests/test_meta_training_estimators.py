"""Meta-training with each estimator (tbptt, es, pes) and on task mixtures: it trains, resumes, shards, guards.

The estimators themselves (unbiasedness, shapes, options) are tested in ``test_estimators.py``
and the mixture's batch split in ``test_task_mixture.py``; here they run inside
``l2l_jax.meta.meta_train`` and ``l2l_jax.meta.step.meta_step``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from l2l_jax import errors
from l2l_jax import optimizers as optimizers_lib
from l2l_jax import run_directory as rd
from l2l_jax.meta import MetaTrainConfig, meta_train
from l2l_jax.meta.step import MetaTrainState, init_members, meta_step
from l2l_jax.meta.unroll import InnerState
from l2l_jax.tasks import QuadraticFamily

# Runs restart every 2 meta-steps (horizon 8 = 2 truncations of 4), so checkpoints and
# validations at steps 3 and 6 fall in the middle of a run, where PES's accumulated
# perturbation is not zero.
BASE = {
    "task": "quadratic",
    "task_options": {"dim": 2},
    "optimizer": "linear_rnn",
    "num_meta_steps": 6,
    "horizon": 8,
    "truncation": 4,
    "batch_size": 4,
    "meta_lr": 3e-3,
    "validate_every": 3,
    "num_val_tasks": 4,
    "checkpoint_every": 3,
}
ANTITHETIC = {"sigma": 0.05, "num_pairs": 2}
PLAIN = {
    "tbptt": MetaTrainConfig(**BASE),
    "es": MetaTrainConfig(**BASE, estimator="es", estimator_options=ANTITHETIC),
    "pes": MetaTrainConfig(**BASE, estimator="pes", estimator_options=ANTITHETIC),
}
MIXTURE_OPTIONS = {
    "members": [
        {"task": "quadratic", "options": {"dim": 2}},
        {"task": "quadratic", "options": {"dim": 5}, "weight": 3},
    ]
}
MIXTURES = {
    name: dataclasses.replace(PLAIN[name], task="mixture", task_options=MIXTURE_OPTIONS) for name in ("tbptt", "pes")
}


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


def phi0(config: MetaTrainConfig):
    """The φ every run here starts from (not the seed's own initialisation)."""
    return config.build_optimizer().init(jax.random.PRNGKey(7))


def train(config: MetaTrainConfig, run_dir=None, **kwargs):
    return meta_train(config, run_dir, progress=False, init_meta_params=phi0(config), **kwargs)


def without_timings(rows):
    return [{k: x for k, x in r.items() if k != "seconds"} for r in rows]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``trained(configs, name) -> (result, run_dir)``: one whole run per config, made once per module.

    Tests that change a run directory work on a copy (``copy_run``).
    """
    done = {}

    def get(configs: dict[str, MetaTrainConfig], name: str):
        key = (id(configs), name)
        if key not in done:
            run_dir = tmp_path_factory.mktemp(f"{configs[name].task}-{name}") / "run"
            done[key] = (train(configs[name], run_dir), run_dir)
        return done[key]

    return get


def copy_run(run_dir, tmp_path):
    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run"


# --------------------------------------------------------------------------- training with each estimator


@pytest.mark.parametrize("name", ["tbptt", "es", "pes"])
def test_each_estimator_meta_trains_and_its_run_records_it(trained, name):
    config = PLAIN[name]
    result, run_dir = trained(PLAIN, name)
    assert not np.allclose(flat(result.final_meta_params), flat(phi0(config)))
    assert np.all(np.isfinite(flat(result.final_meta_params)))
    assert result.skipped == 0

    saved = json.loads((run_dir / rd.CONFIG).read_text())
    assert (saved["estimator"], saved["estimator_options"]) == (name, {} if name == "tbptt" else ANTITHETIC)
    assert MetaTrainConfig.from_dict(saved) == config  # config.json, "components" and all, reads back.
    assert saved["components"] == {
        "task": {"type": "QuadraticFamily", "name": "quadratic", "config": QuadraticFamily(dim=2).config()},
        "optimizer": {"name": result.optimizer.name, "config": result.optimizer.config()},
        "meta_optimizer": "adam",
    }

    rows = rd.read_metrics(run_dir / rd.METRICS)
    assert rows == result.history
    assert [r["step"] for r in rows] == list(range(1, 7))
    for r in rows:
        assert np.isfinite(r["meta_loss"]) and np.isfinite(r["grad_norm"]) and r["grad_norm"] > 0, r
    assert [r["step"] for r in rows if "val_loss" in r] == [3, 6]
    assert all(np.isfinite(r["val_loss"]) for r in rows if "val_loss" in r)


@pytest.mark.parametrize("name", ["es", "pes"])
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(trained, tmp_path, name):
    config = PLAIN[name]
    whole, _ = trained(PLAIN, name)
    run_dir = tmp_path / "run"
    # Stopped in the middle of a run: once by finishing a shorter run (extended afterwards,
    # as a constant schedule allows), once by an interruption.
    train(dataclasses.replace(config, num_meta_steps=3), run_dir)

    def interrupt_at_5(step, metrics):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, run_dir, on_step=interrupt_at_5)
    assert rd.read_optimizer_meta(run_dir)["meta_steps"] == 5
    resumed = train(config, run_dir)

    assert resumed.start_step == 5
    np.testing.assert_array_equal(flat(resumed.final_meta_params), flat(whole.final_meta_params))
    np.testing.assert_array_equal(flat(resumed.meta_params), flat(whole.meta_params))
    assert without_timings(resumed.history) == without_timings(whole.history)
    assert [r["step"] for r in rd.read_metrics(run_dir / rd.METRICS)] == list(range(1, 7))


@pytest.mark.parametrize("name", ["es", "pes"])
def test_several_meta_steps_per_call_follow_the_same_path(trained, name):
    # Calls of 3 steps (1-3, 4-6) cross the restarts after steps 2 and 4.
    one, _ = trained(PLAIN, name)
    seen = []
    three = train(PLAIN[name], steps_per_call=3, on_step=lambda step, row: seen.append(step))
    assert seen == [r["step"] for r in three.history] == list(range(1, 7))
    for key in ("meta_loss", "grad_norm", "val_loss"):
        np.testing.assert_allclose(
            [r[key] for r in three.history if key in r], [r[key] for r in one.history if key in r], rtol=1e-5
        )
    np.testing.assert_allclose(flat(three.final_meta_params), flat(one.final_meta_params), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(flat(three.meta_params), flat(one.meta_params), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- meta_step: restarts


TASK_KEY, PERTURBATION_KEY = jax.random.PRNGKey(11), jax.random.PRNGKey(12)


@functools.cache
def stepping(name: str):
    """``(estimator, step, fresh_estimate, s0)`` for ``PLAIN[name]``: a jitted ``meta_step`` and its first state."""
    config = PLAIN[name]
    optimizer = config.build_optimizer()
    members = config.build_members(optimizer, config.build_task())
    tx = config.build_meta_optimizer()
    phi = phi0(config)
    s0 = MetaTrainState(
        step=jnp.zeros((), jnp.int32),
        meta_params=phi,
        meta_opt_state=tx.init(phi),
        inner=init_members(members, phi, jax.random.fold_in(TASK_KEY, 0)),
        healthy=jnp.array(True),
        skipped=jnp.zeros((), jnp.int32),
        best_meta_params=phi,
        best_val=jnp.array(jnp.inf, jnp.float32),
        best_step=jnp.zeros((), jnp.int32),
    )
    step = jax.jit(
        lambda s: meta_step(
            s, members, tx, horizon=config.horizon, task_key=TASK_KEY, perturbation_key=PERTURBATION_KEY
        )
    )
    estimator = members[0].estimator

    @jax.jit
    def fresh_estimate(phi, at_step):
        """What ``meta_step`` at ``at_step`` estimates from restarted runs: fresh tasks, zero accumulation."""
        state = estimator.init(phi, jax.random.fold_in(TASK_KEY, at_step))
        return estimator.estimate(phi, state, jax.random.fold_in(PERTURBATION_KEY, at_step))

    return estimator, step, fresh_estimate, s0


def assert_trees_close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_pes_runs_and_accumulated_perturbation_restart_after_the_horizon():
    estimator, step, fresh_estimate, s0 = stepping("pes")
    s1, _ = step(s0)
    s2, _ = step(s1)
    s3, m3 = step(s2)
    assert [int(estimator.inner_step(s.inner)) for s in (s0, s1, s2, s3)] == [0, 4, 8, 4]
    eps = [fresh_estimate(s.meta_params, k).state.accumulated for k, s in enumerate((s0, s1, s2))]
    assert np.all(flat(eps[0]) != 0)
    # Within a run the perturbations add up; the restart at step 3 starts again from its own ε.
    # (Up to float rounding: the two programs may fuse σ·z + ξ differently.)
    assert_trees_close(s1.inner.accumulated, eps[0])
    assert_trees_close(s2.inner.accumulated, jax.tree.map(jnp.add, eps[0], eps[1]))
    assert_trees_close(s3.inner.accumulated, eps[2])
    expected = fresh_estimate(s2.meta_params, 2)
    assert_trees_close(s3.inner, expected.state)
    np.testing.assert_allclose(float(m3["meta_loss"]), float(expected.meta_loss), rtol=1e-5)
    assert int(s3.skipped) == 0


def poisoned(inner):
    """The inner runs with every parameter +inf: the next truncation's loss is not finite."""

    def poison(x):
        if not isinstance(x, InnerState):
            return x
        return x._replace(params=jax.tree.map(lambda p: jnp.full_like(p, jnp.inf), x.params))

    return jax.tree.map(poison, inner, is_leaf=lambda x: isinstance(x, InnerState))


@pytest.mark.parametrize("name", ["es", "pes"])
def test_a_non_finite_step_is_skipped_and_restarts_the_runs(name):
    estimator, step, fresh_estimate, s0 = stepping(name)
    bad = s0._replace(inner=poisoned(s0.inner))
    s1, m1 = step(bad)
    assert not np.isfinite(float(m1["meta_loss"])) or not np.isfinite(float(m1["grad_norm"]))
    assert int(s1.skipped) == int(m1["skipped"]) == 1 and not bool(s1.healthy)
    np.testing.assert_array_equal(flat(s1.meta_params), flat(s0.meta_params))  # φ and its optimizer untouched.
    np.testing.assert_array_equal(flat(s1.meta_opt_state), flat(s0.meta_opt_state))
    assert int(estimator.inner_step(s1.inner)) == 4  # Not at the horizon: only the failure restarts the runs.

    s2, m2 = step(s1)
    assert int(estimator.inner_step(s2.inner)) == 4
    expected = fresh_estimate(s1.meta_params, 1)
    assert_trees_close(s2.inner, expected.state)
    if name == "pes":  # Restarted from zero: ε₁ alone, not ε₀ + ε₁.
        assert not np.allclose(flat(s1.inner.accumulated), 0)
    assert np.isfinite(float(m2["meta_loss"])) and bool(s2.healthy) and int(s2.skipped) == 1
    assert not np.array_equal(flat(s2.meta_params), flat(s1.meta_params))


class SometimesNaN(QuadraticFamily):
    """The paper's quadratics, with a loss that is NaN for about a third of the sampled tasks."""

    def sample(self, key):
        key, bad = jax.random.split(key)
        return {**super().sample(key), "bad": jax.random.bernoulli(bad, 0.3)}

    def loss(self, task_params, params, key):
        return jnp.where(task_params["bad"], jnp.nan, super().loss(task_params, params, key))


@pytest.mark.parametrize("name", ["es", "pes"])
def test_non_finite_meta_steps_are_skipped_and_counted(name):
    config = dataclasses.replace(PLAIN[name], num_meta_steps=12, batch_size=2, validate_every=0)
    result = train(config, family=SometimesNaN(dim=3))
    skipped_rows = [r for r in result.history if not (np.isfinite(r["meta_loss"]) and np.isfinite(r["grad_norm"]))]
    assert result.skipped == len(skipped_rows) == result.history[-1]["skipped"] > 0
    assert len(skipped_rows) < 12  # Some steps were finite and applied.
    assert np.all(np.isfinite(flat(result.final_meta_params)))
    assert not np.allclose(flat(result.final_meta_params), flat(phi0(config)))


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "bad, match",
    [
        (
            {"estimator_options": {"sigma": 0.1}},
            r"unknown option\(s\) sigma for .* 'tbptt' \(estimator_options\); its options: first_order, remat",
        ),
        ({"estimator_options": {"num_pairs": 2}}, "unknown option.*num_pairs.*first_order, remat"),
        *[
            ({"estimator": e, "estimator_options": {o: x}}, f"unknown option.*{o}.*num_pairs, sigma")
            for e in ("es", "pes")
            for o, x in (("first_order", False), ("remat", True))
        ],
        ({"estimator": "xyz"}, "estimator"),
        ({"estimator_options": [1]}, "estimator_options"),
    ],
)
def test_nonsensical_estimator_configs_are_refused(bad, match):
    with pytest.raises(errors.ConfigError, match=match):
        MetaTrainConfig(**{**BASE, **bad})


@pytest.mark.parametrize(
    "bad, match",
    [
        *[
            ({"estimator": e, "estimator_options": {"sigma": s}}, "sigma")
            for e in ("es", "pes")
            for s in (0.0, -1.0, 1e39)
        ],
        *[({"estimator": e, "estimator_options": {"num_pairs": 0}}, "num_pairs") for e in ("es", "pes")],
        ({"estimator_options": {"remat": "sqrt"}}, "remat"),
        ({"estimator_options": {"first_order": "no"}}, "first_order"),
    ],
)
def test_bad_estimator_option_values_are_refused_by_the_estimator_before_meta_training(bad, match):
    config = MetaTrainConfig(**{**BASE, **bad})
    with pytest.raises(errors.ConfigError, match=match):
        config.build_members(config.build_optimizer(), config.build_task())


def test_estimator_options_equal_to_their_defaults_are_dropped():
    config = MetaTrainConfig(**BASE, estimator="pes", estimator_options={"sigma": 0.01, "num_pairs": 2})
    assert config.estimator_options == {"num_pairs": 2}
    assert (config.estimator_option("sigma"), config.estimator_option("num_pairs")) == (0.01, 2)
    assert config == MetaTrainConfig(**BASE, estimator="pes", estimator_options={"num_pairs": 2})


def test_a_config_saved_before_the_estimator_option_reads_as_truncated_bptt():
    old = {k: x for k, x in PLAIN["tbptt"].to_dict().items() if k not in ("estimator", "estimator_options")}
    config = MetaTrainConfig.from_dict(old)
    assert config == PLAIN["tbptt"]
    assert (config.estimator, config.estimator_options) == ("tbptt", {})


@pytest.mark.parametrize(
    "fields, options",
    [
        ({"estimator": "pes", "sigma": 0.05, "num_pairs": 2, "first_order": True, "remat": False}, ANTITHETIC),
        ({"estimator": "pes", "sigma": 0.01, "num_pairs": 1, "first_order": True, "remat": False}, {}),
        ({"estimator": "tbptt", "sigma": 0.01, "num_pairs": 1, "first_order": False, "remat": "segments"},
         {"first_order": False, "remat": "segments"}),
    ],
)  # fmt: skip
def test_a_config_saved_with_sigma_num_pairs_first_order_and_remat_fields_migrates(fields, options):
    old = {k: x for k, x in PLAIN["tbptt"].to_dict().items() if k != "estimator_options"}
    config = MetaTrainConfig.from_dict({**old, **fields})
    assert (config.estimator, config.estimator_options) == (fields["estimator"], options)


# --------------------------------------------------------------------------- components


@pytest.mark.parametrize(
    "built",
    [
        {"family": QuadraticFamily(dim=3)},
        {"optimizer": optimizers_lib.get("linear_rnn", phi=(0.2, 0.5, -1.0))},
        {"meta_optimizer": optax.adam(3e-3)},
    ],
    ids=["family", "optimizer", "meta_optimizer"],
)
def test_resuming_with_other_components_in_code_is_refused(trained, tmp_path, built):
    run_dir = copy_run(trained(PLAIN, "pes")[1], tmp_path)
    saved = (run_dir / rd.CONFIG).read_text()
    with pytest.raises(errors.ConfigError, match="components differ"):
        meta_train(dataclasses.replace(PLAIN["pes"], num_meta_steps=7), run_dir, progress=False, **built)
    assert (run_dir / rd.CONFIG).read_text() == saved


@pytest.mark.parametrize(
    "name, removed",
    [
        ("pes", ()),  # the same family, passed in code
        ("pes", ("components",)),
        ("tbptt", ("components", "estimator", "estimator_options")),  # a run saved before either
    ],
)
def test_a_run_of_the_same_components_resumes(trained, tmp_path, name, removed):
    whole, original = trained(PLAIN, name)
    run_dir = copy_run(original, tmp_path)
    saved = json.loads((run_dir / rd.CONFIG).read_text())
    rd.write_json(run_dir / rd.CONFIG, {k: x for k, x in saved.items() if k not in removed})
    longer = train(dataclasses.replace(PLAIN[name], num_meta_steps=7), run_dir, family=QuadraticFamily(dim=2))
    assert longer.start_step == 6
    assert [r["step"] for r in longer.history] == list(range(1, 8))
    assert longer.history[:6] == whole.history
    assert json.loads((run_dir / rd.CONFIG).read_text())["components"] == saved["components"]


# --------------------------------------------------------------------------- task mixtures


@pytest.mark.parametrize("name", ["tbptt", "pes"])
def test_a_task_mixture_meta_trains_validates_and_resumes_exactly(trained, tmp_path, name):
    config = MIXTURES[name]
    whole, whole_dir = trained(MIXTURES, name)
    assert not np.allclose(flat(whole.final_meta_params), flat(phi0(config)))
    assert whole.skipped == 0
    for r in whole.history:
        assert np.isfinite(r["meta_loss"]) and np.isfinite(r["grad_norm"]), r
    vals = [r["val_loss"] for r in whole.history if "val_loss" in r]
    assert len(vals) == 2 and np.all(np.isfinite(vals)) and whole.best_val == min(vals)
    components = json.loads((whole_dir / rd.CONFIG).read_text())["components"]
    assert components["task"]["type"] == "TaskMixture"
    assert [m["options"]["dim"] for m in components["task"]["config"]["members"]] == [2, 5]

    run_dir = tmp_path / "run"
    train(dataclasses.replace(config, num_meta_steps=3), run_dir)  # Stops in the middle of a run.
    resumed = train(config, run_dir)
    assert resumed.start_step == 3
    np.testing.assert_array_equal(flat(resumed.final_meta_params), flat(whole.final_meta_params))
    np.testing.assert_array_equal(flat(resumed.meta_params), flat(whole.meta_params))
    assert without_timings(resumed.history) == without_timings(whole.history)


def test_a_chunk_that_does_not_divide_a_mixture_members_share_is_refused():
    # 4 tasks split 1 + 3: chunks of 2 divide the batch but neither share.
    config = dataclasses.replace(MIXTURES["pes"], tasks_per_chunk=2)
    with pytest.raises(errors.ConfigError, match="tasks_per_chunk=2 must divide every mixture member's share"):
        meta_train(config, progress=False)


def test_a_batch_smaller_than_the_mixtures_members_is_refused():
    members = [{"task": "quadratic", "options": {"dim": d}} for d in (2, 3, 4)]
    config = dataclasses.replace(MIXTURES["pes"], task_options={"members": members}, batch_size=2)
    with pytest.raises(errors.ConfigError, match="batch_size 2 is smaller than the task mixture's 3 members"):
        meta_train(config, progress=False)


# --------------------------------------------------------------------------- sharding

#: Each is run on 1 and on 4 (fake CPU) devices; every member of the mixture gets 4 tasks.
SHARDED = {
    "es": PLAIN["es"],
    "pes": PLAIN["pes"],
    "mixture-pes": dataclasses.replace(
        MIXTURES["pes"],
        task_options={"members": [{**m, "weight": 1} for m in MIXTURE_OPTIONS["members"]]},
        batch_size=8,
    ),
}

CHILD = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from l2l_jax.meta import MetaTrainConfig, meta_train

    out = {"devices": len(jax.devices()), "runs": {}}
    for name, d in json.loads(sys.argv[1]).items():
        config = MetaTrainConfig.from_dict(d)
        phi0 = config.build_optimizer().init(jax.random.PRNGKey(7))
        for devices in (1, 4):
            r = meta_train(config, progress=False, devices=devices, init_meta_params=phi0)
            out["runs"][f"{name}/{devices}"] = {
                "phi": [np.asarray(x).tolist() for x in jax.tree.leaves(r.final_meta_params)],
                "losses": [h["meta_loss"] for h in r.history],
                "val": [h["val_loss"] for h in r.history if "val_loss" in h],
            }
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def child(fake_devices):
    return fake_devices(CHILD, 4, json.dumps({name: c.to_dict() for name, c in SHARDED.items()}))


@pytest.mark.parametrize("name", list(SHARDED))
def test_sharded_meta_training_matches_one_device(child, name):
    # The tolerance of test_sharding.py: the same run up to float rounding.
    assert child["devices"] == 4
    one, four = child["runs"][f"{name}/1"], child["runs"][f"{name}/4"]
    assert len(one["losses"]) == 6 and len(one["val"]) == 2
    for key in ("losses", "val", "phi"):
        for x, y in zip(four[key], one[key], strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
