"""Every Python example of the README and of the docs site runs as written, and the site builds.

Each ```python block runs in a fresh process in an empty folder. The blocks are
parametrized by their position, so a block added to the README or to a page under
docs/ is run by these tests without any change here; the ones that meta-train are
marked ``slow`` (CI's full run executes them). The worked example's block must also
print the numbers the README states. A docs block that appears verbatim in the README
is run once, as a README block.

The strict site build fails on a broken link, a page missing from the navigation, or a
docstring the API reference cannot parse; it needs the ``docs`` extra
(``pip install -e ".[docs]"``) and is skipped without it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", flags=re.DOTALL | re.MULTILINE)
#: (section heading, source) of every ```python block, in order.
BLOCKS = [
    (re.findall(r"^## (.+)$", TEXT[: match.start()], flags=re.MULTILINE)[-1], match.group(2))
    for match in FENCE.finditer(TEXT)
    if match.group(1).strip() == "python"
]
#: (page, source) of every ```python block of the docs pages that is not a README block.
DOCS_BLOCKS = [
    (page.relative_to(DOCS).as_posix(), match.group(2))
    for page in sorted(DOCS.rglob("*.md"))
    for match in FENCE.finditer(page.read_text(encoding="utf-8"))
    if match.group(1).strip() == "python" and match.group(2) not in {source for _, source in BLOCKS}
]


def block_params(blocks: list[tuple[str, str]]) -> list:
    params = []
    for index, (place, source) in enumerate(blocks):
        marks = [pytest.mark.slow] if "meta_train(" in source else []
        slug = re.sub(r"[^a-z0-9]+", "-", place.lower()).strip("-")
        params.append(pytest.param(index, marks=marks, id=f"{index}-{slug}"))
    return params


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**os.environ, **env},
        check=False,  # the test reads the exit status
    )


def run_block(source: str, cwd: Path) -> subprocess.CompletedProcess:
    script = cwd / "readme_block.py"
    script.write_text(source, encoding="utf-8")
    return run([sys.executable, script.name], cwd, JAX_PLATFORMS="cpu")


def test_every_python_looking_block_of_the_readme_is_marked_python_and_found():
    fenced = [m.group(1).strip() for m in FENCE.finditer(TEXT)]
    assert TEXT.count("```") == 2 * len(fenced)  # every fence is opened and closed at the start of a line
    assert not [lang for lang in fenced if lang != "python" and lang.lower() in ("py", "python3", "pycon", "ipython")]
    assert len(BLOCKS) == fenced.count("python") >= 5


@pytest.mark.parametrize("index", block_params(BLOCKS))
def test_the_readme_python_block_runs_as_written(index, tmp_path):
    heading, source = BLOCKS[index]
    out = run_block(source, tmp_path)
    assert out.returncode == 0, f"README block {index} (section {heading!r}) failed:\n{out.stderr[-3000:]}"
    if "def meta_loss(phi)" in source:  # the worked example prints what the README says
        numbers = [float(x) for x in re.findall(r"-?\d+\.\d+", out.stdout)]
        assert numbers[0] == pytest.approx(7.29, abs=1e-9)
        assert [round(x, 6) for x in numbers[1:4]] == [-113.4, -5.4, 11.34]


@pytest.mark.parametrize("index", block_params(DOCS_BLOCKS))
def test_the_docs_python_block_runs_as_written(index, tmp_path):
    page, source = DOCS_BLOCKS[index]
    out = run_block(source, tmp_path)
    assert out.returncode == 0, f"block {index} of docs/{page} failed:\n{out.stderr[-3000:]}"


def test_the_docs_quote_no_path_outside_the_checkout():
    assert [p.name for p in DOCS.rglob("*.md") if "../shared" in p.read_text(encoding="utf-8")] == []


def test_the_docs_site_builds_in_strict_mode(tmp_path):
    pytest.importorskip("mkdocs", reason='the docs extra is not installed: pip install -e ".[docs]"')
    pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed")
    out = run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")], ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "optimizers" / "index.html").is_file()
