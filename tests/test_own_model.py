"""Meta-training on a user's own Flax model: a tiny CNN on the MNIST fixture."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from l2l_jax import cli, errors
from l2l_jax.data import load_mnist
from l2l_jax.meta import MetaTrainConfig, meta_train
from l2l_jax.tasks import FlaxModelFamily, batch_sampler, iterator_sampler

FIXTURE = str(Path(__file__).parent / "fixtures" / "mnist")


class TinyCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), strides=(2, 2))(x[..., None])
        x = nn.relu(x).reshape(x.shape[0], -1)
        return nn.Dense(10)(x)


class TinyNNXCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), strides=(2, 2), rngs=rngs)
        self.out = nnx.Linear(7 * 7 * 4, 10, rngs=rngs)  # 14x14 images

    def __call__(self, x):
        x = nnx.relu(self.conv(x[..., None]))
        return self.out(x.reshape(x.shape[0], -1))


def cross_entropy(logits, batch):
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


@pytest.fixture(scope="module")
def data():
    images, labels = load_mnist("test", data_dir=FIXTURE, download=False)
    return {"x": jnp.asarray(images, jnp.float32) / 255.0, "y": jnp.asarray(labels, jnp.int32)}


@pytest.mark.parametrize("model", [TinyCNN(), TinyNNXCNN], ids=["linen", "nnx"])
def test_meta_training_on_a_users_cnn_improves_its_training(model, data):
    small = {"x": data["x"][:, ::2, ::2], "y": data["y"]}  # 14x14 images: a quarter of the convolutions' work
    family = FlaxModelFamily(model, batch_sampler(small, 32), cross_entropy, name="tiny_cnn")
    config = MetaTrainConfig(
        task="tiny_cnn",
        optimizer_options={"hidden_size": 8},
        num_meta_steps=20,
        horizon=20,
        truncation=10,
        batch_size=2,
        meta_lr=1e-2,
        validate_every=10,
        num_val_tasks=4,
    )
    result = meta_train(config, family=family, progress=False)
    vals = [r["val_loss"] for r in result.history if "val_loss" in r]
    assert result.skipped == 0 and np.all(np.isfinite(vals))
    # The trained optimizer, as a plain optax optimizer, lowers the CNN's loss.
    tx = result.as_optax()

    @jax.jit  # As a user's loop would be: one compiled step, not 20 runs op by op.
    def train_step(params, state, key):
        loss, grads = jax.value_and_grad(family.loss, argnums=1)((), params, key)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    params = family.init((), jax.random.PRNGKey(5))
    state = tx.init(params)
    losses = []
    for step in range(20):
        params, state, loss = train_step(params, state, jax.random.PRNGKey(100 + step))
        losses.append(float(loss))
    assert np.mean(losses[-5:]) < np.mean(losses[:3])


def test_iterator_sampler_uses_the_iterators_batches(data):
    batches = ({"x": data["x"][i : i + 16], "y": data["y"][i : i + 16]} for i in range(0, 64, 16))
    sample = iterator_sampler(batches, 4)
    seen = {int(sample(jax.random.PRNGKey(k))["y"][0]) for k in range(20)}
    assert seen <= {int(data["y"][i]) for i in (0, 16, 32, 48)}
    with pytest.raises(errors.ConfigError, match="no batches"):
        iterator_sampler(iter([]), 3)


def test_batch_sampler_checks_its_arrays():
    with pytest.raises(errors.ConfigError, match="same number of examples"):
        batch_sampler({"x": jnp.ones((5, 2)), "y": jnp.ones((4,))}, 2)


def test_own_task_from_the_command_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_tasks.py").write_text(
        textwrap.dedent(
            f"""
            import jax.numpy as jnp, optax, flax.linen as nn
            from l2l_jax.data import load_mnist
            from l2l_jax.tasks import FlaxModelFamily, batch_sampler

            def make(batch_size=16):
                images, labels = load_mnist("test", data_dir={FIXTURE!r}, download=False)
                data = {{"x": jnp.asarray(images.reshape(len(images), -1), jnp.float32) / 255.0,
                         "y": jnp.asarray(labels, jnp.int32)}}
                loss = lambda logits, b: optax.softmax_cross_entropy_with_integer_labels(logits, b["y"]).mean()
                return FlaxModelFamily(nn.Dense(10), batch_sampler(data, batch_size), loss, name="my_tasks:make")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    argv = ["meta-train", "--task", "my_tasks:make", "--task-option", "batch_size=8", "--optimizer-option"]
    argv += ["hidden_size=4", "--meta-steps", "3", "--horizon", "4", "--truncation", "2", "--batch-size", "2"]
    argv += ["--val-tasks", "2", "--validate-every", "3", "--no-progress", "--run-dir", str(run)]
    # `meta-train --evaluate` evaluates on the task this same command line named.
    seen = {}

    def fake_evaluate_run(run_dir, **kwargs):
        seen.update(kwargs)
        raise cli.ConfigError("stop here")

    with monkeypatch.context() as patched:
        patched.setattr("l2l_jax.evaluation.report.evaluate_run", fake_evaluate_run)
        assert cli.main([*argv, "--evaluate"]) == 2
    assert seen["task"] == "my_tasks:make"
    assert (run / "optimizer.msgpack").is_file()
    # `evaluate` runs a module:function task only when the user names it again ...
    evaluate = ["evaluate", str(run), "--tasks", "2", "--tune-tasks", "2", "--steps", "3", "--no-progress"]
    evaluate += ["--baseline", "adam"]  # (tuning one baseline, not five: their tuning is tested in test_cli.py)
    assert cli.main(evaluate) == 2
    assert "--task my_tasks:make" in capsys.readouterr().err
    # ... and then rebuilds it from the options it was trained with.
    assert cli.main([*evaluate, "--task", "my_tasks:make"]) == 0
    rows = json.loads((run / "evaluation.json").read_text())["rows"]
    assert {r["optimizer"] for r in rows} == {"learned lstm", "adam"}  # --baseline: only the baselines named
    assert cli.main(["meta-train", "--task", "no_such_module:make", "--run-dir", str(run)]) == 2
    assert "cannot import module 'no_such_module'" in capsys.readouterr().err
    sys.modules.pop("my_tasks", None)
