"""How many optimizee steps per second do whole meta_train runs reach, by B and steps per call?

``meta_train`` itself on the paper's MNIST configuration (the host loop, new tasks
every 100 inner steps, 20-step truncations, no validation) for ``--meta-steps``
meta-steps at each B, with ``--steps-per-call`` meta-steps per compiled call and B
tasks at once or ``--tasks-per-chunk`` at a time; prints optimizee steps/s over the
calls after the first (which compiles).

    python benchmarks/meta_train_runs.py --batch-sizes 1 4 16 --tasks-per-chunk 1

Results go to ``benchmarks/results/meta_train_runs_<platform>.json`` (``--out``),
rewritten after every setting. A setting that runs out of device memory is recorded
as such (``"out_of_memory"``) and the run goes on.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import harness
import numpy as np

from l2l_jax.meta import MetaTrainConfig, meta_train


def whole_run(
    batch_size: int, steps_per_call: int, tasks_per_chunk: int | None, meta_steps: int, data_dir: str | None
) -> dict[str, Any]:
    config = MetaTrainConfig(
        task="mnist",
        task_options={} if data_dir is None else {"data_dir": data_dir},
        num_meta_steps=meta_steps,
        horizon=100,
        truncation=harness.TRUNCATION,
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
        "timed_meta_steps": len(timed),
        "seconds_per_meta_step": seconds / len(timed),
        "optimizee_steps_per_second": batch_size * harness.TRUNCATION * len(timed) / seconds,
        "wall_seconds": wall,
        "meta_loss_finite": bool(np.isfinite(result.history[-1]["meta_loss"])),
    }


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.meta_steps <= max(args.steps_per_call):
        parser.error("--meta-steps must exceed --steps-per-call: the first call compiles and is not timed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_batch_options(parser)
    parser.add_argument("--meta-steps", type=harness.count, default=40, help="meta-steps per whole run")
    parser.add_argument("--steps-per-call", type=harness.count, nargs="+", default=[1, 4])
    args, results = harness.start(
        parser, "meta_train_runs_{platform}.json", check=lambda a: check(parser, a), kind="meta_train",
        truncation=harness.TRUNCATION,
    )  # fmt: skip
    on_row = results.section("rows")
    for b in args.batch_sizes:
        for chunk in harness.effective_chunkings(args.tasks_per_chunk, b):
            for k in args.steps_per_call:
                setting = {"mode": "meta_train", "implementation": "auto", "batch_size": b, "remat": False,
                           "tasks_per_chunk": chunk, "steps_per_call": k, "meta_steps": args.meta_steps}  # fmt: skip
                r = harness.measure_unless_out_of_memory(
                    setting, whole_run, b, k, chunk, args.meta_steps, args.data_dir
                )
                on_row(r)
                label = f"meta_train B={b:4d} chunk={chunk or 'all'!s:4s} steps/call={k:2d}"
                timing = "out of memory" if "out_of_memory" in r else (
                    f"{r['seconds_per_meta_step'] * 1e3:8.1f} ms/meta-step "
                    f"{r['optimizee_steps_per_second']:10.1f} optimizee steps/s  (wall {r['wall_seconds']:.0f} s)"
                )  # fmt: skip
                print(f"{label} {timing}", flush=True)
    results.finish()


if __name__ == "__main__":
    main()
