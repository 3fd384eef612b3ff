"""The paper's MNIST optimizee, on the small real fixture (no network)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2l_jax import errors, tasks
from l2l_jax.evaluation import loss_curves, sample_tasks
from l2l_jax.meta import MetaTrainConfig, meta_train

FIXTURE = str(Path(__file__).parent / "fixtures" / "mnist")


@pytest.fixture(scope="module")
def family():
    return tasks.get("mnist", data_dir=FIXTURE)


def test_uses_the_fixture_and_says_which_split(family):
    assert family.num_examples == 300
    assert "test split" in family.data_description and "training split was not found" in family.data_description


def test_the_data_record_says_what_the_data_was_not_where_it_lay(family):
    import hashlib

    record = family.data_record
    assert record["dataset"] == "MNIST" and record["split"] == "test" and record["examples"] == 300
    images, labels = np.asarray(family.images).reshape(-1, 28, 28), np.asarray(family.labels).astype(np.uint8)
    assert record["sha256"] == hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    assert FIXTURE not in str(record) and "fixtures" not in str(record)


def test_architecture_and_flax_default_init(family):
    params = family.init((), jax.random.PRNGKey(0))
    assert params["Dense_0"]["kernel"].shape == (784, 20)
    assert params["Dense_1"]["kernel"].shape == (20, 10)
    assert float(jnp.abs(params["Dense_0"]["bias"]).max()) == 0.0  # Flax: zero biases.
    # lecun_normal: variance 1/fan_in.
    assert float(jnp.std(params["Dense_0"]["kernel"])) == pytest.approx(784**-0.5, rel=0.1)


def test_variants():
    fam = tasks.get("mnist", data_dir=FIXTURE, hidden_units=40, hidden_layers=2, activation="relu")
    params = fam.init((), jax.random.PRNGKey(0))
    assert [params[f"Dense_{i}"]["kernel"].shape for i in range(3)] == [(784, 40), (40, 40), (40, 10)]


def test_minibatches_of_128_with_pixels_in_unit_range(family):
    x, y = family.batch(jax.random.PRNGKey(3))
    assert x.shape == (128, 784) and y.shape == (128,)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.9
    x2, _ = family.batch(jax.random.PRNGKey(4))
    assert not np.array_equal(x, x2)


def test_initial_loss_is_near_log_10_and_adam_lowers_it(family):
    tset = sample_tasks(family, seed=0, num_tasks=4)
    curves = loss_curves(optax.adam, jnp.asarray(0.01), family, tset, 60)
    assert np.mean(curves[:, 0]) == pytest.approx(np.log(10), abs=0.3)
    assert np.mean(curves[:, -5:]) < 0.7 * np.mean(curves[:, :5])


def test_bad_options():
    with pytest.raises(errors.ConfigError, match="activation"):
        tasks.get("mnist", data_dir=FIXTURE, activation="gelu")
    with pytest.raises(errors.ConfigError, match="hidden_units"):
        tasks.get("mnist", data_dir=FIXTURE, hidden_units=0)


def test_a_few_meta_steps_on_mnist_run_and_stay_finite(tmp_path):
    config = MetaTrainConfig(
        task="mnist",
        task_options={"data_dir": FIXTURE, "hidden_units": 5},
        optimizer_options={"hidden_size": 6},
        num_meta_steps=3,
        horizon=8,
        truncation=4,
        batch_size=2,
        validate_every=3,
        num_val_tasks=2,
    )
    result = meta_train(config, tmp_path / "run", progress=False)
    assert all(np.isfinite(r["meta_loss"]) for r in result.history)
    assert result.skipped == 0
