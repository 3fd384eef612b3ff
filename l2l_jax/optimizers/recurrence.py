"""Which of a model's parameters feed a recurrence: a prior per tensor, read from the loss's computation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.extend import core as jcore

from l2l_jax.checks import positive_float
from l2l_jax.errors import ConfigError

#: A set of parameter indices (or of markers) that a value depends on.
_Deps = frozenset


def recurrent_tensors(loss_fn: Callable[..., Any], params: Any, *args: Any, **kwargs: Any) -> Any:
    """True at every parameter whose value reaches the state of a weight-tied recurrence in ``loss_fn``.

    A weight-tied recurrence is a ``lax.scan``, ``fori_loop`` or ``while_loop`` whose
    carried state depends on a parameter passed unchanged into every step: a recurrent
    cell's kernels (``flax.linen.RNN`` over any cell, or a hand-written scan). Flagged
    are every parameter whose value reaches that state: the cell's own tensors and those
    upstream of it (input projections, embeddings). Parameters that only read the
    recurrence's outputs (a read-out), loops whose parameters are sliced per step
    (``flax.linen.scan`` over layers with ``variable_axes``) and feed-forward networks
    get no flag. The answer comes from tracing ``loss_fn`` once
    (``jax.make_jaxpr``), nothing is computed; it depends on the computation only, not on
    parameter names.

    Use it as a mask, e.g. to give the generalist's steps on a recurrent network's
    recurrent part a smaller scale (see the generalist's guide).

    Args:
      loss_fn: ``loss_fn(params, *args, **kwargs)``, traceable by JAX.
      params: a pytree of arrays (or ``jax.ShapeDtypeStruct``).
      *args: the rest of ``loss_fn``'s arguments, e.g. a batch: arrays, or their
        shapes as ``jax.ShapeDtypeStruct``.
      **kwargs: its keyword arguments, passed as they are (not traced).

    Returns:
      A pytree like ``params`` with a ``bool`` at every leaf.

    Raises:
      ConfigError: if ``loss_fn`` is not callable.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> class LM(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         return nn.Dense(2, name="readout")(nn.RNN(nn.GRUCell(4))(x))
      >>> x = jnp.ones((1, 5, 3))
      >>> params = LM().init(jax.random.key(0), x)
      >>> mask = recurrent_tensors(lambda p, x: LM().apply(p, x).sum(), params, x)
      >>> paths = jax.tree_util.tree_leaves_with_path(mask)
      >>> flags = {jax.tree_util.keystr(k, simple=True, separator="/"): v for k, v in paths}
      >>> flags["params/readout/kernel"], flags["params/GRUCell_0/hn/kernel"]
      (False, True)
    """
    if not callable(loss_fn):
        raise ConfigError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    leaves, treedef = jax.tree.flatten(params)
    closed = jax.make_jaxpr(lambda p, a: loss_fn(p, *a, **kwargs))(params, args)
    others = len(closed.jaxpr.invars) - len(leaves)
    flagged: set[Any] = set()
    _flow(closed.jaxpr, [_Deps({i}) for i in range(len(leaves))] + [_Deps()] * others, flagged)
    return jax.tree.unflatten(treedef, [i in flagged for i in range(len(leaves))])


def scale_recurrent(
    tx: optax.GradientTransformation, recurrent: Any, scale: float
) -> optax.GradientTransformationExtraArgs:
    """``tx`` with its updates of ``recurrent``'s tensors multiplied by ``scale``, the others as they are.

    Args:
      tx: an optax transformation, e.g. a learned optimizer.
      recurrent: a pytree of ``bool`` like the parameters (a prefix of them), as
        `recurrent_tensors` returns; all ``False`` leaves ``tx``'s updates unchanged.
      scale: a positive finite factor.

    Returns:
      ``optax.chain(tx, optax.masked(optax.scale(scale), recurrent))``.

    Raises:
      ConfigError: if a leaf of ``recurrent`` is not a ``bool`` (the message names
        it), or ``scale`` is not a positive finite number (``checks.positive_float``).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = scale_recurrent(optax.sgd(1.0), {"cell": True, "readout": False}, 0.5)
      >>> g = {"cell": jnp.ones(2), "readout": jnp.ones(2)}
      >>> updates, _ = tx.update(g, tx.init(g))
      >>> updates["cell"].tolist(), updates["readout"].tolist()
      ([-0.5, -0.5], [-1.0, -1.0])
    """
    for path, leaf in jax.tree_util.tree_leaves_with_path(recurrent):
        if not isinstance(leaf, (bool, np.bool_)) and not (
            getattr(leaf, "dtype", None) == bool and getattr(leaf, "shape", None) == ()
        ):
            raise ConfigError(
                f"recurrent must hold a bool at every leaf (as recurrent_tensors returns); "
                f"at {jax.tree_util.keystr(path)} it holds {leaf!r}"
            )
    return optax.chain(
        tx, optax.masked(optax.scale(positive_float("recurrent_scale", scale)), jax.tree.map(bool, recurrent))
    )


def _read(deps: dict[Any, _Deps], var: Any) -> _Deps:
    return _Deps() if isinstance(var, jcore.Literal) else deps.get(var, _Deps())


def _sub_jaxprs(eqn: Any) -> list[Any]:
    found = []
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jcore.ClosedJaxpr):
                found.append(item.jaxpr)
            elif isinstance(item, jcore.Jaxpr):
                found.append(item)
    return found


def _flow(jaxpr: Any, in_deps: Sequence[_Deps], flagged: set[Any]) -> list[_Deps]:
    """What each output of ``jaxpr`` depends on; adds the inputs reaching a tied recurrence to ``flagged``."""
    deps = dict(zip(jaxpr.invars, in_deps))
    for eqn in jaxpr.eqns:
        ins = [_read(deps, v) for v in eqn.invars]
        name, p = eqn.primitive.name, eqn.params
        if name == "scan":
            consts, carry = p["num_consts"], p["num_carry"]
            outs = _loop(p["jaxpr"].jaxpr, ins[:consts], ins[consts : consts + carry], ins[consts + carry :], flagged)
        elif name == "while":
            consts = ins[p["cond_nconsts"] : p["cond_nconsts"] + p["body_nconsts"]]
            outs = _loop(p["body_jaxpr"].jaxpr, consts, ins[p["cond_nconsts"] + p["body_nconsts"] :], [], flagged)
        else:
            subs = _sub_jaxprs(eqn)
            if len(subs) == 1 and len(subs[0].invars) == len(ins):  # jit, remat, custom_jvp/vjp: a call.
                outs = _flow(subs[0], ins, flagged)
            else:  # Anything else (cond's branches, ...): every output depends on every input.
                union = _Deps().union(*ins)
                for sub in subs:
                    _flow(sub, [union] * len(sub.invars), flagged)
                outs = [union] * len(eqn.outvars)
        deps.update(zip(eqn.outvars, outs))
    return [_read(deps, v) for v in jaxpr.outvars]


def _loop(body: Any, consts: list[_Deps], carry: list[_Deps], xs: list[_Deps], flagged: set[Any]) -> list[_Deps]:
    """A loop's outputs (its final carry, then its stacked outputs), flagging what reaches a tied carry."""
    while True:  # The carry's dependencies, to their fixed point; they only grow, so flags found on the way hold.
        outs = _flow(body, [*consts, *carry, *xs], flagged)
        grown = [c | o for c, o in zip(carry, outs[: len(carry)])]
        if grown == carry:
            break
        carry = grown
    markers = [_Deps({("input", i)}) for i in range(len(body.invars))]
    reaches_carry = _Deps().union(*_flow(body, markers, set())[: len(carry)])
    if any(("input", i) in reaches_carry and consts[i] for i in range(len(consts))):
        flagged.update(_Deps().union(*carry))
    return [*carry, *outs[len(carry) :]]
