"""What route rules cost a request: ``Pipeline.decide`` with a table of N rules against the
same gateway with prefix mounts only, in process, in alternating batches.

    .venv/bin/python -m bench.routes --rules 1000 --seconds 3

Prints microseconds a decision for: no rules (the baseline), N rules with a path no rule
matches (it goes on to the prefix mount), and N rules with a path a rule matches.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from gateway.config import Config
from gateway.mounts import Mount, MountTable
from gateway.pipeline import Head, Pipeline
from gateway.routes import RouteSpec, RouteTable


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


def per_decision(p: Pipeline, path: str, seconds: float) -> float:
    head = Head("GET", "", path, "", "localhost", "http", ("localhost", 80), "127.0.0.1")
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(1000):
            p.decide(head)
        count += 1000
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    base, ruled = pipeline(0), pipeline(args.rules)
    matched = f"/section{args.rules // 2 - 1}/items/7"
    cases = {"no rules, /flask/x": (base, "/flask/x"),
             f"{args.rules} rules, /flask/x (no rule matches)": (ruled, "/flask/x"),
             f"{args.rules} rules, {matched} (a rule matches)": (ruled, matched)}
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (p, path) in cases.items():
            results[name].append(per_decision(p, path, args.seconds / args.rounds))
    baseline = statistics.median(results["no rules, /flask/x"])
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:<55} {median:6.2f} us a decision (median of {args.rounds}); +{median - baseline:5.2f} us")


if __name__ == "__main__":
    main()
