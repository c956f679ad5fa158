"""The gateway as an ASGI app, for any ASGI server: ``gateway.asgi:application``.

Built on first access by :func:`gateway.serve.builder.build`, from the ``GATEWAY_*``
variables and the ``gateway.toml`` they (or the current folder) name, as every other
entry point builds it. It needs asyncio (uvicorn, Hypercorn on asyncio)::

    uvicorn gateway.asgi:application
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Built on first access, so that importing this module imports no app.
    if name == "application":
        from gateway.core.config import Config
        from gateway.serve.builder import build

        app = build(Config.from_env(), "asgi")
        globals()["application"] = app
        return app
    raise AttributeError(name)
