"""Shipped learned optimizers: listed, loadable by name, and as good as their metadata says."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2l_jax import errors, pretrained, tasks
from l2l_jax.evaluation import learned_curves, loss_curves, sample_tasks


def test_shipped_names_are_listed_and_load():
    names = pretrained.available()
    assert "quadratic-lstm" in names
    for name in names:
        tx = pretrained.load(name)
        assert isinstance(tx, optax.GradientTransformationExtraArgs)
        info = pretrained.info(name)
        assert info["optimizer"] in ("lstm", "feature_mlp") and "training_config" in info and info["evaluation"]


def test_unknown_name_lists_what_exists():
    with pytest.raises(errors.UnknownNameError, match="available: .*quadratic-lstm"):
        pretrained.load("imagenet-lstm")


def test_shipped_quadratic_lstm_beats_tuned_adam_on_fresh_quadratics():
    family = tasks.get("quadratic", dim=10)
    fresh = sample_tasks(family, seed=123, num_tasks=128)
    opt, phi = pretrained.load_meta_params("quadratic-lstm")
    lstm_final = learned_curves(opt, phi, family, fresh, 100)[:, -1].mean()
    # Adam at its best rate on this very set (a stronger baseline than tuning elsewhere).
    adam_final = min(
        loss_curves(optax.adam, jnp.asarray(lr), family, fresh, 100)[:, -1].mean() for lr in (0.1, 0.178, 0.316, 0.562)
    )
    assert np.isfinite(lstm_final) and lstm_final < adam_final, (lstm_final, adam_final)


def test_the_generalist_ships_with_what_it_was_built_from_and_its_evaluation():
    info = pretrained.info("generalist")
    options = info["architecture"]["options"]
    assert info["optimizer"] == "feature_mlp" and options["output"] == "nominal" and options["reference_fan_in"] == 128
    # The fan-out factor came after meta-training: the metadata says so.
    assert options["reference_fan_out"] == 128 and info["added_after_training"] == {"reference_fan_out": 128}
    assert "reference_fan_out" not in info["training_config"]["optimizer_options"]
    inner = lambda m: m["options"]["options"] if m["task"] == "scale_augmented" else m["options"]
    assert {m["task"] for m in info["mixture"]} == {"mnist", "scale_augmented"}
    assert {inner(m).get("image_size", 28) for m in info["mixture"]} == {8, 14, 28}
    assert {inner(m)["activation"] for m in info["mixture"]} == {"sigmoid", "tanh", "relu"}
    # PES on runs of 100 to 1,000 steps, started from v1 with a re-chosen learning rate.
    assert [(e["estimator"], e["min_horizon"], e["horizon"]) for e in info["estimator"]] == [("pes", 100, 1000)]
    training = info["training"]
    assert training["meta_training_seconds"] > 0 and training["optimizee_steps"] > 0 and training["machine"]
    assert training["recipe"] == "v2" and training["start"]["source"] == "generalist-v1"
    tasks_evaluated = {r["task"] for r in info["evaluation"]}
    assert {"base MLP", "CNN", "wide MLP", "wide MLP 4096", "char LM", "regression network"} <= tasks_evaluated
    assert data_dirs(info) and set(data_dirs(info)) == {None}  # where the data lay on the training machine is not kept


def test_mnist_feature_mlp_ships_as_the_generalist_fine_tuned_on_short_runs():
    info = pretrained.info("mnist-feature-mlp")
    generalist = pretrained.info("generalist")
    assert info["architecture"] == generalist["architecture"] and info["mixture"] == generalist["mixture"]
    assert [(e["estimator"], e["min_horizon"], e["horizon"]) for e in info["estimator"]] == [("pes", 100, 300)]
    start = info["training"]["start"]
    assert info["training"]["recipe"] == "v3" and start["source"] == "generalist"
    assert start["phi_sha256"] == generalist["sha256"]["optimizer.msgpack"]
    assert {r["optimizer"] for r in info["evaluation"]} == {"mnist-feature-mlp"}
    assert {"base MLP", "char LM"} <= {r["task"] for r in info["evaluation"]}


def test_the_first_generalist_still_ships_as_generalist_v1():
    info = pretrained.info("generalist-v1")
    assert "reference_fan_in" not in info["architecture"]["options"]
    # Two stages of PES: whole 1,000-step runs, then 200-step runs.
    assert [(e["estimator"], e["horizon"]) for e in info["estimator"]] == [("pes", 1000), ("pes", 200)]
    assert {m["task"] for m in info["mixture"]} == {"mnist"}


def data_dirs(value) -> list:
    """Every ``"data_dir"`` value anywhere in a JSON value."""
    if isinstance(value, dict):
        return [v for k, v in value.items() if k == "data_dir"] + [d for v in value.values() for d in data_dirs(v)]
    if isinstance(value, list):
        return [d for v in value for d in data_dirs(v)]
    return []


def test_the_generalist_needs_the_parameters_and_trains_a_model_it_never_saw():
    tx = pretrained.load("generalist")
    params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    state = tx.init(params)
    with pytest.raises(errors.ConfigError, match="needs params"):
        tx.update(params, state)
    family = tasks.get("logistic_regression")
    test = sample_tasks(family, seed=5, num_tasks=8)
    opt, phi = pretrained.load_meta_params("generalist")
    curves = learned_curves(opt, phi, family, test, 100)
    assert np.all(np.isfinite(curves)) and np.all(curves[:, -1] < 0.8 * curves[:, 0])
