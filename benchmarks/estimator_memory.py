"""Does the memory of an ES or PES meta-gradient grow with the run's length T, next to BPTT's?

Compiles only, and reports XLA's memory analysis of each program (arguments, outputs,
temporaries; total = arguments + outputs − donated + temporaries), for the learned
optimizer on a 10-d quadratic and on the paper's MNIST MLP, ``--batch-size`` tasks,
truncations of K = ``--truncation`` steps:

* ``per_truncation``: one ``estimate`` of truncated BPTT, ES and PES, compiled for the
  state a run of T steps has before its last truncation (T in ``--horizons``). The
  state carries the runs from one truncation to the next and its shapes do not depend
  on T, so the program, and its memory, are the same for every T by construction: the
  rows say so with the program's fingerprint.
* ``whole_run``: the gradient of a whole run of T steps as one compiled program:
  for truncated BPTT, ES and PES the sum of the run's T/K estimates (a loop over
  ``estimate``, from ``init``), and untruncated BPTT (``meta_value_and_grad`` over
  all T steps), without rematerialisation and with ``remat="segments"``.

    python benchmarks/estimator_memory.py --data-dir /work/shared/data/mnist

Results go to ``benchmarks/results/estimator_memory.json`` (``--out``), rewritten after
every row, and a markdown table next to it (same name, ``.md``). A program that runs
out of memory while compiling is recorded as such (``"out_of_memory"``).
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import jax

from l2l_jax import pretrained, tasks
from l2l_jax.meta import estimators as E
from l2l_jax.meta import init_inner, meta_value_and_grad
from l2l_jax.optimizers.base import LearnedOptimizer, MetaParams
from l2l_jax.tasks.base import TaskFamily

#: The families: (shipped optimizer whose configuration and φ are used, task name, task options).
FAMILIES = {"quadratic": ("quadratic-lstm", "quadratic", {"dim": 10}), "mnist": ("mnist-lstm", "mnist", {})}
#: Untruncated BPTT's rematerialisation settings.
BPTT_REMATS = {"bptt": False, "bptt-segments": "segments"}


def memory(lowered: Any) -> dict[str, Any]:
    """Compiles ``lowered``; XLA's memory analysis, the program's fingerprint and the compile time."""
    t0 = time.perf_counter()
    compiled = lowered.compile()
    seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    return {
        "compiled_memory_bytes": harness.compiled_memory(compiled),
        "argument_bytes": None if m is None else int(m.argument_size_in_bytes),
        "output_bytes": None if m is None else int(m.output_size_in_bytes),
        "temp_bytes": None if m is None else int(m.temp_size_in_bytes),
        "program": hashlib.sha256(lowered.as_text().encode()).hexdigest()[:16],
        "compile_seconds": seconds,
    }


def programs(
    optimizer: LearnedOptimizer, family: TaskFamily, batch_size: int, truncation: int, first_order: bool
) -> tuple[dict[str, E.GradientEstimator], Callable[[str, int], Callable]]:
    """The estimators by name, and ``bptt(label, horizon) -> (φ, key) -> (loss, grad)`` (untruncated BPTT)."""
    estimators = {
        "tbptt": E.get(
            "tbptt", optimizer, family, batch_size=batch_size, truncation=truncation, first_order=first_order
        ),
        "es": E.get("es", optimizer, family, batch_size=batch_size, truncation=truncation),
        "pes": E.get("pes", optimizer, family, batch_size=batch_size, truncation=truncation),
    }

    def bptt(label: str, horizon: int) -> Callable:
        def whole(phi: MetaParams, key: jax.Array) -> tuple[jax.Array, MetaParams]:
            inner = init_inner(optimizer, phi, family, key, batch_size)
            (loss, _), grad = meta_value_and_grad(
                phi, optimizer, family, inner, horizon, first_order=first_order, remat=BPTT_REMATS[label]
            )
            return loss, grad

        return whole

    return estimators, bptt


def per_truncation(est: E.GradientEstimator, phi: MetaParams, horizon: int, truncation: int) -> dict[str, Any]:
    """The memory of ``estimate`` compiled for the state (shapes) a run of ``horizon`` steps has before its last truncation."""
    key = jax.random.key(0)
    before_last = horizon // truncation - 1
    state = jax.eval_shape(lambda: harness.run_estimates(est, phi, est.init(phi, key), key, before_last)[0])
    return memory(jax.jit(est.estimate).lower(phi, state, key))


def whole_run(est: E.GradientEstimator, phi: MetaParams, horizon: int, truncation: int) -> dict[str, Any]:
    """The memory of the whole run's estimate: ``init`` and the sum of ``horizon / truncation`` estimates, one program."""

    def whole(phi: MetaParams, key: jax.Array) -> tuple[jax.Array, MetaParams]:
        _, loss, grad = harness.run_estimates(est, phi, est.init(phi, key), key, horizon // truncation)
        return loss, grad

    return memory(jax.jit(whole).lower(phi, jax.random.key(0)))


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses horizons that are not whole numbers of truncations."""
    bad = [t for t in args.horizons if t % args.truncation]
    if bad:
        parser.error(f"--horizons {bad} must be multiples of --truncation {args.truncation}")


def mib(num_bytes: int | None) -> str:
    """Bytes in MiB, for the table."""
    return "–" if num_bytes is None else f"{num_bytes / 2**20:.2f}"


def markdown(data: dict[str, Any]) -> str:
    """The results file as two markdown tables, with the command and the machine on top."""
    head = "| family | {what} | T | total MiB | arguments MiB | outputs MiB | temporaries MiB | program | compile s |"
    rule = "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"

    def lines(section: str, what: str) -> list[str]:
        out = [head.format(what=what), rule]
        for r in data[section]:
            if "out_of_memory" in r:
                out.append(f"| {r['family']} | {r[what]} | {r['horizon']} | out of memory while compiling | | | | | |")
                continue
            out.append(
                f"| {r['family']} | {r[what]} | {r['horizon']} | {mib(r['compiled_memory_bytes'])} | "
                f"{mib(r['argument_bytes'])} | {mib(r['output_bytes'])} | {mib(r['temp_bytes'])} | "
                f"`{r['program']}` | {r['compile_seconds']:.1f} |"
            )
        return out

    return "\n".join(
        [
            "# Compiled memory of meta-gradient estimators against the run's length T",
            "",
            f"Command: `{data['command']}`  ",
            f"Machine: {data['machine']}",
            "",
            (
                f"XLA's memory analysis of compiled programs (nothing runs). K = {data['truncation']} steps a truncation, "
                f"{data['batch_size']} task(s) an estimate, ES and PES with 1 antithetic pair, BPTT "
                f"{'first' if data['first_order'] else 'second'} order. Total = arguments + outputs − donated + "
                "temporaries. `program`: a fingerprint of the lowered program; equal fingerprints are the same program."
            ),
            "",
            "## One estimate (one truncation of K steps)",
            "",
            (
                "The state handed from one truncation to the next has the same shapes whatever T is, so the program of "
                "one estimate is the same for every T by construction (same fingerprint)."
            ),
            "",
            *lines("per_truncation", "estimator"),
            "",
            "## The gradient of a whole run of T steps, one program",
            "",
            (
                "tbptt, es, pes: `init` then the sum of the T/K estimates of the run (a loop over `estimate`). "
                "bptt: untruncated backpropagation through all T steps (`meta_value_and_grad`), without "
                'rematerialisation; bptt-segments: with `remat="segments"` (√T segments of √T steps).'
            ),
            "",
            *lines("whole_run", "method"),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--horizons", type=harness.count, nargs="+", default=[100, 1000, 10000], help="steps T")
    parser.add_argument("--truncation", type=harness.count, default=10, help="steps K of a truncation")
    parser.add_argument("--batch-size", type=harness.count, default=1, help="tasks an estimate")
    parser.add_argument("--estimators", nargs="+", choices=["tbptt", "es", "pes"], default=["tbptt", "es", "pes"])
    parser.add_argument("--bptt", nargs="*", choices=list(BPTT_REMATS), default=list(BPTT_REMATS),
                        help="untruncated BPTT rows (none with no value)")  # fmt: skip
    parser.add_argument("--second-order", action="store_true", help="BPTT keeps second derivatives")
    harness.add_data_dir_option(parser)
    args, results = harness.start(parser, "estimator_memory.json", check=lambda a: check(parser, a), kind="memory")
    results.data.update(truncation=args.truncation, batch_size=args.batch_size, first_order=not args.second_order)
    on_truncation, on_whole = results.section("per_truncation"), results.section("whole_run")
    for family_name in args.families:
        shipped, task, options = FAMILIES[family_name]
        optimizer, phi = pretrained.load_meta_params(shipped)
        if task == "mnist":
            options = {**options, "data_dir": args.data_dir}
        family = tasks.get(task, **options)
        estimators, bptt = programs(optimizer, family, args.batch_size, args.truncation, not args.second_order)
        estimators = {name: estimators[name] for name in args.estimators}
        for name, est in estimators.items():
            for horizon in (min(args.horizons), max(args.horizons)):
                setting = {"family": family_name, "estimator": name, "horizon": horizon}
                row = harness.measure_unless_out_of_memory(setting, per_truncation, est, phi, horizon, args.truncation)
                on_truncation(row)
                print(f"{family_name:9s} one estimate  {name:13s} T={horizon:6d} {describe(row)}", flush=True)
        for horizon in sorted(args.horizons):
            for name, est in estimators.items():
                setting = {"family": family_name, "method": name, "horizon": horizon}
                row = harness.measure_unless_out_of_memory(setting, whole_run, est, phi, horizon, args.truncation)
                on_whole(row)
                print(f"{family_name:9s} whole run     {name:13s} T={horizon:6d} {describe(row)}", flush=True)
            for label in args.bptt:
                setting = {"family": family_name, "method": label, "horizon": horizon}
                lowered = jax.jit(bptt(label, horizon)).lower(phi, jax.random.key(0))
                row = harness.measure_unless_out_of_memory(setting, memory, lowered)
                on_whole(row)
                print(f"{family_name:9s} whole run     {label:13s} T={horizon:6d} {describe(row)}", flush=True)
    results.finish()
    harness.write_text(Path(results.path).with_suffix(".md"), markdown(results.data))


def describe(row: dict[str, Any]) -> str:
    """A row's memory and compile time, for the progress lines."""
    if "out_of_memory" in row:
        return "out of memory while compiling"
    return f"{mib(row['compiled_memory_bytes']):>10s} MiB  (compile {row['compile_seconds']:.1f} s, {row['program']})"


if __name__ == "__main__":
    main()
