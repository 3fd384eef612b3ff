"""Cheap tasks for meta-training: downsampled MNIST, MNIST autoencoders, a GRU over MNIST rows, teacher-student regression,
scale augmentation."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2l_jax import errors, tasks
from l2l_jax.tasks.mnist import downsample

FIXTURE = str(Path(__file__).parent / "fixtures" / "mnist")


# --- downsampled MNIST ---------------------------------------------------------


@pytest.mark.parametrize("size", [8, 14])
def test_mnist_at_a_smaller_size_feeds_the_mlp_size_squared_pixels(size):
    family = tasks.get("mnist", data_dir=FIXTURE, image_size=size, batch_size=16)
    params = family.init((), jax.random.PRNGKey(0))
    assert params["Dense_0"]["kernel"].shape == (size * size, 20)
    x, y = family.batch(jax.random.PRNGKey(1))
    assert x.shape == (16, size * size) and y.shape == (16,)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) > 0.5
    assert math.isfinite(float(family.loss((), params, jax.random.PRNGKey(2))))


def test_halving_the_size_averages_each_two_by_two_block():
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    blocks = images.reshape(5, 14, 2, 14, 2).astype(np.float64).mean(axis=(2, 4))
    np.testing.assert_allclose(downsample(images, 14), blocks, atol=0.5 + 1e-9)
    assert downsample(images, 28) is images


def test_downsampled_images_keep_the_digits_mean_brightness():
    full = tasks.get("mnist", data_dir=FIXTURE)
    small = tasks.get("mnist", data_dir=FIXTURE, image_size=8)
    assert small.data_record == full.data_record  # the same data, only resized
    mean = lambda f: float(jnp.mean(f.images.astype(jnp.float32)))
    assert mean(small) == pytest.approx(mean(full), rel=0.05)


def test_the_cnn_runs_on_downsampled_images():
    family = tasks.get("mnist_cnn", data_dir=FIXTURE, image_size=14, batch_size=8)
    params = family.init((), jax.random.PRNGKey(0))
    assert params["Dense_0"]["kernel"].shape == (4 * 4 * 16, 10)  # 14 -> 7 -> 4
    x, _ = family.batch(jax.random.PRNGKey(1))
    assert x.shape == (8, 14, 14, 1)
    assert math.isfinite(float(family.loss((), params, jax.random.PRNGKey(2))))


@pytest.mark.parametrize("name", ["mnist", "mnist_cnn"])
def test_image_size_is_recorded_only_when_it_is_not_28(name):
    full = tasks.get(name, data_dir=FIXTURE)
    small = tasks.get(name, data_dir=FIXTURE, image_size=8)
    assert "image_size" not in full.config() and small.config()["image_size"] == 8
    assert tasks.get(name, **json.loads(json.dumps(small.config()))).config() == small.config()


@pytest.mark.parametrize("size, message", [(0, "'image_size' must be a positive integer"), (29, "from 1 to 28")])
def test_bad_image_sizes_are_refused(size, message):
    for name in ("mnist", "mnist_cnn"):
        with pytest.raises(errors.ConfigError, match=message):
            tasks.get(name, data_dir=FIXTURE, image_size=size)


# --- MNIST autoencoders -----------------------------------------------------------


def test_an_autoencoder_reconstructs_its_input_through_a_sigmoid():
    family = tasks.get("mnist", data_dir=FIXTURE, image_size=8, hidden_units=16, batch_size=4, objective="autoencode")
    params = family.init((), jax.random.PRNGKey(0))
    assert params["Dense_1"]["kernel"].shape == (16, 64)  # as many outputs as pixels
    key = jax.random.PRNGKey(1)
    x, _ = family.batch(key)
    pixels = jax.nn.sigmoid(family.model.apply({"params": params}, x))
    expected = float(jnp.mean((pixels - x) ** 2))
    assert float(family.loss((), params, key)) == pytest.approx(expected, rel=1e-6)
    # A read-out that outputs the image's own logits reconstructs it: the loss is only the clipping's.
    one = tasks.get("mnist", data_dir=FIXTURE, image_size=8, hidden_units=16, batch_size=1, objective="autoencode")
    x1 = one.batch(key)[0][0]
    target = jnp.clip(x1, 1e-3, 1 - 1e-3)
    perfect = {**params, "Dense_1": {"kernel": jnp.zeros((16, 64)), "bias": jnp.log(target / (1 - target))}}
    assert float(one.loss((), perfect, key)) < 1e-6 < float(one.loss((), params, key))


def test_adam_lowers_an_autoencoders_loss():
    family = tasks.get("mnist", data_dir=FIXTURE, image_size=8, hidden_units=32, batch_size=32, objective="autoencode")
    params = family.init((), jax.random.PRNGKey(0))
    optimizer = optax.adam(1e-2)
    state = optimizer.init(params)
    grad = jax.jit(jax.value_and_grad(lambda p, k: family.loss((), p, k)))
    losses = []
    for i in range(100):
        loss, g = grad(params, jax.random.PRNGKey(i))
        updates, state = optimizer.update(g, state)
        params = optax.apply_updates(params, updates)
        losses.append(float(loss))
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


def test_the_objective_is_recorded_only_when_it_is_not_classify():
    full = tasks.get("mnist", data_dir=FIXTURE)
    auto = tasks.get("mnist", data_dir=FIXTURE, objective="autoencode")
    assert "objective" not in full.config() and auto.config()["objective"] == "autoencode"
    assert tasks.get("mnist", **json.loads(json.dumps(auto.config()))).config() == auto.config()
    with pytest.raises(errors.ConfigError, match="unknown objective 'regress'; choose one of classify, autoencode"):
        tasks.get("mnist", data_dir=FIXTURE, objective="regress")


# --- a GRU reading MNIST row by row ---------------------------------------------------


@pytest.mark.parametrize("size", [8, 14])
def test_the_row_gru_reads_one_row_of_pixels_per_step(size):
    family = tasks.get("mnist_rnn", data_dir=FIXTURE, image_size=size, hidden_size=12, batch_size=8)
    params = family.init((), jax.random.PRNGKey(0))
    gru = params["GRUCell_0"]
    assert gru["ir"]["kernel"].shape == (size, 12) and gru["hr"]["kernel"].shape == (12, 12)
    assert params["Dense_0"]["kernel"].shape == (12, 10)
    x, y = family.batch(jax.random.PRNGKey(1))
    assert x.shape == (8, size, size) and y.shape == (8,)
    pixels, _ = tasks.get("mnist", data_dir=FIXTURE, image_size=size, batch_size=8).batch(jax.random.PRNGKey(1))
    np.testing.assert_array_equal(x.reshape(8, -1), pixels)  # the MLP family's minibatch, as rows


def test_the_row_gru_is_flaxs_gru_cell_over_the_rows_then_a_dense_layer_on_its_last_state():
    import flax.linen as nn

    class Reference(nn.Module):
        @nn.compact
        def __call__(self, x):
            cell, h = nn.GRUCell(6, name="GRUCell_0"), jnp.zeros((x.shape[0], 6))
            for t in range(x.shape[1]):
                h, _ = cell(h, x[:, t])
            return nn.Dense(10)(h)

    family = tasks.get("mnist_rnn", data_dir=FIXTURE, image_size=8, hidden_size=6, batch_size=4)
    params = family.init((), jax.random.PRNGKey(0))
    x, _ = family.batch(jax.random.PRNGKey(1))
    np.testing.assert_allclose(
        family.model.apply({"params": params}, x), Reference().apply({"params": params}, x), rtol=1e-5, atol=1e-5
    )


def test_the_row_gru_vmaps_over_tasks_and_adam_lowers_its_loss():
    family = tasks.get("mnist_rnn", data_dir=FIXTURE, image_size=8, hidden_size=16, batch_size=32)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    params = jax.jit(jax.vmap(family.init))(jax.vmap(family.sample)(keys), keys)
    losses = jax.jit(jax.vmap(lambda p, k: family.loss((), p, k)))(params, keys)
    assert losses.shape == (3,) and bool(jnp.all(jnp.isfinite(losses)))
    assert float(jnp.mean(losses)) == pytest.approx(math.log(10), rel=0.1)  # chance, before training
    first = jax.tree.map(lambda t: t[0], params)
    optimizer = optax.adam(1e-2)

    def step(carry, key):
        p, state = carry
        loss, g = jax.value_and_grad(lambda p: family.loss((), p, key))(p)
        updates, state = optimizer.update(g, state)
        return (optax.apply_updates(p, updates), state), loss

    _, curve = jax.jit(lambda p: jax.lax.scan(step, (p, optimizer.init(p)), jax.random.split(keys[0], 150)))(first)
    assert float(jnp.mean(curve[-20:])) < 0.7 * float(jnp.mean(curve[:20]))


def test_the_row_gru_round_trips_its_config_and_refuses_bad_options():
    family = tasks.get("mnist_rnn", data_dir=FIXTURE, image_size=14)
    assert family.config() == {
        "hidden_size": 32, "batch_size": 32, "data_dir": FIXTURE, "download": False, "image_size": 14
    }  # fmt: skip
    assert tasks.get("mnist_rnn", **json.loads(json.dumps(family.config()))).config() == family.config()
    assert family.data_record == tasks.get("mnist", data_dir=FIXTURE).data_record
    for options, message in [
        ({"hidden_size": 0}, "'hidden_size' must be a positive integer"),
        ({"batch_size": 1.5}, "'batch_size' must be a positive integer"),
        ({"image_size": 29}, "from 1 to 28"),
        ({"download": "no"}, "download must be True or False"),
        ({"channels": [8]}, "valid options: 'hidden_size', 'batch_size', 'data_dir', 'download', 'image_size'"),
    ]:
        with pytest.raises(errors.ConfigError, match=message):
            tasks.get("mnist_rnn", data_dir=FIXTURE, **options)


# --- teacher-student regression --------------------------------------------------


def test_teacher_student_tasks_have_their_own_teacher_and_a_student_that_adam_trains():
    family = tasks.get("teacher_student", features=8, examples=128, hidden_units=16, batch_size=32)
    assert tasks.get("teacher_student", **family.config()).config() == family.config()
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    task_params = jax.vmap(family.sample)(keys)
    assert task_params["x"].shape == (2, 128, 8) and not np.allclose(task_params["y"][0], task_params["y"][1])
    one = jax.tree.map(lambda t: t[0], task_params)
    params = family.init(one, jax.random.PRNGKey(1))
    assert jax.tree.map(jnp.shape, params) == {
        "Dense_0": {"kernel": (8, 16), "bias": (16,)},
        "Dense_1": {"kernel": (16, 1), "bias": (1,)},
    }
    tx = optax.adam(1e-2)

    def step(carry, key):
        p, s = carry
        g = jax.grad(family.loss, argnums=1)(one, p, key)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (trained, _), _ = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(jax.random.PRNGKey(2), 200))
    full = lambda p: jnp.mean((family.model.apply({"params": p}, one["x"]) - one["y"]) ** 2)
    assert float(full(trained)) < 0.5 * float(full(params))


def test_teacher_student_refuses_bad_options():
    with pytest.raises(errors.ConfigError, match="features must be a positive integer"):
        tasks.get("teacher_student", features=0)
    with pytest.raises(errors.ConfigError, match="noise must be a non-negative number"):
        tasks.get("teacher_student", noise=-1.0)


# --- scale augmentation -----------------------------------------------------------


def augmented(**scales):
    return tasks.get("scale_augmented", task="logistic_regression", options={"examples": 32, "features": 4}, **scales)


def test_scale_augmentation_reparameterises_each_tensor_and_keeps_the_problem():
    family = augmented(min_scale=0.1, max_scale=10.0)
    inner = family.family
    task = family.sample(jax.random.PRNGKey(0))
    scales = task["scales"]
    assert jax.tree.structure(scales) == jax.tree.structure(inner.init(task["task"], jax.random.PRNGKey(1)))
    assert all(0.1 <= float(s) <= 10.0 for s in jax.tree.leaves(scales))
    theta_tilde = family.init(task, jax.random.PRNGKey(1))
    theta = inner.init(task["task"], jax.random.PRNGKey(1))
    for t, p, s in zip(jax.tree.leaves(theta_tilde), jax.tree.leaves(theta), jax.tree.leaves(scales)):
        np.testing.assert_allclose(t * s, p, rtol=1e-6)
    key = jax.random.PRNGKey(2)
    assert float(family.loss(task, theta_tilde, key)) == pytest.approx(float(inner.loss(task["task"], theta, key)))
    # The gradient in θ̃ is the gradient in θ times the tensor's scale.
    g_tilde = jax.grad(family.loss, argnums=1)(task, theta_tilde, key)
    g = jax.grad(inner.loss, argnums=1)(task["task"], theta, key)
    for a, b, s in zip(jax.tree.leaves(g_tilde), jax.tree.leaves(g), jax.tree.leaves(scales)):
        np.testing.assert_allclose(a, b * s, rtol=1e-5, atol=1e-7)


def test_scales_are_log_uniform_and_vmappable():
    family = augmented(min_scale=0.01, max_scale=100.0)
    task_params = jax.vmap(family.sample)(jax.random.split(jax.random.PRNGKey(3), 2000))
    logs = np.log10(np.asarray(task_params["scales"]["w"]))
    assert logs.min() >= -2 - 1e-5 and logs.max() <= 2 + 1e-5
    assert abs(np.mean(logs)) < 0.1 and np.mean(np.abs(logs) < 1) == pytest.approx(0.5, abs=0.05)


def test_scale_augmentation_round_trips_its_config_and_refuses_bad_options():
    family = augmented(min_scale=0.5, max_scale=2.0)
    config = json.loads(json.dumps(family.config()))
    assert config["task"] == "logistic_regression" and config["options"]["features"] == 4
    assert tasks.get("scale_augmented", **config).config() == family.config()
    with pytest.raises(errors.ConfigError, match="'min_scale' \\(2.0\\) must not exceed 'max_scale'"):
        augmented(min_scale=2.0, max_scale=1.0)
    with pytest.raises(errors.ConfigError, match="'max_scale' must be a positive number"):
        augmented(max_scale=0.0)
    with pytest.raises(errors.ConfigError, match="wraps one task family"):
        tasks.get("scale_augmented", task="mixture", options={"members": []})
    with pytest.raises(errors.UnknownNameError, match="unknown task 'nope'"):
        tasks.get("scale_augmented", task="nope")


def test_a_scale_augmented_member_keeps_the_mnist_data_record():
    family = tasks.get("scale_augmented", task="mnist", options={"data_dir": FIXTURE, "image_size": 8})
    assert family.data_record == tasks.get("mnist", data_dir=FIXTURE).data_record


def test_a_task_module_in_the_current_folder_is_found_as_python_m_finds_it(tmp_path, monkeypatch):
    (tmp_path / "my_l2l_tasks.py").write_text(
        "from l2l_jax.tasks import QuadraticFamily\n\ndef make(dim=3):\n    return QuadraticFamily(dim=dim)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    family = tasks.get("my_l2l_tasks:make", dim=4)
    assert family.dim == 4
    with pytest.raises(errors.UnknownNameError, match="cannot import module 'not_there_either'"):
        tasks.get("not_there_either:make")


def test_a_registered_task_is_built_by_name_and_a_shipped_name_cannot_be_taken(monkeypatch):
    import copy

    monkeypatch.setattr(tasks, "_REGISTRY", copy.deepcopy(tasks._REGISTRY))
    tasks.register("my_bowl", lambda dim=2: tasks.QuadraticFamily(dim=dim))
    assert tasks.get("my_bowl", dim=5).dim == 5 and "my_bowl" in tasks.available()
    assert tasks.options("my_bowl") == ["dim"]
    with pytest.raises(errors.ConfigError, match="'quadratic' is a shipped task"):
        tasks.register("quadratic", tasks.QuadraticFamily.__init__)


def test_options_lists_what_a_task_family_takes_and_refuses_an_unknown_name():
    assert tasks.options("quadratic") == ["dim", "init_scale"]
    assert "data_dir" in tasks.options("mnist_cnn") and "data_dir" not in tasks.options("teacher_student")
    with pytest.raises(errors.UnknownNameError, match="unknown task 'nope'"):
        tasks.options("nope")
