"""The drop-in optimizer across processes: ``jax.distributed`` with a mesh over every process's devices.

Two processes on this machine (2 fake CPU devices each, collectives over gloo) hold
the parameters sharded over the global mesh of 4 devices; ``tx.init`` and ``tx.update``
under ``jax.jit`` with `state_shardings` give the updates that one process computes
unsharded. Ports are chosen free, the time is bounded, and both processes are always
reaped.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2l_jax import pretrained

CHILD = textwrap.dedent(
    """
    import json, os, sys
    name, process_id, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    import jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from l2l_jax import pretrained
    from l2l_jax.optimizers import state_shardings

    mesh = jax.make_mesh((4,), ("d",), devices=jax.devices())
    specs = {"w": P("d", None), "b": P()}
    full = {"w": np.arange(24, dtype=np.float32).reshape(8, 3) / 10, "b": np.ones(3, np.float32)}
    shardings = {k: NamedSharding(mesh, s) for k, s in specs.items()}
    params = {k: jax.make_array_from_callback(v.shape, shardings[k], lambda i, v=v: v[i]) for k, v in full.items()}
    tx = pretrained.load(name)
    want = state_shardings(tx, params, shardings)
    state = jax.jit(tx.init, out_shardings=want)(params)
    update = jax.jit(tx.update, out_shardings=(shardings, want))
    for t in range(2):
        grads = jax.tree.map(lambda p, t=t: jnp.sin(p * (t + 1)), params)
        updates, state = update(grads, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    gathered = jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, P()))(params)
    print("RESULT" + json.dumps({
        "processes": jax.process_count(), "devices": len(jax.devices()), "local": len(jax.local_devices()),
        "params": {k: np.asarray(v.addressable_data(0)).tolist() for k, v in gathered.items()},
    }))
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(name: str, timeout: float = 240) -> list[dict]:
    """Runs ``CHILD`` as processes 0 and 1 of one ``jax.distributed`` job; their RESULT objects."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2",
    }
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, name, str(i), str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err[-3000:]
            outs.append(json.loads(out.split("RESULT", 1)[1]))
    finally:
        for proc in procs:  # Reaped whatever happened, so no process outlives the test.
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return outs


def unsharded(name: str) -> dict:
    params = {"w": jnp.arange(24, dtype=jnp.float32).reshape(8, 3) / 10, "b": jnp.ones(3, jnp.float32)}
    tx = pretrained.load(name)
    state = tx.init(params)
    for t in range(2):
        grads = jax.tree.map(lambda p, t=t: jnp.sin(p * (t + 1)), params)
        updates, state = jax.jit(tx.update)(grads, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    return params


@pytest.mark.parametrize("name", ["generalist", "mnist-lstm"])
def test_a_model_sharded_over_two_processes_gets_the_one_process_updates(name):
    results = run_two_processes(name)
    want = unsharded(name)
    for result in results:
        assert (result["processes"], result["devices"], result["local"]) == (2, 4, 2)
        for key in ("w", "b"):
            np.testing.assert_allclose(result["params"][key], want[key], rtol=1e-5, atol=1e-6)
    assert results[0]["params"] == results[1]["params"]
