"""`recurrent_tensors`: which parameters reach the state of a weight-tied recurrence."""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest

from l2l_jax import errors, tasks
from l2l_jax.optimizers import recurrent_tensors

FIXTURE = str(Path(__file__).parent / "fixtures" / "mnist")


def flagged(mask) -> list[str]:
    """The flagged leaves' paths, ``"params/GRUCell_0/hn/kernel"``."""
    leaves = jax.tree_util.tree_leaves_with_path(mask)
    return [jax.tree_util.keystr(path, simple=True, separator="/") for path, value in leaves if value]


def family_mask(family) -> list[str]:
    task = family.sample(jax.random.key(0))
    params = family.init(task, jax.random.key(1))
    return flagged(recurrent_tensors(lambda p, key: family.loss(task, p, key), params, jax.random.key(2)))


class Recurrent(nn.Module):
    """Input projection → recurrence over the sequence → read-out at every position."""

    cell: type

    @nn.compact
    def __call__(self, x):
        hidden = nn.RNN(self.cell(8))(nn.Dense(5, name="project")(x))
        return nn.Dense(3, name="readout")(hidden)


@pytest.mark.parametrize("cell", [nn.GRUCell, nn.LSTMCell, nn.SimpleCell])
def test_flax_rnn_flags_its_cell_and_what_feeds_it_but_not_the_read_out(cell):
    model, x = Recurrent(cell), jnp.ones((2, 7, 4))
    params = model.init(jax.random.key(0), x)
    names = flagged(recurrent_tensors(lambda p, x: model.apply(p, x).sum(), params, x))
    cell_leaves = [n for n in flagged(jax.tree.map(lambda _: True, params)) if f"/{cell.__name__}_0/" in n]
    assert cell_leaves and set(cell_leaves) <= set(names)
    assert {"params/project/kernel", "params/project/bias"} <= set(names)
    assert not [n for n in names if "readout" in n]


def test_the_batterys_char_lm_flags_its_embedding_and_gru_cell_only():
    family = tasks.CharLMFamily(seq_len=8, batch_size=2, hidden_size=8, embed_dim=4)
    names = family_mask(family)
    assert "Embed_0/embedding" in names and all(n.startswith(("Embed_0/", "GRUCell_0/")) for n in names)
    assert {"GRUCell_0/hn/kernel", "GRUCell_0/hr/kernel", "GRUCell_0/hz/kernel", "GRUCell_0/in/kernel"} <= set(names)
    assert not [n for n in names if n.startswith("Dense_0")]


@pytest.mark.parametrize(
    "family",
    [
        tasks.MNISTFamily(data_dir=FIXTURE, batch_size=8),
        tasks.MNISTCNNFamily(data_dir=FIXTURE, batch_size=8),
        tasks.TeacherStudentFamily(features=4, examples=16, hidden_units=8, batch_size=4),
        tasks.QuadraticFamily(dim=3),
    ],
    ids=["mlp", "cnn", "regression", "quadratic"],
)
def test_feed_forward_tasks_flag_nothing(family):
    assert family_mask(family) == []


def test_a_scan_over_layers_with_their_own_parameters_is_not_a_recurrence():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, h, _):
            return nn.tanh(nn.Dense(6)(h)), None

    class Deep(nn.Module):
        @nn.compact
        def __call__(self, x):
            layers = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=4)
            h, _ = layers()(nn.Dense(6)(x), None)
            return nn.Dense(1)(h)

    model, x = Deep(), jnp.ones((2, 3))
    params = model.init(jax.random.key(0), x)
    assert flagged(recurrent_tensors(lambda p, x: model.apply(p, x).sum(), params, x)) == []


def test_loops_that_apply_one_tensor_again_and_again_are_recurrences_in_any_form():
    params = {"w": jnp.eye(3) * 0.5, "u": jnp.ones(3), "out": jnp.ones(3), "gain": jnp.ones(())}

    def fori(p):
        h = jax.lax.fori_loop(0, 4, lambda _, h: jnp.tanh(p["w"] @ h), p["u"])
        return p["out"] @ h

    def while_(p):
        _, h = jax.lax.while_loop(lambda c: c[0] < 4, lambda c: (c[0] + 1, jnp.tanh(p["w"] @ c[1])), (0, p["u"]))
        return p["out"] @ h

    def nested(p):  # Inside jit and checkpoint, scaled by a tensor that never enters the loop.
        return p["gain"] * jax.jit(jax.checkpoint(fori))(p)

    def carried(p):  # The tensor rides along in the carry, unchanged (JAX hoists it into a constant of the loop).
        h, _ = jax.lax.fori_loop(0, 4, lambda _, c: (jnp.tanh(c[1] @ c[0]), c[1]), (p["u"], p["w"]))
        return p["out"] @ h

    for loss in (fori, while_, nested, carried):
        assert flagged(recurrent_tensors(loss, params)) == ["u", "w"], loss.__name__


def test_a_loop_whose_state_no_parameter_reaches_step_after_step_is_not_a_recurrence():
    params = {"w": jnp.ones(3)}

    def running_sum_then_weights(p, x):  # The carry is x's running sum; w only reads the outputs.
        _, sums = jax.lax.scan(lambda c, xi: (c + xi, c + xi), jnp.zeros(3), x)
        return (sums @ p["w"]).sum()

    def loop_of_weights_from_the_start(p, x):  # w sets the start, but no step reads a parameter.
        h, _ = jax.lax.scan(lambda c, xi: (jnp.tanh(c + xi), None), p["w"], x)
        return h.sum()

    x = jnp.ones((5, 3))
    assert flagged(recurrent_tensors(running_sum_then_weights, params, x)) == []
    assert flagged(recurrent_tensors(loop_of_weights_from_the_start, params, x)) == []


def test_shapes_are_enough_and_nothing_is_computed():
    model, x = Recurrent(nn.GRUCell), jax.ShapeDtypeStruct((2, 7, 4), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    names = flagged(recurrent_tensors(lambda p, x: model.apply(p, x).sum(), shapes, x))
    assert "params/GRUCell_0/hn/kernel" in names and "params/readout/kernel" not in names


def test_the_mask_scales_exactly_the_flagged_tensors_updates():
    model, x = Recurrent(nn.GRUCell), jnp.ones((2, 7, 4))
    params = model.init(jax.random.key(0), x)
    mask = recurrent_tensors(lambda p, x: model.apply(p, x).sum(), params, x)
    grads = jax.tree.map(jnp.ones_like, params)
    plain, _ = optax.sgd(0.1).update(grads, optax.sgd(0.1).init(params))
    tx = optax.chain(optax.sgd(0.1), optax.masked(optax.scale(1 / 3), mask))
    scaled, _ = tx.update(grads, tx.init(params))
    for p, s, m in zip(jax.tree.leaves(plain), jax.tree.leaves(scaled), jax.tree.leaves(mask)):
        assert jnp.allclose(s, p / 3 if m else p)


def test_a_loss_that_is_not_callable_is_refused_with_a_clear_error():
    with pytest.raises(errors.ConfigError, match="loss_fn must be callable, got dict"):
        recurrent_tensors({"not": "a function"}, {"w": jnp.ones(2)})
