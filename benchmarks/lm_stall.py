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
``TUNE_SEED``, tuning stream): never the battery's test initialisations. With ``--stream test``
everything runs instead on the battery's own test initialisations and minibatches
(``generalisation.SEED``), to check on them what the tuning runs found; the files are then
``lm_stall_test.{json,md}``.

Then where in the LM: the shipped φ with the update of one part of the network
(``PARTS``: the GRU cell, its hidden-to-hidden kernels, its input kernels and biases, the embedding, the
read-out, everything) multiplied by ``--rate`` / η, so that part alone moves as if η were
``--rate``; beside them tuned Adam on the same runs, at the rate the battery tuned for
each horizon (``generalisation.json`` in ``benchmarks/results``).

Per cell: mean loss ± standard error at each step of ``TASKS``, and the difference from
the optimizer as shipped (paired over initialisations, ± paired standard error).

Writes ``lm_stall.{json,md}`` into ``--results-dir``.

    python benchmarks/lm_stall.py --data-dir DIR
    python benchmarks/lm_stall.py --data-dir DIR --stream test
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import generalisation
import harness
import jax
import jax.numpy as jnp
import numpy as np
import optax
import step_bound

from l2l_jax import pretrained
from l2l_jax.evaluation import baselines, learned_curves, loss_curves, sample_tasks
from l2l_jax.optimizers import LearnedOptimizer, MetaParams

#: The battery's tasks run here (``generalisation.TASKS`` by label): label -> steps reported (the last is the run's).
TASKS = {"char LM": (100, 200, 500), "base MLP": (100, 200)}
#: The variants of φ: name -> (η replaced by ``--rate``, correction d removed).
VARIANTS = {"as shipped": (False, False), "η = rate": (True, False), "d = 0": (False, True), "both": (True, True)}
#: The streams of initialisations (``--stream``) and the name of each one's results files.
STREAMS = {"tune": "lm_stall", "test": "lm_stall_test"}
#: Each stream's seed: the tuning stream of ``step_bound``; the battery's own test initialisations.
STREAM_SEEDS = {"tune": step_bound.TUNE_SEED, "test": generalisation.SEED}
#: The battery's task whose parts are scaled (at its steps in ``TASKS``).
PART_TASK = "char LM"
#: The parts of the LM (``CharLMFamily``'s flax parameter paths) whose update is scaled: name -> path prefixes.
PARTS = {
    "GRU cell": ("GRUCell_0/",),
    "GRU hidden-to-hidden kernels": ("GRUCell_0/hn/kernel", "GRUCell_0/hr/kernel", "GRUCell_0/hz/kernel"),
    "GRU input kernels and biases": ("GRUCell_0/i", "GRUCell_0/hn/bias"),
    "embedding": ("Embed_0/",),
    "read-out": ("Dense_0/",),
    "everything": ("",),
}


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


def part_mask(params: Any, prefixes: tuple[str, ...]) -> Any:
    """True at the leaves of ``params`` whose path, written ``"GRUCell_0/hn/kernel"``, starts with one of ``prefixes``."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: jax.tree_util.keystr(p, simple=True, separator="/").startswith(prefixes), params
    )


def scaled_part(
    optimizer: LearnedOptimizer, prefixes: tuple[str, ...], scale: float
) -> Callable[[MetaParams], optax.GradientTransformation]:
    """``φ ↦`` the learned optimizer with the update of the leaves under ``prefixes`` multiplied by ``scale``."""

    def make(phi: MetaParams) -> optax.GradientTransformation:
        return optax.chain(optimizer.as_optax(phi), optax.masked(optax.scale(scale), lambda p: part_mask(p, prefixes)))

    return make


def battery_rates(path: Path, labels: tuple[str, ...], name: str = "adam") -> dict[int, float]:
    """The battery's tuned rate of ``name`` per horizon on the tasks ``labels`` (``generalisation.json``)."""
    rows = json.loads(path.read_text())["rows"]
    return {r["steps"]: r["learning_rate"] for r in rows if r["task"] in labels and r["optimizer"] == name}


def part_rows(
    optimizer: LearnedOptimizer,
    phi: MetaParams,
    family: Any,
    runs: Any,
    shipped: np.ndarray,
    scale: float,
    steps: dict[int, float],
) -> list[dict[str, Any]]:
    """`PARTS` each scaled by ``scale``, and tuned Adam at ``steps``' rates (reported step -> battery horizon's rate).

    ``shipped`` is the as-shipped optimizer's curves on ``runs``; every row is paired with it, and every
    part's row with tuned Adam at that step.
    """
    reported = tuple(sorted(steps))
    adam = {s: np.asarray(loss_curves(baselines.get("adam"), lr, family, runs, s)) for s, lr in steps.items()}
    curves = {"as shipped": shipped}
    for name, prefixes in PARTS.items():
        curves[f"{name} ×{scale:.3g}"] = np.asarray(
            loss_curves(scaled_part(optimizer, prefixes, scale), phi, family, runs, reported[-1])
        )
    rows = []
    for row in (r for r in rows_for(PART_TASK, curves, reported) if r["variant"] != "as shipped"):
        d, se = harness.paired_difference(curves[row["variant"]][:, row["steps"]], adam[row["steps"]][:, row["steps"]])
        rows.append({**row, "minus_adam": d, "minus_adam_stderr": se})
    for s, lr in steps.items():
        row = {"task": PART_TASK, "variant": f"tuned Adam ({lr:.3g})", "steps": s, "inits": len(adam[s])}
        row.update(mean=float(np.mean(adam[s][:, s])), stderr=harness.stderr(adam[s][:, s]))
        d, se = harness.paired_difference(adam[s][:, s], shipped[:, s])
        rows.append({**row, "minus_shipped": d, "minus_shipped_stderr": se})
    return rows


def rows_for(label: str, curves: dict[str, np.ndarray], steps: tuple[int, ...]) -> list[dict[str, Any]]:
    """One row per variant and step: mean ± s.e., and minus the as-shipped run, paired."""
    return harness.paired_rows(label, curves, steps, "variant", "as shipped", "minus_shipped")


def table(rows: list[dict[str, Any]], against: tuple[str, ...] = ("shipped",)) -> str:
    """Markdown: one line per row, with its paired differences from each of ``against`` (``minus_<name>``)."""
    titles = {"shipped": "minus as shipped", "adam": "minus tuned Adam"}
    lines = [
        "| task | variant | steps | mean loss (± s.e.) | "
        + " | ".join(f"{titles[a]}, paired (± s.e.)" for a in against)
        + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in against) + " |",
    ]
    for r in rows:
        diffs = [f"{r[f'minus_{a}']:+.4f} ({r[f'minus_{a}_stderr']:.4f})" if f"minus_{a}" in r else "" for a in against]
        lines.append(
            f"| {r['task']} | {r['variant']} | {r['steps']} | {r['mean']:.4f} ({r['stderr']:.4f}) | {' | '.join(diffs)} |"
        )
    return "\n".join(lines) + "\n"


def stream_runs(family: Any, stream: str, inits: int) -> Any:
    """The first ``inits`` initialisations and minibatch streams of ``stream`` (``STREAMS``) on ``family``."""
    return sample_tasks(family, STREAM_SEEDS[stream], inits, stream)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_data_dir_option(parser)
    parser.add_argument("--optimizer", default="generalist", help="a shipped name or run directory (a feature_mlp)")
    parser.add_argument("--rate", type=float, default=None, help="η of the variants (default: generalist-v1's)")
    parser.add_argument("--inits", type=harness.count, default=16)
    parser.add_argument(
        "--stream",
        choices=STREAMS,
        default="tune",
        help="tune: initialisations of the tuning stream (step_bound's seed); test: the battery's test initialisations",
    )
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
        args.results_dir / f"{STREAMS[args.stream]}.json",
        machine=harness.describe_machine(),
        command=harness.command(),
        optimizer=str(args.optimizer),
        stream=args.stream,
        rate=rate,
    )
    for label, steps in TASKS.items():
        family = generalisation.build_family(battery[label], args.data_dir)
        steps = tuple(sorted({min(s, args.max_steps or s) for s in steps}))
        runs = stream_runs(family, args.stream, args.inits)
        curves = {
            name: np.asarray(learned_curves(optimizer, variant(phi, rate if r else None, d), family, runs, steps[-1]))
            for name, (r, d) in VARIANTS.items()
        }
        task_rows = rows_for(label, curves, steps)
        for row in task_rows:
            results.add("rows", row)
        rows += task_rows
        print(table(task_rows), flush=True)
        if label == PART_TASK:
            scale = rate / float(jnp.exp(phi["log_lr"]))
            rates = battery_rates(harness.RESULTS / "generalisation.json", (PART_TASK, f"{PART_TASK} long"))
            adam_steps = {min(s, args.max_steps or s): rates[s] for s in TASKS[PART_TASK]}
            parts = part_rows(optimizer, phi, family, runs, curves["as shipped"], scale, adam_steps)
            for row in parts:
                results.add("parts", row)
            print(table(parts, ("shipped", "adam")), flush=True)
    results.finish()
    harness.write_text(
        args.results_dir / f"{STREAMS[args.stream]}.md",
        table(rows)
        + f"\nη of the variants: {rate:.4g}.\n\nThe {PART_TASK}'s parts, each part's update x rate / η (tuned Adam: the"
        + " battery's rate for the horizon):\n\n"
        + table(parts, ("shipped", "adam")),
    )
    print(f"{(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
