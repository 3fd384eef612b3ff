"""How far from the full-run meta-gradient are truncated BPTT, ES and PES, by truncation and particle pairs?

On the paper's MNIST task (an MLP of 20 sigmoid units, minibatches of 128) with the
learned optimizer at a fixed φ (default: the shipped ``mnist-lstm``), a run of T =
``--horizon`` steps with uniform weights has the meta-loss L(φ) = Σ_{t=1..T} f(θ_t),
one run per task (θ0 and minibatch key, ``--tasks`` of them). Each estimate is
compared with two references:

* the exact gradient ∇L(φ): second order, backpropagated through all T steps
  (``meta_value_and_grad`` with ``first_order=False``, ``remat="segments"``);
* the gradient of the Gaussian-smoothed loss that PES is unbiased for, L̃_K(φ) =
  E_ε[Σ_k (losses of truncation k run with φ + ε_k)], with independent ε_k ~ N(0, σ²I)
  for each of the T/K truncations of length K: it depends on K. ∇L̃_K(φ) = E_ε[∇_φ of
  the whole run in which truncation k runs with φ + ε_k], estimated by the mean of
  ``--reference-draws`` (M) such exact second-order gradients, whose own noise is
  reported and corrected for.

For each estimator (truncated BPTT first and second order, truncated ES, PES), each
truncation K (``--truncations``) and, for ES and PES, each number of antithetic pairs
P (``--pairs``), a whole-run estimate is the sum of the T/K per-truncation estimates
of one run of that task (``harness.run_estimates``). ES and PES estimates of a task
differ only in their perturbations: ``--samples`` one-pair estimates are drawn per task
(vmapped over perturbation keys), and a P-pair estimate is the mean of P of them
(disjoint groups), which is what ``num_pairs=P`` computes since the pairs of a task are
independent. Truncated BPTT has no randomness once the task is fixed: one estimate,
variance 0.

Per task, with n estimates e_i (mean m, variance v = Σ‖e_i − m‖² / (n − 1)) and M
reference draws g_j (mean g, variance v_ref; M = 1 and v_ref = 0 for the exact one):
noise = v/n + v_ref/M, the expected ‖m − g‖² if there were no bias; bias² = ‖m − g‖² −
noise (unbiased; below its standard error it is not resolved and can be negative);
MSE = mean ‖e_i − g‖² − v_ref/M = bias² + v; ‖reference‖² = ‖g‖² − v_ref/M; relative
MSE = MSE / ‖reference‖²; cosine = mean cos(e_i, g). The standard error of bias² is
that of zero bias with Gaussian noise, √(2 tr Σ²) with Σ the covariance of m − g,
estimated without bias from the one-pair draws and the reference draws. The table
averages each figure over tasks (standard errors in quadrature).

    python benchmarks/estimator_variance.py --data-dir /work/shared/data/mnist

Results go to ``benchmarks/results/estimator_variance.json`` (``--out``), rewritten
after every row, and markdown tables next to it (same name, ``.md``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import harness
import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax import pretrained, tasks
from l2l_jax.meta import estimators as E
from l2l_jax.meta import init_inner, meta_value_and_grad, unroll_task, weighted_loss
from l2l_jax.meta.estimators._antithetic import perturbations
from l2l_jax.optimizers.base import LearnedOptimizer, MetaParams
from l2l_jax.tasks.base import TaskFamily

#: (label, estimator name, options) of the rows, in the table's order.
ESTIMATORS = {
    "tbptt-first-order": ("tbptt", {"first_order": True}),
    "tbptt-second-order": ("tbptt", {"first_order": False}),
    "es": ("es", {}),
    "pes": ("pes", {}),
}
#: The references: the key prefix of their figures in a row, and their names in the tables.
REFERENCES = {"": "the exact gradient ∇L(φ)", "smoothed_": "the smoothed gradient ∇L̃_K(φ)"}


def flat(tree: Any) -> jax.Array:
    """The leaves of a tree of φ's shape, flattened into one vector."""
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def whole_run_estimate(
    est: E.GradientEstimator, phi: MetaParams, task_key: jax.Array, key: jax.Array, num_truncations: int
) -> jax.Array:
    """The sum of the estimates of a run's ``num_truncations`` truncations, flattened; ``key`` draws ES/PES ε."""
    return flat(harness.run_estimates(est, phi, est.init(phi, task_key), key, num_truncations)[2])


def reference_gradient(
    optimizer: LearnedOptimizer, phi: MetaParams, family: TaskFamily, task_key: jax.Array, horizon: int
) -> jax.Array:
    """The exact gradient in φ of Σ_{t=1..T} f(θ_t) of one task's run (the task ``init`` draws from ``task_key``)."""
    inner = init_inner(optimizer, phi, family, task_key, 1)
    _, grads = meta_value_and_grad(phi, optimizer, family, inner, horizon, first_order=False, remat="segments")
    return flat(grads)


def perturbed_run_gradient(
    optimizer: LearnedOptimizer,
    phi: MetaParams,
    family: TaskFamily,
    task_key: jax.Array,
    truncation: int,
    eps: MetaParams,
) -> jax.Array:
    """The exact gradient in φ of Σ_t f(θ_t) of one task's run in which truncation k runs with φ + ε_k.

    Args:
      eps: ε_k stacked on a leading axis of T / K (one per truncation of ``truncation`` steps).

    Returns:
      The second-order gradient through the whole run, flattened: one draw of ∇L̃_K(φ).
    """
    run = jax.tree.map(lambda x: x[0], init_inner(optimizer, phi, family, task_key, 1))

    def loss(phi: MetaParams) -> jax.Array:
        def truncation_of(run: Any, e: MetaParams) -> tuple[Any, jax.Array]:
            tx = optimizer.as_optax(jax.tree.map(jnp.add, phi, e))
            run, losses = unroll_task(tx, family, run, truncation, first_order=False, remat=True)
            return run, weighted_loss(losses)

        return jnp.sum(jax.lax.scan(truncation_of, run, eps)[1])

    return flat(jax.grad(loss)(phi))


def trace_of_square(centered: np.ndarray) -> float:
    """An unbiased estimate of tr(Σ²) from N + 1 ≥ 3 centered draws (rows) of a Gaussian of covariance Σ."""
    dof = len(centered) - 1
    gram = centered @ centered.T
    return float((np.sum(gram**2) - np.trace(gram) ** 2 / dof) / ((dof + 2) * (dof - 1)))


def centered(draws: np.ndarray) -> np.ndarray:
    """Draws (rows) minus their mean."""
    return draws - draws.mean(axis=0)


def statistics(estimates: np.ndarray, draws: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """Bias², its noise and standard error, variance, MSE, relative MSE and cosine of ``estimates`` against ``references``.

    Args:
      estimates: the n estimates (n × d).
      draws: the draws whose mean is the estimates' mean (the one-pair draws that the
        estimates average, or the estimates themselves): for the standard error.
      references: M draws of the reference (M × d); one for an exact reference.

    Returns:
      The figures the module's docstring defines.
    """
    estimates, draws, references = (x.astype(np.float64) for x in (estimates, draws, references))
    n, num_draws, num_refs = len(estimates), len(draws), len(references)
    mean, reference = estimates.mean(axis=0), references.mean(axis=0)
    variance = float(np.sum(centered(estimates) ** 2) / (n - 1)) if n > 1 else 0.0
    reference_variance = float(np.sum(centered(references) ** 2) / (num_refs - 1)) if num_refs > 1 else 0.0
    noise = variance / n + reference_variance / num_refs
    mse = float(np.mean(np.sum((estimates - reference) ** 2, axis=1))) - reference_variance / num_refs
    ref2 = float(reference @ reference) - reference_variance / num_refs
    cosines = estimates @ reference / (np.linalg.norm(estimates, axis=1) * np.linalg.norm(reference))
    # tr(Σ²) of m − g, Σ = Σ_draws / num_draws + Σ_refs / M; the cross term's estimate is unbiased as they are independent.
    trace = 0.0
    if num_draws > 1:
        trace += trace_of_square(centered(draws)) / num_draws**2
    if num_refs > 1:
        trace += trace_of_square(centered(references)) / num_refs**2
    if num_draws > 1 and num_refs > 1:
        cross = np.sum((centered(draws) @ centered(references).T) ** 2) / ((num_draws - 1) * (num_refs - 1))
        trace += 2 * float(cross) / (num_draws * num_refs)
    return {
        "bias2": float(np.sum((mean - reference) ** 2)) - noise,
        "bias2_se": float(np.sqrt(2 * max(trace, 0.0))),
        "variance": variance,
        "noise": noise,
        "mse": mse,
        "relative_mse": mse / ref2 if ref2 > 0 else float("nan"),
        "cosine": float(np.mean(cosines)),
        "reference_norm2": ref2,
        "reference_variance": reference_variance,
    }


def averaged(per_task: list[dict[str, float]]) -> dict[str, float]:
    """The mean over tasks of each statistic; standard errors (``*_se``) combine in quadrature."""
    return {
        k: float(np.sqrt(np.sum([s[k] ** 2 for s in per_task])) / len(per_task))
        if k.endswith("_se")
        else float(np.mean([s[k] for s in per_task]))
        for k in per_task[0]
    }


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses truncations that do not divide the horizon, too few draws for the largest P or the statistics."""
    bad = [k for k in args.truncations if args.horizon % k]
    if bad:
        parser.error(f"--truncations {bad} must divide --horizon {args.horizon}")
    least = max(3, 2 * max(args.pairs))
    if args.samples < least:
        parser.error(f"--samples must be at least 3 and twice the largest --pairs ({least}), got {args.samples}")
    if args.reference_draws < 3:
        parser.error(f"--reference-draws must be at least 3, got {args.reference_draws}")
    if not args.sigma > 0:
        parser.error(f"--sigma must be positive, got {args.sigma}")


def table(rows: list[dict[str, Any]], prefix: str) -> list[str]:
    """The markdown table of the rows' figures against one reference (their keys start with ``prefix``)."""
    lines = [
        (
            "| estimator | K | P | estimates per task | variance | bias² | s.e. of bias² | noise | MSE | "
            "relative MSE | cosine |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        f = {k: r[prefix + k] for k in ("bias2", "bias2_se", "noise", "mse", "relative_mse", "cosine")}
        lines.append(
            f"| {r['estimator']} | {r['truncation']} | {r['pairs'] or '–'} | {r['estimates_per_task']} | "
            f"{r['variance']:.4g} | {f['bias2']:.4g} | {f['bias2_se']:.3g} | {f['noise']:.4g} | {f['mse']:.4g} | "
            f"{f['relative_mse']:.4g} | {f['cosine']:.4f} |"
        )
    return lines


def markdown(data: dict[str, Any]) -> str:
    """The results file as markdown tables, with the command and the machine on top."""
    lines = [
        "# Meta-gradient estimators against the full-run gradient (MNIST)",
        "",
        f"Command: `{data['command']}`  ",
        f"Machine: {data['machine']}",
        "",
        (
            f"φ: `{data['optimizer']}`; MNIST MLP (20 sigmoid units, minibatches of 128), data: {data['data']}; "
            f"horizon T = {data['horizon']}, uniform weights; σ = {data['sigma']} (ES, PES, smoothing); "
            f"{data['tasks']} tasks; {data['samples']} one-pair draws per task for ES and PES (a P-pair estimate is "
            f"the mean of P of them); the smoothed reference is the mean of {data['reference_draws']} draws per task "
            "and K."
        ),
        "",
        "## References",
        "",
        "| reference | K | ‖reference‖² | variance of a draw | draws | noise of the mean |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in data["references"]:
        lines.append(
            f"| {r['reference']} | {r['truncation'] or '–'} | {r['norm2']:.4g} | {r['variance']:.4g} | "
            f"{r['draws']} | {r['variance'] / r['draws']:.4g} |"
        )
    lines += [
        "",
        (
            "‖reference‖²: ‖mean‖² less the noise of the mean (unbiased). Sums of squares over all "
            f"{data['num_meta_params']} coordinates of φ, per whole-run estimate, averaged over tasks."
        ),
    ]
    for prefix, name in REFERENCES.items():
        lines += ["", f"## Against {name}", "", *table(data["rows"], prefix)]
    lines += [
        "",
        (
            "noise = v/n + v_ref/M, what ‖mean − reference‖² would be without bias; bias² = ‖mean − reference‖² − "
            "noise (unbiased): it is resolved only where it is several times its standard error (that of zero bias, "
            "Gaussian noise) and can be negative. MSE = bias² + variance; relative MSE = MSE / ‖reference‖² (nan where "
            "the estimate of ‖reference‖² is not positive: the reference is not resolved). Truncated "
            "BPTT is deterministic for a fixed task (variance 0). PES is unbiased for the smoothed gradient ∇L̃_K; ES "
            "for the smoothed gradient of each truncation alone, truncated BPTT for the gradient of each truncation "
            "alone."
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", default="mnist-lstm", help="shipped name or run directory of φ")
    parser.add_argument("--horizon", type=harness.count, default=100, help="steps T of a whole run")
    parser.add_argument("--truncations", type=harness.count, nargs="+", default=[10, 50], help="K, dividing T")
    parser.add_argument("--pairs", type=harness.count, nargs="+", default=[1, 4, 16], help="antithetic pairs P")
    parser.add_argument("--samples", type=harness.count, default=32, help="one-pair ES/PES draws per task")
    parser.add_argument("--reference-draws", type=harness.count, default=16,
                        help="draws M of the smoothed reference per task and K")  # fmt: skip
    parser.add_argument("--tasks", type=harness.count, default=2, help="tasks (θ0 and minibatch keys)")
    parser.add_argument("--sigma", type=float, default=0.01, help="ES/PES perturbation σ")
    parser.add_argument("--chunk", type=harness.count, default=1, help="draws vmapped at once (lax.map over chunks)")
    parser.add_argument("--estimators", nargs="+", choices=list(ESTIMATORS), default=list(ESTIMATORS))
    harness.add_data_dir_option(parser)
    args, results = harness.start(parser, "estimator_variance.json", check=lambda a: check(parser, a))
    optimizer, phi = pretrained.load_meta_params(args.optimizer)
    family = tasks.get("mnist", data_dir=args.data_dir)
    results.data.update(
        optimizer=args.optimizer, data=family.data_description, horizon=args.horizon, sigma=args.sigma,
        tasks=args.tasks, samples=args.samples, reference_draws=args.reference_draws,
        num_meta_params=harness.num_params(phi),
    )  # fmt: skip
    on_reference, on_row = results.section("references"), results.section("rows")
    task_keys = jax.random.split(jax.random.key(0), args.tasks)

    def vmapped(fn: Any, keys: jax.Array) -> jax.Array:
        """``fn(key)`` for each key, ``--chunk`` at once."""
        return jax.lax.map(fn, keys, batch_size=args.chunk)

    def record_reference(name: str, truncation: int | None, draws: list[np.ndarray], seconds: float) -> None:
        per_task = [statistics(d[:1], d[:1], d) for d in draws]
        on_reference({"reference": name, "truncation": truncation, "draws": len(draws[0]), "seconds": seconds,
                      "norm2": averaged(per_task)["reference_norm2"],
                      "variance": averaged(per_task)["reference_variance"]})  # fmt: skip
        print(f"reference {name} K={truncation or '-'}: {seconds:.1f} s", flush=True)

    t0 = time.perf_counter()
    ref_fn = jax.jit(lambda k: reference_gradient(optimizer, phi, family, k, args.horizon))
    exact = [np.asarray(ref_fn(k))[None] for k in task_keys]
    record_reference("exact", None, exact, time.perf_counter() - t0)
    smoothed = {}
    for k in args.truncations:
        t0 = time.perf_counter()
        n = args.horizon // k
        draw = jax.jit(
            lambda tk, keys, k=k, n=n: vmapped(
                lambda key: perturbed_run_gradient(
                    optimizer, phi, family, tk, k, perturbations(key, phi, (n,), args.sigma)
                ),
                keys,
            )
        )
        keys = jax.random.split(jax.random.fold_in(jax.random.key(2), k), (args.tasks, args.reference_draws))
        smoothed[k] = [np.asarray(draw(tk, ks)) for tk, ks in zip(task_keys, keys)]
        record_reference("smoothed", k, smoothed[k], time.perf_counter() - t0)

    for label in args.estimators:
        name, options = ESTIMATORS[label]
        for k in args.truncations:
            t0 = time.perf_counter()
            n = args.horizon // k
            if name == "tbptt":
                est = E.get(name, optimizer, family, batch_size=1, truncation=k, **options)
                draw = jax.jit(lambda tk, est=est, n=n: whole_run_estimate(est, phi, tk, tk, n)[None])
                draws = [np.asarray(draw(tk)) for tk in task_keys]
                groups = {None: draws}
            else:
                est = E.get(name, optimizer, family, batch_size=1, truncation=k, sigma=args.sigma, num_pairs=1)
                draw = jax.jit(
                    lambda tk, keys, est=est, n=n: vmapped(lambda key: whole_run_estimate(est, phi, tk, key, n), keys)
                )
                draws = [
                    np.asarray(draw(tk, jax.random.split(jax.random.fold_in(jax.random.key(1), i), args.samples)))
                    for i, tk in enumerate(task_keys)
                ]
                groups = {p: [d[: len(d) // p * p].reshape(-1, p, d.shape[1]).mean(axis=1) for d in draws]
                          for p in args.pairs}  # fmt: skip
            seconds = time.perf_counter() - t0
            for p, estimates in groups.items():
                # A P-pair estimate's mean is the mean of the first n·P one-pair draws: their noise is the mean's.
                used = [d[: len(e) * (p or 1)] for d, e in zip(draws, estimates)]
                per_task = []
                for e, d, task in zip(estimates, used, range(args.tasks)):
                    figures = {}
                    for prefix, refs in (("", exact[task]), ("smoothed_", smoothed[k][task])):
                        figures.update({prefix + f: v for f, v in statistics(e, d, refs).items()})
                    per_task.append(figures)
                row = {"estimator": label, "truncation": k, "pairs": p, "estimates_per_task": len(estimates[0]),
                       **averaged(per_task), "per_task": per_task, "seconds": seconds}  # fmt: skip
                del row["smoothed_variance"]  # the same as "variance"
                on_row(row)
                print(
                    f"{label:19s} K={k:3d} P={p or '-'!s:3s} variance {row['variance']:10.4g}  bias² vs exact "
                    f"{row['bias2']:10.4g}  vs smoothed {row['smoothed_bias2']:10.4g} ± {row['smoothed_bias2_se']:.3g}",
                    flush=True,
                )
    results.finish()
    harness.write_text(Path(results.path).with_suffix(".md"), markdown(results.data))


if __name__ == "__main__":
    main()
