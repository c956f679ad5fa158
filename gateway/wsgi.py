"""The gateway as a WSGI app: ``gateway.wsgi:application``.

Werkzeug's ``DispatcherMiddleware`` over the mount table, with the gateway's pages
(an index at ``/``, a 404 elsewhere) as the fallback and the front policy
(:mod:`gateway.front`) around it. Runs unchanged under gunicorn, Granian's WSGI
interface or Werkzeug's development server::

    gunicorn gateway.wsgi:application
"""

from __future__ import annotations

from werkzeug.middleware.dispatcher import DispatcherMiddleware

from gateway.config import Config, configure_apps
from gateway.front import WSGIFront
from gateway.headers import WSGIHeaders
from gateway.health import Health
from gateway.mountpolicy import WSGIMount
from gateway.mounts import Mount, MountTable
from gateway.pages import Pages
from gateway.types import WSGIApp


def create_wsgi_app(table: MountTable, config: Config | None = None) -> WSGIApp:
    """Mount every app of ``table`` on a Werkzeug dispatcher behind the front policy."""
    config = config or Config.from_env()
    mounted = mounted_wsgi_apps(table, config)
    dispatcher = DispatcherMiddleware(WSGIHeaders(Pages(table)), mounted)
    return WSGIFront(dispatcher, health_app(table, mounted, config), config)


def mounted_wsgi_apps(table: MountTable, config: Config, *, adapt_asgi: bool = True) -> dict[str, WSGIApp]:
    """Each mount's app as WSGI, with the mount policy around it.

    ASGI mounts are adapted with a2wsgi, or left out with ``adapt_asgi=False`` (the ASGI
    side calls them directly; a2wsgi's adapter starts an event-loop thread of its own).
    """
    return {
        m.prefix: WSGIMount(as_wsgi(m), config.body_limit(m.prefix))
        for m in table
        if adapt_asgi or m.interface == "wsgi"
    }


def health_app(table: MountTable, mounted: dict[str, WSGIApp], config: Config) -> Health:
    """The ``/healthz`` and ``/readyz`` app, probing the WSGI mounts as mounted."""
    host = next((h for h in config.allowed_hosts if h not in {"*"} and not h.startswith(".")), "localhost")
    return Health({m.prefix: mounted[m.prefix] for m in table if m.interface == "wsgi"}, host)


def as_wsgi(mount: Mount) -> WSGIApp:
    """Return the mount's app as a WSGI app, adapting an ASGI one with a2wsgi."""
    if mount.interface == "wsgi":
        app: WSGIApp = mount.app
        return app
    from a2wsgi import ASGIMiddleware

    return ASGIMiddleware(mount.app)  # type: ignore[return-value]


def load_table(config: Config) -> MountTable:
    """Configure the frameworks from ``config``, then import and mount the apps."""
    configure_apps(config)
    return MountTable.from_specs(config.mounts)


def __getattr__(name: str) -> WSGIApp:
    # Built on first access, so that importing this module (for create_wsgi_app, in
    # tests or the CLI) does not import every app.
    if name == "application":
        from gateway.logs import configure_logging_if_unset

        config = Config.from_env()
        configure_logging_if_unset(config.log_format, config.access_log)
        app = create_wsgi_app(load_table(config), config)
        globals()["application"] = app
        return app
    raise AttributeError(name)
