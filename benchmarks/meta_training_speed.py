"""Meta-training throughput and memory on the paper's MNIST configuration.

The configuration of the paper (coordinatewise 2x20 LSTM, log/sign preprocessing,
MLP 784-20-10 with batch 128, 20-step truncations, first order, Adam on φ), with B
optimizees per meta-step, as one jitted meta-step (``meta_value_and_grad`` + Adam,
buffers donated): the same computation as ``meta_train``'s step.

Throughput (default): for each LSTM implementation, B and rematerialisation setting,
prints seconds per meta-step (median after warm-up), optimizee steps/s (B x 20 per
meta-step), compile time and the compiled program's memory (arguments + outputs +
temporaries, from XLA's memory analysis; on GPU also the device's peak).

Memory (``--memory``): untruncated BPTT over whole runs of T = 20, 100, 1000 steps at
``--memory-batch`` tasks (default 64); compiles only, and prints the memory of the
compiled meta-gradient without, with per-step, and with √T-segment rematerialisation.

    python benchmarks/meta_training_speed.py                 # CPU: B = 1, 4
    python benchmarks/meta_training_speed.py --memory
    python benchmarks/meta_training_speed.py --batch-sizes 1 16 64 256   # on a GPU

Results go to ``benchmarks/results/meta_training_speed_<platform>.json``
(``--out`` to change).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from l2l_jax import tasks
from l2l_jax.meta import init_inner, meta_value_and_grad
from l2l_jax.optimizers import lstm

RESULTS = Path(__file__).parent / "results"
TRUNCATION = 20


def describe_machine() -> str:
    dev = jax.devices()[0]
    return f"{platform.machine()}, {dev.platform}: {dev.device_kind}, {os.cpu_count()} CPU cores, jax {jax.__version__}"


def compiled_memory(compiled: Any) -> int | None:
    """Arguments + outputs + temporaries of a compiled program, in bytes (None if unknown)."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def meta_step_fn(implementation: str, remat: bool | str, num_steps: int):
    optimizer = lstm(implementation=implementation)
    family = tasks.get("mnist")
    meta_tx = optax.adam(1e-3)

    @functools.partial(jax.jit, donate_argnums=(1, 2))
    def step(phi, meta_state, inner):
        (loss, (inner, _)), grads = meta_value_and_grad(phi, optimizer, family, inner, num_steps, remat=remat)
        updates, meta_state = meta_tx.update(grads, meta_state, phi)
        return optax.apply_updates(phi, updates), meta_state, inner, loss

    def setup(batch_size: int):
        phi = optimizer.init(jax.random.key(0))
        inner = init_inner(optimizer, phi, family, jax.random.key(1), batch_size)
        return phi, meta_tx.init(phi), inner

    return step, setup


def throughput(implementation: str, batch_size: int, remat: bool, steps: int) -> dict[str, Any]:
    step, setup = meta_step_fn(implementation, remat, TRUNCATION)
    args = setup(batch_size)
    t0 = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    phi, meta_state, inner = args
    seconds = []
    for _ in range(steps):
        t0 = time.perf_counter()
        phi, meta_state, inner, loss = compiled(phi, meta_state, inner)
        loss.block_until_ready()
        seconds.append(time.perf_counter() - t0)
    per_step = float(np.median(seconds[1:]))
    row = {
        "implementation": implementation,
        "batch_size": batch_size,
        "remat": remat,
        "seconds_per_meta_step": per_step,
        "optimizee_steps_per_second": batch_size * TRUNCATION / per_step,
        "compile_seconds": compile_s,
        "compiled_memory_bytes": compiled_memory(compiled),
        "meta_loss_finite": bool(np.isfinite(float(loss))),
    }
    stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        row["device_peak_bytes_so_far"] = int(stats["peak_bytes_in_use"])
    return row


def memory(horizon: int, batch_size: int, remat: bool | str) -> dict[str, Any]:
    step, setup = meta_step_fn("fused", remat, horizon)
    args = jax.eval_shape(lambda: setup(batch_size))
    t0 = time.perf_counter()
    compiled = step.lower(*args).compile()
    return {
        "horizon": horizon,
        "batch_size": batch_size,
        "remat": remat,
        "compiled_memory_bytes": compiled_memory(compiled),
        "compile_seconds": time.perf_counter() - t0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--implementations", nargs="+", default=["reference", "fused"])
    parser.add_argument("--steps", type=int, default=8, help="timed meta-steps per setting (after the compile)")
    parser.add_argument("--memory", action="store_true", help="memory against unroll length instead of throughput")
    parser.add_argument("--memory-batch", type=int, default=64)
    parser.add_argument("--horizons", type=int, nargs="+", default=[20, 100, 1000])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    machine = describe_machine()
    print(machine, flush=True)
    kind = "memory" if args.memory else "throughput"
    out = (
        args.out or RESULTS / f"meta_training_speed_{jax.devices()[0].platform}{'_memory' if args.memory else ''}.json"
    )
    rows = []
    if args.memory:
        for remat in (False, True, "segments"):
            for horizon in args.horizons:
                r = memory(horizon, args.memory_batch, remat)
                rows.append(r)
                print(
                    f"T={horizon:5d} B={r['batch_size']} remat={remat!s:8s} "
                    f"{r['compiled_memory_bytes'] / 2**30:8.2f} GiB  (compile {r['compile_seconds']:.1f} s)",
                    flush=True,
                )
    else:
        for impl in args.implementations:
            for b in args.batch_sizes:
                for remat in (False, True):
                    r = throughput(impl, b, remat, args.steps)
                    rows.append(r)
                    mem = r["compiled_memory_bytes"]
                    print(
                        f"{impl:9s} B={b:4d} remat={remat!s:5s} {r['seconds_per_meta_step'] * 1e3:8.1f} ms/meta-step "
                        f"{r['optimizee_steps_per_second']:10.1f} optimizee steps/s  compile {r['compile_seconds']:.1f} s  "
                        f"memory {mem / 2**20 if mem else float('nan'):.0f} MiB",
                        flush=True,
                    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "kind": kind, "truncation": TRUNCATION, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
