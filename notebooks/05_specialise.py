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
# # 05 · Specialise a shipped optimizer to your own model
#
# You have a model and a training budget of a few hundred steps. Can l2l-jax give you an
# optimizer that beats tuned Adam *on your model*? This notebook starts from the shipped
# `generalist`, fine-tunes it on a Flax model it never saw, and compares the result with
# its starting point and with Adam and NAG, each with its learning rate tuned for the same
# number of steps, on fresh initialisations.
#
# The model: an MLP with **LayerNorm and GELU** (two hidden layers of 64) on 14x14 MNIST,
# `l2l_jax.examples.layernorm_mlp`. The generalist was meta-trained on plain MLPs
# (sigmoid, ReLU, tanh, no normalisation) and quadratics, so this is a model of the kind users write that
# lies outside its mixture: normalisation layers change the scale of every layer's
# gradient, and GELU is an activation it never saw.
#
# The full budget (300 meta-steps, 48 test initialisations) takes about 5 minutes of
# meta-training and a few more of evaluation on 2 CPU cores. Under `pytest` the notebook
# runs at smoke size on the repository's 300-image MNIST fixture (a few meta-steps, one
# horizon, Adam only), to check that it runs.

# %%
# %matplotlib inline
import inspect
import os
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

import l2l_jax
from l2l_jax.evaluation import compare_with_baselines
from l2l_jax.examples import layernorm_mlp
from l2l_jax.meta.recipes import specialise_config

# A folder holding the MNIST .gz files (in it or in its mnist/ subfolder), or None.
# None: download them (once) into ~/.cache/l2l_jax/mnist. Under pytest this is the
# repository's small test fixture (300 images).
DATA_DIR = os.environ.get("L2L_JAX_DATA_DIR")
DOWNLOAD = DATA_DIR is None
SMOKE = os.environ.get("L2L_JAX_NOTEBOOK_SMOKE") == "1"  # set under pytest

HORIZON = 20 if SMOKE else 200  # the number of steps you train your model for
META_STEPS = 4 if SMOKE else 300
TEST_TASKS, TUNE_TASKS = (4, 2) if SMOKE else (48, 16)
HORIZONS = (HORIZON,) if SMOKE else (HORIZON, 2 * HORIZON)  # compared at the horizon and twice it
BASELINES = ("adam",) if SMOKE else ("nag", "adam")
RUN_DIR = tempfile.mkdtemp() if SMOKE else "runs/05_specialise"

# %% [markdown]
# ## Your model as a task family
#
# A task is "train this model from a fresh initialisation on minibatches". The example
# module wraps the model, a minibatch sampler and the loss in a `FlaxModelFamily`,
# exactly as you would wrap yours (see [Your own model](../docs/guide/own-model.md)):

# %%
print(inspect.getsource(layernorm_mlp.LayerNormMLP))
family = layernorm_mlp.make(DATA_DIR, download=DOWNLOAD)

# %% [markdown]
# ## Specialise
#
# `specialise_config` is the fine-tuning recipe: start from a trained optimizer
# (`init="generalist"`: a shipped name or a run directory, whose metadata sets the
# optimizer and its options), PES with a small meta learning rate, runs between half the
# horizon and the horizon, validation on held-out initialisations. `meta_train` records
# the source's name and SHA-256 in the run directory, and resumes an interrupted run.
# On the command line the same run is
#
# ```bash
# l2l-jax meta-train --init generalist --task l2l_jax.examples.layernorm_mlp:make --horizon 200 --run-dir runs/05_specialise
# ```

# %%
config = specialise_config("generalist", "layernorm_mlp", horizon=HORIZON, num_meta_steps=META_STEPS)
print({k: getattr(config, k) for k in ("estimator", "meta_lr", "batch_size", "truncation", "min_horizon")})
t0 = time.perf_counter()
result = l2l_jax.meta_train(config, RUN_DIR, family=family, progress=not SMOKE)
print(f"meta-training took {time.perf_counter() - t0:.0f} s")

# %% [markdown]
# The validation meta-loss is the sum of log losses of full runs on held-out
# initialisations: lower is better.

# %%
val = [(r["step"], r["val_loss"]) for r in result.history if "val_loss" in r]
if val:
    plt.figure(figsize=(5, 3.5))
    plt.plot(*zip(*val), "o-")
    plt.xlabel("meta-step")
    plt.ylabel(f"validation meta-loss (sum of {HORIZON} log losses)")
    plt.tight_layout()
    plt.show()

# %% [markdown]
# ## Compare on fresh initialisations
#
# The specialised optimizer, its starting point and Adam and NAG run on the same held-out
# initialisations and minibatches. Each baseline's learning rate is tuned for the same
# number of steps on a quarter-decade grid, on other initialisations. The paired table
# gives the specialised optimizer's final loss minus each other one's, task by task: a
# win or a loss only beyond 2 paired standard errors. We also run twice the horizon it
# was specialised for.

# %%
# The same learned optimizer with two φ: the specialised one and the one it started from.
_, source_phi = l2l_jax.pretrained.load_meta_params("generalist")
learned = {"specialised": (result.optimizer, result.meta_params), "generalist": (result.optimizer, source_phi)}
comparisons = {}
for steps in HORIZONS:
    comparisons[steps] = compare_with_baselines(
        learned,
        family,
        num_steps=steps,
        num_tune_tasks=TUNE_TASKS,
        num_test_tasks=TEST_TASKS,
        baselines=BASELINES,
        progress=False,
    )
    display(
        Markdown(
            f"**{steps} steps**\n\n{comparisons[steps].table()}\n\n{comparisons[steps].paired_table('specialised')}"
        )
    )

# %%
fig, axes = plt.subplots(1, len(comparisons), figsize=(5.5 * len(comparisons), 3.8), squeeze=False)
for ax, (steps, comparison) in zip(axes[0], comparisons.items()):
    for name, curves in comparison.curves.items():
        ax.plot(np.mean(curves, axis=0), label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean over test initialisations)")
    ax.set_title(f"{steps} steps")
    ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Use it
#
# The specialised optimizer is an optax transformation, like any shipped one:
# `result.as_optax()`, or `l2l_jax.pretrained.load("runs/05_specialise")` from the run
# directory. `l2l-jax evaluate runs/05_specialise --task l2l_jax.examples.layernorm_mlp:make`
# runs the same comparison with all five tuned baselines and the starting point, and writes
# it into the run directory. [Specialise a shipped optimizer](../docs/guide/specialise.md)
# has the measured figures.

# %%
tx = l2l_jax.pretrained.load(RUN_DIR)
print(type(tx).__name__)
