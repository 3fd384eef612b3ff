"""Shipped learned optimizers: listed, loadable by name, and as good as their metadata says."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2l_jax import errors, pretrained, tasks
from l2l_jax.evaluation import learned_curves, loss_curves, sample_tasks


def test_shipped_names_are_listed_and_load():
    names = pretrained.available()
    assert "quadratic-lstm" in names
    for name in names:
        tx = pretrained.load(name)
        assert isinstance(tx, optax.GradientTransformationExtraArgs)
        info = pretrained.info(name)
        assert info["optimizer"] == "lstm" and "training_config" in info and info["evaluation"]


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
