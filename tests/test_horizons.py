"""Sampled run lengths (log-uniform horizons), validation horizons and the meta-learning rate's warm-up."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2l_jax import errors
from l2l_jax.meta import MetaTrainConfig, meta_train
from l2l_jax.meta.horizons import log_uniform_horizons
from l2l_jax.meta.step import initial_state, meta_step

BASE = {
    "task": "quadratic",
    "task_options": {"dim": 2},
    "optimizer": "linear_rnn",
    "estimator": "pes",
    "estimator_options": {"sigma": 0.05},
    "horizon": 40,
    "min_horizon": 4,
    "truncation": 4,
    "batch_size": 2,
    "meta_lr": 3e-3,
    "validate_every": 5,
    "num_val_tasks": 2,
    "validation_horizon": 12,
    "checkpoint_every": 5,
}


def test_sampled_lengths_are_whole_truncations_within_the_bounds_and_log_uniform():
    horizon = jax.jit(jax.vmap(log_uniform_horizons(jax.random.key(0), 100, 2000, 50)))
    lengths = np.asarray(horizon(jnp.arange(4000)))
    assert lengths.min() >= 100 and lengths.max() <= 2000 and np.all(lengths % 50 == 0)
    assert len(set(lengths.tolist())) == (2000 - 100) // 50 + 1  # every whole number of truncations occurs
    # Log-uniform: P(length ≤ 450) = P(exp(u) < 475) = log(4.75) / log(20), about a half.
    assert np.mean(lengths <= 450) == pytest.approx(np.log(4.75) / np.log(20), abs=0.03)
    np.testing.assert_array_equal(lengths, np.asarray(horizon(jnp.arange(4000))))  # a function of the step


def test_meta_step_restarts_each_run_after_the_length_drawn_at_its_start():
    config = MetaTrainConfig(**BASE)
    optimizer = config.build_optimizer()
    members = config.build_members(optimizer, config.build_task())
    tx = config.build_meta_optimizer()
    phi = optimizer.init(jax.random.key(1))
    horizon = log_uniform_horizons(jax.random.key(2), config.min_horizon, config.horizon, config.truncation)
    state = initial_state(members, tx, phi, jax.random.key(3))
    step = jax.jit(
        lambda s: meta_step(
            s, members, tx, horizon=horizon, task_key=jax.random.key(4), perturbation_key=jax.random.key(5),
            truncation=config.truncation,
        )
    )  # fmt: skip
    reached = []
    for _ in range(60):
        state, _ = step(state)
        reached.append(int(members[0].estimator.inner_step(state.inner)))
    # Each run starts at the meta-step whose truncation brings it to 4 inner steps, and lasts horizon(start).
    starts = [i for i, r in enumerate(reached) if r == config.truncation]
    assert len(starts) >= 4
    for start, end in itertools.pairwise(starts):
        assert (end - start) * config.truncation == int(horizon(jnp.int32(start)))
    assert len({end - start for start, end in itertools.pairwise(starts)}) > 1  # the lengths vary


def test_a_run_with_sampled_horizons_resumes_to_the_uninterrupted_result(tmp_path):
    config = MetaTrainConfig(**BASE, num_meta_steps=20)
    whole = meta_train(config, tmp_path / "whole", progress=False)
    meta_train(MetaTrainConfig(**BASE, num_meta_steps=10), tmp_path / "parts", progress=False)
    resumed = meta_train(config, tmp_path / "parts", progress=False)
    assert resumed.start_step == 10
    for a, b in zip(jax.tree.leaves(whole.final_meta_params), jax.tree.leaves(resumed.final_meta_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    assert [r.get("val_loss") for r in whole.history] == [r.get("val_loss") for r in resumed.history]


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"min_horizon": 50}, "truncation ≤ min_horizon ≤ horizon"),
        ({"min_horizon": 2}, "truncation ≤ min_horizon ≤ horizon"),
        ({"min_horizon": 0}, "min_horizon must be a positive integer"),
        ({"validation_horizon": 0}, "validation_horizon must be a positive integer"),
        ({"meta_lr_warmup": -1}, "meta_lr_warmup must be a non-negative integer"),
    ],
)
def test_bad_horizon_and_warmup_options_are_refused(bad, match):
    with pytest.raises(errors.ConfigError, match=match):
        MetaTrainConfig(**{**BASE, **bad})


def test_a_config_saved_before_these_options_reads_with_fixed_horizons_and_no_warmup():
    config = MetaTrainConfig(**{k: v for k, v in BASE.items() if k not in ("min_horizon", "validation_horizon")})
    old = {
        k: v for k, v in config.to_dict().items() if k not in ("min_horizon", "validation_horizon", "meta_lr_warmup")
    }
    assert MetaTrainConfig.from_dict(old) == config
    assert (config.min_horizon, config.validation_horizon, config.meta_lr_warmup) == (None, None, 0)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_meta_learning_rate_warms_up_linearly_then_follows_its_schedule(schedule):
    lr, warmup, steps = 1e-2, 4, 12
    config = MetaTrainConfig(
        **{**BASE, "meta_lr": lr, "meta_lr_warmup": warmup, "meta_lr_schedule": schedule, "num_meta_steps": steps}
    )
    tx = config.build_meta_optimizer()
    params = jnp.zeros(3)
    state = tx.init(params)
    sizes = []
    for _ in range(steps):
        updates, state = tx.update(jnp.ones(3), state, params)  # Adam's step on a constant gradient is its rate
        sizes.append(float(jnp.abs(updates[0])))
    np.testing.assert_allclose(sizes[:warmup], [lr * t / warmup for t in range(warmup)], rtol=1e-4, atol=1e-9)
    assert sizes[warmup] == pytest.approx(lr, rel=1e-4)
    if schedule == "constant":
        np.testing.assert_allclose(sizes[warmup:], lr, rtol=1e-4)
    else:
        assert sizes[-1] < sizes[warmup] and np.all(np.diff(sizes[warmup:]) <= 0)


def test_the_command_line_passes_the_horizon_and_warmup_options_to_the_config():
    from l2l_jax import cli

    argv = ["meta-train", "--run-dir", "X", "--horizon", "1000", "--truncation", "50", "--min-horizon", "100",
            "--validation-horizon", "200", "--meta-lr-warmup", "20"]  # fmt: skip
    config = MetaTrainConfig.from_dict(cli.config_from_args(cli.build_parser().parse_args(argv)))
    assert (config.min_horizon, config.validation_horizon, config.meta_lr_warmup) == (100, 200, 20)
    default = cli.config_from_args(cli.build_parser().parse_args(["meta-train", "--run-dir", "X"]))
    assert (default["min_horizon"], default["validation_horizon"], default["meta_lr_warmup"]) == (None, None, 0)
