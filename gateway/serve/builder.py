"""The one builder: a configuration in, the gateway out, for every entry point and server.

``gateway.wsgi:application``, ``gateway.asgi:application``, ``gateway serve`` (in its
process or in uvicorn's and Granian's workers) and a reload all build through here, so
they serve the same apps with the same set-up::

    from gateway.serve.builder import build
    from gateway.core.config import Config

    application = build(Config.from_env(), "wsgi")
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

from gateway.core.config import Config
from gateway.core.mounts import MountError, MountTable, rule_options
from gateway.observe.logs import configure_logging_if_unset
from gateway.serve import frameworks

Interface = Literal["wsgi", "asgi"]

logger = logging.getLogger("gateway")

#: gunicorn's exit status for an app that cannot load: its master stops, rather than
#: starting workers again and again.
APP_LOAD_ERROR = 4

BARE_GUNICORN = (
    "gunicorn gives the app no way to bound a slow client: a client that sends its body or headers slowly holds a "
    "worker thread for as long as it likes (docs/hardening.md, 'gunicorn'). Put a proxy that reads each request "
    "whole in front (nginx: deploy/nginx.conf) and set GATEWAY_BUFFERING_PROXY=1, or serve with `gateway serve`.")


def under_gunicorn() -> bool:
    """Whether this process is a gunicorn worker (its arbiter forked it)."""
    return "gunicorn.arbiter" in sys.modules


def refuse_bare_gunicorn(config: Config) -> None:
    """Under gunicorn with no buffering proxy said to be in front: a warning, and in
    production an exit that stops gunicorn's master (``App failed to load``)."""
    if not under_gunicorn() or config.buffering_proxy:
        return
    if config.env == "production":
        logger.critical("%s The gateway does not start bare under gunicorn in production.", BARE_GUNICORN)
        raise SystemExit(APP_LOAD_ERROR)
    logger.warning(BARE_GUNICORN)


def load_table(config: Config, *, strict: bool = True) -> MountTable:
    """Set up the frameworks for ``config``, then import and mount its apps.

    The demo apps are mounted only when ``config`` names no app of its own.
    ``strict=False``: start even with production's problems (``gateway check`` lists them).
    """
    frameworks.set_up(config, strict=strict)
    table = MountTable.from_specs((*config.file.mounts, *config.mounts), defaults=not frameworks.names_apps(config),
                                  **rule_options(config))
    frameworks.check_django(table.all(), config)
    for prefix, mount in list(table.mounts.items()):
        table.mounts[prefix] = frameworks.serve_static(mount)
    if unknown := [p for p in config.stream_bodies if p not in table.mounts]:
        raise MountError(f"GATEWAY_STREAM_BODIES (--stream-body) names {', '.join(unknown)}, which is not a mount "
                         f"prefix here: use one of {', '.join(table.mounts) or 'none'}.")
    if unknown := [p for p in config.stream_responses if p not in table.mounts]:
        raise MountError(f"GATEWAY_STREAM_RESPONSES (--stream-response) names {', '.join(unknown)}, which is not a "
                         f"mount prefix here: use one of {', '.join(table.mounts) or 'none'}.")
    return table


#: The configuration a server's master process accepted for the workers it forks (gunicorn:
#: ``post_fork`` in :mod:`gateway.serve.gunicorn_conf`); None: a worker reads the environment's.
forked_config: Config | None = None


def build(config: Config, interface: Interface = "asgi", *, table: MountTable | None = None) -> Any:
    """The gateway for ``config`` as a WSGI or an ASGI app (``table``: its apps, loaded already)."""
    configure_logging_if_unset(config.log_format, config.access_log)
    if interface == "wsgi":
        refuse_bare_gunicorn(config)  # before any app is imported
    if table is None:
        table = load_table(config)
    if interface == "wsgi":
        from gateway.adapters.wsgi import WSGIGateway

        return WSGIGateway(table, config)
    from gateway.adapters.asgi import ASGIGateway

    # A reload (SIGHUP) sets up the frameworks for the new file as the start did: its folders.
    return ASGIGateway(table, config, set_up=frameworks.set_up)
