"""Name -> factory registries: one way to register, list, describe and build a thing by name.

Learned optimizers (`l2l_jax.optimizers`), task families (`l2l_jax.tasks`) and
meta-gradient estimators (`l2l_jax.meta.estimators`) each keep a `Registry`, so the
command line, run directories and ``MetaTrainConfig`` find every one by name the
same way, and a new one is a factory plus one ``register`` line.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from l2l_jax.errors import ConfigError, L2LError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Factories of one kind of thing (``kind``, e.g. ``"learned optimizer"``) by name.

    Example:
      >>> registry = Registry("shape", {"square": lambda side=1.0: side**2})
      >>> registry.available(), registry.options("square"), registry.build("square", side=3.0)
      (['square'], ['side'], 9.0)
    """

    def __init__(self, kind: str, entries: Mapping[str, Callable[..., T]] = ()) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = dict(entries)
        self._shipped = frozenset(self._entries)

    def register(self, name: str, factory: Callable[..., T]) -> None:
        """Makes ``factory`` buildable as ``name``.

        A name registered before is taken over (a notebook cell run again registers
        its new class); a shipped name (one the registry was made with) is not.

        Raises:
          ConfigError: if ``name`` is a shipped name of another factory.
        """
        if name in self._shipped and self._entries[name] is not factory:
            raise ConfigError(f"{name!r} is a shipped {self.kind}; register yours under another name")
        self._entries[name] = factory

    def available(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def factory(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name``.

        Raises:
          UnknownNameError: for an unknown name, listing the registered ones.
        """
        if name not in self._entries:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.available())}")
        return self._entries[name]

    def options(self, name: str) -> list[str]:
        """The keyword options of ``name``'s factory, sorted (empty if it takes ``**kwargs`` only)."""
        return sorted(keyword_options(self.factory(name)) or ())

    def build(self, name: str, **options: Any) -> T:
        """``factory(**options)`` for the factory registered as ``name``.

        Raises:
          UnknownNameError: for an unknown name.
          ConfigError: for options the factory does not take (the message lists
            those it takes), or values it refuses.
        """
        factory = self.factory(name)
        valid = keyword_options(factory)
        unknown = sorted(set(options) - valid) if valid is not None else []
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join(unknown)} for {self.kind} {name!r}; "
                f"its options: {', '.join(sorted(valid)) or '(none)'}"
            )
        try:
            return factory(**options)
        except L2LError:
            raise
        except (TypeError, ValueError, OverflowError) as e:
            raise ConfigError(f"bad options for {self.kind} {name!r}: {e}") from None


def keyword_options(factory: Callable[..., Any]) -> set[str] | None:
    """The names ``factory`` takes as keywords; ``None`` if it takes any (``**kwargs``) or has no signature."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
