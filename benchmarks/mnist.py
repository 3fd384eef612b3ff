"""The paper's MNIST experiment: meta-train the LSTM on an MLP, compare with tuned baselines,
and test generalisation to longer runs, wider and deeper nets, and ReLU.

Meta-training: the paper's optimizer (coordinatewise 2x20 LSTM, log/sign
preprocessing p = 10, output x 0.1, Adam on φ, 20-step truncations, validation on
held-out initialisations keeping the best φ) on the paper's optimizee (MLP 784-20-10,
sigmoid, minibatches of 128 drawn with replacement), with three changes to the
recipe, each there because the paper's recipe failed here (see the README):
200-step runs instead of 100 (the evaluation goes to 200), the meta-loss
Σ_t log f(θ_t) instead of Σ_t f(θ_t) (late, small losses count), and output weights
initialised 100x smaller (large random first steps saturate the sigmoids into a flat
region where meta-gradients vanish).

Stage 2 (``FINETUNE``) fine-tunes stage 1's best φ with 100-step truncations instead
of 20: with 20-step truncations the optimizer learns the short-horizon greedy policy,
fast for the first 50 steps and then too cautious (it fell behind NAG, Adam and even
SGD by step 200); longer truncations let the meta-gradient see what a step costs or
gains 100 steps later.

Evaluation: every baseline (SGD, momentum, NAG, RMSprop, Adam) has its learning rate
tuned on a log grid, separately for 100 and 200 steps, on ``--tune-inits`` fresh
initialisations; everything is then run on ``--test-inits`` other initialisations.
The same is repeated, with the LSTM trained on the base MLP, for 40 hidden units, two
hidden layers, and ReLU.

Writes ``mnist.{json,md}`` and ``mnist_<variant>.png`` into ``--results-dir``
(default ``benchmarks/results``); ``--ship`` also copies the trained optimizer into
the package as ``mnist-lstm``.

    python benchmarks/mnist.py --ship          # meta-train, evaluate, ship
    python benchmarks/mnist.py --eval-only     # re-evaluate an existing run directory
    python benchmarks/mnist.py --eval-only --shipped   # re-evaluate the shipped mnist-lstm
    python benchmarks/mnist.py --eval-only --shipped --variants ReLU   # one variant only
"""

from __future__ import annotations

import argparse
import json
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

CONFIG = MetaTrainConfig(
    task="mnist",
    task_options={"hidden_units": 20, "hidden_layers": 1, "activation": "sigmoid", "batch_size": 128},
    optimizer="lstm",
    optimizer_options={"preset": "paper", "output_init_scale": 0.01},
    num_meta_steps=4000,
    horizon=200,
    truncation=20,
    batch_size=1,
    meta_lr=3e-3,
    meta_lr_schedule="cosine",
    weighting="log",
    estimator_options={"remat": True},
    validate_every=100,
    num_val_tasks=16,
    checkpoint_every=50,
    seed=0,
)

#: Initialisations the baselines' learning rates are tuned on, and the held-out ones of the table.
TUNE_INITS, TEST_INITS = 20, 48

VARIANTS = {
    "base (20 sigmoid)": {},
    "40 units": {"hidden_units": 40},
    "2 layers": {"hidden_layers": 2},
    "ReLU": {"activation": "relu"},
}
STEPS = (100, 200)

#: Stage 2: stage 1's best φ, 100-step truncations of the same 200-step runs, a lower
#: rate, the meta-gradient clipped (its norm varies by 100x between truncations).
FINETUNE = MetaTrainConfig.from_dict(
    {
        **CONFIG.to_dict(),
        "truncation": 100,
        "num_meta_steps": 600,
        "meta_lr": 1e-3,
        "clip_norm": 1.0,
        "validate_every": 25,
        "checkpoint_every": 25,
    }
)


def evaluate_variant(name, options, optimizer, phi, tune_inits, test_inits, progress):
    family = tasks_lib.get("mnist", **{**CONFIG.task_options, **options})
    horizon = max(STEPS)
    tune, test = sample_tasks(family, 1, tune_inits, "tune"), sample_tasks(family, 1, test_inits, "test")
    curves = {"learned lstm": learned_curves(optimizer, phi, family, test, horizon)}
    lrs = {}
    for baseline, make_tx in tqdm(BASELINES.items(), desc=name, disable=not progress):
        # harness.LR_GRID: every baseline's best rate on MNIST lies well inside it.
        for steps, (best, c) in harness.tune_learning_rate(make_tx, family, tune, test, STEPS).items():
            lrs[(baseline, steps)] = best
            curves[f"{baseline}@{steps}"] = c
    rows = []
    for steps in STEPS:
        for label, c in curves.items():
            if "@" in label and not label.endswith(f"@{steps}"):
                continue
            opt_name = label.split("@")[0]
            final = c[:, steps]
            row = {
                "variant": name,
                "steps": steps,
                "optimizer": opt_name,
                "learning_rate": lrs.get((opt_name, steps)),
                "mean_loss": float(np.mean(final)),
                "stderr": harness.stderr(final),
            }
            if opt_name != "learned lstm":
                # Same initialisations and minibatch keys for every optimizer: the paired
                # difference removes the spread between initialisations from the comparison.
                d, se = harness.paired_difference(curves["learned lstm"][:, steps], final)
                row["lstm_minus_this"], row["lstm_minus_this_stderr"] = d, se
            rows.append(row)
    plot_curves = {"learned lstm": curves["learned lstm"], **{b: curves[f"{b}@{horizon}"] for b in BASELINES}}
    return rows, plot_curves, family.data_record


def describe_data(record):
    """One line for a data record of :func:`l2l_jax.tasks.mnist.data_record`."""
    return f"{record['dataset']} {record['split']} split, {record['examples']:,} images (sha256 {record['sha256']})"


def table(rows):
    lines = [
        "| variant | steps | optimizer | tuned lr | mean training loss | ± s.e. | LSTM − this, paired (± s.e.) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lr = "learned" if r["learning_rate"] is None else f"{r['learning_rate']:.3g}"
        paired = f"{r['lstm_minus_this']:+.4f} ({r['lstm_minus_this_stderr']:.4f})" if "lstm_minus_this" in r else ""
        lines.append(
            f"| {r['variant']} | {r['steps']} | {r['optimizer']} | {lr} | {r['mean_loss']:.4f} | {r['stderr']:.4f} "
            f"| {paired} |"
        )
    return "\n".join(lines)


def _meta_steps_done(run_dir: Path) -> int:
    return len(rd.read_metrics(run_dir / rd.METRICS))


def _training_of_shipped(shipped: dict, previous: Path) -> dict:
    """The training figures of the shipped optimizer, from the results file of the run that made it.

    The shipped metadata keeps the configs and the best step, not the times; an earlier
    results file (``previous``, ``mnist.json``) keeps them, and is used only if it
    describes the same training. Otherwise the times are None.
    """

    def same_config(a: dict | None, b: dict) -> bool:
        # Through MetaTrainConfig, so that a field added since (with its default) still matches.
        return a is not None and MetaTrainConfig.from_dict(a).to_dict() == MetaTrainConfig.from_dict(b).to_dict()

    fields = ("meta_training_seconds", "stage_seconds", "meta_training_wall_seconds", "best_step")
    training = dict.fromkeys(fields) | {"finetune_best_step": shipped["best_step"]}
    if previous.is_file():
        earlier = json.loads(previous.read_text())
        same = (
            same_config(earlier.get("config"), shipped["stage1"])
            and same_config(earlier.get("finetune_config"), shipped["training_config"])
            and earlier.get("finetune_best_step") == shipped["best_step"]
        )
        if same:
            training |= {k: earlier.get(k) for k in fields}
    return training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=None, help="default: runs/benchmark-mnist")
    parser.add_argument("--meta-steps", type=int, default=None, help=f"stage 1 (default {CONFIG.num_meta_steps})")
    parser.add_argument("--tune-inits", type=int, default=TUNE_INITS)
    parser.add_argument("--test-inits", type=int, default=TEST_INITS)
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), help="a subset of the variants"
    )
    parser.add_argument("--eval-only", action="store_true")
    parser.add_argument("--ship", action="store_true", help="ship the result as pretrained 'mnist-lstm'")
    parser.add_argument(
        "--shipped",
        action="store_true",
        help="with --eval-only: evaluate the shipped 'mnist-lstm' instead of a run directory",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=harness.RESULTS, help="where the results files go")
    args = parser.parse_args()
    if args.shipped and not args.eval_only:
        parser.error("--shipped evaluates the shipped optimizer: use it with --eval-only")
    if args.shipped and args.ship:
        parser.error("--shipped re-evaluates what is already shipped: drop --ship")
    if args.shipped and args.run_dir is not None:
        parser.error("--shipped evaluates the shipped optimizer: --run-dir does not apply")
    if args.eval_only and args.meta_steps is not None:
        parser.error("--eval-only trains nothing: --meta-steps does not apply")
    if args.ship and (args.tune_inits, args.test_inits) != (TUNE_INITS, TEST_INITS):
        parser.error(f"--ship ships the full evaluation: keep --tune-inits {TUNE_INITS} and --test-inits {TEST_INITS}")
    args.variants = [v for v in VARIANTS if v in args.variants]  # in the table's order, each once
    if args.ship and args.variants != list(VARIANTS):
        parser.error("--ship ships the full evaluation: evaluate every variant (drop --variants)")
    if args.run_dir is None:
        args.run_dir = Path("runs/benchmark-mnist")
    if args.meta_steps is None:
        args.meta_steps = CONFIG.num_meta_steps
    if args.eval_only and not args.shipped and not (args.run_dir / rd.OPTIMIZER_META).exists():
        parser.error(f"no trained run in {args.run_dir}: train first, or evaluate the shipped one with --shipped")
    progress = not args.no_progress

    config = MetaTrainConfig.from_dict({**CONFIG.to_dict(), "num_meta_steps": args.meta_steps})
    finetune_dir = args.run_dir.with_name(args.run_dir.name + "-finetune")
    t0 = time.perf_counter()
    wall_seconds = None
    if not args.eval_only:
        done_before = _meta_steps_done(args.run_dir) + _meta_steps_done(finetune_dir)
        meta_train(config, args.run_dir, progress=progress)
        _, stage1_phi = pretrained.load_meta_params(args.run_dir)
        meta_train(FINETUNE, finetune_dir, progress=progress, init_meta_params=stage1_phi)
        if done_before == 0:  # A resumed run's wall time would describe only its last part.
            wall_seconds = time.perf_counter() - t0  # includes compilation and validation
    if args.shipped:
        # The run directories may be gone; the shipped metadata names the configs, not the times.
        optimizer, phi = pretrained.load_meta_params("mnist-lstm")
        shipped = pretrained.info("mnist-lstm")
        config, finetune = MetaTrainConfig.from_dict(shipped["stage1"]), shipped["training_config"]
        training = _training_of_shipped(shipped, args.results_dir / "mnist.json")  # read before it is rewritten
    else:
        optimizer, phi = pretrained.load_meta_params(finetune_dir)
        finetune = FINETUNE.to_dict()
        stage_seconds = [
            sum(r["seconds"] for r in rd.read_metrics(d / rd.METRICS)) for d in (args.run_dir, finetune_dir)
        ]
        training = {
            "meta_training_seconds": sum(stage_seconds),
            "stage_seconds": stage_seconds,
            "meta_training_wall_seconds": wall_seconds,
            "best_step": rd.read_json(args.run_dir / rd.OPTIMIZER_META)["best_step"],
            "finetune_best_step": rd.read_json(finetune_dir / rd.OPTIMIZER_META)["best_step"],
        }

    all_rows, data = [], None
    args.results_dir.mkdir(parents=True, exist_ok=True)
    t1 = time.perf_counter()
    for name in args.variants:
        options = VARIANTS[name]
        rows, curves, data = evaluate_variant(name, options, optimizer, phi, args.tune_inits, args.test_inits, progress)
        all_rows += rows
        slug = name.split(" ")[0].lower()
        plot_loss_curves(
            curves, args.results_dir / f"mnist_{slug}.png", title=f"MNIST MLP, {name}: mean of {args.test_inits} inits"
        )
        print(table(rows), flush=True)
    eval_seconds = time.perf_counter() - t1

    summary = {
        "command": harness.command(),
        "machine": harness.describe_machine(),
        "data": data,
        "config": config.to_dict(),
        "finetune_config": finetune,
        **training,
        "evaluation_seconds": eval_seconds,
        "tune_inits": args.tune_inits,
        "test_inits": args.test_inits,
        "variants": args.variants,
        "rows": all_rows,
    }
    harness.write_json(args.results_dir / "mnist.json", summary, indent=2)
    stages = training["stage_seconds"]
    trained = (
        f"Meta-training: {sum(stages) / 60:.1f} min (stage 1 {stages[0] / 60:.1f}, stage 2 {stages[1] / 60:.1f})"
        if stages
        else "Meta-training: not timed in this run"
    )
    harness.write_text(
        args.results_dir / "mnist.md",
        f"{table(all_rows)}\n\nData: {describe_data(data)}\n\n{trained}; evaluation {eval_seconds / 60:.1f} min "
        f"on {summary['machine']}. Command: `{summary['command']}`.\n",
    )
    # The evaluation travels with the optimizer it describes (pretrained.info shows it),
    # but the package's copy only takes the full evaluation.
    meta_dir = pretrained.SHIPPED_DIR / "mnist-lstm" if args.shipped else finetune_dir
    if args.shipped and (args.tune_inits, args.test_inits, args.variants) != (TUNE_INITS, TEST_INITS, list(VARIANTS)):
        print(
            f"not written into {meta_dir}: not the full evaluation (--tune-inits {TUNE_INITS}, --test-inits "
            f"{TEST_INITS}, every variant)"
        )
        meta_dir = None
    if meta_dir is not None:
        rd.update_optimizer_meta(meta_dir, evaluation=all_rows, data=data, stage1=config.to_dict())
    print(f"\nevaluation {eval_seconds / 60:.1f} min, total {(time.perf_counter() - t0) / 60:.1f} min")
    if args.ship:
        print(f"shipped as {pretrained.export(finetune_dir, pretrained.SHIPPED_DIR / 'mnist-lstm')}")


if __name__ == "__main__":
    main()
