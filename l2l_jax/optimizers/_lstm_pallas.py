"""The LSTM step as one Pallas kernel that reads and writes each coordinate's state once.

Owns the kernel (`kernel_call`) and the step built on it
(`lstm_step_pallas`): compiled with Triton where the program is lowered for a
GPU, run in Pallas' interpreter elsewhere, with the backward pass of
`l2l_jax.optimizers._lstm_cell.fused_backward`. Each program of the grid takes
``BLOCK`` coordinates and computes every layer on ``(hidden, BLOCK)`` tiles; the
weights are re-packed per gate and zero-padded to the kernel's tile sizes. See
``docs/design/lstm-implementations.md`` for the tiling, the masking of rows and
columns, and the numerics.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from l2l_jax.checks import positive_int
from l2l_jax.errors import ConfigError
from l2l_jax.optimizers._lstm_cell import CellWeights, fused_backward

#: Coordinates per program (the columns of every tile); ``benchmarks/kernel_tiling.py``
#: times other tilings and ``docs/performance/gpu.md`` has the measurements.
BLOCK = 64
#: Warps per program (Triton's ``num_warps``).
NUM_WARPS = 4
#: Layer inputs this narrow (the gradient features) are projected with broadcast
#: multiply-adds, not a product padded to 16 mostly-zero rows.
_FMA_INPUTS = 2


def _padded(size: int) -> int:
    """The next power of 2, at least 16 (``tl.dot`` needs every dimension >= 16)."""
    return max(16, 1 << (size - 1).bit_length())


def _pack_weights(weights: CellWeights, hidden: int, dtype: jnp.dtype) -> list[jax.Array]:
    """Per layer ``w_in`` (4, HP, FP), ``w_h`` (4, HP, HP), ``b`` (4, HP, 1); then ``w_out`` (HP, 1), ``b_out`` (1, 1).

    Gate g's row j is the weight column ``g * H + j`` of the reference layout, so
    ``w_in[g] @ inp`` is gate g's pre-activation from the layer's input. Zero padding.
    """
    hp = _padded(hidden)
    packed = []
    for layer, (w, b) in enumerate(zip(weights.w, weights.b)):
        n_in = w.shape[0] - hidden
        # Only the first layer's input (the features) can be rows for multiply-adds;
        # a later layer's is the layer below's padded (HP, BLOCK) tile.
        fp = n_in if layer == 0 and n_in <= _FMA_INPUTS else _padded(n_in)
        per_gate = w.astype(dtype).reshape(w.shape[0], 4, hidden).transpose(1, 2, 0)  # (4, H, n_in + H)
        w_in = jnp.zeros((4, hp, fp), dtype).at[:, :hidden, :n_in].set(per_gate[:, :, :n_in])
        w_h = jnp.zeros((4, hp, hp), dtype).at[:, :hidden, :hidden].set(per_gate[:, :, n_in:])
        b_p = jnp.zeros((4, hp, 1), dtype).at[:, :hidden, 0].set(b.astype(dtype).reshape(4, hidden))
        packed += [w_in, w_h, b_p]
    w_out = jnp.zeros((hp, 1), dtype).at[:hidden, 0].set(weights.w_out.astype(dtype))
    packed += [w_out, weights.b_out.astype(dtype).reshape(1, 1)]
    return packed


def _kernel(
    x_ref,
    h_ref,
    c_ref,
    *refs,
    n: int,
    hidden: int,
    num_layers: int,
    block: int,
    precision: jax.lax.Precision | jax.lax.DotAlgorithmPreset,
    with_keep: bool,
) -> None:
    if with_keep:
        keep_ref, *refs = refs
    *weight_refs, w_out_ref, b_out_ref, out_ref, h_out_ref, c_out_ref = refs
    dtype = w_out_ref.dtype  # the arithmetic's: float32, or float64 for tests
    hp = w_out_ref.shape[0]

    start = pl.program_id(0) * block
    cols = start + jnp.arange(block)
    col_mask = (cols < n)[None, :]

    def tile(ref, first_row: int, n_rows: int, n_valid: int):
        # Unclamped row indices + masks (see the design doc): (ref view, mask).
        rows = first_row + jnp.arange(n_rows)
        mask = (rows < first_row + n_valid)[:, None] & col_mask
        return ref.at[rows[:, None], cols[None, :]], mask

    def load(ref, first_row: int, n_rows: int, n_valid: int) -> jax.Array:
        view, mask = tile(ref, first_row, n_rows, n_valid)
        return plgpu.load(view, mask=mask, other=0.0).astype(dtype)

    def store(ref, first_row: int, value: jax.Array) -> None:
        view, mask = tile(ref, first_row, hp, hidden)
        plgpu.store(view, value.astype(ref.dtype), mask=mask)

    def dot(w: jax.Array, v: jax.Array) -> jax.Array:
        return jnp.dot(w, v, precision=precision, preferred_element_type=dtype)

    # Where the keep row is 0: output 0 and the state as read.
    keep = load(keep_ref, 0, 1, 1) != 0 if with_keep else None  # (1, BLOCK)

    def kept(new: jax.Array, old: jax.Array) -> jax.Array:
        return new if keep is None else jnp.where(keep, new, old)

    # The layer's input: rows (1, BLOCK) for broadcast multiply-adds, or a tile
    # padded with zero rows to its weights' FP columns.
    n_features = x_ref.shape[0]
    if n_features <= _FMA_INPUTS:
        inp = [load(x_ref, j, 1, 1) for j in range(n_features)]
    else:
        inp = load(x_ref, 0, weight_refs[0].shape[2], n_features)

    def pre_activation(w_in_ref, w_h_ref, b_ref, inp: list[jax.Array] | jax.Array, h: jax.Array, k: int) -> jax.Array:
        # Refs indexed per gate (a loaded (4, ...) value could not be split in Triton).
        if isinstance(inp, list):
            z = sum(w_in_ref[k, :, pl.ds(j, 1)] * row for j, row in enumerate(inp))
        else:
            z = dot(w_in_ref[k], inp)
        return z + dot(w_h_ref[k], h) + b_ref[k]

    for layer in range(num_layers):
        h = load(h_ref, layer * hidden, hp, hidden)
        gate = functools.partial(pre_activation, *weight_refs[3 * layer : 3 * layer + 3], inp, h)
        # One gate at a time, each consumed at once: fewer live tiles, fewer registers.
        c_next = jax.nn.sigmoid(gate(0)) * jnp.tanh(gate(2))
        c = load(c_ref, layer * hidden, hp, hidden)
        c_next = jax.nn.sigmoid(gate(1)) * c + c_next
        store(c_out_ref, layer * hidden, kept(c_next, c))  # the old c is dead from here
        h_next = jax.nn.sigmoid(gate(3)) * jnp.tanh(c_next)
        store(h_out_ref, layer * hidden, kept(h_next, h))
        inp = h_next
    out = jnp.sum(w_out_ref[...] * inp, axis=0) + b_out_ref[0, 0]
    if keep is not None:
        out = jnp.where(keep[0], out, 0.0)
    plgpu.store(out_ref.at[cols], out.astype(out_ref.dtype), mask=col_mask[0])


def kernel_call(
    weights: CellWeights,
    x: jax.Array,
    h: jax.Array,
    c: jax.Array,
    keep: jax.Array | None = None,
    *,
    interpret: bool,
    block: int = BLOCK,
    num_warps: int = NUM_WARPS,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The kernel's forward call, with its tiling explicit.

    What `lstm_step_pallas` computes with ``BLOCK`` and ``NUM_WARPS``, without
    its VJP or its choice of platform: for tuning and testing other tilings.

    Args:
      weights: the cell's weights.
      x: the input features ``(F, n)``; the arithmetic is in its dtype, at least float32.
      h: the hidden state ``(L, H, n)``, read and written in its own dtype.
      c: the cell state ``(L, H, n)``, read and written in its own dtype.
      keep: ``(n,)`` bool, or None. Where False: output 0, ``h`` and ``c`` unchanged.
      interpret: run Pallas' interpreter (any platform); False lowers with Triton
        (GPU only).
      block: coordinates per program, a power of 2 of at least 16.
      num_warps: warps per program (Triton's ``num_warps``), a power of 2 from 1 to 32.

    Returns:
      ``(out, new_h, new_c)`` as `l2l_jax.optimizers._lstm_cell.lstm_step_reference`
      returns them; ``out`` in the arithmetic's dtype.

    Raises:
      ConfigError: for a ``block`` or ``num_warps`` the kernel cannot take.
    """
    block = positive_int("block", block)
    num_warps = positive_int("num_warps", num_warps)
    if block < 16 or block & (block - 1):
        raise ConfigError(f"block must be a power of 2 of at least 16 (tl.dot's smallest operand), got {block}")
    if not 1 <= num_warps <= 32 or num_warps & (num_warps - 1):
        raise ConfigError(f"num_warps must be a power of 2 from 1 to 32, got {num_warps}")
    num_layers, hidden, n = h.shape
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    # TF32x3 is a float32 tensor-core algorithm; float64 (and the CPU interpreter) multiply exactly.
    exact = interpret or dtype != jnp.float32
    precision = jax.lax.Precision.HIGHEST if exact else jax.lax.DotAlgorithmPreset.TF32_TF32_F32_X3
    kernel = functools.partial(
        _kernel, n=n, hidden=hidden, num_layers=num_layers, block=block, precision=precision,
        with_keep=keep is not None,
    )  # fmt: skip
    # The keep row in the arithmetic's dtype (1 or 0): Triton loads it like a feature row.
    keep_row = [] if keep is None else [keep.astype(dtype).reshape(1, n)]
    out, h2, c2 = pl.pallas_call(
        kernel,
        out_shape=(
            jax.ShapeDtypeStruct((n,), dtype),
            jax.ShapeDtypeStruct((num_layers * hidden, n), h.dtype),
            jax.ShapeDtypeStruct((num_layers * hidden, n), c.dtype),
        ),
        grid=(math.ceil(n / block),),
        # New h, c overwrite the old in place: with the state donated, the update
        # needs no second copy of the state.
        input_output_aliases={1: 1, 2: 2},
        # Triton, not the default Mosaic GPU lowering (see the design doc);
        # one stage: there is no loop to pipeline.
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        name="coordinatewise_lstm_step",
    )(
        x.astype(dtype),
        h.reshape(num_layers * hidden, n),
        c.reshape(num_layers * hidden, n),
        *keep_row,
        *_pack_weights(weights, hidden, dtype),
    )
    return out, h2.reshape(h.shape), c2.reshape(c.shape)


def _compiled(
    weights: CellWeights, x: jax.Array, h: jax.Array, c: jax.Array, keep: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    return kernel_call(weights, x, h, c, keep, interpret=False)


def _interpreted(
    weights: CellWeights, x: jax.Array, h: jax.Array, c: jax.Array, keep: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    return kernel_call(weights, x, h, c, keep, interpret=True)


def _forward(
    weights: CellWeights, x: jax.Array, h: jax.Array, c: jax.Array, keep: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    # Chosen when the program is lowered, for the platform it is lowered for, not
    # by the default backend at trace time: a program placed on the CPU of a GPU
    # machine gets the interpreter, and one exported for CUDA from a CPU-only
    # machine gets the Triton kernel. The branch not taken is never lowered.
    return jax.lax.platform_dependent(weights, x, h, c, keep, cuda=_compiled, rocm=_compiled, default=_interpreted)


@jax.custom_vjp
def lstm_step_pallas(
    weights: CellWeights, x: jax.Array, h: jax.Array, c: jax.Array, keep: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`l2l_jax.optimizers._lstm_cell.lstm_step_reference` as one Pallas kernel.

    Compiled with Triton where the program is lowered for a GPU (CUDA or ROCm),
    run in Pallas' interpreter elsewhere. Differentiable in reverse mode with the
    backward pass of `l2l_jax.optimizers._lstm_cell.fused_backward`.

    Args:
      weights: the cell's weights.
      x: the input features ``(F, n)``; the arithmetic is in its dtype, at least float32.
      h: the hidden state ``(L, H, n)``, read and written in its own dtype (e.g.
        bfloat16).
      c: the cell state ``(L, H, n)``, read and written in its own dtype.
      keep: ``(n,)`` bool, or None. Given, this is the masked step of
        `l2l_jax.optimizers._lstm_cell.masked`: where ``keep`` is False the
        output is 0 and ``h``, ``c`` are returned as they were (no cotangent flows
        to ``keep``).

    Returns:
      ``(out, new_h, new_c)``: ``(n,)``, ``(L, H, n)``, ``(L, H, n)``.
    """
    return _forward(weights, x, h, c, keep)


def _pallas_fwd(weights, x, h, c, keep=None):
    return _forward(weights, x, h, c, keep), (weights, x, h, c, keep)


def _pallas_bwd(residuals, cotangents):
    weights, x, h, c, keep = residuals
    if keep is None:
        d_weights, d_x, d_h, d_c = fused_backward((weights, x, h, c), cotangents)
    else:
        # The step's cotangents where it ran; where it was skipped, h and c were
        # passed through, and so are their cotangents.
        _, d_h_next, d_c_next = cotangents
        ran = tuple(jnp.where(keep, t, jnp.zeros((), t.dtype)) for t in cotangents)
        d_weights, d_x, d_h, d_c = fused_backward((weights, x, h, c), ran)
        d_h = d_h + jnp.where(keep, jnp.zeros((), d_h_next.dtype), d_h_next)
        d_c = d_c + jnp.where(keep, jnp.zeros((), d_c_next.dtype), d_c_next)
    return d_weights, d_x, d_h.astype(h.dtype), d_c.astype(c.dtype), None


lstm_step_pallas.defvjp(_pallas_fwd, _pallas_bwd)
