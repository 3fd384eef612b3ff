"""The feature-MLP learned optimizer: the learned-optimizer contract, and its maths against a NumPy reference."""

from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2l_jax import optimizers, pretrained
from l2l_jax.errors import ConfigError, GradientsMismatchError, ParamsTypeError
from l2l_jax.optimizers.feature_mlp import NOMINAL_DECAY, PROGRESS_SCALES, feature_mlp


def reference_steps(phi, opt, grads_seq, params_seq):
    """The update of one tensor, step after step, written out in NumPy (float64)."""
    decays = np.asarray(opt.momentum_decays)
    m = np.zeros((len(decays), *grads_seq[0].shape))
    v = np.zeros(grads_seq[0].shape)
    out = []
    for t, (g, p) in enumerate(zip(grads_seq, params_seq), start=1):
        g = np.asarray(g, np.float64)
        m = decays.reshape(-1, *([1] * g.ndim)) * m + (1 - decays.reshape(-1, *([1] * g.ndim))) * g
        v = opt.second_moment_decay * v + (1 - opt.second_moment_decay) * g * g
        r = 1 / np.sqrt(v + 1e-12)
        feats = [g[None], m, m * r, (g * r)[None]]
        if opt.use_params:
            feats.append(np.asarray(p, np.float64)[None])
        x = np.concatenate(feats, 0)
        tensor_input = 0.0
        if "tensor_w" in phi:  # Each feature's log RMS over the tensor, its log fan-in and log fan-out.
            fan_in = int(np.prod(g.shape[:-1])) if g.ndim >= 2 else 1
            fan_out = g.shape[-1] if g.ndim >= 1 else 1
            mean_squares = np.mean(x.reshape(len(x), -1) ** 2, axis=1) + 1e-12
            tensor = np.concatenate([0.5 * np.log(mean_squares), np.log([fan_in, fan_out])])
            tensor_input = tensor @ np.asarray(phi["tensor_w"], np.float64)
        if opt.normalise_features:
            x = x / np.sqrt(np.mean(x.reshape(len(x), -1) ** 2, axis=1) + 1e-12).reshape(-1, *([1] * g.ndim))
        x = np.moveaxis(x, 0, -1)
        if opt.use_progress:
            prog = np.tanh(t / np.asarray(PROGRESS_SCALES))
            x = np.concatenate([x, np.broadcast_to(prog, (*g.shape, len(prog)))], -1)
        layers = phi["layers"]
        for i, layer in enumerate(layers):
            x = x @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64)
            if i == 0:
                x = x + tensor_input
            if i < len(layers) - 1:
                x = np.maximum(x, 0)
        if opt.output == "nominal":
            k = list(opt.momentum_decays).index(NOMINAL_DECAY)
            m_hat = m[k] / (1 - NOMINAL_DECAY**t)
            v_hat = v / (1 - opt.second_moment_decay**t)
            lr = np.exp(float(phi["log_lr"]))
            step = np.exp(opt.exp_mult * x[..., 1]) * (opt.step_mult * x[..., 0] - lr * m_hat / (np.sqrt(v_hat) + 1e-8))
        else:
            step = x[..., 0] * np.exp(opt.exp_mult * x[..., 1]) * opt.step_mult
        out.append(step * (1.0 if opt.warmup_steps is None else min(1.0, t / opt.warmup_steps)))
    return out


@pytest.mark.parametrize(
    "options",
    [
        {"use_params": True, "use_progress": True},
        {"use_params": False, "use_progress": False},
        {"output": "nominal", "exp_mult": 0.1, "nominal_lr": 0.03},
        {"output": "nominal", "normalise_features": False, "use_params": False},
        {"output": "nominal", "tensor_features": True},
        {"tensor_features": True, "normalise_features": False, "use_progress": False},
        {"output": "nominal", "warmup_steps": 3},
    ],
)
def test_updates_equal_the_numpy_reference(options):
    assert_updates_equal_the_reference(options, (4, 3))


@pytest.mark.parametrize("shape", [(), (5,), (3, 3, 2, 4)])
@pytest.mark.parametrize("tensor_features", [False, True])
def test_updates_equal_the_numpy_reference_for_leaves_of_any_rank(shape, tensor_features):
    assert_updates_equal_the_reference(
        {"output": "nominal", "exp_mult": 0.1, "tensor_features": tensor_features}, shape
    )


def assert_updates_equal_the_reference(options, shape):
    """Five jitted float64 updates of a tensor of ``shape`` equal `reference_steps`."""
    with jax.enable_x64(True):
        opt = feature_mlp(hidden_sizes=(8, 8), **options)
        phi = opt.init(jax.random.key(0))
        if opt.output == "nominal":  # Its last layer starts at zero: give it weights so the test sees them.
            phi["layers"][-1]["w"] = jax.random.normal(jax.random.key(1), phi["layers"][-1]["w"].shape)
        if opt.tensor_features:  # As do the tensor features' weights.
            phi["tensor_w"] = 0.1 * jax.random.normal(jax.random.key(2), phi["tensor_w"].shape)
        phi = jax.tree.map(lambda x: x.astype(jnp.float64) * 3, phi)
        tx = jax.jit(opt.as_optax(phi).update)
        rng = np.random.default_rng(0)
        p = rng.normal(size=shape)
        if opt.output == "nominal":
            assert set(phi) == {"layers", "log_lr"} | ({"tensor_w"} if opt.tensor_features else set())
        grads = [rng.normal(size=shape) * s for s in (1.0, 0.1, 10.0, 1.0, 0.5)]
        state = opt.as_optax(phi).init(jnp.asarray(p))
        got = []
        for g in grads:
            u, state = tx(jnp.asarray(g), state, jnp.asarray(p))
            got.append(np.asarray(u))
        want = reference_steps(phi, opt, grads, [p] * len(grads))
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-15)
        assert int(state.count) == len(grads)


def test_the_untrained_nominal_optimizer_is_adam_at_its_nominal_rate():
    opt = feature_mlp(output="nominal", nominal_lr=0.03)
    tx, adam = opt.as_optax(opt.init(jax.random.key(0))), optax.adam(0.03)
    params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    state, adam_state = tx.init(params), adam.init(params)
    update, adam_update = jax.jit(tx.update), jax.jit(adam.update)
    rng = np.random.default_rng(0)
    for scale in (1.0, 0.01, 100.0, 1.0):
        grads = jax.tree.map(lambda p, scale=scale: jnp.asarray(rng.normal(size=p.shape) * scale, jnp.float32), params)
        updates, state = update(grads, state, params)
        want, adam_state = adam_update(grads, adam_state, params)
        for k in params:
            np.testing.assert_allclose(updates[k], want[k], rtol=1e-5, atol=1e-9)


def test_it_composes_with_optax_chain_and_masks_in_any_pytree():
    opt = optimizers.get("feature_mlp")
    phi = opt.init(jax.random.key(1))
    params = {"dense": {"w": jnp.ones((5, 3)), "b": jnp.zeros(3)}, "scale": jnp.array(2.0), "empty": {}}
    tx = optax.chain(optax.clip_by_global_norm(1.0), opt.as_optax(phi), optax.scale(1.0))
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    assert all(bool(jnp.all(jnp.isfinite(u))) and bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates))
    masked = optax.masked(opt.as_optax(phi), {"dense": {"w": True, "b": False}, "scale": False, "empty": {}})
    mstate = masked.init(params)
    mu, _ = jax.jit(masked.update)(grads, mstate, params)
    assert bool(jnp.all(mu["dense"]["b"] == 1)) and bool(jnp.any(mu["dense"]["w"] != 1))


@pytest.mark.parametrize("dtype, state_dtype", [(jnp.bfloat16, jnp.float32), (jnp.float32, jnp.float32)])
def test_updates_have_the_parameters_dtype_and_state_is_at_least_float32(dtype, state_dtype):
    opt = feature_mlp()
    tx = opt.as_optax(opt.init(jax.random.key(0)))
    params = jnp.ones((4,), dtype)
    state = tx.init(params)
    assert state.momenta.dtype == state_dtype and state.second_moment.dtype == state_dtype
    updates, state = tx.update(jnp.full((4,), 0.3, dtype), state, params)
    assert updates.dtype == dtype and state.momenta.shape == (4, 4)


def test_a_non_finite_coordinate_gets_no_update_keeps_its_state_and_leaves_the_others_alone():
    opt = feature_mlp()
    tx = opt.as_optax(opt.init(jax.random.key(0)))
    params = jnp.arange(6.0).reshape(2, 3)
    grads = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)
    state = tx.init(params)
    _, state = tx.update(grads, state, params)
    bad = grads.at[0, 1].set(jnp.nan)
    u_bad, s_bad = tx.update(bad, state, params)
    assert float(u_bad[0, 1]) == 0.0
    assert float(s_bad.second_moment[0, 1]) == float(state.second_moment[0, 1])
    np.testing.assert_array_equal(s_bad.momenta[:, 0, 1], state.momenta[:, 0, 1])
    # The other coordinates: as for the tensor without that coordinate (per-tensor normalisation over the others).
    keep = np.ones((2, 3), bool)
    keep[0, 1] = False
    flat = lambda x: x.reshape(*x.shape[: x.ndim - 2], -1)[..., keep.reshape(-1)]
    sub_state = state._replace(momenta=flat(state.momenta), second_moment=flat(state.second_moment))
    u_sub, _ = tx.update(flat(grads), sub_state, flat(params))
    np.testing.assert_allclose(flat(u_bad), u_sub, rtol=1e-6)


@functools.cache
def default_optimizer():
    """The default feature MLP with φ from key 0: its ``init`` and jitted ``update``.

    One jitted function for all the parametrizations below, so each leaf shape is traced and
    compiled once, not once per non-finite value.
    """
    opt = feature_mlp()
    tx = opt.as_optax(opt.init(jax.random.key(0)))
    return tx.init, jax.jit(tx.update)


@pytest.mark.parametrize("value", [jnp.nan, jnp.inf, -jnp.inf])
@pytest.mark.parametrize("shape", [(2, 3), (300, 256)])  # the matrix products and the coordinatewise network
def test_a_non_finite_parameter_is_left_alone_like_a_non_finite_gradient(value, shape):
    # Its coordinate gets update 0 and keeps its state; the others get exactly what they
    # get when that coordinate's gradient is the non-finite one.
    init, tx = default_optimizer()
    params = jax.random.normal(jax.random.key(1), shape)
    grads = jax.random.normal(jax.random.key(2), shape)
    state = init(params)
    _, state = tx(grads, state, params)
    u_param, s_param = tx(grads, state, params.at[1, 2].set(value))
    u_grad, s_grad = tx(grads.at[1, 2].set(value), state, params)
    assert float(u_param[1, 2]) == 0.0 and bool(jnp.all(jnp.isfinite(u_param)))
    np.testing.assert_array_equal(s_param.momenta[:, 1, 2], state.momenta[:, 1, 2])
    for a, b in zip(jax.tree.leaves((u_param, s_param)), jax.tree.leaves((u_grad, s_grad))):
        np.testing.assert_array_equal(a, b)


def test_a_bfloat16_state_halves_the_state_and_keeps_the_updates_close():
    # Stored in bfloat16, computed in float32: over 20 steps of a quadratic the updates
    # stay within a few bfloat16 roundings of the float32 state's.
    phi = feature_mlp().init(jax.random.key(0))
    runs = {}
    for dtype in (None, "bfloat16"):
        opt = feature_mlp(state_dtype=dtype)
        tx = opt.as_optax(phi)
        params = jax.random.normal(jax.random.key(1), (64,))
        state = tx.init(params)
        update = jax.jit(tx.update)
        steps = []
        for _ in range(20):
            updates, state = update(2.0 * params, state, params)
            params = params + updates
            steps.append(updates)
        runs[dtype] = (jnp.stack(steps), state)
    steps_bf16, state_bf16 = runs["bfloat16"]
    assert state_bf16.momenta.dtype == jnp.bfloat16 and state_bf16.second_moment.dtype == jnp.bfloat16
    assert steps_bf16.dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(runs[None][0])))
    assert scale > 1e-4  # not vacuous
    assert float(jnp.max(jnp.abs(steps_bf16 - runs[None][0]))) <= 0.05 * scale
    assert feature_mlp(state_dtype="bfloat16").config()["state_dtype"] == "bfloat16"
    assert "state_dtype" not in feature_mlp().config()


def test_a_network_past_the_size_bound_is_refused_before_anything_is_allocated():
    with pytest.raises(ConfigError, match="meta-parameters; at most 2\\*\\*30"):
        feature_mlp(hidden_sizes=[10**9])
    with pytest.raises(ConfigError, match="state_dtype"):
        feature_mlp(state_dtype="int8")
    assert feature_mlp(hidden_sizes=(32, 32)).meta_param_count() == sum(
        leaf.size for leaf in jax.tree.leaves(feature_mlp().init(jax.random.key(0)))
    )


def test_bad_input_is_refused_with_clear_errors():
    opt = feature_mlp()
    tx = opt.as_optax(opt.init(jax.random.key(0)))
    state = tx.init({"w": jnp.ones(3)})
    with pytest.raises(ConfigError, match="needs params"):
        tx.update({"w": jnp.ones(3)}, state)
    with pytest.raises(GradientsMismatchError):
        tx.update({"w": jnp.ones(4)}, state, {"w": jnp.ones(4)})
    with pytest.raises(ParamsTypeError):
        tx.init({"w": jnp.ones(3, jnp.int32)})
    for options in ({"hidden_sizes": (0,)}, {"momentum_decays": (1.0,)}, {"second_moment_decay": 1.0},
                    {"step_mult": -1.0}, {"use_params": "yes"}, {"output": "linear"}, {"nominal_lr": 0.0},
                    {"normalise_features": 1}):  # fmt: skip
        with pytest.raises(ConfigError):
            optimizers.get("feature_mlp", **options)
    with pytest.raises(ConfigError, match="needs 0.9 among momentum_decays"):
        feature_mlp(output="nominal", momentum_decays=(0.5, 0.99))


def test_config_rebuilds_the_optimizer_and_meta_gradients_are_finite():
    opt = feature_mlp(hidden_sizes=(16,), momentum_decays=(0.9, 0.99), use_progress=False, output="nominal")
    again = optimizers.get("feature_mlp", **opt.config())
    assert again.config() == opt.config() and again.num_features == opt.num_features == 2 + 2 * 2 + 1
    phi = opt.init(jax.random.key(0))
    phi["layers"][-1]["w"] = phi["layers"][-1]["w"] + 0.1

    def meta_loss(phi):
        tx = opt.as_optax(phi)
        p = jnp.array([3.0, -2.0])
        state = tx.init(p)
        for _ in range(5):
            u, state = tx.update(2 * p, state, p)
            p = p + u
        return jnp.sum(p**2)

    grads = jax.jit(jax.grad(meta_loss))(phi)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert any(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads))


# --- width-aware updates (reference_fan_in, reference_fan_out) ----------------------------


def gradient_signs(shapes):
    """The fixed random signs of `first_updates`' gradients, one array per shape."""
    return [jnp.sign(jax.random.normal(jax.random.key(7), shape)) for shape in shapes]


def first_updates(opt, phi, shapes, grad_scale=0.1):
    """The first updates of tensors of ``shapes``, each with gradient ``grad_scale`` times a fixed random sign.

    The tensors are the leaves of one list, updated by one compiled call: the optimizer
    updates every leaf on its own (features normalised per tensor, width factors from the
    leaf's own shape), so each gets the update it would get alone.
    """
    signs = gradient_signs(shapes)
    params = [0.01 * jax.random.normal(jax.random.key(8), shape) for shape in shapes]
    tx = opt.as_optax(phi)
    updates, _ = jax.jit(tx.update)([grad_scale * sign for sign in signs], jax.jit(tx.init)(params), params)
    return updates


def test_with_a_reference_fan_in_a_layer_moves_its_outputs_the_same_whatever_its_width():
    opt = feature_mlp(hidden_sizes=(8,), output="nominal", reference_fan_in=128.0)
    phi = opt.init(jax.random.key(0))
    phi["layers"][-1]["w"] = 0.3 * jax.random.normal(jax.random.key(1), phi["layers"][-1]["w"].shape)
    shapes = [(fan_in, 10) for fan_in in (128, 256, 1280, 4096)]
    moves = []
    for u, sign in zip(first_updates(opt, phi, shapes), gradient_signs(shapes)):
        x = -sign  # an input aligned with the step
        moves.append(float(jnp.mean(jnp.abs(jnp.sum(u * x, axis=0)))))  # |Δ output| per output unit
    np.testing.assert_allclose(moves, moves[0], rtol=0.05)
    # Without it the move grows with the fan-in, as Adam's does.
    plain = feature_mlp(**{**opt.config(), "reference_fan_in": None})
    wide, narrow = (float(jnp.sum(jnp.abs(u))) / 10 for u in first_updates(plain, phi, [(4096, 10), (128, 10)]))
    assert wide / narrow == pytest.approx(32, rel=0.05)


def test_the_width_factor_is_min_of_one_and_reference_over_fan_in_and_spares_vectors():
    opt = feature_mlp(output="nominal", reference_fan_in=64.0)
    plain = feature_mlp(output="nominal")
    phi = opt.init(jax.random.key(0))
    cases = [((16, 4), 1.0), ((64, 4), 1.0), ((256, 4), 0.25), ((3, 3, 32, 8), 64 / 288), ((1000,), 1.0)]
    shapes = [shape for shape, _ in cases]
    for (shape, factor), u, u_plain in zip(cases, first_updates(opt, phi, shapes), first_updates(plain, phi, shapes)):
        np.testing.assert_allclose(u, factor * u_plain, rtol=1e-6, err_msg=f"shape {shape}")
    assert opt.config()["reference_fan_in"] == 64.0 and "reference_fan_in" not in plain.config()
    assert optimizers.get("feature_mlp", **opt.config()).config() == opt.config()
    for bad in (0.0, -1.0, float("inf"), "64"):
        with pytest.raises(ConfigError, match="reference_fan_in must be a positive number"):
            feature_mlp(reference_fan_in=bad)


def test_with_a_reference_fan_out_a_hidden_layer_moves_a_standard_read_out_the_same_whatever_its_width():
    # x (d inputs) -> h = x @ w1 (n units) -> logit = h @ w2, w2 of entries ±1/√n as Flax initialises it.
    # The first layer's gradient is the logit's, x_i · w2_j: its step moves every h_j against w2_j,
    # so the logit moves by the sum of n such moves through weights of 1/√n.
    opt = feature_mlp(hidden_sizes=(8,), output="nominal", reference_fan_in=128.0, reference_fan_out=128.0)
    phi = opt.init(jax.random.key(0))
    phi["layers"][-1]["w"] = 0.3 * jax.random.normal(jax.random.key(1), phi["layers"][-1]["w"].shape)
    x = jnp.abs(jax.random.normal(jax.random.key(2), (64,)))

    def logit_moves(opt, widths):
        # The first layers of every width in one list, updated by one compiled call (each leaf on its own).
        w2s = [jnp.sign(jax.random.normal(jax.random.key(3), (n,))) / jnp.sqrt(n) for n in widths]
        w1s = [0.01 * jax.random.normal(jax.random.key(4), (64, n)) for n in widths]
        tx = opt.as_optax(phi)
        us, _ = jax.jit(tx.update)([0.1 * jnp.outer(x, w2) for w2 in w2s], jax.jit(tx.init)(w1s), w1s)
        return [float(jnp.abs((x @ u) @ w2)) for u, w2 in zip(us, w2s)]

    moves = logit_moves(opt, (128, 512, 2048, 4096))
    np.testing.assert_allclose(moves, moves[0], rtol=0.05)
    # Without it the move grows as √n: a standard read-out adds up n aligned moves of 1/√n each.
    plain = feature_mlp(**{**opt.config(), "reference_fan_out": None})
    wide, narrow = logit_moves(plain, (4096, 128))
    assert wide / narrow == pytest.approx(32**0.5, rel=0.05)


def test_the_fan_out_factor_is_the_root_of_min_of_one_and_reference_over_the_last_axis_biases_included():
    opt = feature_mlp(output="nominal", reference_fan_in=64.0, reference_fan_out=128.0)
    plain = feature_mlp(output="nominal")
    phi = opt.init(jax.random.key(0))
    # (128, 256): both factors, under COORDINATEWISE_MIN_SIZE; test_with_a_reference_fan_out_... has them
    # on leaves past it.
    cases = [((16, 4), 1.0), ((4, 128), 1.0), ((4, 512), 0.5), ((128, 256), 0.5 * 0.5**0.5),
             ((3, 3, 4, 256), 0.5**0.5), ((1000,), (128 / 1000) ** 0.5), ((100,), 1.0), ((), 1.0)]  # fmt: skip
    shapes = [shape for shape, _ in cases]
    for (shape, factor), u, u_plain in zip(cases, first_updates(opt, phi, shapes), first_updates(plain, phi, shapes)):
        np.testing.assert_allclose(u, factor * u_plain, rtol=1e-6, err_msg=f"shape {shape}")
    assert opt.config()["reference_fan_out"] == 128.0 and "reference_fan_out" not in plain.config()
    assert optimizers.get("feature_mlp", **opt.config()).config() == opt.config()
    for bad in (0.0, -1.0, float("inf"), "64"):
        with pytest.raises(ConfigError, match="reference_fan_out must be a positive number"):
            feature_mlp(reference_fan_out=bad)


@pytest.mark.parametrize("tensor_features", [False, True])
def test_the_coordinatewise_network_gives_the_updates_of_the_matrix_products(monkeypatch, tensor_features):
    module = importlib.import_module("l2l_jax.optimizers.feature_mlp")
    params = {"w": jax.random.normal(jax.random.key(0), (20, 30)) * 0.1, "b": jnp.zeros(30)}
    shipped, phi = pretrained.load_meta_params("generalist")
    opt = feature_mlp(**{**shipped.config(), "tensor_features": tensor_features})
    if tensor_features:
        phi = {**opt.extend(phi), "tensor_w": 0.1 * jax.random.normal(jax.random.key(2), (opt.num_tensor_features, 16))}
    runs = {}
    for threshold in (1, 2**62):  # Every leaf coordinatewise, then none.
        monkeypatch.setattr(module, "COORDINATEWISE_MIN_SIZE", threshold)
        tx = opt.as_optax(phi)
        update = jax.jit(tx.update)  # Traced (reading the threshold) at its first call, below.
        state, p, updates = tx.init(params), params, []
        for t in range(3):
            grads = jax.tree.map(lambda x, t=t: jnp.sin(x * (t + 1)) + 0.01, p)
            u, state = update(grads, state, p)
            p = optax.apply_updates(p, u)
            updates.append(u)
        runs[threshold] = updates
    for a, b in zip(*runs.values()):
        for leaf in ("w", "b"):
            # Other summation order: agreement to float rounding, relative to the largest update
            # (a step that nearly cancels, network step minus nominal Adam step, has no relative accuracy).
            scale = float(np.max(np.abs(b[leaf])))
            np.testing.assert_allclose(a[leaf], b[leaf], rtol=1e-5, atol=1e-6 * scale)


# --- the step bound (step_bound) ------------------------------------------------------------


def steps_with_an_outlier(opt, phi, shape, steps=3):
    """Updates over ``steps`` steps of a tensor whose gradient at coordinate 0 is 100 times the others'.

    The parameters are not moved, so two optimizers' updates see the same features at every step.
    """
    sign = jnp.sign(jax.random.normal(jax.random.key(7), shape))
    grad = (0.01 * sign).reshape(-1).at[0].set(1.0).reshape(shape)
    params = 0.01 * jax.random.normal(jax.random.key(8), shape)
    tx = opt.as_optax(phi)
    state, out = jax.jit(tx.init)(params), []
    for t in range(steps):
        u, state = jax.jit(tx.update)(grad * (1.0 + 0.1 * t), state, params)
        out.append(u)
    return out


@pytest.mark.parametrize("output", ["nominal", "bounded"])
def test_a_step_bound_clips_every_coordinate_to_kappa_units_and_changes_nothing_else(output):
    opt = feature_mlp(hidden_sizes=(8,), output=output, exp_mult=1.0, step_bound=3.0)
    plain = feature_mlp(**{**opt.config(), "step_bound": None})
    phi = opt.init(jax.random.key(0))
    phi["layers"][-1]["w"] = 2.0 * jax.random.normal(jax.random.key(1), phi["layers"][-1]["w"].shape)
    unit = float(jnp.exp(phi["log_lr"])) if output == "nominal" else opt.step_mult
    for u, u_plain in zip(steps_with_an_outlier(opt, phi, (64, 8)), steps_with_an_outlier(plain, phi, (64, 8))):
        np.testing.assert_allclose(u, jnp.clip(u_plain, -3.0 * unit, 3.0 * unit), rtol=1e-6, atol=1e-9)
    # The outlier's unbounded step is past the bound: the bound did something.
    assert max(float(jnp.max(jnp.abs(u))) for u in steps_with_an_outlier(plain, phi, (64, 8))) > 3.0 * unit


def test_the_step_bound_applies_before_the_width_factors():
    opt = feature_mlp(hidden_sizes=(8,), output="nominal", exp_mult=1.0, step_bound=2.0, reference_fan_in=64.0)
    narrow = feature_mlp(**{**opt.config(), "reference_fan_in": None})
    phi = opt.init(jax.random.key(0))
    phi["layers"][-1]["w"] = 2.0 * jax.random.normal(jax.random.key(1), phi["layers"][-1]["w"].shape)
    for u, u_narrow in zip(steps_with_an_outlier(opt, phi, (256, 4)), steps_with_an_outlier(narrow, phi, (256, 4))):
        np.testing.assert_allclose(u, 0.25 * u_narrow, rtol=1e-6)


def test_the_step_bound_is_recorded_only_when_set_and_bad_values_are_refused():
    opt, plain = feature_mlp(output="nominal", step_bound=3.0), feature_mlp(output="nominal")
    assert opt.config()["step_bound"] == 3.0 and "step_bound" not in plain.config()
    assert optimizers.get("feature_mlp", **opt.config()).config() == opt.config()
    for bad in (0.0, -1.0, float("inf"), "3"):
        with pytest.raises(ConfigError, match="step_bound must be a positive number"):
            feature_mlp(step_bound=bad)


# --- tensor features (tensor_features) ------------------------------------------------------


def test_switching_tensor_features_on_over_a_trained_phi_changes_no_update():
    plain = feature_mlp(hidden_sizes=(8,), output="nominal", exp_mult=1.0, reference_fan_in=64.0)
    opt = feature_mlp(**{**plain.config(), "tensor_features": True})
    phi = plain.init(jax.random.key(0))
    phi["layers"][-1]["w"] = jax.random.normal(jax.random.key(1), phi["layers"][-1]["w"].shape)
    extended = opt.extend(phi)
    assert extended["tensor_w"].shape == (opt.num_tensor_features, 8) == (2 + 2 * 4 + 1 + 2, 8)
    assert not jnp.any(extended["tensor_w"]) and not jnp.any(opt.init(jax.random.key(0))["tensor_w"])
    assert opt.meta_param_count() == sum(x.size for x in jax.tree.leaves(extended)) == plain.meta_param_count() + 13 * 8
    shapes = [(64, 8), (300, 3), (8,), (3, 3, 2, 4), ()]
    for u, u_plain in zip(first_updates(opt, extended, shapes), first_updates(plain, phi, shapes)):
        # Another program (one more addition, of zero): the same updates up to float32 rounding.
        np.testing.assert_allclose(u, u_plain, rtol=1e-6, atol=1e-7 * float(jnp.max(jnp.abs(u_plain))))
    with pytest.raises(ConfigError, match="extend needs an optimizer with tensor_features and a φ without them"):
        opt.extend(extended)
    with pytest.raises(NotImplementedError):
        optimizers.get("lstm").extend({})


@pytest.mark.parametrize("shape", [(64, 8), (8,)])
def test_with_tensor_features_a_tensors_gradient_scale_changes_its_step_and_without_them_it_does_not(shape):
    # Every per-coordinate feature is divided by its root mean square over the tensor, and the nominal
    # step is Adam's: without tensor features a gradient 10 times larger gives the same update.
    plain = feature_mlp(hidden_sizes=(8,), output="nominal", exp_mult=1.0)
    opt = feature_mlp(**{**plain.config(), "tensor_features": True})
    phi = opt.init(jax.random.key(0))
    phi["layers"][-1]["w"] = jax.random.normal(jax.random.key(1), phi["layers"][-1]["w"].shape)
    phi["tensor_w"] = 0.1 * jax.random.normal(jax.random.key(2), phi["tensor_w"].shape)
    phi_plain = {k: v for k, v in phi.items() if k != "tensor_w"}
    (small,), (large,) = first_updates(plain, phi_plain, [shape], 0.1), first_updates(plain, phi_plain, [shape], 1.0)
    np.testing.assert_allclose(large, small, rtol=1e-4)
    (small,), (large,) = first_updates(opt, phi, [shape], 0.1), first_updates(opt, phi, [shape], 1.0)
    assert float(jnp.max(jnp.abs(large - small))) > 1e-2 * float(jnp.max(jnp.abs(small)))


def test_a_gradient_whose_squares_overflow_gives_finite_updates_with_tensor_features():
    # 1e30 squared is inf in float32: the tensor's log RMS is capped, not log(inf) times a zero weight (NaN).
    plain = feature_mlp(hidden_sizes=(8,), output="nominal", exp_mult=1.0)
    opt = feature_mlp(**{**plain.config(), "tensor_features": True})
    phi = plain.init(jax.random.key(0))
    phi["layers"][-1]["w"] = jax.random.normal(jax.random.key(1), phi["layers"][-1]["w"].shape)
    params, grads = jnp.ones((4, 3)), jnp.full((4, 3), 1e30).at[0, 0].set(-1e30)
    (plain_update, _), (update, _) = (o.as_optax(f).update(grads, o.as_optax(f).init(params), params)
                                      for o, f in ((plain, phi), (opt, opt.extend(phi))))  # fmt: skip
    assert bool(jnp.all(jnp.isfinite(update))) and bool(jnp.all(jnp.isfinite(plain_update)))
    np.testing.assert_allclose(update, plain_update, rtol=1e-6)


def test_tensor_features_are_recorded_only_when_on_and_bad_values_are_refused():
    opt, plain = feature_mlp(tensor_features=True), feature_mlp()
    assert opt.config()["tensor_features"] is True and "tensor_features" not in plain.config()
    assert optimizers.get("feature_mlp", **opt.config()).config() == opt.config()
    with pytest.raises(ConfigError, match="tensor_features"):
        feature_mlp(tensor_features="yes")


# --- the warm-up (warmup_steps) -------------------------------------------------------------


@pytest.mark.parametrize("output", ["nominal", "bounded"])
def test_a_warmup_of_k_steps_multiplies_step_t_by_min_of_one_and_t_over_k_and_changes_nothing_else(output):
    opt = feature_mlp(hidden_sizes=(8,), output=output, exp_mult=1.0, step_bound=3.0, warmup_steps=3)
    plain = feature_mlp(**{**opt.config(), "warmup_steps": None})
    phi = opt.init(jax.random.key(0))
    phi["layers"][-1]["w"] = 2.0 * jax.random.normal(jax.random.key(1), phi["layers"][-1]["w"].shape)
    warm, cold = steps_with_an_outlier(opt, phi, (16, 8), steps=5), steps_with_an_outlier(plain, phi, (16, 8), steps=5)
    for t, (u, u_plain) in enumerate(zip(warm, cold), start=1):
        assert float(jnp.max(jnp.abs(u_plain))) > 0
        np.testing.assert_allclose(u, min(1.0, t / 3) * u_plain, rtol=1e-6)


def test_the_warmup_is_recorded_only_when_set_adds_no_weights_and_bad_values_are_refused():
    opt, plain = feature_mlp(output="nominal", warmup_steps=2), feature_mlp(output="nominal")
    assert opt.config()["warmup_steps"] == 2 and "warmup_steps" not in plain.config()
    assert optimizers.get("feature_mlp", **opt.config()).config() == opt.config()
    assert opt.meta_param_count() == plain.meta_param_count()
    optimizers.check_meta_params(opt, plain.init(jax.random.key(0)))  # A trained φ takes it as it is.
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ConfigError, match="warmup_steps must be a positive integer"):
            feature_mlp(warmup_steps=bad)
