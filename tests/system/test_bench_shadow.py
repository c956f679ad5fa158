"""bench/shadow.py, the benchmark of shadow comparison (issue 12), runs end to end with tiny
settings: two real servers (shadowing off and on), wrk at saturation, the open-loop client
at half capacity, and the shadow counts read from the migration page. It checks the output
and the accounting, not the timings (about 10 s on the project's 2-core machine). The
benchmark itself, with its figures, is ``.venv/bin/python bench/shadow.py`` (bench/README.md)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = [pytest.mark.server, pytest.mark.soak,
              pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install -y wrk)")]

EXPECTED = [
    r"^Capacity \(off, wrk -c32\): \d+ req/s; half capacity: \d+ req/s\.$",
    r"^round 1  saturation  off +\d+ req/s  p50 +[\d.]+ ms",
    r"^round 1  saturation  on +\d+ req/s  p50 +[\d.]+ ms .*\| shadows: compared \d+, dropped \d+, unaccounted -?\d+",
    r"^round 1  half        off +\d+ req/s  p50 +[\d.]+ ms .*pacer late p99",
    r"^round 1  half        on +\d+ req/s  p50 +[\d.]+ ms .*\| shadows: compared \d+, dropped \d+, unaccounted 0 ",
    r"^\| half capacity \(\d+ req/s\) p50 latency, ms +\| +[\d.]+ \| +[\d.]+ \| +[\d.]+x \| <= 1\.10x \| (yes|NO) ",
    r"^\| saturation throughput, req/s +\| +[\d.]+ \| +[\d.]+ \| +[\d.]+x \| >= 0\.95x \| (yes|NO) ",
    r"^Target: p50 at half capacity within 10% of off: (met|NOT met) \([\d.]+x\)\.$",
    r"^Target: throughput at saturation >= 0\.95x off: (met|NOT met) \([\d.]+x\)\.$",
    r"^Target: shadows dropped and counted at saturation: (met|NOT met) ",
]


def test_the_shadow_benchmark_runs_and_accounts_for_every_shadow(tmp_path: Path) -> None:
    raw = tmp_path / "raw.json"
    result = subprocess.run(
        [sys.executable, "bench/shadow.py", "--rounds", "1", "--seconds", "1", "--warmup", "0", "--retries", "0",
         "--shadow-cpu", "100",  # the pool drains its queue at once: the test checks accounting, not speed
         "--json", str(raw)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for pattern in EXPECTED:
        assert re.search(pattern, result.stdout, re.MULTILINE), f"no line matches {pattern!r}:\n{result.stdout}"
    assert "error(s) logged" not in result.stdout, result.stdout
    records = json.loads(raw.read_text())["records"]
    assert sorted((r["kind"], r["mode"]) for r in records) == [
        ("half", "off"), ("half", "on"), ("saturation", "off"), ("saturation", "on")]
    for record in records:
        assert (record["failed"], record["errors"]) == (0, 0), record
        if record["mode"] == "on":
            # Every answer the server handed over is compared or dropped (counted): none is lost.
            assert record["compared"] + record["dropped"] > 0, record
            assert abs(record["unaccounted"]) <= record["slack"], record
