"""A short soak: ``scripts/soak.py`` for 5 s after a 5 s warm-up at the tests' size, its
defaults (60 s after 20 s) at full size (``GATEWAY_LOAD_SIZE=full``, ``scripts/load.py soak``).

Mixed wrk traffic over /flask/, /django/ and /django/admin/login/ at 64 connections: no
socket error, every response 2xx/3xx, no traceback logged, RSS growth within 10% (after
5 s of warm-up at 128 connections the thread pool has its size: +0.0% to +0.3% here,
where 2 s left it growing, +7%). Needs wrk; skipped without it. Select or leave out with
``-m soak`` / ``-m "not soak"``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.support import ROOT, load_size

pytestmark = [pytest.mark.soak, pytest.mark.server]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install -y wrk)")
def test_soak() -> None:
    seconds, warmup = load_size(ci=(5, 5), full=(60, 20))
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak.py"), "--duration", str(seconds),
         "--warmup", str(warmup), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=seconds + warmup + 150,
    )
    assert result.stdout.strip(), result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=2))
    assert report["problems"] == [], report
    assert report["requests"] > 0
    assert result.returncode == 0, result.stderr
