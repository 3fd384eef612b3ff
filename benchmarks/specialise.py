"""Specialising a shipped optimizer to a model it never saw, and what it buys against tuned baselines.

The worked example of ``docs/guide/specialise.md``: the recipe
(``l2l_jax.meta.recipes.specialise_config``) fine-tunes ``--source`` on
``l2l_jax.examples.layernorm_mlp`` (an MLP with LayerNorm and GELU on 14x14 MNIST,
outside the generalist's meta-training mixture) for runs of ``--horizon`` steps, then
compares the specialised optimizer, its source and five baselines (learning rate
tuned per horizon on a quarter-decade grid, on initialisations apart from the test
ones) on ``--tasks`` held-out initialisations, at the horizon and at twice it, with
paired differences.

    python benchmarks/specialise.py --data-dir DIR                        # from generalist
    python benchmarks/specialise.py --data-dir DIR --source mnist-lstm
    python benchmarks/specialise.py --data-dir DIR --meta-lr 1e-3 3e-3 1e-2 --no-evaluate   # the recipe's meta-lr

Meta-training goes into ``--run-dir``/``SOURCE-lrX`` (resumed if cut short). Every
meta-lr is meta-trained; the evaluation is of the first.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import harness

from l2l_jax import pretrained
from l2l_jax.evaluation import DEFAULT_LR_GRID, compare_with_baselines
from l2l_jax.examples import layernorm_mlp
from l2l_jax.meta import meta_train
from l2l_jax.meta.recipes import SPECIALISE_DEFAULTS, specialise_config

TASK = "l2l_jax.examples.layernorm_mlp:make"
BASELINES = ("sgd", "momentum", "nag", "rmsprop", "adam")


def slug(source: str) -> str:
    """A file-name-safe form of a source (a shipped name or a path)."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(source).name)


def specialise(args: argparse.Namespace, family: Any, meta_lr: float) -> dict[str, Any]:
    """Meta-trains from ``args.source`` with the recipe at ``meta_lr``; returns the run's figures."""
    task_options = {} if args.data_dir is None else {"data_dir": args.data_dir}
    config = specialise_config(
        args.source,
        TASK,
        args.horizon,
        task_options=task_options,
        meta_lr=meta_lr,
        num_meta_steps=args.meta_steps,
        seed=args.seed,
    )
    run_dir = args.run_dir / f"{slug(args.source)}-lr{meta_lr:g}"
    t0 = time.perf_counter()
    result = meta_train(config, run_dir, family=family, progress=not args.no_progress)
    runs_per_task = 2 * config.estimator_option("num_pairs")  # each antithetic pair is two runs
    wall = time.perf_counter() - t0
    history = result.history
    return {
        "meta_lr": meta_lr,
        "run_dir": str(run_dir),
        "config": result.config.to_dict(),
        "meta_steps_run_by_this_call": result.steps_run,
        "wall_seconds_of_this_call": wall if result.steps_run == config.num_meta_steps else None,
        "meta_step_seconds": sum(r["seconds"] for r in history),
        "optimizee_steps": config.num_meta_steps * config.batch_size * runs_per_task * config.truncation,
        "validation": [(r["step"], r["val_loss"]) for r in history if "val_loss" in r],
        "best_val_loss": result.best_val,
        "skipped": result.skipped,
        "_result": result,
    }


def evaluate(args: argparse.Namespace, family: Any, result: Any) -> list[dict[str, Any]]:
    """The specialised optimizer, its source and tuned baselines at the horizon and twice it."""
    _, source_phi = pretrained.load_meta_params(args.source)  # The run's optimizer, with the source's φ.
    source_optimizer = result.optimizer
    learned = {
        "specialised": (result.optimizer, result.meta_params),
        f"{args.source} (start)": (source_optimizer, source_phi),
    }
    out = []
    for steps in (args.horizon, 2 * args.horizon):
        t0 = time.perf_counter()
        comparison = compare_with_baselines(
            learned,
            family,
            num_steps=steps,
            num_tune_tasks=args.tune_tasks,
            num_test_tasks=args.tasks,
            seed=args.seed + 1,
            baselines=BASELINES,
            grid=DEFAULT_LR_GRID,
            progress=not args.no_progress,
        )
        row = {
            "steps": steps,
            "rows": comparison.rows(),
            "paired": comparison.paired("specialised"),
            "tuning": {k: {"best_lr": t.best_lr, "at_edge": t.at_edge} for k, t in comparison.tunings.items()},
            "seconds": time.perf_counter() - t0,
            "table": comparison.table(),
            "paired_table": comparison.paired_table("specialised"),
        }
        print(f"\nstep {steps}:\n{row['table']}\n\n{row['paired_table']}", flush=True)
        out.append(row)
    return out


def markdown(data: dict[str, Any]) -> str:
    """The results as Markdown: the runs, then every cell of each horizon's comparison."""
    lines = [f"# Specialising {data['source']} to the LayerNorm MLP", "", f"Machine: {data['machine']}", ""]
    lines += [
        f"Command: `{data['command']}`",
        "",
        "| meta-lr | best validation meta-loss | meta-step seconds | wall seconds | optimizee steps |",
    ]
    lines.append("| --- | --- | --- | --- | --- |")
    for run in data["runs"]:
        wall = "resumed" if run["wall_seconds_of_this_call"] is None else f"{run['wall_seconds_of_this_call']:.0f}"
        lines.append(
            f"| {run['meta_lr']:g} | {run['best_val_loss']:.2f} | {run['meta_step_seconds']:.0f} | {wall} "
            f"| {run['optimizee_steps']:,} |"
        )
    for horizon in data.get("evaluation", []):
        lines += ["", f"## Step {horizon['steps']}", "", horizon["table"], "", horizon["paired_table"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_data_dir_option(parser)
    parser.add_argument("--source", default="generalist", help="a shipped optimizer or a run directory")
    parser.add_argument("--horizon", type=int, default=200, help="the training length to specialise for")
    parser.add_argument("--meta-steps", type=int, default=SPECIALISE_DEFAULTS["num_meta_steps"], help="meta-steps")
    parser.add_argument(
        "--meta-lr", type=float, nargs="+", default=[SPECIALISE_DEFAULTS["meta_lr"]], help="meta-lrs to run"
    )
    parser.add_argument("--tasks", type=int, default=48, help="held-out test initialisations")
    parser.add_argument("--tune-tasks", type=int, default=16, help="other initialisations to tune baselines on")
    parser.add_argument("--seed", type=int, default=0, help="seed of meta-training (evaluation: seed + 1)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/specialise"), help="folder of the run directories")
    parser.add_argument("--no-evaluate", action="store_true", help="meta-train only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args, results = harness.start(parser, "specialise.json")
    if args.out is None:
        results.path = harness.RESULTS / f"specialise_{slug(args.source)}{'_sweep' if args.no_evaluate else ''}.json"
    results.data.update(source=args.source, horizon=args.horizon, task=TASK)
    family = layernorm_mlp.make(args.data_dir)
    runs = []
    for meta_lr in args.meta_lr:
        run = specialise(args, family, meta_lr)
        runs.append(run)
        results.add("runs", {k: v for k, v in run.items() if not k.startswith("_")})
        print(f"meta-lr {meta_lr:g}: best validation meta-loss {run['best_val_loss']:.3f}", flush=True)
    if not args.no_evaluate:
        results.data["evaluation"] = evaluate(args, family, runs[0]["_result"])
    results.finish()
    harness.write_text(results.path.with_suffix(".md"), markdown(results.data))


if __name__ == "__main__":
    main()
