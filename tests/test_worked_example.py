"""The source's worked example, reproduced exactly, with the real meta-gradient."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from l2l_jax import cli
from l2l_jax.examples import worked_example


@pytest.fixture(scope="module")
def result():
    with jax.enable_x64(True):
        return worked_example.compute()


def test_forward_pass_matches_the_source(result):
    np.testing.assert_allclose(result["theta"], [10.0, 9.0, 7.7], atol=1e-6)
    np.testing.assert_allclose(result["grad"], [10.0, 8.0], atol=1e-6)
    np.testing.assert_allclose(result["h"], [1.0, 1.3], atol=1e-6)
    np.testing.assert_allclose(result["g"], [-1.0, -1.3], atol=1e-6)
    np.testing.assert_allclose(result["meta_loss"], 7.29, atol=1e-6)


def test_the_sources_assumed_step(result):
    np.testing.assert_allclose(result["phi_new_assumed"], [-0.05, 0.42, -0.9], atol=1e-6)


def test_exact_meta_gradients_by_hand(result):
    # L = (θ2-5)², θ2 = θ0 + φ3φ1∇0 + φ3(φ1∇1 + φ2φ1∇0), ∇1 = 2(θ1-5), θ1 = θ0 + φ3φ1∇0.
    # dL/dθ2 = 5.4; ∂θ2/∂φ = (-21, -1, 2.1) exactly, (-23, -1, 2.3) with ∇1 held constant.
    np.testing.assert_allclose(result["meta_grad"], [-113.4, -5.4, 11.34], atol=1e-6)
    np.testing.assert_allclose(result["meta_grad_first_order"], [-124.2, -5.4, 12.42], atol=1e-6)
    np.testing.assert_allclose(result["phi_new"], [1.234, 0.554, -1.1134], atol=1e-6)


def test_the_assumed_gradient_points_uphill(result):
    assert result["cosine_assumed_vs_exact"] < 0
    assert result["meta_loss_after_assumed_step"] > result["meta_loss"]


def test_adam_on_the_exact_meta_gradient_drives_the_meta_loss_to_zero():
    with jax.enable_x64(True):
        losses, phis = worked_example.meta_descent(num_meta_steps=200)
        assert losses[0] == pytest.approx(7.29)
        assert losses[-1] < 1e-6
        assert float(worked_example.meta_loss(jax.numpy.asarray(phis[-1]))) < 1e-6


def test_seed_example_json_command(capsys):
    assert cli.main(["seed-example", "--json", "--meta-steps", "50"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in (
        "theta",
        "grad",
        "h",
        "g",
        "meta_loss",
        "assumed_meta_grad",
        "phi_new_assumed",
        "meta_grad",
        "meta_grad_first_order",
        "phi_new",
        "meta_loss_after_assumed_step",
        "meta_loss_after_exact_step",
    ):
        assert key in out, key
    np.testing.assert_allclose(out["theta"], [10.0, 9.0, 7.7], atol=1e-6)
    np.testing.assert_allclose(out["meta_grad"], [-113.4, -5.4, 11.34], atol=1e-6)


def test_seed_example_text_says_what_the_gradient_shows(capsys):
    assert cli.main(["seed-example", "--meta-steps", "20"]) == 0
    out = capsys.readouterr().out
    assert "θ2 = 7.7" in out and "7.29" in out
    assert "opposite sign in 3 of 3 components" in out
