"""The code is checked as part of the tests: ruff everywhere, strict mypy on gateway/."""

from __future__ import annotations

import shutil
import subprocess
import sys

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
