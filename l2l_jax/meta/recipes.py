"""The fine-tuning recipe: settings that specialise a trained optimizer to one task family.

``specialise_config`` builds a ``MetaTrainConfig`` that starts from a shipped
optimizer or a run directory (``init``) and fine-tunes it with PES on runs about as
long as the user's training. The measurements behind the values are on the guide's
page "Specialise a shipped optimizer".
"""

from __future__ import annotations

from typing import Any

from l2l_jax.checks import positive_int
from l2l_jax.errors import ConfigError
from l2l_jax.meta.training import MetaTrainConfig

#: The recipe's settings that do not depend on the horizon.
SPECIALISE_DEFAULTS: dict[str, Any] = {
    "estimator": "pes",
    "estimator_options": {"num_pairs": 2},
    "batch_size": 8,
    "meta_lr": 1e-2,
    "meta_lr_warmup": 10,
    "clip_norm": 10.0,
    "weighting": "log",
    "num_meta_steps": 300,
    "validate_every": 50,
    "num_val_tasks": 16,
    "checkpoint_every": 50,
}
#: The longest truncation the recipe picks: runs split into whole truncations of at most this many steps.
MAX_TRUNCATION = 50


def specialise_defaults(horizon: int, truncation: int | None = None, estimator: str | None = None) -> dict[str, Any]:
    """The recipe's settings for runs of ``horizon`` inner steps (the user's training length).

    Adds to ``SPECIALISE_DEFAULTS``: ``horizon``; ``truncation`` (given, or the
    largest divisor of the horizon up to ``MAX_TRUNCATION``); ``min_horizon``, half
    the horizon rounded up to whole truncations (runs last log-uniformly between the
    two); and ``validation_horizon``, the horizon.

    Args:
      horizon: the number of steps the user trains for.
      truncation: inner steps per meta-step; ``None``: the recipe's choice.
      estimator: the estimator, if not the recipe's (another estimator than PES
        gets no ``estimator_options``: its own defaults).

    Raises:
      ConfigError: if ``horizon`` or ``truncation`` is not a positive integer, or
        (without ``truncation``) a horizon longer than ``MAX_TRUNCATION`` has no
        divisor from 5 to ``MAX_TRUNCATION``.
    """
    horizon = positive_int("horizon", horizon)
    if truncation is not None:
        truncation = positive_int("truncation", truncation)
    else:
        truncation = _truncation(horizon)
    min_horizon = min(horizon, max(truncation, -(-(horizon // 2) // truncation) * truncation))
    settings = dict(SPECIALISE_DEFAULTS)
    if estimator is not None and estimator != settings["estimator"]:
        settings.update(estimator=estimator, estimator_options={})
    return {
        **settings,
        "horizon": horizon,
        "truncation": truncation,
        "min_horizon": min_horizon,
        "validation_horizon": horizon,
    }


def _truncation(horizon: int) -> int:
    """The largest divisor of ``horizon`` up to ``MAX_TRUNCATION`` (refused below 5 for long horizons)."""
    truncation = max(k for k in range(1, min(horizon, MAX_TRUNCATION) + 1) if horizon % k == 0)
    if horizon > MAX_TRUNCATION and truncation < 5:
        raise ConfigError(
            f"the recipe splits runs into whole truncations of at most {MAX_TRUNCATION} steps, and the horizon "
            f"{horizon} has no divisor from 5 to {MAX_TRUNCATION}; pass a truncation (--truncation) that divides it, "
            "or a horizon such as a multiple of 10"
        )
    return truncation


def specialise_config(init: str, task: str, horizon: int, **overrides: Any) -> MetaTrainConfig:
    """A config that fine-tunes the trained optimizer ``init`` on ``task`` for runs of ``horizon`` steps.

    Args:
      init: a shipped optimizer's name (``l2l_jax.pretrained.available()``) or a run directory.
      task: the task family: a registered name, or a label when ``meta_train`` is
        given ``family=``.
      horizon: the number of steps you train your model for.
      **overrides: any other ``MetaTrainConfig`` field (``task_options``, ``seed``,
        ``num_meta_steps``, ...); a ``truncation`` also sets the recipe's
        ``min_horizon`` in its whole truncations.

    Returns:
      The ``MetaTrainConfig``; ``meta_train`` takes the optimizer and its options from ``init``.

    Raises:
      ConfigError: for invalid settings (see ``MetaTrainConfig``).

    Example:
      >>> config = specialise_config("generalist", "quadratic", horizon=200, num_meta_steps=10)
      >>> config.estimator, config.truncation, config.min_horizon
      ('pes', 50, 100)
    """
    settings = specialise_defaults(horizon, overrides.get("truncation"), overrides.get("estimator"))
    return MetaTrainConfig(**{**settings, "init": init, "task": task, **overrides})
