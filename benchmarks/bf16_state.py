"""What storing the optimizer's state in bfloat16 does to the results of the shipped optimizers.

``state_dtype="bfloat16"`` (``lstm`` and ``feature_mlp``) halves the optimizer's memory
and its update's memory traffic (the arithmetic stays float32). This runs the shipped
``quadratic-lstm`` and ``mnist-lstm`` with float32 and with bfloat16 state on the same
held-out tasks as their benchmarks (256 quadratics for 100 steps; 48 MNIST MLP
initialisations for 100 and 200 steps), and the ``generalist`` on the paper's MNIST MLP
and on a two-layer ReLU MLP (48 initialisations, 100 and 200 steps), and prints the
mean losses side by side with the paired standard error of the difference.

    python benchmarks/bf16_state.py --data-dir DIR

Writes ``benchmarks/results/bf16_state.{json,md}``.
"""

from __future__ import annotations

import argparse

import harness
import numpy as np

from l2l_jax import pretrained
from l2l_jax import tasks as tasks_lib
from l2l_jax.evaluation import learned_curves, sample_tasks

RELU_MLP = {"activation": "relu", "hidden_layers": 2, "hidden_units": 32, "batch_size": 64}

#: (shipped optimizer, task (None: its own) and options, evaluation seed, test tasks,
#: steps reported); seeds and counts are those of benchmarks/quadratic.py and
#: benchmarks/mnist.py.
SETUPS = (
    ("quadratic-lstm", None, {"dim": 10}, 1, 256, (100,)),
    ("mnist-lstm", None, {}, 1, 48, (100, 200)),
    ("generalist", "mnist", {}, 1, 48, (100, 200)),
    ("generalist", "mnist", RELU_MLP, 1, 48, (100, 200)),
)


def _family(name: str, task: str | None, options: dict, data_dir: str | None):
    info = pretrained.info(name)
    if task is None:
        task, options = info["task"], {**info["training_config"]["task_options"], **options}
    if task == "mnist":
        options = {**options, "data_dir": data_dir}
    return tasks_lib.get(task, **options), task, options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_data_dir_option(parser)
    args = parser.parse_args()
    machine = harness.describe_machine()
    print(machine)
    rows = []
    for name, task, options, seed, count, steps in SETUPS:
        base, phi = pretrained.load_meta_params(name)
        family, task, options = _family(name, task, options, args.data_dir)
        test = sample_tasks(family, seed, count, "test")
        curves = {}
        for dtype in ("float32", "bfloat16"):
            opt = type(base)(**{**base.config(), "state_dtype": dtype})
            curves[dtype] = np.asarray(learned_curves(opt, phi, family, test, max(steps)))
        label = (
            ""
            if task in ("quadratic",) or not options
            else ", ".join(f"{k}={v}" for k, v in sorted(options.items()) if k != "data_dir")
        )
        for s in steps:
            f32, b16 = curves["float32"][:, s], curves["bfloat16"][:, s]
            row = {
                "optimizer": name,
                "task": task if not label else f"{task} ({label})",
                "steps": s,
                "tasks": count,
                "float32_mean_loss": float(np.mean(f32)),
                "bfloat16_mean_loss": float(np.mean(b16)),
                "relative_change": float(np.mean(b16) / np.mean(f32) - 1),
                "paired_se": float(np.std(b16 - f32, ddof=1) / np.sqrt(count)),
                # Absolute: some quadratics end near 0, where relative changes mean nothing.
                "max_per_task_abs_change": float(np.max(np.abs(b16 - f32))),
            }
            rows.append(row)
            print(
                f"{name:15s} {row['task']} step {s:3d}: float32 state {row['float32_mean_loss']:.4f}, bfloat16 state "
                f"{row['bfloat16_mean_loss']:.4f} ({row['relative_change']:+.2%}, paired s.e. "
                f"{row['paired_se']:.5f}; per task at most "
                f"{row['max_per_task_abs_change']:.4f} apart)",
                flush=True,
            )
    harness.write_json(harness.RESULTS / "bf16_state.json", {"machine": machine, "rows": rows})
    lines = [
        (
            "| optimizer | task | steps | tasks | mean loss, float32 state | mean loss, bfloat16 state | change "
            "| paired s.e. of the difference | largest per-task difference |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['optimizer']} | {r['task']} | {r['steps']} | {r['tasks']} | {r['float32_mean_loss']:.4f} | "
            f"{r['bfloat16_mean_loss']:.4f} | {r['relative_change']:+.2%} | {r['paired_se']:.5f} | "
            f"{r['max_per_task_abs_change']:.4f} |"
        )
    harness.write_text(
        harness.RESULTS / "bf16_state.md",
        "\n".join(lines) + f"\n\nMachine: {machine}. Command: `{harness.command()}`.\n",
    )


if __name__ == "__main__":
    main()
