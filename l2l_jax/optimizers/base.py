"""What every learned optimizer shares: the interface, input checks and dtype rules.

A *learned optimizer* is a recipe with meta-parameters φ. ``init(key)`` draws φ;
``as_optax(φ)`` returns the ordinary optax transformation that φ defines. Because
``as_optax`` only closes over φ, calling it inside a traced function lets
``jax.grad`` reach φ through every inner update (the design of learned_optimization).
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp
import optax

from l2l_jax.errors import MetaParamsMismatchError, ParamsTypeError

MetaParams = Any  # A pytree of arrays.
PyTree = Any


class LearnedOptimizer(abc.ABC):
    """A family of optax optimizers indexed by meta-parameters φ.

    Subclasses define :meth:`init` and :meth:`_transformation`; :meth:`as_optax`
    checks φ against the shapes :meth:`init` makes before building the optimizer.
    """

    #: Registry name, used in run directories and on the command line.
    name: str = ""

    @abc.abstractmethod
    def init(self, key: jax.Array) -> MetaParams:
        """Draws initial meta-parameters φ.

        Args:
          key: a PRNG key.

        Returns:
          A pytree of arrays.
        """

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this optimizer (JSON-serialisable)."""

    @abc.abstractmethod
    def _transformation(self, meta_params: MetaParams) -> optax.GradientTransformationExtraArgs:
        """Builds the optax transformation for meta-parameters already checked."""

    def as_optax(self, meta_params: MetaParams) -> optax.GradientTransformationExtraArgs:
        """Returns the optax optimizer that ``meta_params`` define.

        Call it inside the function you differentiate so ``jax.grad`` reaches φ.

        Args:
          meta_params: φ, a pytree with the structure and shapes of :meth:`init`'s.

        Returns:
          An ``optax.GradientTransformationExtraArgs``.

        Raises:
          MetaParamsMismatchError: if φ does not fit this optimizer.
        """
        check_meta_params(self, meta_params)
        return self._transformation(meta_params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def check_meta_params(optimizer: LearnedOptimizer, meta_params: MetaParams) -> None:
    """Raises :class:`MetaParamsMismatchError` unless φ matches ``optimizer.init``'s shapes."""
    expected = jax.eval_shape(optimizer.init, jax.random.key(0))
    expected_def = jax.tree_util.tree_structure(expected)
    try:
        got_def = jax.tree_util.tree_structure(meta_params)
    except Exception as e:  # pragma: no cover - tree_structure rarely fails
        raise MetaParamsMismatchError(f"meta-params for {optimizer!r} are not a pytree: {e}") from None
    if got_def != expected_def:
        raise MetaParamsMismatchError(
            f"meta-params do not fit {optimizer!r}: expected a pytree of structure "
            f"{expected_def}, got {got_def}."
        )
    paths_expected = jax.tree_util.tree_leaves_with_path(expected)
    for (path, want), got in zip(paths_expected, jax.tree_util.tree_leaves(meta_params)):
        shape = jnp.shape(got)
        if shape != want.shape:
            raise MetaParamsMismatchError(
                f"meta-params do not fit {optimizer!r}: leaf {jax.tree_util.keystr(path)} "
                f"has shape {shape}, expected {want.shape}."
            )
        if not jnp.issubdtype(jnp.result_type(got), jnp.floating):
            raise MetaParamsMismatchError(
                f"meta-params leaf {jax.tree_util.keystr(path)} has dtype "
                f"{jnp.result_type(got)}, expected a floating dtype."
            )


def check_float_tree(tree: PyTree, what: str) -> None:
    """Raises :class:`ParamsTypeError` naming the first non-floating leaf of ``tree``."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ParamsTypeError(
                f"learned optimizers need floating-point {what}, but leaf "
                f"{jax.tree_util.keystr(path) or '<root>'} has dtype {dtype}. "
                "Cast it to a float dtype, or mask it out with optax.masked."
            )


def state_dtype(leaf_dtype: Any, override: Any | None = None) -> jnp.dtype:
    """The dtype of a leaf's hidden state: ``override``, else at least float32.

    Low-precision parameters (bf16) keep float32 state, since the hidden state
    integrates over many steps; float64 parameters keep float64.
    """
    if override is not None:
        return jnp.dtype(override)
    return jnp.promote_types(leaf_dtype, jnp.float32)
