"""How many optimizee steps per second does a plain JAX implementation of the meta-step run?

The baseline for ``meta_training_speed.py``: the paper's MNIST meta-step written the
plain way, in this file alone, with none of the package's code (no custom backward
pass, no kernels): a coordinatewise 2x20 LSTM on the log/sign-preprocessed gradient,
output times 0.1, an MLP 784-20-10 (sigmoid) with batch 128 drawn from fixed random
data (10,000 examples), 20-step truncations, first order (the gradient fed to the LSTM
is not differentiated), ``jax.vmap`` over the B tasks, ``jax.lax.scan`` over the steps
(``--remat``: each step under ``jax.checkpoint``) and Adam (1e-3) on φ, jitted. For
each B, seconds per meta-step (median of ``--steps`` after one warm-up call, the same
inputs each time) and optimizee steps/s (B x 20 per meta-step).

    python benchmarks/plain_jax_meta_step.py --batch-sizes 64 256   # on a GPU
    python benchmarks/plain_jax_meta_step.py --batch-sizes 256 --remat

Results go to ``benchmarks/results/plain_jax_meta_step_<platform>.json`` (``--out``),
rewritten after every B.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import harness
import jax
import jax.numpy as jnp
import optax
from jax import lax

HIDDEN = 20
#: Parameters of the MLP 784-20-10, flattened.
NUM_PARAMS = 784 * 20 + 20 + 20 * 10 + 10


def init_layer(key: jax.Array, inputs: int) -> dict:
    return {"w": jax.random.normal(key, (inputs + HIDDEN, 4 * HIDDEN)) * 0.1, "b": jnp.zeros(4 * HIDDEN)}


def init_phi(key: jax.Array) -> dict:
    k = jax.random.split(key, 3)
    out = {"w": jax.random.normal(k[2], (HIDDEN, 1)) * 0.1, "b": jnp.zeros(1)}
    return {"l1": init_layer(k[0], 2), "l2": init_layer(k[1], HIDDEN), "out": out}


def cell(p: dict, x: jax.Array, hc: tuple) -> tuple:
    h, c = hc
    i, f, g, o = jnp.split(jnp.concatenate([x, h], -1) @ p["w"] + p["b"], 4, -1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return h, (h, c)


def preprocess(g: jax.Array, p: float = 10.0) -> jax.Array:
    a = jnp.abs(g)
    big = a >= jnp.exp(-p)
    return jnp.stack([jnp.where(big, jnp.log(a + 1e-20) / p, -1.0), jnp.where(big, jnp.sign(g), jnp.exp(p) * g)], -1)


def lstm_update(phi: dict, g: jax.Array, state: tuple) -> tuple:
    h1, s1 = cell(phi["l1"], preprocess(g), state[0])
    h2, s2 = cell(phi["l2"], h1, state[1])
    return (h2 @ phi["out"]["w"] + phi["out"]["b"])[..., 0] * 0.1, (s1, s2)


def mlp_loss(theta: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    w1, b1 = theta[:15680].reshape(784, 20), theta[15680:15700]
    w2, b2 = theta[15700:15900].reshape(20, 10), theta[15900:]
    logits = jax.nn.sigmoid(x @ w1 + b1) @ w2 + b2
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(y, 10), -1))


def make_meta_step(batch_size: int, remat: bool, meta_tx: optax.GradientTransformation) -> Callable:
    x_all = jax.random.uniform(jax.random.key(1), (10000, 784))
    y_all = jax.random.randint(jax.random.key(2), (10000,), 0, 10)

    def unroll(phi, theta, state, key):
        def body(carry, k):
            theta, state = carry
            idx = jax.random.randint(k, (128,), 0, x_all.shape[0])
            loss, g = jax.value_and_grad(mlp_loss)(theta, x_all[idx], y_all[idx])
            u, state = lstm_update(phi, lax.stop_gradient(g), state)
            return (theta + u, state), loss

        (theta, state), losses = lax.scan(jax.checkpoint(body) if remat else body, (theta, state),
                                          jax.random.split(key, harness.TRUNCATION))  # fmt: skip
        return losses.sum(), (theta, state)

    @jax.jit
    def meta_step(phi, meta_state, theta, state, key):
        def meta_loss(phi):
            keys = jax.random.split(key, batch_size)
            losses, inner = jax.vmap(lambda t, s, k: unroll(phi, t, s, k))(theta, state, keys)
            return losses.mean(), inner

        (loss, (theta, state)), grads = jax.value_and_grad(meta_loss, has_aux=True)(phi)
        updates, meta_state = meta_tx.update(grads, meta_state, phi)
        return optax.apply_updates(phi, updates), meta_state, theta, state, loss

    return meta_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=harness.count, nargs="+", default=[64], help="tasks per meta-step")
    parser.add_argument("--remat", action="store_true", help="each inner step under jax.checkpoint")
    parser.add_argument("--steps", type=harness.count, default=5, help="timed meta-steps (after a warm-up call)")
    args, results = harness.start(parser, "plain_jax_meta_step_{platform}.json", kind="throughput",
                                  truncation=harness.TRUNCATION)  # fmt: skip
    on_row = results.section("rows")
    meta_tx = optax.adam(1e-3)
    phi = init_phi(jax.random.key(0))
    meta_state = meta_tx.init(phi)
    for b in args.batch_sizes:
        meta_step = make_meta_step(b, args.remat, meta_tx)
        theta = jax.random.normal(jax.random.key(3), (b, NUM_PARAMS)) * 0.01
        zeros = jnp.zeros((b, NUM_PARAMS, HIDDEN))
        state = ((zeros, zeros), (zeros, zeros))  # (h, c) of each layer
        inputs = (phi, meta_state, theta, state, jax.random.key(0))
        t0 = time.perf_counter()
        jax.block_until_ready(meta_step(*inputs))
        first_call = time.perf_counter() - t0
        seconds, _ = harness.median_seconds(lambda _, f=meta_step, a=inputs: f(*a), None, args.steps, warmup=0)
        row = {"batch_size": b, "remat": args.remat, "first_call_seconds": first_call,
               "seconds_per_meta_step": seconds, "optimizee_steps_per_second": b * harness.TRUNCATION / seconds}  # fmt: skip
        on_row(row)
        print(f"B={b:4d} remat={args.remat!s:5s} {seconds * 1e3:8.1f} ms/meta-step "
              f"{row['optimizee_steps_per_second']:10.1f} optimizee steps/s  first call {first_call:.1f} s", flush=True)  # fmt: skip
    results.finish()


if __name__ == "__main__":
    main()
