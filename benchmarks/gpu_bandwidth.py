"""What are this device's copy bandwidth and bfloat16 matrix-product rate, the ceilings for the other figures?

A jitted ``x * 1.0001`` over ``--copy-elements`` float32 values (each read once and
written once: the copy bandwidth is 8 bytes an element over the time) and an
``--matmul-size`` square bfloat16 matrix product (2 n³ flop over the time); each time
is the median of ``--repeats`` calls after one warm-up call.

    python benchmarks/gpu_bandwidth.py                        # 4 GiB of float32, 8192² product
    python benchmarks/gpu_bandwidth.py --copy-elements 1e6 --matmul-size 256   # small, on a CPU

Results go to ``benchmarks/results/gpu_bandwidth_<platform>.json`` (``--out``).
"""

from __future__ import annotations

import argparse

import harness
import jax
import jax.numpy as jnp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copy-elements", type=harness.size, default=2.0**30, help="float32 values copied")
    parser.add_argument("--matmul-size", type=harness.count, default=8192, help="n of the n x n bfloat16 product")
    parser.add_argument("--repeats", type=harness.count, default=10, help="timed calls, after one warm-up call")
    args, results = harness.start(parser, "gpu_bandwidth_{platform}.json", kind="ceilings")
    n = int(args.copy_elements)
    x = jnp.ones((n,), jnp.float32) * 1.5
    scale = jax.jit(lambda x: x * 1.0001)
    seconds, _ = harness.median_seconds(lambda _: scale(x), None, args.repeats)
    copy = {"elements": n, "seconds": seconds, "copy_GB_per_s": 2 * 4 * n / seconds / 1e9}
    results.add("copy", copy)
    print(f"copy {copy['copy_GB_per_s']:.0f} GB/s (read+write, {4 * n / 2**30:.2f} GiB, median {seconds * 1e3:.2f} ms)")
    m = args.matmul_size
    a = jax.random.normal(jax.random.key(0), (m, m), jnp.bfloat16)
    square = jax.jit(lambda a: a @ a)
    seconds, _ = harness.median_seconds(lambda _: square(a), None, args.repeats)
    matmul = {"size": m, "seconds": seconds, "bf16_TFLOP_per_s": 2 * m**3 / seconds / 1e12}
    results.add("matmul", matmul)
    print(f"bf16 matmul {matmul['bf16_TFLOP_per_s']:.2f} TFLOP/s ({m} x {m}, median {seconds * 1e3:.2f} ms)")
    results.finish()


if __name__ == "__main__":
    main()
