"""Optimizees: single tasks and task families that sample them."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from l2l_jax.errors import ConfigError, L2LError, UnknownNameError
from l2l_jax.tasks.base import Task, TaskFamily
from l2l_jax.tasks.flax_model import FlaxModelFamily, batch_sampler, iterator_sampler, stack_batches
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


def _import_factory(path: str) -> Callable[..., TaskFamily]:
    """``"package.module:function"`` -> the function (for your own tasks on the command line)."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UnknownNameError(f"task {path!r}: cannot import module {module_name!r} ({e})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UnknownNameError(f"task {path!r}: module {module_name!r} has no callable {attr!r}")
    return factory


def get(name: str, **kwargs: Any) -> TaskFamily:
    """Builds a task family by registered name (``get("quadratic", dim=10)``) or by
    import path ``"my_package.my_module:make_family"`` (a function returning a
    :class:`TaskFamily`, called with ``kwargs``)."""
    if ":" in name:
        factory = _import_factory(name)
    elif name in _REGISTRY:
        factory = _REGISTRY[name]
    else:
        raise UnknownNameError(
            f"unknown task {name!r}; choose one of {', '.join(available())}, or give module:function"
        )
    try:
        family = factory(**kwargs)
    except L2LError:
        raise
    except (TypeError, ValueError, OverflowError) as e:
        raise ConfigError(f"bad options for task {name!r}: {e}") from None
    if not isinstance(family, TaskFamily):
        raise ConfigError(f"task {name!r} did not build a TaskFamily (got {type(family).__name__})")
    return family


__all__ = [
    "MLP",
    "FlaxModelFamily",
    "MNISTFamily",
    "QuadraticFamily",
    "ScalarQuadratic",
    "Task",
    "TaskFamily",
    "available",
    "batch_sampler",
    "get",
    "iterator_sampler",
    "register",
    "stack_batches",
]
