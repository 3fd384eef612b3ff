"""Under pytest the notebooks run on the MNIST test fixture, never on the user's data.

Their kernels inherit the environment that the repository's ``conftest.py`` sets: ``$L2L_JAX_DATA_DIR`` names
``tests/fixtures/mnist`` (300 real test images), so the notebooks neither download
nor read a data directory of the user's, and the user cache directory
(``$XDG_CACHE_HOME``) is an empty temporary folder.

Notebooks 02, 03 and 05 meta-train and tune baselines (at smoke sizes under pytest: see
``$L2L_JAX_NOTEBOOK_SMOKE`` in the repository's ``conftest.py``) and 04 trains Flax
models: each still takes a quarter of a minute to over a minute, so they are marked
``slow`` (CI's full run executes them, as does ``pytest -m slow``; by default
``tests/test_specialise.py`` tests 05's recipe and ``tests/test_flax_dropin.py`` 04's
loops); the worked example (01) runs by default.

The notebooks' jupytext sources (``*.py`` beside this file) are not test modules: pytest does not
collect them (``--doctest-modules`` would import, and so run, each of them in the test
process). ``tests/test_notebooks_in_sync.py`` checks that they match the notebooks.
"""

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SLOW = {"02_quadratics.ipynb", "03_mnist.ipynb", "04_flax_dropin.ipynb", "05_specialise.ipynb"}
collect_ignore = sorted(p.name for p in HERE.glob("*.py") if p.name != "conftest.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent == HERE and item.path.name in SLOW:
            item.add_marker(pytest.mark.slow)
