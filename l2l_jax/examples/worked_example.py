"""The worked example: two inner steps of a linear-RNN optimizer on (θ-5)².

The source text unrolls f(θ) = (θ-5)² from θ0 = 10 with h_t = φ1∇_t + φ2h_{t-1},
g_t = φ3h_t, φ = (0.1, 0.5, -1.0), gets θ: 10 → 9.0 → 7.7 and meta-loss 7.29, then
*assumes* a meta-gradient of [15, 8, -10] and steps φ with η = 0.01. Here the
meta-gradient is computed by ``jax.grad`` through the scanned unroll, in both
orders, and the two meta-steps are compared.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from l2l_jax.checks import positive_int
from l2l_jax.meta.unroll import unroll, weighted_loss
from l2l_jax.optimizers.linear_rnn import linear_rnn
from l2l_jax.tasks.quadratic import ScalarQuadratic

PHI0 = (0.1, 0.5, -1.0)
ASSUMED_META_GRAD = (15.0, 8.0, -10.0)
META_LR = 0.01
NUM_STEPS = 2


def _to_dict(phi: jax.Array) -> dict[str, jax.Array]:
    return {"phi1": phi[0], "phi2": phi[1], "phi3": phi[2]}


def meta_loss(phi: jax.Array, *, first_order: bool = False, num_steps: int = NUM_STEPS) -> jax.Array:
    """(θ_T - 5)² after ``num_steps`` linear-RNN steps from θ0 = 10; ``phi`` is (φ1, φ2, φ3)."""
    task = ScalarQuadratic()
    opt = linear_rnn()
    tx = opt.as_optax(_to_dict(phi))
    theta0 = task.init((), jax.random.key(0))
    _, _, losses = unroll(
        tx,
        lambda p, k: task.loss((), p, k),
        theta0,
        tx.init(theta0),
        jax.random.key(0),
        num_steps,
        first_order=first_order,
    )
    return weighted_loss(losses, "final")


def trace(phi: jax.Array) -> dict[str, list[float]]:
    """θ_t, ∇_t, h_t and g_t of the two steps, computed by running the optax optimizer."""
    task = ScalarQuadratic()
    tx = linear_rnn().as_optax(_to_dict(phi))
    theta = task.init((), jax.random.key(0))
    state = tx.init(theta)
    out: dict[str, list[float]] = {"theta": [float(theta)], "grad": [], "h": [], "g": []}
    for _ in range(NUM_STEPS):
        grad = jax.grad(task.loss, argnums=1)((), theta, jax.random.key(0))
        g, state = tx.update(grad, state, theta)
        theta = optax.apply_updates(theta, g)
        out["grad"].append(float(grad))
        out["h"].append(float(state.hidden))
        out["g"].append(float(g))
        out["theta"].append(float(theta))
    return out


def compute(phi0: tuple[float, float, float] = PHI0) -> dict[str, Any]:
    """Everything the ``seed-example`` command prints, as plain Python numbers.

    Run it with float64 enabled (``jax.enable_x64(True)``) for the exact figures.

    Returns:
      A dict with keys ``theta``, ``grad``, ``h``, ``g``, ``meta_loss``,
      ``assumed_meta_grad``, ``phi_new_assumed``, ``meta_loss_after_assumed_step``,
      ``meta_grad`` (exact, second order), ``meta_grad_first_order``, ``phi_new``
      (φ - 0.01·meta_grad), ``meta_loss_after_exact_step`` and ``cosine_assumed_vs_exact``.
    """
    phi = jnp.asarray(phi0, dtype=float)
    assumed = jnp.asarray(ASSUMED_META_GRAD, dtype=float)
    loss, grad = jax.value_and_grad(meta_loss)(phi)
    grad_fo = jax.grad(lambda p: meta_loss(p, first_order=True))(phi)
    phi_assumed = phi - META_LR * assumed
    phi_exact = phi - META_LR * grad
    cosine = jnp.dot(assumed, grad) / (jnp.linalg.norm(assumed) * jnp.linalg.norm(grad))
    return {
        **trace(phi),
        "phi": [float(x) for x in phi],
        "meta_lr": META_LR,
        "meta_loss": float(loss),
        "assumed_meta_grad": [float(x) for x in assumed],
        "phi_new_assumed": [float(x) for x in phi_assumed],
        "meta_loss_after_assumed_step": float(meta_loss(phi_assumed)),
        "meta_grad": [float(x) for x in grad],
        "meta_grad_first_order": [float(x) for x in grad_fo],
        "phi_new": [float(x) for x in phi_exact],
        "meta_loss_after_exact_step": float(meta_loss(phi_exact)),
        "cosine_assumed_vs_exact": float(cosine),
    }


def meta_descent(
    phi0: tuple[float, float, float] = PHI0,
    num_meta_steps: int = 200,
    meta_optimizer: optax.GradientTransformation | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Repeated exact meta-steps on φ (Adam, lr 0.01 by default) for the two-step meta-loss.

    Returns:
      ``(meta_losses, phis)``: the meta-loss before each step and φ after it.
    """
    num_meta_steps = positive_int("num_meta_steps", num_meta_steps)
    meta_optimizer = meta_optimizer or optax.adam(0.01)
    phi = jnp.asarray(phi0, dtype=float)

    @jax.jit
    def step(phi: jax.Array, state: optax.OptState) -> tuple[jax.Array, optax.OptState, jax.Array]:
        loss, grad = jax.value_and_grad(meta_loss)(phi)
        updates, state = meta_optimizer.update(grad, state, phi)
        return optax.apply_updates(phi, updates), state, loss

    state = meta_optimizer.init(phi)
    losses, phis = [], []
    for _ in range(num_meta_steps):
        phi, state, loss = step(phi, state)
        losses.append(float(loss))
        phis.append(np.asarray(phi))
    return np.asarray(losses), np.stack(phis)


def explanation(result: dict[str, Any]) -> str:
    """What the exact gradient shows about the assumed one, in plain words."""
    g, a = result["meta_grad"], result["assumed_meta_grad"]
    opposite = sum(1 for x, y in zip(g, a) if x * y < 0)
    return (
        f"The exact meta-gradient is [{g[0]:.4g}, {g[1]:.4g}, {g[2]:.4g}]; the assumed "
        f"[{a[0]:g}, {a[1]:g}, {a[2]:g}] has the opposite sign in {opposite} of 3 components "
        f"(cosine {result['cosine_assumed_vs_exact']:.3f}) and is ~{abs(g[0] / a[0]):.0f}x too small in φ1. "
        f"The source's step therefore goes uphill: the meta-loss rises from {result['meta_loss']:.4g} "
        f"to {result['meta_loss_after_assumed_step']:.4g}. A step along the exact gradient "
        f"(η = {result['meta_lr']}) gives {result['meta_loss_after_exact_step']:.4g}: η = 0.01 is too "
        f"large for this steep φ1 direction, which is why repeated smaller (Adam) steps are used to drive "
        "the meta-loss to zero."
    )
