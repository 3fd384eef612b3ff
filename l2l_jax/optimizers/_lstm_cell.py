"""The coordinatewise LSTM cell: one step on a block of coordinates, and its backward pass.

Owns the cell's maths shared by every implementation: the weights
(`CellWeights`), the plain-JAX step (`lstm_step_reference`), the same
step with a recomputing hand-written backward (`lstm_step_fused`, whose
backward `fused_backward` the Pallas kernel reuses), the ``keep`` mask that
skips coordinates (`masked`) and running a step over blocks of coordinates
(`in_blocks`). Which implementation an optimizer uses is chosen in
`l2l_jax.optimizers.lstm`.

Layout: coordinates last. ``x`` is ``(F, *shape)`` (the preprocessed gradient
features of the coordinates of a leaf of that shape, often flat: ``(F, n)``), ``h``
and ``c`` are ``(L, H, *shape)``; a step returns the raw output ``shape`` (before the
optimizer's output scale) and the new ``h`` and ``c``. The maths never reshapes the
coordinates, so a leaf sharded along any of its axes stays sharded through it.
See ``docs/design/lstm-implementations.md`` for why the fused step and the blocks exist.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class CellWeights(NamedTuple):
    """The LSTM's meta-parameters as arrays.

    Attributes:
      w: per layer, ``(F_l + H, 4H)``: rows are the layer's inputs, then ``h``;
        columns are the gates i, f, g, o, ``H`` each.
      b: per layer, the bias ``(4H,)``.
      w_out: the output projection ``(H,)`` of the top layer's ``h``.
      b_out: the output bias, a scalar.
    """

    w: tuple[jax.Array, ...]
    b: tuple[jax.Array, ...]
    w_out: jax.Array
    b_out: jax.Array


#: ``step(weights, x, h, c) -> (out, new_h, new_c)``.
StepFn = Callable[[CellWeights, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]
#: A step with a ``keep`` mask as its fifth argument (see `masked`).
MaskedStepFn = Callable[
    [CellWeights, jax.Array, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]
]


def lstm_step_reference(
    weights: CellWeights, x: jax.Array, h: jax.Array, c: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One LSTM step in plain JAX, differentiated by autodiff (the specification).

    Each layer multiplies ``[input; h]`` by its weights and splits the result into
    the gates i, f, g, o; ``c' = σ(f) c + σ(i) tanh(g)``, ``h' = σ(o) tanh(c')``; the
    output is ``w_out · h'`` of the top layer plus ``b_out``. Supports forward-mode
    differentiation (``jax.jvp``), unlike the fused step.

    Args:
      weights: the cell's weights.
      x: the input features ``(F, *shape)``.
      h: the hidden state ``(L, H, *shape)``.
      c: the cell state ``(L, H, *shape)``.

    Returns:
      ``(out, new_h, new_c)``: ``shape``, ``(L, H, *shape)``, ``(L, H, *shape)``.
    """
    hidden = h.shape[1]
    new_h, new_c = [], []
    inp = x
    for layer, (w, b) in enumerate(zip(weights.w, weights.b)):
        z = _over_rows(w, jnp.concatenate([inp, h[layer]], axis=0)) + _column(b, inp.ndim)
        i, f, g, o = (z[k * hidden : (k + 1) * hidden] for k in range(4))
        c_next = jax.nn.sigmoid(f) * c[layer] + jax.nn.sigmoid(i) * jnp.tanh(g)
        inp = jax.nn.sigmoid(o) * jnp.tanh(c_next)
        new_h.append(inp)
        new_c.append(c_next)
    return _over_rows(weights.w_out, inp) + weights.b_out, jnp.stack(new_h), jnp.stack(new_c)


def _over_rows(w: jax.Array, rows: jax.Array) -> jax.Array:
    """``w.T @ rows`` over the first axis of ``rows``: ``(K,)`` or ``(K, M)`` by ``(K, *shape)``."""
    return jax.lax.dot_general(w, rows, (((0,), (0,)), ((), ())))


def _over_coordinates(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b.T`` summed over every coordinate axis: ``(M, *shape)`` by ``(K, *shape)`` (or ``shape``)."""
    k = a.ndim - 1
    return jax.lax.dot_general(a, b, ((tuple(range(1, a.ndim)), tuple(range(b.ndim - k, b.ndim))), ((), ())))


def _column(v: jax.Array, ndim: int) -> jax.Array:
    """``v`` ``(K,)`` as ``(K, 1, ..., 1)``, to broadcast over ``ndim - 1`` coordinate axes."""
    return v.reshape(v.shape + (1,) * (ndim - 1))


def _sigmoid(z: jax.Array) -> jax.Array:
    # σ(z) = (tanh(z/2) + 1) / 2: the same function, through tanh (see the design doc).
    return 0.5 * jnp.tanh(0.5 * z) + 0.5


def _rows(inp: jax.Array, h: jax.Array) -> jax.Array:
    """``[input; h; 1]`` ``(F_l + H + 1, *shape)``: one operand for every matmul of a layer.

    With the ones row the bias rides in the same matmul, forward (``z``) and
    backward (its gradient is the ones row's row of ``rows @ dz.T``): one matmul per
    layer and direction instead of three (input, recurrent, bias).
    """
    return jnp.concatenate([inp, h, jnp.ones((1, *inp.shape[1:]), inp.dtype)], axis=0)


def _forward(weights: CellWeights, x: jax.Array, h: jax.Array, c: jax.Array):
    hidden = h.shape[1]
    new_h, new_c, gates = [], [], []
    inp = x
    for layer, (w, b) in enumerate(zip(weights.w, weights.b)):
        rows = _rows(inp, h[layer])
        z = _over_rows(jnp.concatenate([w, b[None]], axis=0), rows)  # (4H, *shape)
        i = _sigmoid(z[:hidden])
        f = _sigmoid(z[hidden : 2 * hidden])
        g = jnp.tanh(z[2 * hidden : 3 * hidden])
        o = _sigmoid(z[3 * hidden :])
        c_next = f * c[layer] + i * g
        tanh_c = jnp.tanh(c_next)
        h_next = o * tanh_c
        new_h.append(h_next)
        new_c.append(c_next)
        gates.append((rows, i, f, g, o, tanh_c))
        inp = h_next
    out = _over_rows(weights.w_out, inp) + weights.b_out
    return out, jnp.stack(new_h), jnp.stack(new_c), gates


@jax.custom_vjp
def lstm_step_fused(
    weights: CellWeights, x: jax.Array, h: jax.Array, c: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`lstm_step_reference` with a recomputing, hand-written backward pass.

    The same arguments and results as the reference. Its VJP (`fused_backward`)
    keeps only the step's inputs as residuals and recomputes the gates.
    Reverse-mode only (``jax.grad``, ``jax.vjp``); use the reference for ``jax.jvp``.
    """
    out, new_h, new_c, _ = _forward(weights, x, h, c)
    return out, new_h, new_c


def _fused_fwd(weights: CellWeights, x: jax.Array, h: jax.Array, c: jax.Array):
    # Residuals are the inputs only; the backward recomputes the gates.
    out, new_h, new_c, _ = _forward(weights, x, h, c)
    return (out, new_h, new_c), (weights, x, h, c)


def fused_backward(
    residuals: tuple[CellWeights, jax.Array, jax.Array, jax.Array],
    cotangents: tuple[jax.Array, jax.Array, jax.Array],
) -> tuple[CellWeights, jax.Array, jax.Array, jax.Array]:
    """The VJP of one LSTM step, recomputing the gates from the step's inputs.

    The backward pass of `lstm_step_fused`, and of the Pallas kernel's step.

    Args:
      residuals: the step's inputs ``(weights, x, h, c)``.
      cotangents: the cotangents of ``(out, new_h, new_c)``.

    Returns:
      The cotangents of ``(weights, x, h, c)``, in their shapes.
    """
    weights, x, h, c = residuals
    d_out, d_h_next, d_c_next = cotangents
    hidden = h.shape[1]
    _, _, _, gates = _forward(weights, x, h, c)
    top = gates[-1][5] * gates[-1][4]  # h of the last layer = o * tanh(c)
    d_w_out = _over_coordinates(top, d_out)
    d_b_out = jnp.sum(d_out)
    d_above = _column(weights.w_out, top.ndim) * d_out  # dL/dh of the top layer from the output
    num_layers = len(weights.w)
    d_w, d_b, d_h, d_c = [None] * num_layers, [None] * num_layers, [None] * num_layers, [None] * num_layers
    for layer in reversed(range(num_layers)):
        rows, i, f, g, o, tanh_c = gates[layer]
        dh = d_h_next[layer] + d_above
        dc = d_c_next[layer] + dh * o * (1 - tanh_c * tanh_c)
        dz = jnp.concatenate(
            [dc * g * i * (1 - i), dc * c[layer] * f * (1 - f), dc * i * (1 - g * g), dh * tanh_c * o * (1 - o)],
            axis=0,
        )  # (4H, *shape): gate blocks are contiguous rows in this layout
        w = weights.w[layer]
        n_in = w.shape[0] - hidden
        d_wb = _over_coordinates(rows, dz)  # (F_l + H + 1, 4H): weights, then the bias
        d_w[layer], d_b[layer] = d_wb[:-1], d_wb[-1]
        d_rows = jax.lax.dot_general(w, dz, (((1,), (0,)), ((), ())))  # (F_l + H, *shape): to the input, then h
        d_h[layer] = d_rows[n_in:]
        d_c[layer] = dc * f
        d_above = d_rows[:n_in]
    d_weights = CellWeights(tuple(d_w), tuple(d_b), d_w_out, d_b_out)
    return d_weights, d_above, jnp.stack(d_h), jnp.stack(d_c)


lstm_step_fused.defvjp(_fused_fwd, fused_backward)


def keep_where(
    keep: jax.Array, out: jax.Array, new_h: jax.Array, new_c: jax.Array, h: jax.Array, c: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The step's results where ``keep`` is True; elsewhere output 0 and the old ``h``, ``c``.

    Args:
      keep: ``shape`` bool, True for the coordinates the step updates.
      out: the step's output ``shape``.
      new_h: the step's new ``h`` ``(L, H, *shape)``.
      new_c: the step's new ``c`` ``(L, H, *shape)``.
      h: ``h`` before the step.
      c: ``c`` before the step.

    Returns:
      ``(out, h, c)`` selected per coordinate, in the dtypes of ``out``, ``new_h``, ``new_c``.
    """
    return (
        jnp.where(keep, out, jnp.zeros((), out.dtype)),
        jnp.where(keep, new_h, h.astype(new_h.dtype)),
        jnp.where(keep, new_c, c.astype(new_c.dtype)),
    )


def masked(step_fn: StepFn) -> MaskedStepFn:
    """``step_fn`` with a ``keep`` mask (the coordinates' shape) as its fifth argument.

    Coordinates where ``keep`` is False get output 0 and keep their ``h`` and ``c``.
    Their features must be finite (the optimizer passes 0 there), so that no NaN
    enters the arithmetic and every gradient through the step stays finite. The
    mask is applied by selects, so the masked step is differentiable through
    ``step_fn``'s own VJP.

    Args:
      step_fn: a step ``(weights, x, h, c) -> (out, new_h, new_c)``.

    Returns:
      The masked step ``(weights, x, h, c, keep) -> (out, new_h, new_c)``.
    """

    def step(
        weights: CellWeights, x: jax.Array, h: jax.Array, c: jax.Array, keep: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        return keep_where(keep, *step_fn(weights, x, h, c), h, c)

    return step


#: Coordinates per block for the fused step on a CPU: the step's working set (its
#: gate values) of one block stays in cache (see the design doc).
CPU_BLOCK = 16384
#: `in_blocks` takes larger leaves in one call: block offsets are int32.
MAX_BLOCKED_COORDINATES = 2**31 - 1


def partitioned_by_xla() -> bool:
    """Whether the program being traced is partitioned over devices by XLA (GSPMD).

    True where the mesh set with ``jax.set_mesh`` has an automatic axis
    (``jax.sharding.AxisType.Auto``) of more than one device, outside
    ``jax.shard_map`` over it. Without a mesh in context, False.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return False
    auto = jax.sharding.AxisType.Auto
    return any(kind == auto and mesh.shape[name] > 1 for name, kind in zip(mesh.axis_names, mesh.axis_types))


def in_blocks(
    step_fn: Callable[..., tuple[jax.Array, ...]], block: int, only_on: str | None = None
) -> Callable[..., tuple[jax.Array, ...]]:
    """``step_fn`` over blocks of about ``block`` coordinates, one block after the other.

    The blocks are slices along the first coordinate axis (for a flat leaf, runs of
    coordinates), as many rows of the leaf as make ``block`` coordinates (at least
    one), so no coordinate axis is reshaped and a sharded leaf stays sharded. Every
    coordinate gets the numbers of one call over all coordinates; only the working
    set shrinks to one block. Leaves of at most ``block`` coordinates, or of one
    row, go through in one call. Each block is sliced out of the step's inputs and
    written into the outputs in place; the last block ends at the last row and may
    overlap the one before (its overlap's cotangent is counted once). Leaves with
    more than `MAX_BLOCKED_COORDINATES` rows also go through in one call, and so
    does every leaf where XLA partitions the program over devices itself (a mesh
    with an automatic axis of more than one device is set, `partitioned_by_xla`):
    a block's slice along a sharded axis would gather that axis.

    Args:
      step_fn: ``step_fn(weights, x, h, c, *aux)``: a `StepFn`, or one with
        more per-coordinate arguments after ``c`` (coordinates last, not
        differentiated, such as the ``keep`` mask of a `MaskedStepFn`), which
        are cut into the same blocks.
      block: coordinates per block.
      only_on: a platform name (e.g. ``"cpu"``): use the blocks only where the
        program is lowered for that platform, and elsewhere take the leaf in one
        call, forward and backward. The choice is made when the program is lowered
        (``jax.lax.platform_dependent``), not from the default backend. ``None``:
        blocks everywhere.

    Returns:
      A step with ``step_fn``'s signature. It is reverse-mode differentiable (a
      ``custom_vjp`` whose backward pass loops over the same blocks), not
      forward-mode, and it can be vmapped.
    """
    blocked = _blocked_step(step_fn, block, only_on)

    def step(weights: CellWeights, x: jax.Array, h: jax.Array, c: jax.Array, *aux: jax.Array) -> tuple[jax.Array, ...]:
        # Rows past int32's range cannot be indexed in blocks (JAX indexes in int32
        # unless x64 is on); such a leaf goes through in one call.
        if math.prod(x.shape[1:]) <= block or partitioned_by_xla():
            return step_fn(weights, x, h, c, *aux)
        _, rows, size = _plan(x, block)
        if rows <= size or rows > MAX_BLOCKED_COORDINATES:
            return step_fn(weights, x, h, c, *aux)
        return blocked(weights, x, h, c, *aux)

    return step


def _blocked_step(
    step_fn: Callable[..., tuple[jax.Array, ...]], block: int, only_on: str | None
) -> Callable[..., tuple[jax.Array, ...]]:
    """``step_fn`` over every block of its leaf: the blocked path of `in_blocks`, for a leaf of several blocks.

    Args:
      step_fn: ``step_fn(weights, x, h, c, *aux)``, as for `in_blocks`.
      block: coordinates per block.
      only_on: as for `in_blocks`: the platform that takes the blocks (elsewhere
        one call over the whole leaf), or ``None`` for every platform.

    Returns:
      ``blocked(weights, x, h, c, *aux)``, a ``custom_vjp`` whose backward pass
      (`_loop_backward`) loops over the same blocks and gives the ``aux``
      arguments no cotangent.
    """
    loop_forward = functools.partial(_loop_forward, step_fn, block)
    loop_bwd = functools.partial(_loop_backward, step_fn, block)
    whole_bwd = functools.partial(_whole_backward, step_fn)

    def forward(weights: CellWeights, *coords: jax.Array) -> tuple[jax.Array, ...]:
        if only_on is None:
            return loop_forward(weights, *coords)
        return tuple(jax.lax.platform_dependent(weights, *coords, default=step_fn, **{only_on: loop_forward}))

    def backward(residuals: tuple, cotangents: tuple) -> tuple:
        if only_on is None:
            grads = loop_bwd(residuals, cotangents)
        else:
            grads = jax.lax.platform_dependent(residuals, cotangents, default=whole_bwd, **{only_on: loop_bwd})
        return (*grads, *(None for _ in residuals[4:]))  # no cotangent for the aux arguments

    @jax.custom_vjp
    def blocked(weights: CellWeights, *coords: jax.Array) -> tuple[jax.Array, ...]:
        return forward(weights, *coords)

    def blocked_fwd(weights: CellWeights, *coords: jax.Array) -> tuple[tuple, tuple]:
        return forward(weights, *coords), (weights, *coords)

    blocked.defvjp(blocked_fwd, backward)
    return blocked


def _plan(x: jax.Array, block: int) -> tuple[int, int, int]:
    """How a leaf is cut into blocks of about ``block`` coordinates.

    Args:
      x: the leaf's features ``(F, rows, *rest)``.
      block: coordinates per block.

    Returns:
      ``(coordinate axes, rows, rows per block)``; at least one row per block.
    """
    coordinate_axes, rows = x.ndim - 1, x.shape[1]
    per_row = math.prod(x.shape[2:])
    return coordinate_axes, rows, max(1, block // per_row)


def _take(a: jax.Array, start: jax.Array, k: int, size: int) -> jax.Array:
    """Rows ``start`` to ``start + size`` of the first of ``a``'s last ``k`` (coordinate) axes."""
    return jax.lax.dynamic_slice_in_dim(a, start, size, axis=a.ndim - k)


def _put(into: jax.Array, part: jax.Array, start: jax.Array, k: int) -> jax.Array:
    """``into`` with ``part`` written from row ``start`` of the first of its last ``k`` (coordinate) axes."""
    return jax.lax.dynamic_update_slice_in_dim(into, part, start, axis=into.ndim - k)


def _loop_forward(
    step_fn: Callable[..., tuple[jax.Array, ...]], block: int, weights: CellWeights, *coords: jax.Array
) -> tuple[jax.Array, ...]:
    """``step_fn(weights, *coords)`` computed one block after the other in a ``fori_loop``.

    Each block's inputs are sliced out of ``coords`` and its outputs written in place
    into full-size outputs; the last block ends at the last row and may overlap the
    one before, rewriting the same values there.

    Args:
      step_fn: ``step_fn(weights, x, h, c, *aux)``, as for `in_blocks`.
      block: coordinates per block.
      weights: the cell's weights, the same for every block.
      *coords: ``(x, h, c, *aux)``, coordinates last.

    Returns:
      ``step_fn``'s outputs over all coordinates.
    """
    k, n, size = _plan(coords[0], block)

    def block_at(start: jax.Array) -> tuple[jax.Array, ...]:
        return step_fn(weights, *(_take(a, start, k, size) for a in coords))

    def body(i: jax.Array, outs: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        start = jnp.minimum(i * size, n - size)
        return tuple(_put(o, b, start, k) for o, b in zip(outs, block_at(start)))

    shapes = jax.eval_shape(block_at, jnp.int32(0))
    outs = tuple(
        jnp.zeros((*s.shape[: len(s.shape) - k], n, *s.shape[len(s.shape) - k + 1 :]), s.dtype) for s in shapes
    )
    return jax.lax.fori_loop(0, -(-n // size), body, outs)


def _loop_backward(
    step_fn: Callable[..., tuple[jax.Array, ...]], block: int, residuals: tuple, cotangents: tuple
) -> tuple:
    """The VJP of `_loop_forward`: a loop over the same blocks, each block's VJP written in place.

    Autodiff of the forward loop would instead add every block's input cotangents
    into full-size accumulators, touching all coordinates per block. The last block
    goes first, its overlap with the block before masked out of the output
    cotangents: that block wrote those outputs too, and then writes their input
    cotangents over the last block's (zeros there), so the overlap counts once.

    Args:
      step_fn: ``step_fn(weights, x, h, c, *aux)``, as for `in_blocks`.
      block: coordinates per block.
      residuals: the step's inputs ``(weights, x, h, c, *aux)``.
      cotangents: the cotangents of the step's outputs.

    Returns:
      The cotangents of ``(weights, x, h, c)``; the weights' summed over blocks.
    """
    weights, x, h, c, *aux = residuals
    k, n, size = _plan(x, block)
    num_blocks = -(-n // size)
    covered = (num_blocks - 1) * size  # the rows the blocks before the last one write

    def body(j: jax.Array, grads: tuple) -> tuple:
        last_first = jnp.where(j == 0, num_blocks - 1, j - 1)
        start = jnp.minimum(last_first * size, n - size)
        keep = ((j != 0) | (start + jnp.arange(size) >= covered)).reshape((size,) + (1,) * (k - 1))
        cot = tuple(jnp.where(keep, _take(t, start, k, size), jnp.zeros((), t.dtype)) for t in cotangents)
        aux_block = [_take(a, start, k, size) for a in aux]
        _, vjp = jax.vjp(
            lambda w, xb, hb, cb: step_fn(w, xb, hb, cb, *aux_block),
            weights, _take(x, start, k, size), _take(h, start, k, size), _take(c, start, k, size),
        )  # fmt: skip
        gw, gx, gh, gc = vjp(cot)
        dw, dx, dh, dc = grads
        return (
            jax.tree.map(jnp.add, dw, gw),
            _put(dx, gx, start, k),
            _put(dh, gh, start, k),
            _put(dc, gc, start, k),
        )

    zeros = jax.tree.map(jnp.zeros_like, (weights, x, h, c))
    return jax.lax.fori_loop(0, num_blocks, body, zeros)


def _whole_backward(step_fn: Callable[..., tuple[jax.Array, ...]], residuals: tuple, cotangents: tuple) -> tuple:
    """The VJP of one call of ``step_fn`` over the whole leaf (the backward where blocks are not used).

    Args:
      step_fn: ``step_fn(weights, x, h, c, *aux)``, as for `in_blocks`.
      residuals: the step's inputs ``(weights, x, h, c, *aux)``.
      cotangents: the cotangents of the step's outputs.

    Returns:
      The cotangents of ``(weights, x, h, c)``.
    """
    weights, x, h, c, *aux = residuals
    return jax.vjp(lambda w, xb, hb, cb: step_fn(w, xb, hb, cb, *aux), weights, x, h, c)[1](cotangents)
