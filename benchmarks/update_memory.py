"""How much memory does XLA plan for one update of N parameters, next to optax.adam's?

Compiles (without running) one donated update + apply of a flat float32 vector of
``--sizes`` parameters for each LSTM implementation and state dtype, and prints XLA's
memory analysis of the compiled program (arguments + outputs - donated +
temporaries): whether a model of that size fits next to its optimizer.

    python benchmarks/update_memory.py --sizes 1e8 --implementations reference fused pallas

Results go to ``benchmarks/results/update_memory_<platform>.json`` (``--out``),
rewritten after every row.
"""

from __future__ import annotations

import argparse

import harness
import jax
import jax.numpy as jnp
import optax


def planned_bytes(tx: optax.GradientTransformation, num_params: int) -> int | None:
    """Bytes XLA plans for one donated update + apply of a flat float32 vector (compile only)."""
    params = {"w": jax.ShapeDtypeStruct((num_params,), jnp.float32)}
    state = jax.eval_shape(tx.init, params)
    return harness.compiled_memory(harness.donated_update(tx).lower(params, state, params).compile())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_size_options(parser, repeats=False)
    harness.add_implementation_options(parser)
    args, results = harness.start(parser, "update_memory_{platform}.json")
    on_row = results.section("memory")
    for size in args.sizes:
        n = int(size)
        adam = planned_bytes(optax.adam(1e-3), n)
        for impl in args.implementations:
            for dtype in args.state_dtypes:
                planned = planned_bytes(harness.learned(impl, dtype), n)
                on_row({"parameters": n, "implementation": impl, "state_dtype": dtype, "bytes": planned,
                        "adam_bytes": adam})  # fmt: skip
                print(
                    f"{n / 1e6:8.1f}M {impl:9s} {dtype:8s} {harness.gib(planned):8.2f} GiB  "
                    f"(optax.adam {harness.gib(adam):.2f} GiB)",
                    flush=True,
                )
    results.finish()


if __name__ == "__main__":
    main()
