"""Meta-gradient estimators: truncated BPTT, truncated ES and PES behind one interface.

Each is a factory ``(optimizer, family, *, batch_size, truncation, weighting,
tasks_per_chunk, **options) -> GradientEstimator`` (``init``, ``estimate``,
``inner_step``: pure, jittable functions of φ, the estimator's state and a key),
kept in a registry by name. The trainer passes the first six arguments; the rest
are the estimator's own options (``MetaTrainConfig.estimator_options``). The host
loop that uses them is ``l2l_jax.meta.meta_train``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from l2l_jax.errors import ConfigError
from l2l_jax.meta.estimators.base import Estimate, EstimatorState, GradientEstimator
from l2l_jax.meta.estimators.es import ESState, truncated_es
from l2l_jax.meta.estimators.pes import PESState, truncated_pes
from l2l_jax.meta.estimators.tbptt import tbptt
from l2l_jax.optimizers.base import LearnedOptimizer
from l2l_jax.registry import Registry, keyword_options
from l2l_jax.tasks.base import TaskFamily

#: The arguments the trainer gives every estimator; the others are the estimator's own options.
TRAINER_ARGUMENTS = ("optimizer", "family", "batch_size", "truncation", "weighting", "tasks_per_chunk")

_REGISTRY: Registry[GradientEstimator] = Registry(
    "meta-gradient estimator", {"tbptt": tbptt, "es": truncated_es, "pes": truncated_pes}
)


def register(name: str, factory: Callable[..., GradientEstimator]) -> None:
    """Makes ``factory`` usable as ``MetaTrainConfig(estimator=name)`` and ``--estimator name``.

    ``factory(optimizer, family, *, batch_size, truncation, weighting,
    tasks_per_chunk, **options)`` returns a ``GradientEstimator``; its other keyword
    arguments, with defaults, are its options (``estimator_options``).

    Raises:
      ConfigError: if ``name`` is a shipped estimator's (``tbptt``, ``es``, ``pes``),
        or ``factory`` lacks one of `TRAINER_ARGUMENTS`.
    """
    valid = keyword_options(factory)
    missing = [a for a in TRAINER_ARGUMENTS if valid is not None and a not in valid]
    if missing:
        raise ConfigError(f"an estimator factory must take {', '.join(TRAINER_ARGUMENTS)}; {name!r} lacks {missing}")
    _REGISTRY.register(name, factory)


def available() -> list[str]:
    """The registered estimators' names, sorted."""
    return _REGISTRY.available()


def options(name: str) -> dict[str, Any]:
    """The estimator's own options (not `TRAINER_ARGUMENTS`) and their defaults.

    Raises:
      UnknownNameError: if ``name`` is not registered.
    """
    parameters = inspect.signature(_REGISTRY.factory(name)).parameters.values()
    return {
        p.name: p.default
        for p in parameters
        if p.name not in TRAINER_ARGUMENTS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def check_options(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` without the options equal to their defaults (the canonical form a run records).

    Raises:
      UnknownNameError: if ``name`` is not registered.
      ConfigError: for an option ``name`` does not take (listing those it takes).
    """
    valid = options(name)
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for meta-gradient estimator {name!r} (estimator_options); "
            f"its options: {', '.join(sorted(valid)) or '(none)'}"
        )
    return {k: x for k, x in given.items() if not _same(x, valid[k])}


def _same(value: Any, default: Any) -> bool:
    return default is not inspect.Parameter.empty and type(value) is type(default) and value == default


def get(name: str, optimizer: LearnedOptimizer, family: TaskFamily, **arguments: Any) -> GradientEstimator:
    """Builds the estimator ``name`` over ``family``: `TRAINER_ARGUMENTS` and its own options.

    Raises:
      UnknownNameError: if ``name`` is not registered.
      ConfigError: for an unknown option or a value the factory refuses.
    """
    check_options(name, {k: x for k, x in arguments.items() if k not in TRAINER_ARGUMENTS})
    return _REGISTRY.build(name, optimizer=optimizer, family=family, **arguments)


__all__ = [
    "TRAINER_ARGUMENTS",
    "ESState",
    "Estimate",
    "EstimatorState",
    "GradientEstimator",
    "PESState",
    "available",
    "check_options",
    "get",
    "options",
    "register",
    "tbptt",
    "truncated_es",
    "truncated_pes",
]
