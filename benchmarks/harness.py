"""What the benchmark scripts share: timing, out-of-memory as a result, results files, the machine.

The scripts in this folder import it by name (``import harness``): Python puts a
script's own folder on ``sys.path``. It owns:

* timing: :func:`median_seconds` (warm-up calls, then the median of timed calls);
* out of memory as a result: :func:`measure_unless_out_of_memory`;
* results files: :func:`write_json`, :func:`write_text` (whole or not at all, through
  :func:`l2l_jax.run_directory.write_atomic`) and :class:`Results` (a JSON file
  rewritten after every row, so that a run cut short keeps what it measured);
* the machine: :func:`describe_machine`;
* XLA's memory figures: :func:`compiled_memory`, :func:`device_peak_bytes`;
* the programs that several scripts time or compile: :func:`donated_update`,
  :func:`train_step`, :func:`meta_step_fn`, a run's meta-gradient estimates
  (:func:`run_estimates`), the wide MLP of ``fit_wide_mlp.py``
  (:func:`fit_model`, :func:`fit_optimizer`) and the update's minimal memory traffic
  (:func:`minimal_bytes`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from l2l_jax import pretrained, tasks
from l2l_jax.evaluation import EvalTasks, loss_curves, search_learning_rates
from l2l_jax.meta import estimators as E
from l2l_jax.meta import init_inner, meta_value_and_grad
from l2l_jax.optimizers import lstm
from l2l_jax.optimizers.base import MetaParams
from l2l_jax.run_directory import write_atomic
from l2l_jax.tasks.mnist import MLP, cross_entropy

#: Where the scripts write their results by default.
RESULTS = Path(__file__).resolve().parent / "results"
#: Quarter-decade grid of learning rates the baselines are tuned on (1e-3 to 10).
LR_GRID = tuple(float(x) for x in np.logspace(-3, 1, 17))
#: Inner steps a meta-step unrolls in the paper's MNIST configuration.
TRUNCATION = 20
#: The fit model's learned update is multiplied by this over its width by default.
FIT_SCALE_TIMES_WIDTH = 32.0

Carry = TypeVar("Carry")


# --- the machine -------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else :func:`platform.processor`, else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> str:
    """One line: architecture, CPU model and cores, JAX's devices, the JAX version."""
    devices = jax.devices()
    return (
        f"{platform.machine()} ({cpu_model()}), {os.cpu_count()} CPU cores, "
        f"{len(devices)} x {devices[0].platform}: {devices[0].device_kind}, jax {jax.__version__}"
    )


def platform_name() -> str:
    """The platform of JAX's first device (``"cpu"``, ``"gpu"``, ...): the suffix of default results files."""
    return jax.devices()[0].platform


# --- timing ------------------------------------------------------------------------


def median_seconds(step: Callable[[Carry], Carry], carry: Carry, repeats: int, warmup: int = 1) -> tuple[float, Carry]:
    """Median wall time of ``carry = step(carry)`` over ``repeats`` calls, after ``warmup`` untimed ones.

    Each call is timed until its result is ready (:func:`jax.block_until_ready`), so
    asynchronous dispatch does not hide the work. The carry threads state (donated
    buffers, the optimizer's state) from one call to the next.

    Args:
      step: the function to time, from carry to carry.
      carry: its first argument.
      repeats: timed calls, at least 1.
      warmup: untimed calls before them (compilation, first-touch of memory).

    Returns:
      The median seconds of the timed calls, and the last carry.

    Raises:
      ValueError: if ``repeats`` is below 1 or ``warmup`` below 0.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        carry = jax.block_until_ready(step(carry))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        carry = jax.block_until_ready(step(carry))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), carry


# --- out of memory as a result ----------------------------------------------------


def is_out_of_memory(error: Exception) -> bool:
    """Whether an XLA runtime error is the device running out of memory."""
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def measure_unless_out_of_memory(
    setting: dict[str, Any], measure: Callable[..., dict[str, Any]], *args: Any
) -> dict[str, Any]:
    """``{**setting, **measure(*args)}``, or ``setting`` with ``"out_of_memory"``: the error's first line.

    A benchmark sweeps settings up to the device's limits; the one that does not fit is
    a result, not the end of the run. Other errors propagate.
    """
    try:
        return {**setting, **measure(*args)}
    except jax.errors.JaxRuntimeError as error:
        if not is_out_of_memory(error):
            raise
        return {**setting, "out_of_memory": str(error).strip().splitlines()[0][:500]}


def device_peak_bytes() -> int | None:
    """The device's peak memory in use so far in this process (None where the backend does not say)."""
    stats = jax.devices()[0].memory_stats()
    return None if not stats or "peak_bytes_in_use" not in stats else int(stats["peak_bytes_in_use"])


def compiled_memory(compiled: Any) -> int | None:
    """Arguments + outputs - donated + temporaries of a compiled program, in bytes (None if unknown)."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def gib(num_bytes: int | None) -> float:
    """Bytes in GiB; NaN for an unknown size."""
    return float("nan") if num_bytes is None else num_bytes / 2**30


# --- results files -----------------------------------------------------------------


def write_json(path: Path, data: Any, indent: int = 1) -> None:
    """Writes ``data`` as JSON to ``path``, whole or not at all."""
    write_text(path, json.dumps(data, indent=indent) + "\n")


def write_text(path: Path, text: str) -> None:
    """Writes ``text`` to ``path``, whole or not at all (a temporary file, then a rename)."""
    write_atomic(Path(path), text.encode())


class Results:
    """A results JSON file rewritten after every row: a run cut short keeps what it measured.

    Args:
      path: the file.
      header: fields written before the rows (the machine, the command, ...).
    """

    def __init__(self, path: Path, **header: Any) -> None:
        self.path = Path(path)
        self.data: dict[str, Any] = dict(header)

    def add(self, section: str, row: dict[str, Any]) -> None:
        """Appends ``row`` to the list ``section`` and rewrites the file."""
        self.data.setdefault(section, []).append(row)
        write_json(self.path, self.data)

    def section(self, name: str) -> Callable[[dict[str, Any]], None]:
        """A callback that adds each row it gets to ``name`` (the section exists, empty, from now on)."""
        self.data.setdefault(name, [])
        return functools.partial(self.add, name)

    def finish(self) -> None:
        """Writes the file (also when no row came) and says where."""
        write_json(self.path, self.data)
        print(f"wrote {self.path}", flush=True)


def start(
    parser: argparse.ArgumentParser,
    default_out: str,
    check: Callable[[argparse.Namespace], None] | None = None,
    **header: Any,
) -> tuple[argparse.Namespace, Results]:
    """Parses the command line, prints the machine, opens the results file.

    ``parser`` gets ``--out`` (default ``benchmarks/results/<default_out>``, where
    ``{platform}`` stands for JAX's platform). ``check(args)`` may refuse the options
    (``parser.error``) before anything runs. The file's header is the machine, the
    command and ``header``.
    """
    parser.add_argument("--out", type=Path, default=None, help=f"results file (default: results/{default_out})")
    args = parser.parse_args()
    if check is not None:
        check(args)
    out = args.out or RESULTS / default_out.format(platform=platform_name())
    machine = describe_machine()
    print(machine, flush=True)
    return args, Results(out, machine=machine, command=command(), **header)


def command() -> str:
    """The command line that runs this script, as typed (shell-quoted) from the repository root."""
    script = Path(sys.argv[0]).resolve()
    name = f"benchmarks/{script.name}" if script.parent == RESULTS.parent else sys.argv[0]
    return shlex.join(["python", name, *sys.argv[1:]])


# --- options the scripts share ---------------------------------------------------------


def add_implementation_options(parser: argparse.ArgumentParser, state_dtypes: bool = True) -> None:
    """``--implementations`` (default reference, fused) and ``--state-dtypes`` (default float32, bfloat16)."""
    parser.add_argument("--implementations", nargs="+", default=["reference", "fused"])
    if state_dtypes:
        parser.add_argument("--state-dtypes", nargs="+", default=["float32", "bfloat16"])


def count(text: str) -> int:
    """An option's whole number of at least 1 (an argparse ``type``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive(text: str) -> float:
    """A positive, finite number (an argparse ``type``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def size(text: str) -> float:
    """A number of parameters of at least 1, written e.g. ``1e6`` (an argparse ``type``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def add_size_options(parser: argparse.ArgumentParser, repeats: bool = True) -> None:
    """``--sizes`` (parameters of the flat vectors, default 1e6 3e6) and ``--repeats`` (timed calls, default 10)."""
    parser.add_argument("--sizes", type=size, nargs="+", default=[1e6, 3e6], help="parameters, e.g. 1e6")
    if repeats:
        parser.add_argument("--repeats", type=count, default=10, help="timed calls, after one warm-up call")


# --- programs several scripts time or compile --------------------------------------


def num_params(tree: Any) -> int:
    """Number of scalars in a tree of arrays (or shape-dtype structs)."""
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))


def learned(implementation: str, state_dtype: str = "float32") -> optax.GradientTransformation:
    """The paper's LSTM optimizer, freshly initialised, as an optax optimizer."""
    opt = lstm(implementation=implementation, state_dtype=state_dtype)
    return opt.as_optax(opt.init(jax.random.key(0)))


def donated_update(tx: optax.GradientTransformation) -> Callable:
    """One jitted update + apply, params and state donated: ``(params, state, grads) -> (params, state)``."""

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def train_step(model: Any, tx: Any, x: jax.Array, y: jax.Array) -> Callable:
    """One jitted cross-entropy training step on a fixed batch, params and state donated.

    Returns ``(params, state) -> (params, state, loss)``.
    """

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state):
        loss, grads = jax.value_and_grad(lambda p: cross_entropy(model.apply({"params": p}, x), y))(params)
        updates, state = tx.update(grads, state, params, value=loss)
        return optax.apply_updates(params, updates), state, loss

    return step


def state_bytes_per_param(implementation: str, state_dtype: str) -> int:
    """Bytes of the paper's LSTM state (h and c of every layer) per parameter, stored in ``state_dtype``."""
    opt = lstm(implementation=implementation, state_dtype=state_dtype)
    return 2 * opt.num_layers * opt.hidden_size * jnp.dtype(state_dtype).itemsize


def minimal_bytes(num_parameters: int, state_bytes: int) -> int:
    """The update's least memory traffic: read gradient and parameters, write parameters (float32), read and write the state."""
    return num_parameters * (3 * 4 + 2 * state_bytes)


def fit_model(num_parameters: float, depth: int) -> MLP:
    """A sigmoid MLP of ``depth`` layers of equal width (a multiple of 8) with about ``num_parameters`` parameters.

    Its input has the width of its layers, so that the parameters are ``depth`` square
    matrices plus the 10 logits.
    """
    width = max(8, round((num_parameters / depth) ** 0.5 / 8) * 8)
    return MLP(hidden=(width,) * depth, activation="sigmoid")


def fit_optimizer(implementation: str, state_dtype: str | None, update_scale: float) -> optax.GradientTransformation:
    """``optax.adam(1e-3)`` for ``"adam"``, else the shipped ``mnist-lstm`` with its update times ``update_scale``.

    ``mnist-lstm`` was meta-trained on 20 hidden units; its per-coordinate steps do not
    shrink with the width, so on wide layers they are scaled down.
    """
    if implementation == "adam":
        return optax.adam(1e-3)
    base, phi = pretrained.load_meta_params("mnist-lstm")
    tx = lstm(**{**base.config(), "implementation": implementation, "state_dtype": state_dtype}).as_optax(phi)
    return optax.chain(tx, optax.scale(update_scale))


def meta_step_fn(
    implementation: str,
    remat: bool | str,
    num_steps: int,
    tasks_per_chunk: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> tuple[Callable, Callable]:
    """The paper's MNIST meta-step, jitted with its buffers donated, and its inputs.

    ``meta_value_and_grad`` over ``num_steps`` inner steps and an Adam step on φ: the
    computation of ``meta_train``'s step. MNIST from ``data_dir``.

    Returns:
      ``step(phi, meta_state, inner) -> (phi, meta_state, inner, loss)`` and
      ``setup(batch_size) -> (phi, meta_state, inner)``.
    """
    optimizer = lstm(implementation=implementation)
    family = tasks.get("mnist", data_dir=None if data_dir is None else str(data_dir))
    meta_tx = optax.adam(1e-3)

    @functools.partial(jax.jit, donate_argnums=(1, 2))
    def step(phi, meta_state, inner):
        (loss, (inner, _)), grads = meta_value_and_grad(
            phi, optimizer, family, inner, num_steps, remat=remat, tasks_per_chunk=tasks_per_chunk
        )
        updates, meta_state = meta_tx.update(grads, meta_state, phi)
        return optax.apply_updates(phi, updates), meta_state, inner, loss

    def setup(batch_size: int):
        phi = optimizer.init(jax.random.key(0))
        inner = init_inner(optimizer, phi, family, jax.random.key(1), batch_size)
        return phi, meta_tx.init(phi), inner

    return step, setup


def run_estimates(
    est: E.GradientEstimator, meta_params: MetaParams, state: Any, key: jax.Array, num_truncations: int
) -> tuple[Any, jax.Array, MetaParams]:
    """``num_truncations`` consecutive estimates of ``est`` from ``state``, as one ``lax.fori_loop``.

    Estimate i draws its ES/PES perturbations with ``fold_in(key, i)`` and hands its
    state to estimate i + 1. From ``est.init``, ``num_truncations = T / K`` estimates
    cover a whole run of T steps, and for PES the sum of their gradients is an unbiased
    estimate of the gradient of the whole run's Gaussian-smoothed loss.

    Args:
      est: the estimator (``l2l_jax.meta.estimators.get``).
      meta_params: φ.
      state: the estimator's state to start from (e.g. ``est.init(φ, key)``).
      key: the perturbations' key.
      num_truncations: how many estimates (truncations).

    Returns:
      ``(state, loss, grad)``: the state after the last estimate, and the sums of the
      estimates' meta-losses and of their meta-gradients (a tree of φ's shape).
    """

    def body(i: jax.Array, carry: tuple[Any, jax.Array, MetaParams]) -> tuple[Any, jax.Array, MetaParams]:
        state, loss, grad = carry
        r = est.estimate(meta_params, state, jax.random.fold_in(key, i))
        return r.state, loss + r.meta_loss, jax.tree.map(jnp.add, grad, r.meta_grad)

    zeros = jax.tree.map(jnp.zeros_like, meta_params)
    return jax.lax.fori_loop(0, num_truncations, body, (state, jnp.zeros(()), zeros))


def add_data_dir_option(parser: argparse.ArgumentParser) -> None:
    """``--data-dir``: where the MNIST files are."""
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder holding the MNIST files (default: $L2L_JAX_DATA_DIR, else the user cache directory)",
    )


def effective_chunkings(chunkings: list[int | None], batch_size: int) -> list[int | None]:
    """The distinct ways to unroll B tasks: a chunk of B or more is all at once; one that does not divide B is skipped."""
    out: list[int | None] = []
    for c in chunkings:
        c = None if c is None or c >= batch_size else c
        if (c is None or batch_size % c == 0) and c not in out:
            out.append(c)
    return out


def chunk_size(text: str) -> int | None:
    """``--tasks-per-chunk``'s values: ``"all"`` (None) or a positive number of tasks."""
    if text == "all":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'all' nor a positive number of tasks")
    return int(text)


def add_batch_options(parser: argparse.ArgumentParser) -> None:
    """``--batch-sizes`` (tasks per meta-step), ``--tasks-per-chunk`` and ``--data-dir``."""
    parser.add_argument("--batch-sizes", type=count, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--tasks-per-chunk",
        nargs="+",
        type=chunk_size,
        default=[None, 1],
        help="'all' (one vmap over the batch) and/or chunk sizes; a size >= B counts as 'all', one not dividing B "
        "is skipped (default: all 1)",
    )
    add_data_dir_option(parser)


def stderr(values: np.ndarray) -> float:
    """The standard error of the mean of ``values`` (one per run): their standard deviation over √(count)."""
    return float(np.std(values) / np.sqrt(len(values)))


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of ``a - b`` and its standard error: the paired comparison of two optimizers on the same runs."""
    diff = np.asarray(a) - np.asarray(b)
    return float(np.mean(diff)), stderr(diff)


def paired_rows(
    task: str, curves: dict[Any, np.ndarray], steps: Sequence[int], key: str, reference: Any, difference: str
) -> list[dict[str, Any]]:
    """One row per entry of ``curves`` (runs x steps) and step: its mean loss ± s.e., paired with ``reference``'s.

    A row is ``{"task", key: name, "steps", "inits", "mean", "stderr"}``, and for every name
    but ``reference`` also ``difference`` and ``difference + "_stderr"``: the name's loss
    minus ``reference``'s on the same runs (`paired_difference`).
    """
    rows = []
    for name, curve in curves.items():
        for s in steps:
            row = {"task": task, key: name, "steps": s, "inits": len(curve)}
            row.update(mean=float(np.mean(curve[:, s])), stderr=stderr(curve[:, s]))
            if name != reference:
                row[difference], row[f"{difference}_stderr"] = paired_difference(curve[:, s], curves[reference][:, s])
            rows.append(row)
    return rows


def tune_learning_rate(
    make_tx: Callable[[Any], optax.GradientTransformation],
    family: Any,
    tune: EvalTasks,
    test: EvalTasks,
    horizons: list[int] | tuple[int, ...],
    grid: tuple[float, ...] = LR_GRID,
    coarse_to_fine: bool = False,
) -> dict[int, tuple[float, np.ndarray]]:
    """A baseline tuned separately for each horizon, then run on held-out tasks.

    The best rate of each horizon on the ``tune`` tasks is
    :func:`l2l_jax.evaluation.search_learning_rates`'s (the lowest mean loss at that
    step; a rate with a non-finite loss there never wins; ``coarse_to_fine`` searches
    the grid coarse to fine). The best rate then runs on the ``test`` tasks (once per
    distinct rate).

    Returns:
      ``{horizon: (best_rate, test_curves)}``; the curves have shape
      ``(test tasks, max(horizons) + 1)``.
    """
    tunings = search_learning_rates(make_tx, family, tune, horizons, grid, coarse_to_fine)
    test_curves: dict[float, np.ndarray] = {}
    out = {}
    for steps in horizons:
        best = tunings[steps].best_lr
        if best not in test_curves:
            test_curves[best] = loss_curves(make_tx, jnp.asarray(best, jnp.float32), family, test, max(horizons))
        out[steps] = (best, test_curves[best])
    return out
