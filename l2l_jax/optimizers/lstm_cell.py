"""One step of the coordinatewise stacked LSTM on a flat block of coordinates.

Implementations with the same numbers:

* :func:`lstm_step_reference`: plain JAX, differentiated by autodiff. It is the
  specification, and the one to use for forward-mode differentiation in φ.
* :func:`lstm_step_fused`: the same forward with a hand-written backward
  (``jax.custom_vjp``). Autodiff of the reference stores every gate activation of
  every step and assembles the gate gradients with pads and sums; the fused
  backward stores only the step's inputs (features, h, c), recomputes the gates,
  and builds each gradient once, with one matrix product per layer and direction
  (see ``_rows``). ``benchmarks/meta_training_speed.py`` measures it.
* :func:`l2l_jax.optimizers.lstm_pallas.lstm_step_pallas`: forward only, one Pallas
  kernel that reads each coordinate's state once and writes it once (for the
  optimizer's use inside a training loop).

Layout: coordinates last, so that each hidden unit of each layer is one contiguous
row. ``x`` is ``(F, n)`` (preprocessed gradient features of n coordinates), ``h``
and ``c`` are ``(L, H, n)``; the step returns the raw output ``(n,)`` (before the
output scale) and the new ``h``, ``c``.

The optimizer calls a *masked* step (:func:`masked_step_function`), which takes a
fifth argument ``keep`` ``(n,)`` (bool): where it is False the output is 0 and ``h``,
``c`` come back unchanged. That is how a coordinate with a non-finite gradient is
skipped; its features must already be finite (the caller puts 0 there), so no NaN
enters the arithmetic and every gradient through the step stays finite.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class CellWeights(NamedTuple):
    """The LSTM's meta-parameters as arrays: per layer ``w`` ``(F_l + H, 4H)`` (rows:
    input features, then h; columns: gates i, f, g, o) and ``b`` ``(4H,)``; then
    the output projection ``w_out`` ``(H,)`` and ``b_out`` ``()``."""

    w: tuple[jax.Array, ...]
    b: tuple[jax.Array, ...]
    w_out: jax.Array
    b_out: jax.Array


StepFn = Callable[[CellWeights, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]
#: A step with a ``keep`` mask as its fifth argument (see :func:`masked`).
MaskedStepFn = Callable[
    [CellWeights, jax.Array, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]
]


def lstm_step_reference(
    weights: CellWeights, x: jax.Array, h: jax.Array, c: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One LSTM step in plain JAX: ``(out (n,), h (L, H, n), c (L, H, n))``.

    The textbook formulation (one matmul of ``[input; h]`` per layer, then split
    into gates), differentiated by autodiff.
    """
    hidden = h.shape[1]
    new_h, new_c = [], []
    inp = x
    for layer, (w, b) in enumerate(zip(weights.w, weights.b)):
        z = w.T @ jnp.concatenate([inp, h[layer]], axis=0) + b[:, None]
        i, f, g, o = (z[k * hidden : (k + 1) * hidden] for k in range(4))
        c_next = jax.nn.sigmoid(f) * c[layer] + jax.nn.sigmoid(i) * jnp.tanh(g)
        inp = jax.nn.sigmoid(o) * jnp.tanh(c_next)
        new_h.append(inp)
        new_c.append(c_next)
    return weights.w_out @ inp + weights.b_out, jnp.stack(new_h), jnp.stack(new_c)


def _sigmoid(z: jax.Array) -> jax.Array:
    # Through tanh: XLA's CPU tanh is a cheap rational approximation, while
    # logistic lowers to exp and a division.
    return 0.5 * jnp.tanh(0.5 * z) + 0.5


def _rows(inp: jax.Array, h: jax.Array) -> jax.Array:
    """``[input; h; 1]`` ``(F_l + H + 1, n)``: one operand for every matmul of a layer.

    With the ones row the bias rides in the same matmul, forward (``z``) and
    backward (its gradient is the ones row's row of ``rows @ dz.T``). One matmul
    per layer and direction instead of 2-3 (input, recurrent, bias) is what
    matters on CPU: each matmul packs its operands again, and XLA duplicated the
    whole ``dz`` computation into a separate kernel for the bias gradient's sum.
    """
    return jnp.concatenate([inp, h, jnp.ones((1, inp.shape[1]), inp.dtype)], axis=0)


def _forward(weights: CellWeights, x: jax.Array, h: jax.Array, c: jax.Array):
    hidden = h.shape[1]
    new_h, new_c, gates = [], [], []
    inp = x
    for layer, (w, b) in enumerate(zip(weights.w, weights.b)):
        rows = _rows(inp, h[layer])
        z = jax.lax.dot_general(jnp.concatenate([w, b[None]], axis=0), rows, (((0,), (0,)), ((), ())))  # (4H, n)
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
    out = weights.w_out @ inp + weights.b_out
    return out, jnp.stack(new_h), jnp.stack(new_c), gates


@jax.custom_vjp
def lstm_step_fused(
    weights: CellWeights, x: jax.Array, h: jax.Array, c: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`lstm_step_reference` with a recomputing, hand-written backward pass.

    Reverse-mode only (``jax.grad``, ``jax.vjp``); use the reference for ``jax.jvp``.
    """
    out, new_h, new_c, _ = _forward(weights, x, h, c)
    return out, new_h, new_c


def _fused_fwd(weights: CellWeights, x: jax.Array, h: jax.Array, c: jax.Array):
    # Residuals are the inputs only; the backward recomputes the gates.
    out, new_h, new_c, _ = _forward(weights, x, h, c)
    return (out, new_h, new_c), (weights, x, h, c)


def _nt(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b.T`` (contracting the coordinate axis) without materialising a transpose."""
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())))


def _fused_bwd(residuals, cotangents):
    weights, x, h, c = residuals
    d_out, d_h_next, d_c_next = cotangents
    hidden = h.shape[1]
    _, _, _, gates = _forward(weights, x, h, c)
    top = gates[-1][5] * gates[-1][4]  # h of the last layer = o * tanh(c)
    d_w_out = top @ d_out
    d_b_out = jnp.sum(d_out)
    d_above = weights.w_out[:, None] * d_out  # dL/dh of the top layer from the output
    num_layers = len(weights.w)
    d_w, d_b, d_h, d_c = [None] * num_layers, [None] * num_layers, [None] * num_layers, [None] * num_layers
    for layer in reversed(range(num_layers)):
        rows, i, f, g, o, tanh_c = gates[layer]
        dh = d_h_next[layer] + d_above
        dc = d_c_next[layer] + dh * o * (1 - tanh_c * tanh_c)
        dz = jnp.concatenate(
            [dc * g * i * (1 - i), dc * c[layer] * f * (1 - f), dc * i * (1 - g * g), dh * tanh_c * o * (1 - o)],
            axis=0,
        )  # (4H, n): gate blocks are contiguous rows in this layout
        w = weights.w[layer]
        n_in = w.shape[0] - hidden
        d_wb = _nt(rows, dz)  # (F_l + H + 1, 4H): weights, then the bias
        d_w[layer], d_b[layer] = d_wb[:-1], d_wb[-1]
        d_rows = w @ dz  # (F_l + H, n): to the layer's input, then to its h
        d_h[layer] = d_rows[n_in:]
        d_c[layer] = dc * f
        d_above = d_rows[:n_in]
    d_weights = CellWeights(tuple(d_w), tuple(d_b), d_w_out, d_b_out)
    return d_weights, d_above, jnp.stack(d_h), jnp.stack(d_c)


lstm_step_fused.defvjp(_fused_fwd, _fused_bwd)


def keep_where(
    keep: jax.Array, out: jax.Array, new_h: jax.Array, new_c: jax.Array, h: jax.Array, c: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The step's results where ``keep`` (``(n,)``, bool) is True; elsewhere output 0 and the old ``h``, ``c``."""
    return (
        jnp.where(keep, out, jnp.zeros((), out.dtype)),
        jnp.where(keep, new_h, h.astype(new_h.dtype)),
        jnp.where(keep, new_c, c.astype(new_c.dtype)),
    )


def masked(step_fn: StepFn) -> MaskedStepFn:
    """``step_fn`` with a ``keep`` mask ``(n,)``: coordinates where it is False get
    output 0 and keep their ``h``, ``c`` (selects only; differentiable by autodiff,
    through ``step_fn``'s own VJP)."""

    def step(
        weights: CellWeights, x: jax.Array, h: jax.Array, c: jax.Array, keep: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        return keep_where(keep, *step_fn(weights, x, h, c), h, c)

    return step


#: Implementation names (see :func:`l2l_jax.optimizers.lstm`'s ``implementation``).
IMPLEMENTATIONS = ("reference", "fused", "pallas")

#: Coordinates per block for the fused step on a CPU. The step is bound by memory
#: traffic, and its cost per coordinate grows with the working set (80 gate values
#: per coordinate and layer): unblocked, about 200 ns for 16,384 coordinates and
#: 520-600 ns for 131,072 on a 2-core x86 VM (``benchmarks/update_speed.py``).
CPU_BLOCK = 16384


def in_blocks(step_fn: Callable[..., tuple[jax.Array, ...]], block: int, only_on: str | None = None):
    """``step_fn`` over blocks of ``block`` coordinates, one block after the other.

    ``step_fn(weights, x, h, c, *aux)``: a :data:`StepFn`, or one with more
    per-coordinate arguments after ``c`` (coordinates last, not differentiated:
    the ``keep`` mask of a :data:`MaskedStepFn`), which are cut into the same blocks.

    Every coordinate's numbers are those of one call over all coordinates; only the
    working set shrinks to one block. Leaves of at most ``block`` coordinates go
    through in one call. Reverse-mode differentiable (a ``custom_vjp`` whose backward
    pass is a loop over the same blocks); not forward-mode.

    With ``only_on`` (a platform name, e.g. ``"cpu"``) the blocks are used only where
    the program is lowered for that platform, and elsewhere ``step_fn`` takes the
    leaf in one call (forward and backward). The choice is made when lowering
    (``jax.lax.platform_dependent`` inside the ``custom_vjp``, so autodiff never sees
    both branches), not from the default backend: a program compiled for a GPU from a
    CPU-only machine gets the GPU's version.

    Each block is sliced out of the step's inputs and written into the outputs in
    place (``dynamic_update_slice`` on the loop's carry), so the state never takes a
    block layout: no padding and no transposes. The last block ends at the last
    coordinate and overlaps the one before; since blocks read the inputs, never the
    carry, writing the overlap again writes the same numbers (and in the backward pass
    the overlap's cotangent is counted once). A loop that reads its blocks from the
    carry it writes makes XLA copy the whole carry every iteration (measured: ~6x
    slower at 1M coordinates); one that maps over transposed blocks pays for the
    transposes.
    """

    def take(a: jax.Array, start: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice_in_dim(a, start, block, axis=-1)

    def put(into: jax.Array, part: jax.Array, start: jax.Array) -> jax.Array:
        return jax.lax.dynamic_update_slice_in_dim(into, part, start, axis=-1)

    def loop_forward(weights: CellWeights, *coords: jax.Array) -> tuple[jax.Array, ...]:
        n = coords[0].shape[-1]

        def block_at(start: jax.Array) -> tuple[jax.Array, ...]:
            return step_fn(weights, *(take(a, start) for a in coords))

        def body(i: jax.Array, outs: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
            start = jnp.minimum(i * block, n - block)
            return tuple(put(o, b, start) for o, b in zip(outs, block_at(start)))

        shapes = jax.eval_shape(block_at, jnp.int32(0))
        outs = tuple(jnp.zeros((*s.shape[:-1], n), s.dtype) for s in shapes)
        return jax.lax.fori_loop(0, -(-n // block), body, outs)

    # The backward pass is a loop of the same shape. Autodiff of the forward loop would
    # add every block's input cotangents into full-size accumulators, touching all n
    # coordinates per block (4x slower than one call at 1M coordinates, measured).
    def loop_bwd(residuals: tuple, cotangents: tuple) -> tuple:
        weights, x, h, c, *aux = residuals
        n = x.shape[-1]
        num_blocks = -(-n // block)
        covered = (num_blocks - 1) * block  # what the blocks before the last one write

        def body(j: jax.Array, grads: tuple) -> tuple:
            # The last block goes first, its overlap with the block before masked out of
            # the output cotangents: that block wrote those outputs too, and then writes
            # their input cotangents over the last block's (zeros there).
            last_first = jnp.where(j == 0, num_blocks - 1, j - 1)
            start = jnp.minimum(last_first * block, n - block)
            keep = (j != 0) | (start + jnp.arange(block) >= covered)
            cot = tuple(jnp.where(keep, take(t, start), jnp.zeros((), t.dtype)) for t in cotangents)
            aux_block = [take(a, start) for a in aux]
            _, vjp = jax.vjp(
                lambda w, xb, hb, cb: step_fn(w, xb, hb, cb, *aux_block),
                weights, take(x, start), take(h, start), take(c, start),
            )  # fmt: skip
            gw, gx, gh, gc = vjp(cot)
            dw, dx, dh, dc = grads
            return jax.tree.map(jnp.add, dw, gw), put(dx, gx, start), put(dh, gh, start), put(dc, gc, start)

        zeros = jax.tree.map(jnp.zeros_like, (weights, x, h, c))
        return jax.lax.fori_loop(0, num_blocks, body, zeros)

    def whole_bwd(residuals: tuple, cotangents: tuple) -> tuple:
        weights, x, h, c, *aux = residuals
        return jax.vjp(lambda w, xb, hb, cb: step_fn(w, xb, hb, cb, *aux), weights, x, h, c)[1](cotangents)

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

    def step(weights: CellWeights, x: jax.Array, h: jax.Array, c: jax.Array, *aux: jax.Array) -> tuple[jax.Array, ...]:
        if x.shape[-1] <= block:
            return step_fn(weights, x, h, c, *aux)
        return blocked(weights, x, h, c, *aux)

    return step


def step_function(implementation: str) -> StepFn:
    """The step function of an implementation name."""
    if implementation == "pallas":
        from l2l_jax.optimizers.lstm_pallas import lstm_step_pallas

        return lstm_step_pallas
    return {"reference": lstm_step_reference, "fused": lstm_step_fused}[implementation]


def masked_step_function(implementation: str) -> MaskedStepFn:
    """The masked step (a ``keep`` mask as fifth argument) of an implementation name.

    The Pallas kernel applies the mask itself, so the state is still read and written
    once, in place; the others are :func:`masked` around their step.
    """
    if implementation == "pallas":
        from l2l_jax.optimizers.lstm_pallas import lstm_step_pallas

        return lstm_step_pallas
    return masked(step_function(implementation))
