"""The ``gateway`` command: serve the mounts, list them, manage Django.

::

    gateway serve [--host 127.0.0.1] [--port 8000] [--workers N] [--threads N]
                  [--reload] [--log-level LEVEL] [--mount /prefix=module:attr ...]
                  [--server uvicorn|granian]
    gateway init [--force]
    gateway routes [--mount ...] [--config gateway.toml] [--explain PATH]
    gateway reload PID
    gateway progress [--window MINUTES]
    gateway rollout status|pause|resume|promote|rollback [RULE] [--reason TEXT] [--by NAME]
    gateway diff [shadow.jsonl]
    gateway migrate
    gateway manage <django command> [args...]
    gateway flask <flask command> [args...]
    gateway check [--deploy]

Each option of ``serve`` overrides its ``GATEWAY_*`` variable: the command builds one
:class:`gateway.core.config.Config` from the environment (which names the variable when a
value is wrong), puts the options given over it, and hands it to the server and each
of its workers.
"""

from __future__ import annotations

import atexit
import contextlib
import logging.config
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from gateway import __version__
from gateway.core.config import (
    SETTINGS,
    Config,
    ServerSettings,
    Setting,
    load_config,
    production_problems,
)
from gateway.core.mounts import Mount, MountError, MountSpec, MountTable
from gateway.observe.logs import logging_config, printable
from gateway.observe.metrics import prepare_directory as prepare_metrics_directory
from gateway.observe.tracing import EXTRA as TRACING_EXTRA
from gateway.observe.tracing import describe as describe_tracing
from gateway.observe.tracing import installed as tracing_installed
from gateway.serve import frameworks
from gateway.serve.builder import build, load_table
from gateway.serve.runners import (
    GRANIAN_MIN_BACKLOG,
    UVICORN_BACKLOG,
    ServerError,
    adopt_fd,
    check_port,
    check_tls,
    free_unix_path,
    listen,
    listen_unix,
    raise_open_files_limit,
    reload_dirs,
    run_granian,
    run_uvicorn,
)

LOG_LEVELS = ["critical", "error", "warning", "info", "debug", "trace"]

_METAVARS = {"--mount": "/PREFIX=MODULE:ATTR", "--stream-body": "PREFIX", "--stream-response": "PREFIX",
             "--trusted-proxies": "ADDRESSES",
             "--allowed-hosts": "HOSTS", "--threads": "N", "--log-format": "text|json"}



def echo(text: str = "", err: bool = False) -> None:
    """``click.echo``, each line with what does not print escaped: the output quotes paths,
    rules and files that others wrote (``gateway routes`` printed a rule's ``\\x1b]0;...``
    to the terminal as it was)."""
    click.echo("\n".join(printable(line) for line in text.split("\n")), err=err)

def setting_option(setting: Setting) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The ``gateway serve`` option of a setting of the table (:data:`gateway.core.config.SETTINGS`):
    its text is read by the setting's own reader, in :func:`_config`."""
    assert setting.option is not None
    first = setting.help.split(". ")[0].rstrip(".").replace("`", "")
    shown = f" [env: {setting.variable}; default: {setting.default or 'none'}]"
    if setting.kind == "flag":
        return click.option(f"{setting.option}/--no-{setting.option[2:]}", setting.field, default=None,
                            help=first + "." + shown)
    if setting.kind == "multiple":
        return click.option(setting.option, setting.field, multiple=True, metavar=_METAVARS.get(setting.option),
                            help=f"{first} (repeatable; replaces the variable).{shown}")
    return click.option(setting.option, setting.field, default=None, metavar=_METAVARS.get(setting.option, "VALUE"),
                        help=first + "." + shown)


def setting_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Every ``gateway serve`` option the settings' table names."""
    for setting in reversed([s for s in SETTINGS if s.option is not None]):
        command = setting_option(setting)(command)
    return command


mount_option = setting_option(next(s for s in SETTINGS if s.field == "mounts"))


config_option = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
    help="A gateway.toml of named apps, mounts and route rules [env: GATEWAY_CONFIG].",
)


#: ``gateway --traceback``: an error's whole traceback after its one line.
_show_traceback = False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gateway")
@click.option("--traceback", "traceback_", is_flag=True,
              help="After an error's one line, print its whole traceback (an app that fails to import, ...).")
def cli(traceback_: bool) -> None:
    """Serve your Flask and Django apps from one process (the demo apps at /flask and /django
    when gateway.toml names none)."""
    global _show_traceback
    _show_traceback = traceback_


def _print_traceback(exc: BaseException) -> None:
    """With ``--traceback``: the traceback of what caused ``exc`` (``exc`` itself if nothing did)."""
    if _show_traceback:
        import traceback

        cause = exc.__cause__ or exc
        click.echo("".join(traceback.format_exception(cause)).rstrip(), err=True)


def load_env_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    """``--env-file``: load the file into the environment first, as uvicorn does (python-dotenv;
    variables already set win), before any option reads its variable or the Config is built."""
    if value is not None:
        from dotenv import load_dotenv

        load_dotenv(value)


@cli.command()
@click.option(
    "--env-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), is_eager=True,
    expose_value=False, callback=load_env_file,
    help="Load environment variables (GATEWAY_*, DJANGO_*, ...) from this file first; those already set win.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--reload", is_flag=True, help="Restart when the code changes (development).")
@click.option("--log-level", default="info", show_default=True, type=click.Choice(LOG_LEVELS))
@click.option("--server", default="uvicorn", show_default=True, type=click.Choice(["uvicorn", "granian"]))
@click.option(
    "--keep-alive", default=5.0, show_default=True, type=click.FloatRange(min=0),
    help="Seconds an idle keep-alive connection stays open (uvicorn); keep it above your proxy's.",
)
@click.option("--uds", metavar="PATH", help="Listen on this Unix domain socket instead of --host/--port.")
@click.option("--fd", type=click.IntRange(min=0),
              help="Serve on the listening socket open as this file descriptor (systemd, a supervisor); uvicorn only.")
@click.option("--backlog", type=click.IntRange(min=1),
              help="Connections the kernel holds waiting to be accepted [default: 2048; Granian's 1024, 128 at least].")
@click.option("--root-path", default="", metavar="PATH",
              help="The path a proxy serves the gateway under and strips (the ASGI root_path, SCRIPT_NAME).")
@click.option("--ssl-certfile", type=click.Path(exists=True, dir_okay=False),
              help="Serve HTTPS with this certificate (PEM); see GATEWAY_HTTPS for secure cookies and HSTS.")
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False),
              help="The certificate's private key (PEM).")
@click.option("--limit-concurrency", type=click.IntRange(min=1),
              help="Connections served at once per worker; past them, 503 (uvicorn only).")
@click.option("--limit-max-requests", type=click.IntRange(min=1),
              help="Requests a worker serves before it is replaced by a new one (uvicorn only).")
@click.option("--limit-max-requests-jitter", default=0, type=click.IntRange(min=0),
              help="Up to this many more, at random per worker, so that workers are not replaced at once.")
@click.option("--reload-dir", "reload_dir", multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="With --reload, watch this directory too (repeatable); the gateway's and the mounted "
              "apps' directories are watched anyway.")
@setting_options
@config_option
def serve(
    host: str,
    port: int,
    uds: str | None,
    fd: int | None,
    backlog: int | None,
    root_path: str,
    ssl_certfile: str | None,
    ssl_keyfile: str | None,
    limit_concurrency: int | None,
    limit_max_requests: int | None,
    limit_max_requests_jitter: int,
    reload_dir: tuple[Path, ...],
    workers: int,
    reload: bool,
    log_level: str,
    server: str,
    keep_alive: float,
    config_file: Path | None,
    **settings: Any,
) -> None:
    """Serve all mounts on one server."""
    config = _config(settings, config_file)
    root_path = _root_path(root_path)
    _refuse_server_options(server, reload=reload, uds=uds, fd=fd, backlog=backlog, ssl_certfile=ssl_certfile,
                           ssl_keyfile=ssl_keyfile, limit_concurrency=limit_concurrency,
                           limit_max_requests=limit_max_requests, jitter=limit_max_requests_jitter,
                           reload_dir=reload_dir)
    if server == "granian" and config.drain_delay > 0:
        raise click.UsageError(
            "--drain-delay (or GATEWAY_DRAIN_DELAY) works on uvicorn only: Granian gives an app no hook to "
            "keep serving after SIGTERM. Leave it out, or use --server uvicorn."
        )
    given = click.get_current_context().get_parameter_source("keep_alive")
    if server == "granian" and given is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError(
            "--keep-alive works on uvicorn only: Granian has no idle timeout to set. Leave it out, "
            "or use --server uvicorn."
        )
    if reload and workers > 1:
        raise click.UsageError("--reload runs one worker: leave --workers out, or --reload for production.")
    if server == "granian" and port == 0 and uds is None:
        raise click.UsageError("--port 0 works on uvicorn only: Granian binds its own socket. Give a port number.")
    if ssl_certfile is not None:
        check_tls(ssl_certfile, ssl_keyfile)
    if config.tracing and not tracing_installed():
        raise click.ClickException(f"--tracing (GATEWAY_TRACING=1) needs OpenTelemetry: {TRACING_EXTRA}.")
    if config.file.routes and config.migration_dir is None and (workers > 1 or limit_max_requests is not None):
        # Several workers, or one that is replaced: the migration page adds up the counts
        # each worker writes here (gateway.migration.page.Board).
        shared = tempfile.mkdtemp(prefix="gateway-migration-")
        atexit.register(shutil.rmtree, shared, ignore_errors=True)
        config = replace(config, migration_dir=Path(shared))
    if config.metrics:
        # Before any worker starts (and before prometheus_client is imported here): the
        # directory where every worker writes its values, for the scrapes to sum.
        try:
            prepare_metrics_directory()
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    config = replace(config, server=ServerSettings(
        kind=server, host=host, port=port, workers=workers, reload=reload, log_level=log_level, keep_alive=keep_alive,
        uds=uds, backlog=backlog, root_path=root_path, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
        limit_concurrency=limit_concurrency, limit_max_requests=limit_max_requests,
        limit_max_requests_jitter=limit_max_requests_jitter,
        reload_dirs=tuple(reload_dirs(config, map(str, reload_dir))) if reload else (),
    ))
    log_config = logging_config(log_level, config.log_format, config.access_log)
    logging.config.dictConfig(log_config)
    raise_open_files_limit()  # before any socket, worker or Granian's process
    # uvicorn: bind here, first, so that the banner names the port (--port 0 lets the
    # kernel pick one) and a port or socket in use is one line before anything is imported.
    sock = None
    if server == "uvicorn":
        listen_backlog = backlog or UVICORN_BACKLOG
        if uds is not None:
            sock = listen_unix(uds, listen_backlog)
        elif fd is not None:
            sock = adopt_fd(fd, listen_backlog)
        else:
            sock = listen(host, port, listen_backlog)
    elif uds is not None:
        free_unix_path(uds)  # Granian binds it; a stale file would stop it
    base, shown_port, on = _where(host, port, sock=sock, uds=uds, tls=ssl_certfile is not None)
    banner: dict[str, Any] = {"host": host, "port": shown_port, "server": server, "workers": workers,
                              "bound": True, "base": base, "listening": on, "root_path": root_path}
    try:
        if server == "uvicorn" and workers == 1 and not reload and limit_max_requests is None:
            # One process serves: import the apps here, once, and hand uvicorn the app.
            table = prepare(config, **banner)
            app = build(config, "asgi", table=table)
            run_uvicorn(config, app, log_config=log_config, sock=sock)
            return
        # Worker processes import the apps themselves: check, migrate and print the banner
        # in a short-lived child, so that the supervising process holds no copy of them.
        # (--limit-max-requests with one worker runs it under uvicorn's supervisor too,
        # which replaces it when it has served its requests.)
        if server == "granian" and uds is None:
            banner["bound"] = False
        child = multiprocessing.get_context("spawn").Process(target=prepare_in_child, args=(config,),
                                                             kwargs={**banner, "show_traceback": _show_traceback})
        child.start()
        child.join()
        if child.exitcode:
            sys.exit(child.exitcode)
        if server == "granian":
            run_granian(config, log_config=log_config)
            return
        run_uvicorn(config, log_config=log_config, sock=sock)
    finally:
        if uds is not None and sock is not None:
            with contextlib.suppress(OSError):
                os.unlink(uds)  # as uvicorn removes its socket file on the way out


def _root_path(value: str) -> str:
    """``--root-path``: empty, or a path of ASCII characters starting with "/" (no trailing one)."""
    if value in {"", "/"}:
        return ""
    if not value.startswith("/") or not value.isascii() or any(c in value for c in "?# \t\r\n"):
        raise click.UsageError(f'--root-path "{value}" must be a URL path starting with "/", e.g. /apps.')
    return value.rstrip("/")


def _refuse_server_options(server: str, *, reload: bool, uds: str | None, fd: int | None, backlog: int | None,
                           ssl_certfile: str | None, ssl_keyfile: str | None, limit_concurrency: int | None,
                           limit_max_requests: int | None, jitter: int, reload_dir: tuple[Path, ...]) -> None:
    """Refuse, in one line, options that do not go together, or that the server cannot honour."""
    if uds is not None and fd is not None:
        raise click.UsageError("--uds and --fd each name the socket to serve on: give one.")
    if ssl_keyfile is not None and ssl_certfile is None:
        raise click.UsageError("--ssl-keyfile needs --ssl-certfile, the certificate it is the key of.")
    if jitter and limit_max_requests is None:
        raise click.UsageError("--limit-max-requests-jitter adds to --limit-max-requests: give that too.")
    if reload_dir and not reload:
        raise click.UsageError("--reload-dir says what --reload watches: add --reload, or leave it out.")
    if reload and limit_max_requests is not None:
        raise click.UsageError("--limit-max-requests replaces workers, which --reload does not do: use one of them.")
    if server != "granian":
        return
    refused = {
        "--fd": (fd is not None, "Granian binds its own socket. Use --uds, or --host and --port"),
        "--limit-concurrency": (limit_concurrency is not None,
                                "Granian makes the requests past its backpressure wait, it never answers 503"),
        "--limit-max-requests": (limit_max_requests is not None,
                                 "Granian replaces workers by age (workers_lifetime), not by requests served"),
    }
    for option, (given, why) in refused.items():
        if given:
            raise click.UsageError(f"{option} works on uvicorn only: {why}. Leave it out, or use --server uvicorn.")
    if backlog is not None and backlog < GRANIAN_MIN_BACKLOG:
        raise click.UsageError(f"--backlog {backlog} is below Granian's least, {GRANIAN_MIN_BACKLOG}: give "
                               f"{GRANIAN_MIN_BACKLOG} or more, or use --server uvicorn.")
    if ssl_certfile is not None and ssl_keyfile is None:
        raise click.UsageError("--ssl-certfile needs --ssl-keyfile under Granian, which reads the key from its own "
                               "file. Give both, or use --server uvicorn.")


def _where(host: str, port: int, *, sock: socket.socket | None, uds: str | None, tls: bool
           ) -> tuple[str, int, str | None]:
    """Where the gateway answers: its base URL, its TCP port (0: none), and the Unix socket
    it listens on (``unix:/path``), if any."""
    scheme = "https" if tls else "http"
    if uds is not None:
        return f"{scheme}://localhost", 0, f"unix:{uds}"
    if sock is not None:
        name = sock.getsockname()
        if sock.family == socket.AF_UNIX:
            return f"{scheme}://localhost", 0, f"unix:{name}" if name else "an unnamed Unix socket"
        host, port = name[0], name[1]
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}", port, None


def prepare_in_child(config: Config, *, show_traceback: bool = False, **options: Any) -> None:
    """Run :func:`prepare` in a child process; errors end it with one line and status 1."""
    global _show_traceback
    _show_traceback = show_traceback
    try:
        prepare(config, **options)
    except (click.ClickException, ServerError, ValueError) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        echo(f"gateway: error: {message}", err=True)
        _print_traceback(exc)
        sys.exit(1)


def prepare(config: Config, *, host: str, port: int, server: str, workers: int, bound: bool = False,
            base: str | None = None, listening: str | None = None, root_path: str = "") -> MountTable:
    """Import the apps, migrate the embedded database, check the port (unless ``bound``
    already), print the banner: the URLs under ``base`` (default ``http://host:port``),
    served on the Unix socket ``listening`` if given."""
    table = _load(config)
    migrate_embedded_database(config)
    if not bound:
        check_port(host, port)
    shown = f"[{host}]" if ":" in host else host
    base = base or f"http://{shown}:{port}"
    title = f"gateway {__version__} on {server}: {workers} worker(s) x {config.threads} threads"
    if listening:
        title += f", on {listening}"
    if root_path:
        title += f", under root path {root_path}"
    database = describe_database()
    rules, hidden = table.route_table, table.hidden()
    if config.log_format == "json":  # one object, as every other line of the log
        from gateway.observe.logs import JSONFormatter

        click.echo(JSONFormatter().format(logging.makeLogRecord({
            "name": "gateway", "levelname": "INFO", "levelno": logging.INFO, "msg": title, "server": server,
            "workers": workers, "threads": config.threads, "database": database,
            **({"listen": listening} if listening else {}), **({"root_path": root_path} if root_path else {}),
            **({"metrics": f"{base}/metrics"} if config.metrics else {}),
            **({"tracing": describe_tracing()} if config.tracing else {}),
            "mounts": {"/": {"url": f"{base}/", "framework": "index"},
                       **{m.prefix: {"url": f"{base}{m.prefix}/", "framework": m.framework} for m in table}},
            **({"rules": {spec.rule: spec.apps[0] for spec in rules.specs.values()},
                "migration_page": f"{base}/_gateway/"} if rules else {}),
            **({"hidden": hidden} if hidden else {}),
        })), err=True)
        return table
    lines = [
        title,
        f"  database  {database}",
        f"  /         {base}/  (index)",
        *(f"  {m.prefix:<9} {base}{m.prefix}/  ({m.framework})" for m in table),
        *(f"  rule      {spec.rule}  ({', '.join(spec.apps)})" for spec in (rules.specs.values() if rules else ())),
        *([f"  /_gateway/ {base}/_gateway/  (migration page: loopback and trusted proxies)"] if rules else []),
        *([f"  metrics   {base}/metrics  (loopback and trusted proxies)"] if config.metrics else []),
        *([f"  tracing   {describe_tracing()}"] if config.tracing else []),
        *(f"  warning   {hides(rule, table.mounts[prefix])}" for prefix, rule in hidden.items()),
    ]
    echo("\n".join(lines), err=True)
    return table


def hides(rule: str, mount: Mount) -> str:
    """Say that ``rule`` takes paths of ``mount`` from it."""
    return (f"the rule {rule} hides the mount {mount.prefix} ({mount.target}): rules are matched first, so "
            f"paths under {mount.prefix}/ that it matches go to the rule's app.")


@cli.command()
@mount_option
@config_option
@click.option("--explain", metavar="PATH", help="Say which rule or mount answers PATH, and why.")
@click.option("--method", default="GET", show_default=True, help="The method --explain asks about.")
def routes(mounts: tuple[str, ...], config_file: Path | None, explain: str | None, method: str) -> None:
    """Print the route rules and the mount table, or explain where a path goes."""
    config = _config({"mounts": mounts}, config_file)
    table = _load(config)
    rules = table.route_table
    if explain is not None:
        if not explain.startswith("/"):
            raise click.BadParameter(f'"{explain}" is not a path; paths start with "/".', param_hint="--explain")
        lines = rules.explain(explain, method.upper()) if rules else [f"{method.upper()} {explain}: no route rules."]
        if not (rules and rules.match(explain, method.upper()).key):
            mount, prefix, path_info = table.match(explain.encode().decode("latin-1"))
            lines.append(f"Prefix mount {prefix} ({mount.target}) answers it, with SCRIPT_NAME {prefix!r} and "
                         f"PATH_INFO {path_info or '/'!r}." if mount is not None
                         else "No mount claims it: the gateway's own page answers (the index at /, else 404).")
        echo("\n".join(lines))
        return
    if rules:
        echo(f"{'RULE':<32} {'METHODS':<16} APPS (fallback order)")
        for spec in rules.specs.values():
            apps = ", ".join(f"{name}={config.file.apps[name]}" for name in spec.apps)
            if spec.canary is not None:
                apps += f"; canary {spec.canary} for {spec.share:g}% of clients"
            if spec.shadow is not None:
                apps += f"; shadowed on {spec.shadow}"
            echo(f"{spec.rule:<32} {','.join(spec.methods or ('any',)):<16} {apps}")
        echo()
    echo(f"{'PREFIX':<16} {'INTERFACE':<9} {'FRAMEWORK':<16} TARGET")
    for mount in table:
        echo(f"{mount.prefix:<16} {mount.interface:<9} {mount.framework:<16} {mount.target}")
    echo(f"{'/':<16} {'wsgi':<9} {'gateway':<16} index page; 404 for other paths")
    for prefix, rule in table.hidden().items():
        echo(f"warning: {hides(rule, table.mounts[prefix])}")


@cli.command()
@click.option("--force", is_flag=True, help="Overwrite a gateway.toml that is there already.")
def init(force: bool) -> None:
    """Write a gateway.toml that mounts the Flask app and the Django project of this folder."""
    from gateway.serve.scaffold import FILE_NAME, find_django, find_flask, gateway_toml

    folder = Path.cwd()
    target = folder / FILE_NAME
    if target.exists() and not force:
        raise click.ClickException(f"{target} exists already: edit it, or add --force to write a new one.")
    found = [*find_flask(folder), *find_django(folder)]
    if not found:
        raise click.ClickException(
            f"found no Flask app (a module with app = Flask(...) or create_app()) and no Django project "
            f"(manage.py) in {folder} or the folders just below it: run gateway init where they are.")
    target.write_text(gateway_toml(folder, found), encoding="utf-8")
    echo(f"gateway: wrote {target}:")
    for app in found:
        echo(f"  /{app.name:<12} {app.framework:<7} {app.target}  (from {app.source})")
    echo("Then: gateway serve")


@cli.command()
@click.argument("log", required=False, type=click.Path(dir_okay=False, path_type=Path))
def diff(log: Path | None) -> None:
    """Summarise the shadow comparisons' differences (default: shadow.jsonl in the data directory)."""
    from gateway.migration.shadow import summarise

    path = log or Config.from_env().data_dir / "shadow.jsonl"
    if not path.exists():
        raise click.ClickException(f"{path} does not exist: no shadow comparison has found a difference yet "
                                   "(or give the file's path).")
    echo("\n".join(summarise(path)))


@cli.command()
@config_option
@click.argument("action", type=click.Choice(["status", "pause", "resume", "promote", "rollback"]))
@click.argument("rule", required=False)
@click.option("--reason", default="", help="Why, for the audit trail.")
@click.option("--by", "actor", metavar="NAME", help="Who, for the audit trail (default: user@host).")
def rollout(config_file: Path | None, action: str, rule: str | None, reason: str, actor: str | None) -> None:
    """Show a rule's rollout, or pause, resume, promote or roll it back on every instance."""
    from gateway.serve.rollout_command import run

    run(_config({}, config_file), action, rule, reason=reason, actor=actor)


@cli.command()
@config_option
@click.option("--window", default=60, show_default=True, type=click.IntRange(1, 7 * 24 * 60),
              help="Minutes of traffic to count.")
def progress(config_file: Path | None, window: int) -> None:
    """List each app's routes, who answers them, their traffic, and the legacy ones left to port."""
    from gateway.migration.rollout_store import Store, database_url
    from gateway.serve.progress import report, routes

    config = _config({}, config_file)
    table = _load(config)
    if not table.route_table:
        raise click.ClickException("no route rules in this gateway.toml: progress maps the apps the rules name.")
    with Store(database_url(config.data_dir, os.environ)) as store:
        try:
            found, total = routes(table, store, window)
        except Exception as exc:  # any driver's error: say which database, in one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise click.ClickException(f"cannot read the traffic counts ({store.where}): {first}") from None
    click.echo("\n".join(report(found, total, window)))


@cli.command()
@click.argument("pid", type=click.IntRange(min=1))
def reload(pid: int) -> None:
    """Re-read the gateway.toml of the server PID (its route rules and canary shares), as SIGHUP does."""
    import signal

    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise click.ClickException(f"no process {pid}: give the PID of a running gateway serve.") from None
    except PermissionError:
        raise click.ClickException(f"process {pid} belongs to another user: run this as that user.") from None
    echo(f"gateway: sent SIGHUP to {pid}; its log says whether the rules were reloaded.")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def migrate(args: tuple[str, ...]) -> None:
    """Apply Django's migrations to the configured database (takes Django's options)."""
    _manage(["migrate", *args])


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def manage(args: tuple[str, ...]) -> None:
    """Run a Django management command, e.g. gateway manage createsuperuser."""
    _manage(list(args))


@cli.command("flask", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                         "help_option_names": []})
@click.option("--prefix", default="/flask", show_default=True, help="The mount of the Flask app to use.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def flask_command(prefix: str, args: tuple[str, ...]) -> None:
    """Run a command of the mounted Flask app's CLI (routes, shell, your own), with Django
    set up as the gateway sets it up, e.g. gateway flask routes."""
    from flask import Flask
    from flask.cli import FlaskGroup

    table = _load(_config())
    mount = table.mounts.get(prefix)
    if mount is None or not isinstance(mount.app, Flask):
        known = ", ".join(m.prefix for m in table if isinstance(m.app, Flask)) or "none"
        raise click.ClickException(f"no Flask app is mounted at {prefix} (Flask mounts: {known}); "
                                   "name one with --prefix.")
    app = mount.app
    group = FlaskGroup(create_app=lambda: app, load_dotenv=False, set_debug_flag=False)
    code = group.main(args=list(args), prog_name="gateway flask", standalone_mode=False)
    if isinstance(code, int) and code:
        raise click.exceptions.Exit(code)


@cli.command()
@click.option("--deploy", is_flag=True, help="Also run the checks for a production deployment.")
def check(deploy: bool) -> None:
    """Check the configuration: Django's system checks plus the gateway's own."""
    config = _config()
    problems = gateway_problems(config, deploy=deploy)
    _load(config, strict=False)
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    try:
        call_command("check", deploy=deploy, fail_level="WARNING")
    except SystemCheckError as exc:
        echo(str(exc).strip(), err=True)
        problems.append("Django's system checks reported the issues above.")
    for problem in problems:
        echo(f"gateway: {problem}", err=True)
    if problems:
        raise click.exceptions.Exit(1)
    echo("gateway: no problems found.")


def gateway_problems(config: Config, *, deploy: bool) -> list[str]:
    """The gateway's own checks of a configuration: one sentence a problem."""
    problems = []
    if deploy or config.env == "production":
        if config.env != "production":
            problems.append("GATEWAY_ENV is not \"production\": secret keys may be generated on disk.")
        problems += [f"{problem}." for problem in production_problems(config, os.environ,
                                                                      demo=frameworks.serves_demo(config))]
        if any(n.prefixlen == 0 for n in config.trusted_proxies):
            problems.append("GATEWAY_TRUSTED_PROXIES trusts every address; list your proxies.")
        if not config.https:
            problems.append("GATEWAY_HTTPS is not set: cookies are not marked Secure and HSTS is off.")
        elif not config.trusted_proxies:
            problems.append("GATEWAY_HTTPS=1 without GATEWAY_TRUSTED_PROXIES: behind a proxy that ends TLS, the "
                            "apps see plain http and Django redirects to https forever; list the proxy in "
                            "GATEWAY_TRUSTED_PROXIES (if the gateway itself ends TLS, with --ssl-certfile, this does "
                            "not apply).")
    for prefix, size in [("(default)", config.max_body_size), *config.max_body_sizes.items()]:
        if size > 1024**3:
            problems.append(f"The body size limit for {prefix} is {size} bytes; more than 1 GiB is unsafe.")
    return problems


def describe_database() -> str:
    """Name Django's default database without its password, or say there is none."""
    from django.apps import apps

    if not apps.ready:
        return "none (Django is not mounted)"
    from django.conf import settings

    db = settings.DATABASES["default"]
    engine = db["ENGINE"].rsplit(".", 1)[-1]
    if engine == "sqlite3":
        return f"sqlite {sqlite_file(db['NAME'])}"
    where = f"{db.get('HOST') or 'localhost'}:{db.get('PORT') or 'default port'}"
    return f"{engine} {db.get('USER') or ''}@{where}/{db['NAME']}"


def sqlite_file(name: object) -> Path:
    """The file of a SQLite database NAME, a path or a ``file:...?mode=rw`` URI."""
    return Path(str(name).removeprefix("file:").partition("?")[0])


def _config(given: dict[str, Any] | None = None, config_file: Path | None = None) -> Config:
    """The configuration, merged once: the file's, the environment's, then the options
    given (by field; None or empty: not given), each read by its setting's reader."""
    options = {}
    for setting in SETTINGS:
        value = (given or {}).get(setting.field)
        if setting.option is None or value is None or value == ():
            continue
        if setting.kind == "flag":
            options[setting.option] = "1" if value else "0"
        elif setting.kind == "multiple":
            options[setting.option] = setting.separator.join(value)
        else:
            options[setting.option] = str(value)
    try:
        config = load_config(os.environ, options, config_file)
        for text in config.mounts:
            MountSpec.parse(text)
    except ValueError as exc:
        if str(exc).startswith("--"):
            raise click.UsageError(str(exc)) from None
        raise click.ClickException(str(exc)) from None
    return config


def _load(config: Config, *, strict: bool = True) -> MountTable:
    try:
        return load_table(config, strict=strict)
    except (MountError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


def _manage(args: list[str]) -> None:
    config = _config()
    try:
        frameworks.set_up(config)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if "DJANGO_SETTINGS_MODULE" not in os.environ:
        raise click.ClickException(
            "no Django project is configured: name its settings in gateway.toml "
            '([apps] mysite = { app = "mysite.wsgi:application", settings = "mysite.settings" }), '
            "or set DJANGO_SETTINGS_MODULE.")
    from django.core.management import execute_from_command_line
    from django.db import DatabaseError

    try:
        execute_from_command_line(["gateway manage", *args])
    except DatabaseError as exc:  # e.g. createsuperuser before the first migrate: one line, no traceback
        raise click.ClickException(_database_problem(exc)) from exc


def _database_problem(exc: Exception) -> str:
    """One line for a database error that ended a management command, naming the fix when
    it is migrations that have not been applied."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    try:
        from django.db import connection
        from django.db.migrations.executor import MigrationExecutor

        executor = MigrationExecutor(connection)
        pending = len(executor.migration_plan(executor.loader.graph.leaf_nodes()))
    except Exception:  # the database cannot say: the error is all there is
        pending = 0
    if pending:
        return f"the database has {pending} unapplied migrations ({reason}): run gateway migrate first."
    return f"the database refused the command: {reason}."


def migrate_embedded_database(config: Config) -> None:
    """Apply migrations when Django runs on the embedded SQLite database, in the data directory.

    Any other database (``DATABASE_URL``, your own project's) is migrated explicitly with
    ``gateway migrate``, as ``manage.py migrate`` would, so that several workers or
    instances never race to do it, and a project's database changes only when asked.
    """
    from django.apps import apps

    if not apps.ready or os.environ.get("DATABASE_URL"):
        return
    from django.conf import settings

    database = settings.DATABASES.get("default", {})
    if database.get("ENGINE") != "django.db.backends.sqlite3" or not sqlite_file(
            database.get("NAME", "")).resolve().is_relative_to(config.data_dir):
        return
    from django.core.management import call_command
    from django.db import connections

    # django_hello's migrate command (django_hello/management/commands/migrate.py) holds a
    # lock on <database>.migrate-lock beside the SQLite file, in `gateway migrate` and
    # `gateway manage migrate` too: gateways sharing a data directory and a `gateway
    # migrate` started at once take turns.
    call_command("migrate", interactive=False, verbosity=0)
    connections.close_all()  # requests open their own, on their own threads


def main(argv: list[str] | None = None) -> None:
    """Run the command line; errors end with one line and a non-zero exit."""
    # Mounts name modules of the current directory (--mount /api=myapi:app), as uvicorn's
    # and gunicorn's app targets do: put it first on sys.path, as `python -m` would.
    # Worker processes are started with the same sys.path.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        code = cli.main(args=argv, prog_name="gateway", standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        echo(f"gateway: error: {exc.format_message()}{hint}", err=True)
        sys.exit(exc.exit_code)
    except (click.ClickException, ServerError, ValueError) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        echo(f"gateway: error: {message}", err=True)
        _print_traceback(exc)
        sys.exit(1)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    # Without standalone mode, click returns a command's exit code instead of exiting.
    if isinstance(code, int) and code:
        sys.exit(code)


