"""Long horizons: the LSTM meta-trained with PES on whole 1,000-step MNIST runs against
the shipped ``mnist-lstm`` (truncated BPTT on 200-step runs) and tuned baselines at step 1,000.

Meta-training (``CONFIG``): PES with antithetic pairs over 1,000-step runs of the
paper's MLP (784-20-10, sigmoid, minibatches of 128) in truncations of ``CONFIG.truncation``
steps, starting from the shipped ``mnist-lstm`` φ, the meta-loss Σ_t log f(θ_t)
(as ``mnist-lstm``'s), Adam on φ, validation on held-out 1,000-step runs keeping the best φ.

Evaluation: every baseline's learning rate is tuned on ``--tune-inits`` initialisations
for each reported horizon (a quarter-decade grid); every optimizer then runs on
``--test-inits`` other initialisations with the same minibatches; mean training loss
± paired standard error of (PES LSTM − other) at each reported step.

Writes ``long_horizon.{json,md,png}`` into ``--results-dir``.

    python benchmarks/long_horizon.py --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import harness
import numpy as np
from tqdm import tqdm

from l2l_jax import pretrained
from l2l_jax import run_directory as rd
from l2l_jax import tasks as tasks_lib
from l2l_jax.evaluation import learned_curves, plot_loss_curves, sample_tasks
from l2l_jax.evaluation.baselines import BASELINES
from l2l_jax.meta import MetaTrainConfig, meta_train

TASK_OPTIONS = {"hidden_units": 20, "hidden_layers": 1, "activation": "sigmoid", "batch_size": 128}

CONFIG = MetaTrainConfig(
    task="mnist",
    task_options=TASK_OPTIONS,
    optimizer="lstm",
    optimizer_options={"preset": "paper", "output_init_scale": 0.01},
    estimator="pes",
    estimator_options={"sigma": 0.01, "num_pairs": 4},
    num_meta_steps=100,
    horizon=1000,
    truncation=100,
    batch_size=2,
    meta_lr=3e-3,
    weighting="log",
    validate_every=50,
    num_val_tasks=4,
    checkpoint_every=10,
    seed=0,
)

TUNE_INITS, TEST_INITS = 16, 48
STEPS = (100, 200, 1000)


def evaluate(learned: dict, family, tune_inits: int, test_inits: int, baselines: list[str], steps_list, progress: bool):
    """Rows of the table and the curves: learned optimizers as given, baselines tuned per horizon."""
    horizon = max(steps_list)
    tune, test = sample_tasks(family, 1, tune_inits, "tune"), sample_tasks(family, 1, test_inits, "test")
    curves = {name: learned_curves(opt, phi, family, test, horizon) for name, (opt, phi) in learned.items()}
    lrs = {}
    for baseline in tqdm(baselines, desc="baselines", disable=not progress):
        tuned = harness.tune_learning_rate(BASELINES[baseline], family, tune, test, steps_list)
        for steps, (best, c) in tuned.items():
            lrs[(baseline, steps)] = best
            curves.setdefault(f"{baseline}@{best}", c)
    reference = next(iter(learned))
    rows = []
    for steps in steps_list:
        labels = list(learned) + [f"{b}@{lrs[(b, steps)]}" for b in baselines]
        for label in labels:
            name = label.split("@")[0]
            final = curves[label][:, steps]
            row = {
                "steps": steps,
                "optimizer": name,
                "learning_rate": lrs.get((name, steps)),
                "mean_loss": float(np.mean(final)),
                "stderr": harness.stderr(final),
            }
            if name != reference:
                d, se = harness.paired_difference(curves[reference][:, steps], final)
                row["reference_minus_this"], row["reference_minus_this_stderr"] = d, se
            rows.append(row)
    plot = {name: curves[name] for name in learned}
    plot.update({b: curves[f"{b}@{lrs[(b, horizon)]}"] for b in baselines})
    return rows, plot


def verdict(row: dict) -> str:
    """Win/loss/tie of the reference against this row, by the 2-paired-s.e. rule."""
    if "reference_minus_this" not in row:
        return ""
    d, se = row["reference_minus_this"], row["reference_minus_this_stderr"]
    return "PES wins" if d < -2 * se else "PES loses" if d > 2 * se else "tie"


def table(rows: list[dict]) -> str:
    lines = [
        "| steps | optimizer | tuned lr | mean training loss | ± s.e. | PES LSTM − this, paired (± s.e.) | |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lr = "learned" if r["learning_rate"] is None else f"{r['learning_rate']:.3g}"
        paired = (
            f"{r['reference_minus_this']:+.4f} ({r['reference_minus_this_stderr']:.4f})"
            if "reference_minus_this" in r
            else ""
        )
        lines.append(
            f"| {r['steps']} | {r['optimizer']} | {lr} | {r['mean_loss']:.4f} | {r['stderr']:.4f} | {paired} "
            f"| {verdict(r)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_data_dir_option(parser)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/benchmark-long-horizon"))
    parser.add_argument("--meta-steps", type=harness.count, default=CONFIG.num_meta_steps)
    parser.add_argument("--horizon", type=harness.count, default=CONFIG.horizon, help="meta-training runs' length")
    parser.add_argument("--truncation", type=harness.count, default=CONFIG.truncation)
    parser.add_argument("--batch-size", type=harness.count, default=CONFIG.batch_size)
    parser.add_argument("--pairs", type=harness.count, default=CONFIG.estimator_option("num_pairs"))
    parser.add_argument("--val-tasks", type=harness.count, default=CONFIG.num_val_tasks)
    parser.add_argument("--meta-lr", type=float, default=CONFIG.meta_lr)
    parser.add_argument("--validate-every", type=harness.count, default=CONFIG.validate_every)
    parser.add_argument("--sigma", type=float, default=CONFIG.estimator_option("sigma"))
    parser.add_argument(
        "--tag", default="", help="suffix of the results files' names (long_horizon<tag>.md), to keep several runs"
    )
    parser.add_argument("--steps-per-call", type=harness.count, default=5)
    parser.add_argument("--tune-inits", type=harness.count, default=TUNE_INITS)
    parser.add_argument("--test-inits", type=harness.count, default=TEST_INITS)
    parser.add_argument(
        "--eval-steps", type=harness.count, nargs="+", default=list(STEPS), help="steps the table reports"
    )
    parser.add_argument("--baselines", nargs="+", default=list(BASELINES), choices=list(BASELINES))
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=harness.RESULTS, help="where the results files go")
    args = parser.parse_args()
    progress = not args.no_progress
    data_options = {} if args.data_dir is None else {"data_dir": str(args.data_dir)}
    config = MetaTrainConfig.from_dict(
        {
            **CONFIG.to_dict(),
            "task_options": {**TASK_OPTIONS, **data_options},
            "num_meta_steps": args.meta_steps,
            "horizon": args.horizon,
            "truncation": args.truncation,
            "batch_size": args.batch_size,
            "estimator_options": {"num_pairs": args.pairs, "sigma": args.sigma},
            "meta_lr": args.meta_lr,
            "num_val_tasks": args.val_tasks,
            "checkpoint_every": min(CONFIG.checkpoint_every, args.meta_steps),
            "validate_every": min(args.validate_every, args.meta_steps),
        }
    )
    shipped_optimizer, shipped_phi = pretrained.load_meta_params("mnist-lstm")
    t0 = time.perf_counter()
    result = meta_train(
        config, args.run_dir, progress=progress, init_meta_params=shipped_phi, steps_per_call=args.steps_per_call
    )
    wall = time.perf_counter() - t0
    training_seconds = sum(r["seconds"] for r in rd.read_metrics(args.run_dir / rd.METRICS))
    family = tasks_lib.get("mnist", **config.task_options)
    learned = {"PES LSTM": (result.optimizer, result.meta_params), "mnist-lstm": (shipped_optimizer, shipped_phi)}
    t1 = time.perf_counter()
    rows, curves = evaluate(
        learned, family, args.tune_inits, args.test_inits, args.baselines, sorted(args.eval_steps), progress
    )
    eval_seconds = time.perf_counter() - t1
    args.results_dir.mkdir(parents=True, exist_ok=True)
    plot_loss_curves(
        curves,
        args.results_dir / f"long_horizon{args.tag}.png",
        title=f"MNIST MLP: mean of {args.test_inits} inits (baselines tuned at step {max(args.eval_steps)})",
    )
    history = [{k: r[k] for k in ("step", "meta_loss", "val_loss") if k in r} for r in result.history]
    summary = {
        "command": harness.command(),
        "machine": harness.describe_machine(),
        "data": family.data_record,
        "config": config.to_dict(),
        "init": "shipped mnist-lstm",
        "best_step": int(rd.read_json(args.run_dir / rd.OPTIMIZER_META)["best_step"]),
        "meta_training_seconds": training_seconds,
        "meta_training_wall_seconds_this_call": wall,
        "evaluation_seconds": eval_seconds,
        "tune_inits": args.tune_inits,
        "test_inits": args.test_inits,
        "validation": [r for r in history if "val_loss" in r],
        "rows": rows,
    }
    harness.write_json(args.results_dir / f"long_horizon{args.tag}.json", summary, indent=2)
    text = (
        f"{table(rows)}\n\nPES: σ = {config.estimator_option('sigma')}, {config.batch_size} tasks × "
        f"{config.estimator_option('num_pairs')} antithetic pairs, "
        f"truncations of {config.truncation} steps of {config.horizon}-step runs, {config.num_meta_steps} meta-steps "
        f"from the shipped mnist-lstm (best φ at step {summary['best_step']} on {config.num_val_tasks} validation "
        f"runs). Meta-training {training_seconds / 60:.1f} min, evaluation {eval_seconds / 60:.1f} min on "
        f"{summary['machine']}. Command: `{summary['command']}`.\n"
    )
    harness.write_text(args.results_dir / f"long_horizon{args.tag}.md", text)
    print(text)


if __name__ == "__main__":
    main()
