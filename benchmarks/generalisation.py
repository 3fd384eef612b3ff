"""The held-out battery: learned optimizers against tuned baselines, on the paper's MNIST MLP,
its variants, and tasks that no learned optimizer here was meta-trained on.

Optimizers: the generalist (``--generalist``, default the shipped one, named
``--label`` in the results, default ``generalist``), the other learned optimizers of
``--others`` (default the shipped ``generalist-v7``, ``generalist-v2``, ``mnist-feature-mlp``,
``generalist-v1`` and ``mnist-lstm``), and SGD,
momentum, NAG, RMSprop and Adam, each with its learning rate tuned separately per task
and per horizon on a quarter-decade grid over ``--tune-inits`` initialisations that
are not evaluated. Every optimizer then runs on
the same held-out initialisations with the same minibatches, so a difference is
reported as mean ± paired standard error, and a win or loss is called only beyond
2 paired s.e.

Tasks (``TASKS``): the paper's MLP (784-20-10 sigmoid, batch 128) at 100, 200 and
1,000 steps; 40 units, 2 layers, ReLU and tanh at 100 and 200 steps; and, held out
from the generalist's meta-training mixture (and at MNIST's full 28x28 resolution),
a small CNN on MNIST, wide ReLU MLPs (784-1280-10 and 784-4096-10, 1.02M and 3.26M
parameters, no hand scaling), a character-level GRU language model on Python's own
source text (these three at 100 steps, as their runs cost minutes here; the LM also at
200 and 500 steps as ``char LM long``, where a learned optimizer that stalls after step
100 shows it), logistic regression, and a small regression network (teacher-student).

``--recurrence-prior`` runs the generalist as a user runs it on a recurrent network:
``pretrained.load(name, recurrent=mask)``, the mask being ``recurrent_tensors`` of each
task's loss, so its updates of the tensors that feed a recurrence are multiplied by the
factor recorded with it. On a task where nothing is flagged it is the optimizer as it is,
and an entry of ``--others`` with the same φ shares its curves (``same_as`` in its rows).

``--rates-from`` reads the baselines' tuned rates from an earlier results file for
every task whose definition, tuning initialisations and data are the same there
(tuning is deterministic, so the rates are those a new search would find), and runs
only the test initialisations.

``--seed`` draws other initialisations (tuning and test streams; default ``SEED``): a
check on test initialisations that no earlier candidate was compared on. Rates read with
``--rates-from`` stay those tuned on the earlier file's tuning initialisations (its
``seed``), which are never any seed's test initialisations.

"Diverged" means the mean loss over initialisations rose above its starting value,
or went non-finite, at any step of the run.

Writes ``generalisation.{json,md}`` and ``generalisation_<task>.png`` into
``--results-dir`` (default ``benchmarks/results``).

    python benchmarks/generalisation.py --data-dir DIR
    python benchmarks/generalisation.py --data-dir DIR --tasks "base MLP" CNN   # a subset
    python benchmarks/generalisation.py --data-dir DIR --seed 2 \
        --rates-from benchmarks/results/generalisation.json   # fresh test initialisations
    python benchmarks/generalisation.py --data-dir DIR --recurrence-prior --label "generalist + prior" \
        --others generalist generalist-v7 generalist-v2 mnist-feature-mlp generalist-v1 mnist-lstm \
        --rates-from benchmarks/results/generalisation.json   # rates read before the file is rewritten
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from l2l_jax import optimizers, pretrained
from l2l_jax import tasks as tasks_lib
from l2l_jax.errors import ConfigError, L2LError, MetaParamsMismatchError
from l2l_jax.evaluation import loss_curves, plot_loss_curves, sample_tasks
from l2l_jax.evaluation.baselines import BASELINES
from l2l_jax.optimizers import LearnedOptimizer, MetaParams

#: Held-out tasks' baselines are tuned from 1e-4: their best rates are not known in advance.
WIDE_GRID = tuple(float(x) for x in np.logspace(-4, 1, 21))

PAPER_MLP = {"hidden_units": 20, "hidden_layers": 1, "activation": "sigmoid", "batch_size": 128}


@dataclasses.dataclass(frozen=True)
class Task:
    """One row group of the battery: a task family and how it is evaluated."""

    label: str
    task: str
    options: dict[str, Any]
    horizons: tuple[int, ...]
    test_inits: int
    held_out: bool
    uses_mnist: bool = True
    grid: tuple[float, ...] = harness.LR_GRID
    #: Learned optimizers not run on this task (the docs say why).
    skip: tuple[str, ...] = ()


#: The seed of the battery's initialisations, on both streams (tuning and test), unless ``--seed`` gives another.
SEED = 1
TASKS = (
    Task("base MLP", "mnist", PAPER_MLP, (100, 200, 1000), 48, False),
    Task("40 units", "mnist", {**PAPER_MLP, "hidden_units": 40}, (100, 200), 48, False),
    Task("2 layers", "mnist", {**PAPER_MLP, "hidden_layers": 2}, (100, 200), 48, False),
    Task("ReLU", "mnist", {**PAPER_MLP, "activation": "relu"}, (100, 200), 48, False),
    Task("tanh", "mnist", {**PAPER_MLP, "activation": "tanh"}, (100, 200), 48, False),
    Task("CNN", "mnist_cnn", {}, (100, 200), 48, True, grid=WIDE_GRID),
    Task(
        "wide MLP",
        "mnist",
        {"hidden_units": 1280, "hidden_layers": 1, "activation": "relu", "batch_size": 32},
        (100,),
        16,
        True,
        grid=WIDE_GRID,
        skip=("mnist-lstm",),
    ),
    Task(
        "wide MLP 4096",
        "mnist",
        {"hidden_units": 4096, "hidden_layers": 1, "activation": "relu", "batch_size": 32},
        (100,),
        16,
        True,
        grid=WIDE_GRID,
        skip=("mnist-lstm",),
    ),
    Task("char LM", "char_lm", {}, (100,), 16, True, uses_mnist=False, grid=WIDE_GRID, skip=("mnist-lstm",)),
    Task(
        "char LM long",
        "char_lm",
        {},
        (200, 500),
        16,
        True,
        uses_mnist=False,
        grid=WIDE_GRID,
        skip=("mnist-lstm",),
    ),
    Task("logistic regression", "logistic_regression", {}, (100, 200), 48, True, uses_mnist=False, grid=WIDE_GRID),
    Task("regression network", "teacher_student", {}, (100, 200), 48, True, uses_mnist=False, grid=WIDE_GRID),
)
#: The learned optimizers run beside the generalist by default.
OTHERS = ("generalist-v7", "generalist-v2", "mnist-feature-mlp", "generalist-v1", "mnist-lstm")
TUNE_INITS = 16
REFERENCE = "generalist"


def build_family(task: Task, data_dir: str | None) -> Any:
    options = {**task.options, "data_dir": data_dir} if task.uses_mnist else task.options
    return tasks_lib.get(task.task, **options)


def diverged(curve: np.ndarray) -> bool:
    """True if the mean loss over initialisations is non-finite or above its start at any step."""
    mean = np.mean(curve, axis=0)
    return bool(not np.all(np.isfinite(mean)) or np.max(mean[1:]) > mean[0])


def evaluate_task(
    task: Task,
    family: Any,
    learned: dict[str, tuple[Any, Any]],
    horizons: tuple[int, ...],
    tune_inits: int,
    test_inits: int,
    cache: Path | None,
    progress: bool,
    recorded: dict[tuple[str, int], float] | None = None,
    reference: str = REFERENCE,
    prior_scale: float | None = None,
    seed: int = SEED,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Rows for every optimizer and horizon of ``task``, and the curves to plot (longest horizon).

    ``recorded``: the baselines' tuned rates ``{(baseline, steps): rate}`` (see `recorded_rates`), or ``None`` to tune.
    ``reference``: the name in ``learned`` that every other row is paired with.
    ``prior_scale``: if given, the reference's updates of the tensors that feed a
    recurrence (`recurrence_mask`) are multiplied by it; where none is flagged, it is the
    optimizer as it is, and shares its curves with any other entry of the same φ.
    ``seed``: of both streams of initialisations (`sample_tasks`); part of every cache key
    but `SEED`'s, whose keys stay as they were before seeds could be chosen (so caches
    filled then stay valid).
    """
    horizon = max(horizons)
    tune, test = sample_tasks(family, seed, tune_inits, "tune"), sample_tasks(family, seed, test_inits, "test")
    key = {
        **({"seed": seed} if seed != SEED else {}),
        "task": {k: v for k, v in dataclasses.asdict(task).items() if k != "skip"},
        "horizons": list(horizons),
        "tune_inits": tune.size,
        "test_inits": test.size,
        "data": getattr(family, "data_record", None),
    }
    curves, same_as = {}, {}
    computed: dict[str, str] = {}  # The cache key (as JSON) of each curve computed -> the name it was computed for.
    learned = {name: v for name, v in learned.items() if name not in task.skip}
    mask = recurrence_mask(family) if prior_scale is not None and reference in learned else None
    for name, (opt, phi) in learned.items():
        prior = None
        if name == reference and mask is not None and any(jax.tree.leaves(mask)):
            prior = {"scale": prior_scale, "flagged": flagged_names(mask)}
        learned_key = {**key, "optimizer": opt.name, "config": opt.config(), "phi_sha256": fingerprint(phi)}
        learned_key["recurrence_prior"] = prior
        identity = json.dumps(learned_key, sort_keys=True)
        if identity in computed:  # The same optimizer and φ under another name (the prior flagged nothing).
            same_as[name] = computed[identity]
            curves[name] = curves[same_as[name]]
            continue
        make = opt.as_optax if prior is None else with_prior(opt, mask, prior_scale)
        curves[name] = cached(
            cache,
            f"{task_slug(task)}__{name}",
            learned_key,
            lambda make=make, phi=phi: {"curves": loss_curves(make, phi, family, test, horizon)},
        )["curves"]
        computed[identity] = name
    lrs, baseline_curves = tuned_baselines(task, family, tune, test, horizons, key, cache, progress, recorded)
    curves.update(baseline_curves)
    rows = []
    for steps in horizons:
        for label in [*learned, *(f"{b}@{lrs[(b, steps)]}" for b in BASELINES)]:
            name = label.split("@")[0]
            curve = curves[label]
            final = curve[:, steps]
            row = {
                "task": task.label,
                "held_out": task.held_out,
                "steps": steps,
                "optimizer": name,
                "learning_rate": lrs.get((name, steps)),
                "lr_at_grid_edge": lrs.get((name, steps)) in (task.grid[0], task.grid[-1]),
                "mean_loss": float(np.mean(final)),
                "stderr": harness.stderr(final),
                "initial_loss": float(np.mean(curve[:, 0])),
                "diverged": diverged(curve[:, : steps + 1]),
                "same_as": same_as.get(name),
            }
            if name != reference and reference in learned:
                d, se = harness.paired_difference(curves[reference][:, steps], final)
                row["reference_minus_this"], row["reference_minus_this_stderr"] = d, se
            rows.append(row)
    plot = {name: curves[name] for name in learned}
    plot.update({b: curves[f"{b}@{lrs[(b, horizon)]}"] for b in BASELINES})
    return rows, plot


def recurrence_mask(family: Any) -> Any:
    """``recurrent_tensors`` of the family's loss (the same for every task of it: one task is read)."""
    task = family.sample(jax.random.key(0))
    params = family.init(task, jax.random.key(1))
    return optimizers.recurrent_tensors(lambda p, key: family.loss(task, p, key), params, jax.random.key(2))


def flagged_names(mask: Any) -> list[str]:
    """The paths (``GRUCell_0/hn/kernel``) of the tensors ``mask`` flags."""
    leaves = jax.tree_util.tree_leaves_with_path(mask)
    return [jax.tree_util.keystr(path, simple=True, separator="/") for path, value in leaves if value]


def with_prior(
    optimizer: LearnedOptimizer, mask: Any, scale: float
) -> Callable[[MetaParams], optax.GradientTransformation]:
    """``φ ↦`` the learned optimizer with the updates of ``mask``'s tensors multiplied by ``scale``.

    ``optimizers.scale_recurrent``, as ``pretrained.load(..., recurrent=mask, recurrent_scale=scale)`` applies it.
    """

    def make(phi: MetaParams) -> optax.GradientTransformation:
        return optimizers.scale_recurrent(optimizer.as_optax(phi), mask, scale)

    return make


def task_slug(task: Task) -> str:
    return task.label.replace(" ", "_").lower()


def fingerprint(tree: Any) -> str:
    """SHA-256 of a pytree's arrays (its values, shapes and dtypes, in leaf order)."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        array = np.asarray(leaf)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def cache_files(cache: Path, name: str) -> tuple[Path, Path]:
    """The files in which `cached` keeps ``name``'s key and arrays: ``cache/<name>.json`` and ``.npz``.

    Characters of ``name`` other than letters, digits, ``_``, ``.`` and ``-`` become ``_`` (an
    optimizer given as a run directory names a path).
    """
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return cache / f"{stem}.json", cache / f"{stem}.npz"


def cached(
    cache: Path | None, name: str, key: dict[str, Any], compute: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """``compute()``, or the arrays kept in ``cache`` under ``name`` by an earlier call with the same ``key``.

    The key is kept beside the arrays as JSON, in `cache_files`; the arrays are read without pickle.
    """
    if cache is None:
        return compute()
    meta, arrays_path = cache_files(cache, name)
    if meta.exists() and arrays_path.exists() and json.loads(meta.read_text()) == json.loads(json.dumps(key)):
        with np.load(arrays_path, allow_pickle=False) as arrays:
            return {label: arrays[label] for label in arrays.files}
    out = compute()
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(arrays_path, **out)
    harness.write_json(meta, key)
    return out


def tuned_baselines(
    task: Task,
    family: Any,
    tune: Any,
    test: Any,
    horizons: tuple[int, ...],
    key: dict[str, Any],
    cache: Path | None,
    progress: bool,
    recorded: dict[tuple[str, int], float] | None = None,
) -> tuple[dict[tuple[str, int], float], dict[str, np.ndarray]]:
    """Every baseline tuned per horizon: ``{(baseline, steps): rate}`` and the test curves by ``"name@rate"``.

    With ``cache``, each baseline's result is kept (see `cached`) and reused when the
    task, horizons, grid, data and numbers of initialisations are the same. With
    ``recorded`` rates for every baseline and horizon, no rate is searched: each runs
    on the test initialisations only.
    """
    lrs: dict[tuple[str, int], float] = {}
    curves: dict[str, np.ndarray] = {}
    for baseline in tqdm(BASELINES, desc=task.label, disable=not progress):

        def tune_baseline(baseline: str = baseline) -> dict[str, np.ndarray]:
            if recorded is None:
                tuned = harness.tune_learning_rate(
                    BASELINES[baseline], family, tune, test, horizons, task.grid, coarse_to_fine=True
                )
            else:  # Each recorded rate runs once on the test tasks, as the search's best rates do.
                rates = {s: recorded[(baseline, s)] for s in horizons}
                curves = {
                    r: loss_curves(BASELINES[baseline], jnp.asarray(r, jnp.float32), family, test, max(horizons))
                    for r in set(rates.values())
                }
                tuned = {s: (r, curves[r]) for s, r in rates.items()}
            return {
                "rates": np.asarray([tuned[s][0] for s in horizons]),
                **{f"curves_{s}": tuned[s][1] for s in horizons},
            }

        cache_key = {**key, "baseline": baseline, **({"recorded": True} if recorded is not None else {})}
        out = cached(cache, f"{task_slug(task)}__{baseline}", cache_key, tune_baseline)
        for i, steps in enumerate(horizons):
            best = float(out["rates"][i])
            lrs[(baseline, steps)] = best
            curves.setdefault(f"{baseline}@{best}", out[f"curves_{steps}"])
    return lrs, curves


def recorded_rates(
    results: dict[str, Any], task: Task, tune_inits: int, data: Any, horizons: tuple[int, ...]
) -> dict[tuple[str, int], float] | None:
    """The baselines' tuned rates for ``task`` in an earlier battery's ``results``, if it tuned the same task the same way.

    ``results``: the content of its ``generalisation.json``, read before this battery
    writes anything (so it may be the file this battery rewrites). Same way: the same
    task definition (family, options, horizons, grid), tuning initialisations and data
    (the MNIST record, for tasks on MNIST), and a rate for every baseline at every
    horizon in ``horizons``. Otherwise ``None``.
    """
    definition = {k: v for k, v in dataclasses.asdict(task).items() if k not in ("skip", "test_inits")}
    same = [
        t
        for t in results["tasks"]
        if same_record({k: v for k, v in t.items() if k not in ("skip", "test_inits")}, definition)
    ]
    if not same or results["tune_inits"] != tune_inits or (task.uses_mnist and results["mnist_data"] != data):
        return None
    rates = {(r["optimizer"], r["steps"]): r["learning_rate"] for r in baseline_rows(results, task)}
    return rates if all((b, s) in rates for b in BASELINES for s in horizons) else None


def tuning_seeds(results: dict[str, Any], task: Task) -> dict[tuple[str, int], int]:
    """``{(baseline, steps): seed}``: the seed of the tuning initialisations of each rate ``results`` holds for ``task``.

    A row that does not say (written before ``--seed`` existed) was tuned with its file's
    ``seed``, or `SEED`.
    """
    default = results.get("seed", SEED)
    return {(r["optimizer"], r["steps"]): r.get("rate_tuned_with_seed", default) for r in baseline_rows(results, task)}


def baseline_rows(results: dict[str, Any], task: Task) -> list[dict[str, Any]]:
    """The rows of ``results`` (a battery's ``generalisation.json``) for ``task``'s tuned baselines."""
    return [r for r in results["rows"] if r["task"] == task.label and r["optimizer"] in BASELINES]


def same_record(recorded: Any, current: Any) -> bool:
    """True if ``recorded`` (read from JSON) describes ``current``; floats may differ in their last bits.

    A grid such as ``np.logspace(-4, 1, 21)`` is not bit-identical across NumPy builds, so
    an exact comparison would reject an earlier battery's rates for the same grid. A flag
    (``bool``) matches only the same flag, never the number 0 or 1.
    """
    if isinstance(recorded, bool) or isinstance(current, bool):
        return recorded is current
    if isinstance(recorded, float) or isinstance(current, float):
        return (
            isinstance(recorded, (int, float))
            and isinstance(current, (int, float))
            and math.isclose(recorded, current, rel_tol=1e-9, abs_tol=0.0)
        )
    if isinstance(recorded, dict) and isinstance(current, dict):
        return recorded.keys() == current.keys() and all(same_record(recorded[k], current[k]) for k in recorded)
    if isinstance(recorded, list) and isinstance(current, (list, tuple)):
        return len(recorded) == len(current) and all(map(same_record, recorded, current))
    return recorded == current


def verdict(row: dict[str, Any]) -> str:
    """The generalist against this row by the 2-paired-s.e. rule: ``wins``, ``loses`` or ``tie``."""
    if "reference_minus_this" not in row:
        return ""
    d, se = row["reference_minus_this"], row["reference_minus_this_stderr"]
    return "wins" if d < -2 * se else "loses" if d > 2 * se else "tie"


def table(rows: list[dict[str, Any]], reference: str = REFERENCE) -> str:
    lines = [
        (
            f"| task | steps | optimizer | tuned lr | mean training loss | ± s.e. | {reference} − this, paired (± s.e.) "
            f"| {reference} | diverged |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lr = (
            "learned"
            if r["learning_rate"] is None
            else f"{r['learning_rate']:.3g}" + (" (edge)" if r["lr_at_grid_edge"] else "")
        )
        paired = (
            f"{r['reference_minus_this']:+.4f} ({r['reference_minus_this_stderr']:.4f})"
            if "reference_minus_this" in r
            else ""
        )
        lines.append(
            f"| {r['task']} | {r['steps']} | {r['optimizer']} | {lr} | {r['mean_loss']:.4f} | {r['stderr']:.4f} "
            f"| {paired} | {verdict(r)} | {'yes' if r['diverged'] else 'no'} |"
        )
    return "\n".join(lines)


def compact_table(rows: list[dict[str, Any]], reference: str = REFERENCE) -> str:
    """Per task and horizon: the reference (the generalist), tuned Adam, and the best of every other optimizer.

    A row with the reference's own curves (``same_as``: the reference's prior flagged
    nothing on that task) is not a candidate for the best other.
    """
    lines = [
        (
            f"| task | steps | {reference} | tuned Adam | {reference} vs Adam | best other (loss) "
            f"| {reference} vs best other | {reference} diverged |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task, steps in dict.fromkeys((r["task"], r["steps"]) for r in rows):
        cells = {r["optimizer"]: r for r in rows if (r["task"], r["steps"]) == (task, steps)}
        if reference not in cells:
            continue
        ours, adam = cells[reference], cells["adam"]
        others = [r for name, r in cells.items() if name != reference and r.get("same_as") != reference]
        best = min(others, key=lambda r: r["mean_loss"])
        lines.append(
            f"| {task}{' (held out)' if ours['held_out'] else ''} | {steps} | {ours['mean_loss']:.4f} "
            f"| {adam['mean_loss']:.4f} | {verdict(adam)} | {best['optimizer']} ({best['mean_loss']:.4f}) "
            f"| {verdict(best)} | {'yes' if ours['diverged'] else 'no'} |"
        )
    return "\n".join(lines)


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Per task and horizon: whom the generalist beats, ties and loses to."""
    out = []
    keys = dict.fromkeys((r["task"], r["steps"]) for r in rows)
    for task, steps in keys:
        cells = [r for r in rows if (r["task"], r["steps"]) == (task, steps)]
        by = {v: [r["optimizer"] for r in cells if verdict(r) == v] for v in ("wins", "tie", "loses")}
        out.append(
            f"- {task}, {steps} steps: beats {', '.join(by['wins']) or 'none'}; ties {', '.join(by['tie']) or 'none'}; "
            f"loses to {', '.join(by['loses']) or 'none'}"
        )
    return out


def option(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> ``(KEY, VALUE read as JSON)``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"{text!r} is not KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        raise ValueError(f"{text!r}: VALUE must be JSON (a number, true, false, null, a quoted string)") from None


def with_options(
    optimizer: LearnedOptimizer, phi: MetaParams, options: dict[str, Any]
) -> tuple[LearnedOptimizer, MetaParams]:
    """``optimizer`` rebuilt with ``options`` added to its own, and ``phi``, checked to still fit it."""
    if not options:
        return optimizer, phi
    rebuilt = optimizers.get(optimizer.name, **{**optimizer.config(), **options})
    try:
        optimizers.check_meta_params(rebuilt, phi)
    except MetaParamsMismatchError as e:
        raise ConfigError(
            f"{sorted(options)} change the shape of φ: only options that keep it can be added ({e})"
        ) from None
    return rebuilt, phi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_data_dir_option(parser)
    parser.add_argument(
        "--generalist", default="generalist", help="a shipped name or a run directory (default: the shipped one)"
    )
    parser.add_argument(
        "--generalist-options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="optimizer options added to --generalist's, same φ (VALUE as JSON), e.g. step_bound=3",
    )
    parser.add_argument(
        "--label",
        default=REFERENCE,
        help="the name of --generalist in the results, which every other optimizer is paired with",
    )
    parser.add_argument(
        "--recurrence-prior",
        action="store_true",
        help="multiply --generalist's updates of the tensors that feed a recurrence (recurrent_tensors of each "
        "task's loss) by the factor recorded with it, as pretrained.load(..., recurrent=mask) does",
    )
    parser.add_argument(
        "--others", nargs="*", default=list(OTHERS), help="other learned optimizers: shipped names or run directories"
    )
    parser.add_argument("--tasks", nargs="+", default=None, help=f"a subset of: {', '.join(t.label for t in TASKS)}")
    parser.add_argument(
        "--rates-from", type=Path, default=None, help="an earlier generalisation.json whose tuned rates to reuse"
    )
    parser.add_argument("--tune-inits", type=harness.count, default=TUNE_INITS)
    parser.add_argument(
        "--seed",
        type=int,
        default=SEED,
        help=f"of the tuning and test initialisations (default {SEED}); another draws test initialisations no earlier "
        "battery used (a --cache-dir keeps one seed's curves per optimizer and task)",
    )
    parser.add_argument(
        "--test-inits", type=harness.count, default=None, help="for every task (default: each task's own, 48 or 16)"
    )
    parser.add_argument(
        "--max-steps", type=harness.count, default=None, help="cap every horizon (for quick checks; not for results)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="keep the tuned baselines here and reuse them when run again with the same settings",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=harness.RESULTS)
    args = parser.parse_args()
    known = {t.label: t for t in TASKS}
    unknown = [t for t in args.tasks or () if t not in known]
    if unknown:
        parser.error(f"unknown task(s) {', '.join(map(repr, unknown))}; choose from {', '.join(map(repr, known))}")
    selected = [known[t] for t in args.tasks] if args.tasks else list(TASKS)

    if args.label in args.others:
        parser.error(f"--label {args.label!r} is also among --others: give the optimizer under test another name")
    try:
        args.generalist_options = dict(map(option, args.generalist_options))
        learned = {args.label: with_options(*pretrained.load_meta_params(args.generalist), args.generalist_options)}
    except (ValueError, L2LError) as e:
        parser.error(f"--generalist-options: {e}")
    args.prior_scale = None
    if args.recurrence_prior:
        try:
            args.prior_scale = pretrained.recorded_recurrent_scale(args.generalist)
        except L2LError as e:
            parser.error(f"--recurrence-prior: {e}")
    learned.update({str(name): pretrained.load_meta_params(name) for name in args.others})
    args.phi_sha256 = {name: fingerprint(phi) for name, (_, phi) in learned.items()}
    try:  # Read now: the battery may rewrite this very file as it goes.
        earlier = None if args.rates_from is None else json.loads(args.rates_from.read_text())
    except (OSError, ValueError) as e:
        parser.error(f"--rates-from: {e}")
    all_rows, t0 = [], time.perf_counter()
    data = None
    args.results_dir.mkdir(parents=True, exist_ok=True)
    for task in selected:
        horizons = task.horizons
        if args.max_steps is not None:
            horizons = tuple(sorted({min(h, args.max_steps) for h in horizons}))
        family = build_family(task, args.data_dir)
        if task.uses_mnist:
            data = family.data_record
        test_inits = args.test_inits or task.test_inits
        t1 = time.perf_counter()
        data_record = getattr(family, "data_record", None)
        recorded = (
            None if args.rates_from is None else recorded_rates(earlier, task, args.tune_inits, data_record, horizons)
        )
        if args.rates_from is not None and recorded is None:
            print(f"--rates-from: no rates for {task.label!r} tuned the same way there; tuning them", file=sys.stderr)
        rows, curves = evaluate_task(
            task,
            family,
            learned,
            horizons,
            args.tune_inits,
            test_inits,
            args.cache_dir,
            not args.no_progress,
            recorded,
            args.label,
            args.prior_scale,
            args.seed,
        )
        seeds = tuning_seeds(earlier, task) if recorded is not None else {}
        for r in rows:
            tuned = r["optimizer"] in BASELINES
            r["rate_from"] = "recorded" if recorded is not None and tuned else None
            r["rate_tuned_with_seed"] = seeds.get((r["optimizer"], r["steps"]), args.seed) if tuned else None
        for r in rows:
            r["task_seconds"] = time.perf_counter() - t1
        all_rows += rows
        plot_loss_curves(
            curves,
            args.results_dir / f"generalisation_{task_slug(task)}.png",
            title=f"{task.label}: mean of {test_inits} inits{' (held out)' if task.held_out else ''}",
        )
        print(table(rows, args.label), flush=True)
        # Written after every task, so an interrupted battery keeps what it measured.
        write_results(args, selected, all_rows, data, time.perf_counter() - t0)
    print("\n".join(summary_lines(all_rows)))
    print(f"\nevaluation {(time.perf_counter() - t0) / 60:.1f} min")


def write_results(
    args: argparse.Namespace, selected: list[Task], rows: list[dict[str, Any]], data: Any, seconds: float
) -> None:
    """``generalisation.{json,md}`` in ``args.results_dir`` with the rows measured so far."""
    summary = {
        "command": harness.command(),
        "machine": harness.describe_machine(),
        "generalist": str(args.generalist),
        "generalist_options": args.generalist_options,
        "recurrence_prior_scale": args.prior_scale,
        "label": args.label,
        "others": [str(o) for o in args.others],
        "phi_sha256": args.phi_sha256,
        "rates_from": None if args.rates_from is None else str(args.rates_from),
        "seed": args.seed,
        "generalist_training": pretrained.info(args.generalist).get("training"),
        "mnist_data": data,
        "tune_inits": args.tune_inits,
        "evaluation_seconds": seconds,
        "tasks": [dataclasses.asdict(t) for t in selected],
        "rows": rows,
    }
    harness.write_json(args.results_dir / "generalisation.json", summary, indent=2)
    done = len(dict.fromkeys(r["task"] for r in rows))
    status = "" if done == len(selected) else f"**Partial: {done} of {len(selected)} tasks.**\n\n"
    harness.write_text(
        args.results_dir / "generalisation.md",
        f"{status}{compact_table(rows, args.label)}\n\n{table(rows, args.label)}\n\n"
        + "\n".join(summary_lines(rows))
        + f"\n\nEvaluation {seconds / 60:.1f} min on "
        f"{summary['machine']}. Command: `{summary['command']}`.\n",
    )


if __name__ == "__main__":
    main()
