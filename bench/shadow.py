"""What shadow comparison costs the primary (issue 12), on real servers.

    .venv/bin/python bench/shadow.py                 # 5 interleaved rounds x 6 s (~3 min)
    .venv/bin/python bench/shadow.py --rounds 1 --seconds 1

Two ``gateway serve`` processes run the worked example's apps (examples/migration: the
legacy Flask shop, and its Django port as the candidate) with one route rule,
``/shop/items/<int:item_id>`` to the legacy app: **off** has no ``shadow =``, **on**
shadows it on the port (``shadow = { app = "new", headers = ["Content-Type"] }``, as
the example does). Both run at once, pinned to the same CPU (only one is loaded at a
time); the load and this process run on another CPU.

1. Capacity: wrk at saturation (``--connections``, default 32) against **off**.
2. Rounds, each one of each, off and on interleaved (the order swaps every round):
   - saturation: wrk throughput (2xx requests a second);
   - half capacity: an open-loop client of this file sends requests at a fixed rate,
     ``--share`` (0.5) of the capacity found in step 1, whatever the answers do (a
     thread keeps the pace; the requests go out on up to 64 keep-alive connections), and
     measures each request's latency from its dispatch to its last byte, a wait for a
     free connection included: a slow server cannot slow the load down and hide its own
     latency, as in a closed loop such as wrk's. The pacer's own lateness is reported
     (``pacer late p99``) and not counted.
3. After each run against **on**, the shadow pool is let drain, and its counts
   (compared, dropped) are read from the migration page, ``/_gateway/``: every request
   answered must be compared or dropped, none lost (wrk stops with up to one request a
   connection in flight, which the server may have answered and handed over).

Every run also measures the CPU that other processes took meanwhile (``/proc/stat``
less the servers', wrk's and this process's own time); a run during which they took more
than 0.2 CPUs is run again, up to ``--retries`` times, and flagged NOISY if it still was.

It prints each run, then the medians over rounds and the ratios on/off against the
issue's targets: p50 at half capacity within 10 % of off, throughput at saturation at
least 0.95x off, shadows dropped and counted. ``--json FILE`` keeps every measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if __name__ == "__main__":
    # Run as a script: import the bench package from the repository, not bench/ itself.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
    sys.path.insert(0, str(REPO_DIR))

from bench import deps  # noqa: E402
from bench.harness import HOST, BenchError, Server, free_port, run_wrk, stop_all  # noqa: E402

EXAMPLE_DIR = REPO_DIR / "examples" / "migration"
RULE = "/shop/items/<int:item_id>"
PATH = "/shop/items/2"  # the kettle: equal but for noise (a CSRF token and the time)
CONFIG = '''[apps]
legacy = "legacy_shop:app"
new = "newshop.wsgi:application"

[[route]]
rule = "{rule}"
app = "legacy"
'''
SHADOW_LINE = 'shadow = { app = "new", headers = ["Content-Type"] }\n'
# The shadow cell of the migration page (gateway/migration/page.py).
SHADOW_CELL = re.compile(r"(\w+): \S+ equal of (\d+) compared \((\d+) different, (\d+) dropped\)")
MODES = ("off", "on")
P50_TARGET, THROUGHPUT_TARGET = 1.10, 0.95
NOISY = 0.2  # a run during which other processes used more than this many CPUs is flagged


# -- The open-loop client ---------------------------------------------------------------------


@dataclass
class Paced:
    """What the open-loop client saw: latencies (s) of the 2xx answers, and what went wrong."""

    rate: float
    seconds: float
    sent: int = 0
    latencies: list[float] = field(default_factory=list)
    failed: int = 0  # non-2xx answers
    errors: int = 0  # connections refused, reset or timed out
    late: list[float] = field(default_factory=list)  # how late the dispatcher was, per request (s)
    connections: int = 0  # opened in all
    elapsed: float = 0.0

    def percentile(self, p: float) -> float:
        """The p-th percentile latency in ms (nearest rank); NaN without answers."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))] * 1000


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 response; its status, and whether the connection stays open."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.read()  # the body runs to the end of the connection
        return status, False
    return status, headers.get("connection", "").lower() != "close"


async def _paced(port: int, path: str, rate: float, seconds: float, max_connections: int,
                 timeout: float) -> Paced:
    loop = asyncio.get_running_loop()
    result = Paced(rate, seconds)
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: bench-shadow\r\n\r\n".encode()
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    opened = 0
    tasks: set[asyncio.Task[None]] = set()

    async def connection() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        nonlocal opened
        if idle.empty() and opened < max_connections:
            opened += 1
            result.connections += 1
            try:
                return await asyncio.open_connection(HOST, port)
            except BaseException:
                opened -= 1
                raise
        return await idle.get()

    async def one(due: float) -> None:
        nonlocal opened
        # Latency runs from the dispatch (when the request was due, give or take the
        # client's own timer), so a wait for a free connection counts against the server.
        started = time.perf_counter()
        result.late.append(started - due)
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await connection()
                try:
                    writer.write(request)
                    status, keep = await _read_answer(reader)
                except BaseException:
                    writer.close()
                    opened -= 1
                    raise
            done = time.perf_counter()
            if keep:
                idle.put_nowait((reader, writer))
            else:
                writer.close()
                opened -= 1
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError):
            result.errors += 1
            return
        if 200 <= status < 300:
            result.latencies.append(done - started)
        else:
            result.failed += 1

    def dispatch(due: float) -> None:
        task = loop.create_task(one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    # A thread of its own keeps the pace: time.sleep wakes within tens of microseconds,
    # where the event loop's timers round to whole milliseconds (epoll) and would send
    # requests in bursts.
    count = max(1, round(rate * seconds))
    start = time.perf_counter() + 0.05

    def pacer() -> None:
        for i in range(count):
            due = start + i / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            loop.call_soon_threadsafe(dispatch, due)

    thread = threading.Thread(target=pacer, name="bench-pacer", daemon=True)
    thread.start()
    await asyncio.to_thread(thread.join)
    await asyncio.sleep(0)  # let the last dispatch run
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=timeout + 1)
        result.errors += len(pending)  # unanswered: asyncio.run cancels them
    result.sent = count
    result.elapsed = time.perf_counter() - start
    while not idle.empty():
        idle.get_nowait()[1].close()
    return result


def paced(port: int, path: str, rate: float, seconds: float, *, max_connections: int = 64,
          timeout: float = 10.0) -> Paced:
    """Send GET ``path`` at ``rate`` requests a second for ``seconds``, open loop."""
    return asyncio.run(_paced(port, path, rate, seconds, max_connections, timeout))


# -- The servers and their shadow counts -------------------------------------------------------


def shadow_counts(port: int) -> dict[str, int]:
    """The shadow pool's counts for the rule, from the migration page (answers loopback)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", "/_gateway/")
        response = conn.getresponse()
        page = response.read().decode(errors="replace")
    except OSError as exc:
        raise BenchError(f"the migration page on port {port} did not answer: {exc}") from exc
    finally:
        conn.close()
    found = SHADOW_CELL.search(page)
    if response.status != 200 or not found:
        raise BenchError(f"no shadow counts on the migration page on port {port} (status {response.status}); "
                         "has its format changed? (gateway/migration/page.py)")
    compared, different, dropped = (int(x) for x in found.groups()[1:])
    return {"compared": compared, "different": different, "dropped": dropped}


def drained(port: int, timeout: float = 30.0) -> dict[str, int]:
    """Wait until the shadow pool is idle (its counts still for 0.5 s); its counts."""
    last = shadow_counts(port)
    still_since = time.monotonic()
    deadline = still_since + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = shadow_counts(port)
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= 0.5:
            return now
    raise BenchError(f"the shadow pool on port {port} was still busy {timeout:g} s after the load.")


def base_env(data_dir: Path, threads: int) -> dict[str, str]:
    """The servers' environment: the example's apps and settings, a fresh data directory."""
    from gateway.core.config import Config, configure_apps

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GATEWAY_", "DJANGO_", "FLASK_")) and k not in {"SCRIPT_NAME", "DATABASE_URL"}}
    env.update(PYTHONPATH=os.pathsep.join([str(EXAMPLE_DIR), str(REPO_DIR)]), GATEWAY_DATA_DIR=str(data_dir),
               GATEWAY_THREADS=str(threads), DJANGO_SETTINGS_MODULE="newshop.settings")
    configure_apps(Config.from_env(env), env)
    return env


def start_servers(work: Path, env: dict[str, str], cpu: int | None, path: str,
                  switch_interval: float | None = None, shadow_cpu: float | None = None) -> dict[str, Server]:
    servers: dict[str, Server] = {}
    gateway = ["-m", "gateway"] if switch_interval is None else [  # one worker: uvicorn runs in this process
        "-c", f"import sys; sys.setswitchinterval({switch_interval!r}); from gateway.serve.cli import main; main()"]
    for mode in MODES:
        config = work / f"gateway-{mode}.toml"
        shadow = ("" if shadow_cpu is None else f"\n[shadow]\ncpu = {shadow_cpu:g}\n") if mode == "on" else ""
        config.write_text(CONFIG.format(rule=RULE) + (SHADOW_LINE if mode == "on" else "") + shadow)
        port = free_port()
        argv = [sys.executable, *gateway, "serve", "--host", HOST, "--port", str(port), "--config",
                str(config), "--log-level", "warning", "--no-access-log"]
        servers[mode] = Server(f"shadow-{mode}", argv, env, work / f"server-{mode}.log", cpu, port=port)
        servers[mode].start()
    for server in servers.values():  # both start at once
        server.wait_ready([path, "/_gateway/"], timeout=120)
    if SHADOW_CELL.search(_page(servers["off"].port)):
        raise BenchError("the server without shadow = shows shadow counts: is the rule shadowed after all?")
    shadow_counts(servers["on"].port)  # fails early if the page has no counts
    return servers


def _page(port: int) -> str:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", "/_gateway/")
        return conn.getresponse().read().decode(errors="replace")
    finally:
        conn.close()


# -- Other load on the machine ------------------------------------------------------------------


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(groups: list[int]) -> tuple[float, float]:
    """CPU seconds so far: every CPU's busy time (/proc/stat), and ours: the servers' process
    groups, this process and its waited-for children (wrk)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    busy = (user + nice + system + irq + softirq + steal) / _TICK
    ours = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            rest = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(rest[2]) in groups:
            ours += int(rest[11]) + int(rest[12])
    times = os.times()
    return busy, ours / _TICK + times.user + times.system + times.children_user + times.children_system


# -- Runs ------------------------------------------------------------------------------------


def measure(kind: str, mode: str, servers: dict[str, Server], args: argparse.Namespace, rate: float,
            client_cpu: int | None) -> dict[str, Any]:
    """One run of ``kind`` ("saturation" or "half") against ``servers[mode]``; its figures."""
    server = servers[mode]
    before = drained(server.port) if mode == "on" else None
    record: dict[str, Any] = {"kind": kind, "mode": mode}
    groups = [s.process.pid for s in servers.values() if s.process is not None]  # their CPU time is ours
    (busy_0, ours_0), began = cpu_seconds(groups), time.monotonic()
    if kind == "saturation":
        figures = run_wrk(f"http://{HOST}:{server.port}{args.path}", connections=args.connections,
                          seconds=args.seconds, cpu=client_cpu)
        seconds_run = figures["duration_us"] / 1e6
        ok = figures["requests"] - figures["non2xx"]
        record.update(rps=ok / seconds_run if seconds_run else 0.0, answered=figures["requests"],
                      p50_ms=figures["p50_us"] / 1000, p90_ms=figures["p90_us"] / 1000,
                      failed=figures["non2xx"], errors=figures["socket_errors"], slack=args.connections)
    else:
        got = paced(server.port, args.path, rate, args.seconds)
        late = sorted(got.late)
        record.update(rps=len(got.latencies) / got.elapsed if got.elapsed else 0.0,
                      answered=len(got.latencies) + got.failed, p50_ms=got.percentile(50),
                      p90_ms=got.percentile(90), p99_ms=got.percentile(99), failed=got.failed, errors=got.errors,
                      rate=rate, connections=got.connections, slack=0,
                      late_p99_ms=late[int(0.99 * (len(late) - 1))] * 1000 if late else 0.0)
    (busy_1, ours_1), wall = cpu_seconds(groups), time.monotonic() - began
    # CPUs' worth of work that was neither the servers', nor the clients', nor this process's.
    record["other_cpu"] = max(0.0, (busy_1 - busy_0) - (ours_1 - ours_0)) / wall if wall else 0.0
    if before is not None:
        after = drained(server.port)
        record.update({k: after[k] - before[k] for k in ("compared", "dropped", "different")})
        # wrk stops with requests in flight: the server may have answered (and handed over)
        # up to one a connection that wrk no longer counts.
        record["unaccounted"] = record["answered"] - record["compared"] - record["dropped"]
    return record


def steady(kind: str, mode: str, servers: dict[str, Server], args: argparse.Namespace, rate: float,
           client_cpu: int | None, label: str) -> dict[str, Any]:
    """:func:`measure`, again (up to ``--retries`` times) while other processes load the machine."""
    for attempt in range(args.retries + 1):
        record = measure(kind, mode, servers, args, rate, client_cpu)
        record["attempts"] = attempt + 1
        if record["other_cpu"] <= NOISY or attempt == args.retries:
            break
        print(f"{label}  {kind:<10}  {mode:<3}  other processes used {record['other_cpu']:.2f} CPUs: again",
              flush=True)
        time.sleep(3)
    if label != "capacity":
        show(label, record)
    return record


def show(label: str, record: dict[str, Any]) -> None:
    line = (f"{label}  {record['kind']:<10}  {record['mode']:<3}  {record['rps']:7.0f} req/s"
            f"  p50 {record['p50_ms']:7.2f} ms  p90 {record['p90_ms']:7.2f} ms"
            f"  failed {record['failed']}  errors {record['errors']}")
    if "compared" in record:
        line += (f"  | shadows: compared {record['compared']}, dropped {record['dropped']},"
                 f" unaccounted {record['unaccounted']}")
    if record["kind"] == "half":
        line += f"  (pacer late p99 {record['late_p99_ms']:.2f} ms)"
    line += f"  other CPU {record['other_cpu']:.2f}" + (" NOISY" if record["other_cpu"] > NOISY else "")
    print(line, flush=True)


def median_of(records: list[dict[str, Any]], kind: str, mode: str, key: str) -> float:
    return float(statistics.median(r[key] for r in records if r["kind"] == kind and r["mode"] == mode))


def summary(records: list[dict[str, Any]], rounds: int, capacity: float, rate: float) -> tuple[list[str], bool]:
    """The medians, ratios and verdicts; whether every target was met."""
    rows: list[tuple[str, float, float, str, bool | None]] = []
    p50 = median_of(records, "half", "off", "p50_ms"), median_of(records, "half", "on", "p50_ms")
    p90 = median_of(records, "half", "off", "p90_ms"), median_of(records, "half", "on", "p90_ms")
    p99 = median_of(records, "half", "off", "p99_ms"), median_of(records, "half", "on", "p99_ms")
    sat = median_of(records, "saturation", "off", "rps"), median_of(records, "saturation", "on", "rps")
    sat_p50 = median_of(records, "saturation", "off", "p50_ms"), median_of(records, "saturation", "on", "p50_ms")
    rows.append((f"half capacity ({rate:.0f} req/s) p50 latency, ms", *p50, f"<= {P50_TARGET:.2f}x",
                 p50[1] <= P50_TARGET * p50[0]))
    rows.append(("half capacity p90 latency, ms", *p90, "", None))
    rows.append(("half capacity p99 latency, ms", *p99, "", None))
    rows.append(("saturation throughput, req/s", *sat, f">= {THROUGHPUT_TARGET:.2f}x",
                 sat[1] >= THROUGHPUT_TARGET * sat[0]))
    rows.append(("saturation p50 latency, ms", *sat_p50, "", None))
    out = [f"Medians of {rounds} interleaved round(s); capacity (off, wrk) {capacity:.0f} req/s, "
           f"half capacity paced at {rate:.0f} req/s:", "",
           f"| {'measure':<44} | {'off':>9} | {'on':>9} | {'on/off':>7} | {'target':>8} | met |",
           f"|{'-' * 46}|{'-' * 11}|{'-' * 11}|{'-' * 9}|{'-' * 10}|-----|"]
    for name, off, on, target, met in rows:
        verdict = "" if met is None else "yes" if met else "NO"
        out.append(f"| {name:<44} | {off:9.2f} | {on:9.2f} | {on / off if off else float('nan'):6.2f}x "
                   f"| {target:>8} | {verdict:<3} |")
    on_runs = [r for r in records if r["mode"] == "on"]
    sat_on = [r for r in on_runs if r["kind"] == "saturation"]
    half_on = [r for r in on_runs if r["kind"] == "half"]
    counted = all(abs(r["unaccounted"]) <= r["slack"] for r in on_runs)
    dropped_at_saturation = all(r["dropped"] > 0 for r in sat_on)
    noisy = [r for r in records if r["other_cpu"] > NOISY]
    again = sum(r["attempts"] - 1 for r in records)
    out += ["", f"Other processes used {statistics.median(r['other_cpu'] for r in records):.2f} CPUs "
            f"during a run (median); {again} noisy run(s) were run again; {len(noisy)} of {len(records)} kept run(s) "
            f"over {NOISY} CPUs (NOISY)" + (": rerun on a quieter machine." if noisy else "."),
            "",
            f"Shadows at saturation (total of {len(sat_on)} run(s)): "
            f"{sum(r['answered'] for r in sat_on)} answered, {sum(r['compared'] for r in sat_on)} compared, "
            f"{sum(r['dropped'] for r in sat_on)} dropped, {sum(r['unaccounted'] for r in sat_on)} unaccounted "
            "(wrk stops with up to one request a connection in flight).",
            f"Shadows at half capacity (total of {len(half_on)} run(s)): "
            f"{sum(r['answered'] for r in half_on)} answered, {sum(r['compared'] for r in half_on)} compared, "
            f"{sum(r['dropped'] for r in half_on)} dropped, {sum(r['unaccounted'] for r in half_on)} unaccounted.",
            "",
            f"Target: p50 at half capacity within 10% of off: {'met' if rows[0][4] else 'NOT met'} "
            f"({p50[1] / p50[0]:.2f}x).",
            f"Target: throughput at saturation >= 0.95x off: {'met' if rows[3][4] else 'NOT met'} "
            f"({sat[1] / sat[0]:.2f}x).",
            f"Target: shadows dropped and counted at saturation: "
            f"{'met' if counted and dropped_at_saturation else 'NOT met'} "
            f"({'dropped in every run' if dropped_at_saturation else 'some runs dropped none'}; "
            f"{'every answer compared or dropped' if counted else 'answers neither compared nor dropped'})."]
    return out, bool(rows[0][4] and rows[3][4] and counted and dropped_at_saturation)


def choose_cpus(args: argparse.Namespace) -> tuple[int | None, int | None]:
    if args.no_pin or shutil.which("taskset") is None:
        return None, None
    allowed = sorted(os.sched_getaffinity(0))
    server = args.server_cpu if args.server_cpu is not None else allowed[0]
    spare = [cpu for cpu in allowed if cpu != server]
    client = args.client_cpu if args.client_cpu is not None else (spare[0] if spare else server)
    return server, client


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds a run (default 6; wrk rounds to whole s)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of wrk on each server first (default 2; 0: none)")
    parser.add_argument("--connections", type=int, default=32, help="wrk's connections at saturation (default 32)")
    parser.add_argument("--share", type=float, default=0.5, help="the paced load, a share of capacity (default 0.5)")
    parser.add_argument("--path", default=PATH, help=f"the page loaded (default {PATH}; /shop/items/4 differs)")
    parser.add_argument("--threads", type=int, default=100, help="the servers' WSGI threads (default 100)")
    parser.add_argument("--server-cpu", type=int, help="the servers' CPU (default: the first allowed)")
    parser.add_argument("--client-cpu", type=int, help="the clients' CPU (default: the second allowed)")
    parser.add_argument("--no-pin", action="store_true", help="pin nothing (servers and clients share the CPUs)")
    parser.add_argument("--switch-interval", type=float, metavar="S",
                        help="an experiment: start both servers with sys.setswitchinterval(S) (Python's is 0.005)")
    parser.add_argument("--retries", type=int, default=2,
                        help=f"run again, up to this many times, a run during which other processes used more than "
                             f"{NOISY} CPUs (default 2)")
    parser.add_argument("--shadow-cpu", type=float, metavar="PERCENT",
                        help="[shadow] cpu of the server with shadowing on (default: the gateway's, 2)")
    parser.add_argument("--json", type=Path, help="write every measurement to this file")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.warmup < 0 or not 0 < args.share <= 1 or args.retries < 0:
        parser.error("--rounds must be 1 or more, --seconds more than 0, --warmup 0 or more, --share in (0, 1], "
                     "--retries 0 or more.")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    deps.ensure_wrk()
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server_cpu, client_cpu = choose_cpus(args)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})  # this process runs the paced client: off the servers' CPU
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-shadow-"))
    began = time.monotonic()
    records: list[dict[str, Any]] = []
    capacity = rate = 0.0
    try:
        env = base_env(work / "data", args.threads)
        subprocess.run([sys.executable, "-m", "gateway", "migrate", "-v", "0"], env=env, cwd=REPO_DIR,
                       check=True, timeout=300)
        print(f"Shadow comparison: GET {args.path}, rule {RULE}: legacy (Flask) answers; on: shadowed on new "
              f"(Django). {args.rounds} round(s) x {args.seconds:g} s; servers on CPU {server_cpu}, "
              f"clients on CPU {client_cpu}"
              + (f"; switch interval {args.switch_interval:g} s" if args.switch_interval else "") + ".", flush=True)
        servers = start_servers(work, env, server_cpu, args.path, args.switch_interval, args.shadow_cpu)
        for mode in MODES if args.warmup > 0 else ():
            run_wrk(f"http://{HOST}:{servers[mode].port}{args.path}", connections=args.connections,
                    seconds=args.warmup, cpu=client_cpu)
        drained(servers["on"].port)
        capacity = steady("saturation", "off", servers, args, 0.0, client_cpu, "capacity")["rps"]
        rate = args.share * capacity
        print(f"Capacity (off, wrk -c{args.connections}): {capacity:.0f} req/s; half capacity: {rate:.0f} req/s.",
              flush=True)
        for round_no in range(args.rounds):
            order = MODES if round_no % 2 == 0 else MODES[::-1]
            for kind in ("saturation", "half"):
                for mode in order:
                    record = steady(kind, mode, servers, args, rate, client_cpu, f"round {round_no + 1}")
                    record["round"] = round_no
                    records.append(record)
        for server in servers.values():
            server.stop()
            errors, kinds = server.log_errors()
            if errors:
                kept = BENCH_DIR / "results" / f"{server.name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(server.log_path, kept)
                print(f"{server.name}: {errors} error(s) logged: {'; '.join(kinds)} (log kept in {kept})",
                      flush=True)
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)
    if not records or not any(r["kind"] == "half" for r in records) or len({r["mode"] for r in records}) < 2:
        raise SystemExit("Not enough was measured for a summary.")
    print()
    lines, _ = summary(records, len({r["round"] for r in records}), capacity, rate)
    print("\n".join(lines))
    print(f"\n({time.monotonic() - began:.0f} s in all; {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs)")
    if args.json:
        args.json.write_text(json.dumps({"capacity": capacity, "rate": rate, "args": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "records": records}, indent=1))


if __name__ == "__main__":
    main()
