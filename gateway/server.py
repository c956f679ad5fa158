"""Run the gateway on a server: uvicorn (ASGI, the default) or Granian (WSGI)."""

from __future__ import annotations

import errno
import functools
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import ChangeReload, Multiprocess

from gateway.config import Config
from gateway.protocol import TimedConfig

ASGI_TARGET = "gateway.asgi:application"
WSGI_TARGET = "gateway.wsgi:application"
SOURCE_DIRS = [
    str(Path(__file__).resolve().parent.parent / d) for d in ("gateway", "flask_hello", "django_hello")
]


class ServerError(RuntimeError):
    """The server cannot start; the message is one full sentence."""


def check_port(host: str, port: int) -> None:
    """Fail with a clear sentence if ``host:port`` cannot be bound."""
    listen(host, port, backlog=None).close()


def listen(host: str, port: int, backlog: int | None = 2048) -> socket.socket:
    """A socket bound to ``host:port`` (port 0: one the kernel picks), listening unless
    ``backlog`` is None, as uvicorn binds it; a clear sentence if it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        if backlog is not None:
            sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServerError(f"Port {port} on {host} is already in use; pick another with --port.") from None
        raise ServerError(f"Cannot listen on {host}:{port}: {exc.strerror}.") from None
    sock.set_inheritable(True)
    return sock


def run_uvicorn(
    config: Config,
    app: object = None,
    *,
    host: str,
    port: int,
    workers: int,
    reload: bool,
    log_level: str,
    keep_alive: float = 5,
    log_config: dict[str, Any] | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve the ASGI gateway with uvicorn: ``app`` in this process, or workers built from ``config``.

    ``sock``: a socket already bound (:func:`listen`), else uvicorn binds ``host:port``.
    """
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "log_config": log_config,
        # The gateway writes one access line per request itself (gateway.pipeline).
        "access_log": False,
        "lifespan": "on",
        # The HTTP protocol is gateway.protocol's, on httptools (TimedConfig sets it): it
        # times out late headers. (h11 would serve Django's cookies too: the gateway drops
        # the leading space Django 5.2 writes in Set-Cookie.)
        "timeout_graceful_shutdown": config.graceful_timeout,
        "timeout_keep_alive": keep_alive,
        # The gateway honours X-Forwarded-* itself, from GATEWAY_TRUSTED_PROXIES only.
        # uvicorn's own handling (on by default, trusting 127.0.0.1) would replace the
        # client address first, and the gateway would then see an untrusted client.
        "proxy_headers": False,
    }
    if app is not None:
        server = uvicorn.Server(TimedConfig(app, header_timeout=config.header_timeout, **options))
        exit_zero_after_signal()
        server.run(sockets=[sock] if sock is not None else None)
        return
    worker_config = WorkerConfig(config, workers=workers, reload=reload,
                                 reload_dirs=SOURCE_DIRS if reload else None, **options)
    if sock is None:
        sock = worker_config.bind_socket()
    target = uvicorn.Server(worker_config).run
    if reload:
        ChangeReload(worker_config, target=target, sockets=[sock]).run()
        return
    supervisor = Multiprocess(worker_config, sockets=[sock])
    close_before(sock, signal.SIGTERM, signal.SIGINT)
    try:
        supervisor.run()
    except ValueError:
        # A worker (re)started between the signal closing the socket and uvicorn seeing
        # it (SIGHUP's rolling restart, then SIGTERM) fails on the closed socket: stop
        # the workers that run, as the shutdown would have.
        if sock.fileno() != -1:
            raise
        supervisor.terminate_all()
        supervisor.join_all()
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        # A worker that cannot build the gateway would fail the same way on every restart:
        # uvicorn stops the supervisor (its STARTUP_FAILURE exit code), and so do we.
        raise ServerError("a worker could not start (its error is above); the server stopped.")


def exit_zero_after_signal() -> None:
    """Let a single uvicorn process exit 0 after a clean shutdown on SIGINT or SIGTERM.

    uvicorn restores the handlers it found and then raises the signal again, so that
    the process ends as killed by it. Handlers that do nothing, installed first, make
    that re-raised signal a no-op: the process exits 0 after its drain, with uvicorn's
    public API only.
    """
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: None)


def close_before(sock: socket.socket, *signals: signal.Signals) -> None:
    """On each of ``signals``, close ``sock`` first, then do what the installed handler does.

    uvicorn's supervisor keeps its copy of the listening socket open until every worker
    has drained, so the kernel goes on accepting connections nobody answers, and a proxy
    cannot retry their POSTs elsewhere; closed, new connections are refused, which it can.
    """
    for sig in signals:
        handler = signal.getsignal(sig)

        def close_then(signum: int, frame: Any, handler: Any = handler) -> None:
            sock.close()
            if callable(handler):
                handler(signum, frame)

        signal.signal(sig, close_then)


class WorkerConfig(TimedConfig):
    """uvicorn's ``Config`` carrying the gateway's :class:`~gateway.config.Config` to each worker.

    uvicorn hands its config to every worker process it starts (pickled); in the
    worker, :meth:`load` builds the gateway from the ``Config`` that came with it,
    so nothing travels through environment variables.
    """

    def __init__(self, gateway: Config, **options: Any) -> None:
        super().__init__(ASGI_TARGET, header_timeout=gateway.header_timeout, **options)
        self.gateway = gateway

    def load(self) -> None:
        if isinstance(self.app, str):
            from gateway.asgi import create_asgi_app
            from gateway.logs import configure_logging_if_unset
            from gateway.mounts import MountError, load_table

            configure_logging_if_unset(self.gateway.log_format, self.gateway.access_log)
            try:
                # SIGHUP restarts the workers (uvicorn's supervisor): each new one reads the
                # gateway.toml again; one that cannot start leaves the old worker serving.
                gateway = self.gateway.with_file(self.gateway.config_file) if self.gateway.config_file else self.gateway
                self.app = create_asgi_app(load_table(gateway), gateway)
            except Exception as exc:
                # One line, and the exit code that makes uvicorn's supervisor stop
                # instead of starting this worker again (and again).
                reason = str(exc) if isinstance(exc, (MountError, ValueError)) else f"{type(exc).__name__}: {exc}"
                logging.getLogger("gateway").error("Worker %d cannot start: %s", os.getpid(), reason)
                sys.exit(STARTUP_FAILURE)
        super().load()


def load_wsgi_gateway(config: Config, target: str = WSGI_TARGET) -> Any:
    """Build the WSGI gateway from ``config`` in a Granian worker (its ``target_loader``).

    Granian passes its target string too; the gateway is built from ``config`` alone.
    """
    from gateway.mounts import load_table
    from gateway.wsgi import create_wsgi_app

    return create_wsgi_app(load_table(config), config)


def run_granian(
    config: Config, *, host: str, port: int, workers: int, reload: bool, log_level: str,
    log_config: dict[str, Any] | None = None,
) -> None:
    """Serve the WSGI gateway with Granian's WSGI interface, built in each worker from ``config``."""
    try:
        from granian import Granian
        from granian.constants import Interfaces
        from granian.http import HTTP1Settings
        from granian.log import LogLevels
    except ImportError:
        raise ServerError(
            "Granian is not installed; install the extra: "
            'pip install "flask-django-gateway[granian]".'
        ) from None
    Granian(
        WSGI_TARGET,
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=workers,
        blocking_threads=config.threads,
        log_level=LogLevels(log_level if log_level != "trace" else "debug"),
        log_dictconfig=log_config,
        reload=reload,
        reload_paths=[Path(d) for d in SOURCE_DIRS] if reload else None,
        workers_kill_timeout=int(config.graceful_timeout) if config.graceful_timeout else None,
        http1_settings=HTTP1Settings(header_read_timeout=max(1, round(config.header_timeout * 1000))),
    ).serve(target_loader=functools.partial(load_wsgi_gateway, config))
