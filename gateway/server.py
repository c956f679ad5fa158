"""Run the gateway on a server: uvicorn (ASGI, the default) or Granian (WSGI)."""

from __future__ import annotations

import contextlib
import errno
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ASGI_TARGET = "gateway.asgi:application"
WSGI_TARGET = "gateway.wsgi:application"
SOURCE_DIRS = [
    str(Path(__file__).resolve().parent.parent / d) for d in ("gateway", "flask_hello", "django_hello")
]


class ServerError(RuntimeError):
    """The server cannot start; the message is one full sentence."""


def check_port(host: str, port: int) -> None:
    """Fail with a clear sentence if ``host:port`` cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServerError(
                    f"Port {port} on {host} is already in use; pick another with --port."
                ) from None
            raise ServerError(f"Cannot listen on {host}:{port}: {exc.strerror}.") from None


def run_uvicorn(
    app: object,
    *,
    host: str,
    port: int,
    workers: int,
    reload: bool,
    log_level: str,
    graceful_timeout: float | None,
    keep_alive: float = 5,
    log_config: dict[str, Any] | None = None,
) -> None:
    """Serve the ASGI gateway with uvicorn: ``app`` in this process, or workers."""
    import uvicorn

    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "log_config": log_config,
        # The gateway writes one access line per request itself (gateway.front).
        "access_log": False,
        "lifespan": "on",
        # httptools: h11 rejects the Set-Cookie values Django 5.2 writes (ticket #36467).
        "http": "httptools",
        "timeout_graceful_shutdown": graceful_timeout,
        "timeout_keep_alive": keep_alive,
        # The gateway honours X-Forwarded-* itself, from GATEWAY_TRUSTED_PROXIES only.
        # uvicorn's own handling (on by default, trusting 127.0.0.1) would replace the
        # client address first, and the gateway would then see an untrusted client.
        "proxy_headers": False,
    }
    if reload:
        uvicorn.run(ASGI_TARGET, reload=True, reload_dirs=SOURCE_DIRS, **options)
        return
    if workers > 1:
        from uvicorn.supervisors import Multiprocess

        class Supervisor(Multiprocess):
            def terminate_all(self) -> None:
                # Close the supervisor's copy of the listening socket first. uvicorn
                # keeps it open until every worker has drained, so the kernel goes on
                # accepting connections nobody answers, and a proxy cannot retry their
                # POSTs elsewhere; closed, new connections are refused, which it can.
                for sock in self.sockets:
                    sock.close()
                super().terminate_all()

        config = uvicorn.Config(ASGI_TARGET, workers=workers, **options)
        Supervisor(config, sockets=[config.bind_socket()]).run()
        return

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises SIGINT/SIGTERM once it has shut down, so the process
            # would end "killed by SIGTERM"; after a clean drain we exit 0 instead.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    Server(uvicorn.Config(app, **options)).run()  # type: ignore[arg-type]


def run_granian(
    *, host: str, port: int, workers: int, threads: int, reload: bool, log_level: str,
    graceful_timeout: float | None = None, log_config: dict[str, Any] | None = None,
) -> None:
    """Serve the WSGI gateway with Granian's WSGI interface."""
    try:
        from granian import Granian
        from granian.constants import Interfaces
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
        blocking_threads=threads,
        log_level=LogLevels(log_level if log_level != "trace" else "debug"),
        log_dictconfig=log_config,
        reload=reload,
        reload_paths=[Path(d) for d in SOURCE_DIRS] if reload else None,
        workers_kill_timeout=int(graceful_timeout) if graceful_timeout else None,
    ).serve()
