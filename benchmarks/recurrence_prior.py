"""The generalist with a prior read from the model: smaller steps on the tensors that feed a recurrence.

``l2l_jax.optimizers.recurrent_tensors`` reads from a task's loss which parameters reach
the state of a weight-tied recurrence (a recurrent cell's tensors and those upstream of
it). This multiplies the shipped generalist's updates of those tensors by ``--scale``
(default: ``generalist-v1``'s learned η over the generalist's, the factor ``lm_stall.py``
used, not tuned here) and leaves every other tensor's update as shipped.

First, for every task of the battery (``generalisation.TASKS``), the tensors it flags: on a
task with none, the optimizer is the shipped one exactly. Then on the battery's
character-level LM, at steps 100, 200 and 500, on the tuning stream's initialisations
(``step_bound.TUNE_SEED``) and on the battery's own test initialisations and minibatches
(``generalisation.SEED``): the generalist with the prior, as shipped, and tuned Adam at
the rate the battery tuned for each horizon (``generalisation.json``), mean loss ± s.e.
and paired differences. Then the same three on a second recurrent network, which the
generalist never saw in meta-training: a GRU of 32 units reading 28×28 MNIST digits row by
row (``tasks.MNISTRowGRUFamily``), at steps 100, 200 and 300, Adam's rate tuned per
horizon as the battery tunes its held-out tasks' (``--no-row-gru`` skips it).

Writes ``recurrence_prior.{json,md}`` into ``--results-dir``. ``--record`` instead writes
the scale into the optimizer's ``optimizer.json`` (``recurrence_prior``), where
``pretrained.load(name, recurrent=mask)`` and the battery's ``--recurrence-prior`` read it.

    python benchmarks/recurrence_prior.py --data-dir DIR
    python benchmarks/recurrence_prior.py --record   # the shipped generalist's factor
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import generalisation
import harness
import lm_stall
import numpy as np
import step_bound

from l2l_jax import pretrained
from l2l_jax import run_directory as rd
from l2l_jax import tasks as tasks_lib
from l2l_jax.evaluation import EvalTasks, baselines, learned_curves, loss_curves, sample_tasks
from l2l_jax.optimizers import LearnedOptimizer, MetaParams

#: The battery's task the LM rows run on (at ``lm_stall.TASKS``' steps for it).
LM_TASK = lm_stall.PART_TASK
#: The second recurrent network: ``tasks.MNISTRowGRUFamily`` at 28×28 (a GRU of 32 units over 28 rows).
ROW_GRU_LABEL = "MNIST row GRU, test runs"
ROW_GRU_STEPS = (100, 200, 300)
#: How the default scale is chosen.
DEFAULT_BASIS = "generalist-v1's learned η over this optimizer's (a factor not tuned on any run)"
#: The streams of initialisations: name -> seed.
STREAMS = {"tune": step_bound.TUNE_SEED, "test": generalisation.SEED}


def record(name_or_path: str, scale: float, basis: str) -> None:
    """Writes ``scale`` into the optimizer's ``optimizer.json`` as ``recurrence_prior`` (φ unchanged)."""
    fields = {"scale": scale, "basis": basis, "command": harness.command()}
    directory = pretrained.locate(name_or_path)
    rd.update_optimizer_meta(directory, recurrence_prior=fields)
    print(f"recorded recurrence_prior {fields} in {directory / rd.OPTIMIZER_META}")


def lm_rows(
    optimizer: LearnedOptimizer,
    phi: MetaParams,
    family: Any,
    runs: EvalTasks,
    mask: Any,
    scale: float,
    rates: dict[int, float],
    label: str,
) -> list[dict[str, Any]]:
    """As shipped, with the prior, and tuned Adam at ``rates`` (reported step -> rate), each step paired with the others."""
    steps = tuple(sorted(rates))
    shipped = np.asarray(learned_curves(optimizer, phi, family, runs, steps[-1]))
    prior = np.asarray(loss_curves(generalisation.with_prior(optimizer, mask, scale), phi, family, runs, steps[-1]))
    rows = []
    for s in steps:
        adam = np.asarray(loss_curves(baselines.get("adam"), rates[s], family, runs, s))
        curves = {"as shipped": shipped, f"recurrence prior ×{scale:.3g}": prior, f"tuned Adam ({rates[s]:.3g})": adam}
        for name, curve in curves.items():
            row = {"task": label, "variant": name, "steps": s, "inits": len(curve)}
            row.update(mean=float(np.mean(curve[:, s])), stderr=harness.stderr(curve[:, s]))
            for reference, other in (("shipped", shipped), ("adam", adam)):
                if other is not curve:
                    diff = harness.paired_difference(curve[:, s], other[:, s])
                    row[f"minus_{reference}"], row[f"minus_{reference}_stderr"] = diff
            rows.append(row)
    return rows


def row_gru_rows(
    optimizer: LearnedOptimizer, phi: MetaParams, scale: float, data_dir: str | None, inits: int, steps: tuple[int, ...]
) -> list[dict[str, Any]]:
    """The generalist as shipped and with the prior, and tuned Adam, on a GRU reading MNIST row by row.

    Adam's rate is tuned per horizon as the battery tunes its held-out tasks' (its grid,
    coarse to fine, on the tuning stream's initialisations); every row then runs on the
    test stream's (both ``generalisation.SEED``).
    """
    family = tasks_lib.get("mnist_rnn", data_dir=data_dir)
    tune = sample_tasks(family, generalisation.SEED, inits, "tune")
    test = sample_tasks(family, generalisation.SEED, inits, "test")
    tuned = harness.tune_learning_rate(
        baselines.get("adam"), family, tune, test, steps, generalisation.WIDE_GRID, coarse_to_fine=True
    )
    rates = {s: rate for s, (rate, _) in tuned.items()}
    mask = generalisation.recurrence_mask(family)
    return lm_rows(optimizer, phi, family, test, mask, scale, rates, ROW_GRU_LABEL)


def flags_table(flagged: dict[str, list[str]]) -> str:
    """Markdown: each task and the tensors it flags."""
    lines = ["| task | tensors flagged |", "| --- | --- |"]
    lines += [f"| {task} | {', '.join(names) or 'none'} |" for task, names in flagged.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_data_dir_option(parser)
    parser.add_argument("--optimizer", default="generalist", help="a shipped name or run directory (a feature_mlp)")
    parser.add_argument(
        "--scale", type=harness.positive, default=None, help="default: generalist-v1's η / the optimizer's"
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="write the scale into --optimizer's optimizer.json (recurrence_prior), where pretrained.load reads "
        "it, and exit",
    )
    parser.add_argument("--inits", type=harness.count, default=16)
    parser.add_argument("--streams", nargs="+", choices=STREAMS, default=list(STREAMS))
    parser.add_argument(
        "--battery",
        type=Path,
        default=harness.RESULTS / "generalisation.json",
        help="the battery's results file whose tuned Adam rates the LM rows use",
    )
    parser.add_argument("--no-row-gru", action="store_true", help="skip the second recurrent network")
    parser.add_argument("--max-steps", type=harness.count, default=None, help="cap every run (for quick checks)")
    parser.add_argument("--results-dir", type=Path, default=harness.RESULTS)
    args = parser.parse_args()
    optimizer, phi = pretrained.load_meta_params(args.optimizer)
    if args.scale is None and (optimizer.name != "feature_mlp" or optimizer.output != "nominal"):
        parser.error(f"{args.optimizer} has no learned η to take the default --scale from: give --scale")
    scale = args.scale
    if scale is None:
        v1_rate = float(np.exp(pretrained.load_meta_params("generalist-v1")[1]["log_lr"]))
        scale = v1_rate / float(np.exp(phi["log_lr"]))
    if args.record:
        record(args.optimizer, scale, "given by --scale" if args.scale is not None else DEFAULT_BASIS)
        return
    t0 = time.perf_counter()
    args.results_dir.mkdir(parents=True, exist_ok=True)
    results = harness.Results(
        args.results_dir / "recurrence_prior.json",
        machine=harness.describe_machine(),
        command=harness.command(),
        optimizer=str(args.optimizer),
        scale=scale,
    )
    families = {t.label: generalisation.build_family(t, args.data_dir) for t in generalisation.TASKS}
    masks = {label: generalisation.recurrence_mask(family) for label, family in families.items()}
    flagged = {label: generalisation.flagged_names(mask) for label, mask in masks.items()}
    for label, names in flagged.items():
        results.add("flags", {"task": label, "flagged": names})
    print(flags_table(flagged), flush=True)
    battery_rates = lm_stall.battery_rates(args.battery, (LM_TASK, f"{LM_TASK} long"))
    rates = {min(s, args.max_steps or s): battery_rates[s] for s in lm_stall.TASKS[LM_TASK]}
    rows = []
    for stream in args.streams:
        runs = sample_tasks(families[LM_TASK], STREAMS[stream], args.inits, stream)
        label = f"{LM_TASK}, {stream} runs"
        stream_rows = lm_rows(optimizer, phi, families[LM_TASK], runs, masks[LM_TASK], scale, rates, label)
        for row in stream_rows:
            results.add("rows", {**row, "stream": stream})
        rows += stream_rows
        print(lm_stall.table(stream_rows, ("shipped", "adam")), flush=True)
    gru_rows = []
    if not args.no_row_gru:
        steps = tuple(sorted({min(s, args.max_steps or s) for s in ROW_GRU_STEPS}))
        gru_rows = row_gru_rows(optimizer, phi, scale, args.data_dir, args.inits, steps)
        for row in gru_rows:
            results.add("rows", {**row, "stream": "test"})
        print(lm_stall.table(gru_rows, ("shipped", "adam")), flush=True)
    results.finish()
    harness.write_text(
        args.results_dir / "recurrence_prior.md",
        flags_table(flagged) + f"\nscale: {scale:.4g}.\n\n" + lm_stall.table(rows + gru_rows, ("shipped", "adam")),
    )
    print(f"{(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
