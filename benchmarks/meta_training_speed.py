"""Meta-training throughput on the paper's MNIST configuration: optimizee steps per second.

The configuration of the paper (coordinatewise 2x20 LSTM, log/sign preprocessing,
MLP 784-20-10 with batch 128, 20-step truncations, first order, Adam on φ), with B
optimizees per meta-step. Prints, for each B and with/without ``jax.checkpoint`` of
each inner step: seconds per meta-step (median after warm-up), optimizee steps/s
(B x 20 per meta-step) and the first step's time (compilation included).

    python benchmarks/meta_training_speed.py --batch-sizes 1 4 --steps 12
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import jax
import numpy as np

from l2l_jax.meta import MetaTrainConfig, meta_train


def measure(batch_size: int, remat: bool, steps: int) -> dict[str, float]:
    config = MetaTrainConfig(
        task="mnist",
        num_meta_steps=steps,
        horizon=100,
        truncation=20,
        batch_size=batch_size,
        remat=remat,
        validate_every=0,
        num_val_tasks=1,
        checkpoint_every=steps,
    )
    seconds: list[float] = []
    meta_train(config, progress=False, on_step=lambda step, m: seconds.append(m["seconds"]))
    per_step = float(np.median(seconds[2:]))
    return {
        "batch_size": batch_size,
        "remat": remat,
        "seconds_per_meta_step": per_step,
        "optimizee_steps_per_second": batch_size * config.truncation / per_step,
        "first_step_seconds": seconds[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    print(f"{platform.machine()}, {jax.devices()[0].device_kind}, {os.cpu_count()} CPU cores, jax {jax.__version__}")
    rows = []
    for b in args.batch_sizes:
        for remat in (False, True):
            r = measure(b, remat, args.steps)
            rows.append(r)
            print(
                f"B={b:4d} remat={str(remat):5s} {r['seconds_per_meta_step'] * 1e3:8.0f} ms/meta-step "
                f"{r['optimizee_steps_per_second']:8.1f} optimizee steps/s  (first step {r['first_step_seconds']:.1f} s)",
                flush=True,
            )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
