"""Learned optimizers are ordinary optax transformations: shapes, dtypes, errors, composition."""

from __future__ import annotations

import copy

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2l_jax import errors, optimizers
from l2l_jax.optimizers import LinearRNNState, LSTMState, linear_rnn, lstm, preprocess

PARAMS = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros((4,))}, "scale": jnp.array(2.0, jnp.float32)}  # Not weakly typed.


def _grads(params):
    return jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)


@pytest.fixture(params=["linear_rnn", "lstm"])
def learned(request):
    opt = optimizers.get(request.param)
    return opt, opt.as_optax(opt.init(jax.random.key(0)))


def test_lstm_state_is_zero_and_per_coordinate():
    opt = lstm()
    tx = opt.as_optax(opt.init(jax.random.key(0)))
    state = tx.init(PARAMS)
    assert isinstance(state, LSTMState)
    assert state.h["dense"]["kernel"].shape == (2, 20, 3, 4)
    assert state.c["scale"].shape == (2, 20)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(state))


def test_state_shape_and_dtype_are_stable_across_updates(learned):
    _, tx = learned
    state = tx.init(PARAMS)
    _, new_state = tx.update(_grads(PARAMS), state, PARAMS)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_updates_come_back_in_each_leafs_dtype(learned, dtype):
    _, tx = learned
    params = {"a": jnp.ones((5,), dtype), "b": jnp.ones((2, 2), jnp.float32)}
    updates, state = tx.update(_grads(params), tx.init(params), params)
    assert updates["a"].dtype == dtype and updates["b"].dtype == jnp.float32
    # Hidden state of low-precision leaves is kept in at least float32.
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state))


def test_state_dtype_option_stores_bfloat16_state():
    opt = lstm(state_dtype="bfloat16")
    tx = opt.as_optax(opt.init(jax.random.key(0)))
    state = tx.init(PARAMS)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(state))
    updates, _ = tx.update(_grads(PARAMS), state)
    assert updates["scale"].dtype == jnp.float32


def test_update_ignores_unknown_keywords_and_accepts_value(learned):
    _, tx = learned
    state = tx.init(PARAMS)
    a, _ = tx.update(_grads(PARAMS), state, PARAMS)
    b, _ = tx.update(_grads(PARAMS), state, PARAMS, value=jnp.array(1.0), some_extra=3)
    chex.assert_trees_all_close(a, b)


def test_linear_rnn_is_heavy_ball_momentum_for_matching_phi():
    eta, beta = 0.05, 0.9
    tx = linear_rnn().as_optax({"phi1": jnp.array(eta), "phi2": jnp.array(beta), "phi3": jnp.array(-1.0)})
    ref = optax.sgd(eta, momentum=beta)
    x = jnp.array([1.0, -2.0, 3.0])
    s, r = tx.init(x), ref.init(x)
    for t in range(5):
        g = jnp.sin(x + t)
        u, s = tx.update(g, s)
        v, r = ref.update(g, r)
        np.testing.assert_allclose(u, v, rtol=1e-6)
    assert isinstance(s, LinearRNNState)


def test_log_sign_preprocessing_matches_the_paper():
    p = 10.0
    g = jnp.array([1.0, -1e-3, 1e-6, -1e-5, 0.0])
    feats = preprocess(g, "log_sign", p)
    # |g| >= e^-10 ~ 4.5e-5: (log|g|/p, sign); otherwise (-1, e^p g).
    np.testing.assert_allclose(feats[0], [0.0, 1.0], atol=1e-7)
    np.testing.assert_allclose(feats[1], [np.log(1e-3) / p, -1.0], rtol=1e-6)
    np.testing.assert_allclose(feats[2], [-1.0, np.exp(p) * 1e-6], rtol=1e-5)
    np.testing.assert_allclose(feats[3], [-1.0, -np.exp(p) * 1e-5], rtol=1e-5)
    np.testing.assert_allclose(feats[4], [-1.0, 0.0])
    # Finite gradient everywhere, including at zero.
    d = jax.grad(lambda x: preprocess(x, "log_sign", p).sum())(g)
    assert bool(jnp.all(jnp.isfinite(d)))


def test_presets():
    assert lstm().config()["p"] == 10.0 and lstm().config()["output_scale"] == 0.1
    dm = lstm("deepmind")
    assert dm.config()["p"] == 5.0 and dm.config()["output_scale"] == 0.01
    assert lstm(hidden_size=40, num_layers=3).init(jax.random.key(0))["layer_2"]["w"].shape == (80, 160)


def test_lstm_output_scale_scales_the_update():
    phi = lstm().init(jax.random.key(1))
    small, big = lstm(output_scale=0.01), lstm(output_scale=0.1)
    u1, _ = small.as_optax(phi).update(_grads(PARAMS), small.as_optax(phi).init(PARAMS))
    u2, _ = big.as_optax(phi).update(_grads(PARAMS), big.as_optax(phi).init(PARAMS))
    chex.assert_trees_all_close(jax.tree.map(lambda a: 10 * a, u1), u2, rtol=1e-5)


# --- Bad input -------------------------------------------------------------------


def test_integer_params_are_rejected_with_the_leaf_named(learned):
    _, tx = learned
    with pytest.raises(errors.ParamsTypeError, match=r"\['count'\].*int32"):
        tx.init({"w": jnp.ones(3), "count": jnp.array(3, jnp.int32)})


def test_meta_params_of_the_wrong_structure_are_rejected():
    with pytest.raises(errors.MetaParamsMismatchError, match="structure"):
        lstm().as_optax({"w": jnp.ones(3)})


def test_meta_params_of_another_size_are_rejected():
    phi = lstm(hidden_size=8).init(jax.random.key(0))
    with pytest.raises(errors.MetaParamsMismatchError, match="shape"):
        lstm().as_optax(phi)


def test_unknown_names_and_options():
    with pytest.raises(errors.UnknownNameError, match="choose one of"):
        optimizers.get("transformer")
    with pytest.raises(errors.ConfigError, match="preset"):
        lstm("pytorch")
    with pytest.raises(errors.ConfigError, match="unknown LSTM option"):
        lstm(hiden_size=3)
    with pytest.raises(errors.ConfigError, match="hidden_size"):
        lstm(hidden_size=0)
    with pytest.raises(errors.ConfigError, match="output_scale"):
        lstm(output_scale=-0.1)
    with pytest.raises(errors.ConfigError, match="preprocessing"):
        lstm(preprocessing="log")
    with pytest.raises(errors.ConfigError, match="p > 0"):
        lstm(p=0.0)
    with pytest.raises(errors.ConfigError, match="implementation"):
        lstm(implementation="cuda")
    with pytest.raises(errors.ConfigError, match="output_init_scale"):
        lstm(output_init_scale=-1.0)


def test_output_init_scale_shrinks_only_the_initial_output_weights():
    key = jax.random.key(0)
    base, small = lstm().init(key), lstm(output_init_scale=0.01).init(key)
    np.testing.assert_allclose(small["out"]["w"], 0.01 * base["out"]["w"], rtol=1e-6)
    for name in ("layer_0", "layer_1"):
        np.testing.assert_array_equal(small[name]["w"], base[name]["w"])
    assert lstm(output_init_scale=0.01).config()["output_init_scale"] == 0.01


# --- Composition with optax and Flax, under jit --------------------------------


def test_chain_with_global_norm_clipping_under_jit(learned):
    opt, _ = learned
    phi = opt.init(jax.random.key(0))
    big = jax.tree.map(lambda p: jnp.full_like(p, 100.0), PARAMS)

    @jax.jit
    def step(phi, params, state, grads):
        tx = optax.chain(optax.clip_by_global_norm(1.0), opt.as_optax(phi))
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    tx = optax.chain(optax.clip_by_global_norm(1.0), opt.as_optax(phi))
    state = tx.init(PARAMS)
    params, state = step(phi, PARAMS, state, big)
    # The learned optimizer saw the clipped gradient: same as feeding it directly.
    clipped = jax.tree.map(lambda g: g / optax.tree.norm(big), big)
    direct, _ = opt.as_optax(phi).update(clipped, opt.as_optax(phi).init(PARAMS))
    chex.assert_trees_all_close(optax.apply_updates(PARAMS, direct), params, rtol=1e-5, atol=1e-6)


def test_multisteps_accumulates_then_applies_under_jit(learned):
    opt, tx = learned
    multi = optax.MultiSteps(tx, every_k_schedule=2)
    step = jax.jit(multi.update)
    state = multi.init(PARAMS)
    u1, state = step(_grads(PARAMS), state, PARAMS)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(u1))
    u2, state = step(_grads(PARAMS), state, PARAMS)
    expected, _ = tx.update(_grads(PARAMS), tx.init(PARAMS), PARAMS)  # The mean of two equal grads.
    chex.assert_trees_all_close(u2, expected, rtol=1e-6)


def test_jit_does_not_retrace_on_the_second_call(learned):
    opt, _ = learned
    traces = []

    @jax.jit
    def train_step(phi, params, state):
        traces.append(1)
        tx = opt.as_optax(phi)
        grads = jax.grad(lambda p: sum(jnp.sum(x**2) for x in jax.tree.leaves(p)))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    phi = opt.init(jax.random.key(0))
    state = opt.as_optax(phi).init(PARAMS)
    params, state = train_step(phi, PARAMS, state)
    params, state = train_step(phi, params, state)
    params, state = train_step(jax.tree.map(lambda x: x * 1.01, phi), params, state)
    assert len(traces) == 1


def test_flax_nnx_optimizer_update(learned):
    from flax import nnx

    _, tx = learned
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x, y = jnp.ones((4, 3)), jnp.zeros((4, 2))

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
    losses = [float(train_step(model, optimizer)) for _ in range(3)]
    after = nnx.state(model, nnx.Param)
    assert all(np.isfinite(losses))
    assert not np.allclose(before["kernel"][...], after["kernel"][...])
    # The same steps taken by hand with the bare transformation agree.
    ref_model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    params = nnx.state(ref_model, nnx.Param)
    state = tx.init(params)
    for _ in range(3):
        grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(ref_model)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        nnx.update(ref_model, params)
    np.testing.assert_allclose(after["kernel"][...], params["kernel"][...], rtol=1e-5)


def test_flax_linen_train_state_apply_gradients(learned):
    import flax.linen as nn
    from flax.training import train_state

    _, tx = learned
    model = nn.Dense(2)
    x, y = jnp.ones((4, 3)), jnp.zeros((4, 2))
    variables = model.init(jax.random.key(0), x)
    state = train_state.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx)

    @jax.jit
    def train_step(state):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((state.apply_fn({"params": p}, x) - y) ** 2))(state.params)
        return state.apply_gradients(grads=grads), loss

    new_state, _ = train_step(state)
    new_state, _ = train_step(new_state)
    assert int(new_state.step) == 2
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state.opt_state, state.opt_state)
    assert not np.allclose(new_state.params["kernel"], state.params["kernel"])


# --- Properties -------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=-1e30, max_value=1e30, allow_nan=False, allow_subnormal=False), st.sampled_from([5.0, 10.0]))
def test_log_sign_features_are_finite_and_bounded(g, p):
    feats = np.asarray(preprocess(jnp.asarray([g], jnp.float32), "log_sign", p))[0]
    assert np.all(np.isfinite(feats))
    assert feats[0] >= -1.0 - 1e-6  # log|g|/p, or -1 for tiny gradients
    assert abs(feats[1]) <= 1.0 + 1e-6  # sign, or e^p g with |e^p g| < 1


@settings(max_examples=16, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=4), min_size=0, max_size=3))
def test_lstm_handles_any_leaf_shape(shape):
    opt = lstm(hidden_size=4)
    tx = opt.as_optax(opt.init(jax.random.key(0)))
    params = {"p": jnp.ones(shape)}
    updates, state = jax.jit(tx.update)(params, tx.init(params))
    assert updates["p"].shape == tuple(shape)
    assert state.h["p"].shape == (2, 4, *shape)


def test_the_registry_lists_every_optimizer_and_an_unknown_option_names_the_valid_ones():
    assert optimizers.available() == ["feature_mlp", "linear_rnn", "lstm"]
    assert {"hidden_size", "preset", "state_dtype", "implementation"} <= set(optimizers.options("lstm"))
    assert {"hidden_sizes", "reference_fan_in", "state_dtype"} <= set(optimizers.options("feature_mlp"))
    with pytest.raises(errors.ConfigError, match="unknown option.*hiden_sizes.*its options: exp_mult, hidden_sizes"):
        optimizers.get("feature_mlp", hiden_sizes=[4])
    with pytest.raises(errors.ConfigError, match="unknown option.*hidden.*its options: hidden_size"):
        optimizers.get("lstm", hidden=4)
    with pytest.raises(errors.UnknownNameError, match="choose one of feature_mlp, linear_rnn, lstm"):
        optimizers.options("gru")


def test_a_registered_optimizer_is_built_by_name_and_a_taken_name_is_refused(monkeypatch):
    monkeypatch.setattr(optimizers, "_REGISTRY", copy.deepcopy(optimizers._REGISTRY))
    optimizers.register("my_lstm", lstm)
    assert isinstance(optimizers.get("my_lstm", hidden_size=3), optimizers.CoordinatewiseLSTM)
    assert "my_lstm" in optimizers.available()
    optimizers.register("my_lstm", linear_rnn)  # A notebook cell run again: yours is taken over.
    assert isinstance(optimizers.get("my_lstm"), optimizers.LinearRNN)
    with pytest.raises(errors.ConfigError, match="'lstm' is a shipped learned optimizer"):
        optimizers.register("lstm", linear_rnn)
