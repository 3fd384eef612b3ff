"""The notebooks' jupytext sources and the committed notebooks hold the same cells.

Each ``notebooks/NN_name.py`` (jupytext percent format, paired ``ipynb,py:percent``) is
the source of ``notebooks/NN_name.ipynb``. Editing one side only fails these tests until
``jupytext --sync notebooks/*.py`` brings the other side up to date. Executing the
notebooks is nbmake's part (see ``notebooks/conftest.py``).
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PAIRING = "ipynb,py:percent"
SYNC = "run `jupytext --sync notebooks/*.py` (or edit the notebook in Jupyter with jupytext)"


def _sources() -> list[Path]:
    return sorted(p for p in NOTEBOOKS.glob("*.py") if p.name != "conftest.py")


def _cells(path: Path) -> list[tuple[str, str]]:
    """The cells of a notebook or a jupytext source: their types and sources, nothing else."""
    return [(cell.cell_type, cell.source) for cell in jupytext.read(path).cells]


def test_every_notebook_has_a_source_and_every_source_a_notebook():
    notebooks = {p.stem for p in NOTEBOOKS.glob("*.ipynb")}
    sources = {p.stem for p in _sources()}
    assert notebooks, f"no notebooks in {NOTEBOOKS}"
    assert notebooks - sources == set(), f"notebooks without a .py source: {sorted(notebooks - sources)}"
    assert sources - notebooks == set(), f"sources without a notebook: {sorted(sources - notebooks)}; {SYNC}"


@pytest.mark.parametrize("source", _sources(), ids=lambda p: p.name)
def test_source_and_notebook_have_the_same_cells(source: Path):
    notebook = source.with_suffix(".ipynb")
    if not notebook.exists():
        pytest.fail(f"{source.name} has no notebook {notebook.name}; {SYNC}")
    source_cells, notebook_cells = _cells(source), _cells(notebook)
    assert [kind for kind, _ in source_cells] == [kind for kind, _ in notebook_cells], (
        f"{source.name} and {notebook.name} differ in their cells; {SYNC}"
    )
    for i, (from_source, from_notebook) in enumerate(zip(source_cells, notebook_cells)):
        assert from_source == from_notebook, f"cell {i} differs between {source.name} and {notebook.name}; {SYNC}"


@pytest.mark.parametrize("source", _sources(), ids=lambda p: p.name)
def test_source_is_paired_with_its_notebook(source: Path):
    for path in (source, source.with_suffix(".ipynb")):
        if path.exists():
            formats = jupytext.read(path).metadata.get("jupytext", {}).get("formats")
            assert formats == PAIRING, f"{path.name} is paired as {formats!r}, not {PAIRING!r}"


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(notebook: Path):
    cells = [cell for cell in jupytext.read(notebook).cells if cell.cell_type == "code"]
    assert cells, f"{notebook.name} has no code cell"
    for i, cell in enumerate(cells):
        executed = bool(cell.get("outputs")) or cell.get("execution_count") is not None
        assert not executed, f"code cell {i} of {notebook.name} has outputs; clear them before committing"
