"""What the benchmark measures: the configurations, their servers and workloads.

A configuration is one way to serve the apps (the gateway on uvicorn, the Flask app
alone on gunicorn, Starlette mounts, ...). It starts one server, or one per app when the
apps are served alone; each server answers some of the workloads (the admin writes: the
gateway's configurations only). ``{port}`` in a command line is replaced with a free
loopback port. Every server has one worker process.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

HOST = "127.0.0.1"
SLOW_MOUNT = "/slow=bench.apps:slow_app"
#: The demo apps and the slow view: a command that names a mount gets the demo apps only if it names them.
MOUNTS = ("/flask=flask_hello:app", "/django=django_hello.wsgi:application", SLOW_MOUNT)
MOUNT_ARGS = tuple(arg for mount in MOUNTS for arg in ("--mount", mount))


@dataclass(frozen=True)
class Workload:
    """A page driven by wrk with a fixed number of keep-alive connections."""

    name: str
    title: str
    connections: int
    timeout: float = 2.0  # seconds wrk waits for an answer before it counts a timeout


WORKLOADS = (
    Workload("flask", "Flask hello", 16),
    Workload("django", "Django hello", 16),
    Workload("slow", "Slow view (50 ms)", 64),
    # A write may wait for SQLite's write lock up to its busy timeout (20 s): only a write
    # that fails counts as one, and its wait shows in the latency figures.
    Workload("write", "Admin writes", 16, timeout=30.0),
)
# The slow view blocks 50 ms: with 64 connections no server can beat 64 / 0.05 s.
SLOW_IDEAL_RPS = 64 / 0.05
# The write workload POSTs the admin's "add greeting" form, logged in as a superuser
# (``bench/write.lua``); a write succeeded when the admin answers 302 to the list.
WRITE_PATH = "/django/admin/django_hello/greeting/add/"
WRITE_LOGIN_PATH = "/django/admin/login/"
WRITE_USER, WRITE_PASSWORD = "bench", "bench-writes-correct-horse-42"


def ready_path(workload: str, path: str) -> str:
    """The page polled for 200 before driving ``path``: the add form needs a login, its login page does not."""
    return WRITE_LOGIN_PATH if workload == "write" else path


@dataclass(frozen=True)
class Launch:
    """One server process and the path of each workload it serves."""

    argv: tuple[str, ...]
    paths: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Setup:
    """A configuration: how the apps are composed and served."""

    key: str
    label: str
    group: str  # "gateway", "alone" (the baseline) or "peer"
    server: str  # "uvicorn", "granian", "gunicorn-gthread", "gunicorn-sync"
    launches: tuple[Launch, ...]

    def workloads(self) -> list[str]:
        """Return the workloads this configuration serves, in the usual order."""
        served = {name for launch in self.launches for name in launch.paths}
        return [w.name for w in WORKLOADS if w.name in served]


@dataclass(frozen=True)
class InProcess:
    """The ceiling: a WSGI app called in a loop, no server (``bench/ceiling.py``)."""

    key: str
    label: str
    targets: dict[str, str]  # workload -> bench.ceiling target name


# The gateway and the peer compositions mount the apps at the same prefixes; only the
# gateway's configurations are driven with the admin writes (the embedded SQLite database).
GATEWAY_PATHS = {"flask": "/flask/", "django": "/django/", "slow": "/slow/"}
WRITE_PATHS = {**GATEWAY_PATHS, "write": WRITE_PATH}


def _py(*args: str) -> tuple[str, ...]:
    return (sys.executable, *args)


def gateway_serve(*extra: str, level: str = "warning") -> tuple[str, ...]:
    """``gateway serve`` on ``{port}``; at ``warning`` its access log is off, as on every other server."""
    return _py("-m", "gateway", "serve", "--host", HOST, "--port", "{port}", "--log-level", level, *extra)


def uvicorn(target: str, *, factory: bool = False) -> tuple[str, ...]:
    """uvicorn with the options ``gateway serve`` uses (httptools, uvloop, one worker)."""
    return _py(
        "-m", "uvicorn", target, *(["--factory"] if factory else []),
        "--host", HOST, "--port", "{port}", "--http", "httptools", "--lifespan", "auto",
        "--log-level", "warning", "--no-access-log",
    )  # fmt: skip


def gunicorn(target: str, worker: str, threads: int) -> tuple[str, ...]:
    """gunicorn with one worker of class ``worker`` (``sync`` or ``gthread``)."""
    extra = ("--threads", str(threads)) if worker == "gthread" else ()
    return _py(
        "-m", "gunicorn", "--workers", "1", "--worker-class", worker, *extra,
        "--bind", f"{HOST}:{{port}}", "--log-level", "warning", target,
    )  # fmt: skip


def granian(target: str, threads: int) -> tuple[str, ...]:
    """Granian's WSGI interface with the options ``gateway serve --server granian`` uses."""
    return _py(
        "-m", "granian", "--interface", "wsgi", "--host", HOST, "--port", "{port}",
        "--workers", "1", "--blocking-threads", str(threads), "--log-level", "warning", target,
    )  # fmt: skip


def setups(threads: int) -> list[Setup]:
    """Return every configuration, the default gateway first."""
    mounts = {"GATEWAY_MOUNTS": " ".join(MOUNTS)}
    apps = {"flask": "flask_hello:app", "django": "django_hello.wsgi:application", "slow": "bench.apps:slow_app"}

    def one(argv: tuple[str, ...], env: dict[str, str] | None = None, paths: dict[str, str] = GATEWAY_PATHS
            ) -> tuple[Launch, ...]:
        return (Launch(argv, paths, env or {}),)

    def alone(argv_for: Callable[[str], tuple[str, ...]]) -> tuple[Launch, ...]:
        return tuple(Launch(argv_for(name), {name: "/"}) for name in apps)

    wsgi = "gateway.wsgi:application"
    # fmt: off
    return [
        Setup("gateway-uvicorn", "gateway serve (ASGI, uvicorn)", "gateway", "uvicorn",
              one(gateway_serve(*MOUNT_ARGS), paths=WRITE_PATHS)),
        Setup("gateway-accesslog", "gateway serve with its access log (the default)", "gateway", "uvicorn",
              one(gateway_serve(*MOUNT_ARGS, level="info"), paths=WRITE_PATHS)),
        Setup("gateway-granian", "gateway serve --server granian (ASGI)", "gateway", "granian",
              one(gateway_serve("--server", "granian", *MOUNT_ARGS), paths=WRITE_PATHS)),
        Setup("gateway-granian-accesslog", "gateway serve --server granian with its access log", "gateway",
              "granian", one(gateway_serve("--server", "granian", *MOUNT_ARGS, level="info"),
                             paths=WRITE_PATHS)),
        Setup("gateway-gthread", "gateway.wsgi on gunicorn gthread", "gateway", "gunicorn-gthread",
              one(gunicorn(wsgi, "gthread", threads), mounts, WRITE_PATHS)),
        Setup("gateway-sync", "gateway.wsgi on gunicorn sync", "gateway", "gunicorn-sync",
              one(gunicorn(wsgi, "sync", threads), mounts, WRITE_PATHS)),
        Setup("alone-uvicorn", "app alone, uvicorn + WSGIBridge", "alone", "uvicorn",
              alone(lambda name: uvicorn(f"bench.alone:{name}_app", factory=True))),
        Setup("alone-granian", "app alone, Granian WSGI", "alone", "granian",
              alone(lambda name: granian(apps[name], threads))),
        Setup("alone-gthread", "app alone, gunicorn gthread", "alone", "gunicorn-gthread",
              alone(lambda name: gunicorn(apps[name], "gthread", threads))),
        Setup("alone-sync", "app alone, gunicorn sync", "alone", "gunicorn-sync",
              alone(lambda name: gunicorn(apps[name], "sync", threads))),
        Setup("peer-asgiref", "asgiref WsgiToAsgi + Werkzeug dispatcher", "peer", "uvicorn",
              one(uvicorn("bench.peers:asgiref_dispatcher", factory=True))),
        Setup("peer-starlette", "Starlette Mount + a2wsgi", "peer", "uvicorn",
              one(uvicorn("bench.peers:starlette_mount", factory=True))),
        Setup("peer-hypercorn", "Hypercorn DispatcherMiddleware + a2wsgi", "peer", "uvicorn",
              one(uvicorn("bench.peers:hypercorn_dispatcher", factory=True))),
        Setup("peer-django-asgi", "Django's own ASGI handler (Django only)", "peer", "uvicorn",
              (Launch(uvicorn("django_hello.asgi:application"), {"django": "/"}),)),
    ]
    # fmt: on


CEILINGS = (
    InProcess("ceiling", "bare app, in-process (no server)", {"flask": "flask", "django": "django"}),
    InProcess("gateway-inprocess", "gateway.wsgi, in-process (no server)",
              {"flask": "gateway-flask", "django": "gateway-django"}),
)  # fmt: skip

# The memory and start-up comparison: the gateway alone in one process (no slow mount)
# against the two apps in two processes, all on uvicorn.
FOOTPRINT_GATEWAY = Launch(gateway_serve(), {"flask": "/flask/", "django": "/django/"})
FOOTPRINT_ALONE = (
    Launch(uvicorn("bench.alone:flask_app", factory=True), {"flask": "/"}),
    Launch(uvicorn("bench.alone:django_app", factory=True), {"django": "/"}),
)
