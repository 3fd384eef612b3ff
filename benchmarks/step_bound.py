"""The feature MLP's step bound κ (``step_bound``) on trained optimizers, on tuning initialisations.

For every optimizer of ``--optimizers`` (shipped names or run directories) and every
bound of ``--bounds`` ("none": no bound), the same φ runs on the
battery's character-level LM, the paper's MNIST MLP, the regression network and the
CNN (``TASKS``), on initialisations of the *tuning* stream (the stream
``generalisation.py`` tunes its baselines on, here with seed 7, there 1): never the battery's test
initialisations, so a bound chosen here is not chosen on the figures it is judged by.
Per cell: the mean loss at the start, its largest rise above the start (0 if it never
rose), the step of that rise, and the mean loss at steps 100 and at the end.

Where the large steps are (``--outliers``, the optimizers without a bound): on one LM
task of the tuning stream, for each of the first three steps, the tensor with the
largest step in units of η (the learned rate), that step, where it is, and the
gradient there over the tensor's root mean square.

Writes ``step_bound.{json,md}`` into ``--results-dir``.

    python benchmarks/step_bound.py --data-dir DIR --optimizers runs/generalist-v5 --bounds none 30 10 3 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import generalisation
import harness
import jax
import numpy as np
import optax

from l2l_jax import optimizers, pretrained
from l2l_jax import tasks as tasks_lib
from l2l_jax.evaluation import learned_curves, sample_tasks

#: The battery's tasks run here (``generalisation.TASKS`` by label): label -> (steps, initialisations).
TASKS = {"char LM": (100, 16), "base MLP": (200, 16), "regression network": (200, 16), "CNN": (200, 8)}
#: The seed of the initialisations run here, from the tuning stream (``generalisation.py`` tunes its baselines on
#: that stream with seed 1), so never the battery's test initialisations.
TUNE_SEED = 7


def bound(text: str) -> float | None:
    """``"none"`` -> ``None``; else a positive number."""
    if text == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"a bound is a positive number or none, got {text!r}")
    return value


def cell(optimizer: Any, phi: Any, family: Any, steps: int, inits: int) -> dict[str, Any]:
    """The mean curve's start, largest rise above it (and where), and losses at step 100 and the end."""
    curve = np.asarray(learned_curves(optimizer, phi, family, sample_tasks(family, TUNE_SEED, inits, "tune"), steps))
    mean = curve.mean(axis=0)
    rise = float(np.max(mean) - mean[0]) if np.all(np.isfinite(mean)) else float("inf")
    return {
        "start": float(mean[0]),
        "rise": rise,
        "rise_step": int(np.argmax(mean)),
        "step_100": float(mean[min(100, steps)]),
        "end": float(mean[-1]),
    }


def outliers(optimizer: Any, phi: Any, family: Any, steps: int = 3) -> list[dict[str, Any]]:
    """Per step, the tensor whose step is largest in units of η, on the tuning stream's first task."""
    runs = sample_tasks(family, TUNE_SEED, 1, "tune")
    task, key = jax.tree.map(lambda x: x[0], runs.task_params), runs.keys[0]
    params = family.init(task, jax.random.fold_in(key, 0))
    tx = optimizer.as_optax(phi)
    state, lr, out = tx.init(params), float(np.exp(phi["log_lr"])), []
    for t in range(steps):
        batch_key = jax.random.fold_in(key, t + 1)
        loss, grads = jax.value_and_grad(lambda p, k=batch_key: family.loss(task, p, k))(params)
        updates, state = tx.update(grads, state, params)
        paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(updates)]
        steps_, grads_ = [np.abs(np.asarray(u)) for u in jax.tree.leaves(updates)], jax.tree.leaves(grads)
        i = int(np.argmax([np.max(u) for u in steps_]))
        u, g = steps_[i], np.asarray(grads_[i])
        where = np.unravel_index(int(np.argmax(u)), u.shape)
        out.append({
            "step": t + 1, "loss": float(loss), "tensor": paths[i], "largest_step_in_lr": float(u[where]) / lr,
            "median_step_in_lr": float(np.median(u)) / lr, "at": [int(j) for j in where],
            "gradient_over_rms": float(abs(g[where]) / np.sqrt(np.mean(g**2))),
        })  # fmt: skip
        params = optax.apply_updates(params, updates)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| optimizer | κ | task | steps | start | largest rise above start (step) | loss at 100 | loss at end |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        rise = f"{r['rise']:+.3f} ({r['rise_step']})" if r["rise"] > 0 else "none"
        kappa = "none" if r["step_bound"] is None else f"{r['step_bound']:g}"
        lines.append(
            f"| {r['optimizer']} | {kappa} | {r['task']} | {r['steps']} | {r['start']:.3f} | {rise} "
            f"| {r['step_100']:.4f} | {r['end']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_data_dir_option(parser)
    parser.add_argument("--optimizers", nargs="+", default=["generalist"], help="shipped names or run directories")
    parser.add_argument("--bounds", nargs="+", type=bound, default=[None, 10.0, 3.0], help="κ values, or none")
    parser.add_argument("--tasks", nargs="+", default=None, help=f"a subset of: {', '.join(TASKS)}")
    parser.add_argument("--max-steps", type=harness.count, default=None, help="cap every run (for quick checks)")
    parser.add_argument("--inits", type=harness.count, default=None, help="for every task (for quick checks)")
    parser.add_argument("--outliers", action="store_true", help="also report where the largest steps are (LM)")
    parser.add_argument("--results-dir", type=Path, default=harness.RESULTS)
    args = parser.parse_args()
    unknown = [t for t in args.tasks or () if t not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {', '.join(map(repr, unknown))}; choose from {', '.join(map(repr, TASKS))}")
    battery = {t.label: t for t in generalisation.TASKS}
    selected = [battery[label] for label in TASKS if args.tasks is None or label in args.tasks]
    trained = {name: pretrained.load_meta_params(name) for name in args.optimizers}
    for name, (optimizer, _) in trained.items():
        if optimizer.name != "feature_mlp":
            parser.error(f"{name} is a {optimizer.name!r} optimizer; only feature_mlp has a step bound")
    t0, rows = time.perf_counter(), []
    args.results_dir.mkdir(parents=True, exist_ok=True)
    results = harness.Results(
        args.results_dir / "step_bound.json", machine=harness.describe_machine(), command=harness.command()
    )
    for task in selected:
        family = generalisation.build_family(task, args.data_dir)
        steps, inits = TASKS[task.label]
        steps, inits = min(steps, args.max_steps or steps), args.inits or inits
        for name, (optimizer, phi) in trained.items():
            for kappa in args.bounds:
                bounded = optimizers.get(optimizer.name, **{**optimizer.config(), "step_bound": kappa})
                row = {"optimizer": name, "step_bound": kappa, "task": task.label, "steps": steps, "inits": inits}
                row.update(cell(bounded, phi, family, steps, inits))
                rows.append(row)
                results.add("rows", row)
                print(table([row]).splitlines()[-1], flush=True)
    text = table(rows)
    if args.outliers:
        family = tasks_lib.get("char_lm")
        lines = ["", "| optimizer | step | loss before | tensor | largest step / η (median) | at | gradient there / RMS |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for name, (optimizer, phi) in trained.items():
            plain = optimizers.get(optimizer.name, **{**optimizer.config(), "step_bound": None})
            for r in outliers(plain, phi, family):
                results.add("outliers", {"optimizer": name, **r})
                lines.append(f"| {name} | {r['step']} | {r['loss']:.3f} | `{r['tensor']}` | "
                             f"{r['largest_step_in_lr']:.1f} ({r['median_step_in_lr']:.2f}) | {tuple(r['at'])} | "
                             f"{r['gradient_over_rms']:.1f} |")  # fmt: skip
        text += "\n".join(lines) + "\n"
        print("\n".join(lines), flush=True)
    results.finish()
    harness.write_text(args.results_dir / "step_bound.md", text)
    print(f"{(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
