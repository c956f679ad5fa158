"""Soak the gateway: mixed traffic from wrk, then errors and memory growth.

Starts ``gateway serve`` (uvicorn, the default) on a free loopback port with a data
directory of its own, warms it up, notes its RSS, runs wrk over ``/flask/``,
``/django/`` and ``/django/admin/login/`` in turn at 64 connections, and notes the RSS
again::

    .venv/bin/python scripts/soak.py                 # 60 s
    .venv/bin/python scripts/soak.py --duration 10 --json

The warm-up matters. The WSGI thread pool adds a thread only when none is idle, and
each thread costs ~0.5 MB of RSS: after a 5-10 s warm-up at 64 connections it still
had 50-60 threads, grew to 64 during the run, and the RSS "grew" 10-14% with no leak.
So the warm-up runs at twice the connections, for 20 s by default; the thread count
and ten RSS samples taken during the run are reported, to tell a plateau from a leak.

Fails (exit 1) on any socket error or timeout, any response that is not 2xx/3xx, any
traceback or ERROR line in the server's log, or RSS growth above ``--max-growth``
(10%). Needs wrk (``apt-get install -y wrk``); exit 2 without it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("/flask/", "/django/", "/django/admin/login/")

# wrk's Lua: one path after another on every connection; at the end, one JSON line.
LUA = """
local paths = {%(paths)s}
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter %% #paths) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'SOAK {"requests": %%d, "duration_us": %%d, "bytes": %%d, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "timeout": %%d, "status": %%d, "p50_us": %%d, "p99_us": %%d, "max_us": %%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.timeout,
    e.status, latency:percentile(50), latency:percentile(99), latency.max))
end
"""
_ERRORS = re.compile(r'^.{0,48}\b(?:ERROR|CRITICAL)\b|"level": ?"(?:ERROR|CRITICAL)"|Traceback', re.M)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_status(pid: int) -> tuple[int, int]:
    """Resident set size (KiB) and thread count of ``pid`` and its children, from /proc."""
    rss = threads = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
            elif line.startswith("Threads:"):
                threads += int(line.split()[1])
    return rss, threads


class Sampler(threading.Thread):
    """Sample the server's RSS every ``interval`` seconds while wrk runs."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.samples.append(proc_status(self.pid)[0])
            except OSError:
                return


def start_server(port: int, data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DJANGO_", "FLASK_"))}
    env.pop("DATABASE_URL", None)
    env.update(GATEWAY_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--port", str(port)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"soak: error: the server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return proc
        except urllib.error.HTTPError:
            return proc
        except OSError:
            time.sleep(0.2)
    stop_server(proc)
    raise SystemExit(f"soak: error: the server did not answer within 60 s:\n{log.read_text()}")


def stop_server(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def run_wrk(wrk: str, url: str, script: Path, *, seconds: float, connections: int, threads: int) -> dict[str, int]:
    """Run wrk with the mixed-path script; return the counts of its JSON summary line."""
    command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
               "-s", str(script), url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    line = next((x for x in result.stdout.splitlines() if x.startswith("SOAK ")), None)
    if result.returncode != 0 or line is None:
        raise SystemExit(f"soak: error: wrk failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return dict(json.loads(line[5:]))


def soak(args: argparse.Namespace) -> dict[str, object]:
    wrk = shutil.which("wrk")
    if wrk is None:
        print("soak: error: wrk is not installed; install it with: apt-get install -y wrk", file=sys.stderr)
        raise SystemExit(2)
    with tempfile.TemporaryDirectory(prefix="gateway-soak-") as tmp:
        data_dir = Path(tmp)
        script = data_dir / "mixed.lua"
        script.write_text(LUA % {"paths": ", ".join(f'"{p}"' for p in PATHS)})
        log = data_dir / "server.log"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(port, data_dir, log)
        try:
            # Twice the connections in the warm-up: the WSGI thread pool grows a thread at a
            # time, only when none is idle; this brings it to the size the run can need
            # (each thread adds ~0.5 MB of RSS, enough to read as a 10% "leak").
            warm = run_wrk(wrk, url, script, seconds=args.warmup, connections=2 * args.connections,
                           threads=args.threads)
            time.sleep(1)
            rss_before, threads_before = proc_status(proc.pid)
            log_offset = log.stat().st_size
            sampler = Sampler(proc.pid, max(1.0, args.duration / 10))
            sampler.start()
            run = run_wrk(wrk, url, script, seconds=args.duration, connections=args.connections,
                          threads=args.threads)
            sampler.stopped.set()
            time.sleep(1)
            rss_after, threads_after = proc_status(proc.pid)
            with open(log, "rb") as f:
                f.seek(log_offset)
                log_errors = _ERRORS.findall(f.read().decode("utf-8", "replace"))
        finally:
            code = stop_server(proc)
    errors = {k: run[k] for k in ("connect", "read", "write", "timeout")}
    growth = (rss_after - rss_before) / rss_before
    report: dict[str, object] = {
        "duration_s": run["duration_us"] / 1e6,
        "connections": args.connections,
        "paths": list(PATHS),
        "requests": run["requests"],
        "requests_per_s": round(run["requests"] / (run["duration_us"] / 1e6), 1),
        "p50_ms": run["p50_us"] / 1000,
        "p99_ms": run["p99_us"] / 1000,
        "max_ms": run["max_us"] / 1000,
        "socket_errors": errors,
        "non_2xx_3xx": run["status"],
        "warmup_requests": warm["requests"],
        "warmup_non_2xx_3xx": warm["status"],
        "rss_after_warmup_kib": rss_before,
        "rss_after_run_kib": rss_after,
        "rss_growth": round(growth, 4),
        "rss_samples_kib": sampler.samples,
        "threads_after_warmup": threads_before,
        "threads_after_run": threads_after,
        "log_errors": len(log_errors),
        "exit_code": code,
    }
    problems = []
    if any(errors.values()):
        problems.append(f"socket errors: {errors}")
    if run["status"]:
        problems.append(f"{run['status']} responses were not 2xx/3xx")
    if growth > args.max_growth:
        problems.append(f"RSS grew {growth:.1%} (limit {args.max_growth:.0%})")
    if log_errors:
        problems.append(f"{len(log_errors)} tracebacks or ERROR lines in the server log")
    report["problems"] = problems
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60, help="seconds of measured traffic (60)")
    parser.add_argument("--warmup", type=float, default=20, help="seconds of warm-up traffic (20)")
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections (64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--max-growth", type=float, default=0.10, help="allowed RSS growth (0.10)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args()
    report = soak(args)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>22}: {value}")
    sys.exit(1 if report["problems"] else 0)


if __name__ == "__main__":
    main()
