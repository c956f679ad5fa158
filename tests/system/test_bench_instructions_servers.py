"""bench/instructions.py's scenarios run as the bench runs them, in a process of their own:
each serves its requests between its two marks (tests/unit/test_bench_instructions.py
has the rest)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench import instructions
from tests.support import ROOT

pytestmark = pytest.mark.server


def test_every_scenario_serves_between_its_marks() -> None:
    code = ("import os, bench.instructions as b\n"
            "marks = []\n"
            "b.mark = lambda: marks.append(1)\n"
            "for name in b.SCENARIOS:\n"
            "    b.inner(name, 3)\n"
            "    print(name, len(marks))\n"
            "    marks.clear()\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:-1] == [f"{name} 2" for name in instructions.SCENARIOS]
