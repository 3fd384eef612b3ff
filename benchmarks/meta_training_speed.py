"""How many optimizee steps per second does one meta-step of the paper's MNIST configuration run?

The configuration of the paper (coordinatewise 2x20 LSTM, log/sign preprocessing,
MLP 784-20-10 with batch 128, 20-step truncations, first order, Adam on φ), with B
optimizees per meta-step, as one jitted meta-step (``meta_value_and_grad`` + Adam,
buffers donated): the same computation as ``meta_train``'s step.

For each LSTM implementation, B, rematerialisation setting and way of unrolling the
batch (all B tasks at once, or ``--tasks-per-chunk`` tasks at a time, one chunk after
the other: ``meta_train``'s ``tasks_per_chunk``), prints seconds per meta-step (median
of ``--steps`` after one warm-up step), optimizee steps/s (B x 20 per meta-step),
compile time and the compiled program's memory (arguments + outputs + temporaries,
from XLA's memory analysis; on GPU also the device's peak).

    python benchmarks/meta_training_speed.py                 # CPU: B = 1, 4, 16
    python benchmarks/meta_training_speed.py --batch-sizes 1 16 64 256 --tasks-per-chunk all \
        --implementations reference fused pallas   # on a GPU

Results go to ``benchmarks/results/meta_training_speed_<platform>.json``
(``--out``), rewritten after every setting. A setting that runs out of device memory
is recorded as such (``"out_of_memory"``) and the run goes on.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import harness
import numpy as np


def throughput(
    implementation: str, batch_size: int, remat: bool, steps: int, tasks_per_chunk: int | None, data_dir: str | None
) -> dict[str, Any]:
    step, setup = harness.meta_step_fn(implementation, remat, harness.TRUNCATION, tasks_per_chunk, data_dir)
    args = setup(batch_size)
    t0 = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    per_step, (*_, loss) = harness.median_seconds(lambda c: compiled(*c[:3]), (*args, None), steps)
    row = {
        "seconds_per_meta_step": per_step,
        "optimizee_steps_per_second": batch_size * harness.TRUNCATION / per_step,
        "compile_seconds": compile_s,
        "compiled_memory_bytes": harness.compiled_memory(compiled),
        "meta_loss_finite": bool(np.isfinite(float(loss))),
    }
    peak = harness.device_peak_bytes()
    if peak is not None:
        row["device_peak_bytes_so_far"] = peak
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_batch_options(parser)
    harness.add_implementation_options(parser, state_dtypes=False)
    parser.add_argument(
        "--steps", type=harness.count, default=8, help="timed meta-steps per setting (after a warm-up step)"
    )
    args, results = harness.start(
        parser, "meta_training_speed_{platform}.json", kind="throughput", truncation=harness.TRUNCATION
    )
    on_row = results.section("rows")
    for impl in args.implementations:
        for b in args.batch_sizes:
            for chunk in harness.effective_chunkings(args.tasks_per_chunk, b):
                for remat in (False, True):
                    setting = {"implementation": impl, "batch_size": b, "remat": remat, "tasks_per_chunk": chunk}
                    r = harness.measure_unless_out_of_memory(
                        setting, throughput, impl, b, remat, args.steps, chunk, args.data_dir
                    )
                    on_row(r)
                    label = f"{impl:9s} B={b:4d} chunk={chunk or 'all'!s:4s} remat={remat!s:5s}"
                    print(f"{label} {'out of memory' if 'out_of_memory' in r else describe(r)}", flush=True)
    results.finish()


def describe(r: dict[str, Any]) -> str:
    mem = r["compiled_memory_bytes"]
    return (
        f"{r['seconds_per_meta_step'] * 1e3:8.1f} ms/meta-step "
        f"{r['optimizee_steps_per_second']:10.1f} optimizee steps/s  "
        f"compile {r['compile_seconds']:.1f} s  "
        f"memory {harness.gib(mem) * 1024:.0f} MiB"
    )


if __name__ == "__main__":
    main()
