"""Optimizee steps per second of the generalist's PES meta-step, one task family at a time.

Meta-training throughput is what bounds the generalist (``generalist.py``): this
script measures, for every member of the v1, v2, v4 and v9 mixtures (v4's adds MNIST
autoencoders and 20-d quadratics, v9's a GRU reading 14x14 MNIST row by row) and the
other cheap task families (teacher-student regression, logistic regression,
quadratics), the PES meta-step of the v2 recipe (truncation 50, 2 antithetic pairs)
on ``--tasks`` tasks of that family alone, after a compiling call: the task's
parameter count, median seconds per meta-step and optimizee steps per second
(tasks x pairs x 2 runs x truncation / seconds).

    python benchmarks/task_speed.py --data-dir DIR
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import generalist
import harness
import jax

from l2l_jax.meta import MetaTrainConfig
from l2l_jax.meta.step import initial_state, meta_step

#: Families beside the mixtures' members: (label, task, options).
OTHERS = [
    ("teacher-student regression", "teacher_student", {}),
    ("logistic regression", "logistic_regression", {}),
    ("quadratic (10-d)", "quadratic", {"dim": 10}),
]


def label(member: dict[str, Any]) -> str:
    """A short description of a mixture member, e.g. ``mnist 8x8 64x2 sigmoid b32 (scale-augmented)``."""
    inner = generalist.base_member(member)
    task, options = inner["task"], inner["options"]
    suffix = " (scale-augmented)" if member["task"] == "scale_augmented" else ""
    if task != "mnist":
        return f"{task} ({', '.join(f'{k}={v}' for k, v in sorted(options.items()))}){suffix}"
    if options.get("objective", "classify") != "classify":
        suffix = f" {options['objective']}{suffix}"
    size = options.get("image_size", 28)
    layers = (
        options["hidden_units"]
        if options["hidden_layers"] == 1
        else f"{options['hidden_units']}x{options['hidden_layers']}"
    )
    return f"{task} {size}x{size} {layers} {options['activation']} b{options['batch_size']}{suffix}"


def families(data_dir: str | None) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, task, options) for every member of the mixtures (once each) and `OTHERS`."""
    out, seen = [], set()
    for member in [*generalist.MEMBERS, *generalist.V2_MEMBERS, *generalist.V9_MEMBERS]:
        config = generalist.with_data_dir(
            MetaTrainConfig.from_dict({**generalist.V2_CONFIG.to_dict(), "task_options": {"members": [member]}}),
            data_dir,
        )
        only = config.task_options["members"][0]
        name = label(member)
        if name not in seen:
            seen.add(name)
            out.append((name, only["task"], only["options"]))
    return out + OTHERS


def time_meta_step(task: str, options: dict[str, Any], tasks: int, repeats: int) -> tuple[float, float, int]:
    """(first call seconds, median seconds, parameters of one task) of v2's PES meta-step on ``tasks`` tasks."""
    config = MetaTrainConfig.from_dict(
        {**generalist.V2_CONFIG.to_dict(), "task": task, "task_options": options, "batch_size": tasks,
         "min_horizon": None, "horizon": 1000}
    )  # fmt: skip
    optimizer = config.build_optimizer()
    family = config.build_task()
    parameters = harness.num_params(jax.eval_shape(lambda k: family.init(family.sample(k), k), jax.random.key(0)))
    members = config.build_members(optimizer, family)
    meta_tx = config.build_meta_optimizer()
    state = initial_state(members, meta_tx, optimizer.init(jax.random.key(0)), jax.random.key(1))
    step = jax.jit(
        lambda s: meta_step(
            s, members, meta_tx, horizon=config.horizon, task_key=jax.random.key(2), perturbation_key=jax.random.key(3)
        )[0]
    )
    t0 = time.perf_counter()
    state = jax.block_until_ready(step(state))
    first = time.perf_counter() - t0
    seconds, _ = harness.median_seconds(step, state, repeats, warmup=0)
    return first, seconds, parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_data_dir_option(parser)
    parser.add_argument("--tasks", type=harness.count, default=1, help="tasks of the family per meta-step")
    parser.add_argument("--repeats", type=harness.count, default=5, help="timed meta-steps")
    parser.add_argument("--only", nargs="*", default=None, help="labels to run (default: all)")
    args, results = harness.start(parser, "task_speed_{platform}.json", kind="throughput")
    on_row = results.section("rows")
    cfg = generalist.V2_CONFIG
    per_step = args.tasks * cfg.estimator_option("num_pairs") * 2 * cfg.truncation
    print(f"{'family':58s} {'parameters':>10s} {'ms/meta-step':>13s} {'optimizee steps/s':>18s} {'first call s':>13s}")
    for name, task, options in families(args.data_dir):
        if args.only and name not in args.only:
            continue
        first, seconds, parameters = time_meta_step(task, options, args.tasks, args.repeats)
        row = {"family": name, "task": task, "parameters": parameters, "tasks": args.tasks, "seconds_per_meta_step": seconds,
               "optimizee_steps_per_second": per_step / seconds, "first_call_seconds": first}  # fmt: skip
        on_row(row)
        print(f"{name:58s} {parameters:10d} {seconds * 1e3:13.1f} {per_step / seconds:18.0f} {first:13.1f}", flush=True)
    results.finish()


if __name__ == "__main__":
    main()
