"""The front policy: request IDs, trusted proxies, health, security headers, logs."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
from django.test import override_settings

from gateway.adapters.asgi import create_asgi_app
from gateway.adapters.wsgi import create_wsgi_app
from gateway.core.config import Config
from gateway.core.mounts import MountTable
from tests.support import SyncASGIClient


@pytest.fixture(scope="module")
def rid_table(table):  # type: ignore[no-untyped-def]
    return MountTable([*table, *MountTable.from_specs(["/rid=tests.thirdapp.rid:flask_app"], defaults=False)])


def clients(table: MountTable, config: Config) -> list[object]:
    from werkzeug.test import Client

    wsgi = create_wsgi_app(table, config)

    def from_loopback(environ, start_response):  # type: ignore[no-untyped-def]
        environ.setdefault("REMOTE_ADDR", "127.0.0.1")  # as a server sets it; the test client does not
        return wsgi(environ, start_response)

    return [Client(from_loopback), SyncASGIClient(create_asgi_app(table, config, threads=4))]


def text(response) -> str:  # type: ignore[no-untyped-def]
    return response.get_data(as_text=True) if hasattr(response, "get_data") else response.text


@pytest.mark.parametrize(
    ("offered", "kept"),
    [
        pytest.param("abc-123.def:ghi", True, id="token"),
        pytest.param("a" * 128, True, id="128-chars"),
        pytest.param("a" * 129, False, id="too-long"),
        pytest.param("has space", False, id="space"),
        pytest.param("<script>", False, id="markup"),
        pytest.param(None, False, id="none"),
    ],
)
def test_request_id_reaches_both_apps_and_the_response(rid_table, offered: str | None, kept: bool) -> None:  # type: ignore[no-untyped-def]
    headers = {"X-Request-ID": offered} if offered else {}
    for client in clients(rid_table, Config.from_env()):
        with override_settings(ROOT_URLCONF="tests.thirdapp.rid"):
            seen = [json.loads(text(client.get(url, headers=headers))) for url in ("/rid/", "/django/rid/")]
        returned = client.get("/flask/", headers=headers).headers["X-Request-ID"]
        if kept:
            assert returned == offered
            assert seen == [{"header": offered, "context": offered}] * 2
        else:
            assert re.fullmatch(r"[0-9a-f]{32}", returned)
            for item in seen:
                assert re.fullmatch(r"[0-9a-f]{32}", item["header"]) and item["context"] == item["header"]


PROXIED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https",
           "X-Forwarded-Host": "example.org", "X-Forwarded-Prefix": "/apps"}


def proxy_config(trusted: str) -> Config:
    return replace(Config.from_env(), allowed_hosts=("localhost", "example.org"),
                   trusted_proxies=Config.from_env({"GATEWAY_TRUSTED_PROXIES": trusted}).trusted_proxies)


@override_settings(ALLOWED_HOSTS=["localhost", "example.org"])  # what configure_apps sets in a server
def test_trusted_proxy_prefix_reaches_every_url(table) -> None:  # type: ignore[no-untyped-def]
    for client in clients(table, proxy_config("127.0.0.1/32,::1")):
        admin = client.get("/django/admin/", headers=PROXIED)
        assert admin.status_code == 302
        assert admin.headers["Location"] == "/apps/django/admin/login/?next=/apps/django/admin/"
        login = text(client.get("/django/admin/login/", headers=PROXIED))
        assert '<link rel="stylesheet" href="/apps/django/static/admin/css/base.css">' in login
        assert 'action="/apps/django/admin/login/' in login
        flask = client.get("/flask/?name=Ada", headers=PROXIED)
        assert 'href="/apps/flask/static/style.css"' in text(flask)
        assert "Path=/apps/flask" in flask.headers["Set-Cookie"]
        assert client.get("/flask", headers=PROXIED).headers["Location"] == "/apps/flask/"
        assert 'href="/apps/django/"' in text(client.get("/", headers=PROXIED))
        # The same client without the headers is served at the root again.
        assert '<link rel="stylesheet" href="/django/static/admin/css/base.css">' in text(
            client.get("/django/admin/login/"))


def test_untrusted_proxy_headers_are_ignored(table) -> None:  # type: ignore[no-untyped-def]
    for client in clients(table, proxy_config("10.9.9.9/32")):
        admin = client.get("/django/admin/", headers={**PROXIED, "Host": "localhost"})
        assert admin.headers["Location"] == "/django/admin/login/?next=/django/admin/"
        # X-Forwarded-Host is not believed either: example.org is not what was asked for.
        assert client.get("/flask/", headers={**PROXIED, "Host": "evil.example"}).status_code == 400


def test_health_answers_without_touching_apps_or_hosts(table) -> None:  # type: ignore[no-untyped-def]
    for client in clients(table, Config.from_env()):
        health = client.get("/healthz", headers={"Host": "10.1.2.3:8000"})
        assert health.status_code == 200 and json.loads(text(health)) == {"status": "ok"}
        ready = client.get("/readyz", headers={"Host": "10.1.2.3:8000"})
        assert ready.status_code == 200
        assert json.loads(text(ready)) == {"status": "ok", "checks": {
            "/flask": "ok", "/django": "ok", "database:default": "ok", "migrations": "ok"}}
        assert ready.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["/", "/flask/", "/django/", "/nowhere", "/healthz"])
def test_security_headers_everywhere(table, path: str) -> None:  # type: ignore[no-untyped-def]
    for client in clients(table, Config.from_env()):
        headers = client.get(path).headers
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "same-origin"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert len(headers.getlist("X-Frame-Options") if hasattr(headers, "getlist")
                   else headers.get_list("X-Frame-Options")) == 1


def test_generated_request_ids_are_unique_and_reseeded_in_a_forked_child() -> None:
    from gateway.core.pipeline import _IdSource

    source = _IdSource()
    ids = {source() for _ in range(10000)}
    assert len(ids) == 10000 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    before = source()
    source.reseed()  # what os.register_at_fork runs in a child
    assert source()[:16] != before[:16]
