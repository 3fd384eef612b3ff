"""What XLA plans for the GPU programs on an H100, compiled on a machine without a GPU.

XLA can compile for a GPU it does not have, from a description of the device (a
deviceless compile), so this script compiles
the programs of the README's GPU runbook for an NVIDIA H100 80GB and prints what
XLA:GPU plans for them:

* memory: arguments + outputs - donated + temporaries, from the compiled program's
  memory analysis (``--sections memory``: meta-training against the unroll length;
  ``meta-step``: the meta-step per implementation and task batch B; ``update``: the
  drop-in update per size; ``fit``: the 100M-parameter training step);
* for the Pallas kernel (``kernel``): registers a thread and spills, as ptxas reports
  them when XLA compiles it, and so how many of its programs fit on one SM at once.

It is a plan, not a measurement. Nothing runs. Without a device, XLA does not autotune
(kernel choices and scratch sizes may differ from a compile on an H100), and the CUDA
context, the allocator's fragmentation and JAX's memory fraction come on top. JAX
preallocates 75% of the GPU by default: programs above ~59 GiB need
``XLA_PYTHON_CLIENT_MEM_FRACTION=.95``. Speed needs the GPU.

    pip install -e ".[gpu]"      # JAX's CUDA plugin; no GPU needed
    python benchmarks/gpu_plan.py

``--ptxas-log FILE --warps W`` instead reads a log of ptxas' ``-v`` report (XLA's log
with ``TF_CPP_VMODULE=subprocess_compilation=2``, from any compile, on a GPU or not)
and prints each kernel's registers and spills as JSON, with the programs of W warps
an H100 SM holds; it needs neither JAX nor its CUDA plugin.

Results go to ``benchmarks/results/gpu_plan_h100.json`` (``--out`` to change),
rewritten after every setting.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
SECTIONS = ("kernel", "update", "fit", "meta-step", "memory")

#: The H100 (SXM, 80 GB HBM3) as XLA describes it (``GpuTargetConfig``; the values of
#: XLA's own H100 spec, ``xla/tools/hlo_opt/gpu_specs``).
H100 = """
gpu_device_info {
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 84929347584
  shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 }
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 7 }
runtime_version { major: 12 minor: 8 patch: 0 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""
DEVICE_MEMORY_BYTES = 84929347584
REGISTERS_PER_SM = 65536
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32


def tiling(text: str) -> tuple[int, int]:
    """``"64x8"`` -> (64, 8): a power of 2 of at least 16 coordinates a program, and 1-32 warps."""
    try:
        block, warps = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not BLOCKxWARPS, e.g. 64x8") from None
    if block < 16 or block & (block - 1) or not 1 <= warps <= 32 or warps & (warps - 1):
        raise argparse.ArgumentTypeError(f"{text!r}: BLOCK must be a power of 2 >= 16, WARPS a power of 2 <= 32")
    return block, warps


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16, 64, 128, 256])
    parser.add_argument("--horizons", nargs="+", type=int, default=[20, 100, 1000])
    parser.add_argument("--memory-batch", type=int, default=64)
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7, 3e7, 1e8])
    parser.add_argument("--fit", type=float, default=1e8, help="parameters of the --fit training step")
    parser.add_argument(
        "--kernel-tilings",
        nargs="+",
        type=tiling,
        default=[(b, w) for b in (16, 32, 64, 128) for w in (2, 4, 8)],
        metavar="BLOCKxWARPS",
        help="Pallas kernel tilings to compile: coordinates a program x warps (default: 16..128 x 2, 4, 8)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_plan_h100.json")
    parser.add_argument("--ptxas-log", type=Path, default=None, help="read this ptxas log instead of compiling")
    parser.add_argument("--warps", type=int, default=None, help="warps a program, for --ptxas-log's programs per SM")
    args = parser.parse_args()
    if (args.ptxas_log is None) != (args.warps is None):
        parser.error("--ptxas-log and --warps go together")
    if args.warps is not None and not 1 <= args.warps <= MAX_WARPS_PER_SM:
        parser.error(f"--warps must be between 1 and {MAX_WARPS_PER_SM}")
    for name in ("batch_sizes", "horizons", "sizes"):
        if any(v < 1 for v in getattr(args, name)):
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.memory_batch < 1 or args.fit < 1:
        parser.error("--memory-batch and --fit must be positive")
    return args


def main() -> None:
    args = parse_args()
    if args.ptxas_log is not None:
        report = ptxas_report(args.ptxas_log.read_text())
        for kernel in report.values():
            kernel["programs_per_sm"] = programs_per_sm(kernel["registers"], args.warps)
        print(json.dumps(report, indent=1))
        return
    # Before JAX loads: the CUDA plugin must not look for a device (there is none),
    # and XLA's log must carry ptxas's register report.
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    os.environ["TF_CPP_VMODULE"] = "subprocess_compilation=2"
    import harness
    import jax

    try:
        from jax.experimental import topologies

        topology = topologies.get_topology_desc(platform="cuda", target_config=H100, topology="1x1x1")
    except Exception as error:  # noqa: BLE001 - any failure here means: no CUDA plugin to compile with
        sys.exit(
            f"gpu_plan.py compiles with JAX's CUDA plugin, which did not load ({type(error).__name__}: "
            f'{str(error).splitlines()[0] if str(error) else ""}). Install it with: pip install -e ".[gpu]"'
        )
    planner = Planner(jax.sharding.Mesh(topology.devices, ("d",)))
    results = harness.Results(
        args.out,
        device="NVIDIA H100 80GB HBM3 (deviceless compile: a plan, nothing ran)",
        compiled_on=harness.describe_machine(),
        device_memory_bytes=DEVICE_MEMORY_BYTES,
        command=harness.command(),
    )

    def save(section: str) -> Callable[[dict], None]:
        add = results.section(section)

        def on_row(row: dict) -> None:
            add(row)
            print(_line(section, row), flush=True)

        return on_row

    print(results.data["device"], "| compiled on", results.data["compiled_on"], flush=True)
    sections = {
        "kernel": lambda: kernel_rows(planner, args.kernel_tilings, save("kernel")),
        "update": lambda: update_rows(planner, args.sizes, save("update")),
        "fit": lambda: fit_rows(planner, args.fit, save("fit")),
        "meta-step": lambda: meta_step_rows(planner, args.batch_sizes, save("meta_step")),
        "memory": lambda: memory_rows(planner, args.horizons, args.memory_batch, save("memory")),
    }
    for name in args.sections:
        sections[name]()
    results.finish()


class Planner:
    """Compiles jitted functions for the compile-only H100 and reads their plans."""

    def __init__(self, mesh: Any) -> None:
        import jax

        self.sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def abstract(self, tree: Any) -> Any:
        """``tree``'s arrays (or shapes) as abstract arrays placed on the H100."""
        import jax

        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.sharding), tree)

    def compile(self, jitted: Any, *args: Any, registers: bool = False) -> dict[str, Any]:
        """``jitted`` compiled for the H100 at ``args``' shapes: planned bytes, compile time.

        With ``registers``, also each kernel's registers and spills (ptxas' report in
        XLA's log, read from stderr while compiling).
        """
        import jax

        t0 = time.perf_counter()
        lowered = jitted.trace(*self.abstract(args)).lower(lowering_platforms=("cuda",))
        try:
            return self._plan(lowered, {}, registers, t0)
        except jax.errors.JaxRuntimeError as error:
            # A program XLA:GPU cannot compile is a finding, not the end of the run.
            # Without a device XLA does not autotune its Triton matrix products, and
            # some then fail to tile (the fused update on a 4080 x 4080 leaf); with
            # cuBLAS for them instead the program compiles: record both.
            row = {"compile_error": str(error).strip().splitlines()[0][:500]}
        try:
            plan = self._plan(lowered, {"xla_gpu_enable_triton_gemm": False}, registers, t0)
        except jax.errors.JaxRuntimeError:
            return row
        return {**row, **plan, "compiler_options": "xla_gpu_enable_triton_gemm=false"}

    @staticmethod
    def _plan(lowered: Any, options: dict[str, Any], registers: bool, t0: float) -> dict[str, Any]:
        if registers:
            with captured_stderr() as log:
                compiled = lowered.compile(compiler_options=options)
        else:
            compiled = lowered.compile(compiler_options=options)
        import harness

        m = compiled.memory_analysis()
        planned = harness.compiled_memory(compiled)
        plan = {
            "planned_bytes": planned,
            "temp_bytes": int(m.temp_size_in_bytes),
            "argument_bytes": int(m.argument_size_in_bytes),
            "donated_bytes": int(m.alias_size_in_bytes),
            "fits_in_device_memory": bool(planned < DEVICE_MEMORY_BYTES),
            "compile_seconds": time.perf_counter() - t0,
        }
        return {**plan, "kernels": ptxas_report(log.text)} if registers else plan


class _Log:
    text = ""


@contextmanager
def captured_stderr() -> Iterator[_Log]:
    """What the process (XLA's C++ included) writes to stderr meanwhile, in ``.text``.

    If the block raises, what it wrote goes back to stderr: an error's context is not lost.
    """
    log = _Log()
    sys.stderr.flush()
    saved = os.dup(2)
    failed = False
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield log
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            log.text = tmp.read().decode(errors="replace")
            if failed:
                sys.stderr.write(log.text)


def ptxas_report(log: str) -> dict[str, dict[str, int]]:
    """Per kernel: registers a thread, spill stores and loads (bytes), from ptxas' ``-v`` lines in XLA's log."""
    kernels = {}
    pattern = (
        r"Function properties for (\S+)\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores, "
        r"(\d+) bytes spill loads\n.*?Used (\d+) registers"
    )
    for m in re.finditer(pattern, log, re.DOTALL):
        kernels[m[1]] = {"registers": int(m[5]), "spill_store_bytes": int(m[3]), "spill_load_bytes": int(m[4])}
    return kernels


def programs_per_sm(registers: int, warps: int) -> int:
    """Programs (thread blocks) of ``warps`` warps resident on one H100 SM, as registers and warps allow.

    As NVIDIA's occupancy calculator counts for compute capability 9.0: registers are
    allocated per warp in units of 256, from one of the SM's 4 partitions of 16,384;
    at most 64 warps and 32 blocks an SM. (Shared memory, 8 KiB a program here, does
    not bind.)
    """
    per_warp = -(-registers * 32 // 256) * 256
    warps_by_registers = 4 * ((REGISTERS_PER_SM // 4) // per_warp)
    return min(warps_by_registers // warps, MAX_WARPS_PER_SM // warps, MAX_BLOCKS_PER_SM)


def kernel_rows(planner: Planner, tilings: list[tuple[int, int]], on_row: Callable[[dict], None]) -> None:
    """The Pallas kernel at 10M coordinates for each tiling (coordinates a program x warps), both state dtypes."""
    import jax
    import jax.numpy as jnp

    from l2l_jax.optimizers._lstm_cell import CellWeights
    from l2l_jax.optimizers._lstm_pallas import BLOCK, NUM_WARPS, kernel_call

    n, hidden = 10_000_000, 20
    weights = CellWeights(
        w=(jnp.zeros((2 + hidden, 4 * hidden)), jnp.zeros((2 * hidden, 4 * hidden))),
        b=(jnp.zeros(4 * hidden), jnp.zeros(4 * hidden)),
        w_out=jnp.zeros(hidden),
        b_out=jnp.zeros(()),
    )
    x = jax.ShapeDtypeStruct((2, n), jnp.float32)
    for state_dtype in ("float32", "bfloat16"):
        state = jax.ShapeDtypeStruct((2, hidden, n), jnp.dtype(state_dtype))
        for block, warps in tilings:
            step = jax.jit(
                lambda w, x, h, c, block=block, warps=warps: kernel_call(
                    w, x, h, c, interpret=False, block=block, num_warps=warps
                ),
                donate_argnums=(2, 3),
            )
            setting = {"parameters": n, "state_dtype": state_dtype, "block": block, "warps": warps,
                       "default": (block, warps) == (BLOCK, NUM_WARPS)}  # fmt: skip
            plan = planner.compile(step, weights, x, state, state, registers=True)
            row = {**setting, **plan}
            kernel = plan.get("kernels", {}).get("coordinatewise_lstm_step")
            if kernel is not None:
                row["programs_per_sm"] = programs_per_sm(kernel["registers"], warps)
                row["warps_per_sm"] = row["programs_per_sm"] * warps
                row["coordinates_per_sm"] = row["programs_per_sm"] * block
            on_row(row)


def update_rows(planner: Planner, sizes: list[float], on_row: Callable[[dict], None]) -> None:
    """One donated update of a flat float32 vector per size: Adam, then each implementation and state dtype."""
    import harness
    import jax
    import jax.numpy as jnp
    import optax

    for size in sizes:
        n = int(size)
        params = {"w": jax.ShapeDtypeStruct((n,), jnp.float32)}
        configs = [("adam", None)] + [(i, d) for i in ("reference", "fused", "pallas") for d in ("float32", "bfloat16")]
        for impl, dtype in configs:
            if impl == "adam":
                tx, state_bytes = optax.adam(1e-3), 8
            else:
                tx, state_bytes = harness.learned(impl, dtype), harness.state_bytes_per_param(impl, dtype)
            state = jax.eval_shape(tx.init, params)
            plan = planner.compile(harness.donated_update(tx), params, state, params)
            on_row(
                {
                    "parameters": n,
                    "implementation": impl,
                    "state_dtype": dtype,
                    "minimal_bytes": harness.minimal_bytes(n, state_bytes),
                    **plan,
                }
            )


def fit_rows(planner: Planner, num_params: float, on_row: Callable[[dict], None]) -> None:
    """``fit_wide_mlp.py``'s training step (forward, backward, update) for Adam, fused and Pallas."""
    import harness
    import jax
    import jax.numpy as jnp

    depth = 6
    model = harness.fit_model(num_params, depth)
    width = model.hidden[0]
    x = jnp.zeros((128, width))
    y = jnp.zeros((128,), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    n = sum(p.size for p in jax.tree.leaves(params))
    configs = [("adam", None)] + [(i, d) for i in ("fused", "pallas") for d in ("float32", "bfloat16")]
    for impl, dtype in configs:
        tx = harness.fit_optimizer(impl, dtype, harness.FIT_SCALE_TIMES_WIDTH / width)
        step = harness.train_step(model, tx, x, y)
        plan = planner.compile(step, params, jax.eval_shape(tx.init, params))
        on_row({"model": f"MLP {width}x{depth} sigmoid", "parameters": n, "implementation": impl,
                "state_dtype": dtype, **plan})  # fmt: skip


def meta_step_rows(planner: Planner, batch_sizes: list[int], on_row: Callable[[dict], None]) -> None:
    """``meta_training_speed.py``'s meta-step per implementation, remat setting and task batch B."""
    import harness
    import jax

    for impl in ("reference", "fused", "pallas"):
        for remat in (False, True):
            step, setup = harness.meta_step_fn(impl, remat, harness.TRUNCATION)
            for b in batch_sizes:
                plan = planner.compile(step, *jax.eval_shape(functools.partial(setup, b)))
                on_row({"implementation": impl, "remat": remat, "batch_size": b, **plan})


def memory_rows(planner: Planner, horizons: list[int], batch_size: int, on_row: Callable[[dict], None]) -> None:
    """``meta_training_memory.py``: untruncated BPTT over ``horizons`` steps, per remat setting."""
    import harness
    import jax

    for remat in (False, True, "segments"):
        for horizon in horizons:
            step, setup = harness.meta_step_fn("fused", remat, horizon)
            plan = planner.compile(step, *jax.eval_shape(functools.partial(setup, batch_size)))
            on_row({"horizon": horizon, "batch_size": batch_size, "remat": remat, **plan})


def _line(section: str, row: dict) -> str:
    if "planned_bytes" not in row:
        setting = {k: v for k, v in row.items() if k != "compile_error"}
        return f"{section} {setting} did not compile: {row['compile_error']}"
    gib = row["planned_bytes"] / 2**30
    fits = "" if row["fits_in_device_memory"] else "  DOES NOT FIT"
    if "compile_error" in row:
        fits += f"  (only with {row['compiler_options']}; by default: {row['compile_error'][:100]})"
    if section == "kernel":
        k = row["kernels"].get("coordinatewise_lstm_step")
        regs = "no ptxas report" if k is None else (
            f"{k['registers']:3d} registers, spills {k['spill_store_bytes']:5d} B, "
            f"{row['programs_per_sm']:2d} program(s) = {row['warps_per_sm']:2d} warps, "
            f"{row['coordinates_per_sm']:4d} coordinates per SM"
        )  # fmt: skip
        tiling_name = f"{row['block']}x{row['warps']}" + (" (default)" if row["default"] else "")
        return f"kernel {row['state_dtype']:8s} {tiling_name:14s} {regs}, planned {gib:.2f} GiB"
    if section == "update":
        what = f"{row['implementation']} {row['state_dtype'] or ''}"
        return f"update {row['parameters'] / 1e6:6.0f}M {what:18s} planned {gib:7.2f} GiB{fits}"
    if section == "fit":
        what = f"{row['implementation']} {row['state_dtype'] or ''}"
        return f"fit {row['model']} ({row['parameters'] / 1e6:.1f}M) {what:18s} planned {gib:7.2f} GiB{fits}"
    if section == "meta_step":
        return (
            f"meta-step {row['implementation']:9s} remat={row['remat']!s:5s} B={row['batch_size']:4d} "
            f"planned {gib:7.2f} GiB{fits}"
        )
    return f"memory T={row['horizon']:5d} B={row['batch_size']} remat={row['remat']!s:8s} planned {gib:7.2f} GiB{fits}"


if __name__ == "__main__":
    main()
