"""Can a per-tensor step multiplier, adapted by the hypergradient's sign, remove the generalist's LM stall?

The generalist stalls on the battery's character-level LM past step 200 because its GRU
cell's steps are too large (``lm_stall.py``), and nothing it reads tells that cell's
tensors from feed-forward ones. This tries a mechanism that needs no such knowledge,
hypergradient descent on a step multiplier (Baydin et al., 2018), per tensor and on top of
the shipped generalist: every tensor T keeps a log multiplier ℓ_T (0 at the start), and at
step t, with g_t its gradient and u_{t−1} its last update,

    ℓ_T ← clip(ℓ_T − β · cos(g_t, u_{t−1}), log(floor), 0),    update_T = exp(ℓ_T) · generalist's update_T.

A gradient that turns against the last step (cos > 0: the step overshot) shrinks that
tensor's steps; one that keeps its direction lets them grow back, never beyond the
generalist's own. β = 0 is the generalist as shipped. Run for each β of ``--betas`` on the
battery tasks of ``TASKS``, on the tuning stream's initialisations (``step_bound.TUNE_SEED``),
never the battery's test ones: mean loss ± s.e., and minus β = 0, paired; and where the
multipliers went: each tensor's exp(ℓ_T) after each reported step, the mean over runs.

Writes ``step_adaptation.{json,md}`` into ``--results-dir``.

    python benchmarks/step_adaptation.py --data-dir DIR
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import generalisation
import harness
import jax
import jax.numpy as jnp
import numpy as np
import optax
import step_bound

from l2l_jax import pretrained
from l2l_jax.evaluation import EvalTasks, sample_tasks
from l2l_jax.meta import unroll
from l2l_jax.optimizers import LearnedOptimizer, MetaParams

#: The battery's tasks run here: label -> (steps reported, initialisations).
TASKS = {
    "char LM long": ((100, 200, 500), 16),
    "base MLP": ((100, 200), 16),
    "regression network": ((100, 200), 16),
    "CNN": ((100, 200), 8),
}
#: The multipliers' adaptation rates β tried by default (0: the generalist as shipped).
BETAS = (0.0, 0.03, 0.1, 0.3)
#: The smallest multiplier a tensor's steps may get.
FLOOR = 0.1


class AdaptedState(NamedTuple):
    """The inner optimizer's state, each tensor's log multiplier ℓ, and each tensor's last update."""

    inner: Any
    log_scale: Any
    last_update: Any


def adapt_steps(
    inner: optax.GradientTransformationExtraArgs, beta: float, floor: float = FLOOR
) -> optax.GradientTransformationExtraArgs:
    """``inner`` with every tensor's update times exp(ℓ), ℓ adapted by −β · cos(gradient, last update) in [log floor, 0].

    Reference: Baydin et al. (2018), "Online learning rate adaptation with hypergradient descent".
    """

    def init(params: Any) -> AdaptedState:
        return AdaptedState(
            inner.init(params),
            jax.tree.map(lambda p: jnp.zeros((), p.dtype), params),
            jax.tree.map(jnp.zeros_like, params),
        )

    def adapt(log_scale: jax.Array, grad: jax.Array, last: jax.Array) -> jax.Array:
        cos = jnp.vdot(grad, last) / (jnp.linalg.norm(grad) * jnp.linalg.norm(last) + 1e-30)
        return jnp.clip(log_scale - beta * cos, math.log(floor), 0.0)

    def update(grads: Any, state: AdaptedState, params: Any = None, **extra: Any) -> tuple[Any, AdaptedState]:
        updates, inner_state = inner.update(grads, state.inner, params, **extra)
        log_scale = jax.tree.map(adapt, state.log_scale, grads, state.last_update)
        updates = jax.tree.map(lambda u, s: u * jnp.exp(s).astype(u.dtype), updates, log_scale)
        return updates, AdaptedState(inner_state, log_scale, updates)

    return optax.GradientTransformationExtraArgs(init, update)


def adapted_runs(
    optimizer: LearnedOptimizer, phi: MetaParams, family: Any, runs: EvalTasks, beta: float, steps: tuple[int, ...]
) -> tuple[np.ndarray, dict[int, dict[str, float]]]:
    """Loss curves (runs x max(steps) + 1) with steps adapted at rate ``beta``, and the multipliers on the way.

    The multipliers are each tensor's exp(ℓ_T) after each step of ``steps`` (ascending),
    the mean over runs, by the tensor's path (``{100: {"Dense_0/kernel": 0.8, ...}, ...}``).
    """

    @jax.jit
    def run_all(phi: MetaParams, task_params: Any, keys: jax.Array) -> tuple[jax.Array, list[Any]]:
        def one(task: Any, key: jax.Array) -> tuple[jax.Array, list[Any]]:
            k_init, k_data = jax.random.split(key)
            params, tx = family.init(task, k_init), adapt_steps(optimizer.as_optax(phi), beta)
            state, pieces, scales, done = tx.init(params), [], [], 0
            for end in steps:  # One run, cut where the multipliers are read (the data are the same: see unroll).
                params, state, losses = unroll(
                    tx, lambda p, k: family.loss(task, p, k), params, state, k_data, end - done, start_step=done
                )
                pieces.append(losses[:-1])  # Its last loss is the next piece's first.
                scales.append(state.log_scale)
                done = end
            return jnp.concatenate([*pieces, losses[-1:]]), scales

        return jax.vmap(one)(task_params, keys)

    losses, scales = run_all(phi, runs.task_params, runs.keys)
    multipliers = {
        end: {
            jax.tree_util.keystr(path, simple=True, separator="/"): float(np.mean(np.exp(leaf)))
            for path, leaf in jax.tree_util.tree_leaves_with_path(log_scale)
        }
        for end, log_scale in zip(steps, scales)
    }
    return np.asarray(losses), multipliers


def rows_for(label: str, by_beta: dict[float, np.ndarray], steps: tuple[int, ...]) -> list[dict[str, Any]]:
    """One row per β and step: mean ± s.e., and minus β = 0, paired."""
    return harness.paired_rows(label, by_beta, steps, "beta", 0.0, "minus_shipped")


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| task | β | steps | mean loss (± s.e.) | minus β = 0, paired (± s.e.) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        diff = f"{r['minus_shipped']:+.4f} ({r['minus_shipped_stderr']:.4f})" if "minus_shipped" in r else ""
        lines.append(f"| {r['task']} | {r['beta']:g} | {r['steps']} | {r['mean']:.4f} ({r['stderr']:.4f}) | {diff} |")
    return "\n".join(lines) + "\n"


def multiplier_table(task: str, by_beta: dict[float, dict[int, dict[str, float]]]) -> str:
    """Each tensor's multiplier (mean over runs) after each reported step, one column per β > 0 and step."""
    columns = [(b, end) for b in by_beta if b > 0 for end in by_beta[b]]
    lines = [
        f"Multipliers, {task} (mean over runs):",
        "",
        "| tensor | " + " | ".join(f"β = {b:g}, step {end}" for b, end in columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for tensor in by_beta[columns[0][0]][columns[0][1]] if columns else ():
        lines.append(f"| {tensor} | " + " | ".join(f"{by_beta[b][end][tensor]:.3f}" for b, end in columns) + " |")
    return "\n".join(lines) + "\n"


def beta(text: str) -> float:
    """A β: a number ≥ 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"β must be a number >= 0, got {text!r}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_data_dir_option(parser)
    parser.add_argument("--optimizer", default="generalist", help="a shipped name or run directory")
    parser.add_argument("--betas", type=beta, nargs="+", default=list(BETAS), help="0 is always run (the baseline)")
    parser.add_argument("--tasks", nargs="+", choices=tuple(TASKS), default=list(TASKS))
    parser.add_argument("--inits", type=harness.count, default=None, help="every task's (default: TASKS')")
    parser.add_argument("--max-steps", type=harness.count, default=None, help="cap every run (for quick checks)")
    parser.add_argument("--results-dir", type=Path, default=harness.RESULTS)
    args = parser.parse_args()
    optimizer, phi = pretrained.load_meta_params(args.optimizer)
    betas = sorted({0.0, *args.betas})
    battery = {t.label: t for t in generalisation.TASKS}
    t0, rows, tables = time.perf_counter(), [], []
    args.results_dir.mkdir(parents=True, exist_ok=True)
    results = harness.Results(
        args.results_dir / "step_adaptation.json",
        machine=harness.describe_machine(),
        command=harness.command(),
        optimizer=str(args.optimizer),
        floor=FLOOR,
    )
    for label in args.tasks:
        steps, inits = TASKS[label]
        steps = tuple(sorted({min(s, args.max_steps or s) for s in steps}))
        family = generalisation.build_family(battery[label], args.data_dir)
        runs = sample_tasks(family, step_bound.TUNE_SEED, args.inits or inits, "tune")
        by_beta = {b: adapted_runs(optimizer, phi, family, runs, b, steps) for b in betas}
        task_rows = rows_for(label, {b: curves for b, (curves, _) in by_beta.items()}, steps)
        for row in task_rows:
            results.add("rows", row)
        for b, (_, multipliers) in by_beta.items():
            for end, tensors in multipliers.items() if b > 0 else ():
                for tensor, value in tensors.items():
                    row = {"task": label, "beta": b, "steps": end, "tensor": tensor, "multiplier": value}
                    results.add("multipliers", row)
        rows += task_rows
        tables.append(multiplier_table(label, {b: m for b, (_, m) in by_beta.items()}))
        print(table(task_rows) + "\n" + tables[-1], flush=True)
    results.finish()
    harness.write_text(args.results_dir / "step_adaptation.md", "\n".join([table(rows), *tables, f"floor: {FLOOR}.\n"]))
    print(f"{(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
