"""l2l-jax: learned optimizers ("Learning to learn by gradient descent by gradient descent") in JAX.

The public API::

    l2l_jax.optimizers   learned optimizers: lstm(), linear_rnn(); init(key) -> φ, as_optax(φ)
    l2l_jax.tasks        optimizees and task families (quadratics, ...)
    l2l_jax.meta         unroll, meta-gradients, meta_train(MetaTrainConfig(...))
    l2l_jax.evaluation   tuned baselines, held-out evaluation, tables and plots
    l2l_jax.pretrained   load(run_dir or name) -> a ready optax optimizer
"""

from l2l_jax import errors, evaluation, meta, optimizers, pretrained, tasks, worked_example
from l2l_jax.meta import MetaTrainConfig, meta_train
from l2l_jax.optimizers import linear_rnn, lstm

__version__ = "0.1.0"

__all__ = [
    "MetaTrainConfig",
    "errors",
    "evaluation",
    "linear_rnn",
    "lstm",
    "meta",
    "meta_train",
    "optimizers",
    "pretrained",
    "tasks",
    "worked_example",
]
