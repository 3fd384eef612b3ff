"""The ``l2l-jax`` command line: demo, meta-train, evaluate, seed-example.

Errors a user can cause (bad names, sizes, run directories) print one line and
exit with status 2; Ctrl-C during meta-training saves a checkpoint first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from l2l_jax.errors import ConfigError, L2LError

#: The demo's meta-training run: the paper's LSTM on 10-d quadratics, sized to
#: finish in about two minutes on 2 CPU cores.
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


def _parse_options(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """``["dim=10", "preset=paper"]`` -> ``{"dim": 10, "preset": "paper"}`` (values as JSON if they parse)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} takes KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _evaluate_run(
    run_dir: Path, num_tasks: int, num_tune_tasks: int, num_steps: int, seed: int, progress: bool
) -> str:
    """Compares a run's optimizer with tuned baselines; returns the table and where files went."""
    from l2l_jax.evaluation.report import evaluate_run
    from l2l_jax.meta import run_directory as rd

    comparison = evaluate_run(
        run_dir, num_tasks=num_tasks, num_tune_tasks=num_tune_tasks, num_steps=num_steps, seed=seed, progress=progress
    )
    written = ", ".join(str(run_dir / f) for f in (rd.EVALUATION_JSON, rd.EVALUATION_TABLE, rd.LOSS_CURVES_PLOT))
    return f"{comparison.table()}\n\nwrote {written}"


def _train(
    config_dict: dict[str, Any],
    run_dir: Path,
    resume: bool,
    progress: bool,
    devices: int | None = None,
    steps_per_call: int = 1,
) -> Any:
    from l2l_jax.meta import MetaTrainConfig, meta_train

    config = MetaTrainConfig.from_dict(config_dict)
    print(f"meta-training {config.optimizer} on {config.task} into {run_dir}", flush=True)
    t0 = time.perf_counter()
    try:
        result = meta_train(
            config, run_dir, resume=resume, progress=progress, devices=devices, steps_per_call=steps_per_call
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted: the last checkpoint is in {run_dir}; run the same command again to resume.")
        raise SystemExit(130) from None
    print(
        f"meta-trained {config.num_meta_steps} meta-steps in {time.perf_counter() - t0:.1f} s "
        f"(best validation meta-loss {result.best_val:.4g}, {result.skipped} skipped non-finite steps)"
    )
    return result


def cmd_demo(args: argparse.Namespace) -> int:
    config = dict(DEMO_CONFIG, seed=args.seed)
    if args.meta_steps is not None:
        config["num_meta_steps"] = args.meta_steps
    _train(config, args.run_dir, resume=not args.no_resume, progress=not args.no_progress)
    print("\nevaluating on held-out quadratics against tuned baselines ...", flush=True)
    print(_evaluate_run(args.run_dir, args.tasks, args.tune_tasks, 100, args.seed + 1, not args.no_progress))
    print(
        f"\nthe trained optimizer: l2l_jax.pretrained.load({str(args.run_dir)!r}) "
        "returns it as an optax.GradientTransformationExtraArgs"
    )
    return 0


def cmd_meta_train(args: argparse.Namespace) -> int:
    optimizer_options = _parse_options(args.optimizer_option, "--optimizer-option")
    if args.preset is not None:
        if args.optimizer != "lstm":
            raise ConfigError("--preset applies to the lstm optimizer only")
        optimizer_options["preset"] = args.preset
    config = {
        "task": args.task,
        "task_options": _parse_options(args.task_option, "--task-option"),
        "optimizer": args.optimizer,
        "optimizer_options": optimizer_options,
        "num_meta_steps": args.meta_steps,
        "horizon": args.horizon,
        "truncation": args.truncation,
        "batch_size": args.batch_size,
        "meta_optimizer": args.meta_optimizer,
        "meta_lr": args.meta_lr,
        "meta_lr_schedule": args.meta_lr_schedule,
        "clip_norm": args.clip_norm,
        "first_order": not args.second_order,
        "weighting": args.weighting,
        "remat": "segments" if args.remat_segments else args.remat,
        "tasks_per_chunk": args.tasks_per_chunk,
        "validate_every": args.validate_every,
        "num_val_tasks": args.val_tasks,
        "checkpoint_every": args.checkpoint_every,
        "seed": args.seed,
    }
    _train(
        config,
        args.run_dir,
        resume=not args.no_resume,
        progress=not args.no_progress,
        devices=args.devices,
        steps_per_call=args.steps_per_call,
    )
    if args.evaluate:
        print(_evaluate_run(args.run_dir, args.tasks, args.tune_tasks, args.horizon, args.seed + 1, not args.no_progress))
    print(f"wrote {args.run_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from l2l_jax import pretrained

    path = Path(args.run)
    if not path.exists() and args.run in pretrained.available():
        raise ConfigError("evaluate writes its results into a run directory; pass a run directory, not a shipped name")
    print(_evaluate_run(path, args.tasks, args.tune_tasks, args.steps, args.seed, not args.no_progress))
    return 0


def cmd_seed_example(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    with jax.enable_x64(True):  # The example's figures are exact in float64.
        from l2l_jax import worked_example

        result = worked_example.compute()
        losses, phis = worked_example.meta_train(num_meta_steps=args.meta_steps)
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
    fmt = lambda v: "[" + ", ".join(f"{x:.6g}" for x in v) + "]"  # noqa: E731
    print(f"assumed meta-gradient (source text):  {fmt(result['assumed_meta_grad'])}")
    print(f"exact meta-gradient (jax.grad):       {fmt(result['meta_grad'])}")
    print(f"first-order meta-gradient (∇_t const): {fmt(result['meta_grad_first_order'])}\n")
    print(f"φ - 0.01·assumed = {fmt(result['phi_new_assumed'])} -> meta-loss {result['meta_loss_after_assumed_step']:.6g}")
    print(f"φ - 0.01·exact   = {fmt(result['phi_new'])} -> meta-loss {result['meta_loss_after_exact_step']:.6g}\n")
    print(result["explanation"])
    a = result["adam_meta_training"]
    print(
        f"\nAdam (lr 0.01) on the exact meta-gradient, {a['meta_steps']} meta-steps: meta-loss "
        f"{a['meta_loss_first']:.4g} -> {a['meta_loss_last']:.3g}, φ = {fmt(np.round(a['phi_last'], 4))}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="l2l-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common_eval(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tasks", type=int, default=128, help="held-out test tasks (default 128)")
        p.add_argument("--tune-tasks", type=int, default=100, help="other tasks for tuning baselines' lr (default 100)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

    demo = sub.add_parser("demo", help="meta-train the paper's LSTM on quadratics and compare with tuned baselines")
    demo.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--meta-steps", type=int, default=None, help=f"default {DEMO_CONFIG['num_meta_steps']}")
    demo.add_argument("--no-resume", action="store_true", help="start over even if the run directory has a checkpoint")
    common_eval(demo)
    demo.set_defaults(func=cmd_demo)

    mt = sub.add_parser("meta-train", help="meta-train a learned optimizer into a run directory")
    mt.add_argument("--task", default="quadratic", help="task family name (default quadratic)")
    mt.add_argument("--task-option", action="append", metavar="KEY=VALUE", help="e.g. dim=10 (repeatable)")
    mt.add_argument("--optimizer", default="lstm", help="lstm or linear_rnn")
    mt.add_argument("--preset", default=None, help="LSTM preset: paper (default) or deepmind")
    mt.add_argument("--optimizer-option", action="append", metavar="KEY=VALUE", help="e.g. hidden_size=40")
    mt.add_argument("--meta-steps", type=int, default=1000)
    mt.add_argument("--horizon", type=int, default=100, help="inner steps per run, T (default 100)")
    mt.add_argument("--truncation", type=int, default=20, help="inner steps per meta-step, K (default 20)")
    mt.add_argument("--batch-size", type=int, default=128, help="tasks per meta-step")
    mt.add_argument("--meta-optimizer", default="adam")
    mt.add_argument("--meta-lr", type=float, default=1e-3)
    mt.add_argument("--meta-lr-schedule", default="constant", help="constant or cosine")
    mt.add_argument("--clip-norm", type=float, default=None)
    mt.add_argument("--second-order", action="store_true", help="keep second derivatives (exact meta-gradient)")
    mt.add_argument("--weighting", default="uniform", help="uniform (w_t = 1), final, or log (sum of log f)")
    mt.add_argument("--remat", action="store_true", help="jax.checkpoint each inner step")
    mt.add_argument(
        "--devices",
        type=int,
        default=None,
        help="split each batch of tasks over this many devices (default: all, when the batch divides evenly)",
    )
    mt.add_argument(
        "--remat-segments", action="store_true", help="also checkpoint sqrt(K)-step segments (long truncations)"
    )
    mt.add_argument(
        "--tasks-per-chunk",
        type=int,
        default=None,
        help="unroll the batch in sequential chunks of this many tasks (1 is fastest on a CPU; default: all at once)",
    )
    mt.add_argument(
        "--steps-per-call",
        type=int,
        default=1,
        help="meta-steps per compiled call (fewer host round trips; 4 was about 15%% faster on a 2-core CPU at B=1)",
    )
    mt.add_argument("--validate-every", type=int, default=100)
    mt.add_argument("--val-tasks", type=int, default=64)
    mt.add_argument("--checkpoint-every", type=int, default=200)
    mt.add_argument("--seed", type=int, default=0)
    mt.add_argument("--run-dir", type=Path, required=True)
    mt.add_argument("--no-resume", action="store_true")
    mt.add_argument("--evaluate", action="store_true", help="compare with tuned baselines afterwards")
    common_eval(mt)
    mt.set_defaults(func=cmd_meta_train)

    ev = sub.add_parser("evaluate", help="compare a run's learned optimizer with tuned baselines")
    ev.add_argument("run", help="a run directory")
    ev.add_argument("--steps", type=int, default=100)
    ev.add_argument("--seed", type=int, default=1)
    common_eval(ev)
    ev.set_defaults(func=cmd_evaluate)

    se = sub.add_parser("seed-example", help="the worked example, step by step, with exact meta-gradients")
    se.add_argument("--json", action="store_true", help="print one JSON object")
    se.add_argument("--meta-steps", type=int, default=200, help="Adam meta-steps for the meta-training demo")
    se.set_defaults(func=cmd_seed_example)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``l2l-jax`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except L2LError as e:
        print(f"l2l-jax: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
