"""Which inputs and which output form of the feature MLP matter: an ablation on a short budget.

Every variant is the generalist's recipe with one thing changed: the same mixture,
optimizer options, PES settings and seed, on 200-step runs (``generalist.FINETUNE``,
but from the untrained φ), meta-trained for ``--meta-steps`` steps, then run on the paper's MNIST MLP (784-20-10 sigmoid) and
its ReLU variant on ``--test-inits`` held-out initialisations with shared
minibatches. Each variant is compared with the full optimizer trained the same way
(mean ± paired standard error); "untrained" is the full optimizer at its
initialisation, which is Adam with learning rate 0.01.

The budget is far below the generalist's, so the table says which parts help a
learned optimizer *learn fast*; it is not the generalist's own score.

Writes ``feature_ablation.{json,md}`` into ``--results-dir``.

    python benchmarks/feature_ablation.py --data-dir DIR
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import generalist
import harness
import jax
import numpy as np

from l2l_jax import optimizers, pretrained
from l2l_jax import tasks as tasks_lib
from l2l_jax.evaluation import learned_curves, sample_tasks
from l2l_jax.meta import MetaTrainConfig, meta_train

#: Each variant's change to ``generalist.OPTIMIZER_OPTIONS``.
VARIANTS = {
    "full": {},
    "output: bounded (no nominal Adam term)": {"output": "bounded"},
    "inputs: one momentum (0.9)": {"momentum_decays": [0.9]},
    "inputs: no parameter value": {"use_params": False},
    "inputs: no progress": {"use_progress": False},
    "inputs: no per-tensor normalisation": {"normalise_features": False},
}
EVAL_TASKS = {
    "base MLP": generalist.MEMBERS[0]["options"],
    "ReLU": {**generalist.MEMBERS[0]["options"], "activation": "relu"},
}
STEPS = (100, 200)


def train_variant(name: str, changes: dict, args: argparse.Namespace) -> tuple:
    """Meta-trains one variant (resumable) and returns its optimizer and best φ."""
    config = MetaTrainConfig.from_dict(
        {
            **generalist.FINETUNE.to_dict(),
            "optimizer_options": {**generalist.OPTIMIZER_OPTIONS, **changes},
            "num_meta_steps": args.meta_steps,
            "horizon": args.horizon,
            "truncation": args.truncation,
            "num_val_tasks": args.val_tasks,
            "validate_every": args.meta_steps,
            "checkpoint_every": 25,
        }
    )
    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    run_dir = args.run_root / slug
    meta_train(generalist.with_data_dir(config, args.data_dir), run_dir, progress=not args.no_progress)
    return pretrained.load_meta_params(run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_data_dir_option(parser)
    parser.add_argument("--meta-steps", type=harness.count, default=60)
    parser.add_argument("--test-inits", type=harness.count, default=48)
    parser.add_argument("--horizon", type=harness.count, default=generalist.FINETUNE.horizon, help="for quick checks")
    parser.add_argument(
        "--truncation", type=harness.count, default=generalist.FINETUNE.truncation, help="for quick checks"
    )
    parser.add_argument(
        "--val-tasks", type=harness.count, default=generalist.FINETUNE.num_val_tasks, help="for quick checks"
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help="a subset of the variants' names")
    parser.add_argument("--run-root", type=Path, default=Path("runs/feature-ablation"))
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=harness.RESULTS)
    args = parser.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or "full" not in args.variants:
        parser.error(f"--variants must include 'full' and come from: {', '.join(map(repr, VARIANTS))}")

    t0 = time.perf_counter()
    learned = {}
    for name in args.variants:
        t1 = time.perf_counter()
        optimizer, phi = train_variant(name, VARIANTS[name], args)
        learned[name] = (optimizer, phi, time.perf_counter() - t1)
    full = optimizers.get("feature_mlp", **generalist.OPTIMIZER_OPTIONS)
    learned["untrained (Adam, lr 0.01)"] = (full, full.init(jax.random.PRNGKey(generalist.CONFIG.seed)), 0.0)

    rows = []
    for task, options in EVAL_TASKS.items():
        family = tasks_lib.get("mnist", **options, data_dir=args.data_dir)
        test = sample_tasks(family, 1, args.test_inits, "test")
        curves = {name: learned_curves(opt, phi, family, test, max(STEPS)) for name, (opt, phi, _) in learned.items()}
        for steps in STEPS:
            for name, c in curves.items():
                final = c[:, steps]
                d, se = harness.paired_difference(curves["full"][:, steps], final)
                rows.append(
                    {
                        "task": task,
                        "steps": steps,
                        "variant": name,
                        "meta_training_seconds": learned[name][2],
                        "mean_loss": float(np.mean(final)),
                        "stderr": harness.stderr(final),
                        "full_minus_this": d,
                        "full_minus_this_stderr": se,
                    }
                )
    lines = [
        "| task | steps | variant | mean training loss | ± s.e. | full − this, paired (± s.e.) | |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        d, se = r["full_minus_this"], r["full_minus_this_stderr"]
        call = "" if r["variant"] == "full" else "full better" if d < -2 * se else "full worse" if d > 2 * se else "tie"
        paired = "" if r["variant"] == "full" else f"{d:+.4f} ({se:.4f})"
        lines.append(
            f"| {r['task']} | {r['steps']} | {r['variant']} | {r['mean_loss']:.4f} | {r['stderr']:.4f} | {paired} | {call} |"
        )
    seconds = time.perf_counter() - t0
    summary = {
        "command": harness.command(),
        "machine": harness.describe_machine(),
        "meta_steps": args.meta_steps,
        "test_inits": args.test_inits,
        "seconds": seconds,
        "rows": rows,
    }
    harness.write_json(args.results_dir / "feature_ablation.json", summary, indent=2)
    harness.write_text(
        args.results_dir / "feature_ablation.md",
        "\n".join(lines)
        + f"\n\nEach variant meta-trained for {args.meta_steps} PES steps on the generalist's mixture; "
        f"{args.test_inits} held-out inits. {seconds / 60:.1f} min on {summary['machine']}. "
        f"Command: `{summary['command']}`.\n",
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
