"""Profile the gateway under wrk load with py-spy and print its hot frames in gateway/.

::

    python bench/profiler.py                          # gateway serve (uvicorn), both pages
    python bench/profiler.py --server granian --seconds 15 --workload flask

The server runs on one CPU, wrk and py-spy on the other. Each sample is charged to
the innermost frame that belongs to gateway/, the apps and their frameworks, or the
server; standard-library frames are charged to their caller, so ``quote()`` called by
the mount policy counts as gateway work. The speedscope files are kept in
``bench/results/profile-<time>/`` (open them at https://www.speedscope.app/).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if __package__ in (None, ""):
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
    sys.path.insert(0, str(REPO_DIR))

from bench import deps  # noqa: E402

GATEWAY_DIR = str(REPO_DIR / "gateway") + "/"
APP_DIRS = tuple(str(REPO_DIR / d) + "/" for d in ("flask_hello", "django_hello", "bench"))
FRAMEWORKS = ("flask", "werkzeug", "jinja2", "markupsafe", "itsdangerous", "blinker", "django",
              "whitenoise", "asgiref", "sqlparse")  # fmt: skip
SERVERS = ("uvicorn", "uvloop", "httptools", "granian", "gunicorn", "a2wsgi", "h11", "click")
STDLIB = sysconfig.get_paths()["stdlib"] + "/"
_ALLOWED = sorted(os.sched_getaffinity(0))
SERVER_CPU, CLIENT_CPU = _ALLOWED[0], _ALLOWED[-1]
PATHS = {"flask": "/flask/", "django": "/django/", "slow": "/slow/"}
CONNECTIONS = {"flask": 16, "django": 16, "slow": 64}


def category(path: str) -> str:
    """Tell whose code a file is: gateway, app, framework, server, stdlib or other."""
    if path.startswith(GATEWAY_DIR):
        return "gateway"
    if path.startswith(APP_DIRS):
        return "app"
    if "site-packages/" in path:
        package = path.split("site-packages/", 1)[1].split("/", 1)[0]
        if package in FRAMEWORKS:
            return "framework"
        if package in SERVERS:
            return "server"
        return "other"
    if path.startswith(STDLIB) or path.startswith("<"):
        return "stdlib"
    return "other"


_TID = re.compile(r"Thread (\d+)")


def is_idle(name: str, file: str) -> bool:
    """True for a leaf frame where a thread waits: an idle pool thread, or a lock/event wait."""
    if file.endswith("concurrent/futures/thread.py"):
        return name == "_worker"
    return file.endswith("/threading.py") and name.endswith("wait")


def largest(seconds: dict[Any, float], top: int | None = None) -> list[tuple[Any, float]]:
    """The items with the most seconds, most first."""
    return sorted(seconds.items(), key=lambda item: -item[1])[:top]


def thread_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds used so far by each thread of the processes ``pids``."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            used[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return used


class Profile:
    """py-spy samples charged to frames and categories, scaled to CPU time.

    py-spy does not tell idle threads from busy ones reliably here, and its ``--gil``
    mode credited the event loop thread with nearly all the time, against the kernel's
    per-thread CPU counters. So each thread's working samples are scaled to the CPU
    time the kernel counted for that thread over the same window.
    """

    def __init__(self, speedscope: dict[str, Any], cpu: dict[int, float]) -> None:
        frames = speedscope["shared"]["frames"]
        self.frames = [(f["name"], f.get("file", ""), f.get("line") or 0) for f in frames]
        self.kinds = [category(file) for _, file, _ in self.frames]
        self.idle = [is_idle(name, file) for name, file, _ in self.frames]
        self.cpu_total = sum(cpu.values())
        self.by_category: dict[str, float] = defaultdict(float)
        self.self_fn: dict[tuple[str, str], float] = defaultdict(float)
        self.self_line: dict[tuple[str, str, int], float] = defaultdict(float)
        self.inclusive: dict[tuple[str, str], float] = defaultdict(float)
        for profile in speedscope["profiles"]:
            match = _TID.search(profile["name"])
            weights = profile.get("weights") or [1.0] * len(profile["samples"])
            busy = [(stack, w) for stack, w in zip(profile["samples"], weights, strict=True)
                    if stack and not self.idle[stack[-1]]]  # fmt: skip
            sampled = sum(w for _, w in busy)
            seconds = cpu.get(int(match.group(1)), 0.0) if match else 0.0
            for stack, weight in busy:
                self.add(stack, weight * seconds / sampled)
        self.unsampled = self.cpu_total - sum(self.by_category.values())

    def add(self, stack: list[int], seconds: float) -> None:
        """Charge ``seconds`` of CPU to one sample's frames (outermost first)."""
        owner = next((i for i in reversed(stack) if self.kinds[i] not in {"stdlib", "other"}), None)
        kind = "stdlib/other" if owner is None else self.kinds[owner]
        self.by_category[kind] += seconds
        if owner is not None and kind == "gateway":
            name, file, line = self.frames[owner]
            self.self_fn[(name, file)] += seconds
            self.self_line[(name, file, line)] += seconds
        # Gateway frames around the server (the CLI that started it) are not request work.
        first_server = next((n for n, i in enumerate(stack) if self.kinds[i] == "server"), -1)
        inside = {self.frames[i][:2] for i in stack[first_server + 1 :] if self.kinds[i] == "gateway"}
        for key in inside:
            self.inclusive[key] += seconds

    def report(self, requests: float, top: int) -> list[str]:
        """Lines of text: CPU per request by owner, then the hottest gateway frames."""
        if not requests or not self.cpu_total:
            return ["  no CPU time or no requests measured"]

        def cost(seconds: float) -> str:
            return f"{seconds / requests * 1e6:7.1f} us {100 * seconds / self.cpu_total:5.1f}%"

        def short(file: str) -> str:
            return file.removeprefix(str(REPO_DIR) + "/")

        lines = [f"  server CPU per request: {self.cpu_total / requests * 1e6:.0f} us, of which"]
        lines += [f"    {cost(w)}  {kind}" for kind, w in largest(self.by_category)]
        if self.unsampled > 0.005 * self.cpu_total:
            lines.append(f"    {cost(self.unsampled)}  (threads with CPU time but no working samples)")
        lines += ["", "  gateway functions, own CPU per request (with the stdlib they call), inclusive:"]
        for (name, file), w in largest(self.self_fn, top):
            incl = self.inclusive[(name, file)] / requests * 1e6
            lines.append(f"    {cost(w)}  {name}  ({short(file)}; inclusive {incl:.1f} us)")
        lines += ["", "  hottest lines inside gateway/:"]
        for (name, file, line), w in largest(self.self_line, top):
            lines.append(f"    {cost(w)}  {short(file)}:{line}  {name}")
        return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(prog="python bench/profiler.py", description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["uvicorn", "granian"], default="uvicorn")
    parser.add_argument("--workload", nargs="+", choices=sorted(PATHS), default=["flask", "django"])
    parser.add_argument("--seconds", type=float, default=10, help="seconds of sampling per workload")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=12, help="frames to list")
    parser.add_argument("--spy-option", action="append", help="extra py-spy option, e.g. --spy-option=--gil")
    parser.add_argument("--no-install", action="store_true", help="do not install missing tools")
    return parser.parse_args(argv)


def profile_workload(args: argparse.Namespace, server: Any, workload: str, out: Path) -> str:
    """Drive one page with wrk while py-spy records the server; return the report."""
    from bench.harness import pinned, run_wrk

    url = f"http://127.0.0.1:{server.port}{PATHS[workload]}"
    connections = CONNECTIONS[workload]
    run_wrk(url, connections=connections, seconds=2, cpu=CLIENT_CPU)  # warm-up
    target = out / f"{workload}.speedscope.json"
    spy = [deps.py_spy(), "record", "--pid", str(server.process.pid), "--duration", str(round(args.seconds)),
           "--rate", str(args.rate), "--format", "speedscope", "--output", str(target), "--nonblocking",
           *(["--subprocesses"] if args.server == "granian" else []), *(args.spy_option or [])]  # fmt: skip
    with ThreadPoolExecutor(1) as pool:
        load = pool.submit(run_wrk, url, connections=connections, seconds=args.seconds + 4, cpu=CLIENT_CPU)
        time.sleep(1.5)
        pids = [p.pid for p in server.tree()]
        before, started = thread_cpu(pids), time.perf_counter()
        done = subprocess.run(pinned(CLIENT_CPU, spy), capture_output=True, text=True, timeout=args.seconds + 60)
        window = time.perf_counter() - started
        after = thread_cpu(pids)
        figures = load.result()
    if done.returncode != 0 or not target.exists():
        raise SystemExit(f"py-spy failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    cpu = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    profile = Profile(json.loads(target.read_text()), cpu)
    requests = figures["rps"] * window
    head = (f"\n{workload} ({PATHS[workload]}, {connections} connections, gateway on {args.server}): "
            f"{figures['rps']:,.0f} req/s under py-spy, non-2xx {figures['non2xx']}, "
            f"socket errors {figures['socket_errors']}")  # fmt: skip
    return "\n".join([head, *profile.report(requests, args.top)])


def main(argv: list[str] | None = None) -> None:
    """Start the gateway, profile each workload, print the hot gateway frames."""
    args = parse_args(argv)
    if not args.no_install:
        deps.ensure_python_deps()
        deps.ensure_wrk()
    from bench.configs import MOUNT_ARGS, gateway_serve
    from bench.harness import Server, free_port, stop_all
    from bench.run import base_env

    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.sched_setaffinity(0, {CLIENT_CPU})  # keep this process off the server's CPU
    out = BENCH_DIR / "results" / f"profile-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="gateway-profile-"))
    port = free_port()
    extra = ("--server", "granian") if args.server == "granian" else ()
    argv_ = [a.replace("{port}", str(port)) for a in gateway_serve(*extra, *MOUNT_ARGS)]
    server = Server("gateway", argv_, base_env(data_dir, 100), out / "server.log", cpu=SERVER_CPU, port=port)
    try:
        server.start()
        server.wait_ready([PATHS[w] for w in args.workload])
        for workload in args.workload:
            text = profile_workload(args, server, workload, out)
            print(text, flush=True)
            (out / f"{workload}.txt").write_text(text + "\n")
    finally:
        server.stop()
        stop_all()
        shutil.rmtree(data_dir, ignore_errors=True)
    errors, kinds = server.log_errors()
    print(f"\nServer log: {errors} logged error(s){': ' + '; '.join(kinds) if kinds else ''}. Files in {out}")


if __name__ == "__main__":
    main()
