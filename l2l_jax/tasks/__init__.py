"""Optimizees: single tasks and task families that sample them."""

from __future__ import annotations

from typing import Any, Callable

from l2l_jax.errors import ConfigError, UnknownNameError
from l2l_jax.tasks.base import Task, TaskFamily
from l2l_jax.tasks.mnist import MLP, MNISTFamily
from l2l_jax.tasks.quadratic import QuadraticFamily, ScalarQuadratic

_REGISTRY: dict[str, Callable[..., TaskFamily]] = {
    "mnist": MNISTFamily,
    "quadratic": QuadraticFamily,
    "scalar_quadratic": ScalarQuadratic,
}


def register(name: str, factory: Callable[..., TaskFamily]) -> None:
    """Makes a task family buildable by name (command line, run directories)."""
    _REGISTRY[name] = factory


def available() -> list[str]:
    """The registered task family names."""
    return sorted(_REGISTRY)


def get(name: str, **kwargs: Any) -> TaskFamily:
    """Builds a registered task family by name, e.g. ``get("quadratic", dim=10)``."""
    if name not in _REGISTRY:
        raise UnknownNameError(f"unknown task {name!r}; choose one of {', '.join(available())}")
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as e:
        raise ConfigError(f"bad options for task {name!r}: {e}") from None


__all__ = ["MLP", "MNISTFamily", "QuadraticFamily", "ScalarQuadratic", "Task", "TaskFamily", "available", "get", "register"]
