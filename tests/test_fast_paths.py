"""Every fast path gives the numbers of the plain reference path: values and meta-gradients.

The reference is the LSTM step written in plain JAX and differentiated by autodiff,
unrolled with a plain ``lax.scan``; the fast paths are the fused LSTM step (its own
backward pass), the Pallas kernel (in the interpreter on CPU), rematerialisation
(per step and in √T segments) and unrolling the batch in chunks of tasks. Float64, so the
tolerances measure the algebra, not rounding.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2l_jax.errors import ConfigError
from l2l_jax.meta import init_inner, meta_value_and_grad, truncation_loss
from l2l_jax.meta.unroll import segment_length
from l2l_jax.optimizers import lstm
from l2l_jax.optimizers._lstm_cell import (
    CPU_BLOCK,
    CellWeights,
    in_blocks,
    lstm_step_fused,
    lstm_step_reference,
    masked,
)
from l2l_jax.optimizers._lstm_pallas import BLOCK, kernel_call, lstm_step_pallas
from l2l_jax.optimizers.lstm import auto_step
from l2l_jax.tasks import QuadraticFamily


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def random_cell(key, n=37, features=2, hidden=5, layers=2):
    keys = iter(jax.random.split(key, 16))
    w, b, in_size = [], [], features
    for _ in range(layers):
        w.append(jax.random.normal(next(keys), (in_size + hidden, 4 * hidden)) * 0.5)
        b.append(jax.random.normal(next(keys), (4 * hidden,)) * 0.5)
        in_size = hidden
    weights = CellWeights(tuple(w), tuple(b), jax.random.normal(next(keys), (hidden,)), jnp.asarray(0.3))
    x = jax.random.normal(next(keys), (features, n))
    h = jax.random.normal(next(keys), (layers, hidden, n)) * 0.5
    c = jax.random.normal(next(keys), (layers, hidden, n))
    return weights, x, h, c


def assert_same_step_and_vjp(step, weights, x, h, c):
    ref, ref_vjp = jax.vjp(lstm_step_reference, weights, x, h, c)
    out, out_vjp = jax.vjp(step, weights, x, h, c)
    for a, b in zip(ref, out):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    cot = jax.tree.map(lambda a: jax.random.normal(jax.random.key(7), a.shape), ref)
    for a, b in zip(jax.tree.leaves(ref_vjp(cot)), jax.tree.leaves(out_vjp(cot))):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("features", [1, 2, 3])
def test_fused_step_has_the_reference_values_and_vjp(features):
    assert_same_step_and_vjp(lstm_step_fused, *random_cell(jax.random.key(features), features=features))


@pytest.mark.parametrize("n", [37, BLOCK, 2 * BLOCK + 5])
def test_pallas_step_has_the_reference_values_and_vjp(n):
    # On the CPU the kernel runs in Pallas' interpreter: the same program, the
    # same masking of the tail block.
    assert_same_step_and_vjp(lstm_step_pallas, *random_cell(jax.random.key(n), n=n))


@pytest.mark.parametrize("hidden", [1, 2])
def test_pallas_step_with_at_most_two_hidden_units_has_the_reference_values_and_vjp(hidden):
    # A later layer's input is then as narrow as the gradient features, but it is the
    # layer below's padded tile, not rows for multiply-adds.
    assert_same_step_and_vjp(lstm_step_pallas, *random_cell(jax.random.key(hidden), hidden=hidden, layers=3))


def keep_mask(n):
    """Skips coordinates 0, 5 and n - 2 (in the last block, and in its overlap when blocked by 10)."""
    return jnp.ones(n, bool).at[jnp.array([0, 5, n - 2])].set(False)


def test_masked_steps_have_the_masked_reference_values_and_vjp():
    n = BLOCK + 5  # the Pallas kernel in two programs, the second one partly past the end
    # Skipped coordinates: output 0, h and c passed through, and so are their cotangents.
    weights, x, h, c = random_cell(jax.random.key(n), n=n)
    keep = keep_mask(n)
    reference = masked(lstm_step_reference)
    ref, ref_vjp = jax.vjp(lambda *a: reference(*a, keep), weights, x, h, c)
    assert float(jnp.max(jnp.abs(ref[0][~keep]))) == 0.0
    np.testing.assert_array_equal(ref[1][..., ~keep], h[..., ~keep])
    cot = jax.tree.map(lambda a: jax.random.normal(jax.random.key(7), a.shape), ref)
    # auto_step: the fused step when differentiated, what the platform picks when not.
    for step in (masked(lstm_step_fused), lstm_step_pallas, auto_step):
        out, out_vjp = jax.vjp(lambda *a, step=step: step(*a, keep), weights, x, h, c)
        for a, b in zip(ref, out):
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
        for a, b in zip(jax.tree.leaves(ref_vjp(cot)), jax.tree.leaves(out_vjp(cot))):
            np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("block", "num_warps"), [(16, 2), (128, 4)])
def test_other_tilings_of_the_kernel_give_the_reference_step(block, num_warps):
    # benchmarks/gpu_plan.py weighs other tilings for the GPU; any of them must
    # compute the same step (n = 37: a tail block for 16, one partial block for 128).
    weights, x, h, c = random_cell(jax.random.key(block), n=37)
    out = kernel_call(weights, x, h, c, interpret=True, block=block, num_warps=num_warps)
    for a, b in zip(lstm_step_reference(weights, x, h, c), out):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("block", "num_warps", "message"), [(8, 4, "power of 2 of at least 16"),
                                                             (48, 4, "power of 2 of at least 16"),
                                                             (64, 3, "num_warps must be a power of 2"),
                                                             (64, 64, "num_warps must be a power of 2")])  # fmt: skip
def test_a_kernel_tiling_the_kernel_cannot_take_is_refused(block, num_warps, message):
    with pytest.raises(ConfigError, match=message):
        kernel_call(*random_cell(jax.random.key(0)), interpret=True, block=block, num_warps=num_warps)


@pytest.mark.parametrize("n", [37, 2 * BLOCK + 5])
def test_pallas_step_in_float32_is_within_the_stated_tolerance(n):
    # The paper's width (H = 20, padded to 32 in the kernel). On a GPU this is the
    # compiled kernel with TF32x3 products, against a reference in exact float32
    # products (JAX's default float32 product there may be TF32).
    cell = random_cell(jax.random.key(n), n=n, hidden=20)
    weights, x, h, c = jax.tree.map(lambda a: a.astype(jnp.float32), cell)
    with jax.default_matmul_precision("highest"):
        ref = lstm_step_reference(weights, x, h, c)
    out = lstm_step_pallas(weights, x, h, c)
    for a, b in zip(ref, out):
        assert b.dtype == jnp.float32
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_pallas_step_reads_and_writes_bfloat16_state_in_bfloat16():
    weights, x, h, c = random_cell(jax.random.key(3), n=50)
    weights, x = jax.tree.map(lambda a: a.astype(jnp.float32), (weights, x))
    h16, c16 = h.astype(jnp.bfloat16), c.astype(jnp.bfloat16)
    out, new_h, new_c = lstm_step_pallas(weights, x, h16, c16)
    assert new_h.dtype == new_c.dtype == jnp.bfloat16 and out.dtype == jnp.float32
    ref = lstm_step_reference(weights, x, h16.astype(jnp.float32), c16.astype(jnp.float32))
    np.testing.assert_allclose(out, ref[0], rtol=1e-5, atol=1e-6)
    # The new state is the float32 result rounded once to bfloat16 (8 bits of mantissa).
    np.testing.assert_allclose(new_h.astype(jnp.float32), ref[1], rtol=2**-8, atol=1e-6)
    np.testing.assert_allclose(new_c.astype(jnp.float32), ref[2], rtol=2**-8, atol=1e-6)


def quadratic_setup(implementation, batch=3):
    family = QuadraticFamily(dim=6)
    optimizer = lstm(implementation=implementation)
    phi = jax.tree.map(lambda a: a.astype(jnp.float64), optimizer.init(jax.random.key(0)))
    inner = init_inner(optimizer, phi, family, jax.random.key(1), batch)
    inner = jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, inner)
    return optimizer, family, phi, inner


def truncation_value_and_grad(optimizer, family, phi, inner, num_steps, **options):
    """``jax.value_and_grad(truncation_loss, has_aux=True)``, compiled as one program (not op by op)."""
    loss = jax.value_and_grad(truncation_loss, has_aux=True)
    return jax.jit(lambda phi, inner: loss(phi, optimizer, family, inner, num_steps, **options))(phi, inner)


@pytest.mark.parametrize("first_order", [True, False])
def test_fused_lstm_meta_gradient_equals_the_reference(first_order):
    results = {}
    # (The Pallas step's backward is the fused one; its VJP is checked above.)
    for impl in ("reference", "fused", "auto"):
        optimizer, family, phi, inner = quadratic_setup(impl)
        (loss, (after, losses)), grad = truncation_value_and_grad(
            optimizer, family, phi, inner, 8, first_order=first_order
        )
        results[impl] = (loss, losses, after.params, grad)
    for impl in ("fused", "auto"):
        for a, b in zip(jax.tree.leaves(results["reference"]), jax.tree.leaves(results[impl])):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@functools.cache
def unroll_without_remat():
    """The plain unroll that every rematerialised one is compared with (computed once, for both)."""
    return truncation_value_and_grad(*quadratic_setup("fused"), 12, remat=False)


@pytest.mark.parametrize("remat", [True, "segments"])
def test_rematerialised_unroll_equals_the_plain_one(remat):
    (_, (_, losses)), grad = unroll_without_remat()
    (_, (_, losses_r)), grad_r = truncation_value_and_grad(*quadratic_setup("fused"), 12, remat=remat)
    np.testing.assert_allclose(losses_r, losses, rtol=1e-12)
    for a, b in zip(jax.tree.leaves(grad_r), jax.tree.leaves(grad)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


@functools.cache  # The unroll at once, for every chunk size of the same order: computed once.
def unroll_in_chunks(tasks_per_chunk, first_order):
    """``meta_value_and_grad`` on 6 tasks in chunks of ``tasks_per_chunk`` (None: at once), compiled as one program."""
    optimizer, family, phi, inner = quadratic_setup("fused", batch=6)

    @jax.jit
    def run(phi, inner):
        return meta_value_and_grad(
            phi, optimizer, family, inner, 7, first_order=first_order, tasks_per_chunk=tasks_per_chunk
        )

    (loss, (after, losses)), grad = run(phi, inner)
    return loss, losses, after._replace(key=jax.random.key_data(after.key)), grad


@pytest.mark.parametrize("tasks_per_chunk", [1, 2, 3])
@pytest.mark.parametrize("first_order", [True, False])
def test_unrolling_the_batch_in_chunks_equals_unrolling_it_at_once(tasks_per_chunk, first_order):
    at_once, chunked = unroll_in_chunks(None, first_order), unroll_in_chunks(tasks_per_chunk, first_order)
    # Same tasks in the same order afterwards (the next truncation continues each one).
    assert jax.tree.structure(chunked) == jax.tree.structure(at_once)
    for a, b in zip(jax.tree.leaves(chunked), jax.tree.leaves(at_once)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    assert not np.allclose(at_once[1][0], at_once[1][1])  # the tasks differ, so the order is checked


@pytest.mark.parametrize("bad", [0, 4, -2, 2.0, True])
def test_a_chunk_size_that_does_not_divide_the_batch_is_refused(bad):
    optimizer, family, phi, inner = quadratic_setup("fused", batch=6)
    with pytest.raises(ConfigError, match="tasks_per_chunk"):
        meta_value_and_grad(phi, optimizer, family, inner, 3, tasks_per_chunk=bad)


def test_segment_length_is_the_divisor_nearest_the_square_root():
    assert segment_length(1000) == 25  # 40 segments of 25 steps (√1000 ≈ 31.6)
    assert segment_length(100) == 10
    assert segment_length(20) == 4
    assert segment_length(7) == 1  # a prime: one step per segment
    assert all(n % segment_length(n) == 0 for n in range(1, 200))


# One block; a whole number of blocks; a last block overlapping the one before by 3,
# and by 9 (of 10).
# With only_on, the blocks or the whole call are chosen when lowering: "cpu" takes the
# blocks here, "tpu" (any platform this is not lowered for) the whole call.
@pytest.mark.parametrize("only_on", [None, "cpu", "tpu"])
@pytest.mark.parametrize("n", [10, 30, 37, 11])
def test_the_step_in_blocks_of_coordinates_equals_one_call(n, only_on):
    weights, x, h, c = random_cell(jax.random.key(5), n=n)
    blocked = in_blocks(lstm_step_fused, 10, only_on=only_on)
    whole, vjp_whole = jax.vjp(lstm_step_fused, weights, x, h, c)
    parts, vjp_parts = jax.jit(lambda *args: jax.vjp(blocked, *args))(weights, x, h, c)
    for a, b in zip(parts, whole):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    cotangents = tuple(jax.random.normal(jax.random.key(i), a.shape, a.dtype) for i, a in enumerate(whole))
    for a, b in zip(jax.tree.leaves(vjp_parts(cotangents)), jax.tree.leaves(vjp_whole(cotangents))):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def leaf_shaped(cell, shape):
    """The cell's flat coordinates laid out as a leaf of ``shape``."""
    weights, *coords = cell
    return (weights, *(a.reshape(*a.shape[:-1], *shape) for a in coords))


# A matrix of 3 rows per block (its last block overlapping), one of 1 row per block (rows
# longer than a block), a 3-D leaf, and a leaf of one long row (taken in one call).
@pytest.mark.parametrize("shape", [(11, 3), (4, 13), (5, 2, 3), (1, 37)])
@pytest.mark.parametrize("step", [lstm_step_reference, lstm_step_fused])
def test_a_step_on_a_leaf_of_any_shape_equals_the_step_on_its_flat_coordinates(shape, step):
    # No coordinate axis is reshaped (so a sharded axis stays sharded): the same numbers,
    # forward and backward, in one call and in blocks along the leaf's first axis.
    flat = random_cell(jax.random.key(5), n=math.prod(shape))
    shaped = leaf_shaped(flat, shape)
    whole, vjp_whole = jax.vjp(step, *flat)
    cotangents = tuple(jax.random.normal(jax.random.key(i), a.shape, a.dtype) for i, a in enumerate(whole))
    want_grads = jax.tree.leaves(leaf_shaped(vjp_whole(cotangents), shape))
    for fn in (step, in_blocks(step, 10)):
        outs, vjp = jax.jit(lambda *args, fn=fn: jax.vjp(fn, *args))(*shaped)
        for a, b in zip(outs, whole):
            assert a.shape == b.shape[:-1] + shape
            np.testing.assert_allclose(a.reshape(b.shape), b, rtol=1e-12, atol=1e-14)
        shaped_cotangents = tuple(t.reshape(o.shape) for t, o in zip(cotangents, outs))
        for a, b in zip(jax.tree.leaves(vjp(shaped_cotangents)), want_grads):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n", [30, 37])
def test_the_masked_step_in_blocks_equals_one_call(n):
    weights, x, h, c = random_cell(jax.random.key(5), n=n)
    keep = keep_mask(n)
    step = masked(lstm_step_fused)
    blocked = in_blocks(step, 10, only_on="cpu")
    whole, vjp_whole = jax.vjp(lambda *a: step(*a, keep), weights, x, h, c)
    parts, vjp_parts = jax.jit(lambda *args: jax.vjp(lambda *a: blocked(*a, keep), *args))(weights, x, h, c)
    for a, b in zip(parts, whole):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    cotangents = tuple(jax.random.normal(jax.random.key(i), a.shape, a.dtype) for i, a in enumerate(whole))
    for a, b in zip(jax.tree.leaves(vjp_parts(cotangents)), jax.tree.leaves(vjp_whole(cotangents))):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_a_meta_gradient_through_a_nan_gradient_coordinate_is_the_reference_one():
    # The masked coordinate is skipped by every implementation; its meta-gradient
    # contribution is zero, not NaN, and the rest is the reference's.
    grad = jax.random.normal(jax.random.key(6), (5, 7)).at[2, 3].set(jnp.nan).at[0, 0].set(-jnp.inf)
    phi = lstm(hidden_size=6).init(jax.random.key(0))

    def two_updates(phi, impl):
        tx = lstm(hidden_size=6, implementation=impl).as_optax(phi)
        first, state = tx.update(grad, tx.init(grad))
        second, _ = tx.update(jnp.where(jnp.isfinite(grad), grad * 0.5, 1.0) + first, state)
        return jnp.sum(jnp.sin(first) + second**2)

    meta_grads = {
        impl: jax.jit(jax.grad(two_updates), static_argnums=1)(phi, impl) for impl in ("reference", "fused", "pallas")
    }
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(meta_grads["reference"]))
    for impl in ("fused", "pallas"):
        for a, b in zip(jax.tree.leaves(meta_grads["reference"]), jax.tree.leaves(meta_grads[impl])):
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)


def test_the_step_in_blocks_vmaps_over_tasks_like_one_call():
    # Meta-training vmaps the step over a batch of tasks; so blocks must batch.
    cells = [random_cell(jax.random.key(k), n=37) for k in range(3)]
    weights = cells[0][0]
    x, h, c = (jnp.stack([cell[i] for cell in cells]) for i in (1, 2, 3))
    blocked = jax.vmap(in_blocks(lstm_step_fused, 10), in_axes=(None, 0, 0, 0))
    whole = jax.vmap(lstm_step_fused, in_axes=(None, 0, 0, 0))
    for fn_out, ref_out in zip(jax.jit(blocked)(weights, x, h, c), whole(weights, x, h, c)):
        np.testing.assert_allclose(fn_out, ref_out, rtol=1e-12, atol=1e-14)

    def loss(step, weights, x, h, c):
        out, new_h, new_c = step(weights, x, h, c)
        return jnp.sum(out**2) + jnp.sum(jnp.tanh(new_h)) + jnp.sum(new_c * 0.3)

    argnums = (1, 2, 3, 4)  # weights, x, h, c
    grads_blocked = jax.jit(jax.grad(loss, argnums), static_argnums=0)(blocked, weights, x, h, c)
    grads_whole = jax.grad(loss, argnums)(whole, weights, x, h, c)
    for a, b in zip(jax.tree.leaves(grads_blocked), jax.tree.leaves(grads_whole)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the fused step runs in blocks on a CPU only")
def test_a_leaf_larger_than_a_cpu_block_gets_the_reference_update():
    grad = {"big": jax.random.normal(jax.random.key(4), (CPU_BLOCK * 2 + 123,)), "small": jnp.ones((3, 2))}
    phi = lstm().init(jax.random.key(0))
    out = {}
    for impl in ("reference", "fused"):
        tx = lstm(implementation=impl).as_optax(phi)
        update = jax.jit(tx.update)
        _, state = update(grad, tx.init(grad))
        out[impl] = update(grad, state)
    for a, b in zip(jax.tree.leaves(out["reference"]), jax.tree.leaves(out["fused"])):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the fused step runs in blocks on a CPU only")
def test_a_meta_gradient_through_a_leaf_larger_than_a_cpu_block_is_the_reference_one():
    grad = jax.random.normal(jax.random.key(6), (CPU_BLOCK * 2 + 123,))
    phi = lstm().init(jax.random.key(0))

    def two_updates(phi, impl):
        tx = lstm(implementation=impl).as_optax(phi)
        first, state = tx.update(grad, tx.init(grad))
        second, _ = tx.update(grad * 0.5 + first, state)
        return jnp.sum(jnp.sin(first) + second**2)

    meta_grads = {impl: jax.jit(jax.grad(two_updates), static_argnums=1)(phi, impl) for impl in ("reference", "fused")}
    for a, b in zip(jax.tree.leaves(meta_grads["reference"]), jax.tree.leaves(meta_grads["fused"])):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_the_lstm_drop_in_gives_the_same_updates_with_either_implementation():
    params = {"w": jax.random.normal(jax.random.key(3), (4, 3)), "b": jnp.zeros(3)}
    # A narrow LSTM keeps the interpreted kernel quick to compile.
    phi = lstm(hidden_size=6).init(jax.random.key(0))
    out = {}
    for impl in ("reference", "fused", "pallas", "auto"):
        tx = lstm(hidden_size=6, implementation=impl).as_optax(phi)
        state = tx.init(params)
        update = jax.jit(tx.update)
        for _ in range(3):
            updates, state = update(params, state)
        out[impl] = (updates, state)
    for impl in ("fused", "pallas", "auto"):
        for a, b in zip(jax.tree.leaves(out["reference"]), jax.tree.leaves(out[impl])):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_a_leaf_past_int32_coordinates_goes_through_in_one_call_not_in_blocks():
    # Block offsets are int32: such a leaf (traced only, never allocated) is not cut into blocks.
    weights, x, h, c = random_cell(jax.random.key(0), hidden=3)
    n = 2**31 + 5
    shapes = [jax.ShapeDtypeStruct((*a.shape[:-1], n), a.dtype) for a in (x, h, c)]
    jaxpr = jax.make_jaxpr(in_blocks(lstm_step_fused, CPU_BLOCK))(weights, *shapes)
    assert "while" not in str(jaxpr)
    assert [v.aval.shape for v in jaxpr.jaxpr.outvars] == [(n,), h.shape[:-1] + (n,), c.shape[:-1] + (n,)]
