"""The LSTM step as one Pallas kernel: each coordinate's state is read once and written once.

As a drop-in optimizer the coordinatewise LSTM is bound by memory traffic: per
parameter it reads the gradient and 2 layers x (h, c) x H floats of state and writes
them back, and does a few thousand flops in between. Plain XLA splits the step into
a chain of kernels that each stream the state through memory again. This kernel
gives each program a block of ``BLOCK`` coordinates and computes both layers on
tiles, touching every state element exactly once.

Design (tiles, so that Triton emits a few dozen loads and small matrix products
rather than thousands of scalar loads and multiply-adds, which took Triton most of
an hour to compile at H = 20):

* The wrapper re-packs the weights per gate and zero-pads them to powers of 2 of at
  least 16 (the smallest ``tl.dot`` operand): per layer ``w_in`` ``(4, HP, FP)``,
  ``w_h`` ``(4, HP, HP)`` and ``b`` ``(4, HP, 1)``, with ``HP``/``FP`` the padded
  hidden and input widths (H = 20: HP = 32). The gradient features (F <= 2) are not
  padded: they enter by broadcast multiply-adds, as in ``lstm_cell``.
* The kernel loads a layer's ``h`` and ``c`` as ``(HP, BLOCK)`` tiles, computes each
  gate as ``w_in[g] @ inp + w_h[g] @ h + b[g]`` and writes the new tiles back.
* With a ``keep`` mask (one row over the coordinates, 1 = update, 0 = skip) the
  kernel writes, for a skipped coordinate, output 0 and the ``h``, ``c`` it read:
  selects on tiles it holds anyway, so the state is still read once and written
  once, in place (a select after the call would need the old state kept beside the
  new, i.e. a copy).
* Rows are addressed by index arrays ``l * H + arange(HP)`` (never clamped) with a
  row mask ``< H`` and a column mask ``< n``: masked elements are never read or
  written on the GPU, and in the interpreter a masked store writes back the value it
  read (in-range rows) or is dropped (out-of-range rows). Clamping the indices
  instead would make duplicate rows, whose masked and unmasked writes race.
  Padded rows compute to exactly 0 (zero weights and bias, masked loads give 0),
  so they add nothing to the next layer or the output.

On GPU it is compiled with the Triton backend (``triton.CompilerParams``): without
compiler parameters JAX lowers ``pallas_call`` with Mosaic GPU, which fails on this
kernel (shared memory). Float32 products use TF32x3
(``DotAlgorithmPreset.TF32_TF32_F32_X3``: three tensor-core TF32 products that
recover nearly float32 accuracy). Expected agreement with
:func:`~l2l_jax.optimizers.lstm_cell.lstm_step_reference` in float32:
``rtol=1e-5, atol=1e-6`` (met by a NumPy emulation of TF32x3 against the float64
reference, H = 20), provided the reference's own matmuls run at
``Precision.HIGHEST``: JAX's default float32 matmul on GPU may be plain TF32
(~1e-3 relative). CI lowers the kernel, and the programs of the README's GPU
runbook that use it, for the cuda platform on a CPU-only machine
(``tests/test_gpu_lowering.py``), and ``benchmarks/gpu_plan.py`` compiles it with
XLA for an H100 without one (H = 20, ``BLOCK = 64``, 8 warps: 170 registers a
thread, no spills). It has not been run on a GPU.

Where the program is lowered for any other platform it runs in Pallas' interpreter
(for tests; slow) with exact products (``Precision.HIGHEST``; XLA:CPU has no
TF32x3), as it does for float64 arithmetic everywhere. The choice is made when the
program is lowered (``jax.lax.platform_dependent``), not from the default backend.
Its backward pass, when differentiated for meta-training, is the fused one of
:mod:`l2l_jax.optimizers.lstm_cell` (recompute, no stored activations).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from l2l_jax.errors import ConfigError
from l2l_jax.optimizers.lstm_cell import CellWeights, _fused_bwd

#: Coordinates per program (the columns of every tile). With NUM_WARPS = 8, XLA
#: compiles it for an H100 to 170 registers a thread and no spills at H = 20: one
#: program per SM. Other tilings and their registers, spills and programs per SM:
#: ``python benchmarks/gpu_plan.py --sections kernel``; which is fastest needs a GPU.
BLOCK = 64
#: Warps per program (Triton's ``num_warps``).
NUM_WARPS = 8
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
    for w, b in zip(weights.w, weights.b):
        n_in = w.shape[0] - hidden
        fp = n_in if n_in <= _FMA_INPUTS else _padded(n_in)
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
        # Unclamped row indices + masks (see the module docstring): (ref view, mask).
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
    """The kernel's forward call with its tiling explicit: ``block`` coordinates a program, ``num_warps`` warps.

    What :func:`lstm_step_pallas` computes (``BLOCK``, ``NUM_WARPS``), without its
    VJP or its choice of platform: for tuning the tiling (``benchmarks/gpu_plan.py``
    compiles the candidates for an H100) and for testing other tilings.
    ``interpret=True`` runs Pallas' interpreter; ``False`` lowers with Triton (GPU only).
    ``keep`` ``(n,)`` (bool), if given, skips the coordinates where it is False
    (output 0, ``h`` and ``c`` unchanged).
    """
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
        # New h, c overwrite the old in place (with the state donated, the update
        # needs no second copy of the state: 100M parameters fit in 80 GB).
        input_output_aliases={1: 1, 2: 2},
        # Triton, not the default Mosaic GPU lowering (see the module docstring);
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
    # machine gets the Triton kernel (tests/test_gpu_lowering.py). The branch not
    # taken is never lowered, so no conditional reaches the compiler.
    return jax.lax.platform_dependent(weights, x, h, c, keep, cuda=_compiled, rocm=_compiled, default=_interpreted)


@jax.custom_vjp
def lstm_step_pallas(
    weights: CellWeights, x: jax.Array, h: jax.Array, c: jax.Array, keep: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`l2l_jax.optimizers.lstm_cell.lstm_step_reference` as one Pallas kernel.

    Same arguments and results; ``h``/``c`` are read and written in their own
    dtype (e.g. bfloat16 state, half the traffic), arithmetic is in ``x``'s dtype
    (at least float32). Compiled with Triton where the program is lowered for a
    GPU (CUDA; ROCm too, but it has never been compiled there), interpreted elsewhere.

    With ``keep`` ``(n,)`` (bool) it is the masked step of
    :func:`l2l_jax.optimizers.lstm_cell.masked`: where ``keep`` is False the output
    is 0 and ``h``, ``c`` are returned as they were (no cotangent flows to ``keep``).
    """
    return _forward(weights, x, h, c, keep)


def _pallas_fwd(weights, x, h, c, keep=None):
    return _forward(weights, x, h, c, keep), (weights, x, h, c, keep)


def _pallas_bwd(residuals, cotangents):
    weights, x, h, c, keep = residuals
    if keep is None:
        d_weights, d_x, d_h, d_c = _fused_bwd((weights, x, h, c), cotangents)
    else:
        # The step's cotangents where it ran; where it was skipped, h and c were
        # passed through, and so are their cotangents.
        _, d_h_next, d_c_next = cotangents
        ran = tuple(jnp.where(keep, t, jnp.zeros((), t.dtype)) for t in cotangents)
        d_weights, d_x, d_h, d_c = _fused_bwd((weights, x, h, c), ran)
        d_h = d_h + jnp.where(keep, jnp.zeros((), d_h_next.dtype), d_h_next)
        d_c = d_c + jnp.where(keep, jnp.zeros((), d_c_next.dtype), d_c_next)
    return d_weights, d_x, d_h.astype(h.dtype), d_c.astype(c.dtype), None


lstm_step_pallas.defvjp(_pallas_fwd, _pallas_bwd)
