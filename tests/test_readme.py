"""Every Python block of the README runs as written, each in a fresh process in an empty folder.

The blocks are parametrized by their position, so a block added to the README is run
by this test without any change here; the ones that meta-train are marked ``slow``
(CI's full run executes them). The worked example's block must also print the
numbers the README states.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
TEXT = README.read_text(encoding="utf-8")
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", flags=re.DOTALL | re.MULTILINE)
#: (section heading, source) of every ```python block, in order.
BLOCKS = [
    (re.findall(r"^## (.+)$", TEXT[: match.start()], flags=re.MULTILINE)[-1], match.group(2))
    for match in FENCE.finditer(TEXT)
    if match.group(1).strip() == "python"
]


def block_params() -> list:
    params = []
    for index, (heading, source) in enumerate(BLOCKS):
        marks = [pytest.mark.slow] if "meta_train(" in source else []
        slug = re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")
        params.append(pytest.param(index, marks=marks, id=f"{index}-{slug}"))
    return params


def run_block(source: str, cwd: Path) -> subprocess.CompletedProcess:
    script = cwd / "readme_block.py"
    script.write_text(source, encoding="utf-8")
    return subprocess.run(
        [sys.executable, script.name],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        check=False,  # the test reads the exit status
    )


def test_every_python_looking_block_of_the_readme_is_marked_python_and_found():
    fenced = [m.group(1).strip() for m in FENCE.finditer(TEXT)]
    assert TEXT.count("```") == 2 * len(fenced)  # every fence is opened and closed at the start of a line
    assert not [lang for lang in fenced if lang != "python" and lang.lower() in ("py", "python3", "pycon", "ipython")]
    assert len(BLOCKS) == fenced.count("python") >= 5


@pytest.mark.parametrize("index", block_params())
def test_the_readme_python_block_runs_as_written(index, tmp_path):
    heading, source = BLOCKS[index]
    out = run_block(source, tmp_path)
    assert out.returncode == 0, f"README block {index} (section {heading!r}) failed:\n{out.stderr[-3000:]}"
    if "def meta_loss(phi)" in source:  # the worked example prints what the README says
        numbers = [float(x) for x in re.findall(r"-?\d+\.\d+", out.stdout)]
        assert numbers[0] == pytest.approx(7.29, abs=1e-9)
        assert [round(x, 6) for x in numbers[1:4]] == [-113.4, -5.4, 11.34]
