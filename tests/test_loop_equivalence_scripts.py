"""The whole-loop equivalence scripts start without the reference sources: their options parse, and a
reference root that lacks the reference code is refused by name before any model is built."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("script", ["mirage_loop_equivalence.py"])
def test_help_names_the_options(script):
    out = run(script, "--help")
    assert out.returncode == 0, out.stderr
    for option in ("--reference-root", "--device", "--tolerance", "--stub-missing", "--out"):
        assert option in out.stdout


def test_mirage_loop_refuses_a_root_without_the_reference(tmp_path):
    out = run("mirage_loop_equivalence.py", "--reference-root", str(tmp_path), "--device", "cpu")
    assert out.returncode != 0
    assert "mirage_pipeline.py is missing" in out.stderr and "FileNotFoundError" in out.stderr


def test_mirage_loop_needs_two_chunks(tmp_path):
    out = run("mirage_loop_equivalence.py", "--reference-root", str(tmp_path), "--chunks", "1")
    assert out.returncode == 2 and "--chunks must be at least 2" in out.stderr
