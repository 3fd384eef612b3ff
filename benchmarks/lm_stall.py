"""Why the generalist stalls on the character-level LM: its learned rate η, and its correction term.

The shipped feature MLP's update is ``exp(m) · (step_mult · d − η · n)`` (`FeatureMLP`,
``output="nominal"``): Adam's direction n at the learned rate η, plus the network's
correction d at the fixed scale ``step_mult``, which does not shrink with η. Over 500
steps of the battery's character-level LM the generalist stalls (``generalisation.py``,
``char LM long``) while ``generalist-v1``, whose η is about a third of it, does not.
This runs the same φ four ways (``VARIANTS``): as shipped; with η set to ``--rate``
(default: ``generalist-v1``'s learned η); with d removed (the last layer's d output set to
zero, so the update is ``−exp(m) · η · n``); and both. Each on the LM (to 500 steps) and
the paper's MLP (to 200), on the initialisations ``step_bound.py`` runs (its
``TUNE_SEED``, tuning stream): never the battery's test initialisations.

Per cell: mean loss ± standard error at each step of ``TASKS``, and the difference from
the optimizer as shipped (paired over initialisations, ± paired standard error).

Writes ``lm_stall.{json,md}`` into ``--results-dir``.

    python benchmarks/lm_stall.py --data-dir DIR
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import generalisation
import harness
import jax.numpy as jnp
import numpy as np
import step_bound

from l2l_jax import pretrained
from l2l_jax.evaluation import learned_curves, sample_tasks
from l2l_jax.optimizers import MetaParams

#: The battery's tasks run here (``generalisation.TASKS`` by label): label -> steps reported (the last is the run's).
TASKS = {"char LM": (100, 200, 500), "base MLP": (100, 200)}
#: The variants of φ: name -> (η replaced by ``--rate``, correction d removed).
VARIANTS = {"as shipped": (False, False), "η = rate": (True, False), "d = 0": (False, True), "both": (True, True)}


def variant(phi: MetaParams, rate: float | None, without_correction: bool) -> MetaParams:
    """``phi`` with η = ``rate`` (unless ``None``) and, if ``without_correction``, the network's d output zero."""
    out = dict(phi)
    if rate is not None:
        out["log_lr"] = jnp.log(jnp.asarray(rate, jnp.float32))
    if without_correction:
        last = phi["layers"][-1]
        zeroed = {"w": jnp.asarray(last["w"]).at[:, 0].set(0.0), "b": jnp.asarray(last["b"]).at[0].set(0.0)}
        out["layers"] = [*phi["layers"][:-1], zeroed]
    return out


def rows_for(label: str, curves: dict[str, np.ndarray], steps: tuple[int, ...]) -> list[dict[str, Any]]:
    """One row per variant and step: mean ± s.e., and minus the as-shipped run, paired."""
    rows = []
    base = curves["as shipped"]
    for name, curve in curves.items():
        for s in steps:
            row = {"task": label, "variant": name, "steps": s, "inits": len(curve)}
            row.update(mean=float(np.mean(curve[:, s])), stderr=float(np.std(curve[:, s]) / np.sqrt(len(curve))))
            if name != "as shipped":
                d, se = harness.paired_difference(curve[:, s], base[:, s])
                row.update(minus_shipped=d, minus_shipped_stderr=se)
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| task | variant | steps | mean loss (± s.e.) | minus as shipped, paired (± s.e.) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        diff = f"{r['minus_shipped']:+.4f} ({r['minus_shipped_stderr']:.4f})" if "minus_shipped" in r else ""
        lines.append(f"| {r['task']} | {r['variant']} | {r['steps']} | {r['mean']:.4f} ({r['stderr']:.4f}) | {diff} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_data_dir_option(parser)
    parser.add_argument("--optimizer", default="generalist", help="a shipped name or run directory (a feature_mlp)")
    parser.add_argument("--rate", type=float, default=None, help="η of the variants (default: generalist-v1's)")
    parser.add_argument("--inits", type=harness.count, default=16)
    parser.add_argument("--max-steps", type=harness.count, default=None, help="cap every run (for quick checks)")
    parser.add_argument("--results-dir", type=Path, default=harness.RESULTS)
    args = parser.parse_args()
    optimizer, phi = pretrained.load_meta_params(args.optimizer)
    if optimizer.name != "feature_mlp" or optimizer.output != "nominal":
        parser.error(f"{args.optimizer} is not a feature_mlp with output='nominal': it has no η and d to vary")
    rate = (
        args.rate if args.rate is not None else float(np.exp(pretrained.load_meta_params("generalist-v1")[1]["log_lr"]))
    )
    if not 0 < rate < float("inf"):
        parser.error(f"--rate must be a positive number, got {rate}")
    battery = {t.label: t for t in generalisation.TASKS}
    t0, rows = time.perf_counter(), []
    args.results_dir.mkdir(parents=True, exist_ok=True)
    results = harness.Results(
        args.results_dir / "lm_stall.json",
        machine=harness.describe_machine(),
        command=harness.command(),
        optimizer=str(args.optimizer),
        rate=rate,
    )
    for label, steps in TASKS.items():
        family = generalisation.build_family(battery[label], args.data_dir)
        steps = tuple(sorted({min(s, args.max_steps or s) for s in steps}))
        runs = sample_tasks(family, step_bound.TUNE_SEED, args.inits, "tune")
        curves = {
            name: np.asarray(learned_curves(optimizer, variant(phi, rate if r else None, d), family, runs, steps[-1]))
            for name, (r, d) in VARIANTS.items()
        }
        task_rows = rows_for(label, curves, steps)
        for row in task_rows:
            results.add("rows", row)
        rows += task_rows
        print(table(task_rows), flush=True)
    results.finish()
    harness.write_text(args.results_dir / "lm_stall.md", table(rows) + f"\nη of the variants: {rate:.4g}.\n")
    print(f"{(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
