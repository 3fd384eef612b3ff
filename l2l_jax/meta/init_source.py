"""Starting meta-training from a trained optimizer: a shipped name or a run directory.

The source is data: its ``optimizer.json`` names a registered optimizer and its
options, ``optimizer.msgpack`` holds φ; both are verified against their checksums
and no code the files name is imported (see ``l2l_jax.pretrained``).
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from l2l_jax import pretrained
from l2l_jax import run_directory as rd
from l2l_jax.errors import ConfigError
from l2l_jax.optimizers.base import LearnedOptimizer, MetaParams


class InitSource(NamedTuple):
    """A verified trained optimizer to start meta-training from.

    Attributes:
      name: the source as given: a shipped name or a run directory.
      sha256: the SHA-256 of its φ file (``optimizer.msgpack``).
      optimizer: the learned optimizer, built from the source's metadata (with
        extensions switched on, after `extended`).
      meta_params: its trained φ (given the extensions' meta-parameters, after `extended`).
    """

    name: str
    sha256: str
    optimizer: LearnedOptimizer
    meta_params: MetaParams


def load_source(name: str, expected_sha256: str | None = None) -> InitSource:
    """Loads and verifies the trained optimizer ``name`` (a shipped name or a run directory).

    Args:
      name: a name from ``l2l_jax.pretrained.available()`` or a run directory.
      expected_sha256: the SHA-256 the source's φ must have (e.g. the one a run
        recorded when it started); ``None``: any.

    Returns:
      The ``InitSource``.

    Raises:
      UnknownNameError: if ``name`` is neither a shipped name nor an existing path.
      RunDirectoryError: if the source is incomplete or damaged, or its φ is not finite.
      MetaTrainingError: if its φ is untrained (no meta-update reached it; see
        ``l2l_jax.pretrained.load_meta_params``).
      ConfigError: if its φ's SHA-256 is not ``expected_sha256``.
    """
    optimizer, meta_params = pretrained.load_meta_params(name)
    digest = rd.optimizer_params_sha256(pretrained.locate(name))
    if expected_sha256 is not None and digest != expected_sha256:
        raise ConfigError(
            f"the trained optimizer {name!r} has changed since this run started from it (its φ's SHA-256 "
            f"was {expected_sha256[:12]}..., now {digest[:12]}...); resume needs the same source: restore it, "
            "or start a new run (another run directory, or --overwrite)"
        )
    return InitSource(name, digest, optimizer, meta_params)


def resolve_optimizer(source: InitSource, optimizer: str | None, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The optimizer's name and options for a run started from ``source``: the source's own.

    Args:
      source: the trained optimizer to start from.
      optimizer: the optimizer the caller named, or ``None`` for none.
      options: the optimizer options the caller gave (``{}`` for none).

    Returns:
      ``(name, options)`` of the source's optimizer, with any of its optimizer's
      ``extensions`` the caller switched on (see `extended`) and its ``free_options``
      the caller set.

    Raises:
      ConfigError: if the caller's optimizer or an option differs from the source's (other
        than an extension switched on or a free option).
    """
    name, recorded = source.optimizer.name, source.optimizer.config()
    switched_on = source.optimizer.switched_on(options)
    free = source.optimizer.freely_set(options)
    options = {k: v for k, v in options.items() if k not in switched_on and k not in free}
    if optimizer is not None and optimizer != name:
        raise ConfigError(
            f"--init {source.name} starts from a {name} optimizer, but the optimizer given is {optimizer!r}; "
            "drop --optimizer (optimizer=...): the source sets it"
        )
    clashing = sorted(k for k, value in options.items() if k not in recorded or _json(recorded[k]) != _json(value))
    if clashing:
        described = ", ".join(f"{k}={options[k]!r} (source: {recorded.get(k, 'no such option')!r})" for k in clashing)
        raise ConfigError(
            f"--init {source.name} sets the optimizer's options from its metadata, and these given options differ: "
            f"{described}; drop them (--optimizer-option, optimizer_options=...)"
        )
    return name, {**recorded, **switched_on, **free}


def extended(source: InitSource, optimizer: LearnedOptimizer) -> InitSource:
    """``source`` as a start for ``optimizer``: its own optimizer with extensions switched on.

    Args:
      source: the trained optimizer to start from.
      optimizer: built from `resolve_optimizer`'s name and options.

    Returns:
      ``source`` itself when ``optimizer`` has the source's options; else ``source``
      with ``optimizer``, and, where an extension was switched on, φ given the
      extensions' meta-parameters (``optimizer.extend``), which update as the source
      does. The name and SHA-256 stay the source's.
    """
    if optimizer.config() == source.optimizer.config():
        return source
    if not source.optimizer.switched_on(optimizer.config()):  # free options only: φ as it is
        return source._replace(optimizer=optimizer)
    return source._replace(optimizer=optimizer, meta_params=optimizer.extend(source.meta_params))


def _json(value: Any) -> Any:
    """``value`` as JSON stores it (tuples as lists), to compare options."""
    return json.loads(json.dumps(value))
