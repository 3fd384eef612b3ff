"""Meta-training throughput and memory on the paper's MNIST configuration.

The configuration of the paper (coordinatewise 2x20 LSTM, log/sign preprocessing,
MLP 784-20-10 with batch 128, 20-step truncations, first order, Adam on φ), with B
optimizees per meta-step, as one jitted meta-step (``meta_value_and_grad`` + Adam,
buffers donated): the same computation as ``meta_train``'s step.

Throughput (default): for each LSTM implementation, B, rematerialisation setting and
way of unrolling the batch (all B tasks at once, or ``--tasks-per-chunk`` tasks at a
time, one chunk after the other: ``meta_train``'s ``tasks_per_chunk``), prints
seconds per meta-step (median after warm-up), optimizee steps/s (B x 20 per
meta-step), compile time and the compiled program's memory (arguments + outputs +
temporaries, from XLA's memory analysis; on GPU also the device's peak).

Whole runs (``--meta-train``): ``meta_train`` itself (the host loop, new tasks every
100 inner steps, no validation) for ``--meta-steps`` meta-steps at each B, with
``--steps-per-call`` meta-steps per compiled call and B tasks at once or one at a time;
prints optimizee steps/s over the calls after the first (which compiles).

Memory (``--memory``): untruncated BPTT over whole runs of T = 20, 100, 1000 steps at
``--memory-batch`` tasks (default 64); compiles only, and prints the memory of the
compiled meta-gradient without, with per-step, and with √T-segment rematerialisation.

    python benchmarks/meta_training_speed.py                 # CPU: B = 1, 4, 16
    python benchmarks/meta_training_speed.py --memory
    python benchmarks/meta_training_speed.py --meta-train --batch-sizes 1 4 16
    python benchmarks/meta_training_speed.py --batch-sizes 1 16 64 256 --tasks-per-chunk all \
        --implementations reference fused pallas   # on a GPU

Results go to ``benchmarks/results/meta_training_speed_<platform>.json``
(``--out`` to change), rewritten after every setting so that a run cut short keeps
what it measured. A setting that runs out of device memory is recorded as such
(``"out_of_memory"``) and the run goes on.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
from collections.abc import Callable
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


def write_results(out: Path, results: dict[str, Any]) -> None:
    """Writes the results JSON whole (a temporary file, then a rename): never half a file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out)


def is_out_of_memory(error: Exception) -> bool:
    """Whether an XLA runtime error is the device running out of memory."""
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def measure_unless_out_of_memory(
    setting: dict[str, Any], measure: Callable[..., dict[str, Any]], *args: Any
) -> dict[str, Any]:
    """``measure(*args)``, or, if the device runs out of memory, ``setting`` with the error's first line.

    A benchmark sweeps settings up to the device's limits; the one that does not fit is
    a result, not the end of the run. Other errors propagate.
    """
    try:
        return measure(*args)
    except jax.errors.JaxRuntimeError as error:
        if not is_out_of_memory(error):
            raise
        return {**setting, "out_of_memory": str(error).strip().splitlines()[0][:500]}


def device_peak_bytes() -> int | None:
    """The device's peak memory in use so far in this process (None where the backend does not say)."""
    stats = jax.devices()[0].memory_stats()
    return None if not stats or "peak_bytes_in_use" not in stats else int(stats["peak_bytes_in_use"])


def compiled_memory(compiled: Any) -> int | None:
    """Arguments + outputs + temporaries of a compiled program, in bytes (None if unknown)."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def meta_step_fn(
    implementation: str,
    remat: bool | str,
    num_steps: int,
    tasks_per_chunk: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
):
    """The jitted meta-step and ``setup(batch_size) -> (phi, meta_state, inner)``; MNIST from ``data_dir``."""
    optimizer = lstm(implementation=implementation)
    family = tasks.get("mnist", data_dir=None if data_dir is None else str(data_dir))
    meta_tx = optax.adam(1e-3)

    @functools.partial(jax.jit, donate_argnums=(1, 2))
    def step(phi, meta_state, inner):
        (loss, (inner, _)), grads = meta_value_and_grad(
            phi, optimizer, family, inner, num_steps, remat=remat, tasks_per_chunk=tasks_per_chunk
        )
        updates, meta_state = meta_tx.update(grads, meta_state, phi)
        return optax.apply_updates(phi, updates), meta_state, inner, loss

    def setup(batch_size: int):
        phi = optimizer.init(jax.random.key(0))
        inner = init_inner(optimizer, phi, family, jax.random.key(1), batch_size)
        return phi, meta_tx.init(phi), inner

    return step, setup


def throughput(
    implementation: str,
    batch_size: int,
    remat: bool,
    steps: int,
    tasks_per_chunk: int | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    step, setup = meta_step_fn(implementation, remat, TRUNCATION, tasks_per_chunk, data_dir)
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
        "tasks_per_chunk": tasks_per_chunk,
        "seconds_per_meta_step": per_step,
        "optimizee_steps_per_second": batch_size * TRUNCATION / per_step,
        "compile_seconds": compile_s,
        "compiled_memory_bytes": compiled_memory(compiled),
        "meta_loss_finite": bool(np.isfinite(float(loss))),
    }
    peak = device_peak_bytes()
    if peak is not None:
        row["device_peak_bytes_so_far"] = peak
    return row


def memory(horizon: int, batch_size: int, remat: bool | str, data_dir: str | None = None) -> dict[str, Any]:
    step, setup = meta_step_fn("fused", remat, horizon, data_dir=data_dir)
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


def whole_run(
    batch_size: int, steps_per_call: int, tasks_per_chunk: int | None, meta_steps: int, data_dir: str | None = None
) -> dict[str, Any]:
    from l2l_jax.meta import MetaTrainConfig, meta_train

    config = MetaTrainConfig(
        task="mnist",
        task_options={} if data_dir is None else {"data_dir": data_dir},
        num_meta_steps=meta_steps,
        horizon=100,
        truncation=TRUNCATION,
        batch_size=batch_size,
        tasks_per_chunk=tasks_per_chunk,
        validate_every=0,
        checkpoint_every=meta_steps,
    )
    t0 = time.perf_counter()
    result = meta_train(config, progress=False, steps_per_call=steps_per_call)
    wall = time.perf_counter() - t0
    timed = result.history[steps_per_call:]  # After the first call, which compiles.
    seconds = sum(r["seconds"] for r in timed)
    return {
        "mode": "meta_train",
        "implementation": "auto",
        "batch_size": batch_size,
        "remat": False,
        "tasks_per_chunk": tasks_per_chunk,
        "steps_per_call": steps_per_call,
        "meta_steps": meta_steps,
        "timed_meta_steps": len(timed),
        "seconds_per_meta_step": seconds / len(timed),
        "optimizee_steps_per_second": batch_size * TRUNCATION * len(timed) / seconds,
        "wall_seconds": wall,
        "meta_loss_finite": bool(np.isfinite(result.history[-1]["meta_loss"])),
    }


def effective_chunkings(chunkings: list[int | None], batch_size: int) -> list[int | None]:
    """The distinct ways to unroll B tasks: a chunk of B or more is all at once; one that does not divide B is skipped."""
    out: list[int | None] = []
    for c in chunkings:
        c = None if c is None or c >= batch_size else c
        if (c is None or batch_size % c == 0) and c not in out:
            out.append(c)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--tasks-per-chunk",
        nargs="+",
        default=["all", "1"],
        help="'all' (one vmap over the batch) and/or chunk sizes; a size >= B counts as 'all', one not dividing B is skipped",
    )
    parser.add_argument("--implementations", nargs="+", default=["reference", "fused"])
    parser.add_argument("--steps", type=int, default=8, help="timed meta-steps per setting (after the compile)")
    parser.add_argument("--memory", action="store_true", help="memory against unroll length instead of throughput")
    parser.add_argument("--memory-batch", type=int, default=64)
    parser.add_argument("--horizons", type=int, nargs="+", default=[20, 100, 1000])
    parser.add_argument("--meta-train", action="store_true", help="time whole meta_train runs instead")
    parser.add_argument("--meta-steps", type=int, default=40, help="meta-steps per whole run (--meta-train)")
    parser.add_argument("--steps-per-call", type=int, nargs="+", default=[1, 4], help="for --meta-train")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder holding the MNIST files (default: $L2L_JAX_DATA_DIR, else the user cache directory)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    machine = describe_machine()
    print(machine, flush=True)
    kind = "memory" if args.memory else "meta_train" if args.meta_train else "throughput"
    suffix = {"memory": "_memory", "meta_train": "_meta_train", "throughput": ""}[kind]
    out = args.out or RESULTS / f"meta_training_speed_{jax.devices()[0].platform}{suffix}.json"
    rows: list[dict[str, Any]] = []

    def record(label: str, row: dict[str, Any], describe: Callable[[dict[str, Any]], str]) -> None:
        rows.append(row)
        write_results(out, {"machine": machine, "kind": kind, "truncation": TRUNCATION, "rows": rows})
        print(f"{label} {'out of memory' if 'out_of_memory' in row else describe(row)}", flush=True)

    chunkings = [None if c == "all" else int(c) for c in args.tasks_per_chunk]
    if args.meta_train:
        for b in args.batch_sizes:
            for chunk in effective_chunkings(chunkings, b):
                for k in args.steps_per_call:
                    setting = {
                        "mode": "meta_train",
                        "implementation": "auto",
                        "batch_size": b,
                        "remat": False,
                        "tasks_per_chunk": chunk,
                        "steps_per_call": k,
                        "meta_steps": args.meta_steps,
                    }
                    r = measure_unless_out_of_memory(setting, whole_run, b, k, chunk, args.meta_steps, args.data_dir)
                    record(f"meta_train B={b:4d} chunk={chunk or 'all'!s:4s} steps/call={k:2d}", r, _whole_run_line)
    elif args.memory:
        for remat in (False, True, "segments"):
            for horizon in args.horizons:
                setting = {"horizon": horizon, "batch_size": args.memory_batch, "remat": remat}
                r = measure_unless_out_of_memory(setting, memory, horizon, args.memory_batch, remat, args.data_dir)
                record(f"T={horizon:5d} B={args.memory_batch} remat={remat!s:8s}", r, _memory_line)
    else:
        for impl in args.implementations:
            for b in args.batch_sizes:
                for chunk in effective_chunkings(chunkings, b):
                    for remat in (False, True):
                        setting = {"implementation": impl, "batch_size": b, "remat": remat, "tasks_per_chunk": chunk}
                        r = measure_unless_out_of_memory(
                            setting, throughput, impl, b, remat, args.steps, chunk, args.data_dir
                        )
                        record(
                            f"{impl:9s} B={b:4d} chunk={chunk or 'all'!s:4s} remat={remat!s:5s}", r, _throughput_line
                        )
    print(f"wrote {out}")


def _throughput_line(r: dict[str, Any]) -> str:
    mem = r["compiled_memory_bytes"]
    return (
        f"{r['seconds_per_meta_step'] * 1e3:8.1f} ms/meta-step "
        f"{r['optimizee_steps_per_second']:10.1f} optimizee steps/s  "
        f"compile {r['compile_seconds']:.1f} s  "
        f"memory {mem / 2**20 if mem else float('nan'):.0f} MiB"
    )


def _memory_line(r: dict[str, Any]) -> str:
    mem = r["compiled_memory_bytes"]
    return f"{mem / 2**30 if mem else float('nan'):8.2f} GiB  (compile {r['compile_seconds']:.1f} s)"


def _whole_run_line(r: dict[str, Any]) -> str:
    return (
        f"{r['seconds_per_meta_step'] * 1e3:8.1f} ms/meta-step "
        f"{r['optimizee_steps_per_second']:10.1f} optimizee steps/s  (wall {r['wall_seconds']:.0f} s)"
    )


if __name__ == "__main__":
    main()
