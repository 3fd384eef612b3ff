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
    l2l_jax.errors         the exceptions; l2l_jax.validation: the argument checks

See docs/architecture.md for what each module owns and what may import what.
"""

from l2l_jax import errors, evaluation, examples, meta, optimizers, pretrained, run_directory, tasks, validation
from l2l_jax.meta import MetaTrainConfig, meta_train
from l2l_jax.optimizers import linear_rnn, lstm
from l2l_jax.version import __version__


__all__ = [
    "__version__",
    "MetaTrainConfig",
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
    "validation",
]
