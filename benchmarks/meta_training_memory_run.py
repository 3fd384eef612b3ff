"""How much memory does untruncated meta-training over T steps take when it actually runs?

Untruncated BPTT over whole runs of T = ``--horizons`` steps of the paper's MNIST
configuration at ``--batch-size`` tasks, fused LSTM step, √T-segment rematerialisation
(``remat="segments"``): each meta-step is compiled and run, not only planned. Prints
XLA's memory analysis of the compiled meta-step (arguments + outputs - donated +
temporaries), the device's peak memory of the process so far (where the backend reports
it), the compile time, seconds per meta-step (median of ``--steps`` after one warm-up
step) and optimizee steps/s (B x T per meta-step). ``meta_training_memory.py`` compiles
the same programs, and those without rematerialisation, without running them.

    python benchmarks/meta_training_memory_run.py --horizons 100 1000   # on a GPU

Results go to ``benchmarks/results/meta_training_memory_run_<platform>.json``
(``--out``), rewritten after every horizon. A horizon that runs out of device memory is
recorded as such (``"out_of_memory"``) and the run goes on.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import harness
import numpy as np


def run(horizon: int, batch_size: int, steps: int, data_dir: str | None) -> dict[str, Any]:
    step, setup = harness.meta_step_fn("fused", "segments", horizon, data_dir=data_dir)
    args = setup(batch_size)
    t0 = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    per_step, (*_, loss) = harness.median_seconds(lambda c: compiled(*c[:3]), (*args, None), steps)
    return {
        "compiled_memory_bytes": harness.compiled_memory(compiled),
        "device_peak_bytes_so_far": harness.device_peak_bytes(),
        "compile_seconds": compile_s,
        "seconds_per_meta_step": per_step,
        "optimizee_steps_per_second": batch_size * horizon / per_step,
        "meta_loss_finite": bool(np.isfinite(float(loss))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=harness.count, default=64, help="tasks per meta-step")
    parser.add_argument("--horizons", type=harness.count, nargs="+", default=[100, 1000])
    parser.add_argument("--steps", type=harness.count, default=1, help="timed meta-steps (after a warm-up step)")
    harness.add_data_dir_option(parser)
    args, results = harness.start(parser, "meta_training_memory_run_{platform}.json", kind="memory_run",
                                  remat="segments", implementation="fused")  # fmt: skip
    on_row = results.section("rows")
    for horizon in args.horizons:
        setting = {"horizon": horizon, "batch_size": args.batch_size}
        r = harness.measure_unless_out_of_memory(setting, run, horizon, args.batch_size, args.steps, args.data_dir)
        on_row(r)
        label = f"T={horizon} B={args.batch_size} segments:"
        if "out_of_memory" in r:
            print(f"{label} out of memory", flush=True)
            continue
        peak = r["device_peak_bytes_so_far"]
        peak_text = "not reported" if peak is None else f"{harness.gib(peak):.2f} GiB"
        print(
            f"{label} compiled {harness.gib(r['compiled_memory_bytes']):.2f} GiB, device peak so far "
            f"{peak_text}, compile {r['compile_seconds']:.1f} s, "
            f"{r['seconds_per_meta_step']:.2f} s/meta-step, {r['optimizee_steps_per_second']:.0f} optimizee steps/s, "
            f"loss finite {r['meta_loss_finite']}",
            flush=True,
        )
    results.finish()


if __name__ == "__main__":
    main()
