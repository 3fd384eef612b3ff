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
# # 02 · Meta-training the LSTM optimizer on quadratics
#
# The paper's first experiment (Andrychowicz et al., 2016, §3.1): learn an optimizer for
# random 10-dimensional quadratics $f(\theta) = \lVert W\theta - y \rVert^2$, with $W$ and
# $y$ drawn from a standard normal distribution.
#
# * **The optimizer** is a small LSTM (2 layers of 20 units) applied to *each coordinate*
#   separately, with weights shared across coordinates. It reads a preprocessed gradient
#   and outputs that coordinate's update, so the same $\varphi$ works for any number of
#   parameters.
# * **Meta-training** unrolls 100 optimization steps on a batch of random quadratics, in
#   truncations of 20 steps. After each truncation, $\varphi$ takes an Adam step on the
#   meta-gradient of the meta-loss $\sum_t f(\theta_t)$ (truncated backpropagation
#   through time).
#
# Here we meta-train with a small budget (600 meta-steps, about half a minute on 2 CPU
# cores), compare with hand-designed optimizers whose learning rates are tuned, and look at
# the shipped, longer-trained `quadratic-lstm`.

# %%
# %matplotlib inline
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from IPython.display import Markdown, display

import l2l_jax
from l2l_jax import MetaTrainConfig, meta_train
from l2l_jax.evaluation import compare_with_baselines

SMOKE = os.environ.get("L2L_JAX_NOTEBOOK_SMOKE") == "1"  # set under pytest: a quick run of every cell
META_STEPS = 20 if SMOKE else 600
VALIDATE_EVERY = 10 if SMOKE else 100
TASKS = 8 if SMOKE else 64  # quadratics per meta-step, for validation, to tune on and to compare on

# %% [markdown]
# ## The task family
#
# A *task family* samples tasks: `sample(key)` draws a task's parameters (here $W$ and
# $y$), `init(task, key)` draws the starting point $\theta_0$ (small, $N(0, 0.01^2)$) and
# `loss(task, theta, key)` evaluates $f$ (the key would draw a minibatch for stochastic
# tasks; quadratics ignore it).

# %%
family = l2l_jax.tasks.get("quadratic")  # dim=10
task = family.sample(jax.random.key(0))
theta0 = family.init(task, jax.random.key(1))
print(family)
print({k: v.shape for k, v in task.items()}, "θ0:", theta0.shape)
print("f(θ0) =", float(family.loss(task, theta0, jax.random.key(2))))

# %% [markdown]
# ## Meta-training
#
# `MetaTrainConfig` holds every setting; the defaults follow the paper (LSTM preset
# `"paper"`, horizon 100, truncation 20, Adam on $\varphi$). We shorten the run: 600
# meta-steps on batches of 64 quadratics, meta-learning rate $10^{-2}$ decayed with a cosine
# schedule. Every 100 meta-steps $\varphi$ is validated on 64 held-out quadratics (full
# 100-step runs) and the best $\varphi$ is kept.

# %%
config = MetaTrainConfig(
    task="quadratic",
    optimizer="lstm",
    num_meta_steps=META_STEPS,
    batch_size=TASKS,
    meta_lr=1e-2,
    meta_lr_schedule="cosine",
    validate_every=VALIDATE_EVERY,
    num_val_tasks=TASKS,
    seed=0,
)
t0 = time.perf_counter()
result = meta_train(config, progress=True)  # pass a run directory to keep checkpoints
print(f"meta-training took {time.perf_counter() - t0:.0f} s; "
      f"best validation meta-loss {result.best_val:.1f}")

# %% [markdown]
# `result.history` has one row per meta-step. The training meta-loss is noisy (every
# meta-step sees other quadratics, and the five truncations of a run have different loss
# levels); the validation meta-loss, on fixed held-out tasks, shows the trend.

# %%
steps = [r["step"] for r in result.history]
val = [(r["step"], r["val_loss"]) for r in result.history if "val_loss" in r]
fig, ax = plt.subplots(figsize=(6.5, 3.8))
ax.plot(steps, [r["meta_loss"] for r in result.history], lw=0.7, alpha=0.6,
        label="meta-loss (training batch, one truncation)")
ax.plot(*zip(*val), "o-", label="validation meta-loss (100-step runs)")
ax.set_yscale("log")
ax.set_xlabel("meta-step")
ax.set_ylabel("meta-loss (sum of losses)")
ax.legend(loc="lower left", fontsize=8)
ax.grid(True, which="both", alpha=0.3)
plt.show()

# %% [markdown]
# ## Comparison with tuned baselines
#
# `compare_with_baselines` tunes the learning rate of SGD, momentum, NAG, RMSprop and Adam
# on 64 held-out "tune" quadratics (on a 7-point grid from $10^{-3}$ to 1; the library's
# default grid has 21 points), then runs every optimizer for 100 steps on 64 other "test"
# quadratics. Besides the optimizer we just trained, we include the shipped
# `quadratic-lstm` (trained for 4000 meta-steps on batches of 128).
# `pretrained.load_meta_params` returns the learned optimizer and its $\varphi$.

# %%
shipped = l2l_jax.pretrained.load_meta_params("quadratic-lstm")  # (optimizer, φ)
t0 = time.perf_counter()
comparison = compare_with_baselines(
    {
        "learned lstm (this notebook)": (result.optimizer, result.meta_params),
        "learned lstm (shipped)": shipped,
    },
    family,
    num_steps=100,
    num_tune_tasks=TASKS,
    num_test_tasks=TASKS,
    grid=tuple(float(lr) for lr in np.logspace(-3, 0, 7)),
    progress=False,
)
print(f"comparison took {time.perf_counter() - t0:.0f} s")
assert not any(t.at_edge for t in comparison.tunings.values()), "widen the grid"
display(Markdown(comparison.table()))

# %%
fig, ax = plt.subplots(figsize=(7, 4.5))
for name, curves in comparison.curves.items():
    mean = curves.mean(axis=0)
    learned = name.startswith("learned")
    ax.plot(mean, lw=2.5 if learned else 1.2, ls="-" if learned else "--",
            label=f"{name}" + ("" if learned else f" (lr {comparison.learning_rates[name]:.3g})"))
ax.set_yscale("log")
ax.set_xlabel("step")
ax.set_ylabel(f"mean loss over {TASKS} test quadratics")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Even this short run is competitive with the tuned baselines, and the shipped optimizer is
# better still. The mean final loss is dominated by a few ill-conditioned quadratics that
# no optimizer solves in 100 steps; the median column tells the typical case. The full-size
# result, on 256 test quadratics with the 21-point grid, is in
# [`benchmarks/results/quadratic.md`](../benchmarks/results/quadratic.md).
#
# ## The shipped optimizer is an optax optimizer
#
# `l2l_jax.pretrained.load(name)` returns a ready `optax` transformation, usable in any
# training loop. Here it is on one new quadratic, beside Adam with the tuned learning rate:

# %%
task = family.sample(jax.random.key(42))
theta0 = family.init(task, jax.random.key(43))


def loss_fn(theta):
    return family.loss(task, theta, None)  # quadratics need no minibatch key


def run(tx, num_steps=100):
    @jax.jit
    def step(theta, state):
        loss, grad = jax.value_and_grad(loss_fn)(theta)
        updates, state = tx.update(grad, state, theta)
        return optax.apply_updates(theta, updates), state, loss

    theta, state, losses = theta0, tx.init(theta0), []
    for _ in range(num_steps):
        theta, state, loss = step(theta, state)
        losses.append(float(loss))
    return losses + [float(loss_fn(theta))]


runs = {
    "learned lstm (shipped)": run(l2l_jax.pretrained.load("quadratic-lstm")),
    f"adam (lr {comparison.learning_rates['adam']:.3g})": run(optax.adam(comparison.learning_rates["adam"])),
}
for name, losses in runs.items():
    print(f"{name:24s} f(θ0) = {losses[0]:.3g}   f(θ100) = {losses[-1]:.3g}")
