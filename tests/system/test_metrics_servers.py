"""`/metrics` on real servers (tests/integration/test_metrics.py has the rest, in process): a
scrape during load on several workers adds up, `gateway serve` makes and removes its own
directory, and gunicorn serves it as docs/deploying.md says."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ROOT, Samples, ServerProcess, connections, free_port, samples, server_env, until, value

pytestmark = pytest.mark.server


COUNTING = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) sent = 0; got = 0; bad = 0 end
function request() sent = sent + 1; return wrk.request() end
function response(status, headers, body)
  got = got + 1
  if status ~= 200 then bad = bad + 1 end
end
function done(summary, latency, requests)
  local s, g, b = 0, 0, 0
  for _, t in ipairs(threads) do s = s + t:get("sent"); g = g + t:get("got"); b = b + t:get("bad") end
  -- wrk calls request() once more on its first thread, to check the script before the
  -- run (script_verify_request in wrk.c): that request is never sent.
  io.write(string.format("SENT %d GOT %d BAD %d\\n", s - 1, g, b))
end
"""

def booted(directory: Path, workers: int) -> None:
    """Wait until ``workers`` processes have made their metrics (each makes its files as it
    builds the gateway)."""
    deadline = time.monotonic() + 30
    while len({n.rsplit("_", 1)[1] for n in os.listdir(directory) if n.startswith("gauge_livesum_")}) < workers:
        assert time.monotonic() < deadline, os.listdir(directory)
        time.sleep(0.05)


def served_by_each(url: str, directory: Path, workers: int = 2) -> int:
    """GET ``url`` from 4 threads until ``workers`` processes have each counted a request;
    return how many were sent (all answered 200)."""
    sent = 0
    lock = threading.Lock()

    def one() -> None:
        nonlocal sent
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
        with lock:
            sent += 1

    deadline = time.monotonic() + 30
    while len({n.rsplit("_", 1)[1] for n in os.listdir(directory) if n.startswith("counter_")}) < workers:
        assert time.monotonic() < deadline, os.listdir(directory)
        threads = [threading.Thread(target=one) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return sent


def settled(url: str) -> list[Samples]:
    """Scrapes once no request is in flight: a request is counted as its response ends,
    so a client can have its answer a moment before the count moves."""
    deadline = time.monotonic() + 10
    while value(fetch(url), "gateway_requests_in_flight") > 0:
        assert time.monotonic() < deadline, "requests still in flight after 10 s"
        time.sleep(0.05)
    return [fetch(url) for _ in range(6)]


def fetch(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        return samples(response.read().decode())


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install -y wrk)")
@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_a_scrape_during_load_on_several_workers_adds_up(start_gateway: Callable[..., Any], tmp_path: Path,
                                                          server: str) -> None:
    directory = tmp_path / "prom"
    directory.mkdir()
    gateway = start_gateway("--workers", "2", "--server", server, "--metrics", "--no-access-log",
                            env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    booted(directory, 2)  # else wrk's connections could all go to the first worker up
    script = tmp_path / "count.lua"
    script.write_text(COUNTING)
    wrk = subprocess.Popen(["wrk", "-t2", "-c16", "-d2s", "--timeout", "5s", "-s", str(script),
                            gateway.url + "/flask/"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    during = []
    while wrk.poll() is None:
        during.append(fetch(gateway.url + "/metrics"))
    out = wrk.communicate(timeout=60)[0]
    sent, got, bad = (int(x) for x in out.rsplit("SENT ", 1)[1].replace("GOT", "").replace("BAD", "").split())
    # A wrk timeout or reconnection would make its own count inexact: there must be none.
    assert got > 100 and bad == 0 and "Socket errors" not in out, out
    assert any(value(s, "gateway_requests_in_flight") > 0 for s in during)
    # wrk exits with a request in flight on some of its 16 connections: the server may have
    # served it or not (under Granian, the count came out 1 to 3 short of wrk's in 2 runs
    # of 7 here; those requests never reached the app). Once the server has closed every
    # connection and none is in flight, the count is final: at least what wrk got answered,
    # at most what it sent.
    until(lambda: connections(gateway.port) == 0, 10, "the server still holds wrk's connections 10 s after it")

    def flask_total() -> float:
        now = fetch(gateway.url + "/metrics")
        if value(now, "gateway_requests_in_flight"):
            return 0.0
        return sum(value(now, "gateway_requests_total", mount="/flask", status=c) for c in ("2xx", "4xx", "5xx"))

    served = until(flask_total, 10, "requests still in flight 10 s after the load")
    assert got <= served <= sent and sent - got <= 16, (served, out)
    # Then 20 more, one at a time, each answered: every scrape says the same, whichever worker
    # answers it, and it is the sum, exactly.
    for _ in range(20):
        assert httpx.get(gateway.url + "/flask/", timeout=10).status_code == 200
    served += 20
    until(lambda: flask_total() == served, 10, lambda: f"{flask_total()} of {served} requests counted")
    after = [fetch(gateway.url + "/metrics") for _ in range(8)]
    flask = [{c: value(s, "gateway_requests_total", mount="/flask", status=c) for c in ("2xx", "4xx", "5xx")}
             for s in after]
    assert all(f == flask[0] for f in flask), flask
    # wrk's readiness probe of the fixture (GET /) is the gateway's; /flask/ is wrk's and ours alone.
    assert flask[0]["2xx"] + flask[0]["4xx"] == served, (flask[0], out)
    assert flask[0]["2xx"] >= got + 20 and flask[0]["5xx"] == 0
    assert value(after[-1], "gateway_requests_in_flight") == 0
    assert value(after[-1], "gateway_request_duration_seconds_count", mount="/flask") == served
    if server == "uvicorn":
        assert value(after[-1], "gateway_wsgi_threads") == 200  # 2 workers x 100 threads
        assert value(after[-1], "gateway_wsgi_thread_wait_seconds_count") == served


def test_serve_makes_and_removes_its_own_directory(start_gateway: Callable[..., Any], tmp_path: Path) -> None:
    gateway = start_gateway("--workers", "2", "--metrics", env={"TMPDIR": str(tmp_path)})
    assert f"metrics   {gateway.url}/metrics  (loopback and trusted proxies)" in gateway.log
    made = list(tmp_path.glob("gateway-metrics-*"))
    assert len(made) == 1
    booted(made[0], 2)
    sent = served_by_each(gateway.url + "/flask/", made[0])
    scrapes = settled(gateway.url + "/metrics")
    assert {value(s, "gateway_requests_total", mount="/flask", status="2xx") for s in scrapes} == {sent}
    assert {value(s, "gateway_wsgi_threads") for s in scrapes} == {200}
    assert gateway.stop() == 0
    assert not made[0].exists()


def test_gunicorn_as_docs_deploying_says(tmp_path: Path) -> None:
    """docs/deploying.md's command: two gunicorn workers, one directory, summed scrapes."""
    directory = tmp_path / "gateway-metrics"
    directory.mkdir()
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    env = server_env(data, PROMETHEUS_MULTIPROC_DIR=str(directory), GATEWAY_METRICS="1")
    subprocess.run([sys.executable, "-m", "gateway", "migrate", "-v", "0"], env=env, cwd=ROOT, check=True)
    server = ServerProcess([sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}",
                            "gateway.wsgi:application"], port=port, env=env, log_path=tmp_path / "gunicorn.log")
    try:
        sent = served_by_each(server.url + "/flask/", directory)
        scrapes = settled(server.url + "/metrics")
        assert {value(s, "gateway_requests_total", mount="/flask", status="2xx") for s in scrapes} == {sent}
    finally:
        server.stop()
