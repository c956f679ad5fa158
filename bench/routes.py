"""What route rules cost a request: ``Pipeline.decide`` with a table of N rules against the
same gateway with prefix mounts only, in process, in alternating batches.

    .venv/bin/python -m bench.routes --rules 1000 --seconds 3

Prints microseconds a decision for: no rules (the baseline), N rules with a path no rule
matches (it goes on to the prefix mount), and N rules with a path a rule matches; each
with one path asked again and again (the rules' cache answers it) and with 100,000
distinct paths in turn (more than the cache keeps: Werkzeug's matcher answers each).

    .venv/bin/python -m bench.routes --compile --rules 10005

Prints instead what loading a ``gateway.toml`` of N rules costs, in seconds: reading and
checking the file, building and compiling the rule table, and building it again as a
reload of the same file does (the regular expressions of the table it replaces reused).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from gateway.core.config import Config
from gateway.core.mounts import Mount, MountTable
from gateway.core.pipeline import Head, Pipeline
from gateway.migration.rules import RouteSpec, RouteTable, parse_gateway_file


def app(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b""]


def pipeline(rules: int) -> Pipeline:
    mounts = [Mount("/flask", "bench:app", "wsgi", app)]
    specs = [RouteSpec(f"/section{i}/items/<int:item_id>", ("shop",)) for i in range(rules // 2)]
    specs += [RouteSpec(f"/page{i}/<path:rest>", ("shop",)) for i in range(rules - len(specs))]
    table = MountTable(mounts, [Mount(s.key, "bench:app", "wsgi", app) for s in specs],
                       RouteTable(specs) if specs else None)
    return Pipeline(table, Config.from_env({}))


DISTINCT = 100_000


def per_decision(p: Pipeline, paths: list[str], seconds: float) -> float:
    """Decisions on ``paths`` in turn."""
    heads = [Head(method="GET", path=each, host="localhost", client="127.0.0.1") for each in paths]
    count, at, started = 0, 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(1000):
            p.decide(heads[at])
            at = at + 1 if at + 1 < len(heads) else 0
        count += 1000
    return (time.perf_counter() - started) / count * 1e6


def compile_times(rules: int) -> None:
    """Print the seconds a file of ``rules`` rules takes to read, to compile, and to reload."""
    text = '[apps]\nshop = "bench:app"\n' + "".join(
        f'[[route]]\nrule = "{rule}"\napp = "shop"\n' for rule in [
            *(f"/section{i}/items/<int:item_id>" for i in range(rules // 2)),
            *(f"/page{i}/<path:rest>" for i in range(rules - rules // 2))])
    started = time.perf_counter()
    routes = parse_gateway_file(text).routes
    read = time.perf_counter()
    table = RouteTable(routes)
    built = time.perf_counter()
    RouteTable(routes, previous=table)
    again = time.perf_counter()
    print(f"{rules} rules: read and checked in {read - started:.2f} s, table built and compiled in "
          f"{built - read:.2f} s, rebuilt for a reload in {again - built:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="time loading the rules instead")
    args = parser.parse_args()
    if args.compile:
        compile_times(args.rules)
        return
    base, ruled = pipeline(0), pipeline(args.rules)
    matched = f"/section{args.rules // 2 - 1}/items/7"
    sections = max(1, args.rules // 2)
    unmatched = [f"/flask/x{i}" for i in range(DISTINCT)]
    cases = {"no rules, /flask/x": (base, ["/flask/x"]),
             "no rules, /flask/x<i>, distinct": (base, unmatched),
             f"{args.rules} rules, /flask/x (no rule matches)": (ruled, ["/flask/x"]),
             f"{args.rules} rules, {matched} (a rule matches)": (ruled, [matched]),
             f"{args.rules} rules, /flask/x<i> (none matches), distinct": (ruled, unmatched),
             f"{args.rules} rules, /section<n>/items/<i> (one matches), distinct": (
                 ruled, [f"/section{i % sections}/items/{i}" for i in range(DISTINCT)])}
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (p, paths) in cases.items():
            results[name].append(per_decision(p, paths, args.seconds / args.rounds))
    baselines = {False: statistics.median(results["no rules, /flask/x"]),
                 True: statistics.median(results["no rules, /flask/x<i>, distinct"])}
    for name, values in results.items():
        median = statistics.median(values)
        extra = median - baselines[name.endswith("distinct")]
        print(f"{name:<62} {median:6.2f} us a decision (median of {args.rounds}); +{extra:5.2f} us")


if __name__ == "__main__":
    main()
