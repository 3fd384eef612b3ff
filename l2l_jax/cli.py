"""The ``l2l-jax`` command line: demo, meta-train, evaluate, seed-example.

Errors a user can cause (bad names, sizes, run directories) print one line and
exit with status 2. Ctrl-C (exit status 130) and SIGTERM (143) during
meta-training save a checkpoint first; the same command resumes the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from l2l_jax import checks
from l2l_jax import optimizers as optimizers_lib
from l2l_jax import pretrained as pretrained_lib
from l2l_jax import run_directory as rd
from l2l_jax import tasks as tasks_lib
from l2l_jax.errors import ConfigError, DataError, L2LError, Terminated
from l2l_jax.evaluation import baselines as baselines_lib
from l2l_jax.evaluation import report
from l2l_jax.evaluation.plots import plot_meta_training
from l2l_jax.meta import estimators as estimators_lib
from l2l_jax.meta.recipes import SPECIALISE_DEFAULTS, specialise_defaults
from l2l_jax.meta.training import META_LR_SCHEDULES, META_OPTIMIZERS, MetaTrainConfig, meta_train
from l2l_jax.meta.unroll import WEIGHTINGS
from l2l_jax.version import __version__

#: The top-level ``--help`` text (plain words: argparse prints it as is).
DESCRIPTION = (
    "l2l-jax: meta-train learned optimizers (Andrychowicz et al., 2016) and compare them with tuned baselines."
)

#: The demo's meta-training run: the paper's LSTM on 10-d quadratics.
DEMO_CONFIG: dict[str, Any] = {
    "task": "quadratic",
    "task_options": {"dim": 10},
    "optimizer": "lstm",
    "optimizer_options": {"preset": "paper"},
    "num_meta_steps": 1000,
    "horizon": 100,
    "truncation": 20,
    "batch_size": 128,
    "meta_lr": 1e-2,
    "meta_lr_schedule": "cosine",
    "validate_every": 100,
    "num_val_tasks": 128,
    "checkpoint_every": 100,
}

#: MetaTrainConfig's defaults, the defaults of ``meta-train``'s options.
CONFIG_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(MetaTrainConfig) if f.default is not dataclasses.MISSING
}


def _defaults(function: Any) -> dict[str, Any]:
    """``function``'s parameters that have defaults -> their defaults."""
    parameters = inspect.signature(function).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not p.empty}


#: The defaults of ``evaluate``'s and ``meta-train``'s options that are not in the config.
EVALUATE_DEFAULTS: dict[str, Any] = _defaults(report.evaluate_run)
META_TRAIN_DEFAULTS: dict[str, Any] = _defaults(meta_train)


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to every option that takes a value, unless its help states the default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        takes_value = action.option_strings and action.nargs != 0 and not action.required
        if takes_value and action.default is not argparse.SUPPRESS and "default:" not in text:
            text += " (default: %(default)s)"
        return text


class Interrupted(SystemExit):
    """Ctrl-C or SIGTERM stopped a command; ``code`` is the exit status (128 + the signal's number)."""


def _parse_options(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """``["dim=10", "preset=paper"]`` -> ``{"dim": 10, "preset": "paper"}`` (values as JSON if they parse).

    Raises:
      ConfigError: naming ``flag``, if an item is not ``KEY=VALUE`` or its JSON
        value nests more than ``run_directory.MAX_JSON_DEPTH`` deep.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} takes KEY=VALUE, got {item!r}")
        try:
            out[key] = rd.parse_json(value)
        except json.JSONDecodeError:
            out[key] = value
        except ValueError as e:
            raise ConfigError(f"{flag} {key}=...: the value is {e}") from None
    return out


def _evaluate_run(
    run_dir: Path,
    num_tasks: int,
    num_tune_tasks: int,
    num_steps: int | None,
    seed: int,
    progress: bool,
    task: str | None = None,
    against: Sequence[str] | None = None,
    task_options: dict[str, Any] | None = None,
    baselines: Sequence[str] | None = None,
) -> str:
    """Compares a run's optimizer with tuned baselines (and ``against``); returns the tables and where files went.

    ``task_options`` are the ones given on the command line: the only source of
    ``download`` and ``data_dir`` (``report.CALLER_ONLY_OPTIONS``). ``baselines``:
    the ``--baseline`` names, ``None`` for every baseline.
    """
    chosen = {} if baselines is None else {"baselines": tuple(dict.fromkeys(baselines))}
    try:
        comparison = report.evaluate_run(
            run_dir,
            num_tasks=num_tasks,
            num_tune_tasks=num_tune_tasks,
            num_steps=num_steps,
            seed=seed,
            progress=progress,
            task=task,
            task_options=task_options,
            against=against,
            **chosen,
        )
    except DataError as e:
        given = task_options or {}
        if "data_dir" not in given and given.get("download") is not True:
            raise DataError(
                f"{e} Options that choose where data lies or download it are never taken from a run directory: "
                "pass --task-option data_dir=DIR, or --task-option download=true."
            ) from None
        raise
    reference = next(iter(comparison.curves))
    written = ", ".join(str(run_dir / f) for f in (rd.EVALUATION_JSON, rd.EVALUATION_TABLE, rd.LOSS_CURVES_PLOT))
    return f"{comparison.table()}\n\n{comparison.paired_table(reference)}\n\nwrote {written}"


def _file_id(path: Path) -> tuple[int, int, int] | None:
    """``(device, inode, mtime in ns)`` of ``path``: it changes whenever the file is rewritten; ``None`` if missing."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _check_evaluate_options(args: argparse.Namespace) -> None:
    """Refuses the ``--tasks``, ``--tune-tasks``, ``--steps`` and ``--baseline`` that evaluation would refuse, at once."""
    given = (("--tasks", args.tasks), ("--tune-tasks", args.tune_tasks), ("--steps", getattr(args, "steps", None)))
    for flag, value in given:
        if value is not None:
            checks.positive_int(flag, value)
    for name in args.baselines or ():
        baselines_lib.get(name)


def _train(
    config_dict: dict[str, Any],
    run_dir: Path,
    *,
    resume: bool,
    progress: bool,
    overwrite: bool = False,
    devices: int | None = None,
    steps_per_call: int = 1,
) -> Any:
    """Meta-trains into ``run_dir``, saying what it does once the run directory is accepted.

    Ctrl-C exits with status 130 and SIGTERM with 128 + its number, after
    meta-training has saved a checkpoint (if it got as far as its first one),
    saying whether a new checkpoint is on disk.
    """
    config = MetaTrainConfig.from_dict(config_dict)
    total = config.num_meta_steps
    started: list[float] = []  # The time meta-training started, once it has.
    checkpoint_at_start: list[tuple[int, int, int] | None] = [None]

    writer = _is_writer()

    def on_start(start_step: int) -> None:
        checkpoint_at_start[0] = _file_id(run_dir / rd.CHECKPOINT)
        if start_step < total and writer:
            resuming = f", resuming at step {start_step}" if start_step else ""
            what = config.optimizer
            if config.init is not None:
                what = f"{pretrained_lib.info(config.init).get('optimizer')} from {config.init}"
            print(f"meta-training {what} on {config.task} into {run_dir}{resuming}", flush=True)
        started.append(time.perf_counter())

    try:
        result = meta_train(
            config,
            run_dir,
            resume=resume,
            progress=progress,
            devices=devices,
            steps_per_call=steps_per_call,
            overwrite=overwrite,
            on_start=on_start,
        )
    except KeyboardInterrupt as e:
        checkpoint = _file_id(run_dir / rd.CHECKPOINT)
        if not writer:
            pass  # Process 0 says what it saved.
        elif not started:
            print("\ninterrupted before meta-training started; nothing was saved.", flush=True)
        elif checkpoint is not None and checkpoint != checkpoint_at_start[0]:
            print(f"\ninterrupted: checkpoint saved in {run_dir}; run the same command again to resume.", flush=True)
        elif checkpoint is not None:
            print(
                f"\ninterrupted before a new checkpoint was saved; run the same command again to resume from "
                f"the last one in {run_dir}.",
                flush=True,
            )
        else:
            print(
                f"\ninterrupted before the first checkpoint; no checkpoint was saved in {run_dir}.",
                flush=True,
            )
        raise Interrupted(128 + e.signum if isinstance(e, Terminated) else 130) from None
    steps_run = total - result.start_step
    if _JOB:  # The job ends with meta-training; process 0 goes on alone (plot, evaluation).
        _leave_job()
    if not writer:
        return result
    if steps_run == 0:
        print(f"nothing to do: the run in {run_dir} has finished all {total} meta-steps")
        return result
    with rd.lock(run_dir):
        plot_meta_training(
            result.history,
            run_dir / rd.PLOT,
            weighting=config.weighting,
            title=f"meta-training {config.optimizer} on {config.task}",
        )
    best = f"best validation meta-loss {result.best_val:.4g}" if math.isfinite(result.best_val) else "no validation yet"
    seconds = time.perf_counter() - started[0] if started else 0.0
    print(
        f"meta-trained {steps_run} meta-steps in {seconds:.1f} s "
        f"(steps {result.start_step + 1}-{total} of {total}; {best}; {result.skipped} skipped non-finite steps)"
    )
    return result


def cmd_demo(args: argparse.Namespace) -> int:
    _check_evaluate_options(args)
    config = dict(DEMO_CONFIG, seed=args.seed, num_meta_steps=args.meta_steps)
    _train(config, args.run_dir, resume=not args.no_resume, progress=not args.no_progress, overwrite=args.overwrite)
    print("\nevaluating on held-out quadratics against tuned baselines ...", flush=True)
    print(
        _evaluate_run(
            args.run_dir,
            args.tasks,
            args.tune_tasks,
            100,
            args.seed + 1,
            not args.no_progress,
            baselines=args.baselines,
        )
    )
    print(
        f"\nthe trained optimizer: l2l_jax.pretrained.load({str(args.run_dir)!r}) "
        "returns it as an optax.GradientTransformationExtraArgs"
    )
    return 0


#: ``meta-train``'s options whose default changes with ``--init`` (the fine-tuning recipe's), config name -> dest.
RECIPE_OPTIONS: dict[str, str] = {
    "estimator": "estimator",
    "batch_size": "batch_size",
    "meta_lr": "meta_lr",
    "meta_lr_warmup": "meta_lr_warmup",
    "clip_norm": "clip_norm",
    "weighting": "weighting",
    "num_meta_steps": "meta_steps",
    "validate_every": "validate_every",
    "num_val_tasks": "val_tasks",
    "checkpoint_every": "checkpoint_every",
    "truncation": "truncation",
    "min_horizon": "min_horizon",
    "validation_horizon": "validation_horizon",
}


#: Names the library's messages use for what the command line calls otherwise.
_FIELD_FLAGS: dict[str, str] = {
    "task_options": "--task-option",
    "optimizer_options": "--optimizer-option",
    "estimator_options": "--estimator-option",
    "num_tasks": "--tasks",
    "num_tune_tasks": "--tune-tasks",
    "num_steps": "--steps",
}


def field_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each field the library's messages name (``batch_size``, ``num_val_tasks``) -> its flag.

    Read from the parser's options (and `RECIPE_OPTIONS`, where a field's flag has
    another name), so that it cannot go stale.
    """
    flags = dict(_FIELD_FLAGS)
    dest_to_field = {dest: field for field, dest in RECIPE_OPTIONS.items()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                for option in sub._actions:
                    if option.option_strings and option.dest != "help":
                        flags.setdefault(dest_to_field.get(option.dest, option.dest), option.option_strings[-1])
    return flags


def in_flags(message: str, flags: dict[str, str]) -> str:
    """``message`` with every field name that holds an underscore written as its flag.

    A quoted name (``'batch_size'``) is left as it is: the library quotes the names of
    a task's, optimizer's or estimator's own options, which share some fields' names
    but are given with ``--task-option`` (and the like), not with the field's flag.
    """
    fields = sorted((f for f in flags if "_" in f), key=len, reverse=True)
    if not fields:
        return message
    pattern = r"(?<!')\b(" + "|".join(map(re.escape, fields)) + r")\b(?!')"
    return re.sub(pattern, lambda m: flags[m.group(1)], message)


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """``meta-train``'s options as a ``MetaTrainConfig`` dict (not yet validated).

    Options not given take ``MetaTrainConfig``'s defaults, or with ``--init`` the
    fine-tuning recipe's (``l2l_jax.meta.recipes.specialise_defaults``).
    """
    optimizer_options = _parse_options(args.optimizer_option, "--optimizer-option")
    if args.preset is not None:
        if args.optimizer not in (None, "lstm"):
            raise ConfigError("--preset applies to the lstm optimizer only")
        optimizer_options["preset"] = args.preset
    if args.init is not None and args.optimizer is not None:
        source_optimizer = pretrained_lib.info(args.init).get("optimizer")
        if args.optimizer != source_optimizer:
            raise ConfigError(
                f"--init {args.init} starts from a {source_optimizer} optimizer, but --optimizer is "
                f"{args.optimizer!r}; drop --optimizer: the source sets it"
            )
    explicit = {name: getattr(args, dest) for name, dest in RECIPE_OPTIONS.items() if getattr(args, dest) is not None}
    defaults = (
        specialise_defaults(args.horizon, args.truncation, args.estimator) if args.init is not None else CONFIG_DEFAULTS
    )
    recipe = {name: explicit.get(name, defaults[name]) for name in RECIPE_OPTIONS}
    recipe_options = defaults.get("estimator_options", {})  # The recipe's own for its estimator only.
    return {
        "task": args.task,
        "task_options": _parse_options(args.task_option, "--task-option"),
        "optimizer": args.optimizer or CONFIG_DEFAULTS["optimizer"],
        "optimizer_options": optimizer_options,
        "horizon": args.horizon,
        **recipe,
        "estimator_options": {**recipe_options, **_estimator_options(args)},
        "meta_optimizer": args.meta_optimizer,
        "meta_lr_schedule": args.meta_lr_schedule,
        "tasks_per_chunk": args.tasks_per_chunk,
        "seed": args.seed,
        "init": args.init,
        "init_sha256": None,
    }


def _estimator_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--estimator-option`` and the flags that are short for one (``--sigma``, ``--pairs``, ``--remat``, ...)."""
    options = _parse_options(args.estimator_option, "--estimator-option")
    short = {
        "sigma": args.sigma,
        "num_pairs": args.pairs,
        "first_order": False if args.second_order else None,
        "remat": "segments" if args.remat_segments else (True if args.remat else None),
    }
    return {**options, **{k: x for k, x in short.items() if x is not None}}


def _estimator_help() -> str:
    """``--estimator-option``'s help: every registered estimator's options and defaults."""
    listed = "; ".join(
        f"{name}: " + (", ".join(f"{k}={x}" for k, x in sorted(estimators_lib.options(name).items())) or "none")
        for name in estimators_lib.available()
    )
    return f"an option of the meta-gradient estimator, e.g. sigma=0.02 (repeatable); each one's options and defaults: {listed}"


#: This process's index while it is in a ``jax.distributed`` job (``--coordinator``).
_JOB: list[int] = []


def _is_writer() -> bool:
    """Whether this process writes the run directory: the only one, or process 0 of a ``jax.distributed`` job."""
    import jax

    return jax.process_index() == 0


def _check_port_free(port: int) -> None:
    """Raises ``ConfigError`` if process 0 cannot listen on ``port`` (JAX would crash on it)."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError as e:
            raise ConfigError(
                f"--coordinator: process 0 cannot listen on port {port} ({e.strerror}); choose a free port"
            ) from None


def _leave_job() -> None:
    """Ends this process's part in the ``jax.distributed`` job (every process calls it); local JAX still works."""
    import jax

    jax.distributed.shutdown()
    _JOB.clear()


def _start_processes(args: argparse.Namespace) -> None:
    """Joins the ``jax.distributed`` job that ``--coordinator`` names, if any (collectives over gloo on CPUs).

    Raises:
      ConfigError: for incomplete or invalid process options.
    """
    given = {"--num-processes": args.num_processes, "--process-id": args.process_id}
    if args.coordinator is None:
        if any(v is not None for v in given.values()):
            raise ConfigError("--num-processes and --process-id need --coordinator HOST:PORT")
        return
    if args.coordinator == "auto":
        if any(v is not None for v in given.values()):
            raise ConfigError(
                "--coordinator auto takes the processes from the cluster; drop --num-processes/--process-id"
            )
        options: dict[str, Any] = {}
    else:
        host, _, port = args.coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--coordinator must be HOST:PORT or auto, got {args.coordinator!r}")
        n = checks.positive_int("--num-processes", args.num_processes, at_most=checks.MAX_COUNT)
        if args.process_id is None or not 0 <= args.process_id < n:
            raise ConfigError(f"--process-id must be between 0 and {n - 1}, got {args.process_id}")
        options = {"coordinator_address": args.coordinator, "num_processes": n, "process_id": args.process_id}
        if args.process_id == 0:
            _check_port_free(int(port))
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**options)
    _JOB.append(jax.process_index())


def cmd_meta_train(args: argparse.Namespace) -> int:
    if args.evaluate:
        _check_evaluate_options(args)
    elif args.baselines:
        raise ConfigError("--baseline chooses what --evaluate compares with: add --evaluate, or drop --baseline")
    _start_processes(args)
    config = config_from_args(args)
    try:
        _train(
            config,
            args.run_dir,
            resume=not args.no_resume,
            progress=not args.no_progress,
            overwrite=args.overwrite,
            devices=args.devices,
            steps_per_call=args.steps_per_call,
        )
    except DataError as e:
        if config["task"] == "mnist" and config["task_options"].get("download") is not True:
            raise DataError(f"{e} Or pass --task-option download=true to download it.") from None
        raise
    if not _is_writer():
        return 0
    if args.evaluate:
        # The task as named on this command line: a module:function the user has just trusted.
        print(
            _evaluate_run(
                args.run_dir,
                args.tasks,
                args.tune_tasks,
                None,
                args.seed + 1,
                not args.no_progress,
                config["task"],
                task_options=config["task_options"],
                baselines=args.baselines,
            )
        )
    print(f"wrote {args.run_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    path = Path(args.run)
    if args.no_against and args.against:
        raise ConfigError("--no-against and --against contradict each other; give one")
    if not path.exists() and args.run in pretrained_lib.available():
        raise ConfigError("evaluate writes its results into a run directory; pass a run directory, not a shipped name")
    _check_evaluate_options(args)
    print(
        _evaluate_run(
            path,
            args.tasks,
            args.tune_tasks,
            args.steps,
            args.seed,
            not args.no_progress,
            args.task,
            () if args.no_against else args.against,
            _parse_options(args.task_option, "--task-option"),
            args.baselines,
        )
    )
    return 0


def cmd_seed_example(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    checks.positive_int("--meta-steps", args.meta_steps)  # Before the example's exact figures are computed.
    with jax.enable_x64(True):  # The example's figures are exact in float64.
        from l2l_jax.examples import worked_example

        result = worked_example.compute()
        losses, phis = worked_example.meta_descent(num_meta_steps=args.meta_steps)
    result["adam_meta_training"] = {
        "meta_lr": 0.01,
        "meta_steps": args.meta_steps,
        "meta_loss_first": float(losses[0]),
        "meta_loss_last": float(losses[-1]),
        "phi_last": [float(x) for x in phis[-1]],
    }
    result["explanation"] = worked_example.explanation(result)
    if args.json:
        print(json.dumps(result))
        return 0
    th, gr, h, g = result["theta"], result["grad"], result["h"], result["g"]
    p = result["phi"]
    print("Worked example: f(θ) = (θ - 5)², θ0 = 10")
    print(f"optimizer: h_t = φ1·∇_t + φ2·h_(t-1), g_t = φ3·h_t, φ = ({p[0]:g}, {p[1]:g}, {p[2]:g}), h_(-1) = 0\n")
    for t in range(2):
        print(
            f"step {t}: θ{t} = {th[t]:g}, ∇{t} = 2(θ{t} - 5) = {gr[t]:g}, h{t} = {h[t]:g}, "
            f"g{t} = {g[t]:g}, θ{t + 1} = {th[t + 1]:g}"
        )
    print(f"\nmeta-loss L(φ) = (θ2 - 5)² = {result['meta_loss']:.6g}\n")
    fmt = lambda v: "[" + ", ".join(f"{x:.6g}" for x in v) + "]"
    print(f"assumed meta-gradient (source text):  {fmt(result['assumed_meta_grad'])}")
    print(f"exact meta-gradient (jax.grad):       {fmt(result['meta_grad'])}")
    print(f"first-order meta-gradient (∇_t const): {fmt(result['meta_grad_first_order'])}\n")
    print(
        f"φ - 0.01·assumed = {fmt(result['phi_new_assumed'])} -> meta-loss {result['meta_loss_after_assumed_step']:.6g}"
    )
    print(f"φ - 0.01·exact   = {fmt(result['phi_new'])} -> meta-loss {result['meta_loss_after_exact_step']:.6g}\n")
    print(result["explanation"])
    a = result["adam_meta_training"]
    print(
        f"\nAdam (lr 0.01) on the exact meta-gradient, {a['meta_steps']} meta-steps: meta-loss "
        f"{a['meta_loss_first']:.4g} -> {a['meta_loss_last']:.3g}, φ = {fmt(np.round(a['phi_last'], 4))}"
    )
    return 0


def _recipe_help(text: str, name: str, none: str = "none") -> str:
    """``text`` with the option's default, and its default with ``--init`` (the fine-tuning recipe's)."""

    def shown(value: Any) -> Any:
        return none if value is None else value

    return f"{text} (default: {shown(CONFIG_DEFAULTS[name])}; with --init: {shown(SPECIALISE_DEFAULTS[name])})"


def build_parser() -> argparse.ArgumentParser:
    """The ``l2l-jax`` argument parser; every option's help shows its default."""
    parser = argparse.ArgumentParser(prog="l2l-jax", description=DESCRIPTION, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_demo(sub)
    _add_meta_train(sub)
    _add_evaluate(sub)
    _add_seed_example(sub)
    return parser


def _add(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand ``name`` whose help and description are ``help``."""
    return sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)


def _task_help() -> tuple[str, str]:
    """The registered task names, and the warning that ``module:function`` runs code."""
    code_warning = "module:function, which imports and runs that code (a function returning a TaskFamily)"
    return ", ".join(tasks_lib.available()), code_warning


def _common_eval(p: argparse.ArgumentParser) -> None:
    """--tasks, --tune-tasks, --baseline and --no-progress."""
    p.add_argument("--tasks", type=int, default=EVALUATE_DEFAULTS["num_tasks"], help="held-out test tasks")
    p.add_argument(
        "--tune-tasks",
        type=int,
        default=EVALUATE_DEFAULTS["num_tune_tasks"],
        help="other held-out tasks on which each baseline's learning rate is tuned",
    )
    p.add_argument(
        "--baseline",
        action="append",
        dest="baselines",
        metavar="NAME",
        default=None,
        help=f"a baseline to tune and compare with (repeatable; one of {', '.join(baselines_lib.BASELINES)}; "
        "default: all of them)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run_dir_options(p: argparse.ArgumentParser) -> None:
    """--no-resume and --overwrite."""
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start over even if the run directory holds a checkpoint of this run",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run even in a directory holding other files or another run (replaces its run files)",
    )


def _add_demo(sub: Any) -> None:
    """The ``demo`` subcommand."""
    demo = _add(sub, "demo", "meta-train the paper's LSTM on quadratics and compare it with tuned baselines")
    demo.add_argument("--run-dir", type=Path, default=Path("runs/demo"), help="the run directory")
    demo.add_argument("--seed", type=int, default=0, help="seed of the run")
    demo.add_argument("--meta-steps", type=int, default=DEMO_CONFIG["num_meta_steps"], help="meta-steps")
    _run_dir_options(demo)
    _common_eval(demo)
    demo.set_defaults(func=cmd_demo)


def _add_meta_train(sub: Any) -> None:
    """The ``meta-train`` subcommand."""
    mt = _add(sub, "meta-train", "meta-train a learned optimizer into a run directory")

    _add_task_and_optimizer(mt)
    _add_runs(mt)
    _add_estimator_and_meta_optimizer(mt)
    _add_run(mt)
    mt.set_defaults(func=cmd_meta_train)


def _recipe_option(
    mt: argparse.ArgumentParser, flag: str, type_: type, text: str, name: str, none: str = "none"
) -> None:
    """An option whose default is ``MetaTrainConfig``'s, or with ``--init`` the fine-tuning recipe's."""
    mt.add_argument(flag, type=type_, default=None, help=_recipe_help(text, name, none))


def _add_task_and_optimizer(mt: argparse.ArgumentParser) -> None:
    """``meta-train``'s task, starting point and learned optimizer."""
    d = CONFIG_DEFAULTS
    task_names, code_warning = _task_help()
    mt.add_argument(
        "--task", default=d["task"], help=f"task family: a registered name ({task_names}), or {code_warning}"
    )
    mt.add_argument(
        "--task-option",
        action="append",
        metavar="KEY=VALUE",
        help="an option of the task family, e.g. dim=10 (repeatable; default: the family's own defaults)",
    )
    mt.add_argument(
        "--init",
        default=None,
        metavar="NAME_OR_RUN_DIR",
        help="start from a trained optimizer: a shipped name ("
        + ", ".join(pretrained_lib.available())
        + ") or a run directory; it sets the optimizer and its options, and the options marked 'with --init' "
        "default to the fine-tuning recipe (see docs/guide/specialise.md) (default: a fresh optimizer)",
    )
    mt.add_argument(
        "--optimizer",
        default=None,
        help=f"learned optimizer: {', '.join(optimizers_lib.available())} (default: {d['optimizer']}; "
        "with --init: the source's)",
    )
    mt.add_argument(
        "--preset",
        default=None,
        help=f"LSTM preset: {', '.join(optimizers_lib.LSTM_PRESETS)} (default: paper)",
    )
    mt.add_argument(
        "--optimizer-option",
        action="append",
        metavar="KEY=VALUE",
        help="an option of the learned optimizer, e.g. hidden_size=40 (repeatable; default: the preset's)",
    )


def _add_runs(mt: argparse.ArgumentParser) -> None:
    """``meta-train``'s meta-steps, run lengths, truncations and batch."""
    d = CONFIG_DEFAULTS
    _recipe_option(mt, "--meta-steps", int, "meta-steps (updates of φ) in all", "num_meta_steps")
    mt.add_argument(
        "--horizon", type=int, default=d["horizon"], help="inner steps per run, T (the longest, with --min-horizon)"
    )
    mt.add_argument(
        "--min-horizon",
        type=int,
        default=None,
        help="draw each run's length log-uniformly from [min-horizon, horizon] "
        "(default: every run lasts horizon; with --init: half the horizon, in whole truncations)",
    )
    mt.add_argument(
        "--validation-horizon",
        type=int,
        default=None,
        help="steps of validation runs (default: horizon)",
    )
    mt.add_argument(
        "--truncation",
        type=int,
        default=None,
        help=f"inner steps per meta-step, K (default: {d['truncation']}; with --init: the largest divisor "
        "of the horizon up to 50)",
    )
    _recipe_option(mt, "--batch-size", int, "tasks per meta-step", "batch_size")


def _add_estimator_and_meta_optimizer(mt: argparse.ArgumentParser) -> None:
    """``meta-train``'s meta-gradient estimator and its options, and the meta-optimizer."""
    d = CONFIG_DEFAULTS
    _recipe_option(
        mt,
        "--estimator",
        str,
        f"meta-gradient estimator: {', '.join(estimators_lib.available())} (tbptt: truncated BPTT, "
        "es: truncated ES, pes: persistent ES)",
        "estimator",
    )
    mt.add_argument(
        "--estimator-option",
        action="append",
        metavar="KEY=VALUE",
        help=_estimator_help()
        + " (default: the estimator's; with --init: "
        + ", ".join(f"{k}={x}" for k, x in SPECIALISE_DEFAULTS["estimator_options"].items())
        + ")",
    )
    pes = estimators_lib.options("pes")
    mt.add_argument(
        "--sigma",
        type=float,
        default=None,
        help=f"es/pes: σ of φ's perturbations, short for --estimator-option sigma=X (default: {pes['sigma']})",
    )
    mt.add_argument(
        "--pairs",
        type=int,
        default=None,
        help="es/pes: antithetic pairs of runs per task, short for "
        f"--estimator-option num_pairs=N (default: {pes['num_pairs']}; with --init: "
        f"{SPECIALISE_DEFAULTS['estimator_options']['num_pairs']})",
    )
    mt.add_argument(
        "--meta-optimizer", default=d["meta_optimizer"], help=f"optimizer of φ: {', '.join(META_OPTIMIZERS)}"
    )
    _recipe_option(mt, "--meta-lr", float, "learning rate of the meta-optimizer", "meta_lr")
    mt.add_argument(
        "--meta-lr-schedule",
        default=d["meta_lr_schedule"],
        help=f"{' or '.join(META_LR_SCHEDULES)} (cosine: decay to 0.1 x the meta-lr)",
    )
    _recipe_option(mt, "--meta-lr-warmup", int, "meta-steps of linear warm-up of the meta-lr from 0", "meta_lr_warmup")
    _recipe_option(
        mt, "--clip-norm", float, "clip the meta-gradient to this global norm", "clip_norm", none="no clipping"
    )
    mt.add_argument(
        "--second-order",
        action="store_true",
        help="tbptt: keep second derivatives (exact meta-gradient; default: first order); "
        "short for --estimator-option first_order=false",
    )
    _recipe_option(
        mt,
        "--weighting",
        str,
        f"meta-loss weighting: {', '.join(WEIGHTINGS)} (uniform: w_t = 1; final: last loss; log: sum of log f)",
        "weighting",
    )
    mt.add_argument(
        "--remat", action="store_true", help="tbptt: jax.checkpoint each inner step (less memory); remat=true"
    )
    mt.add_argument(
        "--remat-segments",
        action="store_true",
        help="tbptt: also checkpoint sqrt(K)-step segments (long truncations); remat=segments",
    )


def _add_run(mt: argparse.ArgumentParser) -> None:
    """``meta-train``'s devices, validation, checkpoints, run directory and evaluation."""
    d = CONFIG_DEFAULTS
    mt.add_argument(
        "--devices",
        type=int,
        default=None,
        help="split each batch of tasks over this many devices (default: all, when the batch divides evenly)",
    )
    mt.add_argument(
        "--tasks-per-chunk",
        type=int,
        default=d["tasks_per_chunk"],
        help="unroll the batch in sequential chunks of this many tasks (default: all at once)",
    )
    mt.add_argument(
        "--steps-per-call",
        type=int,
        default=META_TRAIN_DEFAULTS["steps_per_call"],
        help="meta-steps per compiled call (fewer host round trips; same run up to float rounding)",
    )
    _recipe_option(
        mt,
        "--validate-every",
        int,
        "validate φ every this many meta-steps and keep the best (0: never)",
        "validate_every",
    )
    _recipe_option(mt, "--val-tasks", int, "held-out validation tasks", "num_val_tasks")
    _recipe_option(mt, "--checkpoint-every", int, "checkpoint interval", "checkpoint_every")
    mt.add_argument("--seed", type=int, default=d["seed"], help="seed of the run")
    mt.add_argument("--run-dir", type=Path, required=True, help="the run directory (resumed if it holds this run)")
    _run_dir_options(mt)
    mt.add_argument("--evaluate", action="store_true", help="compare with tuned baselines afterwards")
    _common_eval(mt)
    _add_processes(mt)


def _add_processes(mt: argparse.ArgumentParser) -> None:
    """``meta-train``'s options for one process of a ``jax.distributed`` job."""
    mt.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="meta-train as one process of a jax.distributed job whose process 0 listens at HOST:PORT "
        "(with --num-processes and --process-id), or 'auto' on clusters that JAX detects (SLURM, Open MPI) "
        "(default: one process alone)",
    )
    mt.add_argument(
        "--num-processes", type=int, default=None, help="processes in the job (with --coordinator; default: none)"
    )
    mt.add_argument(
        "--process-id",
        type=int,
        default=None,
        help="this process's index, 0 to N-1 (with --coordinator; default: none)",
    )


def _add_evaluate(sub: Any) -> None:
    """The ``evaluate`` subcommand."""
    task_names, code_warning = _task_help()
    ev = _add(sub, "evaluate", "compare a run's learned optimizer with tuned baselines")
    ev.add_argument("run", help="a run directory")
    ev.add_argument(
        "--task",
        default=None,
        help=f"the run's task family, given again: a registered name ({task_names}), or {code_warning}; "
        "needed for a run directory whose task is module:function, as evaluate never imports code that "
        "a run directory names (default: the run's task, if registered)",
    )
    ev.add_argument(
        "--task-option",
        action="append",
        metavar="KEY=VALUE",
        help="an option of the task family, replacing the run's (repeatable); download and data_dir are "
        "taken only from here, never from the run directory (default: the run's options, without those)",
    )
    ev.add_argument(
        "--steps",
        type=int,
        default=None,
        help="inner steps per test run (default: the run's validation horizon, its horizon unless it set one)",
    )
    ev.add_argument(
        "--against",
        action="append",
        metavar="NAME_OR_RUN_DIR",
        default=None,
        help="also run this trained optimizer (a shipped name or a run directory) on the same tasks, and compare "
        "task by task (repeatable; default: the optimizer the run started from with --init, if any)",
    )
    ev.add_argument(
        "--no-against", action="store_true", help="compare with the tuned baselines only (not with --against's)"
    )
    ev.add_argument("--seed", type=int, default=EVALUATE_DEFAULTS["seed"], help="seed of the held-out tasks")
    _common_eval(ev)
    ev.set_defaults(func=cmd_evaluate)


def _add_seed_example(sub: Any) -> None:
    """The ``seed-example`` subcommand."""
    se = _add(sub, "seed-example", "the worked example, step by step, with exact meta-gradients")
    se.add_argument("--json", action="store_true", help="print one JSON object")
    se.add_argument("--meta-steps", type=int, default=200, help="Adam meta-steps of the meta-training demo")
    se.set_defaults(func=cmd_seed_example)


def _exit_now(code: int) -> NoReturn:
    """Exits at once with ``code``, after flushing output, without finalising the interpreter.

    An interrupt can land while XLA compiles on one of its own threads: jaxlib
    stops waiting and raises, but the compilation runs on, and finalising the
    interpreter under it crashes (SIGSEGV in the compiling thread) or hangs.
    Everything meta-training keeps is on disk by then (files are written whole
    and synced), and the run directory's lock is released by the OS.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _error_status(argv: Sequence[str] | None) -> int:
    """2; run as the program in a ``jax.distributed`` job, exits with it at once.

    At once: a normal exit waits for every process of the job to reach its end,
    which a process that died never does.
    """
    if argv is None and _JOB:
        _exit_now(2)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``l2l-jax`` command.

    Args:
      argv: the arguments; ``None``: ``sys.argv[1:]``, run as the program.

    Returns:
      The exit status: 0, or 2 for an error a user can cause or a file that
      cannot be read or written (printed as one line, naming the file). An interrupted command (Ctrl-C: 130, SIGTERM: 143) raises
      ``Interrupted`` (a ``SystemExit``), or, run as the program, exits
      at once with that status.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except L2LError as e:
        print(f"l2l-jax: error: {in_flags(str(e), field_flags(parser))}", file=sys.stderr)
        return _error_status(argv)
    except OSError as e:  # A read-only or full filesystem, a missing permission: files written whole stay intact.
        where = f"{e.filename}: " if e.filename is not None else ""
        print(f"l2l-jax: error: {where}{e.strerror or e}", file=sys.stderr)
        return _error_status(argv)
    except Interrupted as e:
        if argv is None:
            _exit_now(int(e.code))  # type: ignore[arg-type]
        raise
    except KeyboardInterrupt as e:
        if argv is None:
            print("\ninterrupted", file=sys.stderr)
            _exit_now(128 + e.signum if isinstance(e, Terminated) else 130)
        raise
    except Exception:
        if argv is None and _JOB:  # In a job: exit at once, as for the errors above.
            traceback.print_exc()
            _exit_now(1)
        raise


if __name__ == "__main__":
    sys.exit(main())
