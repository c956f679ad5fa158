"""Run the gateway on a server: uvicorn (the default) or Granian, both on its ASGI entry point."""

from __future__ import annotations

import errno
import importlib.util
import logging
import multiprocessing.connection
import os
import resource
import signal
import socket
import ssl
import stat
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import ChangeReload, Multiprocess

from gateway.core.config import Config
from gateway.serve.protocol import TimedConfig

ASGI_TARGET = "gateway.asgi:application"
SOURCE_DIRS = [
    str(Path(__file__).resolve().parents[2] / d) for d in ("gateway", "flask_hello", "django_hello")
]
#: What --reload watches in its directories: code, and the apps' templates (uvicorn's
#: --reload-include patterns; "*.py" is uvicorn's default).
RELOAD_INCLUDES = ("*.py", "*.html", "*.jinja", "*.jinja2", "*.j2")
#: The backlog uvicorn listens with unless told (Granian's own default is 1024), and
#: the least Granian takes (it raises anything lower to this, silently).
UVICORN_BACKLOG = 2048
GRANIAN_MIN_BACKLOG = 128
GRANIAN_BACKLOG = 1024
#: hyper's buffer of each HTTP/1 connection under Granian (its ``max_buffer_size``; 408 KiB
#: by default, 8 KiB at least): what a response queues for a client that reads slowly, as
#: uvicorn's write buffer under ``gateway serve`` (32 KiB, gateway.serve.protocol), and the
#: longest request head hyper reads (past it, a 431; the gateway refuses headers over
#: 16 KiB anyway). With the default, 300 slow readers grew the server by 106 MiB.
GRANIAN_BUFFER = 32 * 1024


class ServerError(RuntimeError):
    """The server cannot start; the message is one full sentence."""


#: The most open files asked for when the hard limit is unlimited (Linux's default
#: ``fs.nr_open``: a soft limit above it is refused).
OPEN_FILES_CEILING = 1 << 20


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; return the limit.

    Each client's connection is a file, and so is each body or response spooled to disk.
    Many systems start services with a soft limit of 1,024 (or less) under a hard one of
    thousands: past it, accept() fails with EMFILE, and uvicorn logs an error a connection
    while new clients wait. Neither uvicorn, Granian nor gunicorn raises it; nginx has
    ``worker_rlimit_nofile`` for it. Workers inherit the limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:  # a container that forbids it: say so, serve on
            logging.getLogger("gateway").warning(
                "The limit of open files stays at %d (raising it to %d failed: %s); each client takes one.",
                soft, wanted, exc)
    return soft


def check_port(host: str, port: int) -> None:
    """Fail with a clear sentence if ``host:port`` cannot be bound."""
    listen(host, port, backlog=None).close()


def listen(host: str, port: int, backlog: int | None = UVICORN_BACKLOG) -> socket.socket:
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


def free_unix_path(path: str) -> None:
    """Make way for a Unix socket at ``path``: remove a stale socket file nothing listens
    on (left by a server that was killed); a clear sentence if a server listens there, or
    if ``path`` is not a socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ServerError(f"Cannot listen on unix socket {path}: {exc.strerror}.") from None
    if not stat.S_ISSOCK(mode):
        raise ServerError(f"{path} exists and is not a socket; pick another path with --uds.")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nothing listens: the file of a server that is gone
        return
    except OSError:
        pass  # it exists and answers otherwise (a full backlog): taken
    finally:
        probe.close()
    raise ServerError(f"Unix socket {path} is already in use; pick another with --uds.")


def listen_unix(path: str, backlog: int = UVICORN_BACKLOG) -> socket.socket:
    """A Unix socket bound at ``path`` and listening, as uvicorn's ``--uds`` binds it
    (mode 0666: who may connect is up to the directory); a clear sentence if it cannot be."""
    free_unix_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o666)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ServerError(f"Cannot listen on unix socket {path}: {exc.strerror}.") from None
    sock.set_inheritable(True)
    return sock


def adopt_fd(fd: int, backlog: int = UVICORN_BACKLOG) -> socket.socket:
    """The socket open as file descriptor ``fd`` (``--fd``: handed over by systemd or a
    supervisor), bound already, now listening; a clear sentence if it is not such a socket."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        raise ServerError(f"File descriptor {fd} is not open; --fd takes a socket this process inherited.") from None
    if not stat.S_ISSOCK(mode):
        raise ServerError(f"File descriptor {fd} is not a socket; --fd takes a listening socket.")
    sock = socket.socket(fileno=fd)
    name = sock.getsockname()
    if sock.type != socket.SOCK_STREAM or not name or (isinstance(name, tuple) and name[1] == 0):
        sock.detach()
        raise ServerError(f"File descriptor {fd} is not a stream socket bound to an address; --fd takes one.")
    try:
        sock.listen(backlog)
    except OSError as exc:
        sock.detach()
        raise ServerError(f"Cannot listen on file descriptor {fd}: {exc.strerror}.") from None
    sock.set_inheritable(True)
    return sock


def check_tls(certfile: str, keyfile: str | None) -> None:
    """Fail with a clear sentence if the certificate and key cannot serve TLS."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # An empty password: an encrypted key fails here rather than asking on the terminal.
        context.load_cert_chain(certfile, keyfile, password="")
    except ssl.SSLError as exc:
        files = f"{certfile} and {keyfile}" if keyfile else certfile
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ServerError(f"Cannot serve TLS with {files}: the key is not the certificate's.") from None
        raise ServerError(f"Cannot serve TLS with {files}: give a certificate and its private key, in PEM, "
                          "the key not encrypted.") from None
    except OSError as exc:
        raise ServerError(f"Cannot serve TLS: {exc.filename or certfile}: {exc.strerror}.") from None


def reload_dirs(config: Config, extra: Iterable[str] = ()) -> list[str]:
    """The directories ``--reload`` watches: the gateway's packages, the directory of every
    mounted app's top-level package (or module), and ``extra`` (``--reload-dir``).

    Found without importing anything (the supervising process holds no copy of the apps).
    """
    targets = [text.partition("=")[2] for text in (*config.mounts, *config.file.mounts)]
    targets += list(config.file.apps.values())
    dirs = [*SOURCE_DIRS]
    for target in targets:
        top = target.partition(":")[0].partition(".")[0]
        if not top:
            continue
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            continue  # the app cannot be imported: the start-up check says so
        if spec is None:
            continue
        if spec.submodule_search_locations:
            dirs += list(spec.submodule_search_locations)
        elif spec.origin and os.path.isfile(spec.origin):
            dirs.append(os.path.dirname(spec.origin))
    dirs += [str(Path(d).resolve()) for d in extra]
    return list(dict.fromkeys(str(Path(d).resolve()) for d in dirs))


def run_uvicorn(config: Config, app: object = None, *, log_config: dict[str, Any] | None = None,
                sock: socket.socket | None = None) -> None:
    """Serve the ASGI gateway with uvicorn, as ``config.server`` says: ``app`` in this process,
    or workers built from ``config``.

    ``sock``: a socket already bound (:func:`listen`, :func:`listen_unix`, :func:`adopt_fd`),
    else uvicorn binds the host and port.
    """
    more = config.server
    options: dict[str, Any] = {
        "host": more.host,
        "port": more.port,
        "log_level": more.log_level,
        "log_config": log_config,
        # The gateway writes one access line per request itself (gateway.core.pipeline).
        "access_log": False,
        "lifespan": "on",
        # The HTTP protocol is gateway.serve.protocol's, on httptools (TimedConfig sets it): it
        # times out late headers. (h11 would serve Django's cookies too: the gateway drops
        # the leading space Django 5.2 writes in Set-Cookie.)
        "timeout_graceful_shutdown": config.graceful_timeout,
        "timeout_keep_alive": more.keep_alive,
        # The gateway honours X-Forwarded-* itself, from GATEWAY_TRUSTED_PROXIES only.
        # uvicorn's own handling (on by default, trusting 127.0.0.1) would replace the
        # client address first, and the gateway would then see an untrusted client.
        "proxy_headers": False,
        "root_path": more.root_path,
        "backlog": more.backlog or UVICORN_BACKLOG,
        "ssl_certfile": more.ssl_certfile,
        "ssl_keyfile": more.ssl_keyfile,
        # uvicorn answers 503 once the open connections, the new one included, reach its
        # limit: N + 1 serves N at once, as its help says ("concurrent connections to allow").
        "limit_concurrency": more.limit_concurrency + 1 if more.limit_concurrency else None,
        "limit_max_requests": more.limit_max_requests,
        "limit_max_requests_jitter": more.limit_max_requests_jitter,
    }
    if app is not None:
        server = uvicorn.Server(TimedConfig(app, header_timeout=config.header_timeout, **options))
        exit_zero_after_signal()
        server.run(sockets=[sock] if sock is not None else None)
        return
    if more.reload:
        options["reload_dirs"] = list(more.reload_dirs) or reload_dirs(config)
        options["reload_includes"] = list(RELOAD_INCLUDES)
    worker_config = WorkerConfig(config, workers=more.workers, reload=more.reload, **options)
    if sock is None:
        sock = worker_config.bind_socket()
    if more.reload:
        ChangeReload(worker_config, target=uvicorn.Server(worker_config).run, sockets=[sock]).run()
        return
    # uvicorn's supervisor takes no server: each worker runs uvicorn's own Server, so what
    # the gateway's workers do differently lives in the config (WorkerConfig) and in the
    # protocol it names (gateway.serve.protocol), such as answering at shutdown.
    supervisor = GatewaySupervisor(worker_config, sockets=[sock])
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
    """uvicorn's ``Config`` carrying the gateway's :class:`~gateway.core.config.Config` to each worker.

    uvicorn hands its config to every worker process it starts (pickled); in the
    worker, :meth:`load` builds the gateway from the ``Config`` that came with it,
    so nothing travels through environment variables.
    """

    def __init__(self, gateway: Config, **options: Any) -> None:
        super().__init__(ASGI_TARGET, header_timeout=gateway.header_timeout, **options)
        self.gateway = gateway

    def load(self) -> None:
        if isinstance(self.app, str):
            from gateway.serve.builder import build

            try:
                # From the configuration the supervisor last accepted (GatewaySupervisor), not
                # the file as it is now: a worker that replaces one that died serves what the
                # others serve, even after the file changed, or became one that cannot work.
                self.app = build(self.gateway, "asgi")
            except Exception as exc:
                # One line, and the exit code that makes uvicorn's supervisor stop
                # instead of starting this worker again (and again).
                logging.getLogger("gateway").error("Worker %d cannot start: %s", os.getpid(), why_not_built(exc))
                sys.exit(STARTUP_FAILURE)
        super().load()


def reread(accepted: Config) -> Config | str:
    """``accepted`` with its ``gateway.toml`` read again, for a reload: the new
    configuration, or why the file cannot be read, in one line."""
    if accepted.config_file is None:
        return accepted
    try:
        return accepted.with_file(accepted.config_file)
    except ValueError as exc:
        return str(exc).rstrip(".")


def not_reloaded(problem: str) -> None:
    """The one line of a reload refused (the workers serve on)."""
    logging.getLogger("gateway").error(
        "The configuration was not reloaded: %s; the workers keep serving what they had.", problem)


class GatewaySupervisor(Multiprocess):
    """uvicorn's supervisor of ``--workers``, whose workers all build from the configuration
    it last accepted (:class:`WorkerConfig`'s ``gateway``).

    On ``SIGHUP`` it reads the ``gateway.toml`` once, here, and hands that to the new
    workers of uvicorn's rolling restart; a file that cannot be read is one line, and
    starts no worker. Before, every worker read the file as it started, a worker that
    replaced one that died too: after a reload refused a file (or with a file edited and
    not yet reloaded), that worker failed to start, and uvicorn's supervisor then stopped
    the whole server (its ``STARTUP_FAILURE``), or it served other rules than the rest.
    SIGHUPs that come together are one reload: uvicorn's supervisor handled each in turn,
    a rolling restart each (24 of them for 24 signals).
    """

    def handle_hup(self) -> None:
        if signal.SIGHUP in self.signal_queue:  # a later SIGHUP, queued already, reads the file then: one restart
            return
        worker_config = self.config
        assert isinstance(worker_config, WorkerConfig)
        accepted = worker_config.gateway
        fresh = reread(accepted)
        if isinstance(fresh, str):
            not_reloaded(fresh)
            return
        first = self.processes[0] if self.processes else None
        worker_config.gateway = fresh
        super().handle_hup()
        if first is not None and self.processes[0] is first:  # its first new worker did not start
            worker_config.gateway = accepted


def why_not_built(exc: BaseException) -> str:
    """One line saying why the gateway could not be built: the message alone for what the
    configuration's checks raise (they name the file, line and fix), else the type too."""
    from gateway.core.mounts import MountError

    return str(exc) if isinstance(exc, (MountError, ValueError)) else f"{type(exc).__name__}: {exc}"


#: Seconds a reload's check may take to build the gateway (it imports the apps, Django too).
CHECK_TIMEOUT = 120


def problem_building(config: Config) -> str | None:
    """What stops a new worker from building the gateway from ``config`` (its gateway.toml
    read already), in one line, or None if it builds.

    Built in a process of its own, started as Granian 2.8 starts its workers (Python's
    default start method, ``fork`` on Linux, else ``spawn``), so that the server's main
    process imports no app, and the check imports each module as a new worker would.
    """
    import multiprocessing

    forked = multiprocessing.get_start_method() == "fork"
    context = multiprocessing.get_context("fork") if forked else multiprocessing.get_context("spawn")
    answer, sender = context.Pipe(duplex=False)
    process = context.Process(target=_try_building, args=(config, sender), name="gateway-check", daemon=True)
    process.start()
    sender.close()
    try:
        if not answer.poll(CHECK_TIMEOUT):
            return f"building the gateway took more than {CHECK_TIMEOUT} s"
        try:
            problem: str | None = answer.recv()
        except EOFError:  # it died before answering: killed, or out of memory
            process.join(5)
            return f"the process that built the gateway exited with status {process.exitcode}"
        return problem
    finally:
        answer.close()
        if process.is_alive():
            process.kill()
        process.join(5)


def _try_building(config: Config, sender: Any) -> None:
    """In the check's process: build the gateway as a worker would, and say how it went."""
    try:
        load_asgi_gateway(config)
    except BaseException as exc:  # SystemExit from an app's import included: one line of it
        sender.send(why_not_built(exc))
    else:
        sender.send(None)
    sender.close()


def load_asgi_gateway(config: Config, target: str = ASGI_TARGET, *, root_path: str = "") -> Any:
    """Build the ASGI gateway from ``config`` (its ``gateway.toml`` read already) in a
    Granian worker. Granian passes its target string too; the gateway is built from
    ``config`` alone."""
    from gateway.serve.builder import build

    return GranianScope(build(config, "asgi"), root_path=root_path)


class WorkerLoader:
    """Granian's ``target_loader``: each new worker builds the gateway from :attr:`config`,
    the configuration the main process last accepted (:func:`granian_class`), never from
    the file as it is when the worker starts."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self, target: str = ASGI_TARGET) -> Any:
        return load_asgi_gateway(self.config, target, root_path=self.config.server.root_path)


class GranianScope:
    """Make Granian's ASGI scope what uvicorn's is, then call the gateway.

    - Granian 2.8 gives the server's and the client's port as strings (``("127.0.0.1",
      "8000")``); ASGI says integers, and the apps compare them with integers (Starlette's
      ``request.url`` leaves out a default port only when it equals 80 or 443). On a Unix
      socket the server is its path and no port, the client None, as uvicorn has them.
    - ``root_path`` (``--root-path``) is uvicorn's: requests arrive without it (the proxy
      in front strips it) and the app sees it in ``root_path`` and at the start of
      ``path``. (Granian's own ``url_path_prefix`` means the opposite: it expects the
      prefix still in the path.)
    """

    __slots__ = ("app", "root_path")

    def __init__(self, app: Any, *, root_path: str = "") -> None:
        self.app = app
        self.root_path = root_path

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            host, port = scope["server"]
            scope["server"] = (host, int(port) or None)  # on a Unix socket: its path, port "0"
            host, port = scope["client"]
            scope["client"] = (host, int(port)) if host else None  # on a Unix socket: ("", "0")
            if self.root_path:
                scope["root_path"] = self.root_path
                scope["path"] = self.root_path + scope["path"]
        await self.app(scope, receive, send)


def source_filter() -> type:
    """A watchfiles filter for Granian's reloader that passes what uvicorn's
    ``RELOAD_INCLUDES`` would (code and templates): Granian's default passes every file,
    the SQLite database in a watched directory included."""
    import watchfiles

    suffixes = tuple(pattern[1:] for pattern in RELOAD_INCLUDES)

    class SourceFilter(watchfiles.DefaultFilter):
        def __call__(self, change: watchfiles.Change, path: str) -> bool:
            return path.endswith(suffixes) and super().__call__(change, path)

    return SourceFilter


def granian_class(config: Config) -> Any:
    """Granian's server class (it imports Granian), with two things of the gateway's own,
    for the main process that calls this:

    - **One configuration for every worker.** The main process reads the gateway.toml on
      ``SIGHUP``, once; the check below and every worker started after it build from that
      reading (:class:`WorkerLoader`), a worker that replaces one that died included. Each
      new worker read the file again as it started: one replacing a dead worker after a
      refused reload failed, and a file changed between the check and the worker's read
      was served unchecked.
    - **A reload that cannot take the site down.** Granian answers ``SIGHUP`` by starting
      new workers, then stopping the old ones; a new
      worker that cannot start makes its main process shut down, so a file that cannot
      work took the whole site down (measured with Granian 2.8.9). No public hook can stop
      a reload (``on_reload`` hooks run first, but their answer is ignored), so this
      reaches into ``_reload``, the method that Granian 2.5-2.8's serve loop calls on the
      signal: :func:`problem_building` first.
    - **A new worker that cannot start.** On a reload (or at the end of a worker's
      lifetime) Granian starts the new worker, waits ``respawn_interval`` and stops the old
      one; a new worker that exited meanwhile (a module that changed after the check, a
      file replaced between the check and the worker's read) ended the main process, a full
      outage (measured with SIGHUPs 0.3 s apart while the file changed). Here the old worker
      goes on serving, with one line, and the new one is not counted as a crash. This is
      Granian 2.8's ``_respawn_workers``, written again with that one difference.
    - **A worker stopped while it starts.** Granian forks its workers from the main
      process, whose ``SIGTERM`` and ``SIGINT`` handler they keep until they set their own,
      after the gateway is built: a signal meanwhile only set a flag of the main process's
      copy in the worker, which then started serving and never stopped, while the main
      process waited for it for ever (measured with Granian 2.8.9: ``SIGTERM`` to the group
      just after the first answer, beside two busy loops, hung 4 runs of 8). In a worker,
      the handler does what the signal does by default: the worker ends.

    ``tests/system/test_granian.py`` holds both to Granian's behaviour.
    """
    from granian import Granian

    logger = logging.getLogger("gateway")
    main_pid = os.getpid()

    class GatewayGranian(Granian):  # type: ignore[misc, valid-type]
        #: What every new worker builds from: the configuration last accepted.
        loader = WorkerLoader(config)

        def _reload(self, *args: Any, **kwargs: Any) -> Any:
            # Read once, here: the check and every new worker build from this reading.
            fresh = reread(self.loader.config)
            problem: str | None
            if isinstance(fresh, str):
                problem = fresh
            elif (problem := problem_building(fresh)) is None:
                self.loader.config = fresh
                return super()._reload(*args, **kwargs)
            not_reloaded(problem)
            # What Granian's own _reload does first: the signal is handled.
            self.reload_signal = False
            self.main_loop_interrupt.clear()
            return None

        def _respawn_workers(self, workers: Any, spawn_target: Any, target_loader: Any, delay: float = 0) -> None:
            if not delay:  # a crashed worker's replacement: nothing old to keep
                super()._respawn_workers(workers, spawn_target, target_loader, delay=delay)
                return None
            for idx in workers:  # a reload or a worker's lifetime: the old one serves until the new one stands
                self.respawned_wrks[idx] = time.monotonic()
                logger.info("Respawning worker-%d", idx + 1)
                old = self.wrks[idx]
                new = self._spawn_worker(idx=idx, target=spawn_target, callback_loader=target_loader)
                new.interrupt_by_parent = True  # an exit while we wait is this reload's to handle
                new.start()
                # Granian's own wait before it stops the old worker. On the process's sentinel,
                # not join(): Granian's watcher thread joins it too, and the one that reaps it
                # second sees no child (ECHILD) and takes it for alive.
                exited = bool(multiprocessing.connection.wait([new.inner.sentinel], delay))
                if not exited:
                    new.interrupt_by_parent = False  # from now on its exit is a crash, as Granian has it
                    exited = bool(multiprocessing.connection.wait([new.inner.sentinel], 0))
                if exited:
                    deadline = time.monotonic() + 1.0  # the exit code, once a join has reaped it
                    while new.inner.exitcode is None and time.monotonic() < deadline:
                        time.sleep(0.01)
                    logger.error("The configuration was not reloaded: worker-%d's replacement exited with status "
                                 "%s as it started; the old worker keeps serving what it had.", idx + 1,
                                 new.inner.exitcode)
                    continue
                self.wrks[idx] = new
                old.terminate()
                old.inner.join(self.workers_kill_timeout)
                if old.is_alive():
                    logger.warning("Killing old worker-%d after it refused to stop", idx + 1)
                    old.kill()
                    old.inner.join()
                logger.info("Stopped old worker-%d", idx + 1)
            self._metrics.incr_spawn(len(workers))
            return None

        def signal_handler_interrupt(self, *args: Any, **kwargs: Any) -> None:
            if os.getpid() != main_pid:  # a worker that has not set its own handlers yet
                signum = args[0] if args else signal.SIGTERM
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            super().signal_handler_interrupt(*args, **kwargs)

    return GatewayGranian


def run_granian(config: Config, *, log_config: dict[str, Any] | None = None) -> None:
    """Serve the ASGI gateway with Granian's ASGI interface, as ``config.server`` says, built
    in each worker from ``config``.

    The ASGI entry point, not the WSGI one, so that the gateway's own body buffering,
    body and send timeouts and response buffering apply as on uvicorn: under Granian's
    WSGI interface each request held one of Granian's threads while its body arrived and
    its response left, and Granian read chunked bodies itself (``docs/hardening.md``).
    Granian runs the lifespan (``Interfaces.ASGI``); its access log stays off, as the
    gateway writes its own; its one Python thread per worker is the event loop, and the
    WSGI apps run on the gateway's pool of ``--threads``.

    Of :class:`~gateway.core.config.ServerSettings`, Granian takes the host, port, workers,
    log level, ``uds``, ``backlog`` (128 at least), ``root_path``, TLS and the reload
    directories; ``gateway serve`` refuses the others.
    """
    more = config.server
    host, port, workers, reload, log_level = more.host, more.port, more.workers, more.reload, more.log_level
    try:
        import granian  # noqa: F401 - the extra is installed
        from granian.constants import HTTPModes, Interfaces, SSLProtocols
        from granian.http import HTTP1Settings
        from granian.log import LogLevels
    except ImportError:
        raise ServerError(
            "Granian is not installed; install the extra: "
            'pip install "flask-django-gateway[granian]".'
        ) from None
    server = granian_class(config)(
        ASGI_TARGET,
        address=host,
        port=port,
        uds=Path(more.uds) if more.uds else None,
        uds_permissions=0o666 if more.uds else None,  # as uvicorn's --uds
        interface=Interfaces.ASGI,
        # HTTP/1.1 only, as uvicorn: with HTTP/2 detection (Granian's default, "auto")
        # hyper-util reads the first bytes with no timer, so a connection that never sent
        # one stayed open (25 s and more, measured); hyper's HTTP/1 header timeout starts
        # when the connection opens (hyperium/hyper#3305).
        http=HTTPModes.http1,
        workers=workers,
        backlog=more.backlog or GRANIAN_BACKLOG,
        # Granian sizes its backpressure (the requests a worker hands to Python at once)
        # from the backlog unless told: keep it what it is by default, so that --backlog
        # sizes the listen queue only, as on uvicorn.
        backpressure=max(1, GRANIAN_BACKLOG // workers),
        log_level=LogLevels(log_level if log_level != "trace" else "debug"),
        log_dictconfig=log_config,
        ssl_cert=Path(more.ssl_certfile) if more.ssl_certfile else None,
        ssl_key=Path(more.ssl_keyfile) if more.ssl_keyfile else None,
        # Granian's default minimum is TLS 1.3; uvicorn (OpenSSL's defaults) takes 1.2 too.
        ssl_protocol_min=SSLProtocols.tls12,
        reload=reload,
        reload_paths=[Path(d) for d in (more.reload_dirs or reload_dirs(config))] if reload else None,
        reload_filter=source_filter() if reload else None,
        workers_kill_timeout=int(config.graceful_timeout) if config.graceful_timeout else None,
        http1_settings=HTTP1Settings(header_read_timeout=max(1, round(config.header_timeout * 1000)),
                                     max_buffer_size=GRANIAN_BUFFER),
        # A worker that died (killed, out of memory) is replaced, as uvicorn's supervisor
        # does: by default Granian's main process then shut the whole server down.
        respawn_failed_workers=True,
    )
    server.serve(target_loader=server.loader)
