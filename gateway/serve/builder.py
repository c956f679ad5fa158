"""The one builder: a configuration in, the gateway out, for every entry point and server.

``gateway.wsgi:application``, ``gateway.asgi:application``, ``gateway serve`` (in its
process or in uvicorn's and Granian's workers) and a reload all build through here, so
they serve the same apps with the same set-up::

    from gateway.serve.builder import build
    from gateway.core.config import Config

    application = build(Config.from_env(), "wsgi")
"""

from __future__ import annotations

from typing import Any, Literal

from gateway.core.config import Config
from gateway.core.mounts import MountError, MountTable, rule_options
from gateway.observe.logs import configure_logging_if_unset
from gateway.serve import frameworks

Interface = Literal["wsgi", "asgi"]


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


def build(config: Config, interface: Interface = "asgi", *, table: MountTable | None = None) -> Any:
    """The gateway for ``config`` as a WSGI or an ASGI app (``table``: its apps, loaded already)."""
    configure_logging_if_unset(config.log_format, config.access_log)
    if table is None:
        table = load_table(config)
    if interface == "wsgi":
        from gateway.adapters.wsgi import WSGIGateway

        return WSGIGateway(table, config)
    from gateway.adapters.asgi import ASGIGateway

    # A reload (SIGHUP) sets up the frameworks for the new file as the start did: its folders.
    return ASGIGateway(table, config, set_up=frameworks.set_up)
