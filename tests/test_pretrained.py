"""Shipped learned optimizers: listed, loadable by name, and as good as their metadata says."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2l_jax import errors, optimizers, pretrained, tasks
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


@pytest.mark.parametrize(("name", "recipe", "meta_steps"), [("generalist", "v12", 5000), ("generalist-v7", "v7", 1500)])
def test_the_generalist_ships_halfway_from_v2_to_its_fine_tune_with_the_step_bound(name, recipe, meta_steps):
    # v12 ships as "generalist"; v7, the generalist before it, is kept as "generalist-v7".
    info = pretrained.info(name)
    v2 = pretrained.info("generalist-v2")
    options = info["architecture"]["options"]
    assert info["optimizer"] == "feature_mlp" and options["output"] == "nominal"
    assert options["reference_fan_in"] == options["reference_fan_out"] == 128 and options["step_bound"] == 3
    # The bound came after meta-training; the rest of the architecture is v2's.
    assert info["added_after_training"] == {"step_bound": 3}
    assert {k: v for k, v in options.items() if k != "step_bound"} == v2["architecture"]["options"]
    # Its φ is halfway from v2 (by checksum) to v2 fine-tuned on a broader mixture (v5; v12: v11, v5 run longer).
    interpolation = info["interpolation"]
    assert interpolation["alpha"] == 0.5 and interpolation["start"] == "generalist-v2"
    assert interpolation["start_phi_sha256"] == v2["sha256"]["optimizer.msgpack"]
    training = info["training"]
    assert training["recipe"] == recipe and training["start"]["phi_sha256"] == v2["sha256"]["optimizer.msgpack"]
    assert training["meta_steps"] == [meta_steps] and training["best_step"] <= meta_steps
    assert training["meta_training_seconds"] > 0 and training["optimizee_steps"] > 0 and training["machine"]
    assert {base(m)["task"] for m in info["mixture"]} == {"mnist", "quadratic"}
    assert {base(m)["options"].get("objective", "classify") for m in info["mixture"]} == {"classify", "autoencode"}
    assert [(e["estimator"], e["min_horizon"], e["horizon"]) for e in info["estimator"]] == [("pes", 100, 1000)]
    # The battery's rows name it as it was shipped then: "generalist".
    tasks_evaluated = {r["task"] for r in info["evaluation"] if r["optimizer"] == "generalist"}
    assert {"base MLP", "CNN", "wide MLP", "wide MLP 4096", "char LM", "regression network"} <= tasks_evaluated
    assert data_dirs(info) and set(data_dirs(info)) == {None}  # where the data lay on the training machine is not kept


def test_the_generalist_and_generalist_v7_share_a_start_and_a_mixture_and_differ_in_phi():
    v12, v7 = pretrained.info("generalist"), pretrained.info("generalist-v7")
    assert v12["mixture"] == v7["mixture"] and v12["architecture"] == v7["architecture"]
    assert v12["interpolation"]["start_phi_sha256"] == v7["interpolation"]["start_phi_sha256"]
    assert v12["sha256"]["optimizer.msgpack"] != v7["sha256"]["optimizer.msgpack"]


def test_the_second_generalist_still_ships_as_generalist_v2():
    info = pretrained.info("generalist-v2")
    options = info["architecture"]["options"]
    assert info["optimizer"] == "feature_mlp" and options["output"] == "nominal" and options["reference_fan_in"] == 128
    assert "step_bound" not in options
    # The fan-out factor came after meta-training: the metadata says so.
    assert options["reference_fan_out"] == 128 and info["added_after_training"] == {"reference_fan_out": 128}
    assert "reference_fan_out" not in info["training_config"]["optimizer_options"]
    assert {m["task"] for m in info["mixture"]} == {"mnist", "scale_augmented"}
    assert {base(m)["options"].get("image_size", 28) for m in info["mixture"]} == {8, 14, 28}
    assert {base(m)["options"]["activation"] for m in info["mixture"]} == {"sigmoid", "tanh", "relu"}
    # PES on runs of 100 to 1,000 steps, started from v1 with a re-chosen learning rate.
    assert [(e["estimator"], e["min_horizon"], e["horizon"]) for e in info["estimator"]] == [("pes", 100, 1000)]
    training = info["training"]
    assert training["meta_training_seconds"] > 0 and training["optimizee_steps"] > 0 and training["machine"]
    assert training["recipe"] == "v2" and training["start"]["source"] == "generalist-v1"
    assert data_dirs(info) and set(data_dirs(info)) == {None}


def test_mnist_feature_mlp_ships_as_v2_fine_tuned_on_short_runs():
    info = pretrained.info("mnist-feature-mlp")
    v2 = pretrained.info("generalist-v2")
    assert info["architecture"] == v2["architecture"] and info["mixture"] == v2["mixture"]
    assert [(e["estimator"], e["min_horizon"], e["horizon"]) for e in info["estimator"]] == [("pes", 100, 300)]
    start = info["training"]["start"]
    assert info["training"]["recipe"] == "v3" and start["phi_sha256"] == v2["sha256"]["optimizer.msgpack"]
    assert {r["optimizer"] for r in info["evaluation"]} == {"mnist-feature-mlp"}
    assert {"base MLP", "char LM"} <= {r["task"] for r in info["evaluation"]}


def test_the_first_generalist_still_ships_as_generalist_v1():
    info = pretrained.info("generalist-v1")
    assert "reference_fan_in" not in info["architecture"]["options"]
    # Two stages of PES: whole 1,000-step runs, then 200-step runs.
    assert [(e["estimator"], e["horizon"]) for e in info["estimator"]] == [("pes", 1000), ("pes", 200)]
    assert {m["task"] for m in info["mixture"]} == {"mnist"}


def base(member: dict) -> dict:
    """A mixture member, or for a scale-augmented one the member it wraps."""
    return base(member["options"]) if member["task"] == "scale_augmented" else member


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


def test_the_generalist_given_a_recurrent_mask_scales_exactly_those_tensors_updates_by_its_recorded_factor():
    def loss(p, xs):  # an input projection feeding a tanh recurrence, and a read-out of its last state
        h, _ = jax.lax.scan(lambda h, x: (jnp.tanh(h @ p["cell"] + x @ p["proj"]), None), jnp.zeros(3), xs)
        return jnp.sum((h @ p["readout"] - 1.0) ** 2)

    keys = jax.random.split(jax.random.key(0), 4)
    params = {name: 0.5 * jax.random.normal(k, shape) for (name, shape), k in
              zip({"cell": (3, 3), "proj": (2, 3), "readout": (3, 2)}.items(), keys)}  # fmt: skip
    xs = jax.random.normal(keys[3], (5, 2))
    mask = optimizers.recurrent_tensors(loss, params, xs)
    assert mask == {"cell": True, "proj": True, "readout": False}
    grads = jax.grad(loss)(params, xs)
    scale = pretrained.info("generalist")["recurrence_prior"]["scale"]
    assert pretrained.recorded_recurrent_scale("generalist") == scale and 0 < scale < 1

    def first_update(**options):
        tx = pretrained.load("generalist", **options)
        return tx.update(grads, tx.init(params), params)[0]

    plain, prior = first_update(), first_update(recurrent=mask)
    for name in params:
        np.testing.assert_allclose(prior[name], scale * plain[name] if mask[name] else plain[name], rtol=1e-6)
    # A feed-forward network's mask (all False) leaves the generalist as it is, to the bit.
    unflagged = first_update(recurrent=jax.tree.map(lambda _: False, mask))
    assert all(np.array_equal(plain[name], unflagged[name]) for name in params)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"recurrent": {"w": 1.0}}, "bool at every leaf"),
        ({"recurrent": {"w": np.ones(3, bool)}}, "bool at every leaf"),
        ({"recurrent": {"w": True}, "recurrent_scale": 0.0}, "recurrent_scale must be a positive number, got 0.0"),
        (
            {"recurrent": {"w": True}, "recurrent_scale": float("nan")},
            "recurrent_scale must be a positive number, got nan",
        ),
        ({"recurrent": {"w": True}, "recurrent_scale": True}, "recurrent_scale must be a positive number, got True"),
        ({"recurrent_scale": 0.5}, "without recurrent"),
    ],
)
def test_a_recurrent_mask_and_its_scale_are_checked(options, message):
    with pytest.raises(errors.ConfigError, match=message):
        pretrained.load("generalist", **options)


def test_an_optimizer_without_a_recorded_recurrent_scale_needs_one_given():
    with pytest.raises(errors.ConfigError, match="'generalist-v7' records no scale .*pass recurrent_scale"):
        pretrained.load("generalist-v7", recurrent={"w": True})
    tx = pretrained.load("generalist-v7", recurrent={"w": True, "b": False}, recurrent_scale=0.5)
    params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    updates, _ = tx.update(params, tx.init(params), params)
    plain = pretrained.load("generalist-v7")
    expected, _ = plain.update(params, plain.init(params), params)
    np.testing.assert_allclose(updates["w"], 0.5 * expected["w"], rtol=1e-6)
    np.testing.assert_array_equal(updates["b"], expected["b"])
