"""Optimizees: task families (quadratics, MNIST MLPs, a CNN and a row-by-row GRU on MNIST, a character-level LM,
logistic regression, teacher-student regression, any Flax model), scale augmentation, their mixtures, and the registry by name."""

from __future__ import annotations

import importlib
import inspect
import math
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import jax

from l2l_jax.checks import MAX_COUNT, json_options, positive_float
from l2l_jax.checks import name as valid_name
from l2l_jax.errors import ConfigError, L2LError, UnknownNameError
from l2l_jax.registry import Registry, keyword_options
from l2l_jax.tasks.base import TaskFamily
from l2l_jax.tasks.char_lm import CharLMFamily
from l2l_jax.tasks.cnn import MNISTCNNFamily
from l2l_jax.tasks.flax_model import FlaxModelFamily, batch_sampler, iterator_sampler, stack_batches
from l2l_jax.tasks.logistic import LogisticRegressionFamily
from l2l_jax.tasks.mixture import TaskMixture
from l2l_jax.tasks.mnist import MLP, MNISTFamily, MNISTImageFamily
from l2l_jax.tasks.mnist_rnn import MNISTRowGRUFamily
from l2l_jax.tasks.quadratic import QuadraticFamily, ScalarQuadratic
from l2l_jax.tasks.regression import TeacherStudentFamily
from l2l_jax.tasks.scale_augmented import ScaleAugmentedFamily

#: The keys of one member in ``get("mixture", members=[...])``.
_MEMBER_KEYS = ("task", "options", "weight")


def _build_mixture(members: list[dict[str, Any]]) -> TaskMixture:
    """The registry's ``"mixture"`` entry: builds each member with ``get``.

    Args:
      members: a non-empty list of ``{"task": name, "options": {...}, "weight": w}``;
        ``options`` defaults to ``{}`` and ``weight`` to 1.0.

    Raises:
      ConfigError: if ``members`` is not a non-empty list of such dicts, or a member
        is itself a mixture; the message names the member's index.
      UnknownNameError: if a member's task is unknown (the message names its index).
    """
    if not isinstance(members, (list, tuple)) or not members:
        raise ConfigError(
            f"task 'mixture' needs members: a non-empty list of {{'task': ..., 'options': ..., 'weight': ...}}, "
            f"got {members!r}"
        )
    checked = []
    for i, member in enumerate(members):  # Every member is checked before any family is built.
        if not isinstance(member, dict):
            raise ConfigError(f"mixture member {i} must be a dict with keys {', '.join(_MEMBER_KEYS)}, got {member!r}")
        unknown = sorted(map(str, set(member) - set(_MEMBER_KEYS)))
        if unknown:
            raise ConfigError(
                f"mixture member {i} has unknown key(s) {', '.join(map(repr, unknown))}; "
                f"valid keys: {', '.join(_MEMBER_KEYS)}"
            )
        if "task" not in member:
            raise ConfigError(f"mixture member {i} needs a 'task' (a task name)")
        task = valid_name(f"mixture member {i} task", member["task"])
        if task == "mixture":
            raise ConfigError(f"mixture member {i}: a mixture cannot contain a mixture")
        options = json_options(f"mixture member {i} options", member.get("options", {}))
        weight = positive_float(f"mixture member {i} weight", member.get("weight", 1.0))
        checked.append((task, options, weight))
    families = []
    for i, (task, options, weight) in enumerate(checked):
        try:
            family = get(task, **options)
        except L2LError as e:
            raise type(e)(f"mixture member {i}: {e}") from None
        families.append((family, weight))
    return TaskMixture(families)


def _build_scale_augmented(
    task: str, options: dict[str, Any] | None = None, min_scale: float = 0.1, max_scale: float = 10.0
) -> ScaleAugmentedFamily:
    """The registry's ``"scale_augmented"`` entry: ``get(task, **options)`` wrapped in ``ScaleAugmentedFamily``.

    Raises:
      ConfigError: if ``task`` is a mixture or itself scale-augmented, or an option is invalid.
      UnknownNameError: if ``task`` is unknown.
    """
    task = valid_name("scale_augmented task", task)
    if task in ("mixture", "scale_augmented"):
        raise ConfigError(f"scale_augmented wraps one task family, not {task!r}")
    options = json_options("scale_augmented options", options if options is not None else {})
    family = get(task, **options)
    return ScaleAugmentedFamily(family, min_scale, max_scale)  # type: ignore[arg-type]


_REGISTRY: Registry[TaskFamily | TaskMixture] = Registry(
    "task",
    {
        "char_lm": CharLMFamily,
        "logistic_regression": LogisticRegressionFamily,
        "mixture": _build_mixture,
        "mnist": MNISTFamily,
        "mnist_cnn": MNISTCNNFamily,
        "mnist_rnn": MNISTRowGRUFamily,
        "quadratic": QuadraticFamily,
        "scalar_quadratic": ScalarQuadratic,
        "scale_augmented": _build_scale_augmented,
        "teacher_student": TeacherStudentFamily,
    },
)


def register(name: str, factory: Callable[..., TaskFamily]) -> None:
    """Makes a task family buildable by name (command line, run directories).

    Args:
      name: the registry name; the family's ``name`` attribute should be the same.
      factory: a class or function taking the family's options as keywords and
        returning a ``TaskFamily``.

    Raises:
      ConfigError: if ``name`` is a shipped family's; a name you registered
        before is taken over.
    """
    _REGISTRY.register(name, factory)


def available() -> list[str]:
    """The registered task family names, sorted."""
    return _REGISTRY.available()


def options(name: str) -> list[str]:
    """The options a registered task family takes (its factory's keyword arguments), sorted.

    For example, ``"data_dir" in options("mnist_cnn")`` tells whether a family reads MNIST.

    Raises:
      UnknownNameError: if ``name`` is not registered.
    """
    return _REGISTRY.options(name)


def _import_module(module_name: str) -> Any:
    """Imports ``module_name``, also from the current folder (last on the path), as ``python -m`` finds it."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        cwd = os.getcwd()
        if e.name != module_name.split(".")[0] or "" in sys.path or cwd in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(module_name)


def _import_factory(path: str) -> Callable[..., TaskFamily]:
    """``"package.module:function"`` -> the function (for your own tasks on the command line)."""
    module_name, _, attr = path.partition(":")
    try:
        module = _import_module(module_name)
    except ImportError as e:
        raise UnknownNameError(f"task {path!r}: cannot import module {module_name!r} ({e})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UnknownNameError(f"task {path!r}: module {module_name!r} has no callable {attr!r}")
    return factory


def _check_options(name: str, factory: Callable[..., TaskFamily | TaskMixture], kwargs: dict[str, Any]) -> None:
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
            f"valid options: {', '.join(map(repr, valid)) if valid else '(none)'}"
        )
    missing = [p.name for p in keyword if p.default is p.empty and p.name not in kwargs]
    if missing:
        s = "s" if len(missing) > 1 else ""
        raise ConfigError(f"task {name!r} needs the option{s} {', '.join(map(repr, missing))}")


def _quote_options(message: str, factory: Callable[..., Any], kwargs: dict[str, Any]) -> str:
    """``message`` with the bare option names of ``factory`` (and keys of ``kwargs``) that hold an underscore quoted.

    A task's own options (``'batch_size'``) then read as such, not as the meta-training
    fields of the same name that the command line writes as flags (as it does every
    bare name with an underscore). Names without one (``dim``, ``features``) are
    also plain words, and stay as they are.
    """
    names = {n for n in set(kwargs) | set(keyword_options(factory) or ()) if "_" in n}
    if not names:
        return message
    prefix = re.match(r"(task '[^']*': )*", message).group()  # A wrapped task's own, already quoted.
    pattern = r"(?<![\w'])(" + "|".join(map(re.escape, sorted(names, key=len, reverse=True))) + r")(?![\w'])"
    return prefix + re.sub(pattern, r"'\1'", message[len(prefix) :])


def get(name: str, **kwargs: Any) -> TaskFamily | TaskMixture:
    """Builds a task family (or, for ``"mixture"``, a task mixture) by registered name or by import path.

    Args:
      name: a registered name (see ``available``), e.g. ``get("quadratic",
        dim=10)``, or ``"my_package.my_module:make_family"``: this imports that
        module and calls that function, which must return a ``TaskFamily``.
        Only pass import paths you trust: they run code.
      **kwargs: the family's options (keyword arguments of its factory). For
        ``"mixture"``: ``members=[{"task": name, "options": {...}, "weight": w}, ...]``,
        each member built by ``get(task, **options)`` (``options`` defaults to
        ``{}``, ``weight`` to 1.0); ``get("mixture", **mixture.config())``
        rebuilds ``mixture``.

    Returns:
      The task family; a ``TaskMixture`` for ``"mixture"`` (and only then).

    Raises:
      UnknownNameError: if ``name`` is not registered and not an importable ``module:function``.
      ConfigError: if an option is not one of the factory's (the message lists the
        valid ones), a required one is missing, or a value is invalid (the message
        then begins ``task 'NAME': `` and quotes the option's name where it holds an
        underscore: ``task 'char_lm': 'batch_size' must be a positive integer, got 0``).
      L2LError: for ``"mixture"``, any of these (or a member family's own error,
        e.g. ``DataError``) with the bad member's index in the message.
    """
    if ":" in name:
        factory = _import_factory(name)
    elif name in _REGISTRY:
        factory = _REGISTRY.factory(name)
    else:
        raise UnknownNameError(
            f"unknown task {name!r}; choose one of {', '.join(available())}, or give module:function"
        )
    _check_options(name, factory, kwargs)
    try:
        family = factory(**kwargs)
    except ConfigError as e:
        if factory is _build_mixture:  # Its messages already name the member and its options.
            raise
        raise ConfigError(f"task {name!r}: {_quote_options(str(e), factory, kwargs)}") from None
    except L2LError:
        raise
    except (TypeError, ValueError, OverflowError) as e:
        raise ConfigError(f"bad options for task {name!r}: {e}") from None
    if not isinstance(family, TaskFamily) and not (factory is _build_mixture and isinstance(family, TaskMixture)):
        raise ConfigError(f"task {name!r} did not build a TaskFamily (got {type(family).__name__})")
    if isinstance(family, TaskFamily):
        _check_size(name, family)
    return family


#: The most array elements one task may have (its task parameters and θ0 together): 2**31 - 1.
MAX_TASK_ELEMENTS = MAX_COUNT


def _check_size(name: str, family: TaskFamily) -> None:
    """Raises ``ConfigError`` if one task of ``family`` has more than `MAX_TASK_ELEMENTS` elements.

    Counted from shapes (``jax.eval_shape``), so nothing is allocated. A family
    whose ``sample`` or ``init`` cannot be traced abstractly is not checked here
    (meta-training traces it, and checks its sizes, before allocating).
    """
    try:
        key = jax.random.PRNGKey(0)
        task_params = jax.eval_shape(family.sample, key)
        params = jax.eval_shape(family.init, task_params, key)
    except L2LError:
        raise
    except Exception:  # noqa: BLE001  A family's own tracing error: reported where it is used.
        return
    n = sum(math.prod(x.shape) for x in jax.tree.leaves((task_params, params)))
    if n > MAX_TASK_ELEMENTS:
        raise ConfigError(
            f"task {name!r} would have {n:,} array elements per task (its parameters and data); at most "
            f"2**31 - 1 = {MAX_TASK_ELEMENTS:,} are supported: lower its size options"
        )


__all__ = [
    "MLP",
    "CharLMFamily",
    "FlaxModelFamily",
    "LogisticRegressionFamily",
    "MNISTCNNFamily",
    "MNISTFamily",
    "MNISTImageFamily",
    "MNISTRowGRUFamily",
    "QuadraticFamily",
    "ScalarQuadratic",
    "ScaleAugmentedFamily",
    "TaskFamily",
    "TaskMixture",
    "TeacherStudentFamily",
    "available",
    "batch_sampler",
    "get",
    "iterator_sampler",
    "options",
    "register",
    "stack_batches",
]
