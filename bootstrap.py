"""Set up a virtual environment and run the gateway or its tests, with only Python 3.11+.

    python3 bootstrap.py serve [gateway serve options]   # set up, then start the server
    python3 bootstrap.py test [pytest options]           # set up, then run the tests

The environment is ``.venv`` next to this file; it is (re)installed when pyproject.toml
changes.
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


def ensure_environment() -> None:
    """Create .venv and install the project with its test tools, when needed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this file may be run by an older Python
        sys.exit(f"bootstrap: error: Python 3.11 or newer is needed; this is {sys.version.split()[0]}.")
    stamp = VENV / ".installed"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted and PYTHON.exists():
        return
    if not PYTHON.exists():
        print("bootstrap: creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("bootstrap: installing the project and its test tools into .venv", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "--editable", f"{ROOT}[granian,test]"], check=True)
    stamp.write_text(wanted)


def main() -> None:
    """Dispatch ``serve`` or ``test``."""
    commands = {"serve": [str(PYTHON), "-m", "gateway", "serve"], "test": [str(PYTHON), "-m", "pytest"]}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit("usage: python3 bootstrap.py serve|test [options]")
    ensure_environment()
    os.chdir(ROOT)
    command = commands[sys.argv[1]] + sys.argv[2:]
    if os.name == "nt":
        sys.exit(subprocess.run(command).returncode)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
