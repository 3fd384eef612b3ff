"""How long does the gradient in φ through one update of N parameters take?

Times ``jax.grad`` in φ of a loss of one update of a flat vector of ``--sizes``
parameters, from a non-zero optimizer state (median of ``--repeats`` after one
warm-up call), for each LSTM implementation: the backward pass that meta-training on
a model of that size runs.

    python benchmarks/update_meta_gradient.py --sizes 2e5 1e6 --repeats 5

Results go to ``benchmarks/results/update_meta_gradient_<platform>.json``
(``--out``), rewritten after every row. A setting that runs out of device memory is
recorded as such (``"out_of_memory"``) and the run goes on.
"""

from __future__ import annotations

import argparse
from typing import Any

import harness
import jax
import jax.numpy as jnp

from l2l_jax.optimizers import lstm


def meta_gradient_seconds(implementation: str, num_params: int, repeats: int) -> dict[str, float]:
    """Median seconds of the jitted gradient in φ of a loss of one update of ``num_params`` parameters."""
    grads = {"w": jax.random.normal(jax.random.key(0), (num_params,)) * 0.02}
    opt = lstm(implementation=implementation)
    phi = opt.init(jax.random.key(0))
    # From a non-zero state (a first update), so that every state input carries a cotangent.
    state = opt.as_optax(phi).update(grads, opt.as_optax(phi).init(grads))[1]

    def loss(phi: Any) -> jax.Array:
        updates, new_state = opt.as_optax(phi).update(grads, state)
        return sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves((updates, new_state)))

    meta_grad = jax.jit(jax.grad(loss))
    seconds, _ = harness.median_seconds(lambda _: meta_grad(phi), None, repeats)
    return {"seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_size_options(parser)
    harness.add_implementation_options(parser, state_dtypes=False)
    args, results = harness.start(parser, "update_meta_gradient_{platform}.json")
    on_row = results.section("meta_gradients")
    for size in args.sizes:
        n = int(size)
        for impl in args.implementations:
            setting = {"parameters": n, "implementation": impl}
            row = harness.measure_unless_out_of_memory(setting, meta_gradient_seconds, impl, n, args.repeats)
            on_row(row)
            timing = "out of memory" if "out_of_memory" in row else f"{row['seconds'] * 1e3:9.2f} ms"
            print(f"meta-gradient through one update {n / 1e6:8.2f}M {impl:9s} {timing}", flush=True)
    results.finish()


if __name__ == "__main__":
    main()
