"""The gateway as a WSGI app, for any WSGI server: ``gateway.wsgi:application``.

Built on first access by :func:`gateway.serve.builder.build`, from the ``GATEWAY_*``
variables and the ``gateway.toml`` they (or the current folder) name, as every other
entry point builds it::

    gunicorn gateway.wsgi:application
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.core.config import Config

#: The configuration to build from when a server's master process sets it for the worker
#: it forked (gunicorn: :mod:`gateway.serve.gunicorn_conf`); else the environment's.
config: Config | None = None


def __getattr__(name: str) -> Any:
    # Built on first access, so that importing this module imports no app.
    if name == "application":
        from gateway.core.config import Config
        from gateway.serve.builder import build

        app = build(config if config is not None else Config.from_env(), "wsgi")
        globals()["application"] = app
        return app
    raise AttributeError(name)
