"""Speed of the learned optimizer's update as a drop-in optax optimizer, against optax.adam.

For flat parameter vectors of ``--sizes`` parameters and for a transformer-shaped
parameter tree, times one jit-compiled ``tx.update`` + ``optax.apply_updates`` with
donated parameters and state (median of ``--repeats``), for each LSTM
implementation and state dtype, and prints:

* time per update, and the ratio to ``optax.adam``'s;
* effective bandwidth: the minimal memory traffic of the update (read the gradient,
  the parameters and the 2 layers x (h, c) x 20 state floats; write the parameters
  and the state) divided by the time.

``--meta-gradient`` instead times ``jax.grad`` in φ through one update of ``--sizes``
parameters: the backward pass that meta-training on a model of that size runs.

``--memory`` instead compiles (without running) the update of ``--sizes`` parameters
for each implementation and state dtype and prints XLA's memory analysis of the
compiled program (arguments + outputs + temporaries): whether a model of that size
fits next to its optimizer.

``--train-step`` also times a whole Flax training step (forward, backward, update) of
the paper's MNIST MLP (batch 128) and of a wider MLP, with the learned optimizer (each
of ``--implementations``, float32 state) and with Adam.

``--fit N`` trains a sigmoid MLP of about N parameters (``--fit-depth`` layers of equal
width, batch 128 of fixed synthetic data) for ``--fit-steps`` steps with the shipped
``mnist-lstm`` and, for comparison, with Adam (lr 1e-3). The learned update is
multiplied by ``--fit-update-scale``, by default 32 / width: ``mnist-lstm`` was
meta-trained on a 20-unit MLP and its steps add up on wide layers. It prints the first
and last loss, time per step, XLA's planned memory of the step, and the device's peak
memory where the backend reports it (``memory_stats``; the process's peak so far, so
give one implementation and one state dtype per command for a clean figure): whether
a model of that size trains next to its learned optimizer on this device.

    python benchmarks/update_speed.py                          # CPU: 1M and 3M
    python benchmarks/update_speed.py --memory --sizes 1e8 --implementations reference fused pallas
    python benchmarks/update_speed.py --sizes 1e6 1e7 3e7 1e8 --implementations fused pallas  # GPU
    python benchmarks/update_speed.py --fit 1e8 --implementations pallas --state-dtypes float32  # GPU, 80 GB

Results go to ``benchmarks/results/update_{speed,memory,fit,meta_gradient}_<platform>.json`` (``--out``),
rewritten after every row so that a run cut short keeps what it measured. A setting
that runs out of device memory is recorded as such (``"out_of_memory"``) and the run
goes on.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

# Shared with the meta-training benchmark (this folder is on sys.path when run as a script).
from meta_training_speed import (
    compiled_memory,
    describe_machine,
    device_peak_bytes,
    measure_unless_out_of_memory,
    write_results,
)

from l2l_jax import pretrained
from l2l_jax.optimizers import lstm

RESULTS = Path(__file__).parent / "results"


def transformer_tree(d: int, layers: int, vocab: int) -> dict[str, Any]:
    """Parameter shapes of a GPT-style decoder (embeddings, attention, MLP, norms)."""
    tree: dict[str, Any] = {"embed": (vocab, d), "final_norm": (d,)}
    for i in range(layers):
        tree[f"block_{i}"] = {
            "qkv": (d, 3 * d),
            "proj": (d, d),
            "mlp_in": (d, 4 * d),
            "mlp_out": (4 * d, d),
            "norm_1": (d,),
            "norm_2": (d,),
        }
    return tree


def make_params(shapes: Any, key: jax.Array) -> Any:
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, s) * 0.02 for k, s in zip(keys, leaves)])


def donated_update(tx: optax.GradientTransformation) -> Callable:
    """One jitted update + apply, params and state donated: ``(params, state, grads) -> (params, state)``."""

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def time_update(tx: optax.GradientTransformation, params: Any, repeats: int) -> float:
    """Median seconds of one jitted update + apply, params and state donated."""
    step = donated_update(tx)
    grads = jax.tree.map(lambda p: p * 0.1 + 1e-3, params)
    state = tx.init(params)
    params = jax.tree.map(jnp.copy, params)
    params, state = step(params, state, grads)  # compile
    jax.block_until_ready((params, state))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        params, state = step(params, state, grads)
        jax.block_until_ready((params, state))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def compiled_update_memory(tx: optax.GradientTransformation, num_params: int) -> int:
    """Bytes XLA plans for one donated update + apply of a flat float32 vector (compile only)."""
    params = {"w": jax.ShapeDtypeStruct((num_params,), jnp.float32)}
    state = jax.eval_shape(tx.init, params)
    return compiled_memory(donated_update(tx).lower(params, state, params).compile())


def memory_rows(
    sizes: list[float], implementations: list[str], dtypes: list[str], on_row: Callable[[dict], None] = lambda row: None
) -> list[dict]:
    rows = []
    for size in sizes:
        n = int(size)
        adam = compiled_update_memory(optax.adam(1e-3), n)
        for impl in implementations:
            for dtype in dtypes:
                opt = lstm(implementation=impl, state_dtype=dtype)
                planned = compiled_update_memory(opt.as_optax(opt.init(jax.random.key(0))), n)
                rows.append(
                    {
                        "parameters": n,
                        "implementation": impl,
                        "state_dtype": dtype,
                        "bytes": planned,
                        "adam_bytes": adam,
                    }
                )
                on_row(rows[-1])
                print(
                    f"{n / 1e6:8.1f}M {impl:9s} {dtype:8s} {planned / 2**30:8.2f} GiB  (optax.adam {adam / 2**30:.2f} GiB)",
                    flush=True,
                )
    return rows


def meta_gradient_rows(
    sizes: list[float], implementations: list[str], repeats: int, on_row: Callable[[dict], None] = lambda row: None
) -> list[dict]:
    """Median seconds of ``jax.grad`` in φ through one update of a flat vector (meta-training's backward pass)."""
    rows = []
    for size in sizes:
        n = int(size)
        grads = {"w": jax.random.normal(jax.random.key(0), (n,)) * 0.02}
        for impl in implementations:
            opt = lstm(implementation=impl)
            phi = opt.init(jax.random.key(0))
            setting = {"parameters": n, "implementation": impl}
            row = {**setting, **measure_unless_out_of_memory(setting, _meta_gradient_seconds, opt, phi, grads, repeats)}
            rows.append(row)
            on_row(row)
            timing = "out of memory" if "out_of_memory" in row else f"{row['seconds'] * 1e3:9.2f} ms"
            print(f"meta-gradient through one update {n / 1e6:8.2f}M {impl:9s} {timing}", flush=True)
    return rows


def _meta_gradient_seconds(opt: Any, phi: Any, grads: Any, repeats: int) -> dict[str, float]:
    # From a non-zero state (a first update), so that every state input carries a cotangent.
    state = opt.as_optax(phi).update(grads, opt.as_optax(phi).init(grads))[1]

    def loss(phi: Any) -> jax.Array:
        updates, new_state = opt.as_optax(phi).update(grads, state)
        return sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves((updates, new_state)))

    meta_grad = jax.jit(jax.grad(loss))
    jax.block_until_ready(meta_grad(phi))  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(meta_grad(phi))
        times.append(time.perf_counter() - t0)
    return {"seconds": float(np.median(times))}


def state_bytes_per_param(opt: Any, state_dtype: str) -> int:
    """Bytes of the LSTM's state (h and c of every layer) per parameter, stored in ``state_dtype``."""
    return 2 * opt.num_layers * opt.hidden_size * jnp.dtype(state_dtype).itemsize


def minimal_bytes(num_params: int, state_bytes: int) -> int:
    # read grad + params, write params (float32), read + write the state.
    return num_params * (3 * 4 + 2 * state_bytes)


def update_rows(
    name: str,
    params: Any,
    implementations: list[str],
    dtypes: list[str],
    repeats: int,
    on_row: Callable[[dict], None] = lambda row: None,
) -> list[dict]:
    n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    adam_s = time_update(optax.adam(1e-3), params, repeats)
    rows = []
    for impl in implementations:
        for dtype in dtypes:
            opt = lstm(implementation=impl, state_dtype=dtype)
            tx = opt.as_optax(opt.init(jax.random.key(0)))
            setting = {
                "model": name,
                "parameters": n,
                "implementation": impl,
                "state_dtype": dtype,
                "adam_seconds": adam_s,
            }
            timed = measure_unless_out_of_memory(setting, lambda tx: {"seconds": time_update(tx, params, repeats)}, tx)
            if "out_of_memory" in timed:
                rows.append(timed)
                on_row(timed)
                print(f"{name:>22s} {n / 1e6:8.1f}M {impl:9s} {dtype:8s} out of memory", flush=True)
                continue
            seconds = timed["seconds"]
            traffic = minimal_bytes(n, state_bytes_per_param(opt, dtype))
            row = {
                **setting,
                "seconds": seconds,
                "ratio_to_adam": seconds / adam_s,
                "minimal_bytes": traffic,
                "effective_GB_per_s": traffic / seconds / 1e9,
            }
            rows.append(row)
            on_row(row)
            print(
                f"{name:>22s} {n / 1e6:8.1f}M {impl:9s} {dtype:8s} {seconds * 1e3:9.2f} ms  "
                f"adam {adam_s * 1e3:7.2f} ms  x{row['ratio_to_adam']:6.1f}  {row['effective_GB_per_s']:7.1f} GB/s",
                flush=True,
            )
    return rows


class WideMLP(nn.Module):
    width: int = 1024

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(self.width)(x))
        x = nn.relu(nn.Dense(self.width)(x))
        return nn.Dense(10)(x)


def train_step_rows(
    repeats: int, implementations: list[str], on_row: Callable[[dict], None] = lambda row: None
) -> list[dict]:
    from l2l_jax.tasks.mnist import MLP, cross_entropy

    rows = []
    x = jax.random.uniform(jax.random.key(1), (128, 784))
    y = jax.random.randint(jax.random.key(2), (128,), 0, 10)
    for name, model in (("MNIST MLP 784-20-10", MLP()), ("MLP 784-1024-1024-10", WideMLP())):
        params = model.init(jax.random.key(0), x)["params"]
        n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
        adam = _time_train_step(model, optax.adam(1e-3), params, x, y, repeats, cross_entropy)
        for impl in implementations:
            opt = lstm(implementation=impl)
            tx = opt.as_optax(opt.init(jax.random.key(0)))
            setting = {"model": name, "parameters": n, "implementation": impl, "adam_seconds": adam}
            timed = measure_unless_out_of_memory(
                setting, _lstm_train_step_seconds, model, tx, params, x, y, repeats, cross_entropy
            )
            row = {**setting, **timed}
            if "lstm_seconds" in row:
                row["overhead"] = row["lstm_seconds"] / adam
            rows.append(row)
            on_row(row)
            print(
                f"train step {name:>22s} ({n / 1e6:.2f}M): adam {adam * 1e3:.2f} ms, learned lstm ({impl}) "
                + (
                    "out of memory"
                    if "out_of_memory" in row
                    else f"{row['lstm_seconds'] * 1e3:.2f} ms  (x{row['overhead']:.1f})"
                ),
                flush=True,
            )
    return rows


def _lstm_train_step_seconds(*args: Any) -> dict[str, float]:
    return {"lstm_seconds": _time_train_step(*args)}


def train_step(model: nn.Module, tx: Any, x: jax.Array, y: jax.Array, loss_of: Callable) -> Callable:
    """One jitted training step on a fixed batch, params and state donated: ``(params, state) -> (params, state, loss)``."""

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state):
        loss, grads = jax.value_and_grad(lambda p: loss_of(model.apply({"params": p}, x), y))(params)
        updates, state = tx.update(grads, state, params, value=loss)
        return optax.apply_updates(params, updates), state, loss

    return step


def _time_train_step(model: nn.Module, tx: Any, params: Any, x, y, repeats: int, loss_of: Callable) -> float:
    step = train_step(model, tx, x, y, loss_of)
    params = jax.tree.map(jnp.copy, params)
    state = tx.init(params)
    params, state, _ = step(params, state)
    jax.block_until_ready(params)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        params, state, _ = step(params, state)
        jax.block_until_ready((params, state))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


#: Default ``--fit-update-scale`` is this over the width: 0.08 at width 408 (1M
#: parameters), 0.025 at 1288 (10M), 0.008 at 4080 (100M).
FIT_SCALE_TIMES_WIDTH = 32.0


class DeepMLP(nn.Module):
    """``depth`` sigmoid layers of ``width`` units (input width ``width``), then 10 logits."""

    width: int
    depth: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for _ in range(self.depth):
            x = nn.sigmoid(nn.Dense(self.width)(x))
        return nn.Dense(10)(x)


def fit_width(num_params: float, depth: int) -> int:
    """The width (a multiple of 8) that gives a ``DeepMLP`` of about ``num_params`` parameters."""
    return max(8, round((num_params / depth) ** 0.5 / 8) * 8)


def fit_optimizer(implementation: str, state_dtype: str | None, update_scale: float) -> optax.GradientTransformation:
    """``--fit``'s optimizer: ``optax.adam(1e-3)`` for ``"adam"``, else the shipped ``mnist-lstm``, update scaled.

    mnist-lstm was meta-trained on 20 hidden units: its per-coordinate steps do not
    shrink with the width, and on wide layers they add up and diverge (measured: 10M
    parameters, width 1288, loss 2.37 -> 22.6 after 5 updates at scale 1).
    """
    if implementation == "adam":
        return optax.adam(1e-3)
    base, phi = pretrained.load_meta_params("mnist-lstm")
    tx = lstm(**{**base.config(), "implementation": implementation, "state_dtype": state_dtype}).as_optax(phi)
    return optax.chain(tx, optax.scale(update_scale))


def fit_rows(
    num_params: float,
    depth: int,
    steps: int,
    implementations: list[str],
    dtypes: list[str],
    update_scale: float | None,
    on_row: Callable[[dict], None] = lambda row: None,
) -> list[dict]:
    model = DeepMLP(fit_width(num_params, depth), depth)
    x = jax.random.normal(jax.random.key(1), (128, model.width))
    y = jax.random.randint(jax.random.key(2), (128,), 0, 10)
    n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(jax.eval_shape(model.init, jax.random.key(0), x)))
    name = f"MLP {model.width}x{depth} sigmoid"
    update_scale = FIT_SCALE_TIMES_WIDTH / model.width if update_scale is None else update_scale
    configs = [("adam", None)] + [(impl, dtype) for impl in implementations for dtype in dtypes]
    rows = []
    for impl, dtype in configs:
        tx = fit_optimizer(impl, dtype, update_scale)
        setting = {
            "model": name,
            "parameters": n,
            "width": model.width,
            "implementation": impl,
            "state_dtype": dtype,
            "update_scale": None if impl == "adam" else update_scale,
            "steps": steps,
        }
        row = {**setting, **measure_unless_out_of_memory(setting, _fit, model, x, y, tx, steps)}
        rows.append(row)
        on_row(row)
        label = f"fit {name} ({n / 1e6:.1f}M) " + (
            "optax.adam" if impl == "adam" else f"{impl} {dtype} x{update_scale:.3g}"
        )
        if "out_of_memory" in row:
            print(f"{label} out of memory", flush=True)
            continue
        per_step = f"  {row['seconds_per_step'] * 1e3:9.2f} ms/step"
        planned, peak = row["planned_bytes"], row["device_peak_bytes"]
        print(
            f"{label} loss {row['first_loss']:.4f} -> {row['last_loss']:.4f} in {steps} steps"
            f"{per_step}  planned {planned / 2**30 if planned else float('nan'):.2f} GiB"
            + ("" if peak is None else f"  device peak so far {peak / 2**30:.2f} GiB"),
            flush=True,
        )
    return rows


def _fit(model: nn.Module, x: jax.Array, y: jax.Array, tx: Any, steps: int) -> dict[str, Any]:
    """``steps`` training steps of ``model`` with ``tx`` from a fixed initialisation: losses, time, memory."""
    from l2l_jax.tasks.mnist import cross_entropy

    step = train_step(model, tx, x, y, cross_entropy)
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]
    state = jax.jit(tx.init)(params)
    t0 = time.perf_counter()
    compiled = step.lower(params, state).compile()
    compile_seconds = time.perf_counter() - t0
    losses, times = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        params, state, loss = compiled(params, state)
        losses.append(float(loss))  # waits for the step
        times.append(time.perf_counter() - t0)
    return {
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "losses": losses,
        "seconds_per_step": float(np.median(times)),  # compiled beforehand: every step counts
        "compile_seconds": compile_seconds,
        "planned_bytes": compiled_memory(compiled),
        "device_peak_bytes": device_peak_bytes(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 3e6])
    parser.add_argument("--implementations", nargs="+", default=["reference", "fused"])
    parser.add_argument("--state-dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument(
        "--transformer",
        default="256,4,8192",
        help="d_model,layers,vocab of the parameter tree ('' to skip); GPT-2 small is 768,12,50257",
    )
    parser.add_argument("--train-step", action="store_true")
    parser.add_argument("--memory", action="store_true", help="compile-only memory of the update for --sizes")
    parser.add_argument(
        "--meta-gradient", action="store_true", help="time the gradient in φ through one update of --sizes instead"
    )
    parser.add_argument("--fit", type=float, default=None, help="train an MLP of about this many parameters")
    parser.add_argument("--fit-depth", type=int, default=6)
    parser.add_argument("--fit-steps", type=int, default=10)
    parser.add_argument(
        "--fit-update-scale",
        type=float,
        default=None,
        help=f"multiplies the learned update (--fit; default {FIT_SCALE_TIMES_WIDTH:g} / width)",
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.fit is not None and (args.fit < 100 or args.fit_depth < 1 or args.fit_steps < 1):
        parser.error("--fit needs at least 100 parameters, --fit-depth and --fit-steps at least 1")
    machine = describe_machine()
    print(machine, flush=True)
    platform = jax.devices()[0].platform
    kind = (
        "memory"
        if args.memory
        else "fit"
        if args.fit is not None
        else "meta_gradient"
        if args.meta_gradient
        else "speed"
    )
    out = args.out or RESULTS / f"update_{kind}_{platform}.json"
    # Rewritten after every row: a run cut short keeps what it measured.
    results: dict[str, Any] = {"machine": machine}

    def save(key: str) -> Callable[[dict], None]:
        rows = results.setdefault(key, [])

        def on_row(row: dict) -> None:
            rows.append(row)
            write_results(out, results)

        return on_row

    if args.meta_gradient:
        meta_gradient_rows(args.sizes, args.implementations, args.repeats, save("meta_gradients"))
    elif args.memory:
        memory_rows(args.sizes, args.implementations, args.state_dtypes, save("memory"))
    elif args.fit is not None:
        fit_rows(
            args.fit,
            args.fit_depth,
            args.fit_steps,
            args.implementations,
            args.state_dtypes,
            args.fit_update_scale,
            save("fit"),
        )
    else:
        on_update = save("updates")
        for size in args.sizes:
            n = int(size)
            params = {"w": jax.random.normal(jax.random.key(0), (n,)) * 0.02}
            update_rows("flat vector", params, args.implementations, args.state_dtypes, args.repeats, on_update)
        if args.transformer:
            d, layers, vocab = (int(v) for v in args.transformer.split(","))
            params = make_params(transformer_tree(d, layers, vocab), jax.random.key(1))
            name = f"transformer d{d} x{layers}"
            update_rows(name, params, args.implementations, args.state_dtypes, args.repeats, on_update)
        on_train_step = save("train_steps")
        if args.train_step:
            train_step_rows(args.repeats, args.implementations, on_train_step)
    write_results(out, results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
