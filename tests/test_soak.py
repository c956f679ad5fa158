"""A short soak: ``scripts/soak.py`` for 10 s (``GATEWAY_SOAK_SECONDS`` to change).

Mixed wrk traffic over /flask/, /django/ and /django/admin/login/ at 64 connections: no
socket error, every response 2xx/3xx, no traceback logged, RSS growth within 10%. Needs
wrk; skipped without it. Select or leave out with ``-k soak`` / ``-k "not soak"``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.support import ROOT

pytestmark = [pytest.mark.soak, pytest.mark.server]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install -y wrk)")
def test_soak() -> None:
    seconds = float(os.environ.get("GATEWAY_SOAK_SECONDS", "10"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak.py"), "--duration", str(seconds),
         "--warmup", "5", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=seconds + 150,
    )
    assert result.stdout.strip(), result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=2))
    assert report["problems"] == [], report
    assert report["requests"] > 0
    assert result.returncode == 0, result.stderr
