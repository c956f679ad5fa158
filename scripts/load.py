"""Run the load tests at full size, the size of the figures in docs/, and print their figures.

    .venv/bin/python scripts/load.py                  # all of them, one after the other (~4 min)
    .venv/bin/python scripts/load.py netns chaos      # some of them (--list names them)
    .venv/bin/python scripts/load.py --size ci soak   # at the size the test suite runs them

Each is a test in tests/ marked ``soak``. The test suite runs it at a size that checks what
it asserts (nothing lost, no 5xx, no error logged, memory bounded) in little time; with
``GATEWAY_LOAD_SIZE=full``, which this script sets, the same test runs the experiment whose
figures docs/hardening.md and docs/deploying.md quote, with the same assertions. pytest
runs them with ``-s``: the figures are printed as they come. The exit status is pytest's.

The benchmarks are in bench/: ``bench/run.py`` (throughput) and ``bench/shadow.py`` (what
shadow comparison costs), whose test, tests/system/test_bench_shadow.py, runs it tiny.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: name: (the test, what it runs at full size)
EXPERIMENTS = {
    "soak": ("tests/system/test_soak.py",
             "scripts/soak.py at its defaults, 60 s of wrk after a 20 s warm-up (docs/hardening.md, row 18); "
             "about 90 s"),
    "chaos": ("tests/system/test_chaos.py",
              "slow, truncated and vanishing clients and database stalls under wrk for 16 s (row 37); about 30 s"),
    "writes": ("tests/system/test_sqlite_writes.py::test_16_concurrent_admin_writers_on_2_workers",
               "16 admin writers for 8 s on uvicorn, Granian and gunicorn, 2 workers each (row 31); about 35 s"),
    "slow-readers": ("tests/system/test_slow_clients.py::test_slow_readers_of_large_pages_do_not_freeze_the_gateway",
                     "300 clients reading a 5 MiB page at 1 KiB/s (row 40); about 10 s"),
    "netns": ("tests/system/test_netns.py",
              "the deployment on six hosts, the database's cable pulled seven times (docs/deploying.md); "
              "about 80 s, as root"),
}
SIZES = ("full", "ci")  # tests/support.py's LOAD_SIZES


def command(names: list[str]) -> list[str]:
    """The pytest command line for the experiments ``names``."""
    return [sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider", "-m", "soak",
            *(EXPERIMENTS[name][0] for name in names)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=".venv/bin/python scripts/load.py", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"experiments to run (default all: {', '.join(EXPERIMENTS)})")
    parser.add_argument("--size", choices=SIZES, default="full", help="full (default) or ci, the test suite's size")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, (test, what) in EXPERIMENTS.items():
            print(f"{name:<13} {what}\n{'':<13} {test}")
        return 0
    unknown = [name for name in args.names if name not in EXPERIMENTS]
    if unknown:
        parser.error(f"no experiment named {', '.join(map(repr, unknown))}; choose from {', '.join(EXPERIMENTS)}.")
    env = {**os.environ, "GATEWAY_LOAD_SIZE": args.size}
    return subprocess.run(command(args.names or list(EXPERIMENTS)), cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
