# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · The worked example: a learned optimizer you can check by hand
#
# A *learned optimizer* replaces a hand-written update rule such as $g_t = -\eta\nabla_t$
# with a small recurrent network whose own weights $\varphi$ are trained ("meta-trained").
# Before the paper's LSTM (notebooks 02-04), this notebook uses the smallest possible
# learned optimizer, three numbers, on the smallest possible problem, so that every number
# can be checked with pen and paper:
#
# * **optimizee**: $f(\theta) = (\theta - 5)^2$, starting from $\theta_0 = 10$;
# * **optimizer**: a linear RNN, $h_t = \varphi_1 \nabla_t + \varphi_2 h_{t-1}$, update
#   $g_t = \varphi_3 h_t$, $\theta_{t+1} = \theta_t + g_t$, with $\varphi = (0.1, 0.5, -1.0)$;
# * **meta-loss**: $L(\varphi) = f(\theta_2)$, the loss after two steps.
#
# We will (1) run the two steps with the library's optax optimizer, (2) compute the exact
# meta-gradient $\partial L / \partial \varphi$ with `jax.grad` and compare it with the one
# the source text *assumed*, and (3) meta-train $\varphi$ until $\theta_2$ lands on 5.

# %%
# %matplotlib inline
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import l2l_jax
from l2l_jax.examples import worked_example
from l2l_jax.meta import unroll, weighted_loss

# The numbers below are meant to match hand arithmetic: compute in float64.
jax.config.update("jax_enable_x64", True)

# %% [markdown]
# ## 1. Two steps, by hand and with optax
#
# `l2l_jax.linear_rnn()` is a learned optimizer. `init(key)` gives its meta-parameters
# $\varphi$ (a pytree; here fixed at $(0.1, 0.5, -1.0)$) and `as_optax(phi)` turns them into
# an ordinary optax optimizer, used exactly like `optax.sgd(...)`: `init` makes the state
# (the hidden state $h_0 = 0$), `update` maps a gradient to an update.

# %%
opt = l2l_jax.linear_rnn()
phi = opt.init(jax.random.key(0))  # {'phi1': 0.1, 'phi2': 0.5, 'phi3': -1.0}
tx = opt.as_optax(phi)             # an optax.GradientTransformation
print(phi)


def f(theta):
    return (theta - 5.0) ** 2


theta = jnp.array(10.0)
state = tx.init(theta)  # h_0 = 0
print(f"start   θ0 = {float(theta):.1f}")
for t in (1, 2):
    grad = jax.grad(f)(theta)                      # ∇ = 2(θ − 5)
    update, state = tx.update(grad, state, theta)  # h = φ1·∇ + φ2·h_prev,  g = φ3·h
    theta = optax.apply_updates(theta, update)     # θ ← θ + g
    print(f"step {t}  ∇ = {float(grad):4.1f}   h = {float(state.hidden):3.1f}   "
          f"g = {float(update):4.1f}   θ{t} = {float(theta):.1f}")
print(f"meta-loss L(φ) = f(θ2) = ({float(theta):.1f} − 5)² = {float(f(theta)):.2f}")


# %% [markdown]
# By hand: step 1 sees $\nabla = 2(10-5) = 10$, so $h = 0.1 \cdot 10 + 0.5 \cdot 0 = 1$,
# $g = -1$ and $\theta_1 = 9$. Step 2 sees $\nabla = 8$, so $h = 0.8 + 0.5 = 1.3$,
# $g = -1.3$ and $\theta_2 = 7.7$. The meta-loss is $2.7^2 = 7.29$.
#
# ## 2. The meta-gradient, with `jax.grad`
#
# To improve $\varphi$ we need $\partial L / \partial \varphi$, a derivative *through* the
# optimizer's own steps. In JAX we write the meta-loss as a function of $\varphi$ and
# differentiate it. `l2l_jax.meta.unroll` runs the inner loop as one `lax.scan` and returns
# the losses $f(\theta_0), \dots, f(\theta_T)$; `weighted_loss(losses, "final")` keeps
# $f(\theta_T)$. The optax optimizer is built from $\varphi$ *inside* the function, so the
# gradient reaches $\varphi$ through every step.
#
# `first_order=True` is the paper's approximation: it treats the gradients $\nabla_t$ the
# optimizer reads as constants (`stop_gradient`), dropping second derivatives of $f$.
# `first_order=False` gives the exact meta-gradient.

# %%
def meta_loss(phi, first_order=False, num_steps=2):
    """(θ_T − 5)² after num_steps linear-RNN steps from θ0 = 10; phi = (φ1, φ2, φ3)."""
    tx = l2l_jax.linear_rnn().as_optax(dict(phi1=phi[0], phi2=phi[1], phi3=phi[2]))
    theta0 = jnp.array(10.0)
    _, _, losses = unroll(tx, lambda th, key: (th - 5.0) ** 2, theta0, tx.init(theta0),
                          jax.random.key(0), num_steps=num_steps, first_order=first_order)
    return weighted_loss(losses, "final")  # f(θ_T)


phi0 = jnp.array([0.1, 0.5, -1.0])
loss0, exact = jax.value_and_grad(meta_loss)(phi0)
first_order = jax.grad(lambda p: meta_loss(p, first_order=True))(phi0)
assumed = jnp.array([15.0, 8.0, -10.0])  # what the source text assumed

print(f"meta-loss L(φ0)          = {float(loss0):.2f}")
print(f"exact (second order)     = {np.round(np.asarray(exact), 4)}")
print(f"first order (paper)      = {np.round(np.asarray(first_order), 4)}")
print(f"assumed by the source    = {np.asarray(assumed)}")
cosine = jnp.dot(assumed, exact) / (jnp.linalg.norm(assumed) * jnp.linalg.norm(exact))
print(f"cosine(assumed, exact)   = {float(cosine):.3f}")

# %% [markdown]
# **The assumed gradient has the wrong sign in all three components.** The chain rule
# confirms `jax.grad`. Write $\theta_1 = 10 + 10\varphi_1\varphi_3$,
# $\nabla_2 = 2(\theta_1 - 5)$ and $\theta_2 = \theta_1 + \varphi_3(\varphi_1\nabla_2 +
# 10\varphi_1\varphi_2)$. Then $\partial L/\partial\theta_2 = 2(7.7 - 5) = 5.4$, and:
#
# | | $\partial\theta_2/\partial\varphi_1$ | $\partial\theta_2/\partial\varphi_2$ | $\partial\theta_2/\partial\varphi_3$ | $\partial L/\partial\varphi$ |
# | --- | --- | --- | --- | --- |
# | first order ($\nabla_2 = 8$ held fixed) | $-10 - 13 = -23$ | $-1$ | $1 + 1.3 = 2.3$ | $(-124.2, -5.4, 12.42)$ |
# | exact (also $\partial\nabla_2/\partial\varphi = 20\,\partial\theta_1/\partial\varphi$) | $-23 + 2 = -21$ | $-1$ | $2.3 - 0.2 = 2.1$ | $(-113.4, -5.4, 11.34)$ |
#
# Increasing $\varphi_1$ (a larger step) makes $\theta_2$ *smaller*, i.e. closer to 5, so
# $\partial L/\partial\varphi_1$ must be negative, not $+15$.
#
# ## 3. A meta-step along each gradient
#
# One step of gradient descent on $\varphi$ with meta-learning rate 0.01:

# %%
for name, g in (("assumed", assumed), ("exact", exact)):
    phi_new = phi0 - 0.01 * g
    print(f"{name:8s} step: φ → {np.round(np.asarray(phi_new), 4)},  "
          f"meta-loss {float(loss0):.2f} → {float(meta_loss(phi_new)):.2f}")

# The meta-loss along both directions, for meta-learning rates from 0 to 0.02.
rates = jnp.linspace(0.0, 0.02, 81)
along = jax.vmap(lambda lr, g: meta_loss(phi0 - lr * g), in_axes=(0, None))
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(rates, along(rates, assumed), label="along the assumed gradient")
ax.plot(rates, along(rates, exact), label="along the exact gradient")
ax.axvline(0.01, color="gray", linestyle=":", label="η = 0.01")
ax.set_xlabel("meta-learning rate η")
ax.set_ylabel("meta-loss L(φ0 − η·grad)")
ax.set_yscale("log")
ax.legend()
plt.show()

# %% [markdown]
# The assumed step goes **uphill** (7.29 → 37.57), and further along it the meta-loss only
# grows. The exact gradient points downhill, but it is steep in $\varphi_1$: along it the
# meta-loss reaches 0 already at $\eta \approx 0.001$ ($\theta_2$ is a polynomial in
# $\varphi$, so it crosses 5 twice), and at $\eta = 0.01$ the step overshoots to 58.73.
# Repeated smaller steps fix that: below, Adam does.
#
# ## 4. Meta-training $\varphi$
#
# We run Adam (learning rate 0.01) on $\varphi$ with the exact meta-gradient, 200 times.
# The whole meta-step (unroll, `jax.grad`, Adam) is one `jax.jit`-compiled function.

# %%
meta_opt = optax.adam(0.01)


@jax.jit
def meta_step(phi, meta_state):
    loss, grad = jax.value_and_grad(meta_loss)(phi)
    updates, meta_state = meta_opt.update(grad, meta_state, phi)
    return optax.apply_updates(phi, updates), meta_state, loss


phi, meta_state = phi0, meta_opt.init(phi0)
meta_losses = []
for _ in range(200):
    phi, meta_state, loss = meta_step(phi, meta_state)
    meta_losses.append(float(loss))
print(f"meta-loss: {meta_losses[0]:.2f} → {float(meta_loss(phi)):.2e}")
print(f"φ: {np.asarray(phi0)} → {np.round(np.asarray(phi), 4)}")

# The library ships the same loop as l2l_jax.examples.worked_example.meta_descent:
lib_losses, lib_phis = worked_example.meta_descent()
print("same as l2l_jax.examples.worked_example.meta_descent():", np.allclose(lib_phis[-1], phi))


# %% [markdown]
# Finally, the trajectories $\theta_t$ before and after meta-training. We run both
# optimizers for 10 steps although the meta-loss only ever looked at $\theta_2$.

# %%
def trajectory(phi, num_steps=10):
    tx = l2l_jax.linear_rnn().as_optax(dict(phi1=phi[0], phi2=phi[1], phi3=phi[2]))
    theta = jnp.array(10.0)
    state, out = tx.init(theta), [float(theta)]
    for _ in range(num_steps):
        update, state = tx.update(jax.grad(f)(theta), state, theta)
        theta = optax.apply_updates(theta, update)
        out.append(float(theta))
    return np.array(out)


before, after = trajectory(phi0), trajectory(phi)
print("θ0..θ2 before:", np.round(before[:3], 4), "  after:", np.round(after[:3], 4))

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.8))
ax0.plot(np.arange(1, len(meta_losses) + 1), meta_losses)
ax0.set_yscale("log")
ax0.set_xlabel("meta-step")
ax0.set_ylabel("meta-loss  (θ2 − 5)²")
ax0.set_title("Adam on the exact meta-gradient")
ax0.grid(True, which="both", alpha=0.3)

steps = np.arange(len(before))
ax1.plot(steps, before, "o-", label="φ0 = (0.1, 0.5, −1.0)")
ax1.plot(steps, after, "o-", label="φ after meta-training")
ax1.axhline(5.0, color="gray", linestyle=":", label="minimum θ = 5")
ax1.axvspan(-0.2, 2.2, color="gold", alpha=0.15, label="steps the meta-loss sees")
ax1.set_xlabel("inner step t")
ax1.set_ylabel("θ_t")
ax1.set_title("θ_t before and after")
ax1.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# After meta-training, $\theta_2 = 5$ to within $10^{-4}$: the meta-loss is essentially 0.
# After step 2 the trained optimizer overshoots, because nothing in the meta-loss asked it
# to stay put. That is why the paper's meta-loss is the *sum* of the losses over a long run
# (100 steps) rather than the last one; notebook 02 does exactly that with an LSTM.
#
# The same numbers come from the command line: `l2l-jax seed-example` (or `--json`).
