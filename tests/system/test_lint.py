"""The code is checked as part of the tests: ruff everywhere, strict mypy on gateway/, and the
layers of gateway/ (lint-imports, with the contracts in pyproject.toml). The tests' own
structure (their levels, no test module importing another) is tests/unit/test_levels.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.server


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."], id="ruff"),
        pytest.param([sys.executable, "-m", "mypy"], id="mypy-strict-gateway"),
    ],
)
def test_clean(command: list[str]) -> None:
    tool = command[2]
    if shutil.which(tool) is None and subprocess.run([sys.executable, "-m", tool, "--version"],
                                                    capture_output=True).returncode != 0:
        pytest.skip(f"{tool} is not installed (it is in the test extra)")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_layers_hold() -> None:
    """import-linter's contracts: serve over adapters over core over migration and observe,
    no cycles, no framework in the core, nothing importing the command line."""
    tool = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(tool)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken." in result.stdout

