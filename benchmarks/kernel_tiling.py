"""How fast is the LSTM step alone at N coordinates, in XLA and in the Pallas kernel at each tiling?

The paper's 2x20 LSTM step (freshly initialised) on ``--size`` coordinates with random
inputs and state: XLA's fused and reference steps and
:func:`l2l_jax.optimizers._lstm_pallas.kernel_call` at each of ``--tilings``
(coordinates a program x warps), each jitted with the state donated. For each: the
median of ``--repeats`` timed steps (the state carried from one to the next, after one
first call that compiles), the effective bandwidth of the minimal traffic (the input
features, h and c read once; the output, h and c written once: 652 bytes a coordinate
in float32), and the relative error of the first call's outputs against the reference
step at ``highest`` matrix-product precision. A tiling that does not compile is a row
with its ``"error"``.

Off a GPU the kernel runs in Pallas' interpreter, which is slow: give a small
``--size`` and few ``--repeats`` there.

    python benchmarks/kernel_tiling.py --size 1e7                       # on a GPU
    python benchmarks/kernel_tiling.py --size 1000 --tilings 64x8 --repeats 2   # on a CPU

Results go to ``benchmarks/results/kernel_tiling_<platform>.json`` (``--out``),
rewritten after every row.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import harness
import jax
import jax.numpy as jnp
from gpu_plan import tiling  # The BLOCKxWARPS parser; gpu_plan.py keeps it importable without JAX.

from l2l_jax.optimizers import lstm
from l2l_jax.optimizers._lstm_cell import CellWeights, lstm_step_reference
from l2l_jax.optimizers._lstm_pallas import kernel_call
from l2l_jax.optimizers.lstm import step_function

TILINGS = ["64x8", "64x4", "128x8", "128x4", "32x2", "32x4", "16x2", "256x8"]


def measure(step: Callable, weights: CellWeights, inputs: tuple, reference: tuple, repeats: int) -> dict[str, Any]:
    """Times ``step(weights, x, h, c)`` jitted with h and c donated; its error against ``reference``."""
    x, h, c = inputs
    f = jax.jit(lambda x, h, c: step(weights, x, h, c), donate_argnums=(1, 2))
    t0 = time.perf_counter()
    out = jax.block_until_ready(f(x, h + 0, c + 0))
    first_call = time.perf_counter() - t0
    error = max(float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel())) for a, b in zip(out, reference))
    seconds, _ = harness.median_seconds(lambda hc: f(x, *hc)[1:], out[1:], repeats, warmup=0)
    n = x.shape[1]
    layers, hidden = h.shape[:2]
    minimal_bytes = n * 4 * (x.shape[0] + 1 + 2 * 2 * layers * hidden)
    return {"seconds": seconds, "GB_per_s": minimal_bytes / seconds / 1e9, "minimal_bytes": minimal_bytes,
            "relative_error": error, "first_call_seconds": first_call}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=harness.size, default=1e7, help="coordinates, e.g. 1e7")
    parser.add_argument("--tilings", type=tiling, nargs="+", default=[tiling(t) for t in TILINGS],
                        help=f"Pallas tilings, coordinates a program x warps (default: {' '.join(TILINGS)})")  # fmt: skip
    parser.add_argument("--repeats", type=harness.count, default=20, help="timed steps, after the first call")
    args, results = harness.start(parser, "kernel_tiling_{platform}.json", kind="kernel_tiling")
    interpret = jax.default_backend() != "gpu"
    optimizer = lstm()
    phi = optimizer.init(jax.random.key(0))
    layers, hidden = optimizer.num_layers, optimizer.hidden_size
    weights = CellWeights(w=tuple(phi[f"layer_{i}"]["w"] for i in range(layers)),
                          b=tuple(phi[f"layer_{i}"]["b"] for i in range(layers)),
                          w_out=phi["out"]["w"], b_out=phi["out"]["b"])  # fmt: skip
    n = int(args.size)
    k = jax.random.split(jax.random.key(1), 3)
    inputs = (jax.random.normal(k[0], (2, n)), jax.random.normal(k[1], (layers, hidden, n)) * 0.3,
              jax.random.normal(k[2], (layers, hidden, n)) * 0.3)  # fmt: skip
    with jax.default_matmul_precision("highest"):
        reference = jax.block_until_ready(jax.jit(lambda *a: lstm_step_reference(weights, *a))(*inputs))
    steps = {"xla-fused": step_function("fused"), "xla-reference": step_function("reference")}
    for block, warps in args.tilings:
        steps[f"pallas-{block}x{warps}"] = lambda w, x, h, c, block=block, warps=warps: kernel_call(
            w, x, h, c, interpret=interpret, block=block, num_warps=warps
        )
    on_row = results.section("rows")
    for name, step in steps.items():
        row: dict[str, Any] = {"kernel": name, "coordinates": n}
        try:
            row |= measure(step, weights, inputs, reference, args.repeats)
            text = f"{row['seconds'] * 1e3:9.3f} ms  {row['GB_per_s']:7.1f} GB/s  relative error {row['relative_error']:.1e}"
        except Exception as error:  # noqa: BLE001 -- a tiling that does not compile is a result
            row["error"] = str(error).strip().splitlines()[0][:300]
            text = f"error: {row['error']}"
        on_row(row)
        print(f"{name:14s} {text}", flush=True)
    results.finish()


if __name__ == "__main__":
    main()
