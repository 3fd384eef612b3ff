"""What the learned optimizers do with awkward input: non-finite gradients, empty or
mismatched trees, and sizes or types that make no sense."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2l_jax import errors, optimizers
from l2l_jax.optimizers import feature_mlp, linear_rnn, lstm
from l2l_jax.optimizers.lstm import MAX_META_PARAMS, meta_param_count

#: Every implementation of every learned optimizer. A narrow LSTM keeps the Pallas
#: kernel (interpreted on a CPU) quick to compile.
IMPLEMENTATIONS = ["lstm-reference", "lstm-fused", "lstm-pallas", "linear_rnn"]

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.zeros(4)}
BAD = (1, 2)  # the coordinate of PARAMS["w"] that gets the non-finite gradient


def make(which: str):
    if which == "linear_rnn":
        opt = linear_rnn()
    else:
        opt = lstm(hidden_size=6, implementation=which.split("-")[1])
    return opt, opt.as_optax(opt.init(jax.random.key(0)))


def gradient(step: int):
    """A clean gradient for PARAMS, different at every step."""
    keys = jax.random.split(jax.random.key(100 + step))
    return {"w": jax.random.normal(keys[0], (3, 4)), "b": jax.random.normal(keys[1], (4,))}


def poisoned(grads, value: float):
    return {**grads, "w": grads["w"].at[BAD].set(value)}


def w_state(state):
    """The state arrays of leaf ``w`` (LSTM: h and c; linear RNN: hidden), coordinates last."""
    return [field["w"] for field in state]


def b_state(state):
    return [field["b"] for field in state]


def all_but_bad(a):
    return np.delete(np.asarray(a).reshape(*np.shape(a)[:-2], 12), BAD[0] * 4 + BAD[1], axis=-1)


def warmed_up(tx, steps: int = 2):
    """The state after a few clean steps, so that it is not all zeros."""
    update = jax.jit(tx.update)
    state = tx.init(PARAMS)
    for t in range(steps):
        _, state = update(gradient(t), state, PARAMS)
    return update, state


# --- Non-finite gradients ----------------------------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", IMPLEMENTATIONS)
def test_a_non_finite_gradient_coordinate_gets_no_update_and_keeps_its_state(which, value):
    _, tx = make(which)
    update, state = warmed_up(tx)
    clean = gradient(2)
    got, got_state = update(poisoned(clean, value), state, PARAMS)
    want, want_state = update(clean, state, PARAMS)
    # That coordinate: update 0, its state exactly as before.
    assert float(got["w"][BAD]) == 0.0
    for new, old in zip(w_state(got_state), w_state(state)):
        np.testing.assert_array_equal(new[..., BAD[0], BAD[1]], old[..., BAD[0], BAD[1]])
    # Every other coordinate: exactly as if the bad one were not there.
    np.testing.assert_array_equal(all_but_bad(got["w"]), all_but_bad(want["w"]))
    np.testing.assert_array_equal(got["b"], want["b"])
    for new, ref in zip(w_state(got_state), w_state(want_state)):
        np.testing.assert_array_equal(all_but_bad(new), all_but_bad(ref))
    for new, ref in zip(b_state(got_state), b_state(want_state)):
        np.testing.assert_array_equal(new, ref)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves((got, got_state)))


@pytest.mark.parametrize("which", IMPLEMENTATIONS)
def test_after_a_nan_gradient_that_coordinate_continues_as_if_it_had_skipped_the_step(which):
    _, tx = make(which)
    update = jax.jit(tx.update)
    grads = [gradient(t) for t in range(8)]
    nan_step = 2

    def run(sequence):
        state, out = tx.init(PARAMS), []
        for g in sequence:
            u, state = update(g, state, PARAMS)
            out.append(u)
        return out

    with_nan = run([poisoned(g, np.nan) if t == nan_step else g for t, g in enumerate(grads)])
    clean = run(grads)
    skipped = run([g for t, g in enumerate(grads) if t != nan_step])
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(with_nan))
    assert float(with_nan[nan_step]["w"][BAD]) == 0.0
    # The bad coordinate: the run that never saw that step, one step behind after it.
    for t in range(8):
        if t != nan_step:
            expected = skipped[t if t < nan_step else t - 1]["w"][BAD]
            np.testing.assert_array_equal(with_nan[t]["w"][BAD], expected)
    # Every other coordinate: the clean run, at every step.
    for got, want in zip(with_nan, clean):
        np.testing.assert_array_equal(all_but_bad(got["w"]), all_but_bad(want["w"]))
        np.testing.assert_array_equal(got["b"], want["b"])


@pytest.mark.parametrize("which", IMPLEMENTATIONS)
def test_behind_global_norm_clipping_a_nan_step_updates_nothing_and_the_next_step_is_clean(which):
    # One NaN makes the global norm NaN, so clipping turns every coordinate into NaN.
    opt, _ = make(which)
    tx = optax.chain(optax.clip_by_global_norm(1.0), opt.as_optax(opt.init(jax.random.key(0))))
    update = jax.jit(tx.update)
    state = tx.init(PARAMS)
    _, state = update(gradient(0), state, PARAMS)
    zero, after_nan = update(poisoned(gradient(1), np.nan), state, PARAMS)
    assert all(float(jnp.max(jnp.abs(leaf))) == 0.0 for leaf in jax.tree.leaves(zero))
    for a, b in zip(jax.tree.leaves(after_nan), jax.tree.leaves(state)):
        np.testing.assert_array_equal(a, b)
    nxt, _ = update(gradient(2), after_nan, PARAMS)
    want, _ = update(gradient(2), state, PARAMS)  # as if the NaN step never happened
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(nxt))
    for a, b in zip(jax.tree.leaves(nxt), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)


# Every LSTM implementation's meta-gradient through a masked coordinate is compared
# with the reference one in tests/test_fast_paths.py; here the default and the linear RNN.
@pytest.mark.parametrize("which", ["lstm-fused", "linear_rnn"])
def test_meta_gradients_through_a_masked_coordinate_are_finite(which):
    opt, _ = make(which)
    phi = opt.init(jax.random.key(0))
    bad = poisoned(gradient(0), np.nan)

    def loss(phi):
        tx = opt.as_optax(phi)
        first, state = tx.update(bad, tx.init(PARAMS), PARAMS)
        second, _ = tx.update(gradient(1), state, PARAMS)
        return sum(jnp.sum(jnp.sin(u) + u**2) for u in jax.tree.leaves((first, second)))

    value, meta_grad = jax.jit(jax.value_and_grad(loss))(phi)
    assert bool(jnp.isfinite(value))
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(meta_grad))
    assert any(float(jnp.max(jnp.abs(leaf))) > 0 for leaf in jax.tree.leaves(meta_grad))


# --- Empty and mismatched trees -------------------------------------------------


@pytest.mark.parametrize("which", ["lstm", "linear_rnn"])
def test_an_empty_tree_gets_an_empty_update_like_adam(which):
    opt = optimizers.get(which)
    tx = opt.as_optax(opt.init(jax.random.key(0)))
    state = tx.init({})
    updates, new_state = tx.update({}, state)
    assert updates == {}
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    updates, _ = jax.jit(tx.update)({}, state, {})
    assert updates == {}


@pytest.mark.parametrize("which", ["lstm", "linear_rnn"])
def test_a_fully_masked_tree_passes_through_like_adam(which):
    opt = optimizers.get(which)
    mask = {"w": False, "b": False}
    tx = optax.masked(opt.as_optax(opt.init(jax.random.key(0))), mask)
    adam = optax.masked(optax.adam(1e-3), mask)
    grads = gradient(0)
    updates, _ = jax.jit(tx.update)(grads, tx.init(PARAMS), PARAMS)
    expected, _ = adam.update(grads, adam.init(PARAMS), PARAMS)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(a, b)


def update_and_state(which: str, jit: bool):
    """The ``which`` optimizer's update function (jitted or not) and its state for ``PARAMS``."""
    opt = optimizers.get(which)
    tx = opt.as_optax(opt.init(jax.random.key(0)))
    return (jax.jit(tx.update) if jit else tx.update), tx.init(PARAMS)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("which", ["lstm", "linear_rnn"])
def test_gradients_of_another_structure_than_the_state_are_refused_naming_the_leaf(which, jit):
    update, state = update_and_state(which, jit)
    grads = {"w": jnp.ones((3, 4)), "v": jnp.ones(4)}
    with pytest.raises(errors.GradientsMismatchError, match=r"gradient leaf \['v'\] is not in the optimizer state") as info:
        update(grads, state)
    message = str(info.value)
    # Both structures, on one line.
    assert "\n" not in message and "{'v': *, 'w': *}" in message and "{'b': *, 'w': *}" in message
    with pytest.raises(errors.GradientsMismatchError, match=r"gradient tree lacks leaf \['b'\] of the optimizer state"):
        update({"w": jnp.ones((3, 4))}, state)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("which", ["lstm", "linear_rnn"])
def test_gradients_of_another_shape_than_the_state_are_refused_naming_the_leaf(which, jit):
    update, state = update_and_state(which, jit)
    grads = {"w": jnp.ones((4, 3)), "b": jnp.ones(4)}
    with pytest.raises(errors.GradientsMismatchError, match=r"gradient leaf \['w'\] has shape \(4, 3\).*state.*\(3, 4\)"):
        update(grads, state)


@pytest.mark.parametrize("which", ["lstm", "linear_rnn"])
def test_params_that_do_not_match_the_gradients_are_refused_naming_the_leaf(which):
    opt = optimizers.get(which)
    tx = opt.as_optax(opt.init(jax.random.key(0)))
    state = tx.init(PARAMS)
    with pytest.raises(errors.GradientsMismatchError, match=r"params leaf \['b'\] has shape \(5,\).*gradient.*\(4,\)"):
        jax.jit(tx.update)(gradient(0), state, {"w": PARAMS["w"], "b": jnp.zeros(5)})
    with pytest.raises(errors.GradientsMismatchError, match=r"params leaf \['c'\] is not in the gradient tree"):
        tx.update(gradient(0), state, {"c": jnp.zeros(4), "w": PARAMS["w"]})


# --- Sizes and types of the options ---------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hidden_size": 10**9}, r"hidden_size=1000000000.*meta-parameters.*at most"),
        ({"hidden_size": 2**15}, r"meta-parameters.*at most"),
        ({"num_layers": 10**6}, r"num_layers must be at most 64"),
        ({"num_layers": 65}, r"num_layers must be at most 64"),
        ({"hidden_size": "20"}, r"hidden_size must be a positive integer, got '20'"),
        ({"hidden_size": 1.5}, r"hidden_size must be a positive integer, got 1.5"),
        ({"hidden_size": True}, r"hidden_size must be a positive integer, got True"),
        ({"num_layers": "2"}, r"num_layers must be a positive integer"),
        ({"num_layers": False}, r"num_layers must be a positive integer"),
        ({"p": "10"}, r"p must be a number, got '10'"),
        ({"p": True}, r"p must be a number, got True"),
        ({"output_scale": "0.1"}, r"output_scale must be a positive number, got '0.1'"),
        ({"output_scale": 0.0}, r"output_scale must be a positive number, got 0.0"),
        ({"output_init_scale": None}, r"output_init_scale must be a number"),
    ],
)
def test_sizes_and_types_that_make_no_sense_are_refused_at_construction(options, message):
    with pytest.raises(errors.ConfigError, match=message):
        lstm(**options)
    with pytest.raises(errors.ConfigError, match=message):
        optimizers.get("lstm", **options)


def test_a_huge_hidden_size_is_refused_before_anything_is_allocated():
    # It used to abort the whole process (SIGABRT) in XLA when init ran: so in a child process.
    script = (
        "import jax\n"
        "from l2l_jax.errors import ConfigError\n"
        "from l2l_jax.optimizers import lstm\n"
        "try:\n"
        "    lstm(hidden_size=10**9).init(jax.random.key(0))\n"
        "except ConfigError as e:\n"
        "    print('refused:', e)\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("refused: ") and "hidden_size" in done.stdout


def test_the_largest_sizes_allowed_are_accepted():
    assert lstm(num_layers=64, hidden_size=20).num_layers == 64
    big = lstm(hidden_size=9000)  # about 10**9 meta-parameters: allowed, not allocated here
    shapes = jax.eval_shape(big.init, jax.random.key(0))
    assert shapes["layer_1"]["w"].shape == (18000, 36000)
    count = sum(leaf.size for leaf in jax.tree.leaves(shapes))
    assert count == meta_param_count(9000, 2) <= MAX_META_PARAMS


def test_a_size_given_as_a_float_is_refused_even_when_whole():
    # One rule for integers everywhere (l2l_jax.checks): 20.0 is not an integer.
    with pytest.raises(errors.ConfigError, match=r"hidden_size must be a positive integer, got 20.0"):
        lstm(hidden_size=20.0)


@pytest.mark.parametrize("which", ["lstm", "linear_rnn", "feature_mlp"])
def test_python_and_numpy_leaves_are_updated_like_arrays(which):
    opt = {"lstm": lstm, "linear_rnn": linear_rnn, "feature_mlp": feature_mlp}[which]()
    tx = opt.as_optax(opt.init(jax.random.key(0)))
    plain = {"w": np.linspace(-1.0, 1.0, 6, dtype=np.float32).reshape(2, 3), "b": 0.5}
    arrays = jax.tree.map(jnp.asarray, plain)
    got, _ = tx.update(plain, tx.init(plain), plain)
    want, _ = tx.update(arrays, tx.init(arrays), arrays)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)
