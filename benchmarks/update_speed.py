"""Speed of the learned optimizer's update as a drop-in optax optimizer, against optax.adam.

For flat parameter vectors of ``--sizes`` parameters and for a transformer-shaped
parameter tree, times one jit-compiled ``tx.update`` + ``optax.apply_updates`` with
donated parameters and state (median of ``--repeats``), for each LSTM
implementation and state dtype, and prints:

* time per update, and the ratio to ``optax.adam``'s;
* effective bandwidth: the minimal memory traffic of the update (read the gradient,
  the parameters and the 2 layers x (h, c) x 20 state floats; write the parameters
  and the state) divided by the time.

``--memory`` instead compiles (without running) the update of ``--sizes`` parameters
for each implementation and state dtype and prints XLA's memory analysis of the
compiled program (arguments + outputs + temporaries): whether a model of that size
fits next to its optimizer.

``--train-step`` also times a whole Flax training step (forward, backward, update) of
the paper's MNIST MLP (batch 128) and of a wider MLP, with the learned optimizer and
with Adam.

    python benchmarks/update_speed.py                          # CPU: 1M and 3M
    python benchmarks/update_speed.py --memory --sizes 1e8 --implementations reference fused pallas
    python benchmarks/update_speed.py --sizes 1e6 1e7 3e7 1e8 --implementations fused pallas  # GPU

Results go to ``benchmarks/results/update_speed_<platform>.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import functools
import json
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
from meta_training_speed import compiled_memory, describe_machine

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


def time_update(tx: optax.GradientTransformation, params: Any, repeats: int) -> float:
    """Median seconds of one jitted update + apply, params and state donated."""

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

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

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = {"w": jax.ShapeDtypeStruct((num_params,), jnp.float32)}
    state = jax.eval_shape(tx.init, params)
    return compiled_memory(step.lower(params, state, params).compile())


def memory_rows(sizes: list[float], implementations: list[str], dtypes: list[str]) -> list[dict]:
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
                print(
                    f"{n / 1e6:8.1f}M {impl:9s} {dtype:8s} {planned / 2**30:8.2f} GiB  (optax.adam {adam / 2**30:.2f} GiB)",
                    flush=True,
                )
    return rows


def minimal_bytes(num_params: int, state_bytes_per_param: int) -> int:
    # read grad + params, write params (float32), read + write the state.
    return num_params * (3 * 4 + 2 * state_bytes_per_param)


def update_rows(name: str, params: Any, implementations: list[str], dtypes: list[str], repeats: int) -> list[dict]:
    n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    adam_s = time_update(optax.adam(1e-3), params, repeats)
    rows = []
    for impl in implementations:
        for dtype in dtypes:
            opt = lstm(implementation=impl, state_dtype=dtype)
            tx = opt.as_optax(opt.init(jax.random.key(0)))
            seconds = time_update(tx, params, repeats)
            state_bytes = 2 * opt.num_layers * opt.hidden_size * jnp.dtype(dtype).itemsize
            traffic = minimal_bytes(n, state_bytes)
            row = {
                "model": name,
                "parameters": n,
                "implementation": impl,
                "state_dtype": dtype,
                "seconds": seconds,
                "adam_seconds": adam_s,
                "ratio_to_adam": seconds / adam_s,
                "minimal_bytes": traffic,
                "effective_GB_per_s": traffic / seconds / 1e9,
            }
            rows.append(row)
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


def train_step_rows(repeats: int) -> list[dict]:
    from l2l_jax.tasks.mnist import MLP, cross_entropy

    rows = []
    x = jax.random.uniform(jax.random.key(1), (128, 784))
    y = jax.random.randint(jax.random.key(2), (128,), 0, 10)
    for name, model in (("MNIST MLP 784-20-10", MLP()), ("MLP 784-1024-1024-10", WideMLP())):
        params = model.init(jax.random.key(0), x)["params"]
        n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
        times = {}
        opt = lstm()
        for label, tx in (("adam", optax.adam(1e-3)), ("learned lstm", opt.as_optax(opt.init(jax.random.key(0))))):
            times[label] = _time_train_step(model, tx, params, x, y, repeats, cross_entropy)
        row = {
            "model": name,
            "parameters": n,
            "adam_seconds": times["adam"],
            "lstm_seconds": times["learned lstm"],
            "overhead": times["learned lstm"] / times["adam"],
        }
        rows.append(row)
        print(
            f"train step {name:>22s} ({n / 1e6:.2f}M): adam {times['adam'] * 1e3:.2f} ms, "
            f"learned lstm {times['learned lstm'] * 1e3:.2f} ms  (x{row['overhead']:.1f})",
            flush=True,
        )
    return rows


def _time_train_step(model: nn.Module, tx: Any, params: Any, x, y, repeats: int, loss_of: Callable) -> float:
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state):
        loss, grads = jax.value_and_grad(lambda p: loss_of(model.apply({"params": p}, x), y))(params)
        updates, state = tx.update(grads, state, params, value=loss)
        return optax.apply_updates(params, updates), state

    params = jax.tree.map(jnp.copy, params)
    state = tx.init(params)
    params, state = step(params, state)
    jax.block_until_ready(params)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        params, state = step(params, state)
        jax.block_until_ready((params, state))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


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
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    machine = describe_machine()
    print(machine, flush=True)
    if args.memory:
        rows = memory_rows(args.sizes, args.implementations, args.state_dtypes)
        out = args.out or RESULTS / f"update_memory_{jax.devices()[0].platform}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"machine": machine, "memory": rows}, indent=1))
        print(f"wrote {out}")
        return
    rows = []
    for size in args.sizes:
        n = int(size)
        params = {"w": jax.random.normal(jax.random.key(0), (n,)) * 0.02}
        rows += update_rows("flat vector", params, args.implementations, args.state_dtypes, args.repeats)
    if args.transformer:
        d, layers, vocab = (int(v) for v in args.transformer.split(","))
        params = make_params(transformer_tree(d, layers, vocab), jax.random.key(1))
        rows += update_rows(
            f"transformer d{d} x{layers}", params, args.implementations, args.state_dtypes, args.repeats
        )
    train = train_step_rows(args.repeats) if args.train_step else []
    out = args.out or RESULTS / f"update_speed_{jax.devices()[0].platform}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "updates": rows, "train_steps": train}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
