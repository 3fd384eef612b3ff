"""What storing the LSTM's state in bfloat16 does to the results of the shipped optimizers.

``lstm(state_dtype="bfloat16")`` halves the optimizer's memory and its update's
memory traffic (the arithmetic stays float32). This runs the shipped ``quadratic-lstm``
and ``mnist-lstm`` with float32 and with bfloat16 state on the same held-out tasks as
their benchmarks (256 quadratics for 100 steps; 48 MNIST MLP initialisations for 100
and 200 steps) and prints the mean losses side by side.

    python benchmarks/bf16_state.py

Writes ``benchmarks/results/bf16_state.{json,md}``.
"""

from __future__ import annotations

import argparse

import harness
import numpy as np

from l2l_jax import pretrained
from l2l_jax import tasks as tasks_lib
from l2l_jax.evaluation import learned_curves, sample_tasks
from l2l_jax.optimizers import lstm

#: (shipped optimizer, task options, evaluation seed, test tasks, steps reported);
#: seeds and counts are those of benchmarks/quadratic.py and benchmarks/mnist.py.
SETUPS = (
    ("quadratic-lstm", {"dim": 10}, 1, 256, (100,)),
    ("mnist-lstm", {}, 1, 48, (100, 200)),
)


def main() -> None:
    # No options; argparse gives --help (and refuses stray arguments) instead of running.
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    machine = harness.describe_machine()
    print(machine)
    rows = []
    for name, options, seed, count, steps in SETUPS:
        base, phi = pretrained.load_meta_params(name)
        info = pretrained.info(name)
        family = tasks_lib.get(info["task"], **{**info["training_config"]["task_options"], **options})
        test = sample_tasks(family, seed, count, "test")
        curves = {}
        for dtype in ("float32", "bfloat16"):
            opt = lstm(**{**base.config(), "state_dtype": dtype})
            curves[dtype] = np.asarray(learned_curves(opt, phi, family, test, max(steps)))
        for s in steps:
            f32, b16 = curves["float32"][:, s], curves["bfloat16"][:, s]
            row = {
                "optimizer": name,
                "steps": s,
                "tasks": count,
                "float32_mean_loss": float(np.mean(f32)),
                "bfloat16_mean_loss": float(np.mean(b16)),
                "relative_change": float(np.mean(b16) / np.mean(f32) - 1),
                # Absolute: some quadratics end near 0, where relative changes mean nothing.
                "max_per_task_abs_change": float(np.max(np.abs(b16 - f32))),
            }
            rows.append(row)
            print(
                f"{name:15s} step {s:3d}: float32 state {row['float32_mean_loss']:.4f}, bfloat16 state "
                f"{row['bfloat16_mean_loss']:.4f} ({row['relative_change']:+.2%}; per task at most "
                f"{row['max_per_task_abs_change']:.4f} apart)",
                flush=True,
            )
    harness.write_json(harness.RESULTS / "bf16_state.json", {"machine": machine, "rows": rows})
    lines = [
        "| optimizer | steps | tasks | mean loss, float32 state | mean loss, bfloat16 state | change | largest per-task difference |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['optimizer']} | {r['steps']} | {r['tasks']} | {r['float32_mean_loss']:.4f} | "
            f"{r['bfloat16_mean_loss']:.4f} | {r['relative_change']:+.2%} | {r['max_per_task_abs_change']:.4f} |"
        )
    harness.write_text(
        harness.RESULTS / "bf16_state.md",
        "\n".join(lines) + f"\n\nMachine: {machine}. Command: `{harness.command()}`.\n",
    )


if __name__ == "__main__":
    main()
