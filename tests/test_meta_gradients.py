"""Meta-gradients from jax.grad over the scanned unroll agree with finite differences.

Second order: the exact gradient of the meta-loss. First order (the paper's): the
gradient with every ∇_t held constant, which is the exact gradient of the unroll
that feeds the optimizer the *recorded* gradients of the φ0 trajectory; central
differences of that function check it. All in float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from l2l_jax.examples import worked_example
from l2l_jax.meta import init_inner, truncation_loss, unroll
from l2l_jax.optimizers import linear_rnn, lstm
from l2l_jax.tasks import QuadraticFamily


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def directional_fd(f, x, v, eps=1e-5):
    return (f(x + eps * v) - f(x - eps * v)) / (2 * eps)


def test_worked_example_second_order_meta_gradient_matches_finite_differences():
    phi = jnp.asarray(worked_example.PHI0)
    grad = jax.grad(worked_example.meta_loss)(phi)
    for i in range(3):
        e = jnp.zeros(3).at[i].set(1.0)
        np.testing.assert_allclose(grad[i], directional_fd(worked_example.meta_loss, phi, e), rtol=1e-7, atol=1e-7)


def frozen_gradient_loss(tx_of, params0, loss_fn, frozen_grads, weighting_final):
    """The unroll fed fixed gradients: its true gradient is the first-order meta-gradient."""

    def f(phi_flat, unravel):
        tx = tx_of(unravel(phi_flat))
        params, state, losses = params0, tx.init(params0), []
        for g in frozen_grads:
            updates, state = tx.update(g, state, params)
            params = optax.apply_updates(params, updates)
            losses.append(loss_fn(params))
        return losses[-1] if weighting_final else sum(losses)

    return f


def test_worked_example_first_order_meta_gradient_matches_finite_differences():
    phi = jnp.asarray(worked_example.PHI0)
    grad_fo = jax.grad(lambda p: worked_example.meta_loss(p, first_order=True))(phi)
    rec = worked_example.trace(phi)
    frozen = [jnp.asarray(g) for g in rec["grad"]]
    f = frozen_gradient_loss(
        lambda d: linear_rnn().as_optax({"phi1": d[0], "phi2": d[1], "phi3": d[2]}),
        jnp.asarray(10.0),
        lambda th: (th - 5.0) ** 2,
        frozen,
        weighting_final=True,
    )
    for i in range(3):
        e = jnp.zeros(3).at[i].set(1.0)
        np.testing.assert_allclose(grad_fo[i], directional_fd(lambda x: f(x, lambda y: y), phi, e), rtol=1e-7)
    # And the two orders differ here: ∇_1 depends on φ through θ_1.
    assert not np.allclose(grad_fo, jax.grad(worked_example.meta_loss)(phi))


@pytest.mark.parametrize("first_order", [False, True])
def test_lstm_meta_gradient_on_a_quadratic_matches_finite_differences(first_order):
    family = QuadraticFamily(dim=3)
    opt = lstm(hidden_size=6)
    phi = opt.init(jax.random.key(1))
    inner = init_inner(opt, phi, family, jax.random.key(2), 1)
    num_steps = 6
    grad = jax.grad(lambda p: truncation_loss(p, opt, family, inner, num_steps, first_order=first_order)[0])(phi)
    flat_phi, unravel = ravel_pytree(phi)
    flat_grad, _ = ravel_pytree(grad)

    task_params = jax.tree.map(lambda x: x[0], inner.task_params)
    params0 = jax.tree.map(lambda x: x[0], inner.params)
    loss_fn = lambda th: family.loss(task_params, th, None)  # noqa: E731
    if first_order:
        # Record the gradients along the φ0 trajectory.
        tx = opt.as_optax(phi)
        params, state, frozen = params0, tx.init(params0), []
        for _ in range(num_steps):
            g = jax.grad(loss_fn)(params)
            frozen.append(g)
            u, state = tx.update(g, state, params)
            params = optax.apply_updates(params, u)
        f_flat = frozen_gradient_loss(opt.as_optax, params0, loss_fn, frozen, weighting_final=False)
        f = lambda x: f_flat(x, unravel)  # noqa: E731
    else:
        f = lambda x: truncation_loss(unravel(x), opt, family, inner, num_steps, first_order=False)[0]  # noqa: E731

    rng = np.random.default_rng(0)
    for _ in range(3):
        v = jnp.asarray(rng.standard_normal(flat_phi.shape))
        v = v / jnp.linalg.norm(v)
        np.testing.assert_allclose(jnp.dot(flat_grad, v), directional_fd(f, flat_phi, v), rtol=1e-5, atol=1e-8)


def test_first_and_second_order_differ_for_the_lstm():
    family = QuadraticFamily(dim=3)
    opt = lstm(hidden_size=6)
    phi = opt.init(jax.random.key(1))
    inner = init_inner(opt, phi, family, jax.random.key(2), 2)
    g = {fo: jax.grad(lambda p: truncation_loss(p, opt, family, inner, 5, first_order=fo)[0])(phi) for fo in (True, False)}
    a, b = ravel_pytree(g[True])[0], ravel_pytree(g[False])[0]
    assert float(jnp.linalg.norm(a - b)) > 1e-6 * float(jnp.linalg.norm(b))


def test_remat_gives_the_same_meta_gradient():
    family = QuadraticFamily(dim=4)
    opt = lstm(hidden_size=5)
    phi = opt.init(jax.random.key(3))
    inner = init_inner(opt, phi, family, jax.random.key(4), 3)
    grads = [
        ravel_pytree(jax.grad(lambda p: truncation_loss(p, opt, family, inner, 7, remat=r)[0])(phi))[0]
        for r in (False, True)
    ]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-10)


def test_unroll_takes_plain_optax_transformations():
    tx = optax.scale(-0.1)  # No extra-args support of its own.
    _, _, losses = unroll(tx, lambda p, k: jnp.sum(p**2), jnp.ones(3), tx.init(jnp.ones(3)), jax.random.key(0), 3)
    np.testing.assert_allclose(losses, 3 * 0.8 ** (2 * np.arange(4)), rtol=1e-12)


def test_unroll_matches_a_python_loop():
    family = QuadraticFamily(dim=5)
    tp = family.sample(jax.random.key(0))
    params = family.init(tp, jax.random.key(1))
    tx = optax.adam(0.1)
    _, _, losses = unroll(tx, lambda p, k: family.loss(tp, p, k), params, tx.init(params), jax.random.key(2), 8)
    state, expected = tx.init(params), []
    for _ in range(8):
        value, g = jax.value_and_grad(lambda p: family.loss(tp, p, None))(params)
        expected.append(value)
        u, state = tx.update(g, state, params)
        params = optax.apply_updates(params, u)
    expected.append(family.loss(tp, params, None))
    np.testing.assert_allclose(losses, jnp.stack(expected), rtol=1e-12)
