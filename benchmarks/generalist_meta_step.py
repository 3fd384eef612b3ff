"""What does the generalist's PES meta-step cost, against a plain JAX version of the same computation?

The generalist (``generalist.py``) is meta-trained with PES: every meta-step runs,
for each of B tasks and P antithetic pairs, a run driven by φ + ε and one by φ − ε
for K inner steps (minibatch, value and gradient of the MLP, the feature MLP's
update with its ``"nominal"`` Adam output, apply), then averages ξ (L⁺ − L⁻) / (2σ²)
and takes an Adam step on φ. This script times, on one member (the paper's MLP
784-20-10, sigmoid, minibatches of 128) and the generalist's optimizer options:

* ``library``: ``meta_step`` as ``meta_train`` builds it (``MetaTrainConfig.build_members``,
  ``build_meta_optimizer``), jitted;
* ``plain``: the same estimate written here from scratch, flat: θ as one vector per
  run, the 2P runs of a task (pairs × ±) on one axis that shares the task's minibatch,
  features built directly in the (coordinate, feature) layout, one ``lax.scan`` over
  the K steps; no library code but the MNIST loader;
* components, for the same B × 2P × K optimizee steps: the value and gradient of the
  MLP alone (with an SGD step so that it is not hoisted), and the optimizer's update
  alone (on the gradient of a quadratic), each both the plain way and through the
  library (``family.loss`` per run; ``optimizer.as_optax(φ ± ε).update``).

After one warm-up call each, the programs are timed round-robin (one call of each per
round, ``--repeats`` rounds), so that load from other processes on a shared machine falls
on all of them alike: the median wall time and the median CPU time of the process (all
its threads) per call. The warm-up calls of ``library`` and ``plain`` start from the
same state (the library's ``init_members``, converted to the plain layout) with the
same perturbation key, and their meta-losses, meta-gradient norms, new φ and new θ are
compared: the plain program computes the same numbers up to float rounding (it leaves
out the library's handling of non-finite gradients, which does nothing on finite ones).

    python benchmarks/generalist_meta_step.py --data-dir /path/to/mnist

Results go to ``benchmarks/results/generalist_meta_step_<platform>.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import time
from typing import Any

import generalist
import harness
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from l2l_jax.data import load_mnist_for_experiment
from l2l_jax.meta import MetaTrainConfig
from l2l_jax.meta.step import MetaTrainState, init_members, meta_step

# --- the setting -------------------------------------------------------------------------

MEMBER = {"hidden_units": 20, "hidden_layers": 1, "activation": "sigmoid", "batch_size": 128}
SIGMA = generalist.CONFIG.estimator_option("sigma")
META_LR = generalist.CONFIG.meta_lr
#: The MLP 784-20-10: its tensors in the plain flat vector θ, in this order.
SHAPES = ((784, 20), (20,), (20, 10), (10,))
SIZES = tuple(int(np.prod(s)) for s in SHAPES)
OFFSETS = tuple(int(x) for x in np.cumsum((0,) + SIZES))
NUM_PARAMS = OFFSETS[-1]
BATCH = 128

# The feature MLP's constants (``l2l_jax/optimizers/feature_mlp.py`` with the generalist's options).
OPT = generalist.OPTIMIZER_OPTIONS
DECAYS = (0.5, 0.9, 0.99, 0.999)
BETA2 = 0.999
NOMINAL = 1  # DECAYS.index(0.9)
PROGRESS_SCALES = (10.0, 100.0, 1000.0)


def library_config(tasks: int, pairs: int, truncation: int, data_dir: str | None) -> MetaTrainConfig:
    """``generalist.CONFIG`` on one member, the paper's MLP (horizon: 20 truncations, no restart while timed)."""
    return MetaTrainConfig.from_dict(
        {
            **generalist.CONFIG.to_dict(),
            "task": "mnist",
            "task_options": {**MEMBER, "data_dir": data_dir},
            "batch_size": tasks,
            "num_pairs": pairs,
            "truncation": truncation,
            "horizon": 20 * truncation,
        }
    )


# --- the plain program ----------------------------------------------------------------------


def unflatten(theta: jax.Array) -> list[jax.Array]:
    return [theta[a:b].reshape(s) for a, b, s in zip(OFFSETS, OFFSETS[1:], SHAPES)]


def mlp_loss(theta: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean cross-entropy of the sigmoid MLP 784-20-10 with flat parameters ``theta``."""
    w1, b1, w2, b2 = unflatten(theta)
    logits = jax.nn.sigmoid(x @ w1 + b1) @ w2 + b2
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], -1)[:, 0])


def network(phi: dict, x: jax.Array) -> jax.Array:
    layers = phi["layers"]
    for i, layer in enumerate(layers):
        x = x @ layer["w"] + layer["b"]
        if i < len(layers) - 1:
            x = jax.nn.relu(x)
    return x


def plain_update(phi: dict, theta, g, m, v, t):
    """One feature-MLP step of one run: θ, g, v of shape (N,), m (N, 4), t the step count (float)."""
    d = jnp.asarray(DECAYS)
    m = d * m + (1 - d) * g[:, None]
    v = BETA2 * v + (1 - BETA2) * g * g
    r = lax.rsqrt(v + 1e-12)
    x = jnp.concatenate([g[:, None], m, m * r[:, None], (g * r)[:, None], theta[:, None]], -1)  # (N, 11)
    sq = x * x
    ms = jnp.stack([jnp.sum(sq[a:b], 0) / (b - a) for a, b in itertools.pairwise(OFFSETS)])  # per tensor
    x = x / jnp.repeat(jnp.sqrt(ms + 1e-12), np.asarray(SIZES), axis=0, total_repeat_length=NUM_PARAMS)
    progress = jnp.tanh(t / jnp.asarray(PROGRESS_SCALES))
    x = jnp.concatenate([x, jnp.broadcast_to(progress, (NUM_PARAMS, 3))], -1)  # (N, 14)
    out = network(phi, x)
    adam = (m[:, NOMINAL] / (1 - 0.9**t)) / (jnp.sqrt(v / (1 - BETA2**t)) + 1e-8)
    step = jnp.exp(OPT["exp_mult"] * out[:, 1]) * (OPT["step_mult"] * out[:, 0] - jnp.exp(phi["log_lr"]) * adam)
    return theta + step, m, v


class PlainState(dict):
    """A dict pytree: phi, adam, theta (B, 2P, N), m (B, 2P, N, 4), v (B, 2P, N), xi (φ-shaped, (B, P) leading),
    keys (B,), step (scalar): the inner step reached, meta_step (scalar)."""


jax.tree_util.register_pytree_node(
    PlainState, lambda d: (tuple(d.values()), tuple(d.keys())), lambda k, v: PlainState(zip(k, v))
)


def make_plain(images: jax.Array, labels: jax.Array, tasks: int, pairs: int, truncation: int, perturbation_key):
    """The plain meta-step ``state -> (state, loss, grad_norm)`` and the two components' programs."""
    meta_tx = optax.adam(META_LR)
    n_examples = images.shape[0]
    runs = 2 * pairs

    def batch(keys, t):  # One minibatch per task, shared by its 2P runs.
        idx = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, t), (BATCH,), 0, n_examples))(keys)
        return images[idx].astype(jnp.float32) / 255.0, labels[idx]

    per_run_vg = jax.vmap(jax.vmap(jax.value_and_grad(mlp_loss), (0, None, None)))
    per_run_loss = jax.vmap(jax.vmap(mlp_loss, (0, None, None)))
    per_run_update = jax.vmap(jax.vmap(plain_update, (0, 0, 0, 0, 0, None)), (0, 0, 0, 0, 0, None))

    def unroll(phi_runs, theta, m, v, keys, start):
        def body(carry, t):
            theta, m, v = carry
            x, y = batch(keys, t)
            loss, g = per_run_vg(theta, x, y)
            theta, m, v = per_run_update(phi_runs, theta, g, m, v, (t + 1).astype(jnp.float32))
            return (theta, m, v), loss

        (theta, m, v), losses = lax.scan(body, (theta, m, v), start + jnp.arange(truncation))
        final = per_run_loss(theta, *batch(keys, start + truncation))
        losses = jnp.concatenate([losses[1:], final[None]])  # f(θ_{start+1}), ..., f(θ_{start+K})
        return theta, m, v, jnp.sum(jnp.log(jnp.maximum(losses, 1e-30)), 0)  # (B, 2P)

    def step(s: PlainState):
        phi = s["phi"]
        key = jax.random.fold_in(perturbation_key, s["meta_step"])
        leaves, treedef = jax.tree.flatten(phi)  # ε drawn as the library draws it.
        ks = jax.random.split(key, len(leaves))
        eps = treedef.unflatten(
            [SIGMA * jax.random.normal(k, (tasks, pairs) + x.shape, x.dtype) for k, x in zip(ks, leaves)]
        )
        signs = jnp.asarray([1.0, -1.0])
        phi_runs = jax.tree.map(
            lambda p, e: (p + signs.reshape((1, 1, 2) + (1,) * p.ndim) * e[:, :, None]).reshape(
                (tasks, runs) + p.shape
            ),
            phi,
            eps,
        )
        theta, m, v, wl = unroll(phi_runs, s["theta"], s["m"], s["v"], s["keys"], s["step"])
        wl = wl.reshape(tasks, pairs, 2)
        xi = jax.tree.map(jnp.add, s["xi"], eps)
        diff = (wl[..., 0] - wl[..., 1]) / (2 * SIGMA**2)
        grad = jax.tree.map(lambda a: jnp.mean(a * diff.reshape(diff.shape + (1,) * (a.ndim - 2)), (0, 1)), xi)
        loss = jnp.mean((wl[..., 0] + wl[..., 1]) / 2)
        updates, adam = meta_tx.update(grad, s["adam"], phi)
        grad_norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grad)))
        new = PlainState(s, phi=optax.apply_updates(phi, updates), adam=adam, theta=theta, m=m, v=v, xi=xi)
        new["step"], new["meta_step"] = s["step"] + truncation, s["meta_step"] + 1
        return new, loss, grad_norm

    def value_and_grad_alone(theta, keys, start):
        def body(theta, t):
            loss, g = per_run_vg(theta, *batch(keys, t))
            return theta - 1e-3 * g, loss

        return lax.scan(body, theta, start + jnp.arange(truncation))

    def update_alone(phi_runs, theta, m, v, start):
        target = theta  # The gradient of ½ |θ − θ_start|² + 0.01 Σθ: cheap, and changing every step.

        def body(carry, t):
            theta, m, v = carry
            return per_run_update(phi_runs, theta, theta - target + 0.01, m, v, (t + 1).astype(jnp.float32)), None

        return lax.scan(body, (theta, m, v), start + jnp.arange(truncation))[0]

    return jax.jit(step), jax.jit(value_and_grad_alone), jax.jit(update_alone)


def flat(params: dict, lead: int = 2) -> jax.Array:
    """The MLP's parameters {'Dense_0': {bias, kernel}, 'Dense_1': ...} with ``lead`` leading axes as one vector."""
    d0, d1 = params["Dense_0"], params["Dense_1"]
    shape = d0["bias"].shape[:lead]
    parts = [d0["kernel"], d0["bias"], d1["kernel"], d1["bias"]]
    return jnp.concatenate([x.reshape(shape + (-1,)) for x in parts], -1)


def to_plain(state: MetaTrainState, meta_tx_state: Any) -> PlainState:
    """The library's state in the plain layout (the same runs, keys and steps)."""
    inner = state.inner

    flat_m = lambda momenta: jnp.moveaxis(flat(momenta, 3), 2, -1)  # (B, P, 4, *shape) -> (B, P, N, 4)

    def both(f, pos, neg):  # (B, P, ...) twice -> (B, 2P, ...), runs ordered (pair, sign)
        a, b = f(pos), f(neg)
        s = jnp.stack([a, b], 2)
        return s.reshape((s.shape[0], -1) + s.shape[3:])

    pos, neg = inner.positive, inner.negative
    return PlainState(
        phi=state.meta_params,
        adam=meta_tx_state,
        theta=both(flat, pos.params, neg.params),
        m=both(flat_m, pos.opt_state.momenta, neg.opt_state.momenta),
        v=both(flat, pos.opt_state.second_moment, neg.opt_state.second_moment),
        xi=inner.accumulated,
        keys=pos.key[:, 0],
        step=pos.step[0, 0],
        meta_step=state.step,
    )


# --- the library's programs ------------------------------------------------------------------


def library_programs(config: MetaTrainConfig, seed_keys: tuple[jax.Array, jax.Array, jax.Array]):
    optimizer, family = config.build_optimizer(), config.build_task()
    members = config.build_members(optimizer, family)
    meta_tx = config.build_meta_optimizer()
    meta_init, task_key, perturbation_key = seed_keys
    phi = optimizer.init(meta_init)
    state = MetaTrainState(
        step=jnp.zeros((), jnp.int32),
        meta_params=phi,
        meta_opt_state=meta_tx.init(phi),
        inner=init_members(members, phi, jax.random.fold_in(task_key, 0)),
        healthy=jnp.array(True),
        skipped=jnp.zeros((), jnp.int32),
        best_meta_params=phi,
        best_val=jnp.array(jnp.inf, jnp.float32),
        best_step=jnp.zeros((), jnp.int32),
    )
    step = jax.jit(  # As meta_train's run_steps (no donation).
        functools.partial(
            meta_step,
            members=members,
            meta_optimizer=meta_tx,
            horizon=config.horizon,
            task_key=task_key,
            perturbation_key=perturbation_key,
        )
    )
    k = config.truncation

    @jax.jit
    def value_and_grad_alone(params, keys, start):  # params, keys: leading (runs,); one minibatch per run
        def body(params, t):
            def one(p, key):
                return jax.value_and_grad(lambda q: family.loss((), q, jax.random.fold_in(key, t)))(p)

            loss, g = jax.vmap(one)(params, keys)
            return jax.tree.map(lambda p, d: p - 1e-3 * d, params, g), loss

        return lax.scan(body, params, start + jnp.arange(k))

    @jax.jit
    def update_alone(phi_runs, params, opt_state):  # leading (runs,)
        target = params

        def body(carry, _):
            def one(phi, p, s, q):
                g = jax.tree.map(lambda a, b: a - b + 0.01, p, q)
                u, s = optimizer.as_optax(phi).update(g, s, p)
                return optax.apply_updates(p, u), s

            return jax.vmap(one)(phi_runs, *carry, target), None

        return lax.scan(body, (params, opt_state), None, length=k)[0]

    return state, step, value_and_grad_alone, update_alone


# --- measuring -------------------------------------------------------------------------------


def interleaved(programs: dict[str, tuple[Any, Any]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median wall and process-CPU seconds of ``carry = fn(carry)`` per program, timed round-robin.

    One call of every program per round, so that load from other processes on a shared
    machine falls on all of them alike. The programs are already compiled and warm.
    """
    carries = {name: carry for name, (_, carry) in programs.items()}
    wall: dict[str, list[float]] = {name: [] for name in programs}
    cpu: dict[str, list[float]] = {name: [] for name in programs}
    for _ in range(repeats):
        for name, (fn, _) in programs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            carries[name] = jax.block_until_ready(fn(carries[name]))
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {name: (float(np.median(wall[name])), float(np.median(cpu[name]))) for name in programs}


def first_call(fn, carry) -> tuple[Any, float]:
    """``fn(carry)`` (compilation and the first run) and its seconds."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(carry))
    return out, time.perf_counter() - t0


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=harness.count, default=4, help="B: tasks per meta-step")
    parser.add_argument("--pairs", type=harness.count, default=2, help="P: antithetic pairs per task")
    parser.add_argument("--truncation", type=harness.count, default=50, help="K: inner steps per meta-step")
    parser.add_argument("--repeats", type=harness.count, default=5, help="timed rounds, after one warm-up call")
    harness.add_data_dir_option(parser)
    args, results = harness.start(parser, "generalist_meta_step_{platform}.json", kind="throughput")
    b, p, k = args.tasks, args.pairs, args.truncation
    steps_per_meta_step = b * p * 2 * k
    results.data.update(tasks=b, pairs=p, truncation=k, member=MEMBER, optimizer_options=OPT,
                        optimizee_steps_per_meta_step=steps_per_meta_step)  # fmt: skip
    config = library_config(b, p, k, args.data_dir)
    base = jax.random.PRNGKey(config.seed)
    seed_keys = (jax.random.fold_in(base, 0), jax.random.fold_in(base, 1), jax.random.fold_in(base, 3))
    lib_state, lib_step, lib_vg, lib_update = library_programs(config, seed_keys)
    images, labels, _ = load_mnist_for_experiment(args.data_dir, download=False)
    images = jnp.asarray(images.reshape(len(images), -1), jnp.uint8)
    labels = jnp.asarray(labels, jnp.int32)
    plain_step, plain_vg, plain_update_alone = make_plain(images, labels, b, p, k, seed_keys[2])
    plain_state = to_plain(lib_state, lib_state.meta_opt_state)
    firsts: dict[str, float] = {}

    # The first calls (compile + run) from the same initial state are also the check's.
    (lib_after, lib_metrics), firsts["library meta_step (PES)"] = first_call(lib_step, lib_state)
    lib_check = jax.tree.map(np.asarray, (lib_metrics, lib_after.meta_params, lib_after.inner.positive.params))
    (plain_after, plain_loss, plain_norm), firsts["plain JAX meta-step (PES)"] = first_call(plain_step, plain_state)
    plain_check = jax.tree.map(np.asarray, (plain_loss, plain_norm, plain_after["phi"], plain_after["theta"]))

    # The check: the same meta-loss, meta-gradient norm, φ after the Adam step and θ after the truncation.
    lm, lphi, lparams = lib_check
    ploss, pnorm, pphi, ptheta = plain_check
    lib_theta = flat(lparams)  # The positive runs: (B, P, N).
    check = {
        "library_meta_loss": float(lm["meta_loss"]),
        "plain_meta_loss": float(ploss),
        "meta_loss_relative_difference": rel(ploss, lm["meta_loss"]),
        "library_grad_norm": float(lm["grad_norm"]),
        "plain_grad_norm": float(pnorm),
        "grad_norm_relative_difference": rel(pnorm, lm["grad_norm"]),
        "phi_after_max_relative_difference": max(rel(a, c) for a, c in zip(jax.tree.leaves(pphi), jax.tree.leaves(lphi))),
        "theta_after_relative_difference": rel(ptheta[:, 0::2], lib_theta),
    }  # fmt: skip
    results.data["check"] = check
    print("check:", ", ".join(f"{key} {val:.3g}" for key, val in check.items()), flush=True)

    # Components: B × 2P runs × K steps each, from the states after the first meta-step.
    runs = b * 2 * p
    theta0, start, plain_keys = plain_after["theta"], plain_after["step"], plain_after["keys"]
    plain_phis = phi_runs(plain_after["phi"], (b, 2 * p))
    pos = lib_after.inner.positive
    flat_runs = lambda tree: jax.tree.map(lambda x: jnp.concatenate([x] * 2, 1).reshape((runs,) + x.shape[2:]), tree)
    lib_params, lib_opt, lib_keys = flat_runs(pos.params), flat_runs(pos.opt_state), flat_runs(pos.key)
    lib_start, lib_phis = pos.step[0, 0], phi_runs(lib_after.meta_params, (runs,))
    programs = {
        "library meta_step (PES)": (lambda s: lib_step(s)[0], lib_after),
        "plain JAX meta-step (PES)": (lambda s: plain_step(s)[0], plain_after),
        "plain value_and_grad alone": (lambda c: plain_vg(c, plain_keys, start)[0], theta0),
        "plain update alone": (lambda c: plain_update_alone(plain_phis, *c, start),
                               (theta0, plain_after["m"], plain_after["v"])),
        "library value_and_grad alone": (lambda c: lib_vg(c, lib_keys, lib_start)[0], lib_params),
        "library update alone": (lambda c: lib_update(lib_phis, *c), (lib_params, lib_opt)),
    }  # fmt: skip
    for name, (fn, carry) in list(programs.items())[2:]:
        carry, firsts[name] = first_call(fn, carry)
        programs[name] = (fn, carry)
    measured = interleaved(programs, args.repeats)
    rows = {
        name: {"seconds": wall, "cpu_seconds": cpu, "first_call_seconds": firsts[name],
               "optimizee_steps_per_second": steps_per_meta_step / wall}
        for name, (wall, cpu) in measured.items()
    }  # fmt: skip
    for name, row in rows.items():
        results.add("rows", {"program": name, **row})

    lib_s, plain_s = rows["library meta_step (PES)"]["seconds"], rows["plain JAX meta-step (PES)"]["seconds"]
    print(f"\nB={b} P={p} K={k}: {steps_per_meta_step} optimizee steps per meta-step; ratio library/plain "
          f"{lib_s / plain_s:.2f}")  # fmt: skip
    print(f"{'program':30s} {'s/meta-step':>11s} {'CPU s':>7s} {'steps/s':>8s} {'of library':>10s} {'of plain':>9s}")
    for name, row in rows.items():
        s = row["seconds"]
        print(f"{name:30s} {s:11.4f} {row['cpu_seconds']:7.3f} {steps_per_meta_step / s:8.0f} "
              f"{s / lib_s:10.1%} {s / plain_s:9.1%}")  # fmt: skip
    results.data["ratio_library_over_plain"] = lib_s / plain_s
    results.data["component_share"] = {
        name: {"of_library": row["seconds"] / lib_s, "of_plain": row["seconds"] / plain_s} for name, row in rows.items()
    }
    results.finish()


def phi_runs(phi: dict, lead: tuple[int, ...]) -> dict:
    """φ repeated for every run (leading axes ``lead``): the components' φ (unperturbed; the cost is the same)."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, lead + x.shape), phi)


if __name__ == "__main__":
    main()
