"""Set up a virtual environment and run the gateway or its tests, with only Python 3.11+.

    python3 bootstrap.py serve [gateway serve options]   # set up, then start the server
    python3 bootstrap.py test [pytest options]           # set up, then run the tests

The environment is ``.venv`` next to this file; it is (re)installed when pyproject.toml
changes, or when a command needs more than is installed: ``serve`` installs the project
alone, ``test`` the project with its test tools (and Granian, which the tests also serve on, and
MkDocs, which builds the documentation site in a test).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"


#: The extras each command installs with the project.
EXTRAS = {"serve": (), "test": ("granian", "test", "docs")}


def ensure_environment(extras: tuple[str, ...] = EXTRAS["test"]) -> None:
    """Create .venv and install the project with ``extras``, unless it is there already."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this file may be run by an older Python
        sys.exit(f"bootstrap: error: Python 3.11 or newer is needed; this is {sys.version.split()[0]}.")
    # The stamp: pyproject.toml's digest, then the extras installed with it ("<digest> granian,test").
    stamp = VENV / ".installed"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and PYTHON.exists():
        installed_digest, _, installed = stamp.read_text().strip().partition(" ")
        if installed_digest == digest and set(extras) <= set(filter(None, installed.split(","))):
            return
    if not PYTHON.exists():
        print("bootstrap: creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    what = "the project and its test tools" if "test" in extras else "the project"
    print(f"bootstrap: installing {what} into .venv", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    target = f"{ROOT}[{','.join(extras)}]" if extras else str(ROOT)
    subprocess.run([*pip, "--editable", target], check=True)
    stamp.write_text(f"{digest} {','.join(extras)}".strip())


def main() -> None:
    """Dispatch ``serve`` or ``test``."""
    commands = {"serve": [str(PYTHON), "-m", "gateway", "serve"], "test": [str(PYTHON), "-m", "pytest"]}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit("usage: python3 bootstrap.py serve|test [options]")
    ensure_environment(EXTRAS[sys.argv[1]])
    os.chdir(ROOT)
    command = commands[sys.argv[1]] + sys.argv[2:]
    if os.name == "nt":
        sys.exit(subprocess.run(command).returncode)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
