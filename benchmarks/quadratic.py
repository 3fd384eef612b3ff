"""Reproduces the paper's quadratic experiment: the LSTM optimizer vs tuned baselines.

Meta-trains the paper's coordinatewise LSTM (2x20, log/sign preprocessing p = 10,
output x 0.1, 20-step truncations of 100-step runs, Adam) on random 10-d
quadratics ||W θ - y||², tunes SGD, momentum, NAG, RMSprop and Adam on a log grid
of learning rates on held-out quadratics, and evaluates everything on 256 other
held-out quadratics for 100 steps.

Writes ``benchmarks/results/quadratic.{json,md,png}``, which the README quotes.
``--ship`` also copies the trained optimizer into the package as ``quadratic-lstm``.

    python benchmarks/quadratic.py --ship
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import harness

from l2l_jax import pretrained
from l2l_jax import run_directory as rd
from l2l_jax.evaluation import evaluate_run
from l2l_jax.meta import MetaTrainConfig, meta_train

CONFIG = MetaTrainConfig(
    task="quadratic",
    task_options={"dim": 10},
    optimizer="lstm",
    optimizer_options={"preset": "paper"},
    num_meta_steps=4000,
    horizon=100,
    truncation=20,
    batch_size=128,
    meta_lr=1e-2,
    meta_lr_schedule="cosine",
    validate_every=250,
    num_val_tasks=128,
    checkpoint_every=250,
    seed=0,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/benchmark-quadratic"))
    parser.add_argument("--meta-steps", type=int, default=CONFIG.num_meta_steps)
    parser.add_argument("--tasks", type=int, default=256)
    parser.add_argument("--ship", action="store_true", help="ship the result as pretrained 'quadratic-lstm'")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    config = MetaTrainConfig.from_dict({**CONFIG.to_dict(), "num_meta_steps": args.meta_steps})
    t0 = time.perf_counter()
    result = meta_train(config, args.run_dir, progress=not args.no_progress)
    train_seconds = time.perf_counter() - t0
    comparison = evaluate_run(args.run_dir, num_tasks=args.tasks, num_tune_tasks=100, num_steps=100, seed=1)
    rows = comparison.rows()
    by_name = {r["optimizer"]: r for r in rows}
    lstm = by_name["learned lstm"]["mean_final_loss"]
    adam = by_name["adam"]["mean_final_loss"]
    summary = {
        "command": harness.command(),
        "machine": harness.describe_machine(),
        "config": config.to_dict(),
        "meta_training_seconds": train_seconds,
        "best_val_loss": result.best_val,
        "best_step": int(rd.read_json(args.run_dir / rd.OPTIMIZER_META)["best_step"]),
        "skipped_meta_steps": result.skipped,
        "lstm_over_adam_final_loss": lstm / adam,
        **rd.read_json(args.run_dir / rd.EVALUATION_JSON),
    }
    harness.write_json(harness.RESULTS / "quadratic.json", summary, indent=2)
    harness.write_text(
        harness.RESULTS / "quadratic.md",
        f"{comparison.table()}\n\nLearned LSTM / tuned Adam mean final loss: {lstm / adam:.3f}. "
        f"Meta-training: {train_seconds:.0f} s on {summary['machine']}.\n",
    )
    rd.write_atomic(harness.RESULTS / "quadratic.png", (args.run_dir / "loss_curves.png").read_bytes())
    print(comparison.table())
    print(f"\nlearned LSTM / tuned Adam: {lstm / adam:.3f}; meta-training took {train_seconds:.0f} s")
    if args.ship:
        dest = pretrained.export(args.run_dir, pretrained.SHIPPED_DIR / "quadratic-lstm")
        print(f"shipped as {dest}")


if __name__ == "__main__":
    main()
