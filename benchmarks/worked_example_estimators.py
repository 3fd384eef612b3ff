"""The worked example's meta-gradient estimated by each meta-gradient estimator.

The worked example: f(θ) = (θ - 5)², θ0 = 10, the linear-RNN optimizer at
φ = (0.1, 0.5, -1.0), T = 2 inner steps. Its meta-loss f(θ2) = 7.29 has the exact
(second-order) gradient [-113.4, -5.4, 11.34]. This script estimates it with every
estimator of ``l2l_jax.meta.estimators`` (truncated BPTT, truncated ES, PES) through
the library's API, with truncations of 2 (the whole run) and 1 (two truncations), and
reports the mean ± standard error of many independent estimates (float64) next to
what each one estimates:

* the meta-loss f(θ2) (weighting ``"final"``): with truncation 1 only the second
  truncation's loss is f(θ2), so its estimate is the one reported;
* the meta-loss f(θ1) + f(θ2) (weighting ``"uniform"``): with truncation 1 the two
  truncations' estimates are summed, as a meta-training run over the whole horizon
  would sum them.

ES and PES estimate the gradient of the Gaussian-smoothed meta-loss; its value (by
the reparameterisation E[∇L(φ + ε)], from many exact gradients at perturbed φ) is
reported too. PES perturbs φ independently in each truncation, so its smoothed loss is
E[L(φ + ε1 at step 1, φ + ε2 at step 2)] at truncation 1.

    python benchmarks/worked_example_estimators.py

Writes ``benchmarks/results/worked_example_estimators.{json,md}``.
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

from l2l_jax.meta import estimators, unroll_task
from l2l_jax.meta.estimators._antithetic import perturbations
from l2l_jax.meta.unroll import init_inner
from l2l_jax.optimizers import linear_rnn
from l2l_jax.tasks import ScalarQuadratic

#: The worked example's horizon T.
HORIZON = 2


def meta_loss(phis: list[Any], weighting: str) -> jax.Array:
    """The whole run's meta-loss (second order) with φ = ``phis[k]`` driving truncation k.

    The run is split into ``len(phis)`` equal truncations; with ``weighting="final"``
    only the run's last loss counts, with ``"uniform"`` every step's loss f(θ1), ...
    """
    optimizer, family = linear_rnn(), ScalarQuadratic()
    inner = jax.tree.map(lambda x: x[0], init_inner(optimizer, phis[0], family, jax.random.key(0), 1))
    steps = HORIZON // len(phis)
    losses = []
    for phi in phis:
        inner, run = unroll_task(optimizer.as_optax(phi), family, inner, steps, first_order=False)
        losses.append(run[1:])
    losses = jnp.concatenate(losses)  # f(θ1), ..., f(θT)
    return losses[-1] if weighting == "final" else jnp.sum(losses)


def as_vector(phi: dict[str, jax.Array]) -> jax.Array:
    """φ's dict ``{"phi1", "phi2", "phi3"}`` (leading axes allowed) as (..., 3)."""
    return jnp.stack([phi["phi1"], phi["phi2"], phi["phi3"]], axis=-1)


#: What one row estimates with: (estimator, truncation K, weighting, options as sorted pairs).
Spec = tuple[str, int, str, tuple[tuple[str, Any], ...]]


def mean_and_standard_error(samples: np.ndarray) -> np.ndarray:
    """(2, ...): the mean over the leading axis and its standard error."""
    return np.stack([samples.mean(0), samples.std(0, ddof=1) / np.sqrt(samples.shape[0])])


def smoothed_gradients(targets: list[tuple[str, int, float]], samples: int) -> dict[tuple[str, int, float], np.ndarray]:
    """E[∇φ L(φ + ε_1, ..., φ + ε_n)], one ε ~ N(0, σ²I) per truncation, for each (weighting, n, σ) of ``targets``.

    Each is the mean (and its s.e.) of ``samples`` exact gradients at perturbed φ; all
    are computed by one compiled program.
    """
    phi = linear_rnn().init(jax.random.key(0))

    def one(key: jax.Array) -> list[jax.Array]:
        out = []
        for weighting, truncations, sigma in targets:
            eps = [perturbations(k, phi, (), sigma) for k in jax.random.split(key, truncations)]

            def loss(p: Any, eps: list[Any] = eps, weighting: str = weighting) -> jax.Array:
                return meta_loss([jax.tree.map(jnp.add, p, e) for e in eps], weighting)

            out.append(as_vector(jax.grad(loss)(phi)))
        return out

    grads = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(1), samples))
    return {t: mean_and_standard_error(np.asarray(g)) for t, g in zip(targets, grads, strict=True)}


def estimates(specs: list[Spec], samples: int) -> dict[Spec, np.ndarray]:
    """``samples`` independent estimates per spec, each (samples, truncations of the run, 3).

    Every estimator is built by ``l2l_jax.meta.estimators.get`` for one task (batch 1,
    one antithetic pair) and run over the whole horizon; all run in one compiled program.
    """
    optimizer, family = linear_rnn(), ScalarQuadratic()
    phi = optimizer.init(jax.random.key(0))
    built = [
        estimators.get(name, optimizer, family, batch_size=1, truncation=k, weighting=weighting, **dict(options))
        for name, k, weighting, options in specs
    ]

    def one(key: jax.Array) -> list[jax.Array]:
        out = []
        for est, (_, truncation, _, _) in zip(built, specs, strict=True):
            state = est.init(phi, jax.random.fold_in(key, 0))
            grads = []
            for k in range(HORIZON // truncation):
                r = est.estimate(phi, state, jax.random.fold_in(key, k + 1))
                grads.append(as_vector(r.meta_grad))
                state = r.state
            out.append(jnp.stack(grads))
        return out

    grads = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(2), samples))
    return {spec: np.asarray(g) for spec, g in zip(specs, grads, strict=True)}


def row(
    meta_loss_name: str,
    estimator: str,
    truncation: int,
    setting: str,
    what: str,
    per_estimate: np.ndarray,
    target: np.ndarray,
    target_name: str,
) -> dict[str, Any]:
    """Mean, s.e. and s.d. of ``per_estimate`` (samples, 3) against ``target`` (mean, s.e.)."""
    n = per_estimate.shape[0]
    mean = per_estimate.mean(0)
    sd = per_estimate.std(0, ddof=1) if n > 1 else np.zeros(3)
    se = sd / np.sqrt(n)
    # How far the mean is from the target, in combined standard errors (inf for an exact miss).
    combined = np.sqrt(se**2 + target[1] ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(combined > 0, np.abs(mean - target[0]) / combined, np.where(mean == target[0], 0.0, np.inf))
    return {
        "meta_loss": meta_loss_name,
        "estimator": estimator,
        "truncation": truncation,
        "setting": setting,
        "estimates": what,
        "num_estimates": n,
        "mean": mean.tolist(),
        "standard_error": se.tolist(),
        "standard_deviation": sd.tolist(),
        "target": target_name,
        "target_value": target[0].tolist(),
        "target_standard_error": target[1].tolist(),
        "max_deviation_in_standard_errors": float(np.max(z)),
    }


def vec(x: list[float], digits: int = 2) -> str:
    return "[" + ", ".join(f"{v:.{digits}f}" for v in x) + "]"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        (
            "| estimator | K | setting | mean estimate [φ1, φ2, φ3] | ± s.e. | s.d. of one estimate | "
            "target | target value | max \\|mean − target\\| / s.e. |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        deterministic = r["num_estimates"] == 1
        lines.append(
            f"| {r['estimator']} | {r['truncation']} | {r['setting']} | {vec(r['mean'])} | "
            f"{'exact (deterministic)' if deterministic else vec(r['standard_error'])} | "
            f"{'–' if deterministic else vec(r['standard_deviation'], 1)} | {r['target']} | "
            f"{vec(r['target_value'])} | {'–' if deterministic else format(r['max_deviation_in_standard_errors'], '.1f')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000, help="independent ES/PES estimates per row")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.01, 0.1], help="ES/PES perturbation scales σ")
    parser.add_argument("--results-dir", type=Path, default=harness.RESULTS, help="where the results files go")
    args = parser.parse_args()
    begin = time.perf_counter()
    machine = harness.describe_machine()
    print(machine, flush=True)
    phi = linear_rnn().init(jax.random.key(0))
    weightings = {"f(θ2)": "final", "f(θ1) + f(θ2)": "uniform"}

    def spec(name: str, k: int, weighting: str, **options: Any) -> Spec:
        # With K = 1 a truncation's weighted loss is its one step's loss whatever the
        # weighting, so both meta-losses share those estimates.
        return (name, k, weighting if k > 1 else "uniform", tuple(sorted(options.items())))

    specs = sorted(
        {spec("tbptt", k, w, first_order=fo) for k in (2, 1) for w in weightings.values() for fo in (False, True)}
        | {
            spec(n, k, w, sigma=s)
            for n in ("es", "pes")
            for k in (2, 1)
            for w in weightings.values()
            for s in args.sigmas
        }
    )
    estimated = estimates(specs, args.samples)
    print(f"{len(specs)} estimators run ({time.perf_counter() - begin:.1f} s)", flush=True)
    targets = smoothed_gradients(
        [(w, n, s) for w in weightings.values() for n in (1, 2) for s in args.sigmas], 10 * args.samples
    )
    print(f"smoothed gradients computed ({time.perf_counter() - begin:.1f} s)", flush=True)
    sections: dict[str, list[dict[str, Any]]] = {}
    for loss_name, weighting in weightings.items():
        whole = weighting == "uniform"  # Truncation 1: sum both estimates, or keep the second.
        part = "both truncations' estimates summed" if whole else "the second truncation's estimate"

        def take(s: Spec, whole: bool = whole) -> np.ndarray:
            e = estimated[s]
            return e.sum(1) if whole else e[:, -1]

        exact_grad = np.asarray(as_vector(jax.grad(lambda p, w=weighting: meta_loss([p], w))(phi)))
        exact = np.stack([exact_grad, np.zeros(3)])
        rows = []
        for first_order in (False, True):
            order = "first order" if first_order else "second order"
            for k in (2, 1):
                g = take(spec("tbptt", k, weighting, first_order=first_order))[:1]  # Deterministic: one is all.
                what = f"∇ of {loss_name}" if (k == 2 and not first_order) else "biased"
                setting = order if k == 2 else f"{order}, {part}"
                rows.append(row(loss_name, "tbptt", k, setting, what, g, exact, "exact ∇"))
        for sigma in args.sigmas:
            for name in ("es", "pes"):
                for k in (2, 1):
                    # PES and truncated ES at K = T: the whole run's smoothed loss. At K = 1 the
                    # target is the loss smoothed by one ε per truncation, which PES estimates
                    # without bias and truncated ES does not.
                    target_name = f"∇ smoothed (σ = {sigma:g}{', ε per truncation' if k == 1 else ''})"
                    what = "biased" if (name == "es" and k == 1) else "∇ of smoothed loss"
                    setting = f"σ = {sigma:g}" + ("" if k == 2 else f", {part}")
                    g = take(spec(name, k, weighting, sigma=sigma))
                    target = targets[(weighting, HORIZON // k, sigma)]
                    rows.append(row(loss_name, name, k, setting, what, g, target, target_name))
        sections[loss_name] = rows
    seconds = time.perf_counter() - begin
    command = harness.command()
    harness.write_json(
        args.results_dir / "worked_example_estimators.json",
        {
            "machine": machine,
            "command": command,
            "seconds": seconds,
            "phi": as_vector(phi).tolist(),
            "horizon": HORIZON,
            "meta_losses": {name: {"rows": rows} for name, rows in sections.items()},
        },
    )
    text = [
        "# The worked example's meta-gradient, estimated by each estimator",
        "",
        (
            "f(θ) = (θ − 5)², θ0 = 10, linear-RNN optimizer at φ = (0.1, 0.5, −1.0), T = 2 inner "
            f"steps, float64. K: truncation length. ES/PES rows: mean of {args.samples} independent "
            "estimates (one antithetic pair each); their target is the gradient of the Gaussian-smoothed "
            f"meta-loss, the mean of {10 * args.samples} exact gradients at perturbed φ (its own s.e. is "
            "included in the last column). Truncated BPTT is deterministic here (one task, no minibatches)."
        ),
    ]
    for loss_name, rows in sections.items():
        how = (
            "weighting `final`; with K = 1 the second truncation's estimate is the one whose loss is f(θ2)"
            if loss_name == "f(θ2)"
            else "weighting `uniform`; with K = 1 the two truncations' estimates are summed"
        )
        text += ["", f"## Meta-loss {loss_name} ({how})", "", table(rows)]
    text += ["", f"Machine: {machine}. Command: `{command}` ({seconds:.0f} s)."]
    harness.write_text(args.results_dir / "worked_example_estimators.md", "\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)
    main()
