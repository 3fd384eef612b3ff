"""Across processes: ``jax.distributed`` jobs with a mesh over every process's devices.

Two processes on this machine (2 fake CPU devices each, collectives over gloo):

* hold parameters sharded over the global mesh of 4 devices: ``tx.init`` and
  ``tx.update`` under ``jax.jit`` with ``state_shardings`` give the updates that one
  process computes unsharded;
* meta-train together (``l2l-jax meta-train --coordinator``): the run equals one
  process's on 4 fake devices; SIGTERM to one process stops both at the same step;
  after one is killed, the job resumes from process 0's last checkpoint, and one
  process resumes the job's checkpoint as well.

Ports are chosen free, the time is bounded, and every process is always reaped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2l_jax import pretrained
from l2l_jax import run_directory as rd

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


def run_job(
    commands: list[list[str]], envs: list[dict[str, str]] | None = None, timeout: float = 240
) -> list[tuple[int, str, str]]:
    """Runs ``commands`` as the processes of one job, 2 fake CPU devices each; their exit statuses, stdout and stderr.

    ``envs``: extra environment variables per process. Output goes to files, so no
    full pipe can stall a process. After a process dies of SIGKILL, the others get
    10 s to stop (a job whose host died is torn down); every process is killed after
    ``timeout`` seconds, and always reaped, so none outlives the test.
    """
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2",
    }
    with tempfile.TemporaryDirectory() as logs, contextlib.ExitStack() as files:
        outputs = [
            (files.enter_context(open(f"{logs}/{i}.out", "w+")), files.enter_context(open(f"{logs}/{i}.err", "w+")))
            for i in range(len(commands))
        ]
        procs: list[subprocess.Popen] = []
        try:
            for cmd, (out, err), extra in zip(commands, outputs, envs or [{}] * len(commands)):
                procs.append(subprocess.Popen(cmd, env={**env, **extra}, stdout=out, stderr=err, text=True))
            deadline = time.monotonic() + timeout
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                if any(p.returncode == -signal.SIGKILL for p in procs):
                    deadline = min(deadline, time.monotonic() + 10)
                time.sleep(0.2)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        for out, err in outputs:
            out.seek(0)
            err.seek(0)
        return [(p.returncode, out.read(), err.read()) for p, (out, err) in zip(procs, outputs)]


def run_two_processes(name: str) -> list[dict]:
    """Runs ``CHILD`` as processes 0 and 1 of one ``jax.distributed`` job; their RESULT objects."""
    port = free_port()
    results = run_job([[sys.executable, "-c", CHILD, name, str(i), str(port)] for i in range(2)])
    for status, _, err in results:
        assert status == 0, err[-3000:]
    return [json.loads(out.split("RESULT", 1)[1]) for _, out, _ in results]


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


# One meta-training run: 4 tasks over 4 devices, validated and checkpointed every 2 steps.
RUN = [
    *("--task quadratic --horizon 20 --truncation 10 --batch-size 4 --val-tasks 4".split()),
    *("--validate-every 2 --checkpoint-every 2 --no-progress".split()),
]
# The CLI as a child that first sends itself SIG at meta-step STEP (``L2L_TEST_SIGNAL=STEP:SIG``).
CLI_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from l2l_jax import cli
    from l2l_jax.meta import training
    step, name = os.environ["L2L_TEST_SIGNAL"].split(":")
    original = training.meta_train

    def meta_train(*args, **kwargs):
        def on_step(s, row):
            if s == int(step):
                os.kill(os.getpid(), getattr(signal, name))
        return original(*args, **{**kwargs, "on_step": on_step})

    cli.meta_train = meta_train
    sys.argv[0] = "l2l-jax"
    sys.exit(cli.main())  # As the program: errors in a job exit at once.
    """
)


def meta_train_processes(run_dir: Path, steps: int, signals: dict[int, str] | None = None) -> list[tuple[int, str]]:
    """``l2l-jax meta-train`` as processes 0 and 1 of one job into ``run_dir``; their exit statuses and stderr.

    ``signals``: process index -> ``"STEP:SIGNAL"``, sent by that process to itself
    after meta-step STEP (see ``run_job`` for a process killed).
    """
    port = free_port()
    args = [*RUN, "--meta-steps", str(steps), "--run-dir", str(run_dir), "--coordinator", f"127.0.0.1:{port}"]
    commands = [
        [sys.executable, "-c", CLI_CHILD, "meta-train", *args, "--num-processes", "2", "--process-id", str(i)]
        for i in range(2)
    ]
    envs = [{"L2L_TEST_SIGNAL": (signals or {}).get(i, "0:SIGTERM")} for i in range(2)]
    return [(status, err) for status, _, err in run_job(commands, envs)]


def one_process_run(run_dir: Path, steps: int) -> None:
    """The same run in one process over 4 fake devices."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    cmd = [sys.executable, "-m", "l2l_jax", "meta-train", *RUN, "--meta-steps", str(steps), "--run-dir", str(run_dir)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]


def assert_same_run(got: Path, want: Path) -> None:
    """Equal metrics rows and trained φ, up to float rounding."""
    rows, want_rows = rd.read_metrics(got / rd.METRICS), rd.read_metrics(want / rd.METRICS)
    assert [r["step"] for r in rows] == [r["step"] for r in want_rows]
    for key in ("meta_loss", "grad_norm", "val_loss"):
        np.testing.assert_allclose(
            [r.get(key, np.nan) for r in rows], [r.get(key, np.nan) for r in want_rows], rtol=1e-5
        )
    _, phi = pretrained.load_meta_params(got)
    _, want_phi = pretrained.load_meta_params(want)
    for a, b in zip(jax.tree.leaves(phi), jax.tree.leaves(want_phi)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_meta_training_over_two_processes_equals_the_one_process_run_on_four_devices(tmp_path):
    (status0, err0), (status1, err1) = meta_train_processes(tmp_path / "two", 4)
    assert (status0, status1) == (0, 0), err0[-3000:] + err1[-3000:]
    one_process_run(tmp_path / "one", 4)
    assert_same_run(tmp_path / "two", tmp_path / "one")
    assert (tmp_path / "two" / rd.PLOT).exists()  # Process 0 wrote everything; process 1 wrote nothing.


def test_processes_started_with_different_settings_all_stop_with_an_error(tmp_path):
    port = free_port()
    commands = [
        [sys.executable, "-m", "l2l_jax", "meta-train", *RUN, "--meta-steps", "2", "--seed", str(i)]
        + ["--run-dir", str(tmp_path / "run"), "--coordinator", f"127.0.0.1:{port}"]
        + ["--num-processes", "2", "--process-id", str(i)]
        for i in range(2)
    ]
    for status, _, err in run_job(commands, timeout=120):
        assert status == 2, err[-3000:]
        assert "process(es) [1] of the job were started with other settings than process 0" in err
    assert not (tmp_path / "run").exists()


def test_a_job_stops_together_on_sigterm_and_resumes_after_a_process_is_killed(tmp_path):
    run = tmp_path / "two"
    # SIGTERM to process 1 after step 3: both save step 3 and exit 143.
    results = meta_train_processes(run, 6, {1: "3:SIGTERM"})
    assert [status for status, _ in results] == [143, 143], results[0][1][-3000:] + results[1][1][-3000:]
    assert rd.read_metrics(run / rd.METRICS)[-1]["step"] == 3
    shutil.copytree(run, tmp_path / "copy")
    # Process 1 killed after step 5: the job is torn down; the last checkpoint is step 4's.
    results = meta_train_processes(run, 6, {1: "5:SIGKILL"})
    assert results[1][0] == -signal.SIGKILL
    assert results[0][0] == 2 and "did a process of the job stop?" in results[0][1], results[0][1][-3000:]
    assert rd.read_metrics(run / rd.METRICS)[-1]["step"] >= 4
    # Started again, the job resumes and finishes the run an uninterrupted one-process run gives.
    results = meta_train_processes(run, 6)
    assert [status for status, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    one_process_run(tmp_path / "one", 6)
    assert_same_run(run, tmp_path / "one")
    # The checkpoint is one process's format: the copy from step 3 resumes in one process too.
    one_process_run(tmp_path / "copy", 6)
    assert_same_run(tmp_path / "copy", tmp_path / "one")
