"""Instructions per request, counted by valgrind: the measure of speed that noise cannot move.

Each scenario runs in a process of its own under callgrind. The process warms up, calls
``os.getppid()`` as a mark, serves ``-n`` requests in process (no sockets), writes the
access log out, and marks again; callgrind dumps its counts at each mark
(``--dump-before=getppid``), so the second part holds exactly those requests, every
thread included (the access log's writer, the WSGI pool). Each figure is the median of
``--runs`` runs, divided by the number of requests::

    python -m bench.instructions                      # every scenario, the table
    python -m bench.instructions wsgi-flask flask -n 200 --runs 1

The scenarios, for each of the demo apps (``flask``, ``django``):

- ``APP``: the app alone, called as a WSGI server would;
- ``wsgi-APP``, ``wsgi-APP-log``: through ``gateway.wsgi``, the access log off and on;
- ``bridge-APP``: the app alone behind the gateway's WSGI bridge, driven as an ASGI app
  by a minimal in-process driver on one event loop;
- ``asgi-APP``, ``asgi-APP-log``: through ``gateway.asgi`` (lifespan started), by the
  same driver, the access log off and on.

And one request a route rule matches: ``wsgi-flask-chain``, ``asgi-flask-chain``, the
Flask page behind a rule of ``gateway.toml`` with a fallback chain of two apps (the
first answers), as a migration's page that has been ported.

The ratios compare ``wsgi-*`` with the app alone and ``asgi-*`` with the bridge alone.
Runs with ``PYTHONHASHSEED=0``, so that the counts repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

APPS = ("flask", "django")
KINDS = ("", "wsgi-", "wsgi-{}-log", "bridge-", "asgi-", "asgi-{}-log")
#: Requests a route rule matches: the Flask page behind a fallback chain whose first app answers.
CHAINS = ("wsgi-flask-chain", "asgi-flask-chain")
SCENARIOS = tuple(kind.format(app) if "{" in kind else kind + app for app in APPS for kind in KINDS) + CHAINS
CHAIN_FILE = """[apps]
hello = "flask_hello:app"

[[route]]
rule = "/"
app = ["hello", "hello"]
"""
WARM = 100  # requests before the first mark: caches, the pool's threads, the log's writer
ROOT = Path(__file__).resolve().parent.parent


def parse(name: str) -> tuple[str, str, bool]:
    """``asgi-flask-log`` -> ("asgi", "flask", True); ``flask`` -> ("bare", "flask", False);
    ``wsgi-flask-chain`` -> ("wsgi", "flask", False)."""
    parts = name.split("-")
    log = parts[-1] == "log"
    if log:
        parts = parts[:-1]
    return ("bare", parts[0], False) if len(parts) == 1 else (parts[0], parts[1], log)


def mark() -> None:
    """A point callgrind dumps its counts at (``--dump-before=getppid``)."""
    os.getppid()


# --- inside the measured process ---------------------------------------------------


def config(log: bool) -> Any:
    from gateway.core.config import Config

    return Config.from_env({**os.environ, "GATEWAY_ACCESS_LOG": "1" if log else "0"})


def bare_app(app: str) -> Any:
    from gateway.core.config import configure_apps

    configure_apps(config(False))
    if app == "flask":
        from flask_hello import app as flask_app

        return flask_app
    from django_hello.wsgi import application

    return application


def flush_log() -> None:
    from gateway.observe.logs import access

    access.flush()


def run_wsgi(app: Any, path: str, count: int) -> None:
    """Warm up, then mark, call ``app`` ``count`` times as a WSGI server would, mark."""
    from werkzeug.test import EnvironBuilder

    environ = EnvironBuilder(path=path, base_url="http://127.0.0.1:8000").get_environ()
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        statuses.append(status)
        return lambda data: None

    def call() -> None:
        result = app(environ.copy(), start_response)
        try:
            for _ in result:
                pass
        finally:
            if hasattr(result, "close"):
                result.close()

    for _ in range(WARM):
        call()
    if statuses[0] != "200 OK":
        raise SystemExit(f"{path} answered {statuses[0]!r} in process, expected 200 OK.")
    flush_log()
    mark()
    for _ in range(count):
        call()
    flush_log()
    mark()


async def drive(app: Any, path: str, count: int, lifespan: bool) -> None:
    """The ASGI side with no sockets: one event loop, ``receive`` and ``send`` that answer
    at once. Starts ``app``'s lifespan first when asked."""
    stop = asyncio.Event()
    task = None
    if lifespan:
        started = asyncio.Event()
        inbox = [{"type": "lifespan.startup"}]

        async def life_receive() -> dict[str, Any]:
            if inbox:
                return inbox.pop()
            await stop.wait()
            return {"type": "lifespan.shutdown"}

        async def life_send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.failed":
                raise SystemExit(f"lifespan start-up failed: {message.get('message')}")
            if message["type"] == "lifespan.startup.complete":
                started.set()

        task = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                         life_receive, life_send))
        await started.wait()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1:8000")], "client": ("127.0.0.1", 50000),
             "server": ("127.0.0.1", 8000)}
    never = asyncio.Event()
    statuses: list[int] = []
    pulled = False

    async def receive() -> dict[str, Any]:
        # The request (no body) at the first call; later calls wait while the client stays.
        nonlocal pulled
        if pulled:
            await never.wait()
        pulled = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def call() -> None:
        nonlocal pulled
        pulled = False
        await app(dict(scope), receive, send)

    for _ in range(WARM):
        await call()
    if statuses[0] != 200:
        raise SystemExit(f"{path} answered {statuses[0]} through the ASGI driver, expected 200.")
    flush_log()
    mark()
    for _ in range(count):
        await call()
    flush_log()
    mark()
    if task is not None:
        stop.set()
        await task


def inner(name: str, count: int) -> None:
    """Serve ``count`` requests of scenario ``name`` between two marks."""
    kind, app, log = parse(name)
    path = "/" if kind in ("bare", "bridge") else f"/{app}/"
    if name in CHAINS:
        folder = Path(tempfile.mkdtemp(prefix="instructions-"))
        atexit.register(shutil.rmtree, folder, True)
        (folder / "gateway.toml").write_text(CHAIN_FILE)
        os.environ["GATEWAY_CONFIG"] = str(folder / "gateway.toml")
        path = "/"
    if kind == "bare":
        run_wsgi(bare_app(app), path, count)
    elif kind == "wsgi":
        from gateway.serve.builder import build

        run_wsgi(build(config(log), "wsgi"), path, count)
    elif kind == "bridge":
        from concurrent.futures import ThreadPoolExecutor

        from gateway.adapters.bridge import WSGIBridge

        bridge = WSGIBridge(bare_app(app), ThreadPoolExecutor(max_workers=config(False).threads))
        asyncio.run(drive(bridge, path, count, lifespan=False))
    else:
        from gateway.serve.builder import build

        gateway = build(config(log), "asgi")
        asyncio.run(drive(gateway, path, count, lifespan=True))


# --- the runs under valgrind -----------------------------------------------------


def count_once(name: str, requests: int, python: str) -> float:
    """Instructions per request of one run of scenario ``name`` under callgrind."""
    with tempfile.TemporaryDirectory(prefix="instructions-") as folder:
        out = Path(folder) / "cg.out"
        command = ["valgrind", "--tool=callgrind", "--dump-before=getppid", f"--callgrind-out-file={out}",
                   python, "-m", "bench.instructions", "--inner", name, "-n", str(requests)]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        parts = sorted(Path(folder).glob("cg.out.*"), key=lambda p: int(p.suffix[1:]))
        if done.returncode != 0 or len(parts) < 2:
            tail = "\n".join(done.stderr.splitlines()[-15:])
            raise SystemExit(f"{name}: the run under valgrind failed (exit {done.returncode}):\n{tail}")
        return total(parts[1]) / requests


def total(dump: Path) -> int:
    """The instructions a callgrind dump counted (its ``summary:`` or ``totals:`` line)."""
    for line in dump.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"{dump}: no summary line")


def baseline_of(name: str) -> str | None:
    """The scenario ``name`` is compared with: the app alone, or the bridge alone."""
    kind, app, _ = parse(name)
    return {"wsgi": app, "asgi": f"bridge-{app}"}.get(kind)


def table(figures: dict[str, float]) -> str:
    """The figures as a Markdown table, with each ratio against its baseline."""
    lines = ["| scenario | instructions per request | against | ratio |", "|---|---:|---|---:|"]
    for name, value in figures.items():
        base = baseline_of(name)
        if base in figures:
            lines.append(f"| `{name}` | {value:,.0f} | `{base}` | {value / figures[base]:.3f}x |")
        else:
            lines.append(f"| `{name}` | {value:,.0f} | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", help=f"default: all of {', '.join(SCENARIOS)}")
    parser.add_argument("-n", "--requests", type=int, default=300, help="requests counted per run (default 300)")
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario; the median is shown (default 3)")
    parser.add_argument("--inner", metavar="SCENARIO", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args.inner, args.requests)
        return
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}: choose from {', '.join(SCENARIOS)}")
    if args.requests < 1 or args.runs < 1:
        parser.error("--requests and --runs must be at least 1")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")
    figures: dict[str, float] = {}
    for name in args.scenarios or SCENARIOS:
        runs = [count_once(name, args.requests, sys.executable) for _ in range(args.runs)]
        figures[name] = statistics.median(runs)
        spread = f" (runs {min(runs):,.0f}-{max(runs):,.0f})" if len(runs) > 1 else ""
        print(f"{name}: {figures[name]:,.0f} instructions per request{spread}", file=sys.stderr, flush=True)
    print(table(figures))


if __name__ == "__main__":
    main()
