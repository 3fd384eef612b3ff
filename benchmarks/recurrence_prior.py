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
and paired differences.

Writes ``recurrence_prior.{json,md}`` into ``--results-dir``.

    python benchmarks/recurrence_prior.py --data-dir DIR
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import generalisation
import harness
import jax
import lm_stall
import numpy as np
import optax
import step_bound

from l2l_jax import pretrained
from l2l_jax.evaluation import EvalTasks, baselines, learned_curves, loss_curves, sample_tasks
from l2l_jax.optimizers import LearnedOptimizer, MetaParams, recurrent_tensors

#: The battery's task the LM rows run on (at ``lm_stall.TASKS``' steps for it).
LM_TASK = lm_stall.PART_TASK
#: The streams of initialisations: name -> seed.
STREAMS = {"tune": step_bound.TUNE_SEED, "test": generalisation.SEED}


def flags(family: Any) -> Any:
    """``recurrent_tensors`` of the family's loss (the same for every task of it: one task is read)."""
    task = family.sample(jax.random.key(0))
    params = family.init(task, jax.random.key(1))
    return recurrent_tensors(lambda p, key: family.loss(task, p, key), params, jax.random.key(2))


def flagged_names(mask: Any) -> list[str]:
    """The paths (``GRUCell_0/hn/kernel``) of the flagged tensors."""
    leaves = jax.tree_util.tree_leaves_with_path(mask)
    return [jax.tree_util.keystr(path, simple=True, separator="/") for path, value in leaves if value]


def with_prior(
    optimizer: LearnedOptimizer, mask: Any, scale: float
) -> Callable[[MetaParams], optax.GradientTransformation]:
    """``φ ↦`` the learned optimizer with the updates of ``mask``'s tensors multiplied by ``scale``."""

    def make(phi: MetaParams) -> optax.GradientTransformation:
        return optax.chain(optimizer.as_optax(phi), optax.masked(optax.scale(scale), mask))

    return make


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
    prior = np.asarray(loss_curves(with_prior(optimizer, mask, scale), phi, family, runs, steps[-1]))
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
    parser.add_argument("--inits", type=harness.count, default=16)
    parser.add_argument("--streams", nargs="+", choices=STREAMS, default=list(STREAMS))
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
    masks = {label: flags(family) for label, family in families.items()}
    flagged = {label: flagged_names(mask) for label, mask in masks.items()}
    for label, names in flagged.items():
        results.add("flags", {"task": label, "flagged": names})
    print(flags_table(flagged), flush=True)
    battery_rates = lm_stall.battery_rates(harness.RESULTS / "generalisation.json", (LM_TASK, f"{LM_TASK} long"))
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
    results.finish()
    harness.write_text(
        args.results_dir / "recurrence_prior.md",
        flags_table(flagged) + f"\nscale: {scale:.4g}.\n\n" + lm_stall.table(rows, ("shipped", "adam")),
    )
    print(f"{(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
