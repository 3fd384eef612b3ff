"""The GPU programs lower for CUDA, checked on a machine without a GPU.

The programs that the GPU benchmarks run are built here from the library and lowered
for the ``cuda`` platform with :func:`jax.export.export`, at the shapes the benchmarks
use (abstract arrays, nothing is allocated):

* the Pallas kernel;
* the drop-in update on ``benchmarks/update_speed.py``'s default transformer tree;
* ``benchmarks/meta_training_speed.py``'s meta-step at B = 256 and
  ``benchmarks/meta_training_memory.py``'s 1000-step program;
* ``benchmarks/fit_wide_mlp.py 1e8``'s training step.

A pass means they trace and lower, the Triton kernel included, with the kernel where
it belongs. It does not mean they compile or run: that, and their speed and memory,
need a GPU.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.export import DisabledSafetyCheck

from l2l_jax import tasks
from l2l_jax.meta import init_inner, meta_value_and_grad
from l2l_jax.optimizers import lstm
from l2l_jax.optimizers._lstm_cell import CPU_BLOCK, CellWeights
from l2l_jax.optimizers._lstm_pallas import NUM_WARPS, lstm_step_pallas
from l2l_jax.tasks.mnist import MLP, cross_entropy

#: The custom call of a Pallas kernel lowered with Triton.
TRITON = "__gpu$xla.gpu.triton"
#: MNIST pixels for the benchmark's task family (lowering needs only their shapes).
MNIST_FIXTURE = Path(__file__).parent / "fixtures" / "mnist"


def lower_for_cuda(fn, *args) -> str:
    """``fn`` (jitted) lowered for CUDA: its StableHLO text.

    Export refuses custom calls without a compatibility guarantee; the Triton call is
    the only one allowed here, so any other (e.g. a CPU-only library call) fails.
    """
    exported = jax.export.export(fn, platforms=["cuda"], disabled_checks=[DisabledSafetyCheck.custom_call(TRITON)])
    return exported(*args).mlir_module()


def kernel_calls(module: str) -> list[str]:
    """The lines of ``module`` that call a Triton kernel."""
    return [line for line in module.splitlines() if f"@{TRITON}(" in line]


def pallas_tx() -> optax.GradientTransformation:
    optimizer = lstm(implementation="pallas")
    return optimizer.as_optax(optimizer.init(jax.random.key(0)))


def meta_step(implementation: str, remat: bool | str, num_steps: int, batch_size: int):
    """The paper's MNIST meta-step (meta-gradient + Adam on φ, buffers donated) and its abstract inputs."""
    optimizer = lstm(implementation=implementation)
    family = tasks.get("mnist", data_dir=str(MNIST_FIXTURE))
    meta_tx = optax.adam(1e-3)

    @functools.partial(jax.jit, donate_argnums=(1, 2))
    def step(phi, meta_state, inner):
        (loss, (inner, _)), grads = meta_value_and_grad(phi, optimizer, family, inner, num_steps, remat=remat)
        updates, meta_state = meta_tx.update(grads, meta_state, phi)
        return optax.apply_updates(phi, updates), meta_state, inner, loss

    def inputs():
        phi = optimizer.init(jax.random.key(0))
        return phi, meta_tx.init(phi), init_inner(optimizer, phi, family, jax.random.key(1), batch_size)

    return step, jax.eval_shape(inputs)


def abstract_cell(n: int, state_dtype=jnp.float32, hidden: int = 20, layers: int = 2, features: int = 2):
    shape = jax.ShapeDtypeStruct
    w = tuple(shape((size + hidden, 4 * hidden), jnp.float32) for size in [features] + [hidden] * (layers - 1))
    b = tuple(shape((4 * hidden,), jnp.float32) for _ in range(layers))
    weights = CellWeights(w, b, shape((hidden,), jnp.float32), shape((), jnp.float32))
    state = shape((layers, hidden, n), state_dtype)
    return weights, shape((features, n), jnp.float32), state, state


@pytest.mark.parametrize("state_dtype", [jnp.float32, jnp.bfloat16])
def test_the_pallas_step_lowers_for_cuda_to_one_triton_kernel_that_updates_the_state_in_place(state_dtype):
    weights, x, h, c = abstract_cell(10_000_000, state_dtype)
    module = lower_for_cuda(jax.jit(lstm_step_pallas, donate_argnums=(2, 3)), weights, x, h, c)
    (call,) = kernel_calls(module)
    assert 'name = "coordinatewise_lstm_step"' in call
    assert f"num_warps = {NUM_WARPS} : i32" in call
    # New h and c (results 1, 2) overwrite the old (operands 1, 2) ...
    aliases = re.findall(r"output_tuple_indices = \[(\d)\], operand_index = (\d)", call)
    assert sorted(aliases) == [("1", "1"), ("2", "2")]
    # ... which the caller donated, in the state's own dtype (bfloat16: half the traffic).
    assert module.count("tf.aliasing_output") == 2
    state_type = "bf16" if state_dtype == jnp.bfloat16 else "f32"
    assert f"tensor<40x10000000x{state_type}>" in call
    # No interpreter: it would loop over the grid.
    assert "stablehlo.while" not in module


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks the CPU's lowering")
def test_on_a_cpu_the_same_step_is_interpreted_and_no_platform_conditional_is_left():
    weights, x, h, c = (jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), a) for a in abstract_cell(200))
    lowered = jax.jit(lstm_step_pallas).lower(weights, x, h, c)
    assert TRITON not in lowered.as_text()
    # The platform was chosen when lowering: no HLO conditional op is left to run.
    assert not re.search(r"\sconditional\(", lowered.compile().as_text())
    out, new_h, new_c = jax.jit(lstm_step_pallas)(weights, x, h, c)
    assert np.all(np.isfinite(out)) and new_h.shape == h.shape and new_c.shape == c.shape


def test_the_drop_in_update_lowers_for_cuda_with_one_kernel_per_leaf():
    # update_speed.py's transformer tree at its default --transformer 256,4,8192 (5.2M parameters, 26 leaves).
    d, vocab = 256, 8192
    block = {"qkv": (d, 3 * d), "proj": (d, d), "mlp_in": (d, 4 * d), "mlp_out": (4 * d, d), "norm_1": (d,),
             "norm_2": (d,)}  # fmt: skip
    shapes = {"embed": (vocab, d), "final_norm": (d,), **{f"block_{i}": block for i in range(4)}}
    params = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s, jnp.float32), shapes, is_leaf=lambda x: isinstance(x, tuple)
    )
    assert sum(p.size for p in jax.tree.leaves(params)) == 5_245_184
    tx = pallas_tx()
    state = jax.eval_shape(tx.init, params)

    @jax.jit
    def update(grads, state, params):
        return tx.update(grads, state, params)

    calls = kernel_calls(lower_for_cuda(update, params, state, params))
    assert len(calls) == len(jax.tree.leaves(params)) == 26


def test_the_100m_parameter_training_step_of_the_runbook_lowers_for_cuda():
    # fit_wide_mlp.py 1e8: 6 sigmoid layers of 4080 units, batch 128.
    model = MLP(hidden=(4080,) * 6, activation="sigmoid")
    x = jnp.zeros((128, 4080))
    y = jnp.zeros((128,), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    assert sum(p.size for p in jax.tree.leaves(params)) > 0.99e8
    tx = pallas_tx()

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state):
        loss, grads = jax.value_and_grad(lambda p: cross_entropy(model.apply({"params": p}, x), y))(params)
        updates, state = tx.update(grads, state, params, value=loss)
        return optax.apply_updates(params, updates), state, loss

    module = lower_for_cuda(step, params, jax.eval_shape(tx.init, params))
    assert len(kernel_calls(module)) == len(jax.tree.leaves(params))
    # Parameters and state donated: the runbook's 100M fit relies on updating them in place.
    assert module.count("tf.aliasing_output") >= 2 * len(jax.tree.leaves(params))


@pytest.mark.parametrize("implementation", ["reference", "fused", "pallas", "auto"])
def test_the_benchmark_meta_step_at_256_tasks_lowers_for_cuda(implementation):
    step, args = meta_step(implementation, False, 20, 256)
    calls = kernel_calls(lower_for_cuda(step, *args))
    # The kernel once per leaf of the MLP 784-20-10, in the unroll's step; its backward is plain XLA.
    # "auto" meta-trains with the fused step, the faster one there.
    assert len(calls) == (4 if implementation == "pallas" else 0)


@pytest.mark.parametrize("state_dtype", [None, "bfloat16"])
def test_auto_updates_with_the_kernel_on_a_gpu_in_place_and_with_the_fused_step_on_a_cpu(state_dtype):
    optimizer = lstm(state_dtype=state_dtype)  # implementation="auto"
    tx = optimizer.as_optax(optimizer.init(jax.random.key(0)))
    params = {"w": jax.ShapeDtypeStruct((1000, 30), jnp.float32), "b": jax.ShapeDtypeStruct((30,), jnp.float32)}
    update = jax.jit(tx.update, donate_argnums=(1,))
    state = jax.eval_shape(tx.init, params)
    on_gpu = lower_for_cuda(update, params, state, params)
    assert len(kernel_calls(on_gpu)) == 2
    # h and c of both leaves overwrite the donated state.
    assert on_gpu.count("tf.aliasing_output") == 4
    on_cpu = jax.export.export(update, platforms=["cpu"])(params, state, params).mlir_module()
    assert TRITON not in on_cpu


def test_the_benchmark_1000_step_memory_program_lowers_for_cuda():
    step, args = meta_step("fused", "segments", 1000, 64)
    module = lower_for_cuda(step, *args)
    assert "stablehlo.while" in module and not kernel_calls(module)


def test_the_fused_update_takes_a_large_leaf_in_blocks_on_a_cpu_and_whole_on_a_gpu():
    params = {"w": jax.ShapeDtypeStruct((3 * CPU_BLOCK + 5,), jnp.float32)}
    optimizer = lstm(implementation="fused")
    tx = optimizer.as_optax(optimizer.init(jax.random.key(0)))
    update = jax.jit(tx.update)
    state = jax.eval_shape(tx.init, params)
    # The blocks are a loop; chosen when lowering, for the platform lowered for.
    assert "stablehlo.while" not in lower_for_cuda(update, params, state, params)
    exported_for_cpu = jax.export.export(update, platforms=["cpu"])(params, state, params)
    assert "stablehlo.while" in exported_for_cpu.mlir_module()


def test_the_meta_gradient_through_a_large_leaf_has_the_block_loop_on_a_cpu_only():
    # The blocks' backward pass is chosen when lowering too (inside their custom_vjp).
    optimizer = lstm(implementation="fused")
    params = {"w": jnp.ones(3 * CPU_BLOCK + 5)}

    def loss_after_one_update(phi):
        tx = optimizer.as_optax(phi)
        updates, _ = tx.update(params, tx.init(params), params)
        return jnp.sum((params["w"] + updates["w"]) ** 2)

    meta_gradient = jax.jit(jax.grad(loss_after_one_update))
    phi = optimizer.init(jax.random.key(0))
    assert "stablehlo.while" not in lower_for_cuda(meta_gradient, phi)
    for_cpu = jax.export.export(meta_gradient, platforms=["cpu"])(phi).mlir_module()
    assert for_cpu.count("stablehlo.while") == 2  # the forward blocks and the backward blocks
