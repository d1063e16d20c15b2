"""The code type-checks under mypy --strict (configuration in pyproject.toml, [tool.mypy])."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mypy() -> str:
    # Beside the interpreter first: the venv's mypy sees the venv's packages and stubs.
    found = str(Path(sys.executable).parent / "mypy")
    if not Path(found).exists():
        found = shutil.which("mypy") or found
    assert Path(found).exists(), "mypy not installed (pip install '.[test]')"
    return found


def test_mypy() -> None:
    run = subprocess.run([mypy()], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
