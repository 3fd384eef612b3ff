"""The README's worked-example snippet runs and prints what the README says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_worked_example_snippet(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (snippet,) = [b for b in blocks if "def meta_loss(phi)" in b]
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    # A subprocess: the snippet turns on float64 globally.
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"}
    )
    assert out.returncode == 0, out.stderr
    numbers = [float(x) for x in re.findall(r"-?\d+\.\d+", out.stdout)]
    assert numbers[0] == 7.29 or abs(numbers[0] - 7.29) < 1e-9
    assert [round(x, 6) for x in numbers[1:4]] == [-113.4, -5.4, 11.34]
