"""The GPU programs lower for CUDA, checked on a machine without a GPU.

No machine that built this library had a GPU. So the programs that the README's GPU
runbook runs are lowered here for the ``cuda`` platform with :func:`jax.export.export`,
at the shapes the benchmarks use (abstract arrays, nothing is allocated):

* the Pallas kernel;
* the drop-in update;
* ``benchmarks/meta_training_speed.py``'s meta-step at B = 256 and its 1000-step
  memory program;
* ``benchmarks/update_speed.py --fit 1e8``'s training step.

A pass means they trace and lower, the Triton kernel included, with the kernel where
it belongs. It does not mean they compile or run: that, and their speed and memory,
need a GPU.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.export import DisabledSafetyCheck

from l2l_jax.optimizers import lstm
from l2l_jax.optimizers.lstm_cell import CPU_BLOCK, CellWeights
from l2l_jax.optimizers.lstm_pallas import NUM_WARPS, lstm_step_pallas

#: The custom call of a Pallas kernel lowered with Triton.
TRITON = "__gpu$xla.gpu.triton"
BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
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


def benchmark(name: str) -> ModuleType:
    """A script of ``benchmarks/`` as a module (they import each other by name)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        return importlib.import_module(name)


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
    update_speed = benchmark("update_speed")
    # The benchmark's transformer tree at its default --transformer 256,4,8192 (5.2M parameters, 26 leaves).
    shapes = update_speed.transformer_tree(d=256, layers=4, vocab=8192)
    params = jax.eval_shape(lambda: update_speed.make_params(shapes, jax.random.key(0)))
    optimizer = lstm(implementation="pallas")
    tx = optimizer.as_optax(optimizer.init(jax.random.key(0)))
    state = jax.eval_shape(tx.init, params)

    @jax.jit
    def update(grads, state, params):
        return tx.update(grads, state, params)

    calls = kernel_calls(lower_for_cuda(update, params, state, params))
    assert len(calls) == len(jax.tree.leaves(params)) == 26


def test_the_100m_parameter_training_step_of_the_runbook_lowers_for_cuda():
    update_speed = benchmark("update_speed")
    from l2l_jax.tasks.mnist import cross_entropy

    model = update_speed.DeepMLP(update_speed.fit_width(1e8, 6), 6)
    x = jnp.zeros((128, model.width))
    y = jnp.zeros((128,), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    assert sum(p.size for p in jax.tree.leaves(params)) > 0.99e8
    optimizer = lstm(implementation="pallas")
    tx = optimizer.as_optax(optimizer.init(jax.random.key(0)))
    step = update_speed.train_step(model, tx, x, y, cross_entropy)
    module = lower_for_cuda(step, params, jax.eval_shape(tx.init, params))
    assert len(kernel_calls(module)) == len(jax.tree.leaves(params))
    # Parameters and state donated: the runbook's 100M fit relies on updating them in place.
    assert module.count("tf.aliasing_output") >= 2 * len(jax.tree.leaves(params))


@pytest.mark.parametrize("implementation", ["reference", "fused", "pallas"])
def test_the_benchmark_meta_step_at_256_tasks_lowers_for_cuda(implementation):
    meta_training_speed = benchmark("meta_training_speed")
    step, setup = meta_training_speed.meta_step_fn(
        implementation, False, meta_training_speed.TRUNCATION, data_dir=MNIST_FIXTURE
    )
    args = jax.eval_shape(lambda: setup(256))
    calls = kernel_calls(lower_for_cuda(step, *args))
    # The kernel once per leaf of the MLP 784-20-10, in the unroll's step; its backward is plain XLA.
    assert len(calls) == (4 if implementation == "pallas" else 0)


def test_the_benchmark_1000_step_memory_program_lowers_for_cuda():
    meta_training_speed = benchmark("meta_training_speed")
    step, setup = meta_training_speed.meta_step_fn("fused", "segments", 1000, data_dir=MNIST_FIXTURE)
    module = lower_for_cuda(step, *jax.eval_shape(lambda: setup(64)))
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
