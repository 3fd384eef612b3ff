"""Optimizees: the task families (quadratics, MNIST MLPs, any Flax model) and the registry that builds them by name."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from l2l_jax.errors import ConfigError, L2LError, UnknownNameError
from l2l_jax.tasks.base import TaskFamily
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


def _check_options(name: str, factory: Callable[..., TaskFamily], kwargs: dict[str, Any]) -> None:
    """Raises ``ConfigError`` naming the valid options if ``kwargs`` does not fit ``factory``."""
    try:
        parameters = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):  # No signature to check against (some builtins).
        return
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    keyword = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    valid = [p.name for p in keyword]
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        s = "s" if len(unknown) > 1 else ""
        raise ConfigError(
            f"task {name!r} has no option{s} {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(valid) if valid else '(none)'}"
        )
    missing = [p.name for p in keyword if p.default is p.empty and p.name not in kwargs]
    if missing:
        s = "s" if len(missing) > 1 else ""
        raise ConfigError(f"task {name!r} needs the option{s} {', '.join(map(repr, missing))}")


def get(name: str, **kwargs: Any) -> TaskFamily:
    """Builds a task family by registered name or by import path.

    Args:
      name: a registered name (see ``available``), e.g. ``get("quadratic",
        dim=10)``, or ``"my_package.my_module:make_family"``: this imports that
        module and calls that function, which must return a ``TaskFamily``.
        Only pass import paths you trust: they run code.
      **kwargs: the family's options (keyword arguments of its factory).

    Returns:
      The task family.

    Raises:
      UnknownNameError: if ``name`` is not registered and not an importable ``module:function``.
      ConfigError: if an option is not one of the factory's (the message lists the
        valid ones), a required one is missing, or a value is invalid.
    """
    if ":" in name:
        factory = _import_factory(name)
    elif name in _REGISTRY:
        factory = _REGISTRY[name]
    else:
        raise UnknownNameError(
            f"unknown task {name!r}; choose one of {', '.join(available())}, or give module:function"
        )
    _check_options(name, factory, kwargs)
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
    "TaskFamily",
    "available",
    "batch_sampler",
    "get",
    "iterator_sampler",
    "register",
    "stack_batches",
]
