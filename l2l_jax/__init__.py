"""l2l-jax: learned optimizers ("Learning to learn by gradient descent by gradient descent") in JAX.

The public API::

    l2l_jax.optimizers     learned optimizers: lstm(), linear_rnn(); init(key) -> φ, as_optax(φ)
    l2l_jax.tasks          optimizees and task families (quadratics, MNIST MLPs, your Flax model)
    l2l_jax.meta           unroll, meta-gradients, meta_train(MetaTrainConfig(...))
    l2l_jax.pretrained     load(run_dir or name) -> a ready optax optimizer
    l2l_jax.evaluation     tuned baselines, held-out evaluation, tables and plots
    l2l_jax.run_directory  the files of a meta-training run
    l2l_jax.data           MNIST download, verification and loading
    l2l_jax.examples       the paper's worked example
    l2l_jax.errors         the exceptions; l2l_jax.checks: the argument checks

Each is imported on first use (``import l2l_jax`` itself does not import JAX).
See docs/architecture.md for what each module owns and what may import what.
"""

from __future__ import annotations

import importlib
from typing import Any

from l2l_jax.version import __version__

#: The subpackages and modules of the public API, imported on first use: ``import
#: l2l_jax`` is quick (no JAX) and ``l2l_jax.data.load_mnist`` works without importing
#: ``l2l_jax.data`` first.
_MODULES = (
    "checks",
    "data",
    "errors",
    "evaluation",
    "examples",
    "meta",
    "optimizers",
    "pretrained",
    "run_directory",
    "tasks",
)
#: Names re-exported at the top level, and the module that defines each.
_NAMES = {"MetaTrainConfig": "meta", "meta_train": "meta", "linear_rnn": "optimizers", "lstm": "optimizers"}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f"l2l_jax.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(f"l2l_jax.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'l2l_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULES, *_NAMES})


__all__ = [
    "MetaTrainConfig",
    "__version__",
    "checks",
    "data",
    "errors",
    "evaluation",
    "examples",
    "linear_rnn",
    "lstm",
    "meta",
    "meta_train",
    "optimizers",
    "pretrained",
    "run_directory",
    "tasks",
]
