"""Start a server pinned to a CPU, wait for it, drive it with wrk, measure it, stop it.

Every server runs in its own process group (``setsid``) and is stopped through that
group, also when the benchmark fails or is interrupted; :func:`stop_all` is registered
at exit and on SIGINT/SIGTERM by ``bench/run.py``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

if TYPE_CHECKING:
    import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
WRK_SCRIPT = BENCH_DIR / "report.lua"
WRITE_SCRIPT = BENCH_DIR / "write.lua"
HOST = "127.0.0.1"

# A line that logs an error (uvicorn, gunicorn, Granian, Django's request logger).
_LOG_ERROR = re.compile(r"^(ERROR|CRITICAL)\b|\[(ERROR|CRITICAL)\]|^Internal Server Error")

_running: dict[int, subprocess.Popen[bytes]] = {}


class BenchError(RuntimeError):
    """A server or a measurement failed; the message says which and why."""


def free_port() -> int:
    """Return a loopback port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    """Prefix ``argv`` with ``taskset`` so that it (and its children) run on ``cpu``."""
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def get(port: int, path: str, timeout: float = 2.0) -> int:
    """GET ``path`` on the loopback port; return the status, 0 if nothing answered."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        conn.close()


def admin_session(port: int, login_path: str, add_path: str, username: str, password: str) -> tuple[str, str]:
    """Log in to the Django admin on the loopback port; return the Cookie header and the add form's CSRF token."""
    cookies: dict[str, str] = {}

    def call(method: str, path: str, body: str | None = None) -> tuple[int, str]:
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        try:
            headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}
            if body is not None:
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            for header in response.headers.get_all("Set-Cookie") or []:
                name, _, rest = header.partition("=")
                cookies[name.strip()] = rest.split(";", 1)[0]
            return response.status, response.read().decode(errors="replace")
        except OSError as exc:
            raise BenchError(f"logging in to the admin on port {port} failed: {exc}") from exc
        finally:
            conn.close()

    def token(page: str) -> str:
        found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        if not found:
            raise BenchError(f"no CSRF token in the admin page on port {port}.")
        return found.group(1)

    status, page = call("GET", login_path)
    form = urlencode({"csrfmiddlewaretoken": token(page), "username": username, "password": password})
    status, page = call("POST", login_path, form)
    if status != 302 or "sessionid" not in cookies:
        raise BenchError(f"the admin login on port {port} answered {status}, not 302 with a session.")
    status, page = call("GET", add_path)
    if status != 200:
        raise BenchError(f"the admin's add form on port {port} answered {status}.")
    return "; ".join(f"{k}={v}" for k, v in cookies.items()), token(page)


@dataclass
class Server:
    """One server process (tree) started for the benchmark."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cpu: int | None
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    killed: bool = False
    _peak: dict[int, int] = field(default_factory=dict)
    peak_pss_kb: int = 0

    def start(self) -> None:
        """Launch the server in a new process group, its output going to the log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        log.write(f"$ {' '.join(self.argv)}\n".encode())
        log.flush()
        self.started_at = time.perf_counter()
        self.process = subprocess.Popen(
            pinned(self.cpu, self.argv),
            env=self.env,
            cwd=REPO_DIR,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        _running[self.process.pid] = self.process

    def wait_ready(self, paths: list[str], timeout: float = 60.0) -> float:
        """Wait until every path answers 200; return seconds since launch."""
        assert self.process is not None
        pending = list(paths)
        deadline = time.perf_counter() + timeout
        while pending:
            if self.process.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with code {self.process.returncode} before answering; see {self.log_path}."
                )
            if time.perf_counter() > deadline:
                raise BenchError(f"{self.name} did not answer 200 on {pending} within {timeout:.0f} s.")
            if get(self.port, pending[0], timeout=1.0) == 200:
                pending.pop(0)
            else:
                time.sleep(0.01)
        return time.perf_counter() - self.started_at

    def tree(self) -> list[psutil.Process]:
        """Return the server process and all its descendants."""
        import psutil  # only memory sampling needs it: bench/shadow.py runs without it

        assert self.process is not None
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def sample_memory(self) -> None:
        """Record each process's peak RSS (the kernel's VmHWM) and the tree's PSS now.

        RSS counts pages a forked worker shares with its parent twice; PSS (sampled, as
        the kernel keeps no peak of it) splits them, so its sum is the tree's real size.
        """
        pss = 0
        for proc in self.tree():
            hwm = _proc_kb(f"/proc/{proc.pid}/status", "VmHWM:")
            if hwm:
                self._peak[proc.pid] = max(self._peak.get(proc.pid, 0), hwm)
            pss += _proc_kb(f"/proc/{proc.pid}/smaps_rollup", "Pss:")
        self.peak_pss_kb = max(self.peak_pss_kb, pss)

    def peak_rss_mb(self) -> float:
        """Sum of the peak RSS of every process of the tree, in MiB."""
        self.sample_memory()
        return sum(self._peak.values()) / 1024

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it if it is still there after ``grace``."""
        process = self.process
        if process is None or process.pid not in _running:
            return
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.killed = True
        # Children (gunicorn and Granian workers) may outlive their parent briefly.
        _signal_group(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        _running.pop(process.pid, None)

    def log_errors(self) -> tuple[int, list[str]]:
        """Count the errors the server logged; return it with the commonest exception lines."""
        try:
            return scan_log(self.log_path.read_text(errors="replace").splitlines())
        except FileNotFoundError:
            return 0, []


def scan_log(lines: list[str]) -> tuple[int, list[str]]:
    """Count logged errors (an ERROR line and its traceback count once) and name them.

    The second item lists the commonest exception lines (the last line of each
    traceback), most frequent first, with their count.
    """
    events = 0
    previous_was_error = False
    kinds: Counter[str] = Counter()
    in_traceback = False
    for line in lines:
        if line.startswith("Traceback (most recent call last)"):
            events += 0 if previous_was_error else 1
            in_traceback = True
        elif in_traceback and line[:1].strip() and not line.startswith(("During handling", "The above exception")):
            kinds[line.strip()[:160]] += 1
            in_traceback = False
        previous_was_error = bool(_LOG_ERROR.search(line))
        events += previous_was_error
    return events, [f"{count} x {text}" for text, count in kinds.most_common(3)]


def _proc_kb(path: str, key: str) -> int:
    """Read one ``Key: N kB`` line of a /proc file; 0 if the process is gone."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_all() -> None:
    """Kill the process group of every server still running (at exit, on a signal)."""
    for pid in list(_running):
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for pid, process in list(_running.items()):
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        _signal_group(pid, signal.SIGKILL)
        _running.pop(pid, None)


def run_wrk(
    url: str,
    *,
    connections: int,
    seconds: float,
    cpu: int | None,
    during: Any = None,
    script: Path = WRK_SCRIPT,
    args: Sequence[str] = (),
    timeout: float = 2.0,
) -> dict[str, Any]:
    """Drive ``url`` with wrk (one thread, keep-alive); return its figures.

    ``during`` is called about every 100 ms while wrk runs (to sample memory). ``script``
    and its ``args``: another wrk script that reports as ``report.lua`` does (``write.lua``).
    ``timeout``: seconds wrk waits for each answer.
    """
    duration = max(1, round(seconds))
    argv = pinned(cpu, [
        "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", f"{max(1, round(timeout))}s",
        "-s", str(script), url, *(["--", *args] if args else []),
    ])  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + duration + timeout + 30
    while process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise BenchError(f"wrk on {url} did not finish within {duration + timeout + 30:g} s.")
        if during is not None:
            during()
        time.sleep(0.1)
    out, err = process.communicate()
    text = out.decode(errors="replace")
    for line in text.splitlines():
        if line.startswith("WRK_JSON "):
            figures: dict[str, Any] = json.loads(line[len("WRK_JSON ") :])
            seconds_run = figures["duration_us"] / 1e6
            figures["rps"] = figures["requests"] / seconds_run if seconds_run else 0.0
            figures["socket_errors"] = sum(figures[k] for k in ("connect", "read", "write", "timeout"))
            return figures
    raise BenchError(f"wrk on {url} gave no result: {err.decode(errors='replace').strip() or text}")
