"""The two entry points built in process, for tests that run one behaviour through both.

``ENTRIES`` maps ``wsgi`` to ``gateway.wsgi`` under Werkzeug's test client and ``asgi`` to
``gateway.asgi`` under httpx's ASGI transport; each gives a ``send`` that returns an
:class:`Answer`. :func:`builder` makes them for a fixture and stops their pools after.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
from werkzeug.test import Client

from gateway.adapters.asgi import create_asgi_app
from gateway.adapters.wsgi import create_wsgi_app
from gateway.core.config import Config
from gateway.core.mounts import MountTable

BASE = "http://localhost:8000"


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def get(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


Send = Callable[..., Answer]


def wsgi_entry(table: MountTable, config: Config) -> tuple[Send, Any]:
    app = create_wsgi_app(table, config)

    def from_loopback(environ, start_response):  # type: ignore[no-untyped-def]
        environ["REMOTE_ADDR"] = "127.0.0.1"  # as a server sets it; the test client does not
        return app(environ, start_response)

    client = Client(from_loopback, use_cookies=False)  # each request sends only the cookies it names

    def send(method: str, path: str, headers: dict[str, str] | list[tuple[str, str]] | None = None,
             body: bytes = b"") -> Answer:
        if isinstance(headers, list):  # a header sent twice is one, joined, as WSGI servers hand it on
            joined: dict[str, list[str]] = {}
            for name, value in headers:
                joined.setdefault(name.lower(), []).append(value)
            headers = {name: ("; " if name == "cookie" else ",").join(values) for name, values in joined.items()}
        response = client.open(path, base_url=BASE, method=method, headers=headers or {}, data=body, buffered=True)
        return Answer(response.status_code, list(response.headers.items()), response.get_data())

    return send, app


def asgi_entry(table: MountTable, config: Config) -> tuple[Send, Any]:
    app = create_asgi_app(table, config, threads=4)

    def send(method: str, path: str, headers: dict[str, str] | list[tuple[str, str]] | None = None,
             body: bytes = b"") -> Answer:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
                return await client.request(method, path, headers=headers, content=body)

        response = asyncio.run(go())
        return Answer(response.status_code, list(response.headers.multi_items()), response.content)

    return send, app


ENTRIES = {"wsgi": wsgi_entry, "asgi": asgi_entry}


def config_with(**changes: Any) -> Config:
    return replace(Config.from_env({}), allowed_hosts=("localhost", "example.org", "[::1]"), **changes)


TRUSTED = Config.from_env({"GATEWAY_TRUSTED_PROXIES": "127.0.0.1"}).trusted_proxies


def builder(kind: str, table: MountTable) -> Iterator[Callable[..., Send]]:
    """For a fixture: build entry points of ``kind`` over ``table``, each with a config of
    its own, and stop their thread pools afterwards."""
    built: list[Any] = []

    def build(**changes: Any) -> Send:
        send, app = ENTRIES[kind](table, config_with(**changes))
        built.append(app)
        return send

    yield build
    for app in built:
        if hasattr(app, "executor"):
            app.executor.shutdown(wait=True)


def rule_table(specs: list[Any], apps: dict[str, Any], shadower: Any = None) -> MountTable:
    """A table of route rules (``RouteSpec``) answered by ``apps`` (app objects by name,
    each WSGI or ASGI as detected), with ``shadower`` as its shadow comparisons' pool."""
    from gateway.core.mounts import detect_interface, rule_mounts_of
    from gateway.migration.rules import RouteTable

    routes = RouteTable(specs)
    if shadower is not None:
        routes.shadower = shadower
    loaded = {name: (app, detect_interface(app)) for name, app in apps.items()}
    table = MountTable([], rule_mounts_of(specs, loaded, {}), routes)
    table.route_apps = loaded
    return table


def who(answer: Any) -> str:
    """Which app of tests/apps/shop.py answered (its JSON says)."""
    assert answer.status == 200, answer.body
    return str(answer.json()["app"])
