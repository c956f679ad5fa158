"""The gateway as a WSGI app, for any WSGI server: ``gateway.wsgi:application``.

Built on first access by :func:`gateway.serve.builder.build`, from the ``GATEWAY_*``
variables and the ``gateway.toml`` they (or the current folder) name, as every other
entry point builds it::

    gunicorn gateway.wsgi:application
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Built on first access, so that importing this module imports no app.
    if name == "application":
        from gateway.core.config import Config
        from gateway.serve import builder

        # The configuration gunicorn's master accepted, in a worker it forked; else the environment's.
        config = builder.forked_config if builder.forked_config is not None else Config.from_env()
        app = builder.build(config, "wsgi")
        globals()["application"] = app
        return app
    raise AttributeError(name)
