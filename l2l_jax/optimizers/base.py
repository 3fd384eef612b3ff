"""What every learned optimizer shares: the interface, input checks and dtype rules.

A *learned optimizer* is a recipe with meta-parameters φ. ``init(key)`` draws φ;
``as_optax(φ)`` returns the ordinary optax transformation that φ defines. Because
``as_optax`` only closes over φ, calling it inside a traced function lets
``jax.grad`` reach φ through every inner update (the design of learned_optimization).

Every learned optimizer here is coordinatewise: `coordinatewise` builds its
transformation from the maths of one parameter leaf, and owns the checks, the state's
making, the non-finite contract (stated once, on `LearnedOptimizer`) and sharding.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import jax
import jax.numpy as jnp
import optax

from l2l_jax.errors import ConfigError, GradientsMismatchError, MetaParamsMismatchError, ParamsTypeError
from l2l_jax.optimizers.sharding import on_each_shard, zeros_like_param

MetaParams = Any  # A pytree of arrays.
PyTree = Any


class LearnedOptimizer(abc.ABC):
    """A family of optax optimizers indexed by meta-parameters φ.

    Subclasses define `init` and `_transformation`; `as_optax`
    checks φ against the shapes `init` makes before building the optimizer.

    The non-finite contract, which every learned optimizer here keeps (`coordinatewise`
    enforces it): the transformation's ``update(grads, state, params=None)`` treats each
    coordinate on its own. A coordinate whose gradient is not finite (NaN, ±inf), or
    whose parameter is not finite in an optimizer that reads the parameters, gets
    update 0 and keeps its state as it was, like ``optax.apply_if_finite`` applied per
    coordinate; the other coordinates are updated exactly as if it were not there. The
    coordinate enters the arithmetic as 0 and its results are discarded by selects, so
    no NaN enters the arithmetic and meta-gradients through the update stay finite.
    Behind ``optax.clip_by_global_norm``, where one NaN makes every clipped
    coordinate NaN, such a step updates nothing and changes no state.
    """

    #: Registry name, used in run directories and on the command line.
    name: str = ""

    #: Options that meta-training from a trained φ without them may switch on, with the
    #: value that switches each on; `extend` gives such a φ their meta-parameters.
    extensions: ClassVar[dict[str, Any]] = {}

    #: Options with no meta-parameters of their own (a fixed schedule, a bound): meta-training
    #: from a trained φ (``init``) may set or change them, and φ starts as it was trained.
    free_options: ClassVar[frozenset[str]] = frozenset()

    def switched_on(self, options: dict[str, Any]) -> dict[str, Any]:
        """The options in ``options`` that switch one of this optimizer's `extensions` on.

        Args:
          options: optimizer options (e.g. those a run was given, or another optimizer's config).

        Returns:
          Those among `extensions`, absent from this optimizer's config, with the value
          that switches them on.
        """
        config = self.config()
        return {
            k: v for k, v in options.items() if k in self.extensions and k not in config and v == self.extensions[k]
        }

    def freely_set(self, options: dict[str, Any]) -> dict[str, Any]:
        """The options in ``options`` among this optimizer's `free_options`.

        Args:
          options: optimizer options (e.g. those a run was given, or this optimizer's config).

        Returns:
          Those options, with their values.
        """
        return {k: v for k, v in options.items() if k in self.free_options}

    def extend(self, meta_params: MetaParams) -> MetaParams:
        """φ of this optimizer from ``meta_params`` trained without its `extensions`.

        Args:
          meta_params: φ of this optimizer with every extension switched off.

        Returns:
          A φ for this optimizer whose updates equal those of ``meta_params``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no extensions")

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
          returns ``(updates, new_state)``, keeping the non-finite contract (see
          `LearnedOptimizer`). An empty tree (or one ``optax.masked`` masks out
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
            f"meta-params do not fit {optimizer!r}: expected a pytree of structure {expected_def}, got {got_def}."
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


def check_state_dtype(value: Any) -> str | None:
    """The name of a ``state_dtype`` option (``None`` stays ``None``).

    Raises:
      ConfigError: if ``value`` is not a dtype, or not a floating one.
    """
    if value is None:
        return None
    try:
        dt = jnp.dtype(value)
    except TypeError:
        raise ConfigError(f"state_dtype {value!r} is not a dtype") from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise ConfigError(f"state_dtype must be a floating dtype, got {value!r}")
    return str(dt)


def state_dtype(leaf_dtype: Any, override: Any | None = None) -> jnp.dtype:
    """The dtype of a leaf's hidden state: ``override``, else at least float32.

    Low-precision parameters (bf16) keep float32 state, since the hidden state
    integrates over many steps; float64 parameters keep float64.
    """
    if override is not None:
        return jnp.dtype(override)
    return jnp.promote_types(leaf_dtype, jnp.float32)


StateT = TypeVar("StateT")

#: ``update_leaf(shared, grad, keep, *state_leaves[, param]) -> (update, *new_state_leaves)``.
LeafUpdate = Callable[..., tuple[jax.Array, ...]]


def _keep_rest(shared: PyTree, *rest: Any) -> tuple[PyTree, tuple]:
    return shared, rest


def coordinatewise(
    state_type: type[StateT],
    leading: Sequence[tuple[int, ...]],
    update_leaf: LeafUpdate,
    *,
    shared: PyTree = None,
    dtype: Any | None = None,
    with_params: bool = False,
    name: str = "this optimizer",
    per_shard: bool = False,
    init_rest: Callable[[], tuple] = tuple,
    advance: Callable[..., tuple[PyTree, tuple]] = _keep_rest,
) -> optax.GradientTransformationExtraArgs:
    """A learned optimizer's transformation, from the maths of one parameter leaf.

    The state is a ``state_type(*trees, *rest)``: one tree per entry of ``leading``,
    with the parameters' structure and a leaf of shape ``(*lead, *param.shape)`` per
    parameter, then the fields that belong to no leaf (e.g. a step count).

    ``init(params)`` raises `ParamsTypeError` for a parameter that is not floating
    point, makes every state leaf zero with `zeros_like_param` (sharded like its
    parameter, in ``state_dtype(param.dtype, dtype)``) and the
    other fields with ``init_rest()``.

    ``update(grads, state, params=None)`` checks its arguments (`check_update_args`,
    against the state tree with the fewest leading axes, the first of them), then
    computes ``shared_step, new_rest = advance(shared, *rest)`` once and, for every
    leaf, ``update_leaf(shared_step, grad, keep, *state_leaves[, param])``, where
    ``keep`` marks the coordinates whose gradient (and, ``with_params``, parameter) is
    finite. ``update_leaf`` keeps the non-finite contract of `LearnedOptimizer` with
    it: it replaces the other coordinates of ``grad`` (and ``param``) by 0 with
    ``jnp.where`` before any arithmetic (before or after casting them to the dtype it
    computes in: under ``jax.jit`` the order is part of its numbers), returns update
    0 and the state leaves unchanged there (a fused kernel may apply ``keep`` in
    place), and lets them change no other coordinate's update. The
    per-leaf results are split back into trees with the gradients' structure (an
    empty tree gives empty trees).

    Args:
      state_type: the state's ``NamedTuple`` class; its first ``len(leading)`` fields
        are the trees.
      leading: per state tree, the sizes of the axes in front of the parameter's.
      update_leaf: the maths of one leaf, returning the update in ``grad``'s dtype and
        each state leaf in its own dtype and shape.
      shared: what every leaf's update reads besides its own arrays (e.g. φ).
      dtype: the state's dtype; None: the parameter's, at least float32 (`state_dtype`).
      with_params: ``update_leaf`` also gets the parameter leaf, and ``update``
        without ``params`` raises `ConfigError`.
      name: the optimizer, as that message names it.
      per_shard: run ``update_leaf`` on each device's shard of an explicitly
        sharded leaf (`on_each_shard`), for an ``update_leaf`` that treats every
        coordinate on its own; all state trees need as many leading axes, and
        ``with_params`` is not supported.
      init_rest: the initial values of the fields after the trees.
      advance: ``advance(shared, *rest) -> (shared_step, new_rest)``; by default
        ``shared`` and the fields unchanged.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Raises:
      ValueError: for ``per_shard`` with ``with_params`` or with trees of unequal
        numbers of leading axes, or no state tree.
    """
    leading = tuple(tuple(lead) for lead in leading)
    if not leading:
        raise ValueError("coordinatewise needs at least one state tree")
    if per_shard and (with_params or len({len(lead) for lead in leading}) > 1):
        raise ValueError("per_shard needs state trees of equal leading axes and no with_params")
    checked = min(range(len(leading)), key=lambda i: len(leading[i]))
    num_trees = len(leading)

    def init_fn(params: PyTree) -> StateT:
        check_float_tree(params, "parameters")

        def zeros(lead: tuple[int, ...]) -> PyTree:
            return jax.tree.map(lambda p: zeros_like_param(p, lead, state_dtype(jnp.result_type(p), dtype)), params)

        return state_type(*(zeros(lead) for lead in leading), *init_rest())

    def masked_leaf(shared_step: PyTree, grad: jax.Array, *leaves: jax.Array) -> tuple[jax.Array, ...]:
        keep = jnp.isfinite(grad)
        if with_params:
            *leaves, param = leaves
            param = jnp.asarray(param)
            keep = keep & jnp.isfinite(param)
            leaves.append(param)
        return update_leaf(shared_step, grad, keep, *leaves)

    def update_fn(
        updates: PyTree, state: StateT, params: PyTree | None = None, **extra_args: Any
    ) -> tuple[PyTree, StateT]:
        del extra_args
        trees = tuple(getattr(state, field) for field in state_type._fields[:num_trees])
        rest = tuple(getattr(state, field) for field in state_type._fields[num_trees:])
        check_update_args(updates, trees[checked], params, leading=len(leading[checked]))
        if with_params and params is None:
            raise ConfigError(f"{name} needs params: call update(grads, state, params)")
        shared_step, new_rest = advance(shared, *rest)

        def leaf(grad: Any, *leaves: jax.Array) -> tuple[jax.Array, ...]:
            grad = jnp.asarray(grad)
            if per_shard:  # Each device updates its own shard of an explicitly sharded leaf.
                return on_each_shard(masked_leaf, shared_step, grad, *leaves, leading=len(leading[0]))
            return masked_leaf(shared_step, grad, *leaves)

        results = jax.tree.map(leaf, updates, *trees, *((params,) if with_params else ()))
        # Split the per-leaf tuples along the gradients' structure (an empty tree too).
        new_updates, *new_trees = (jax.tree.map(lambda _, r, k=k: r[k], updates, results) for k in range(1 + num_trees))
        return new_updates, state_type(*new_trees, *new_rest)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
