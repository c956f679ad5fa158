"""Install what the benchmark needs and the project does not: bench/requirements.txt
into the running interpreter's environment, and wrk with apt-get."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"


def missing_requirements(path: Path = REQUIREMENTS) -> list[str]:
    """Return the requirement lines whose distribution is not installed."""
    missing = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0]
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(line)
    return missing


def ensure_python_deps() -> None:
    """pip-install the missing benchmark requirements into this interpreter's venv."""
    missing = missing_requirements()
    if not missing:
        return
    print(f"Installing benchmark requirements: {', '.join(missing)}", flush=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
        check=True,
        timeout=900,
    )


def ensure_wrk() -> str:
    """Return the path of wrk, installing it with apt-get if it is not on PATH."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("wrk is not on PATH; install it (e.g. sudo apt-get install -y wrk) and rerun.")
    print("Installing wrk with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "wrk"]
    if subprocess.run(install, env=env, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, timeout=600, check=True)
        subprocess.run(install, env=env, timeout=600, check=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("apt-get installed wrk but it is still not on PATH.")
    return found


def py_spy() -> str:
    """Return the py-spy executable installed next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    found = shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy is not installed; run: pip install -r bench/requirements.txt")
    return found
