"""The generalist's learned rate η times a factor: what its mixture's objective and the battery's tasks say.

Every factor m of ``--factors`` runs the same φ with η × m (``log_lr`` + log m, nothing
else changed: the step bound κη scales with it), on initialisations of the tuning stream
(``step_bound.TUNE_SEED``), never the battery's test initialisations:

- the meta-training objective on the mixture the generalist was meta-trained on
  (``generalist.V11_CONFIG``'s members): each member's mean log loss over the first
  ``--mixture-steps`` steps of ``--mixture-inits`` runs, and the mean over members
  weighted as the mixture samples them;
- the battery's tasks (``TASKS``): the mean loss at steps 100 and 200, paired against
  factor 1, and against tuned NAG at the rate the battery tuned for that task and horizon
  (read from ``--rates-from``, the battery's ``generalisation.json``); and the first
  step's change of the loss, f(θ_1) − f(θ_0) (each on its own minibatch, as the battery
  records them), mean ± s.e.: positive where the mean loss rises above its start.

Writes ``learned_rate.{json,md}`` into ``--results-dir``.

    python benchmarks/learned_rate.py --data-dir DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import generalisation
import generalist
import harness
import jax.numpy as jnp
import numpy as np
import step_bound

from l2l_jax import pretrained
from l2l_jax.errors import L2LError
from l2l_jax.evaluation import baselines, learned_curves, loss_curves, sample_tasks

#: The factors run by default: 10^(k/8) for k = −1 to 3 (0.75 to 2.37).
FACTORS = tuple(float(10 ** (k / 8)) for k in range(-1, 4))
#: The battery's tasks run here (``generalisation.TASKS`` by label) -> initialisations.
TASKS = {"base MLP": 48, "40 units": 48, "2 layers": 48, "ReLU": 48, "tanh": 48, "regression network": 48, "CNN": 16}
#: The steps at which the battery's tasks are read.
STEPS = (100, 200)


def scaled(phi: dict[str, Any], factor: float) -> dict[str, Any]:
    """``phi`` with its learned rate η multiplied by ``factor``; every other entry is the same object."""
    return {**phi, "log_lr": phi["log_lr"] + jnp.log(jnp.asarray(factor, jnp.float32))}


def member_label(member: dict[str, Any]) -> str:
    """A short name for a mixture member: ``mnist 20x1 sigmoid 28px``, ``quadratic``, ``… (scaled)``."""
    base = generalist.base_member(member)
    o = base["options"]
    if base["task"] != "mnist":
        label = base["task"]
    else:
        label = f"mnist {o['hidden_units']}x{o['hidden_layers']} {o['activation']} {o.get('image_size', 28)}px"
        label += " autoencoder" if o.get("objective") == "autoencode" else ""
    return label + (" (scaled)" if member["task"] == "scale_augmented" else "")


def weighted_score(scores: list[float], weights: list[float]) -> float:
    """The mixture's objective: the members' scores averaged with the mixture's sampling weights."""
    return float(np.average(scores, weights=weights))


def nag_rates(results: dict[str, Any]) -> dict[tuple[str, int], float]:
    """``{(task, steps): rate}`` of tuned NAG in a battery's results."""
    return {(r["task"], r["steps"]): r["learning_rate"] for r in results["rows"] if r["optimizer"] == "nag"}


def mixture_rows(optimizer: Any, phi: Any, factors: tuple[float, ...], args: argparse.Namespace) -> list[dict]:
    """Per factor, each member's mean log loss and the weighted mean (the meta-training objective)."""
    config = generalist.with_data_dir(generalist.V11_CONFIG, args.data_dir)
    members = config.task_options["members"]
    families = config.build_task().families
    runs = [sample_tasks(f, step_bound.TUNE_SEED, args.mixture_inits, "tune") for f in families]
    weights = [m.get("weight", 1.0) for m in members]
    rows = []
    for factor in factors:
        curves = [
            learned_curves(optimizer, scaled(phi, factor), f, r, args.mixture_steps) for f, r in zip(families, runs)
        ]
        scores = [float(np.mean(np.log(c))) for c in curves]
        rows.append({
            "factor": factor, "members": dict(zip(map(member_label, members), scores)),
            "objective": weighted_score(scores, weights),
        })  # fmt: skip
        print(f"mixture, factor {factor:.3f}: {rows[-1]['objective']:.4f}", flush=True)
    return rows


def task_rows(optimizer: Any, phi: Any, factors: tuple[float, ...], args: argparse.Namespace) -> list[dict]:
    """Per battery task, factor and step: the mean loss, and paired differences to factor 1 and to tuned NAG."""
    battery = {t.label: t for t in generalisation.TASKS}
    rates = nag_rates(json.loads(args.rates_from.read_text()))
    rows = []
    for label in args.tasks:
        family = generalisation.build_family(battery[label], args.data_dir)
        runs = sample_tasks(family, step_bound.TUNE_SEED, args.inits or TASKS[label], "tune")
        horizon = min(max(STEPS), args.max_steps or max(STEPS))
        curves = {f: learned_curves(optimizer, scaled(phi, f), family, runs, horizon) for f in sorted({1.0, *factors})}
        first = {f: harness.paired_difference(c[:, 1], c[:, 0]) for f, c in curves.items()}
        for nominal in STEPS:  # NAG's rate is the battery's for the nominal step, also when --max-steps cuts it.
            steps = min(nominal, horizon)
            nag = loss_curves(baselines.get("nag"), rates[(label, nominal)], family, runs, steps)[:, steps]
            for factor in factors:
                final = curves[factor][:, steps]
                d1, s1 = harness.paired_difference(final, curves[1.0][:, steps])
                dn, sn = harness.paired_difference(final, nag)
                rows.append({
                    "task": label, "steps": steps, "inits": runs.size, "factor": factor,
                    "mean_loss": float(np.mean(final)), "minus_factor_1": d1, "minus_factor_1_stderr": s1,
                    "nag_rate": rates[(label, nominal)], "nag_loss": float(np.mean(nag)),
                    "minus_nag": dn, "minus_nag_stderr": sn,
                    "first_step": first[factor][0], "first_step_stderr": first[factor][1],
                })  # fmt: skip
        print(f"{label}: done", flush=True)
    return rows


def tables(mixture: list[dict], tasks: list[dict]) -> str:
    """The mixture's table (one row per factor), then the battery tasks' (none without tasks)."""
    members = list(mixture[0]["members"]) if mixture else []
    lines = [
        "| factor | mixture objective (weighted) | " + " | ".join(members) + " |",
        "| --- | --- |" + " --- |" * len(members),
    ]
    for r in mixture:
        lines.append(
            f"| {r['factor']:.3f} | {r['objective']:.4f} | "
            + " | ".join(f"{r['members'][m]:.3f}" for m in members)
            + " |"
        )
    if not tasks:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        (
            "| task | steps | factor | mean loss | − factor 1, paired (± s.e.) | tuned NAG (rate) "
            "| − NAG, paired (± s.e.) | first step's change (± s.e.) |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in tasks:
        lines.append(
            f"| {r['task']} | {r['steps']} | {r['factor']:.3f} | {r['mean_loss']:.4f} "
            f"| {r['minus_factor_1']:+.4f} ({r['minus_factor_1_stderr']:.4f}) | {r['nag_loss']:.4f} ({r['nag_rate']:.3g}) "
            f"| {r['minus_nag']:+.4f} ({r['minus_nag_stderr']:.4f}) | {r['first_step']:+.4f} ({r['first_step_stderr']:.4f}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_data_dir_option(parser)
    parser.add_argument("--optimizer", default="generalist", help="a shipped name or a run directory")
    parser.add_argument(
        "--optimizer-options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="options added to --optimizer's, same φ (VALUE as JSON), e.g. warmup_steps=2",
    )
    parser.add_argument("--factors", nargs="+", type=harness.positive, default=list(FACTORS))
    parser.add_argument(
        "--tasks", nargs="*", default=list(TASKS), help=f"a subset of: {', '.join(TASKS)} (none: the mixture only)"
    )
    parser.add_argument("--inits", type=harness.count, default=None, help="for every battery task (quick checks)")
    parser.add_argument("--max-steps", type=harness.count, default=None, help="cap the battery's runs (quick checks)")
    parser.add_argument("--mixture-inits", type=harness.count, default=8)
    parser.add_argument("--mixture-steps", type=harness.count, default=200)
    parser.add_argument("--rates-from", type=Path, default=harness.RESULTS / "generalisation.json")
    parser.add_argument("--results-dir", type=Path, default=harness.RESULTS)
    args = parser.parse_args()
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {', '.join(map(repr, unknown))}; choose from {', '.join(map(repr, TASKS))}")
    if not args.rates_from.is_file():
        parser.error(f"--rates-from {args.rates_from}: no such file (the battery's generalisation.json)")
    try:
        options = dict(map(generalisation.option, args.optimizer_options))
        optimizer, phi = generalisation.with_options(*pretrained.load_meta_params(args.optimizer), options)
    except (ValueError, L2LError) as e:
        parser.error(f"--optimizer / --optimizer-options: {e}")
    if not isinstance(phi, dict) or "log_lr" not in phi:
        parser.error(f"--optimizer {args.optimizer}: a {optimizer.name!r} optimizer has no learned rate η (log_lr)")
    factors = tuple(sorted(set(args.factors)))
    t0 = time.perf_counter()
    args.results_dir.mkdir(parents=True, exist_ok=True)
    results = harness.Results(
        args.results_dir / "learned_rate.json",
        machine=harness.describe_machine(),
        command=harness.command(),
        optimizer={"name": optimizer.name, "options": optimizer.config()},
    )
    mixture = mixture_rows(optimizer, phi, factors, args)
    tasks = task_rows(optimizer, phi, factors, args)
    for r in mixture:
        results.add("mixture", r)
    for r in tasks:
        results.add("tasks", r)
    results.finish()
    minutes = (time.perf_counter() - t0) / 60
    footer = f"\n{minutes:.1f} min on {harness.describe_machine()}. Command: `{harness.command()}`\n"
    harness.write_text(args.results_dir / "learned_rate.md", tables(mixture, tasks) + footer)
    print(tables(mixture, tasks) + footer)


if __name__ == "__main__":
    main()
