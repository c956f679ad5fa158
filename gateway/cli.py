"""The ``gateway`` command: serve the mounts, list them, manage Django.

::

    gateway serve [--host 127.0.0.1] [--port 8000] [--workers N] [--threads N]
                  [--reload] [--log-level LEVEL] [--mount /prefix=module:attr ...]
                  [--server uvicorn|granian]
    gateway routes [--mount ...] [--config gateway.toml] [--explain PATH]
    gateway reload PID
    gateway diff [shadow.jsonl]
    gateway migrate
    gateway manage <django command> [args...]
    gateway check [--deploy]

Each option of ``serve`` overrides its ``GATEWAY_*`` variable: the command builds one
:class:`gateway.config.Config` from the environment (which names the variable when a
value is wrong), puts the options given over it, and hands it to the server and each
of its workers.
"""

from __future__ import annotations

import logging.config
import multiprocessing
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from gateway import __version__
from gateway.config import DEFAULT_BODY_TIMEOUT, DEFAULT_THREADS, Config, configure_apps, production_problems
from gateway.logs import logging_config
from gateway.mounts import MountError, MountSpec, MountTable, load_table
from gateway.server import ServerError, check_port, listen, run_granian, run_uvicorn

LOG_LEVELS = ["critical", "error", "warning", "info", "debug", "trace"]

mount_option = click.option(
    "--mount",
    "mounts",
    multiple=True,
    envvar="GATEWAY_MOUNTS",
    metavar="/PREFIX=MODULE:ATTR",
    help="Mount another WSGI or ASGI app (repeatable; replaces GATEWAY_MOUNTS, space-separated); "
    "add @wsgi or @asgi to skip detection.",
)


config_option = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
    help="A gateway.toml of named apps, mounts and route rules [env: GATEWAY_CONFIG].",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gateway")
def cli() -> None:
    """Serve Flask at /flask and Django at /django from one process."""


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--threads", type=click.IntRange(min=1),
    help=f"Threads per worker for the WSGI apps [env: GATEWAY_THREADS; default: {DEFAULT_THREADS}].",
)
@click.option("--reload", is_flag=True, help="Restart when the code changes (development).")
@click.option("--log-level", default="info", show_default=True, type=click.Choice(LOG_LEVELS))
@click.option("--server", default="uvicorn", show_default=True, type=click.Choice(["uvicorn", "granian"]))
@click.option(
    "--graceful-timeout", type=click.FloatRange(min=0),
    help="On shutdown, seconds to let running requests finish [env: GATEWAY_GRACEFUL_TIMEOUT; default: no limit].",
)
@click.option(
    "--drain-delay", type=click.FloatRange(min=0),
    help="On SIGTERM, seconds to keep serving (Connection: close, /readyz 503) before shutting down "
    "[env: GATEWAY_DRAIN_DELAY; default: 0]; set it above your proxy's upstream keepalive_timeout (uvicorn only).",
)
@click.option(
    "--keep-alive", default=5.0, show_default=True, type=click.FloatRange(min=0),
    help="Seconds an idle keep-alive connection stays open (uvicorn); keep it above your proxy's.",
)
@click.option(
    "--header-timeout", type=click.FloatRange(min=0, min_open=True),
    help="Seconds a connection gets to send a request's headers; then 408 and closed "
    "[env: GATEWAY_HEADER_TIMEOUT; default: 5].",
)
@click.option(
    "--body-timeout", type=click.FloatRange(min=0, min_open=True),
    help="Seconds a request body may pause before a 408 [env: GATEWAY_BODY_TIMEOUT; default: 30] (uvicorn only).",
)
@click.option(
    "--stream-body", "stream_bodies", multiple=True, metavar="PREFIX",
    help="A mount whose app reads uploads as they arrive, holding a thread meanwhile; repeat for more "
    "[env: GATEWAY_STREAM_BODIES, comma-separated; default: bodies are read whole first].",
)
@click.option(
    "--access-log/--no-access-log", default=None,
    help="Write one line per request [env: GATEWAY_ACCESS_LOG; default: on].",
)
@click.option(
    "--log-format", type=click.Choice(["text", "json"]),
    help="Log lines as text or JSON [env: GATEWAY_LOG_FORMAT; default: text].",
)
@mount_option
@config_option
def serve(
    host: str,
    port: int,
    workers: int,
    threads: int | None,
    reload: bool,
    log_level: str,
    server: str,
    graceful_timeout: float | None,
    drain_delay: float | None,
    keep_alive: float,
    header_timeout: float | None,
    body_timeout: float | None,
    stream_bodies: tuple[str, ...],
    access_log: bool | None,
    log_format: str | None,
    mounts: tuple[str, ...],
    config_file: Path | None,
) -> None:
    """Serve all mounts on one server."""
    for prefix in stream_bodies:
        if not prefix.startswith("/") or prefix == "/":
            raise click.BadParameter(f'"{prefix}" is not a mount prefix, e.g. /uploads.', param_hint="--stream-body")
    config = _config(mounts, threads=threads, log_format=log_format, access_log=access_log,
                     drain_delay=drain_delay, graceful_timeout=graceful_timeout, header_timeout=header_timeout,
                     body_timeout=body_timeout,
                     stream_bodies=tuple(p.rstrip("/") for p in stream_bodies) or None, config_file=config_file)
    if server == "granian" and config.drain_delay > 0:
        raise click.UsageError(
            "--drain-delay (or GATEWAY_DRAIN_DELAY) works on uvicorn only: Granian gives an app no hook to "
            "keep serving after SIGTERM. Leave it out, or use --server uvicorn."
        )
    if server == "granian" and config.body_timeout != DEFAULT_BODY_TIMEOUT:
        raise click.UsageError(
            "--body-timeout (or GATEWAY_BODY_TIMEOUT) works on uvicorn only: under Granian a WSGI app reads "
            "its body in its own thread. Leave it out, or use --server uvicorn."
        )
    given = click.get_current_context().get_parameter_source("keep_alive")
    if server == "granian" and given is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError(
            "--keep-alive works on uvicorn only: Granian has no idle timeout to set. Leave it out, "
            "or use --server uvicorn."
        )
    if reload and workers > 1:
        raise click.UsageError("--reload runs one worker: leave --workers out, or --reload for production.")
    if server == "granian" and port == 0:
        raise click.UsageError("--port 0 works on uvicorn only: Granian binds its own socket. Give a port number.")
    log_config = logging_config(log_level, config.log_format, config.access_log)
    logging.config.dictConfig(log_config)
    # uvicorn: bind here, first, so that the banner names the port (--port 0 lets the
    # kernel pick one) and a port in use is one line before anything is imported.
    sock = listen(host, port) if server == "uvicorn" else None
    if sock is not None:
        port = sock.getsockname()[1]
    if server == "uvicorn" and workers == 1 and not reload:
        # One process serves: import the apps here, once, and hand uvicorn the app.
        table = prepare(config, host=host, port=port, server=server, workers=workers, bound=True)
        from gateway.asgi import create_asgi_app

        app = create_asgi_app(table, config)
        run_uvicorn(config, app, host=host, port=port, workers=1, reload=False, log_level=log_level,
                    keep_alive=keep_alive, log_config=log_config, sock=sock)
        return
    # Worker processes import the apps themselves: check, migrate and print the banner
    # in a short-lived child, so that the supervising process holds no copy of them.
    child = multiprocessing.get_context("spawn").Process(
        target=prepare_in_child, args=(config,), kwargs={"host": host, "port": port, "server": server,
                                                         "workers": workers, "bound": sock is not None})
    child.start()
    child.join()
    if child.exitcode:
        sys.exit(child.exitcode)
    if server == "granian":
        run_granian(config, host=host, port=port, workers=workers, reload=reload, log_level=log_level,
                    log_config=log_config)
        return
    run_uvicorn(config, host=host, port=port, workers=workers, reload=reload, log_level=log_level,
                keep_alive=keep_alive, log_config=log_config, sock=sock)


def prepare_in_child(config: Config, **options: Any) -> None:
    """Run :func:`prepare` in a child process; errors end it with one line and status 1."""
    try:
        prepare(config, **options)
    except (click.ClickException, ServerError, ValueError) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        click.echo(f"gateway: error: {message}", err=True)
        sys.exit(1)


def prepare(config: Config, *, host: str, port: int, server: str, workers: int, bound: bool = False
            ) -> MountTable:
    """Import the apps, migrate the embedded database, check the port (unless ``bound``
    already), print the banner."""
    table = _load(config)
    migrate_embedded_database()
    if not bound:
        check_port(host, port)
    shown = f"[{host}]" if ":" in host else host
    title = f"gateway {__version__} on {server}: {workers} worker(s) x {config.threads} threads"
    database = describe_database()
    if config.log_format == "json":  # one object, as every other line of the log
        from gateway.logs import JSONFormatter

        click.echo(JSONFormatter().format(logging.makeLogRecord({
            "name": "gateway", "levelname": "INFO", "levelno": logging.INFO, "msg": title, "server": server,
            "workers": workers, "threads": config.threads, "database": database,
            "mounts": {"/": {"url": f"http://{shown}:{port}/", "framework": "index"},
                       **{m.prefix: {"url": f"http://{shown}:{port}{m.prefix}/", "framework": m.framework}
                          for m in table}},
        })), err=True)
        return table
    lines = [
        title,
        f"  database  {database}",
        f"  /         http://{shown}:{port}/  (index)",
        *(f"  {m.prefix:<9} http://{shown}:{port}{m.prefix}/  ({m.framework})" for m in table),
    ]
    click.echo("\n".join(lines), err=True)
    return table


@cli.command()
@mount_option
@config_option
@click.option("--explain", metavar="PATH", help="Say which rule or mount answers PATH, and why.")
@click.option("--method", default="GET", show_default=True, help="The method --explain asks about.")
def routes(mounts: tuple[str, ...], config_file: Path | None, explain: str | None, method: str) -> None:
    """Print the route rules and the mount table, or explain where a path goes."""
    config = _config(mounts, config_file=config_file)
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
        click.echo("\n".join(lines))
        return
    if rules:
        click.echo(f"{'RULE':<32} {'METHODS':<16} APPS (fallback order)")
        for spec in rules.specs.values():
            apps = ", ".join(f"{name}={config.file.apps[name]}" for name in spec.apps)
            if spec.canary is not None:
                apps += f"; canary {spec.canary} for {spec.share:g}% of clients"
            if spec.shadow is not None:
                apps += f"; shadowed on {spec.shadow}"
            click.echo(f"{spec.rule:<32} {','.join(spec.methods or ('any',)):<16} {apps}")
        click.echo()
    click.echo(f"{'PREFIX':<16} {'INTERFACE':<9} {'FRAMEWORK':<16} TARGET")
    for mount in table:
        click.echo(f"{mount.prefix:<16} {mount.interface:<9} {mount.framework:<16} {mount.target}")
    click.echo(f"{'/':<16} {'wsgi':<9} {'gateway':<16} index page; 404 for other paths")


@cli.command()
@click.argument("log", required=False, type=click.Path(dir_okay=False, path_type=Path))
def diff(log: Path | None) -> None:
    """Summarise the shadow comparisons' differences (default: shadow.jsonl in the data directory)."""
    from gateway.shadow import summarise

    path = log or Config.from_env().data_dir / "shadow.jsonl"
    if not path.exists():
        raise click.ClickException(f"{path} does not exist: no shadow comparison has found a difference yet "
                                   "(or give the file's path).")
    click.echo("\n".join(summarise(path)))


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
    click.echo(f"gateway: sent SIGHUP to {pid}; its log says whether the rules were reloaded.")


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


@cli.command()
@click.option("--deploy", is_flag=True, help="Also run the checks for a production deployment.")
def check(deploy: bool) -> None:
    """Check the configuration: Django's system checks plus the gateway's own."""
    config = _config(None)
    problems = gateway_problems(config, deploy=deploy)
    _load(config, strict=False)
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    try:
        call_command("check", deploy=deploy, fail_level="WARNING")
    except SystemCheckError as exc:
        click.echo(str(exc).strip(), err=True)
        problems.append("Django's system checks reported the issues above.")
    for problem in problems:
        click.echo(f"gateway: {problem}", err=True)
    if problems:
        raise click.exceptions.Exit(1)
    click.echo("gateway: no problems found.")


def gateway_problems(config: Config, *, deploy: bool) -> list[str]:
    """The gateway's own checks of a configuration: one sentence a problem."""
    problems = []
    if deploy or config.env == "production":
        if config.env != "production":
            problems.append("GATEWAY_ENV is not \"production\": secret keys may be generated on disk.")
        problems += [f"{problem}." for problem in production_problems(config, os.environ)]
        if any(n.prefixlen == 0 for n in config.trusted_proxies):
            problems.append("GATEWAY_TRUSTED_PROXIES trusts every address; list your proxies.")
        if not config.https:
            problems.append("GATEWAY_HTTPS is not set: cookies are not marked Secure and HSTS is off.")
        elif not config.trusted_proxies:
            problems.append("GATEWAY_HTTPS=1 without GATEWAY_TRUSTED_PROXIES: behind a proxy that ends TLS, the "
                            "apps see plain http and Django redirects to https forever; list the proxy in "
                            "GATEWAY_TRUSTED_PROXIES (or leave GATEWAY_HTTPS out if clients reach the gateway "
                            "directly over HTTPS).")
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


def _config(mounts: tuple[str, ...] | None, **options: Any) -> Config:
    """The configuration: the environment's, with the command's options (``None``: not given) over it."""
    try:
        config = Config.from_env()
        for text in mounts or ():
            MountSpec.parse(text)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    config_file = options.pop("config_file", None)
    given: dict[str, Any] = {name: value for name, value in options.items() if value is not None}
    if mounts is not None:
        given["mounts"] = mounts
    config = replace(config, **given)
    if config_file is not None:
        try:
            config = config.with_file(config_file)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    return config


def _load(config: Config, *, strict: bool = True) -> MountTable:
    try:
        return load_table(config, strict=strict)
    except (MountError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


def _manage(args: list[str]) -> None:
    configure_apps(Config.from_env())
    from django.core.management import execute_from_command_line

    execute_from_command_line(["gateway manage", *args])


def migrate_embedded_database() -> None:
    """Apply migrations when Django runs on the embedded SQLite default.

    Any other database (``DATABASE_URL``) is migrated explicitly with ``gateway
    migrate``, so that several workers or instances never race to do it.
    """
    from django.apps import apps

    if not apps.ready or os.environ.get("DATABASE_URL"):
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
        click.echo(f"gateway: error: {exc.format_message()}{hint}", err=True)
        sys.exit(exc.exit_code)
    except (click.ClickException, ServerError, ValueError) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        click.echo(f"gateway: error: {message}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    # Without standalone mode, click returns a command's exit code instead of exiting.
    if isinstance(code, int) and code:
        sys.exit(code)


