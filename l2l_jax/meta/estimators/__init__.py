"""Meta-gradient estimators: truncated BPTT, truncated ES and PES behind one interface.

Each is a factory returning a ``GradientEstimator`` (``init``, ``estimate``,
``inner_step``): pure, jittable functions of φ, the estimator's state and a key.
The host loop that uses them is ``l2l_jax.meta.meta_train``.
"""

from __future__ import annotations

from typing import Any

from l2l_jax.meta.estimators.base import Estimate, EstimatorState, GradientEstimator
from l2l_jax.meta.estimators.es import ESState, truncated_es
from l2l_jax.meta.estimators.pes import PESState, truncated_pes
from l2l_jax.meta.estimators.tbptt import tbptt
from l2l_jax.optimizers.base import LearnedOptimizer
from l2l_jax.tasks.base import TaskFamily
from l2l_jax.validation import one_of

#: The estimators by name, as ``MetaTrainConfig.estimator`` and ``--estimator`` take them.
ESTIMATORS = {"tbptt": tbptt, "es": truncated_es, "pes": truncated_pes}


def get(name: str, optimizer: LearnedOptimizer, family: TaskFamily, **options: Any) -> GradientEstimator:
    """Builds the estimator ``name`` (``"tbptt"``, ``"es"`` or ``"pes"``) with its keyword options.

    Raises:
      ConfigError: if ``name`` is not one of them.
    """
    one_of("estimator", name, tuple(ESTIMATORS))
    return ESTIMATORS[name](optimizer, family, **options)


__all__ = [
    "ESTIMATORS",
    "ESState",
    "Estimate",
    "EstimatorState",
    "GradientEstimator",
    "PESState",
    "get",
    "tbptt",
    "truncated_es",
    "truncated_pes",
]
