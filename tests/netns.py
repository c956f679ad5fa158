"""Hosts made of Linux network namespaces, for ``tests/system/test_netns.py``.

A :class:`Lan` is a bridge in a namespace of its own (the switch) and one namespace per
host, each joined to the bridge by a veth pair whose host end is ``eth0``, with an
address from 198.18.0.0/15 (RFC 2544's range for network benchmarks). A host "vanishes"
when the switch's end of its cable goes down (:meth:`Lan.cut`): its processes keep
running, and packets to and from it are dropped without an answer, as on a real network.

Names carry the creating process's id and a random suffix, ``gwnetns-<pid>-<hex>-<host>``,
so that runs never collide; :func:`remove_leftovers` removes what a run whose process no
longer exists left behind (killed before its finalizers ran). Every process started in
a namespace is ended by its id, and every namespace, link and file removed, by
:meth:`Lan.close`.

The test process itself stays in its own namespace. Its clients run on threads that
have entered a host's namespace (``setns(2)`` affects only the calling thread); a socket
belongs to the namespace of the thread that made it (:meth:`Lan.threads`).

The module is also imported by the gateway's workers, for :func:`echo` (mounted at
``/echo``): keep its imports to the standard library.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.support import ROOT, PostgresCluster, ServerProcess

T = TypeVar("T")

PREFIX = "gwnetns"
NETWORK = "198.18.0.0/15"
IP = shutil.which("ip") or "/usr/sbin/ip"
TC = shutil.which("tc") or "/usr/sbin/tc"
CLONE_NEWNET = 0x40000000
_NAME = re.compile(rf"^{PREFIX}-(\d+)-[0-9a-f]{{4}}(?:-|$)")


def echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A WSGI app that answers what it was given: what the gateway made of the request."""
    keys = ("REMOTE_ADDR", "wsgi.url_scheme", "HTTP_HOST", "SERVER_NAME", "SERVER_PORT", "SCRIPT_NAME", "PATH_INFO")
    seen: dict[str, Any] = {key: environ.get(key) for key in keys}
    seen["instance"] = os.environ.get("GATEWAY_NETNS_INSTANCE", "")
    seen["forwarded"] = {k: v for k, v in environ.items() if k.startswith("HTTP_X_FORWARDED_")}
    body = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                              ("Cache-Control", "no-store")])
    return [body]


# ---------------------------------------------------------------------------- namespaces


def run(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with its output."""
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip() or result.stdout}")
    return result


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def namespace_pids(name: str) -> list[int]:
    """The processes in the namespace ``name`` (``ip netns pids``)."""
    result = run(IP, "netns", "pids", name, check=False)
    return [int(p) for p in result.stdout.split() if p.isdigit()]


def _kill_namespace_processes(name: str, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, each process still in the namespace, by its id."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = namespace_pids(name)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while namespace_pids(name) and time.monotonic() < deadline:
            time.sleep(0.1)


def _delete_namespace(name: str) -> None:
    _kill_namespace_processes(name)
    run(IP, "netns", "delete", name, check=False)
    shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)


def remove_leftovers() -> list[str]:
    """Remove the namespaces, /etc/netns entries and /tmp directories of earlier runs
    of this module whose process is gone; return the names removed."""
    removed = []
    listed = run(IP, "netns", "list", check=False).stdout.split("\n")
    names = {line.split()[0] for line in listed if line.strip()}
    names |= {p.name for p in Path("/etc/netns").glob(f"{PREFIX}-*")}
    for name in sorted(names):
        match = _NAME.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _delete_namespace(name)
            removed.append(name)
    for path in Path("/tmp").glob(f"{PREFIX}-*"):
        match = _NAME.match(path.name)
        if match and not _pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    with contextlib.suppress(OSError):
        Path("/etc/netns").rmdir()  # only if empty
    return removed


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
    finally:
        os.close(fd)


class Lan:
    """A switch and hosts on it; ``with Lan(...) as lan:`` removes everything at the end."""

    def __init__(self, hosts: Iterable[str], first: int = 10) -> None:
        self.run_id = f"{os.getpid()}-{secrets.token_hex(2)}"
        self.switch = f"{PREFIX}-{self.run_id}-switch"
        self.hosts = list(hosts)
        self.address = {host: f"198.18.0.{first + i}" for i, host in enumerate(self.hosts)}
        self.made: list[str] = []
        self.pools: dict[str, ThreadPoolExecutor] = {}
        self.finalizers: list[Callable[[], object]] = []
        self.tmp = Path(f"/tmp/{PREFIX}-{self.run_id}")

    def ns(self, host: str) -> str:
        return f"{PREFIX}-{self.run_id}-{host}"

    def create(self) -> None:
        """Make the switch, the hosts and their cables. Raises ``PermissionError`` with
        ``ip``'s own message when namespaces cannot be made here."""
        self.tmp.mkdir(mode=0o755)
        self.tmp.chmod(0o755)  # nginx's workers (www-data) read its configuration here
        result = run(IP, "netns", "add", self.switch, check=False)
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            raise PermissionError(lines[-1] if lines else f"ip netns add exited {result.returncode}")
        self.made.append(self.switch)
        run(IP, "-n", self.switch, "link", "add", "name", "br0", "type", "bridge")
        run(IP, "-n", self.switch, "link", "set", "dev", "br0", "up")
        for host in self.hosts:
            ns = self.ns(host)
            run(IP, "netns", "add", ns)
            self.made.append(ns)
            run(IP, "-n", self.switch, "link", "add", "name", host, "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            run(IP, "-n", self.switch, "link", "set", "dev", host, "master", "br0")
            run(IP, "-n", self.switch, "link", "set", "dev", host, "up")
            run(IP, "-n", ns, "addr", "add", f"{self.address[host]}/15", "dev", "eth0")
            run(IP, "-n", ns, "link", "set", "dev", "eth0", "up")
            run(IP, "-n", ns, "link", "set", "dev", "lo", "up")

    def hosts_file(self, host: str, names: dict[str, str]) -> None:
        """/etc/hosts as seen by commands run in ``host`` (``ip netns exec`` bind-mounts it)."""
        directory = Path("/etc/netns") / self.ns(host)
        directory.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost"] + [f"{address} {name}" for name, address in names.items()]
        (directory / "hosts").write_text("\n".join(lines) + "\n")

    def exec_args(self, host: str) -> list[str]:
        """The prefix that runs a command in ``host``."""
        return [IP, "netns", "exec", self.ns(host)]

    # -- faults

    def cut(self, host: str) -> None:
        """Unplug ``host``: the switch's end of its cable goes down. Processes stay up."""
        run(IP, "-n", self.switch, "link", "set", "dev", host, "down")

    def mend(self, host: str) -> None:
        """Plug ``host`` back in."""
        run(IP, "-n", self.switch, "link", "set", "dev", host, "up")

    @contextlib.contextmanager
    def vanished(self, host: str) -> Iterator[float]:
        """Cut ``host`` for the duration of the block (yields the monotonic time of the cut)."""
        self.cut(host)
        try:
            yield time.monotonic()
        finally:
            self.mend(host)

    # A MAC address no host has (locally administered): frames sent to it reach nobody.
    NOWHERE = "02:00:00:00:00:01"

    def part(self, a: str, b: str) -> None:
        """Cut ``a`` off from ``b`` only: each sends the other's packets to a MAC address no
        host has (a permanent neighbour entry), so they are dropped without an answer while
        both still reach everyone else. Needs nothing but ``ip`` (no netfilter)."""
        for here, there in ((a, b), (b, a)):
            run(IP, "-n", self.ns(here), "neigh", "replace", self.address[there], "lladdr", self.NOWHERE,
                "dev", "eth0", "nud", "permanent")

    def join(self, a: str, b: str) -> None:
        """Undo :meth:`part`: the hosts learn each other's addresses again (ARP)."""
        for here, there in ((a, b), (b, a)):
            run(IP, "-n", self.ns(here), "neigh", "del", self.address[there], "dev", "eth0", check=False)

    @contextlib.contextmanager
    def parted(self, a: str, b: str) -> Iterator[float]:
        """``a`` and ``b`` cannot reach each other for the duration of the block."""
        self.part(a, b)
        try:
            yield time.monotonic()
        finally:
            self.join(a, b)

    def netem(self, host: str, *spec: str) -> None:
        """Put ``tc qdisc netem`` on both ends of ``host``'s cable (both directions)."""
        run(*self.exec_args(host), TC, "qdisc", "replace", "dev", "eth0", "root", "netem", *spec)
        run(IP, "netns", "exec", self.switch, TC, "qdisc", "replace", "dev", host, "root", "netem", *spec)

    def clear_netem(self, host: str) -> None:
        run(*self.exec_args(host), TC, "qdisc", "del", "dev", "eth0", "root", check=False)
        run(IP, "netns", "exec", self.switch, TC, "qdisc", "del", "dev", host, "root", check=False)

    def netem_unavailable(self) -> str | None:
        """Why ``tc qdisc netem`` cannot be used here, or None if it can."""
        if not os.access(TC, os.X_OK):
            return f"no tc binary at {TC}"
        result = run(IP, "netns", "exec", self.switch, TC, "qdisc", "add", "dev", "br0", "root", "netem",
                     "delay", "1ms", check=False)
        if result.returncode != 0:
            return f"tc qdisc netem is not available: {result.stderr.strip() or result.stdout.strip()}"
        run(IP, "netns", "exec", self.switch, TC, "qdisc", "del", "dev", "br0", "root", check=False)
        return None

    # -- threads in a host

    def threads(self, host: str, workers: int = 32, pool: str = "") -> ThreadPoolExecutor:
        """A thread pool whose threads live in ``host``'s network namespace (one per ``pool`` name)."""
        key = f"{host}/{pool}"
        if key not in self.pools:
            path = f"/run/netns/{self.ns(host)}"
            self.pools[key] = ThreadPoolExecutor(workers, initializer=_setns, initargs=(path,),
                                                 thread_name_prefix=f"netns-{host}{pool}")
        return self.pools[key]

    def on(self, host: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` on a thread in ``host`` and return its result."""
        return self.threads(host).submit(fn, *args, **kwargs).result()

    # -- the end

    def at_close(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` in :meth:`close`, before the namespaces go (last registered, first run)."""
        self.finalizers.append(fn)

    def close(self) -> list[str]:
        """Stop what was started, delete every namespace made (with its links) and the files;
        return the errors met on the way (each step runs whatever the others did)."""
        errors = []
        for fn in reversed(self.finalizers):
            try:
                fn()
            except Exception as exc:
                errors.append(f"{fn}: {type(exc).__name__}: {exc}")
        for pool in self.pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        for ns in reversed(self.made):
            try:
                _delete_namespace(ns)
            except Exception as exc:
                errors.append(f"deleting {ns}: {type(exc).__name__}: {exc}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            Path("/etc/netns").rmdir()  # only if empty
        left = [name for name in run(IP, "netns", "list", check=False).stdout.split() if name in self.made]
        if left:
            errors.append(f"namespaces still listed: {left}")
        return errors

    def __enter__(self) -> Lan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- What the multi-host tests share (tests/system/test_netns.py, tests/system/test_rollout_netns.py) ---

DEPLOY = ROOT / "deploy"
INSTANCES = {"app1": 8001, "app2": 8002}  # deploy/nginx.conf's upstream ports, each on a host of its own
DB_NAME, DB_USER, DB_PASSWORD = "gateway", "gateway", secrets.token_urlsafe(16)


def wait_until(predicate: Callable[[], bool], timeout: float, message: str | Callable[[], str],
               interval: float = 0.1) -> float:
    """Wait until ``predicate()``; return the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(message() if callable(message) else message)
        time.sleep(interval)
    return time.monotonic() - start


class NetnsPostgres(PostgresCluster):
    """support.PostgresCluster with its server in the ``db`` host, listening on that host's address.

    The apps connect over the LAN with a password (``scram-sha-256``, from their addresses
    only); the test over the Unix socket, which no namespace hides.
    """

    def __init__(self, lan: Lan, bindir: Path, root: Path, clients: list[str]) -> None:
        self.lan = lan
        self.clients = clients
        super().__init__(bindir, root)

    def start(self) -> None:
        self.port = 5432
        hba = self.datadir / "pg_hba.conf"
        lines = "".join(f"host all all {address}/32 scram-sha-256\n" for address in self.clients)
        if lines not in hba.read_text():
            hba.write_text(hba.read_text() + lines)
        # deploy/postgresql.conf as shipped (keepalives, timeouts, max_connections 100).
        conf = self.datadir / "postgresql.conf"
        include = f"include '{DEPLOY / 'postgresql.conf'}'\n"
        if include not in conf.read_text():
            conf.write_text(conf.read_text() + include)
        options = f"-p {self.port} -k {self.root} -c listen_addresses={self.lan.address['db']} -c fsync=off"
        subprocess.run([*self.lan.exec_args("db"), *self.as_user, str(self.bindir / "pg_ctl"), "-D",
                        str(self.datadir), "-o", options, "-l", str(self.log_path), "-w", "start"],
                       check=True, capture_output=True, timeout=120)

    def url(self, database: str) -> str:
        """The test's own URL: the Unix socket."""
        return f"postgresql://postgres@/{database}?host={self.root}&port={self.port}"

    def lan_url(self) -> str:
        return f"postgres://{DB_USER}:{DB_PASSWORD}@{self.lan.address['db']}:{self.port}/{DB_NAME}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """Stop the server: fast, else immediate, else SIGKILL to the postmaster."""
        pidfile = self.datadir / "postmaster.pid"
        for mode in ("fast", "immediate"):
            if not pidfile.exists():
                return
            with contextlib.suppress(subprocess.SubprocessError):
                subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode,
                                "-w", "-t", "10", "stop"], capture_output=True, timeout=20)
        if pidfile.exists():
            with contextlib.suppress(ValueError, ProcessLookupError, OSError):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)


class Instance(ServerProcess):
    """``gateway serve`` in an app host, on that host's address; ready when /readyz answers
    200 to a client on the LAN."""

    def __init__(self, lan: Lan, host: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.lan = lan
        self.host = host
        self.env = env
        self.address = lan.address[host]
        port = INSTANCES[host]
        super().__init__([*lan.exec_args(host), *args], port=port,
                         env=env, log_path=log_path, ready_path="/readyz")
        self.url = f"http://{self.address}:{port}"

    def wait_ready(self, path: str, timeout: float = 60.0) -> None:
        url = f"http://{self.address}:{self.port}{path}"

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.host}: gateway exited with {self.proc.returncode}:\n{self.log}")
            try:
                return self.lan.on("client", httpx.get, url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, lambda: f"{self.host}: /readyz did not answer 200 within {timeout} s:\n{self.log}")

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records written so far."""
        out = []
        for line in self.log.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def problems(self, since: int) -> list[dict[str, Any]]:
        """WARNING and worse records after the first ``since`` records."""
        return [r for r in self.records()[since:] if r.get("level") in {"WARNING", "ERROR", "CRITICAL"}]
