"""Every learned optimizer's state is sharded like its parameter, and sharding changes no number.

With parameters sharded over 8 (fake CPU) devices, ``jax.jit(tx.init)`` gives each
state leaf its parameter's sharding behind the leaf's unsharded leading axes (what
`state_shardings` derives), and updates under ``jax.jit`` equal the unsharded ones.
Both of JAX's sharding modes are checked: explicit (``jax.make_mesh``'s default),
where each device updates its own shard, and automatic (GSPMD), where the training
step's ``out_shardings`` come from `state_shardings`. The multi-device checks run in
a child process, since XLA fixes the number of host devices when JAX starts; the
interpreted Pallas kernel under automatic sharding (`SLOW_RUNS`) runs in one of its
own, in CI's full run only (tests/conftest.py's ``SLOW``), with the meta-gradient through
sharded updates.
"""

from __future__ import annotations

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from l2l_jax.errors import ConfigError
from l2l_jax.optimizers import feature_mlp, linear_rnn, lstm, state_shardings

CHILD = textwrap.dedent(
    """
    import json, re, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from l2l_jax import pretrained
    from l2l_jax.optimizers import feature_mlp, linear_rnn, lstm, state_shardings
    from l2l_jax.optimizers._lstm_cell import CPU_BLOCK

    # What to check: runs "mode/name" (e.g. "auto/lstm"), "big_leaves" and "meta_gradient".
    TODO = sys.argv[1:]

    def fresh(optimizer):
        return optimizer, jax.jit(optimizer.init)(jax.random.key(0))  # (one compile, not one per operation)

    OPTIMIZERS = {
        "lstm": lambda: fresh(lstm(state_dtype="bfloat16")),
        "lstm_pallas": lambda: fresh(lstm(hidden_size=4, implementation="pallas")),
        "feature_mlp": lambda: fresh(feature_mlp(output="nominal")),
        "linear_rnn": lambda: fresh(linear_rnn()),
        "mnist-lstm": lambda: pretrained.load_meta_params("mnist-lstm"),
    }
    # Sharded along the first axis, along the last over both mesh axes, along both, and a replicated scalar.
    SPECS = {"w": P("d", None), "v": P(None, ("d", "e")), "k": P("e", "d"), "s": P()}
    keys = jax.random.split(jax.random.key(1), 3)
    RAW = {"w": jax.random.normal(keys[0], (16, 6)), "v": jax.random.normal(keys[1], (6, 8)),
           "k": jax.random.normal(keys[2], (4, 8)), "s": jnp.asarray(0.5)}

    def layout(spec, ndim):
        # One string per layout: P("d") and P("d", None) name the same one for a matrix.
        return str(tuple(spec) + (None,) * (ndim - len(spec)))

    def specs(tree):
        # (The unsharded reference runs on one device: no spec.)
        return [layout(getattr(leaf.sharding, "spec", ()), leaf.ndim) for leaf in jax.tree.leaves(tree)]

    def run(tx, params, update):
        state = jax.jit(tx.init)(params)
        init_specs = specs(state)
        update = update.lower(params, state, params).compile()
        updates, state = update(params, state, params)
        grads = jax.tree.map(lambda u, p: u + 0.1 * p, updates, params)
        updates, state = update(grads, state, params)
        return init_specs, updates, state, update.as_text()

    def meta_gradient(optimizer, phi, params):
        # Through two updates, as meta-training differentiates them.
        def loss(phi):
            tx = optimizer.as_optax(phi)
            state, p = tx.init(params), params
            for _ in range(2):
                updates, state = tx.update(jax.tree.map(jnp.sin, p), state, p)
                p = jax.tree.map(lambda a, b: a + b, p, updates)
            return sum(jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(p))
        return jax.jit(jax.grad(loss))(phi)

    out = {"devices": len(jax.devices()), "runs": {}}
    for name, make in OPTIMIZERS.items():
        modes = [mode for mode in ("explicit", "auto") if f"{mode}/{name}" in TODO]
        if not modes:
            continue
        optimizer, phi = make()
        tx = optimizer.as_optax(phi)
        _, ref_updates, ref_state, _ = run(tx, RAW, jax.jit(tx.update))  # one reference for both modes
        for mode in modes:
            axis_type = AxisType.Explicit if mode == "explicit" else AxisType.Auto
            mesh = jax.make_mesh((4, 2), ("d", "e"), axis_types=(axis_type,) * 2)
            with jax.set_mesh(mesh):
                params = {k: jax.device_put(v, NamedSharding(mesh, SPECS[k])) for k, v in RAW.items()}
                param_shardings = {k: NamedSharding(mesh, s) for k, s in SPECS.items()}
                want = state_shardings(tx, params, param_shardings)
                if mode == "explicit":
                    update = jax.jit(tx.update)
                else:
                    update = jax.jit(tx.update, out_shardings=(param_shardings, want))
                init_specs, updates, state, compiled = run(tx, params, update)
                eager = tx.init(params)
            err = max(
                float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                for a, b in zip(jax.tree.leaves((updates, state)), jax.tree.leaves((ref_updates, ref_state)))
            )
            first = state.h["k"] if "lstm" in name else None
            out["runs"][f"{mode}/{name}"] = {
                "init": init_specs,
                "eager_init": specs(eager),
                "want": [layout(w.spec, a.ndim) for w, a in zip(jax.tree.leaves(want), jax.tree.leaves(eager))],
                "state": specs(state),
                "updates": specs(updates),
                "param_specs": specs(params),
                "max_abs_difference": err,
                "all_gathers": len(re.findall(r"all-gather", compiled)),
                "lstm_k_shard_shape": None if first is None else list(first.addressable_shards[0].data.shape),
            }
    if "big_leaves" in TODO:
        # Leaves past a CPU block of the LSTM's step (two blocks each, outside a mesh), sharded along either
        # axis, automatically.
        optimizer, phi = OPTIMIZERS["mnist-lstm"]()
        tx = optimizer.as_optax(phi)
        mesh = jax.make_mesh((4, 2), ("d", "e"), axis_types=(AxisType.Auto,) * 2)
        big_specs = {"w": P("d", None), "v": P(None, "d")}
        big = {"w": jax.random.normal(keys[0], (256, 128)), "v": jax.random.normal(keys[1], (128, 256))}
        with jax.set_mesh(mesh):
            params = {k: jax.device_put(v, NamedSharding(mesh, big_specs[k])) for k, v in big.items()}
            param_shardings = {k: NamedSharding(mesh, s) for k, s in big_specs.items()}
            want = state_shardings(tx, params, param_shardings)
            _, _, state, compiled = run(tx, params, jax.jit(tx.update, out_shardings=(param_shardings, want)))
        out["big_leaves"] = {"all_gathers": len(re.findall(r"all-gather", compiled)), "state": specs(state),
                             "want": [layout(w.spec, 4) for w in jax.tree.leaves(want)],
                             "sizes": [leaf.size for leaf in big.values()], "cpu_block": CPU_BLOCK}
    if "meta_gradient" in TODO:
        optimizer, phi = fresh(lstm())
        unsharded = meta_gradient(optimizer, phi, RAW)
        mesh = jax.make_mesh((4, 2), ("d", "e"), axis_types=(AxisType.Explicit,) * 2)
        with jax.set_mesh(mesh):
            params = {k: jax.device_put(v, NamedSharding(mesh, SPECS[k])) for k, v in RAW.items()}
            sharded = meta_gradient(optimizer, phi, params)
        out["meta_gradient"] = {
            "max_abs_difference": max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                                      for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(unsharded))),
            "max_abs": max(float(np.max(np.abs(np.asarray(a)))) for a in jax.tree.leaves(unsharded)),
        }
    print("RESULT" + json.dumps(out))
    """
)

MODES = ["explicit", "auto"]
#: The LSTM (XLA's step, bfloat16 state), the LSTM with the Pallas kernel, the feature MLP
#: (nominal output), the linear RNN and the shipped ``mnist-lstm``.
NAMES = ["lstm", "lstm_pallas", "feature_mlp", "linear_rnn", "mnist-lstm"]
#: The runs of CI's full run only, in a child process of their own: the Pallas kernel, interpreted,
#: under automatic sharding (tests/conftest.py's ``SLOW`` names the default tests that cover them).
SLOW_RUNS = ["auto/lstm_pallas"]


@pytest.fixture(scope="module")
def child(fake_devices):
    runs = [f"{mode}/{name}" for mode in MODES for name in NAMES if f"{mode}/{name}" not in SLOW_RUNS]
    return fake_devices(CHILD, 8, *runs, "big_leaves")


@pytest.fixture(scope="module")
def slow_child(fake_devices):
    return fake_devices(CHILD, 8, *SLOW_RUNS, "meta_gradient")


@pytest.fixture
def run(request, mode, name):
    """The results of the optimizer ``name`` in ``mode``, from the child process that ran it."""
    result = request.getfixturevalue("slow_child" if f"{mode}/{name}" in SLOW_RUNS else "child")
    assert result["devices"] == 8
    return result["runs"][f"{mode}/{name}"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_init_under_jit_shards_the_state_like_its_parameters(run):
    assert run["init"] == run["want"]
    # ... and so does init called eagerly on sharded parameters.
    assert run["eager_init"] == run["want"]
    # Not vacuous: some state leaves are sharded over both mesh axes.
    assert any("'d', 'e'" in s for s in run["want"])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_sharded_updates_equal_the_unsharded_ones_and_keep_the_layout(run, name):
    tolerance = 2**-8 if name == "lstm" else 1e-6  # one bfloat16 rounding of the stored state
    assert run["max_abs_difference"] <= tolerance
    assert run["state"] == run["want"]
    assert run["updates"] == run["param_specs"]


@pytest.mark.parametrize("name", NAMES)
def test_with_explicit_sharding_each_device_updates_its_own_shard(child, name):
    run = child["runs"][f"explicit/{name}"]
    if "lstm" in name:
        # "k" (4, 8) over ("e", "d") = (2, 4): each device holds a (2, 2) block of it, for every (layer, unit).
        hidden = 4 if name == "lstm_pallas" else 20
        assert run["lstm_k_shard_shape"] == [2, hidden, 2, 2]
    # No gathers at all (the feature MLP's per-tensor normalisation only sums across devices).
    assert run["all_gathers"] == 0


@pytest.mark.parametrize("name", [n for n in NAMES if n != "lstm_pallas"])
def test_with_automatic_sharding_no_leaf_is_gathered_whichever_axis_is_sharded(child, name):
    # Leaves sharded along the first axis, the last and both: XLA partitions the whole
    # update with no all-gather. (An LSTM told to use the Pallas kernel is the exception:
    # XLA cannot partition the kernel, so it gathers the leaf; "auto" takes XLA's step.)
    run = child["runs"][f"auto/{name}"]
    assert run["all_gathers"] == 0
    assert run["state"] == run["want"]


def test_with_automatic_sharding_leaves_larger_than_a_cpu_block_are_not_gathered_either(child):
    # The CPU's blocks of coordinates would slice a sharded axis: under a mesh, XLA's whole step runs.
    result = child["big_leaves"]
    assert min(result["sizes"]) > result["cpu_block"]  # not vacuous
    assert result["all_gathers"] == 0
    assert result["state"] == result["want"]


@pytest.mark.slow  # sharded updates equal the unsharded ones ([lstm-explicit]); test_sharding.py differentiates across devices
def test_the_meta_gradient_through_explicitly_sharded_updates_is_the_unsharded_one(slow_child):
    result = slow_child["meta_gradient"]
    assert result["max_abs"] > 1e-3  # not vacuous
    assert result["max_abs_difference"] <= 1e-5 * result["max_abs"]


def test_state_shardings_lifts_specs_behind_the_state_axes_for_an_optax_chain():
    opt = lstm()
    tx = optax.chain(optax.clip_by_global_norm(1.0), opt.as_optax(opt.init(jax.random.key(0))), optax.scale(1.0))
    params = {"w": jnp.zeros((8, 3)), "b": jnp.zeros(3)}
    got = state_shardings(tx, params, {"w": P("d", None), "b": P()})
    lstm_state = got[1]
    assert lstm_state.h["w"] == P(None, None, "d", None)
    assert lstm_state.c["b"] == P(None, None, None)
    # Non-parameter leaves (here none carry arrays but the clip's empty state) come out replicated.
    assert all(leaf == P() for leaf in jax.tree.leaves(got[0], is_leaf=lambda x: isinstance(x, P)))


def test_state_shardings_handles_optax_own_optimizers_and_non_parameter_leaves():
    params = {"w": jax.ShapeDtypeStruct((8, 3), jnp.float32)}
    adam = state_shardings(optax.adam(1e-3), params, {"w": P("d")})
    assert adam[0].mu["w"] == P("d", None) and adam[0].nu["w"] == P("d", None)
    assert adam[0].count == P()
    opt = feature_mlp()
    tx = opt.as_optax(opt.init(jax.random.key(0)))
    got = state_shardings(tx, params, {"w": P("d")}, non_params=lambda leaf: f"scalar {leaf.shape}")
    assert got.momenta["w"] == P(None, "d", None)
    assert got.second_moment["w"] == P("d", None)
    assert got.count == "scalar ()"


def test_state_shardings_refuses_a_state_leaf_that_does_not_end_with_its_parameter_shape():
    params = {"w": jnp.zeros((8, 6))}
    with pytest.raises(ConfigError, match=r"state leaf of shape \([68],\) .* parameter of shape \(8, 6\)"):
        state_shardings(optax.adafactor(1e-3, min_dim_size_to_factor=2), params, {"w": P("d", None)})


def test_state_shardings_refuses_shardings_that_do_not_fit_the_parameters():
    opt = linear_rnn()
    tx = opt.as_optax(opt.init(jax.random.key(0)))
    with pytest.raises(ConfigError, match="do not fit the parameters"):
        state_shardings(tx, {"w": jnp.zeros(3), "b": jnp.zeros(2)}, {"w": P("d")})


@pytest.mark.parametrize("make", [lstm, feature_mlp, linear_rnn])
def test_the_initial_state_is_positive_zero_even_for_non_finite_parameters(make):
    opt = make()
    tx = opt.as_optax(opt.init(jax.random.key(0)))
    params = {"w": jnp.array([-1.0, jnp.nan, -jnp.inf, jnp.inf, -0.0])}
    for leaf in jax.tree.leaves(tx.init(params)):
        leaf = np.asarray(leaf)
        assert not np.any(leaf) and not np.any(np.signbit(leaf))
