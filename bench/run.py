"""Benchmark the gateway against its apps served alone, peer compositions and the bare
frameworks, and write a Markdown table and a chart to ``bench/results/<time>/``.

::

    .venv/bin/python bench/run.py                      # 5 rounds, 10 s per measurement
    .venv/bin/python bench/run.py --quick              # 1 round of 3 s: a smoke test, not a result
    .venv/bin/python bench/run.py --only 'gateway-*' 'alone-*' --rounds 3

Configurations run round-robin (each round starts one later), so that drift of the
machine spreads over all of them; the report gives medians over the rounds. The
server runs on one CPU and wrk on another (``taskset``). See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import atexit
import fnmatch
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if __package__ in (None, ""):
    # Run as a script: import the bench package from the repository, not bench/ itself.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
    sys.path.insert(0, str(REPO_DIR))

from bench import deps  # noqa: E402


@dataclass
class Context:
    """Where and how long to measure."""

    env: dict[str, str]
    logs: Path
    duration: float
    warmup: float
    server_cpu: int | None
    client_cpu: int | None
    workloads: set[str]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog=".venv/bin/python bench/run.py",
        description="Benchmark the gateway (see bench/README.md).",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds over all configurations (default 5)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of warm-up load (default 2)")
    parser.add_argument("--quick", action="store_true", help="1 round, 3 s, 1 s warm-up: checks that it all runs")
    parser.add_argument("--threads", type=int, default=100, help="WSGI threads per worker everywhere (default 100)")
    parser.add_argument("--only", nargs="+", metavar="PATTERN", help="run only these keys (globs; see --list)")
    parser.add_argument("--skip", nargs="+", metavar="PATTERN", default=[], help="leave these keys out")
    parser.add_argument(
        "--workloads",
        nargs="+",
        choices=["flask", "django", "slow", "write"],
        default=["flask", "django", "slow", "write"],
        help="pages to drive (default all; write: the admin's add form, gateway configurations only)",
    )
    parser.add_argument("--list", action="store_true", help="list the configuration keys and exit")
    parser.add_argument("--server-cpu", type=int, help="CPU for the server (default: the first allowed)")
    parser.add_argument("--client-cpu", type=int, help="CPU for wrk (default: the second allowed)")
    parser.add_argument("--no-install", action="store_true", help="do not install missing tools")
    parser.add_argument("--out", type=Path, help="results directory (default bench/results/<time>)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 3, 1
    if args.rounds < 1 or args.duration < 1:
        parser.error(f"--rounds ({args.rounds}) and --duration ({args.duration}) must be at least 1.")
    return args


def choose_cpus(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """Pick the server's and wrk's CPU; None when taskset is missing."""
    if shutil.which("taskset") is None:
        print("warning: taskset not found; server and wrk are not pinned.", file=sys.stderr)
        return None, None
    allowed = sorted(os.sched_getaffinity(0))
    server = args.server_cpu if args.server_cpu is not None else allowed[0]
    spare = [cpu for cpu in allowed if cpu != server]
    client = args.client_cpu if args.client_cpu is not None else (spare[0] if spare else server)
    if client == server:
        print("warning: only one CPU; server and wrk share it.", file=sys.stderr)
    return server, client


def base_env(data_dir: Path, threads: int) -> dict[str, str]:
    """Return the environment of every server: a fresh data dir, the same settings."""
    from gateway.core.config import Config, configure_apps

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GATEWAY_", "DJANGO_", "FLASK_"))
        and k not in {"SCRIPT_NAME", "DATABASE_URL", "PYTHONPATH"}
    }
    env.update(PYTHONPATH=str(REPO_DIR), GATEWAY_DATA_DIR=str(data_dir), GATEWAY_THREADS=str(threads))
    configure_apps(Config.from_env(env), env)
    return env


def selected(key: str, args: argparse.Namespace) -> bool:
    """Tell whether ``--only``/``--skip`` keep the job ``key``."""
    if args.only and not any(fnmatch.fnmatch(key, p) for p in args.only):
        return False
    return not any(fnmatch.fnmatch(key, p) for p in args.skip)


def run_setup(setup: Any, round_no: int, ctx: Context) -> list[dict[str, Any]]:
    """Start each server of ``setup``, drive each of its workloads, stop it."""
    from bench.configs import WORKLOADS, ready_path
    from bench.harness import BenchError, Server, free_port

    records: list[dict[str, Any]] = []
    for index, launch in enumerate(setup.launches):
        workloads = [w for w in WORKLOADS if w.name in launch.paths and w.name in ctx.workloads]
        if not workloads:
            continue
        port = free_port()
        server = Server(
            name=setup.key,
            argv=[a.replace("{port}", str(port)) for a in launch.argv],
            env={**ctx.env, **launch.env},
            log_path=ctx.logs / f"r{round_no}-{setup.key}-{index}.log",
            cpu=ctx.server_cpu,
            port=port,
        )
        base = {"kind": "load", "round": round_no, "setup": setup.key, "launch": index}
        mine = [{**base, "workload": w.name} for w in workloads]
        try:
            server.start()
            startup = server.wait_ready(list(dict.fromkeys(ready_path(w.name, launch.paths[w.name])
                                                           for w in workloads)))
            for workload, record in zip(workloads, mine, strict=True):
                record["startup_s"] = startup
                record.update(drive(server, launch.paths[workload.name], workload.connections, ctx,
                                    write=workload.name == "write", timeout=workload.timeout))
        except BenchError as exc:
            for record in mine:
                record["error"] = str(exc)
        finally:
            rss = server.peak_rss_mb()
            server.stop()
            log_errors, kinds = server.log_errors()
            for record in mine:
                record.update(rss_mb=rss, pss_mb=server.peak_pss_kb / 1024, log_errors=log_errors,
                              log_kinds=kinds, killed=server.killed)  # fmt: skip
                _progress(record)
        records.extend(mine)
    return records


def drive(server: Any, path: str, connections: int, ctx: Context, *, write: bool = False,
          timeout: float = 2.0) -> dict[str, Any]:
    """Warm up, then measure one page with wrk; return wrk's figures or the error.

    ``write``: log in to the admin first and POST its add form (``bench/write.lua``), a
    new row each time; a write succeeded when it was answered 302.
    """
    from bench.configs import WRITE_LOGIN_PATH, WRITE_PASSWORD, WRITE_USER
    from bench.harness import WRITE_SCRIPT, BenchError, admin_session, run_wrk

    url = f"http://127.0.0.1:{server.port}{path}"
    try:
        session = admin_session(server.port, WRITE_LOGIN_PATH, path, WRITE_USER, WRITE_PASSWORD) if write else None

        def load(seconds: float, **extra: Any) -> dict[str, Any]:
            if session is None:
                return run_wrk(url, connections=connections, seconds=seconds, cpu=ctx.client_cpu, timeout=timeout,
                               **extra)  # fmt: skip
            # Language codes are unique: each wrk run gets a prefix of its own.
            return run_wrk(url, connections=connections, seconds=seconds, cpu=ctx.client_cpu, timeout=timeout,
                           script=WRITE_SCRIPT, args=[*session, "w" + secrets.token_hex(3)[:5]], **extra)  # fmt: skip

        if ctx.warmup >= 1:
            load(ctx.warmup)
        figures = load(ctx.duration, during=server.sample_memory)
    except BenchError as exc:
        return {"error": str(exc)}
    figures["rps_ok"] = (figures["requests"] - figures["non2xx"]) / (figures["duration_us"] / 1e6)
    # wrk counts no timeout for a connection that never gets an answer: flag it here.
    figures["no_response"] = figures["requests"] == 0
    return figures


def run_ceilings(ceilings: list[Any], round_no: int, ctx: Context) -> list[dict[str, Any]]:
    """Call the apps in-process (``bench/ceiling.py``, interleaved) on the server's CPU."""
    from bench.harness import pinned

    wanted = [(c.key, w, t) for c in ceilings for w, t in c.targets.items() if w in ctx.workloads]
    if not wanted:
        return []
    targets = [t for _, _, t in wanted]
    argv = pinned(ctx.server_cpu, [sys.executable, "-m", "bench.ceiling", *targets, "--seconds", str(ctx.duration)])
    log = ctx.logs / f"r{round_no}-ceiling.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    found: dict[str, float] = {}
    error = None
    try:
        with log.open("w") as stderr:  # the gateway's access log goes there, as a server's would
            done = subprocess.run(argv, env=ctx.env, cwd=REPO_DIR, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                  timeout=ctx.duration * len(targets) + 120)  # fmt: skip
        for line in done.stdout.splitlines():
            if line.startswith("CEILING_JSON "):
                result = json.loads(line.split(" ", 1)[1])
                found[result["target"]] = result["rps"]
        if done.returncode != 0:
            error = f"bench.ceiling exited with {done.returncode}; see {log}"
    except subprocess.TimeoutExpired:
        error = "bench.ceiling did not finish in time"
    records = []
    for key, workload, target in wanted:
        record: dict[str, Any] = {"kind": "ceiling", "round": round_no, "setup": key, "workload": workload}
        if target in found:
            record["rps"] = record["rps_ok"] = found[target]
        else:
            record["error"] = error or f"no result for {target}"
        _progress(record)
        records.append(record)
    return records


def run_footprint(round_no: int, ctx: Context) -> list[dict[str, Any]]:
    """Start-up time and peak RSS: the gateway in one process vs each app alone."""
    from bench.configs import FOOTPRINT_ALONE, FOOTPRINT_GATEWAY
    from bench.harness import BenchError, Server, free_port, run_wrk

    record: dict[str, Any] = {"kind": "footprint", "round": round_no, "setup": "footprint"}
    seconds = max(1.0, min(ctx.duration, 3.0))
    launches = [("gateway", FOOTPRINT_GATEWAY), *zip(("flask", "django"), FOOTPRINT_ALONE, strict=True)]
    for name, launch in launches:
        port = free_port()
        server = Server(
            name=f"footprint-{name}",
            argv=[a.replace("{port}", str(port)) for a in launch.argv],
            env=ctx.env,
            log_path=ctx.logs / f"r{round_no}-footprint-{name}.log",
            cpu=ctx.server_cpu,
            port=port,
        )
        try:
            server.start()
            record[f"{name}_startup_s"] = server.wait_ready(list(launch.paths.values()))
            for path in launch.paths.values():
                run_wrk(f"http://127.0.0.1:{port}{path}", connections=16, seconds=seconds,
                        cpu=ctx.client_cpu, during=server.sample_memory)  # fmt: skip
            record[f"{name}_rss_mb"] = server.peak_rss_mb()
        except BenchError as exc:
            record["error"] = str(exc)
        finally:
            server.stop()
    _progress(record)
    return [record]


def _progress(record: dict[str, Any]) -> None:
    where = f"  round {record['round'] + 1} {record['setup']:<18} {record.get('workload', ''):<7}"
    if "error" in record:
        print(f"{where} ERROR {record['error']}", flush=True)
    elif record["kind"] == "footprint":
        figures = ", ".join(f"{k}={v:.2f}" for k, v in record.items() if k.endswith(("_s", "_mb")))
        print(f"{where} {figures}", flush=True)
    elif record["kind"] == "ceiling":
        print(f"{where} {record['rps']:8.0f} calls/s in-process", flush=True)
    else:
        print(
            f"{where} {record['rps_ok']:8.0f} req/s  p50 {record['p50_us'] / 1000:6.1f} ms"
            f"  p99 {record['p99_us'] / 1000:7.1f} ms  non-2xx {record['non2xx']}"
            f"  socket errors {record['socket_errors']}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write the report."""
    args = parse_args(argv)
    from bench.configs import CEILINGS, setups

    all_setups = setups(args.threads)
    if args.list:  # before installing anything: listing needs none of the tools
        for key, label in [(x.key, x.label) for x in all_setups] + [(c.key, c.label) for c in CEILINGS]:
            print(f"{key:<20} {label}")
        print(f"{'footprint':<20} start-up and RSS: the gateway vs the two apps in two processes")
        return
    if not args.no_install:
        deps.ensure_python_deps()
        deps.ensure_wrk()
    from bench import report
    from bench.harness import stop_all

    jobs: list[tuple[str, Any]] = [("setup", s) for s in all_setups if selected(s.key, args)]
    ceilings = [c for c in CEILINGS if selected(c.key, args)]
    if ceilings:
        jobs.append(("ceiling", ceilings))
    if selected("footprint", args) and {"flask", "django"} <= set(args.workloads):
        jobs.append(("footprint", None))
    if not jobs:
        raise SystemExit(f"No configuration matches --only {args.only} / --skip {args.skip}; see --list.")

    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = args.out or BENCH_DIR / "results" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    server_cpu, client_cpu = choose_cpus(args)
    data_dir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    records: list[dict[str, Any]] = []
    meta = {
        "rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
        "threads": args.threads, "server_cpu": server_cpu, "client_cpu": client_cpu,
        "cpus": os.cpu_count(), "python": sys.version.split()[0], "versions": report.versions(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": args.quick, "workloads": args.workloads,
    }  # fmt: skip
    try:
        ctx = Context(base_env(data_dir, args.threads), out / "logs", args.duration, args.warmup,
                      server_cpu, client_cpu, set(args.workloads))  # fmt: skip
        if client_cpu is not None:
            os.sched_setaffinity(0, {client_cpu})  # keep this process off the server's CPU
        subprocess.run([sys.executable, "-m", "gateway", "migrate"], env=ctx.env, cwd=REPO_DIR,
                       check=True, timeout=300, stdout=subprocess.DEVNULL)  # fmt: skip
        if "write" in ctx.workloads:
            from bench.configs import WRITE_PASSWORD, WRITE_USER

            subprocess.run([sys.executable, "-m", "gateway", "manage", "createsuperuser", "--noinput",
                            "--username", WRITE_USER, "--email", f"{WRITE_USER}@example.com"],
                           env={**ctx.env, "DJANGO_SUPERUSER_PASSWORD": WRITE_PASSWORD}, cwd=REPO_DIR,
                           check=True, timeout=120, stdout=subprocess.DEVNULL)  # fmt: skip
        print(f"{len(jobs)} jobs x {args.rounds} round(s), {args.duration:g} s each; results in {out}")
        for round_no in range(args.rounds):
            shift = round_no % len(jobs)
            for kind, job in jobs[shift:] + jobs[:shift]:
                if kind == "setup":
                    records += run_setup(job, round_no, ctx)
                elif kind == "ceiling":
                    records += run_ceilings(job, round_no, ctx)
                else:
                    records += run_footprint(round_no, ctx)
                (out / "raw.json").write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    except KeyboardInterrupt:
        print("\nInterrupted: reporting what was measured so far.", file=sys.stderr)
    finally:
        stop_all()
        shutil.rmtree(data_dir, ignore_errors=True)
    if not records:
        raise SystemExit("Nothing was measured.")
    text = report.write(records, meta, all_setups, out)
    print()
    print(text)


if __name__ == "__main__":
    main()
