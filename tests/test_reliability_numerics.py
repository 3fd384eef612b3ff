"""Meta-training keeps φ finite, refuses to pass off an untrained φ, and bounds every size before allocating."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization
from jax.flatten_util import ravel_pytree

from l2l_jax import errors, pretrained, tasks
from l2l_jax import run_directory as rd
from l2l_jax.meta import MetaTrainConfig, meta_train
from l2l_jax.meta.step import initial_state, meta_step
from l2l_jax.tasks import QuadraticFamily

TINY = {
    "task": "quadratic",
    "task_options": {"dim": 3},
    "optimizer_options": {"hidden_size": 4},
    "num_meta_steps": 2,
    "horizon": 2,
    "truncation": 2,
    "batch_size": 2,
    "validate_every": 0,
    "num_val_tasks": 2,
    "checkpoint_every": 2,
}


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


def all_finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


class Scaled(QuadraticFamily):
    """Quadratics whose loss is ``scale`` times the paper's: finite, with meta-gradients near ``scale``."""

    name = "scaled"

    def __init__(self, scale: float, dim: int = 3) -> None:
        super().__init__(dim=dim)
        self.scale = scale

    def loss(self, task_params, params, key):
        return self.scale * super().loss(task_params, params, key)


class AlwaysNaN(QuadraticFamily):
    name = "always_nan"

    def loss(self, task_params, params, key):
        return jnp.nan * super().loss(task_params, params, key)


# ----------------------------------------------------------------------------- non-finite results of a meta-step


def test_an_update_that_overflows_adams_state_is_skipped_and_keeps_phi_and_the_state():
    """Finite meta-gradients near 1e30: Adam's second moment (g²) overflows, so the update is refused."""
    config = MetaTrainConfig(**TINY)
    optimizer, family = config.build_optimizer(), Scaled(1e30)
    members, tx = config.build_members(optimizer, family), config.build_meta_optimizer()
    s0 = initial_state(members, tx, optimizer.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
    step = jax.jit(
        lambda s: meta_step(
            s, members, tx, horizon=2, task_key=jax.random.PRNGKey(2), perturbation_key=jax.random.PRNGKey(3)
        )
    )
    s1, metrics = step(s0)
    assert np.isfinite(float(metrics["meta_loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert float(metrics["grad_norm"]) > 1e29
    assert int(s1.skipped) == int(metrics["skipped"]) == 1
    np.testing.assert_array_equal(flat(s1.meta_params), flat(s0.meta_params))
    np.testing.assert_array_equal(flat(s1.meta_opt_state), flat(s0.meta_opt_state))
    assert all_finite(s1.meta_opt_state)
    assert bool(s1.healthy)  # The inner runs were finite: they carry on.


@pytest.mark.parametrize(
    "settings, scale",
    [
        ({}, 1e30),  # Adam, no clip_norm: the second moment overflows.
        ({"meta_optimizer": "sgd", "meta_lr": 1e38}, 1e10),  # meta_lr · g overflows φ.
    ],
    ids=["adam-overflow", "sgd-overflow"],
)
def test_a_run_whose_every_update_overflows_fails_and_marks_phi_untrained(tmp_path, settings, scale):
    config = MetaTrainConfig(**{**TINY, **settings})
    run = tmp_path / "run"
    with pytest.raises(errors.MetaTrainingError, match="every one of the 2 meta-steps was skipped"):
        meta_train(config, run, family=Scaled(scale), progress=False)
    meta = pretrained.info(run)
    assert meta["trained_steps"] == 0 and meta["skipped_meta_steps"] == meta["meta_steps"] == 2
    with pytest.raises(errors.MetaTrainingError, match="untrained φ.*allow_untrained=True"):
        pretrained.load(run)
    with pytest.raises(errors.MetaTrainingError, match="untrained"):
        pretrained.export(run, tmp_path / "copy")
    optimizer, phi = pretrained.load_meta_params(run, allow_untrained=True)
    initial = optimizer.init(jax.random.fold_in(jax.random.PRNGKey(config.seed), 0))
    np.testing.assert_array_equal(flat(phi), flat(initial))  # Saved, finite and exactly the starting φ.


def test_a_meta_lr_that_float32_cannot_hold_is_refused():
    with pytest.raises(errors.ConfigError, match="meta_lr must be at most 3.403e\\+38"):
        MetaTrainConfig(**{**TINY, "meta_optimizer": "sgd", "meta_lr": 1e39})
    config = MetaTrainConfig(**{**TINY, "estimator": "es", "estimator_options": {"sigma": 1e39}})
    with pytest.raises(errors.ConfigError, match="sigma must be at most"):
        config.build_members(config.build_optimizer(), config.build_task())


def test_a_meta_optimizer_state_may_hold_infinities_it_starts_with():
    """Only entries that an update turns non-finite make it skip: a state holding +inf by design trains."""

    def with_inf(tx: optax.GradientTransformation) -> optax.GradientTransformation:
        def init(params):
            return (tx.init(params), jnp.array(jnp.inf))

        def update(updates, state, params=None):
            updates, inner = tx.update(updates, state[0], params)
            return updates, (inner, state[1])

        return optax.GradientTransformation(init, update)

    result = meta_train(MetaTrainConfig(**TINY), meta_optimizer=with_inf(optax.adam(1e-3)), progress=False)
    assert result.skipped == 0
    initial = result.optimizer.init(jax.random.fold_in(jax.random.PRNGKey(0), 0))
    assert not np.array_equal(flat(result.final_meta_params), flat(initial))  # Both steps were applied.


def test_a_run_that_trained_records_its_trained_steps_and_loads(tmp_path):
    meta_train(MetaTrainConfig(**TINY), tmp_path / "run", progress=False)
    assert pretrained.info(tmp_path / "run")["trained_steps"] == 2
    pretrained.load(tmp_path / "run")


def test_a_run_that_cannot_make_progress_stops_with_a_checkpoint(tmp_path):
    config = MetaTrainConfig(**{**TINY, "num_meta_steps": 10, "checkpoint_every": 4})
    run = tmp_path / "run"
    with pytest.raises(errors.MetaTrainingError, match="stopped at step 3 of 10.*max_consecutive_skipped=3"):
        meta_train(config, run, family=AlwaysNaN(dim=3), progress=False, max_consecutive_skipped=3)
    rows = [json.loads(line) for line in (run / rd.METRICS).read_text().splitlines()]
    assert [r["skipped"] for r in rows] == [1, 2, 3]  # Checkpointed at step 3, off the checkpoint grid.
    assert pretrained.info(run)["trained_steps"] == 0


def test_without_a_limit_a_run_skipping_every_step_runs_to_its_end_and_fails():
    config = MetaTrainConfig(**{**TINY, "num_meta_steps": 4})
    with pytest.raises(errors.MetaTrainingError, match="every one of the 4 meta-steps was skipped, so φ is untrained"):
        meta_train(config, family=AlwaysNaN(dim=3), progress=False, max_consecutive_skipped=None)


# ----------------------------------------------------------------------------- non-finite checkpoints


def _poison_checkpoint(run, field: str) -> None:
    """Rewrites the checkpoint with NaN in every float of ``field``, with valid checksums."""
    record = serialization.msgpack_restore((run / rd.CHECKPOINT).read_bytes())
    state = serialization.msgpack_restore(record["state"])
    nan = lambda x: np.full_like(x, np.nan) if np.issubdtype(np.asarray(x).dtype, np.floating) else x
    state[field] = jax.tree.map(nan, state[field])
    history = [json.loads(line) for line in (run / rd.METRICS).read_text().splitlines()]
    rd.save_checkpoint(run, state, history)


@pytest.mark.parametrize(
    "field, what",
    [("meta_params", "meta-parameters"), ("best_meta_params", "meta-parameters"), ("meta_opt_state", "meta-optimizer")],
)
def test_a_checkpoint_holding_non_finite_values_is_refused_on_resume(tmp_path, field, what):
    run = tmp_path / "run"
    meta_train(MetaTrainConfig(**TINY), run, progress=False)
    _poison_checkpoint(run, field)
    with pytest.raises(errors.RunDirectoryError, match=f"checkpoint.msgpack holds non-finite {what}"):
        meta_train(MetaTrainConfig(**{**TINY, "num_meta_steps": 4}), run, progress=False)


# ----------------------------------------------------------------------------- sizes bounded before allocation


COUNTS = [
    "num_meta_steps",
    "horizon",
    "truncation",
    "batch_size",
    "num_val_tasks",
    "validation_horizon",
    "min_horizon",
    "checkpoint_every",
    "validate_every",
    "meta_lr_warmup",
]


@pytest.mark.parametrize("field", COUNTS)
def test_counts_beyond_int32_are_refused_naming_the_field(field):
    with pytest.raises(errors.ConfigError, match=f"^{field} must be at most 2\\*\\*31 - 1 = 2147483647, got {10**12}$"):
        MetaTrainConfig(**{**TINY, field: 10**12})


def test_num_pairs_beyond_int32_is_refused():
    config = MetaTrainConfig(**{**TINY, "estimator": "es", "estimator_options": {"num_pairs": 10**12}})
    with pytest.raises(errors.ConfigError, match="num_pairs must be at most 2\\*\\*31 - 1"):
        config.build_members(config.build_optimizer(), config.build_task())


def test_a_quadratic_dimension_whose_matrix_exceeds_int32_is_refused():
    QuadraticFamily(dim=46_340)  # W: 46,340² < 2**31 entries; nothing is allocated until a task is sampled.
    with pytest.raises(errors.ConfigError, match="dim\\) must be at most 46340"):
        MetaTrainConfig(**{**TINY, "task_options": {"dim": 10**12}}).build_task()


def test_a_task_larger_than_int32_elements_is_refused_when_built_by_name():
    with pytest.raises(errors.ConfigError, match="task 'logistic_regression' would have 1,000,002,000,001 array"):
        tasks.get("logistic_regression", examples=10**6, features=10**6)
    with pytest.raises(errors.ConfigError, match="mixture member 1: task 'logistic_regression' would have"):
        tasks.get(
            "mixture",
            members=[
                {"task": "quadratic"},
                {"task": "logistic_regression", "options": {"examples": 10**6, "features": 10**6}},
            ],
        )


@pytest.mark.parametrize(
    "settings, names",
    [
        ({"batch_size": 2**30}, "batch_size"),
        ({"horizon": 2**30, "truncation": 2**30}, "truncation"),
        ({"estimator": "es", "estimator_options": {"num_pairs": 2**30}}, "num_pairs"),
        ({"num_val_tasks": 2**30, "validate_every": 1}, "num_val_tasks"),
    ],
)
def test_a_run_too_large_for_any_device_is_refused_before_anything_is_written(tmp_path, settings, names):
    with pytest.raises(errors.ConfigError, match=f"at most 2\\*\\*36 .*{names}"):
        meta_train(MetaTrainConfig(**{**TINY, **settings}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_run_whose_state_exceeds_the_machines_memory_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    from l2l_jax.meta import training

    monkeypatch.setattr(training, "device_memory_bytes", lambda: 2**20)  # a 1 MiB machine
    with pytest.raises(errors.ConfigError, match="training state alone needs .* more than the 0.0 GiB.*batch_size"):
        meta_train(MetaTrainConfig(**{**TINY, "batch_size": 2**14}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    monkeypatch.undo()
    assert training.device_memory_bytes() > 2**20  # This machine's memory is known.


def test_validation_tasks_are_not_built_when_the_run_never_validates():
    config = MetaTrainConfig(**{**TINY, "num_meta_steps": 1, "num_val_tasks": 2**30, "validate_every": 0})
    assert meta_train(config, progress=False).skipped == 0


# ----------------------------------------------------------------------------- nested options


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def test_options_nested_too_deeply_are_refused_by_name():
    deep = nested(100_000)  # Printing or copying it would raise RecursionError.
    with pytest.raises(errors.ConfigError, match="^task_options is nested more than 64 lists or dicts deep$"):
        MetaTrainConfig(**{**TINY, "task_options": {"x": deep}})
    with pytest.raises(errors.ConfigError, match="^init is nested more than 64"):
        MetaTrainConfig.from_dict({**TINY, "init": deep})  # As a run's config.json could hold it.
    MetaTrainConfig(**{**TINY, "task_options": {"x": nested(62)}})  # Within the bound.
