"""The package is fully typed: mypy --strict passes on it (py.typed promises this), and on
the examples and the benchmark that use it."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The package, and the examples and benchmark that show how it is used.
CHECKED = [ROOT / "src" / "herald_client", ROOT / "examples", ROOT / "bench"]


def test_mypy_strict_passes() -> None:
    pytest.importorskip("mypy")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", *map(str, CHECKED)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_examples_and_benchmark_compile_on_this_python() -> None:
    """mypy parses with its own grammar; this interpreter must accept them too."""
    import py_compile

    for directory in CHECKED[1:]:
        for path in directory.glob("*.py"):
            py_compile.compile(str(path), doraise=True, cfile=str(Path(tempfile.gettempdir()) / f"{path.stem}.pyc"))
