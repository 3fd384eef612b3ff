"""How does the memory of untruncated meta-training grow with the unroll length, with and without remat?

Untruncated BPTT over whole runs of T = ``--horizons`` steps of the paper's MNIST
configuration at ``--batch-size`` tasks (fused LSTM step): compiles only, and prints
XLA's memory analysis of the compiled meta-step (arguments + outputs - donated +
temporaries) without rematerialisation, with per-step, and with √T-segment
rematerialisation.

    python benchmarks/meta_training_memory.py

Results go to ``benchmarks/results/meta_training_memory_<platform>.json`` (``--out``),
rewritten after every setting. A setting that runs out of memory while compiling is
recorded as such (``"out_of_memory"``) and the run goes on.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import harness
import jax


def memory(horizon: int, batch_size: int, remat: bool | str, data_dir: str | None) -> dict[str, Any]:
    step, setup = harness.meta_step_fn("fused", remat, horizon, data_dir=data_dir)
    args = jax.eval_shape(lambda: setup(batch_size))
    t0 = time.perf_counter()
    compiled = step.lower(*args).compile()
    return {"compiled_memory_bytes": harness.compiled_memory(compiled), "compile_seconds": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=harness.count, default=64, help="tasks per meta-step")
    parser.add_argument("--horizons", type=harness.count, nargs="+", default=[20, 100, 1000])
    harness.add_data_dir_option(parser)
    args, results = harness.start(parser, "meta_training_memory_{platform}.json", kind="memory",
                                  truncation=harness.TRUNCATION)  # fmt: skip
    on_row = results.section("rows")
    for remat in (False, True, "segments"):
        for horizon in args.horizons:
            setting = {"horizon": horizon, "batch_size": args.batch_size, "remat": remat}
            r = harness.measure_unless_out_of_memory(setting, memory, horizon, args.batch_size, remat, args.data_dir)
            on_row(r)
            label = f"T={horizon:5d} B={args.batch_size} remat={remat!s:8s}"
            timing = (
                f"{harness.gib(r.get('compiled_memory_bytes')):8.2f} GiB  (compile {r.get('compile_seconds', 0):.1f} s)"
            )
            print(f"{label} {'out of memory' if 'out_of_memory' in r else timing}", flush=True)
    results.finish()


if __name__ == "__main__":
    main()
