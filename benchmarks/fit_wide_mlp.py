"""Does a model of N parameters train next to the learned optimizer on this device?

Trains a sigmoid MLP of about N parameters (``--depth`` layers of equal width, batch
128 of fixed synthetic data with random labels) for ``--steps`` steps with the
shipped ``mnist-lstm`` (each of ``--implementations`` and ``--state-dtypes``) and, for
comparison, with Adam (lr 1e-3). The learned update is multiplied by
``--update-scale``, by default 32 / width: ``mnist-lstm`` was meta-trained on a
20-unit MLP and its steps add up on wide layers. Prints the first and last loss, time
per step (median; the step is compiled beforehand, so every step counts), XLA's
planned memory of the step, and the device's peak memory where the backend reports it
(``memory_stats``; the process's peak so far, so give one implementation and one state
dtype per command for a clean figure).

    python benchmarks/fit_wide_mlp.py 1e7 --steps 10 --implementations fused --state-dtypes float32 bfloat16
    python benchmarks/fit_wide_mlp.py 1e8 --implementations pallas --state-dtypes float32   # GPU, 80 GB

Results go to ``benchmarks/results/fit_wide_mlp_<platform>.json`` (``--out``),
rewritten after every row. A setting that runs out of device memory is recorded as
such (``"out_of_memory"``) and the run goes on.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import harness
import jax
import optax

from l2l_jax.tasks.mnist import MLP


def fit(model: MLP, x: jax.Array, y: jax.Array, tx: optax.GradientTransformation, steps: int) -> dict[str, Any]:
    """``steps`` training steps of ``model`` with ``tx`` from a fixed initialisation: losses, time, memory."""
    step = harness.train_step(model, tx, x, y)
    # Blocking: a model too large to allocate fails here, before its step is compiled.
    params = jax.block_until_ready(jax.jit(model.init)(jax.random.key(0), x)["params"])
    state = jax.block_until_ready(jax.jit(tx.init)(params))
    t0 = time.perf_counter()
    compiled = step.lower(params, state).compile()
    compile_seconds = time.perf_counter() - t0
    losses = []

    def one(carry: tuple[Any, Any]) -> tuple[Any, Any]:
        params, state, loss = compiled(*carry)
        losses.append(loss)
        return params, state

    seconds, _ = harness.median_seconds(one, (params, state), steps, warmup=0)
    return {
        "first_loss": float(losses[0]),
        "last_loss": float(losses[-1]),
        "losses": [float(loss) for loss in losses],
        "seconds_per_step": seconds,
        "compile_seconds": compile_seconds,
        "planned_bytes": harness.compiled_memory(compiled),
        "device_peak_bytes": harness.device_peak_bytes(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parameters", type=float, help="parameters of the MLP, about (e.g. 1e7)")
    parser.add_argument("--depth", type=harness.count, default=6, help="hidden layers")
    parser.add_argument("--steps", type=harness.count, default=10)
    harness.add_implementation_options(parser)
    parser.add_argument(
        "--update-scale",
        type=float,
        default=None,
        help=f"multiplies the learned update (default {harness.FIT_SCALE_TIMES_WIDTH:g} / width)",
    )
    args, results = harness.start(
        parser,
        "fit_wide_mlp_{platform}.json",
        check=lambda a: a.parameters >= 100 or parser.error("the model needs at least 100 parameters"),
    )
    on_row = results.section("fit")
    model = harness.fit_model(args.parameters, args.depth)
    width = model.hidden[0]
    x = jax.random.normal(jax.random.key(1), (128, width))
    y = jax.random.randint(jax.random.key(2), (128,), 0, 10)
    n = harness.num_params(jax.eval_shape(model.init, jax.random.key(0), x))
    name = f"MLP {width}x{args.depth} sigmoid"
    scale = harness.FIT_SCALE_TIMES_WIDTH / width if args.update_scale is None else args.update_scale
    for impl, dtype in [("adam", None)] + [(i, d) for i in args.implementations for d in args.state_dtypes]:
        setting = {"model": name, "parameters": n, "width": width, "implementation": impl, "state_dtype": dtype,
                   "update_scale": None if impl == "adam" else scale, "steps": args.steps}  # fmt: skip
        tx = harness.fit_optimizer(impl, dtype, scale)
        row = harness.measure_unless_out_of_memory(setting, fit, model, x, y, tx, args.steps)
        on_row(row)
        label = f"fit {name} ({n / 1e6:.1f}M) " + ("optax.adam" if impl == "adam" else f"{impl} {dtype} x{scale:.3g}")
        if "out_of_memory" in row:
            print(f"{label} out of memory", flush=True)
            continue
        peak = row["device_peak_bytes"]
        print(
            f"{label} loss {row['first_loss']:.4f} -> {row['last_loss']:.4f} in {args.steps} steps"
            f"  {row['seconds_per_step'] * 1e3:9.2f} ms/step  planned {harness.gib(row['planned_bytes']):.2f} GiB"
            + ("" if peak is None else f"  device peak so far {harness.gib(peak):.2f} GiB"),
            flush=True,
        )
    results.finish()


if __name__ == "__main__":
    main()
