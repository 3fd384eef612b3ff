"""Ready-to-use learned optimizers: shipped ones by name, or any meta-training run directory.

A shipped optimizer is a folder under ``l2l_jax/pretrained/shipped/`` holding the
same two files a run directory has: ``optimizer.json`` (architecture, task,
training config, evaluation figures, checksums) and ``optimizer.msgpack`` (φ,
saved with flax.serialization: no pickle). Loading verifies both checksums and
refuses non-finite φ; it never imports code that the files name. It also
refuses an untrained φ (a run whose every meta-step was skipped records
``"trained_steps": 0``) unless ``allow_untrained=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import optax

from l2l_jax import optimizers as optimizers_lib
from l2l_jax import run_directory as rd
from l2l_jax.checks import positive_float
from l2l_jax.errors import ConfigError, L2LError, MetaTrainingError, RunDirectoryError, UnknownNameError
from l2l_jax.optimizers.base import LearnedOptimizer, MetaParams

SHIPPED_DIR = Path(__file__).parent / "shipped"


def available() -> list[str]:
    """Names of the learned optimizers shipped with the package."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / rd.OPTIMIZER_META).is_file())


def locate(name_or_path: str | Path) -> Path:
    """The directory holding a shipped optimizer (by name) or a run directory (by path).

    Raises:
      UnknownNameError: if it is neither a shipped name nor an existing path, or is both.
      RunDirectoryError: if the path is a file.
    """
    path = Path(name_or_path)
    if isinstance(name_or_path, str) and name_or_path in available():
        if path.exists():
            raise UnknownNameError(
                f"{name_or_path!r} is both a shipped learned optimizer and a path here; "
                f"pass './{name_or_path}' (or a Path) for the directory, or run from elsewhere for the shipped one"
            )
        return SHIPPED_DIR / name_or_path
    if path.exists():
        if not path.is_dir():
            raise RunDirectoryError(f"{path} is not a run directory (it is a file)")
        return path
    shipped = ", ".join(available()) or "none"
    raise UnknownNameError(
        f"{str(name_or_path)!r} is neither a shipped learned optimizer (available: {shipped}) "
        "nor an existing run directory"
    )


def info(name_or_path: str | Path) -> dict[str, Any]:
    """The verified metadata (``optimizer.json``) of a shipped optimizer or run directory.

    Raises:
      UnknownNameError: if it is neither a shipped name nor an existing path.
      RunDirectoryError: if ``optimizer.json`` is missing, corrupt or was edited.
    """
    return rd.read_optimizer_meta(locate(name_or_path))


def load_meta_params(
    name_or_path: str | Path, *, allow_untrained: bool = False, allow_unverified: bool = False
) -> tuple[LearnedOptimizer, MetaParams]:
    """The learned optimizer and its trained φ, from a shipped name or a run directory.

    Args:
      name_or_path: a name from ``available``, or a run directory.
      allow_untrained: also load a φ that no meta-update reached (its metadata
        records ``"trained_steps": 0``: every meta-step of its run was skipped, or
        the run was stopped before its first step), e.g. to inspect it. Files
        without that field (from earlier versions) load either way.
      allow_unverified: also load files that carry no checksums (written by
        hand or by a tool other than l2l-jax); their damage cannot be detected.

    Raises:
      UnknownNameError: if it is neither a shipped name nor an existing path.
      RunDirectoryError: if the directory is incomplete, a file does not match its
        checksum (or carries none and ``allow_unverified`` is ``False``), or φ
        holds NaN or infinite values.
      MetaTrainingError: if φ is untrained and ``allow_untrained`` is ``False``.
    """
    path = locate(name_or_path)
    meta = rd.read_optimizer_meta(path, allow_unverified=allow_unverified)
    if meta.get("trained_steps") == 0 and not allow_untrained:
        raise MetaTrainingError(
            f"{path / rd.OPTIMIZER_META} holds an untrained φ (trained_steps: 0): no meta-update reached it, "
            "as every meta-step before it was saved was skipped as non-finite; retrain, or pass "
            "allow_untrained=True to load it anyway"
        )
    try:
        optimizer = optimizers_lib.get(meta["optimizer"], **meta["optimizer_config"])
    except L2LError as e:
        raise RunDirectoryError(f"{path / rd.OPTIMIZER_META} names an optimizer that cannot be built: {e}") from None
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise RunDirectoryError(f"{path / rd.OPTIMIZER_META} is corrupt: {e!r}") from None
    target = optimizer.init(jax.random.PRNGKey(0))
    return optimizer, rd.load_optimizer_params(path, target, meta)


def export(run_dir: str | Path, dest: str | Path, *, allow_untrained: bool = False) -> Path:
    """Copies a run's trained optimizer (its two files) into ``dest``, e.g. to ship it.

    The source is verified first (as ``load_meta_params`` does, ``allow_untrained``
    included) and the copy is validated by loading it back.

    Returns:
      ``dest``.
    """
    src, dest = Path(run_dir), Path(dest)
    _, phi = load_meta_params(src, allow_untrained=allow_untrained)  # Refuse to export anything broken.
    meta = rd.read_optimizer_meta(src)
    rd.save_optimizer(dest, meta, phi)
    load_meta_params(dest, allow_untrained=allow_untrained)
    return dest


def load(
    name_or_path: str | Path,
    *,
    recurrent: Any = None,
    recurrent_scale: float | None = None,
    allow_untrained: bool = False,
    allow_unverified: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """A trained learned optimizer, ready to use as an optax optimizer.

    Args:
      name_or_path: a name from ``available``, or a run directory written by
        ``l2l-jax meta-train`` / ``l2l_jax.meta_train``.
      recurrent: optional, a pytree of ``bool`` shaped like the parameters, ``True``
        at the tensors that feed a recurrence (``l2l_jax.optimizers.recurrent_tensors``
        of the loss): their updates are multiplied by ``recurrent_scale``
        (``l2l_jax.optimizers.scale_recurrent``). All ``False``
        (a feed-forward network) leaves the optimizer as it is.
      recurrent_scale: the factor for ``recurrent``'s tensors (positive); default: the
        one recorded with the optimizer (``info(name)["recurrence_prior"]["scale"]``).
      allow_untrained: also load an untrained φ (see ``load_meta_params``).
      allow_unverified: also load files without checksums (see ``load_meta_params``).

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Raises:
      UnknownNameError: if it is neither a shipped name nor an existing path.
      RunDirectoryError: if the directory is incomplete or damaged, or φ is not finite.
      MetaTrainingError: if φ is untrained (no meta-update reached it) and
        ``allow_untrained`` is ``False``.
      ConfigError: if ``recurrent`` has a leaf that is not a ``bool``, or
        ``recurrent_scale`` is not positive and finite, or is given without ``recurrent``, or is
        needed and the optimizer records none.

    Example:
      >>> import jax.numpy as jnp, optax, l2l_jax
      >>> tx = optax.chain(optax.clip_by_global_norm(1.0), l2l_jax.pretrained.load("quadratic-lstm"))
      >>> params = {"w": jnp.ones(3)}
      >>> updates, state = tx.update(params, tx.init(params), params)
      >>> updates["w"].shape
      (3,)
    """
    if recurrent is None and recurrent_scale is not None:
        raise ConfigError("recurrent_scale was given without recurrent (the mask of the tensors it applies to)")
    optimizer, phi = load_meta_params(name_or_path, allow_untrained=allow_untrained, allow_unverified=allow_unverified)
    tx = optimizer.as_optax(phi)
    if recurrent is None:
        return tx
    if recurrent_scale is None:
        recurrent_scale = recorded_recurrent_scale(name_or_path, allow_unverified=allow_unverified)
    return optimizers_lib.scale_recurrent(tx, recurrent, recurrent_scale)


def recorded_recurrent_scale(name_or_path: str | Path, *, allow_unverified: bool = False) -> float:
    """The factor recorded with a learned optimizer for the updates of the tensors that feed a recurrence.

    Raises:
      ConfigError: if the optimizer records none (pass ``recurrent_scale`` to ``load``).
    """
    meta = rd.read_optimizer_meta(locate(name_or_path), allow_unverified=allow_unverified)
    prior = meta.get("recurrence_prior")
    if not isinstance(prior, dict) or "scale" not in prior:
        raise ConfigError(
            f"{str(name_or_path)!r} records no scale for the tensors that feed a recurrence: pass recurrent_scale"
        )
    return positive_float("recurrence_prior.scale in optimizer.json", prior["scale"])


__all__ = [
    "SHIPPED_DIR",
    "available",
    "export",
    "info",
    "load",
    "load_meta_params",
    "locate",
    "recorded_recurrent_scale",
]
