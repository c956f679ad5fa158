"""The gateway as a WSGI app: ``gateway.wsgi:application``.

Werkzeug's ``DispatcherMiddleware`` over the mount table, with the gateway's pages
(an index at ``/``, a 404 elsewhere) as the fallback. Runs unchanged under gunicorn,
Granian's WSGI interface or Werkzeug's development server::

    gunicorn gateway.wsgi:application
"""

from __future__ import annotations

from werkzeug.middleware.dispatcher import DispatcherMiddleware

from gateway.config import Config, configure_apps
from gateway.mountpolicy import WSGIMount
from gateway.mounts import Mount, MountTable
from gateway.pages import Pages
from gateway.types import WSGIApp


def create_wsgi_app(table: MountTable) -> WSGIApp:
    """Mount every app of ``table`` on a Werkzeug dispatcher."""
    mounts = {mount.prefix: WSGIMount(as_wsgi(mount)) for mount in table}
    return DispatcherMiddleware(Pages(table), mounts)


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
        global application
        application = create_wsgi_app(load_table(Config.from_env()))
        return application
    raise AttributeError(name)
