"""What every learned optimizer shares: the interface, input checks and dtype rules.

A *learned optimizer* is a recipe with meta-parameters φ. ``init(key)`` draws φ;
``as_optax(φ)`` returns the ordinary optax transformation that φ defines. Because
``as_optax`` only closes over φ, calling it inside a traced function lets
``jax.grad`` reach φ through every inner update (the design of learned_optimization).

Every learned optimizer here is coordinatewise and shares one contract for
non-finite gradients: a coordinate whose gradient is NaN or ±inf gets update 0 and
keeps its optimizer state unchanged (``optax.apply_if_finite``, per coordinate),
and every other coordinate is updated exactly as if it were not there.
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp
import optax

from l2l_jax.errors import GradientsMismatchError, MetaParamsMismatchError, ParamsTypeError

MetaParams = Any  # A pytree of arrays.
PyTree = Any


class LearnedOptimizer(abc.ABC):
    """A family of optax optimizers indexed by meta-parameters φ.

    Subclasses define `init` and `_transformation`; `as_optax`
    checks φ against the shapes `init` makes before building the optimizer.

    The transformation's ``update(grads, state, params=None)`` treats each
    coordinate on its own. A coordinate whose gradient is not finite (NaN, ±inf)
    gets update 0 and keeps its state as it was, like ``optax.apply_if_finite``
    applied per coordinate; the other coordinates are updated exactly as if it were
    not there. Gradients derived from that coordinate's skipped step stay finite:
    no NaN enters the arithmetic, so meta-gradients through the update do too.
    Behind ``optax.clip_by_global_norm``, where one NaN makes every clipped
    coordinate NaN, such a step updates nothing and changes no state.
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
          meta_params: φ, a pytree with the structure and shapes of `init`'s.

        Returns:
          An ``optax.GradientTransformationExtraArgs``. Its ``init(params)`` makes a
          zero state per coordinate; its ``update(grads, state, params=None)``
          returns ``(updates, new_state)``. A coordinate whose gradient is NaN or
          ±inf gets update 0 and keeps its state; the others are updated as if it
          were not there. An empty tree (or one ``optax.masked`` masks out
          entirely) gives empty updates.

        Raises:
          MetaParamsMismatchError: if φ does not fit this optimizer.

        The transformation raises `ParamsTypeError` for
        parameters or gradients that are not floating point, and
        `GradientsMismatchError` naming the first leaf where the
        gradients' structure or shapes differ from the state's (or from
        ``params``, when given); under ``jax.jit`` too, when tracing.
        """
        check_meta_params(self, meta_params)
        return self._transformation(meta_params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def check_meta_params(optimizer: LearnedOptimizer, meta_params: MetaParams) -> None:
    """Raises `MetaParamsMismatchError` unless φ matches ``optimizer.init``'s shapes."""
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
    """Raises `ParamsTypeError` naming the first non-floating leaf of ``tree``."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ParamsTypeError(
                f"learned optimizers need floating-point {what}, but leaf "
                f"{jax.tree_util.keystr(path) or '<root>'} has dtype {dtype}. "
                "Cast it to a float dtype, or mask it out with optax.masked."
            )


def _where(path: tuple) -> str:
    return jax.tree_util.keystr(path) or "<root>"


def _leaves(n: int) -> str:
    return f"{n} leaf" if n == 1 else f"{n} leaves"


def check_same_tree(tree: PyTree, reference: PyTree, *, what: str, reference_what: str, leading: int = 0) -> None:
    """Raises `GradientsMismatchError` unless ``tree`` fits ``reference`` leaf for leaf.

    Fits means the same pytree structure, and each leaf's shape equal to the
    reference leaf's shape without its first ``leading`` dimensions (the state of an
    LSTM leaf is ``(layers, hidden, *param.shape)``). The message names the first
    offending leaf and both structures or shapes. Shapes are static, so this works
    when tracing under ``jax.jit``.

    Args:
      tree: the pytree to check (e.g. the gradients).
      reference: what it must fit (e.g. the optimizer state's tree for the parameters).
      what: what ``tree`` is, for the message (``"gradient"``).
      reference_what: what ``reference`` is, for the message (``"optimizer state"``).
      leading: dimensions of each reference leaf in front of the matching shape.

    Raises:
      GradientsMismatchError: naming the first leaf of ``tree`` missing from ``reference`` (or
        the first one of ``reference`` missing from ``tree``) with both structures,
        or the first leaf whose shape differs, with both shapes.
    """
    got_def, want_def = jax.tree_util.tree_structure(tree), jax.tree_util.tree_structure(reference)
    got = jax.tree_util.tree_leaves_with_path(tree)
    want = jax.tree_util.tree_leaves_with_path(reference)
    if got_def != want_def:
        got_paths, want_paths = [_where(p) for p, _ in got], [_where(p) for p, _ in want]
        extra = next((p for p in got_paths if p not in set(want_paths)), None)
        missing = next((p for p in want_paths if p not in set(got_paths)), None)
        if extra is not None:
            problem = f"{what} leaf {extra} is not in the {reference_what}"
        elif missing is not None:
            problem = f"{what} tree lacks leaf {missing} of the {reference_what}"
        else:
            problem = f"{what} tree's containers differ from the {reference_what}'s"
        raise GradientsMismatchError(
            f"{problem} ({what}: {_leaves(len(got))}, {got_def}; {reference_what}: {_leaves(len(want))}, {want_def})"
        )
    for (path, leaf), (_, ref) in zip(got, want):
        shape, ref_shape = tuple(jnp.shape(leaf)), tuple(jnp.shape(ref))[leading:]
        if shape != ref_shape:
            raise GradientsMismatchError(
                f"{what} leaf {_where(path)} has shape {shape}, but the {reference_what} has shape {ref_shape} there"
            )


def check_update_args(updates: PyTree, state_tree: PyTree, params: PyTree | None, *, leading: int = 0) -> None:
    """The checks of every learned optimizer's ``update``, at trace time.

    Args:
      updates: the gradients passed to ``update``.
      state_tree: one tree of the optimizer state, with the parameters' structure.
      params: the ``params`` passed to ``update``, or None.
      leading: dimensions of each state leaf in front of its parameter's shape.

    Raises:
      GradientsMismatchError: if the gradients do not fit ``state_tree`` or ``params``, when
        given, do not fit the gradients (see `check_same_tree`).
      ParamsTypeError: if a gradient is not floating point.
    """
    check_same_tree(updates, state_tree, what="gradient", reference_what="optimizer state", leading=leading)
    if params is not None:
        check_same_tree(params, updates, what="params", reference_what="gradient tree")
    check_float_tree(updates, "gradients")


def state_dtype(leaf_dtype: Any, override: Any | None = None) -> jnp.dtype:
    """The dtype of a leaf's hidden state: ``override``, else at least float32.

    Low-precision parameters (bf16) keep float32 state, since the hidden state
    integrates over many steps; float64 parameters keep float64.
    """
    if override is not None:
        return jnp.dtype(override)
    return jnp.promote_types(leaf_dtype, jnp.float32)
