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
# # 04 · A learned optimizer as a drop-in optax optimizer in Flax
#
# `l2l_jax.pretrained.load("mnist-lstm")` returns an ordinary
# `optax.GradientTransformation`, so it goes wherever an optax optimizer goes. This
# notebook trains the paper's MNIST MLP (784-20-10, sigmoid, minibatches of 128) with it
#
# * (a) in a **Flax NNX** loop, with `nnx.Optimizer`,
# * (b) in a **Flax linen** loop, with `flax.training.train_state.TrainState`,
#
# each beside Adam (learning rate 0.03) in the same loop, and (c) saves and restores the
# optimizer state mid-run.
#
# One difference from Adam: the learned optimizer's state is an LSTM hidden state for
# *every parameter* (2 layers × 20 units × (h, c) = 80 numbers per parameter, where Adam
# keeps 2), so it suits small and medium models.

# %%
# %matplotlib inline
import os

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx
from flax.training import train_state

import l2l_jax
from l2l_jax.data import as_float_arrays, load_mnist_for_experiment

# A folder holding the MNIST .gz files (in it or in its mnist/ subfolder), or None.
# None: download them (once) into ~/.cache/l2l_jax/mnist. Under pytest this is the
# repository's small test fixture (300 images).
DATA_DIR = os.environ.get("L2L_JAX_DATA_DIR")
DOWNLOAD = DATA_DIR is None

# %% [markdown]
# ## Data and optimizers
#
# The data: MNIST as float32 arrays, the 60,000-image training split when it is found or
# can be downloaded, else the 10,000-image test split (the printed description says which).
# Both loops draw the same minibatches.
#
# The optimizers: we clip the gradient's global norm to 1 before either optimizer, with
# `optax.chain`, to show that the learned optimizer composes like any other.

# %%
images, labels, description = load_mnist_for_experiment(DATA_DIR, download=DOWNLOAD)
x, y = as_float_arrays(images, labels)  # (N, 784) in [0, 1], (N,) int32
print(description)

STEPS, BATCH = 200, 128
batches = np.random.default_rng(0).integers(0, len(x), size=(STEPS, BATCH))  # indices

learned = optax.chain(optax.clip_by_global_norm(1.0), l2l_jax.pretrained.load("mnist-lstm"))
adam = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.03))
optimizers = {"learned lstm (mnist-lstm)": learned, "adam (lr 0.03)": adam}


# %% [markdown]
# ## (a) Flax NNX
#
# The usual NNX loop: `nnx.Optimizer(model, tx, wrt=nnx.Param)` holds the optimizer state,
# and a `nnx.jit`-compiled step calls `optimizer.update(model, grads)`. Passing the loss as
# `optimizer.update(model, grads, value=loss)` is accepted too (optax's "extra args",
# needed by e.g. line searches); it is optional, and the LSTM ignores it.

# %%
class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(784, 20, rngs=rngs)
        self.out = nnx.Linear(20, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.sigmoid(self.hidden(x)))


def nnx_loss(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def nnx_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(nnx_loss)(model, x, y)
    optimizer.update(model, grads, value=loss)  # `value=loss` is optional
    return loss


nnx_losses = {}
for name, tx in optimizers.items():
    model = MLP(nnx.Rngs(0))  # same initialisation for both optimizers
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    nnx_losses[name] = np.array([float(nnx_step(model, optimizer, x[b], y[b])) for b in batches])
    print(f"{name:26s} steps {int(optimizer.step[...])}, final minibatch loss {nnx_losses[name][-1]:.3f}")


# %% [markdown]
# ## (b) Flax linen
#
# The usual linen loop: `TrainState.create(apply_fn=..., params=..., tx=tx)` and
# `state.apply_gradients(grads=grads)` in a `jax.jit`-compiled step.

# %%
class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.sigmoid(nn.Dense(20)(x)))


def make_state(tx, seed=0):
    model = LinenMLP()
    params = model.init(jax.random.key(seed), jnp.zeros((1, 784)))["params"]
    return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)


@jax.jit
def linen_step(state, x, y):
    def loss_fn(params):
        logits = state.apply_fn({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


def train(state, batch_indices):
    losses = []
    for b in batch_indices:
        state, loss = linen_step(state, x[b], y[b])
        losses.append(float(loss))
    return state, np.array(losses)


linen_losses = {}
for name, tx in optimizers.items():
    final_state, linen_losses[name] = train(make_state(tx), batches)
    print(f"{name:26s} steps {int(final_state.step)}, final minibatch loss {linen_losses[name][-1]:.3f}")


# %%
def smooth(v, k=10):
    return np.convolve(v, np.ones(k) / k, mode="valid")


fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
for ax, (title, runs) in zip(axes, (("(a) Flax NNX", nnx_losses), ("(b) Flax linen", linen_losses))):
    for name, losses in runs.items():
        ax.plot(losses, alpha=0.25)
        ax.plot(np.arange(9, STEPS), smooth(losses), color=ax.lines[-1].get_color(), label=name)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
axes[0].set_ylabel("minibatch loss (10-step average)")
plt.tight_layout()
plt.show()

# %% [markdown]
# The two loops behave alike (their MLPs start from different random weights). The
# learned optimizer is faster over the first few dozen steps; Adam with a good learning
# rate ends lower by step 200. `mnist-lstm` was meta-trained on runs of this very MLP and
# is competitive with tuned baselines, not better; see
# [`benchmarks/results/mnist.md`](../benchmarks/results/mnist.md) and notebook 03.

# %% [markdown]
# ## (c) Saving and restoring the optimizer state
#
# The learned optimizer's state is a pytree of arrays (`LSTMState(h, c)` inside optax's
# chain state), so the usual Flax serialization works: `flax.serialization.to_bytes` on
# the `TrainState` (step, params and optimizer state), `from_bytes` into a freshly built
# state of the same structure. We train 100 steps, save, restore into a new state, train
# the remaining 100 steps, and check that the losses are identical to the uninterrupted
# 200-step run of (b).

# %%
name = "learned lstm (mnist-lstm)"
state, first_half = train(make_state(learned), batches[:100])
blob = flax.serialization.to_bytes(state)  # bytes: write them to a file
print(f"checkpoint: {len(blob) / 1024:.0f} KiB after step {int(state.step)}")

template = make_state(learned, seed=123)  # e.g. in a new process: same structure, any values
restored = flax.serialization.from_bytes(template, blob)
print("LSTM hidden state restored:", type(restored.opt_state[1]).__name__,
      all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored))))

_, second_half = train(restored, batches[100:])
resumed = np.concatenate([first_half, second_half])
print("resumed run == uninterrupted run:", np.array_equal(resumed, linen_losses[name]))
assert np.array_equal(resumed, linen_losses[name])

# %% [markdown]
# The restored state continues bit for bit. Resetting the optimizer state instead (e.g.
# `tx.init(params)` after loading only the parameters) would restart the LSTM from a zero
# hidden state, like restarting Adam without its moments.
#
# To meta-train a learned optimizer on *your own* Flax model, see
# `l2l_jax.tasks.FlaxModelFamily` and `meta_train(config, family=...)`.
