"""Optimizer state sharded like the parameters it belongs to.

Every learned optimizer keeps, per parameter leaf, state leaves of shape
``(*leading, *param.shape)``: ``(num_layers, hidden_size, *param.shape)`` for the
LSTM, ``(len(momentum_decays), *param.shape)`` for a feature MLP's momenta, the
parameter's own shape elsewhere. The leading axes are never sharded; the parameter's
axes are sharded as the parameter is. This module owns that rule:

* `zeros_like_param` makes a state leaf from its parameter, so ``tx.init`` under
  ``jax.jit`` gives sharded state for sharded parameters, with automatic (GSPMD) and
  with explicit sharding;
* `state_shardings` derives the state's shardings (or partition specs) from the
  parameters', for ``jax.jit(tx.init, out_shardings=...)`` and checkpoint
  restoring, like ``optax.tree_utils.tree_map_params`` does for optax's optimizers
  and for any optax chain around a learned optimizer;
* `on_each_shard` runs a coordinatewise step on each device's own shard of a leaf
  whose sharding is explicit, so no device gathers the leaf or its state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from l2l_jax.errors import ConfigError

PyTree = Any


@functools.partial(jax.jit, static_argnums=(1, 2))  # One program, not one per operation, when eager.
def zeros_like_param(param: Any, leading: tuple[int, ...], dtype: Any) -> jax.Array:
    """Zeros of shape ``(*leading, *param.shape)``, sharded like ``param`` behind ``leading``.

    Computed from the parameter's values, not only its shape: under ``jax.jit`` with
    automatic sharding XLA gives the result the parameter's sharding (zeros made
    from a shape alone come out replicated), and with explicit sharding the
    parameter's sharding is in its type. The values are +0 whatever the parameter
    holds (NaN and ±inf included).

    Args:
      param: the parameter leaf (an array, or anything ``jnp.asarray`` takes).
      leading: the sizes of the unsharded axes in front of the parameter's (a tuple).
      dtype: the state's dtype (hashable: a NumPy dtype or its name).

    Returns:
      An array of zeros.
    """
    p = jnp.asarray(param)
    finite = jnp.where(jnp.isfinite(p), p, jnp.zeros((), p.dtype))
    zero = (jnp.abs(finite) * 0).astype(dtype)
    return jnp.broadcast_to(zero, (*leading, *p.shape))


def explicit_sharding(x: jax.Array) -> NamedSharding | None:
    """``x``'s sharding where its type carries one over some mesh axis, else None.

    That is explicit sharding (``jax.sharding.AxisType.Explicit``, the default of
    ``jax.make_mesh``) with at least one axis of ``x`` sharded. Under automatic
    sharding the type carries none and XLA partitions the program itself.
    """
    sharding = getattr(jax.typeof(x), "sharding", None)
    spec = getattr(sharding, "spec", None)
    if spec is None or all(axes is None for axes in spec):
        return None
    return sharding


def _lifted(spec: PartitionSpec, ndim: int, leading: int) -> PartitionSpec:
    axes = tuple(spec) + (None,) * (ndim - len(spec))
    return PartitionSpec(*(None,) * leading, *axes)


def on_each_shard(
    step: Callable[..., tuple[jax.Array, ...]], shared: PyTree, grad: jax.Array, *states: jax.Array, leading: int
) -> tuple[jax.Array, ...]:
    """``step(shared, grad, *states)`` for a coordinatewise ``step``, on each device's shard.

    Where ``grad``'s sharding is explicit (`explicit_sharding`), ``step`` runs
    under ``jax.shard_map`` on each device's block of ``grad`` and the same block of
    each state (``(*lead, *grad.shape)`` with ``leading`` unsharded axes in front),
    with all of ``shared`` on every device, so no device gathers the leaf; the
    results have the gradient's and the state's shardings. Elsewhere this is
    ``step(shared, grad, *states)``, which XLA partitions.

    Args:
      step: ``step(shared, grad, *states) -> (update, *new_states)``, each output
        shaped as the matching input; it must treat every coordinate on its own.
      shared: what every coordinate's step reads (e.g. the meta-parameters), a pytree.
      grad: a gradient leaf.
      *states: its state leaves, ``(*lead, *grad.shape)``.
      leading: the number of axes in front of the gradient's in each state leaf.

    Returns:
      ``(update, *new_states)``.
    """
    sharding = explicit_sharding(grad)
    if sharding is None:
        return step(shared, grad, *states)
    grad_spec = _lifted(sharding.spec, grad.ndim, 0)
    state_spec = _lifted(sharding.spec, grad.ndim, leading)
    # A state leaf laid out otherwise (e.g. made before the parameters were sharded) is moved first.
    mesh = sharding.mesh
    states = tuple(jax.sharding.reshard(s, NamedSharding(mesh, state_spec)) for s in states)
    outs = (grad_spec, *(state_spec,) * len(states))
    ins = (jax.tree.map(lambda _: PartitionSpec(), shared), *outs)
    # check_vma=False: the Pallas kernel and the blocked step declare outputs by shape alone.
    shard = jax.shard_map(step, mesh=mesh, in_specs=ins, out_specs=outs, check_vma=False)
    return shard(shared, grad, *states)


def state_shardings(
    initable: Any,
    params: PyTree,
    shardings: PyTree,
    *,
    non_params: Callable[[Any], Any] | None = None,
) -> PyTree:
    """The shardings of an optimizer state whose parameters have ``shardings``.

    Each state leaf that belongs to a parameter (optax's
    ``tree_map_params`` finds them) gets that parameter's sharding behind the leaf's
    extra leading axes, unsharded: ``P("d", None)`` for a parameter becomes
    ``P(None, None, "d", None)`` for an LSTM's ``(layers, hidden, *shape)`` state and
    stays ``P("d", None)`` for Adam's moments. Works for any optax transformation,
    learned or not, alone or in a chain.

    Args:
      initable: the optimizer (with an ``init``), or its ``init`` function.
      params: the parameters, or their ``jax.ShapeDtypeStruct``s.
      shardings: the parameters' shardings: a tree of ``jax.sharding.NamedSharding``
        or of ``jax.sharding.PartitionSpec``, with the structure of ``params``.
      non_params: the sharding of a state leaf that belongs to no parameter (e.g. a
        step count), given the leaf's abstract value. Default: replicated
        (``NamedSharding(mesh, P())`` on the parameters' mesh, or ``P()``).

    Returns:
      A tree with the state's structure: ``NamedSharding``s, or ``PartitionSpec``s
      when ``shardings`` holds specs. Pass it as ``out_shardings`` of
      ``jax.jit(tx.init)``.

    Raises:
      ConfigError: if a state leaf at a parameter's place does not end with the
        parameter's shape (e.g. factored second moments), or ``shardings`` does not
        fit ``params``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from l2l_jax.optimizers import lstm, state_shardings
      >>> opt = lstm()
      >>> tx = opt.as_optax(opt.init(jax.random.key(0)))
      >>> params = {"w": jnp.zeros((8, 3))}
      >>> state_shardings(tx, params, {"w": P("d", None)})
      LSTMState(h={'w': P(None, None, 'd', None)}, c={'w': P(None, None, 'd', None)})
    """
    init = initable.init if hasattr(initable, "init") else initable
    abstract_params = jax.tree.map(lambda p: jax.ShapeDtypeStruct(jnp.shape(p), jnp.result_type(p)), params)
    state = jax.eval_shape(init, abstract_params)
    is_spec = lambda s: isinstance(s, (PartitionSpec, NamedSharding))
    try:
        jax.tree.map(lambda p, s: None, params, shardings, is_leaf=is_spec)
    except ValueError as e:
        raise ConfigError(f"the shardings do not fit the parameters: {e}") from None
    specs = jax.tree.leaves(shardings, is_leaf=is_spec)
    mesh = next((s.mesh for s in specs if isinstance(s, NamedSharding)), None)

    def replicated(_: Any) -> Any:
        return PartitionSpec() if mesh is None else NamedSharding(mesh, PartitionSpec())

    def lift(leaf: jax.ShapeDtypeStruct, param: Any, sharding: Any) -> Any:
        shape, param_shape = tuple(leaf.shape), tuple(jnp.shape(param))
        leading = len(shape) - len(param_shape)
        if leading < 0 or shape[leading:] != param_shape:
            raise ConfigError(
                f"a state leaf of shape {shape} stands for a parameter of shape {param_shape} but does not end "
                "with its shape; give its sharding yourself with optax.tree_utils.tree_map_params"
            )
        if isinstance(sharding, NamedSharding):
            return NamedSharding(sharding.mesh, _lifted(sharding.spec, len(param_shape), leading))
        return _lifted(sharding, len(param_shape), leading)

    return optax.tree_utils.tree_map_params(
        init,
        lift,
        state,
        params,
        shardings,
        transform_non_params=non_params or replicated,
        is_leaf=is_spec,
    )
