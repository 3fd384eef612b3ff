"""Test set-up for every test path (tests, doctests, notebooks): CPU only, no data from outside the checkout.

Tests never read MNIST from the user's data directory or cache, nor download it: the
environment points ``$L2L_JAX_DATA_DIR`` at ``tests/fixtures/mnist`` (300 real test
images), ``$L2L_JAX_NOTEBOOK_SMOKE`` asks notebooks that take minutes for their
smoke-sized budgets, and the user cache directory (``$XDG_CACHE_HOME``) points at an
empty temporary folder, for this process and the processes it starts (pytest-xdist workers, benchmark
scripts, notebook kernels). Tests of the lookup itself change these variables with
``monkeypatch``.

XLA compiles the tests' programs without LLVM's optimisations and without its fusion
emitters (set ``L2L_JAX_TEST_OPTIMISED=1`` to test the programs users run). Many tests
compile the same programs (each ``meta_train`` call traces anew), so JAX's persistent
compilation cache is on, in that temporary folder: it lives for one test session and is
shared by its processes (or in ``$JAX_COMPILATION_CACHE_DIR``, if set).
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

MNIST_FIXTURE = Path(__file__).resolve().parent / "tests" / "fixtures" / "mnist"
os.environ["L2L_JAX_DATA_DIR"] = str(MNIST_FIXTURE)
os.environ["L2L_JAX_NOTEBOOK_SMOKE"] = "1"  # Notebooks that meta-train for minutes run at smoke size.
_PREFIX = "l2l-jax-test-cache-"
_cache = Path(os.environ.get("XDG_CACHE_HOME") or ".")
if not (_cache.name.startswith(_PREFIX) and _cache.is_dir()):  # else made by the process that started this one
    _cache = Path(tempfile.mkdtemp(prefix=_PREFIX))
    os.environ["XDG_CACHE_HOME"] = str(_cache)
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
# A cache directory given in the environment is used (CI shares one between its default and slow runs).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_cache / "jax-compilation-cache"))
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
# XLA's CPU backend compiles the tests' programs without LLVM's optimisations and with its
# older emitters instead of the fusion emitters, which compile faster and compute the same
# values up to float rounding (docs/guide/quickstart.md). L2L_JAX_TEST_OPTIMISED=1 tests
# the programs that users run.
_NO_FUSION_EMITTERS = "--xla_cpu_use_fusion_emitters=false"


def _xla_knows(flag: str) -> bool:
    """Whether this jaxlib's XLA accepts ``flag`` (it aborts at start-up on a flag it does not know)."""
    probe = [sys.executable, "-c", "import jax; jax.devices('cpu')"]
    env = {**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(probe, env=env, capture_output=True, check=False, timeout=300).returncode == 0


# Once per session: the processes started from this one inherit the flags and skip this.
if os.environ.get("L2L_JAX_TEST_OPTIMISED") != "1" and "xla_backend_optimization_level" not in os.environ.get(
    "XLA_FLAGS", ""
):
    _flags = ["--xla_backend_optimization_level=0"]
    if _xla_knows(_NO_FUSION_EMITTERS):
        _flags.append(_NO_FUSION_EMITTERS)
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *_flags]).strip()
if "jax" in sys.modules:  # imported before this file (e.g. by a plugin): the variables came too late
    sys.modules["jax"].config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    sys.modules["jax"].config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
