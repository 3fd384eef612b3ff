"""The battery's paired differences on ranges of its test initialisations, read back from its curve cache.

For a task that ``generalisation.py --cache-dir CACHE`` ran: the optimizer every other was
paired with (``--reference``, its ``--label`` there) minus each of ``--against`` (baselines
or other optimizers of the battery), at each of the task's horizons, over each range
``START:STOP`` of test initialisations (``--inits``): mean ± paired standard error and
the verdict by the 2-paired-s.e. rule. Nothing is run again: the curves are the
battery's own, read without pickle, and their cache keys must show the same task and
test initialisations (number and seed). Prints a table; writes nothing.

    python benchmarks/battery_subsets.py --cache-dir runs/generalisation-cache --task CNN \\
        --reference "generalist + prior" --against adam --inits 0:16 16:48 0:48
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import generalisation
import harness
import numpy as np


def init_range(text: str) -> tuple[int, int]:
    """``"START:STOP"`` -> ``(START, STOP)``, with ``0 <= START < STOP``."""
    start, sep, stop = text.partition(":")
    if not (sep and start.isdigit() and stop.isdigit() and int(start) < int(stop)):
        raise argparse.ArgumentTypeError(f"must be START:STOP with 0 <= START < STOP, got {text!r}")
    return int(start), int(stop)


def cached_curves(cache: Path, task: generalisation.Task, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and the cache key that ``generalisation.cached`` kept for ``name`` on ``task``."""
    meta, arrays = generalisation.cache_files(cache, f"{generalisation.task_slug(task)}__{name}")
    if not (meta.exists() and arrays.exists()):
        raise FileNotFoundError(
            f"no cached curves of {name!r} on {task.label!r} in {cache} (an optimizer whose row says 'same as' "
            "another shares that one's curves: name that one)"
        )
    with np.load(arrays, allow_pickle=False) as loaded:
        return {k: loaded[k] for k in loaded.files}, json.loads(meta.read_text())


def draw(key: dict[str, Any]) -> tuple[Any, int, int]:
    """The task, number of test initialisations and seed of a cache key (written before ``--seed``: the default)."""
    return key["task"], key["test_inits"], key.get("seed", generalisation.SEED)


def final_losses(arrays: dict[str, np.ndarray], steps: int) -> np.ndarray:
    """Each test initialisation's loss at ``steps``: a learned optimizer's curve, or a baseline's tuned for ``steps``."""
    curves = arrays.get(f"curves_{steps}", arrays.get("curves"))
    return np.asarray(curves)[:, steps]


def subset_rows(
    cache: Path, task: generalisation.Task, reference: str, against: list[str], ranges: list[tuple[int, int]]
) -> list[dict[str, Any]]:
    """One row per (other optimizer, horizon, range): ``reference`` − other, paired, on those initialisations."""
    ref, ref_key = cached_curves(cache, task, reference)
    rows = []
    for other in against:
        arrays, key = cached_curves(cache, task, other)
        if draw(key) != draw(ref_key):
            raise ValueError(f"{other!r} and {reference!r} were cached for different tasks or test initialisations")
        for steps in task.horizons:
            a, b = final_losses(ref, steps), final_losses(arrays, steps)
            for start, stop in ranges:
                if stop > len(a):
                    raise ValueError(f"--inits {start}:{stop}: {task.label!r} has {len(a)} test initialisations")
                d, se = harness.paired_difference(a[start:stop], b[start:stop])
                row = {"against": other, "steps": steps, "inits": f"{start}:{stop}"}
                row.update(reference_minus_this=d, reference_minus_this_stderr=se)
                rows.append({**row, "verdict": generalisation.verdict(row)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, required=True, help="the battery's --cache-dir")
    parser.add_argument("--task", required=True, choices=[t.label for t in generalisation.TASKS])
    parser.add_argument("--reference", default=generalisation.REFERENCE, help="the battery's --label")
    parser.add_argument("--against", nargs="+", required=True, help="baselines or other optimizers of the battery")
    parser.add_argument("--inits", nargs="+", type=init_range, required=True, help="ranges START:STOP")
    args = parser.parse_args()
    task = {t.label: t for t in generalisation.TASKS}[args.task]
    try:
        rows = subset_rows(args.cache_dir, task, args.reference, args.against, args.inits)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    print(f"| {task.label}: {args.reference} − this | steps | initialisations | paired difference (± s.e.) | verdict |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        difference = f"{r['reference_minus_this']:+.4f} ({r['reference_minus_this_stderr']:.4f})"
        print(f"| {r['against']} | {r['steps']} | {r['inits']} | {difference} | {r['verdict']} |")


if __name__ == "__main__":
    main()
