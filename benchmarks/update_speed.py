"""How fast is the learned optimizer's update as a drop-in optax optimizer, against optax.adam?

For flat parameter vectors of ``--sizes`` parameters and for a transformer-shaped
parameter tree, times one jit-compiled ``tx.update`` + ``optax.apply_updates`` with
donated parameters and state (median of ``--repeats`` after one warm-up call), for
each LSTM implementation and state dtype, and prints:

* time per update, and the ratio to ``optax.adam``'s;
* effective bandwidth: the minimal memory traffic of the update (read the gradient,
  the parameters and the 2 layers x (h, c) x 20 state floats; write the parameters
  and the state) divided by the time.

``--shipped`` (default: every shipped optimizer) times each trained optimizer of
``l2l_jax.pretrained`` the same way, as a user loads it, in the same run as Adam.

``--crossover SIZES`` times the generalist's update on one flat leaf of each size with
its network evaluated coordinate by coordinate and as matrix products
(``l2l_jax.optimizers.feature_mlp.COORDINATEWISE_MIN_SIZE`` set to 1, then to infinity).

``--lstm-floor`` sets the shipped ``mnist-lstm``'s update on each flat size against the
floors of its cell on this machine: its matrix products (FLOPs per coordinate, exact)
at this CPU's rate for a large square product and at the rate of the cell's own
products on a block of coordinates, and its tanh evaluations (5 per unit and layer:
three gates as sigmoids through tanh, the candidate, the cell output) at the measured
rate of ``jnp.tanh`` on a block that stays in cache; and its minimal memory traffic (as
above) at the measured rate of a large elementwise copy (``a + 1``, read and write).

``--train-step`` also times a whole Flax training step (forward, backward, update) of
the paper's MNIST MLP (batch 128), a 784-128-64-10 MLP and a wider MLP, with the
learned optimizer (each of ``--implementations``, float32 state), every ``--shipped``
optimizer and Adam.

    python benchmarks/update_speed.py --train-step                      # CPU: 1M and 3M
    python benchmarks/update_speed.py --sizes 1e6 1e7 3e7 1e8 --implementations fused pallas --train-step  # GPU

Results go to ``benchmarks/results/update_speed_<platform>.json`` (``--out``),
rewritten after every row. A setting that runs out of device memory is recorded as
such (``"out_of_memory"``) and the run goes on.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any

import harness
import jax
import jax.numpy as jnp
import optax

from l2l_jax import pretrained
from l2l_jax.tasks.mnist import MLP


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
    """Random parameters (normal, scale 0.02) of the given tree of shapes."""
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, s) * 0.02 for k, s in zip(keys, leaves)])


def update_seconds(tx: optax.GradientTransformation, params: Any, repeats: int) -> float:
    """Median seconds of one jitted update + apply, params and state donated."""
    step = harness.donated_update(tx)
    grads = jax.tree.map(lambda p: p * 0.1 + 1e-3, params)
    carry = (jax.tree.map(jnp.copy, params), tx.init(params))
    seconds, _ = harness.median_seconds(lambda c: step(*c, grads), carry, repeats)
    return seconds


def update_rows(
    name: str, params: Any, implementations: list[str], dtypes: list[str], repeats: int, on_row: Callable[[dict], None]
) -> None:
    n = harness.num_params(params)
    adam_s = update_seconds(optax.adam(1e-3), params, repeats)
    for impl in implementations:
        for dtype in dtypes:
            setting = {"model": name, "parameters": n, "implementation": impl, "state_dtype": dtype,
                       "adam_seconds": adam_s}  # fmt: skip
            traffic = harness.minimal_bytes(n, harness.state_bytes_per_param(impl, dtype))

            def measure(impl: str = impl, dtype: str = dtype, traffic: int = traffic) -> dict[str, Any]:
                seconds = update_seconds(harness.learned(impl, dtype), params, repeats)
                return {"seconds": seconds, "ratio_to_adam": seconds / adam_s, "minimal_bytes": traffic,
                        "effective_GB_per_s": traffic / seconds / 1e9}  # fmt: skip

            row = harness.measure_unless_out_of_memory(setting, measure)
            on_row(row)
            label = f"{name:>22s} {n / 1e6:8.1f}M {impl:9s} {dtype:8s}"
            if "out_of_memory" in row:
                print(f"{label} out of memory", flush=True)
                continue
            print(
                f"{label} {row['seconds'] * 1e3:9.2f} ms  adam {adam_s * 1e3:7.2f} ms  "
                f"x{row['ratio_to_adam']:6.1f}  {row['effective_GB_per_s']:7.1f} GB/s",
                flush=True,
            )


def shipped_rows(name: str, params: Any, shipped: list[str], repeats: int, on_row: Callable[[dict], None]) -> None:
    """The update of every ``shipped`` optimizer on ``params``, with Adam's timed in the same run."""
    n = harness.num_params(params)
    adam_s = update_seconds(optax.adam(1e-3), params, repeats)
    for optimizer in shipped:
        setting = {"model": name, "parameters": n, "optimizer": optimizer, "adam_seconds": adam_s}

        def measure(optimizer: str = optimizer) -> dict[str, Any]:
            seconds = update_seconds(pretrained.load(optimizer), params, repeats)
            return {"seconds": seconds, "ratio_to_adam": seconds / adam_s}

        row = harness.measure_unless_out_of_memory(setting, measure)
        on_row(row)
        timing = (
            "out of memory"
            if "out_of_memory" in row
            else f"{row['seconds'] * 1e3:9.2f} ms  x{row['ratio_to_adam']:6.1f}"
        )
        print(f"{name:>22s} {n / 1e6:8.2f}M {optimizer:15s} {timing}  adam {adam_s * 1e3:7.2f} ms", flush=True)


def crossover_rows(sizes: list[float], repeats: int, on_row: Callable[[dict], None]) -> None:
    """The generalist's update per leaf size, its network coordinatewise and as matrix products."""
    feature_mlp = importlib.import_module("l2l_jax.optimizers.feature_mlp")
    default = feature_mlp.COORDINATEWISE_MIN_SIZE
    try:
        for size in sizes:
            params = {"w": jax.random.normal(jax.random.key(0), (int(size),)) * 0.02}
            row: dict[str, Any] = {"parameters": int(size)}
            for path, threshold in (("coordinatewise", 1), ("matrix_products", 2**62)):
                feature_mlp.COORDINATEWISE_MIN_SIZE = threshold  # Read when the update is traced.
                row[f"{path}_seconds"] = update_seconds(pretrained.load("generalist"), params, repeats)
            on_row(row)
            print(f"generalist {int(size):>10,d} coordinates: coordinatewise {row['coordinatewise_seconds'] * 1e3:.3f} ms, "
                  f"matrix products {row['matrix_products_seconds'] * 1e3:.3f} ms", flush=True)  # fmt: skip
    finally:
        feature_mlp.COORDINATEWISE_MIN_SIZE = default


def _rate(fn: Callable[..., jax.Array], args: tuple, work: float, repeats: int) -> float:
    """``work`` per second of the jitted ``fn(*args)`` (median of ``repeats``)."""
    jitted = jax.jit(fn)
    seconds, _ = harness.median_seconds(lambda c: (jitted(*args), c[1]), (None, None), repeats)
    return work / seconds


def lstm_floor_rows(sizes: list[float], repeats: int, on_row: Callable[[dict], None]) -> None:
    """The shipped ``mnist-lstm``'s update on flat leaves against the floors of its cell here."""
    lstm_cell = importlib.import_module("l2l_jax.optimizers._lstm_cell")
    optimizer, _ = pretrained.load_meta_params("mnist-lstm")
    hidden, layers = optimizer.hidden_size, optimizer.num_layers
    fan_ins = [2 + hidden + 1] + [2 * hidden + 1] * (layers - 1)  # [inputs; h; 1] per layer
    flops = sum(2 * f * 4 * hidden for f in fan_ins) + 2 * hidden  # per coordinate, the output's too
    tanhs = 5 * hidden * layers
    key = jax.random.key(0)
    square = jax.random.normal(key, (2048, 2048))
    square_rate = _rate(lambda a: a @ a, (square,), 2 * 2048**3, repeats)
    block = lstm_cell.CPU_BLOCK
    cell_rate = _rate(
        lambda ws, rs: [w @ r for w, r in zip(ws, rs)],
        ([jnp.ones((4 * hidden, f)) for f in fan_ins], [jnp.ones((f, block)) for f in fan_ins]),
        sum(2 * 4 * hidden * f * block for f in fan_ins),
        repeats * 10,
    )
    tanh_rate = _rate(jnp.tanh, (jax.random.normal(key, (block * 4 * hidden,)),), block * 4 * hidden, repeats * 10)
    big = jnp.ones((2**26,))
    copy_rate = _rate(lambda a: a + 1.0, (big,), 2 * big.nbytes, repeats)
    for size in sizes:
        params = {"w": jax.random.normal(key, (int(size),)) * 0.02}
        seconds = update_seconds(pretrained.load("mnist-lstm"), params, repeats)
        n = int(size)
        traffic = harness.minimal_bytes(n, harness.state_bytes_per_param("fused", "float32"))
        row = {
            "parameters": n, "seconds": seconds, "flops_per_coordinate": flops, "tanh_per_coordinate": tanhs,
            "square_product_flops_per_s": square_rate, "cell_product_flops_per_s": cell_rate,
            "tanh_per_s": tanh_rate, "floor_square_rate_seconds": n * flops / square_rate,
            "floor_cell_rate_seconds": n * flops / cell_rate, "floor_tanh_seconds": n * tanhs / tanh_rate,
            "copy_bytes_per_s": copy_rate, "minimal_bytes": traffic, "floor_memory_seconds": traffic / copy_rate,
        }  # fmt: skip
        on_row(row)
        print(
            f"mnist-lstm {n:,d} coordinates: update {seconds * 1e3:.1f} ms; cell {flops} FLOPs + {tanhs} tanh per "
            f"coordinate; products at the square rate ({square_rate / 1e9:.0f} GFLOP/s) "
            f"{row['floor_square_rate_seconds'] * 1e3:.1f} ms, at the cell's own rate ({cell_rate / 1e9:.0f} GFLOP/s) "
            f"{row['floor_cell_rate_seconds'] * 1e3:.1f} ms; tanh ({tanh_rate / 1e9:.2f} G/s) "
            f"{row['floor_tanh_seconds'] * 1e3:.1f} ms; memory traffic {traffic / 1e9:.2f} GB at "
            f"{copy_rate / 1e9:.1f} GB/s {row['floor_memory_seconds'] * 1e3:.1f} ms",
            flush=True,
        )


def train_step_seconds(model: MLP, tx: Any, params: Any, x: jax.Array, y: jax.Array, repeats: int) -> float:
    """Median seconds of one jitted training step (forward, backward, update) on a fixed batch."""
    step = harness.train_step(model, tx, x, y)
    carry = (jax.tree.map(jnp.copy, params), tx.init(params))
    seconds, _ = harness.median_seconds(lambda c: step(*c)[:2], carry, repeats)
    return seconds


def lstm_train_step(*args: Any) -> dict[str, float]:
    """:func:`train_step_seconds` as a row's field."""
    return {"lstm_seconds": train_step_seconds(*args)}


def train_step_rows(
    repeats: int, implementations: list[str], shipped: list[str], on_row: Callable[[dict], None]
) -> None:
    x = jax.random.uniform(jax.random.key(1), (128, 784))
    y = jax.random.randint(jax.random.key(2), (128,), 0, 10)
    models = (
        ("MNIST MLP 784-20-10", MLP()),
        ("MLP 784-128-64-10", MLP(hidden=(128, 64), activation="relu")),
        ("MLP 784-1024-1024-10", MLP(hidden=(1024, 1024), activation="relu")),
    )
    for name, model in models:
        params = model.init(jax.random.key(0), x)["params"]
        n = harness.num_params(params)
        adam = train_step_seconds(model, optax.adam(1e-3), params, x, y, repeats)
        for impl in implementations:
            setting = {"model": name, "parameters": n, "implementation": impl, "adam_seconds": adam}
            row = harness.measure_unless_out_of_memory(
                setting, lstm_train_step, model, harness.learned(impl), params, x, y, repeats
            )
            if "lstm_seconds" in row:
                row["overhead"] = row["lstm_seconds"] / adam
            on_row(row)
            timing = (
                "out of memory"
                if "out_of_memory" in row
                else f"{row['lstm_seconds'] * 1e3:.2f} ms  (x{row['overhead']:.1f})"
            )
            print(f"train step {name:>22s} ({n / 1e6:.2f}M): adam {adam * 1e3:.2f} ms, learned lstm ({impl}) {timing}",
                  flush=True)  # fmt: skip
        for optimizer in shipped:
            seconds = train_step_seconds(model, pretrained.load(optimizer), params, x, y, repeats)
            on_row({"model": name, "parameters": n, "optimizer": optimizer, "adam_seconds": adam,
                    "seconds": seconds, "overhead": seconds / adam})  # fmt: skip
            print(f"train step {name:>22s} ({n / 1e6:.2f}M): adam {adam * 1e3:.2f} ms, {optimizer} "
                  f"{seconds * 1e3:.2f} ms  (x{seconds / adam:.1f})", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_size_options(parser)
    harness.add_implementation_options(parser)
    parser.add_argument(
        "--transformer",
        default="256,4,8192",
        help="d_model,layers,vocab of the parameter tree ('' to skip); GPT-2 small is 768,12,50257",
    )
    parser.add_argument(
        "--crossover", type=harness.size, nargs="*", default=[], help="leaf sizes to time both network paths at"
    )
    parser.add_argument("--train-step", action="store_true", help="also time whole training steps of three MLPs")
    parser.add_argument(
        "--lstm-floor", action="store_true", help="also set mnist-lstm's update against the floors of its cell"
    )
    parser.add_argument(
        "--shipped",
        nargs="*",
        default=pretrained.available(),
        help="shipped optimizers to time as loaded (default: all; none: only the LSTM implementations)",
    )
    args, results = harness.start(parser, "update_speed_{platform}.json")
    on_update = results.section("updates")
    on_shipped = results.section("shipped_updates")
    for size in args.sizes:
        params = {"w": jax.random.normal(jax.random.key(0), (int(size),)) * 0.02}
        update_rows("flat vector", params, args.implementations, args.state_dtypes, args.repeats, on_update)
        shipped_rows("flat vector", params, args.shipped, args.repeats, on_shipped)
    if args.transformer:
        d, layers, vocab = (int(v) for v in args.transformer.split(","))
        params = make_params(transformer_tree(d, layers, vocab), jax.random.key(1))
        name = f"transformer d{d} x{layers}"
        update_rows(name, params, args.implementations, args.state_dtypes, args.repeats, on_update)
        shipped_rows(name, params, args.shipped, args.repeats, on_shipped)
    crossover_rows(args.crossover, args.repeats, results.section("crossover"))
    if args.lstm_floor:
        lstm_floor_rows(args.sizes, args.repeats, results.section("lstm_floor"))
    on_train_step = results.section("train_steps")
    if args.train_step:
        train_step_rows(args.repeats, args.implementations, args.shipped, on_train_step)
    results.finish()


if __name__ == "__main__":
    main()
