"""Learned optimizers inside ordinary Flax training loops (NNX and linen) on the MNIST MLP.

These are the README's drop-in examples, run as tests: the shipped LSTM and
generalist and an optimizer from the user's own meta-training run, chained after gradient clipping, with the
loss passed as ``value=`` or not, and a training run saved and resumed.
"""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, serialization
from flax.training import train_state

import l2l_jax
from l2l_jax.data import load_mnist
from l2l_jax.meta import MetaTrainConfig, meta_train

FIXTURE = str(Path(__file__).parent / "fixtures" / "mnist")
SHIPPED = "mnist-lstm"


@pytest.fixture(scope="module")
def data():
    images, labels = load_mnist("test", data_dir=FIXTURE, download=False)
    return jnp.asarray(images.reshape(-1, 784), jnp.float32) / 255.0, jnp.asarray(labels, jnp.int32)


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "mnist-small"
    config = MetaTrainConfig(
        task="mnist",
        task_options={"data_dir": FIXTURE},
        num_meta_steps=4,
        horizon=10,
        truncation=5,
        batch_size=1,
        validate_every=4,
        num_val_tasks=1,
    )
    meta_train(config, run, progress=False)
    return run


@pytest.fixture(params=["shipped", "generalist", "own run"])
def learned_tx(request):
    # "generalist" is the shipped feature MLP, which reads the parameters that both loops pass.
    # The run is meta-trained only for the tests that use it (CI's slow run).
    own_run = request.getfixturevalue("own_run") if request.param == "own run" else None
    source = {"shipped": SHIPPED, "generalist": "generalist", "own run": own_run}[request.param]
    return optax.chain(optax.clip_by_global_norm(1.0), l2l_jax.pretrained.load(source))


def batches(data, steps, seed=0):
    x, y = data
    for key in jax.random.split(jax.random.PRNGKey(seed), steps):
        idx = jax.random.randint(key, (128,), 0, x.shape[0])
        yield x[idx], y[idx]


class NNXMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(784, 20, rngs=rngs)
        self.out = nnx.Linear(20, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.sigmoid(self.hidden(x)))


def nnx_train(tx, data, steps, pass_value, model=None, optimizer=None, start=0):
    model = model or NNXMLP(nnx.Rngs(0))
    optimizer = optimizer or nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        if pass_value:
            optimizer.update(model, grads, value=loss)
        else:
            optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer, x, y)) for x, y in list(batches(data, steps))[start:]]
    return losses, model, optimizer


@pytest.mark.parametrize("pass_value", [False, True])
def test_nnx_training_loop(learned_tx, data, pass_value):
    losses, _, _ = nnx_train(learned_tx, data, 30, pass_value)
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:3])


def test_passing_value_does_not_change_the_updates(data):
    tx = l2l_jax.pretrained.load(SHIPPED)
    a, _, _ = nnx_train(tx, data, 5, pass_value=False)
    b, _, _ = nnx_train(tx, data, 5, pass_value=True)
    np.testing.assert_allclose(a, b, rtol=1e-6)


@jax.jit
def linen_train_step(state, x, y):
    """One step of an ordinary linen ``TrainState`` loop: softmax cross-entropy on (x, y); the new state and the loss."""

    def loss_fn(params):
        return optax.softmax_cross_entropy_with_integer_labels(state.apply_fn({"params": params}, x), y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


def test_linen_train_state_loop(learned_tx, data):
    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(10)(nn.sigmoid(nn.Dense(20)(x)))

    model = MLP()
    state = train_state.TrainState.create(
        apply_fn=model.apply, params=model.init(jax.random.PRNGKey(0), jnp.ones((1, 784)))["params"], tx=learned_tx
    )

    losses = []
    for x, y in batches(data, 30):
        state, loss = linen_train_step(state, x, y)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:3])


def test_nnx_run_saved_and_resumed_continues_identically(learned_tx, data, tmp_path):
    straight, _, _ = nnx_train(learned_tx, data, 12, False)

    first, model, optimizer = nnx_train(learned_tx, data, 6, False)
    # Save parameters and optimizer state (the LSTM's hidden states) with flax msgpack.
    blob = serialization.to_bytes(
        {"model": nnx.to_pure_dict(nnx.state(model)), "opt": nnx.to_pure_dict(nnx.state(optimizer))}
    )
    (tmp_path / "ckpt.msgpack").write_bytes(blob)

    model2 = NNXMLP(nnx.Rngs(1))  # Different init: everything must come from the file.
    optimizer2 = nnx.Optimizer(model2, learned_tx, wrt=nnx.Param)
    target = {"model": nnx.to_pure_dict(nnx.state(model2)), "opt": nnx.to_pure_dict(nnx.state(optimizer2))}
    restored = serialization.from_bytes(target, (tmp_path / "ckpt.msgpack").read_bytes())
    for obj, key in ((model2, "model"), (optimizer2, "opt")):
        state = nnx.state(obj)
        nnx.replace_by_pure_dict(state, restored[key])
        nnx.update(obj, state)
    # Steps 7..12 on the restored objects, with the straight run's batches.
    rest, _, _ = nnx_train(learned_tx, data, 12, False, model=model2, optimizer=optimizer2, start=6)
    np.testing.assert_allclose(first, straight[:6], rtol=1e-6)
    np.testing.assert_allclose(rest, straight[6:], rtol=1e-5)


def test_benchmark_unroll_equals_an_ordinary_linen_loop(learned_tx):
    """The benchmarks measure optimizers with `unroll` (a lax.scan); an ordinary
    TrainState loop over the same batches gives the same losses."""
    from l2l_jax.meta import unroll
    from l2l_jax.tasks import MNISTFamily

    family = MNISTFamily(data_dir=FIXTURE)
    params = family.init((), jax.random.PRNGKey(3))
    key = jax.random.PRNGKey(4)
    _, _, scanned = unroll(learned_tx, lambda p, k: family.loss((), p, k), params, learned_tx.init(params), key, 15)

    state = train_state.TrainState.create(apply_fn=family.model.apply, params=params, tx=learned_tx)

    losses = []
    for t in range(15):
        state, loss = linen_train_step(state, *family.batch(jax.random.fold_in(key, t)))
        losses.append(float(loss))
    np.testing.assert_allclose(scanned[:15], losses, rtol=2e-5)
