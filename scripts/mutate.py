"""Mutation-test one module of gateway/ against the tests named (a development tool).

    .venv/bin/python scripts/mutate.py gateway/core/config.py tests/unit/test_config.py
    .venv/bin/python -m mutmut results        # the survivors, then: mutmut show NAME

mutmut 3 reads its settings only from ``[tool.mutmut]`` in pyproject.toml, so this sets
``only_mutate`` and ``pytest_add_cli_args_test_selection`` there for the run and puts the
file back afterwards. It runs one mutant at a time (``--max-children 1``; the machine is
shared) in a fresh ``mutants/`` (git-ignored), then prints the score. docs/testing.md has
the recipe and the scores.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"


def configured(text: str, module: str, tests: list[str], marker: str | None = None) -> str:
    """Return pyproject's text with [tool.mutmut] aimed at one module and its tests (and,
    with ``marker``, the tests of that marker expression in place of ``not server``)."""
    settings: list[tuple[str, list[str]]] = [("only_mutate", [module]), ("pytest_add_cli_args_test_selection", tests)]
    if marker is not None:
        # mutmut puts pytest_add_cli_args after the test selection: the last -m wins.
        settings.append(("pytest_add_cli_args", ["-m", marker, "-p", "no:cacheprovider", "-q"]))
    for key, value in settings:
        text, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {json.dumps(value)}", text)
        if count != 1:
            raise SystemExit(f"pyproject.toml has {count} lines '{key} = ...' under [tool.mutmut]; expected one.")
    return text


def main(argv: list[str]) -> int:
    marker = None
    if argv[:1] == ["--marker"]:  # e.g. --marker "not soak": the server tests too (a PostgreSQL of their own)
        marker, argv = argv[1], argv[2:]
    if len(argv) < 2 or not argv[0].endswith(".py") or not (ROOT / argv[0]).is_file():
        raise SystemExit("usage: scripts/mutate.py [--marker EXPR] gateway/<module>.py tests/<level>/test_<x>.py "
                         "[more tests]")
    module, tests = argv[0], argv[1:]
    original = PYPROJECT.read_text()
    shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    PYPROJECT.write_text(configured(original, module, tests, marker))
    try:
        mutmut = [sys.executable, "-m", "mutmut"]
        subprocess.run([*mutmut, "run", "--max-children", "1"], cwd=ROOT, check=False)
        results = subprocess.run([*mutmut, "results", "--all", "true"], cwd=ROOT, capture_output=True,
                                 text=True, check=False).stdout
    finally:
        PYPROJECT.write_text(original)
    statuses = [line.rsplit(": ", 1)[1] for line in results.splitlines() if ": " in line]
    killed = sum(status in ("killed", "timeout", "segfault") for status in statuses)
    print(f"{module}: {killed}/{len(statuses)} killed"
          + (f" ({100 * killed / len(statuses):.0f}%)" if statuses else ""))
    for line in results.splitlines():
        if line.rstrip().endswith(("survived", "no tests")):
            print(line.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
