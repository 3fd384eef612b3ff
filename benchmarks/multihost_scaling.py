"""How meta-training over several hosts would scale: what crosses between processes, against a meta-step.

Meta-training over ``jax.distributed`` processes splits each meta-step's tasks over the
processes' devices; the processes exchange all-reduces of the meta-gradient (φ's size,
float32) and a few scalars (the meta-loss, the stop agreement). No cluster is reachable
here, so this script measures the parts on this machine and estimates the rest:

* φ's size for each shipped optimizer;
* one all-reduce of that many float32 between 2 processes (gloo over loopback),
  median of ``--repeats`` after warm-up calls, from a second pass over the sizes;
* the same small meta-training run (the quadratic task, 4 tasks, the LSTM optimizer)
  as one process with 2 devices and as 2 processes with 1 device each, on the same
  cores, for PES and truncated BPTT at two truncations K, timed from one meta-step to
  the next (one step per compiled call, so each includes the processes' agreement on
  stopping): the extra seconds per meta-step are what crossing processes costs in
  this implementation (PES: one all-reduce of φ per meta-step; TBPTT: XLA reduces φ's
  gradient inside the backward loop, one all-reduce per inner step);
* the estimate for PES: a ring all-reduce over P hosts moves 2 (P - 1) / P times φ's
  bytes per host, so at a network bandwidth of W bytes/s a meta-step of t seconds
  (each host's share of the tasks) takes t + the measured overhead + that transfer;
  its efficiency is t over that sum.

    python benchmarks/multihost_scaling.py

Results go to ``benchmarks/results/multihost_scaling_<platform>.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import harness
import numpy as np

#: Meta-step times (s) to estimate for.
STEP_TIMES = (0.01, 0.05, 0.2, 1.0)
BANDWIDTHS_GBIT = (1, 10, 100)
HOSTS = (2, 8, 64)
RUN = {"task": "quadratic", "batch_size": 4, "validate_every": 0}
#: (estimator, truncation K) of the small runs.
SMALL_RUNS = (("pes", 5), ("pes", 20), ("tbptt", 5), ("tbptt", 20))


def child(mode: str, process_id: int, processes: int, port: int, steps: int, sizes: list[int], repeats: int) -> None:
    """One process of the measurement: prints a ``RESULT`` JSON line.

    ``mode``: ``allreduce``, or ``ESTIMATOR:K`` for a small meta-training run.
    """
    import jax

    if processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=processes, process_id=process_id)
    if mode == "allreduce":
        print("RESULT" + json.dumps(all_reduce_seconds(sizes, repeats)), flush=True)
        return
    from l2l_jax.meta import MetaTrainConfig, meta_train

    estimator, k = mode.split(":")
    config = MetaTrainConfig(num_meta_steps=steps, estimator=estimator, truncation=int(k), horizon=4 * int(k), **RUN)
    ticks: list[float] = []  # The loop's whole iterations: the call, its metrics, the stop agreement.
    meta_train(config, progress=False, on_step=lambda step, row: ticks.append(time.perf_counter()))
    seconds = np.diff(ticks[1:])  # After the compiling step.
    print("RESULT" + json.dumps({"seconds_per_meta_step": float(np.median(seconds))}), flush=True)


def all_reduce_seconds(sizes: list[int], repeats: int) -> dict[str, float]:
    """Median seconds of one all-reduce of ``n`` float32 over every process's device, for each ``n``."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((jax.device_count(),), ("p",), devices=jax.devices())
    out = {}
    for n in [*sizes, *sizes]:  # Two passes; the second's figures are kept (the first warms gloo's paths).
        local = np.ones((1, n), np.float32)
        x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("p")), local)
        reduce = jax.jit(lambda x: jnp.sum(x, axis=0), out_shardings=NamedSharding(mesh, P()))
        for _ in range(5):
            reduce(x).block_until_ready()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            reduce(x).block_until_ready()
            times.append(time.perf_counter() - t0)
        out[str(n)] = float(np.median(times))
    return out


def launch(mode: str, processes: int, steps: int, sizes: list[int], repeats: int) -> list[dict]:
    """Runs ``processes`` children of one job (1 fake CPU device each; 2 for a lone process); their results."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    devices = 2 if processes == 1 else 1
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    args = [str(steps), ",".join(map(str, sizes)), str(repeats)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", mode, str(i), str(processes), str(port), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                sys.exit(f"a measuring process failed:\n{err[-3000:]}")
            results.append(json.loads(out.split("RESULT", 1)[1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return results


def phi_sizes() -> dict[str, int]:
    """φ's number of entries for each shipped optimizer."""
    from l2l_jax import pretrained

    return {
        name: harness.num_params(pretrained.load_meta_params(name, allow_untrained=True)[1])
        for name in pretrained.available()
    }


def estimate(phi_bytes: int, overhead: float) -> list[dict]:
    """Efficiency t / (t + overhead + ring all-reduce time) per meta-step time, bandwidth and host count."""
    rows = []
    for hosts in HOSTS:
        for gbit in BANDWIDTHS_GBIT:
            transfer = 2 * (hosts - 1) / hosts * phi_bytes / (gbit * 1e9 / 8)
            for t in STEP_TIMES:
                rows.append(
                    {
                        "hosts": hosts,
                        "gbit_per_s": gbit,
                        "meta_step_s": t,
                        "transfer_s": transfer,
                        "efficiency": t / (t + overhead + transfer),
                    }
                )
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, pid, n, port, steps, sizes, repeats = sys.argv[2:9]
        child(mode, int(pid), int(n), int(port), int(steps), [int(s) for s in sizes.split(",")], int(repeats))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meta-steps", type=harness.count, default=60, help="meta-steps of each small run")
    parser.add_argument("--repeats", type=harness.count, default=50, help="all-reduces timed per size")
    args, results = harness.start(parser, "multihost_scaling_{platform}.json")
    sizes = phi_sizes()
    results.data["phi_entries"] = sizes
    biggest = max(sizes.values())
    reduce = launch("allreduce", 2, 0, sorted(set(sizes.values())), args.repeats)[0]
    results.data["all_reduce_seconds_2_processes"] = reduce
    print(f"phi entries: {sizes}")
    print(f"one all-reduce over 2 processes (gloo, loopback): { {k: f'{v * 1e3:.3f} ms' for k, v in reduce.items()} }")
    print("| small run | 1 process x 2 devices (ms/meta-step) | 2 processes x 1 device | overhead |")
    print("|---|---|---|---|")
    overheads = {}
    for estimator, k in SMALL_RUNS:
        mode = f"{estimator}:{k}"
        one = launch(mode, 1, args.meta_steps, [0], 1)[0]["seconds_per_meta_step"]
        two = launch(mode, 2, args.meta_steps, [0], 1)[0]["seconds_per_meta_step"]
        overheads[mode] = max(two - one, 0.0)
        row = {"estimator": estimator, "truncation": k, **RUN, "one_process_2_devices_s": one, "two_processes_s": two}
        results.add("small_runs", row)
        print(f"| {estimator}, K = {k} | {one * 1e3:.2f} | {two * 1e3:.2f} | {(two - one) * 1e3:.2f} |")
    overhead = max(v for m, v in overheads.items() if m.startswith("pes:"))
    print(f"PES estimate for the largest phi ({biggest} float32), with its measured overhead {overhead * 1e3:.2f} ms:")
    print("| hosts | Gbit/s | transfer (ms) | " + " | ".join(f"t = {t} s" for t in STEP_TIMES) + " |")
    print("|---" * (3 + len(STEP_TIMES)) + "|")
    rows = estimate(4 * biggest, overhead)
    for i in range(0, len(rows), len(STEP_TIMES)):
        group = rows[i : i + len(STEP_TIMES)]
        cells = " | ".join(f"{r['efficiency']:.3f}" for r in group)
        print(f"| {group[0]['hosts']} | {group[0]['gbit_per_s']} | {group[0]['transfer_s'] * 1e3:.3f} | {cells} |")
    results.data["estimate"] = rows
    results.finish()


if __name__ == "__main__":
    main()
