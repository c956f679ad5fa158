"""The core (:mod:`gateway.core.pipeline`): what mutation testing found that no other test
held (docs/testing.md): malformed forwarded headers counted by name, who sees the
operators' pages, the reserved cookies, response headers in their ASGI (bytes) form, the
canary's cookie and ``Vary``, the rules' chains and shadows by method, and request IDs.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pytest

from gateway.core.config import Config
from gateway.core.mounts import MountTable
from gateway.core.pipeline import Body, Decision, Head, Pipeline, scope_cookie, without_cookie
from gateway.migration.rules import RouteSpec
from tests.entries import config_with, rule_table

PROXIES = Config.from_env({"GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8"}).trusted_proxies


@pytest.fixture(scope="module")
def small_table() -> MountTable:
    return MountTable.from_specs(["/a=tests.thirdapp:wsgi_app"], defaults=False)


@pytest.fixture(scope="module")
def site() -> MountTable:
    """The default mounts: ``/flask`` (Flask) and ``/django`` (Django)."""
    return MountTable.from_specs([])


def pipeline(table: MountTable, **changes: Any) -> Pipeline:
    return Pipeline(table, replace(Config.from_env({}), **changes))


def head(path: str, **fields: Any) -> Head:
    fields.setdefault("host", "localhost")
    return Head(method=fields.pop("method", "GET"), path=path, **fields)


def completed(p: Pipeline, decision: Decision, headers: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    p.complete(headers, decision)
    return headers


# -- X-Forwarded-* from a trusted proxy ------------------------------------------------------

def test_malformed_forwarded_headers_are_counted_by_name_and_logged(small_table: MountTable,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    p = pipeline(small_table, trusted_proxies=PROXIES)
    bad = {"for": "unknown", "proto": "ftp", "host": "a..b", "port": "99999", "prefix": "/../x"}
    with caplog.at_level(logging.DEBUG, logger="gateway"):
        first = p.decide(head("/a/x", client="10.0.0.1", forwarded=bad))
        p.decide(head("/a/x", client="10.0.0.1", forwarded=bad))
    assert p.ignored == {"for": 2, "proto": 2, "host": 2, "port": 2, "prefix": 2}
    # An unparsable client is unknown, never the proxy; the request is still a proxied one.
    assert (first.client, first.proxied, first.scheme, first.host, first.root) == (None, True, "http", "localhost", "")
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway"][:5]
    assert lines == [f"Ignored X-Forwarded-{name.title()} from a trusted proxy: {value!r} is not valid."
                     for name, value in bad.items()]


def test_only_a_trusted_proxy_forwards_even_from_loopback(small_table: MountTable) -> None:
    p = pipeline(small_table, trusted_proxies=PROXIES)
    said = {"for": "198.51.100.7"}
    assert p.decide(head("/a/x", client="127.0.0.1", forwarded=said)).client == "127.0.0.1"
    assert p.decide(head("/a/x", client="10.0.0.1", forwarded=said)).client == "198.51.100.7"


def test_the_last_hop_of_a_list_without_spaces(small_table: MountTable) -> None:
    d = pipeline(small_table, trusted_proxies=PROXIES).decide(
        head("/a/x", client="10.0.0.1", forwarded={"for": "198.51.100.1,203.0.113.9"}))
    assert (d.client, d.proxied) == ("203.0.113.9", True)


# -- The operators' pages ----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("client", "host", "sees"),
    [
        pytest.param("127.0.0.1", "localhost", True, id="loopback-allowed-host"),
        pytest.param("127.0.0.1", "127.0.0.2:8000", True, id="loopback-by-address"),
        pytest.param("127.0.0.1", "127.0.0.2", True, id="loopback-by-address-no-port"),
        pytest.param("127.0.0.1", "[::2]", True, id="loopback-by-ipv6-address"),
        pytest.param("10.0.0.1", "localhost", True, id="trusted-proxy"),
        pytest.param("192.0.2.1", "localhost", False, id="anyone-else"),
        pytest.param("127.0.0.1", "evil.example", False, id="rebound-name"),
        pytest.param("127.0.0.1", "evil.example:8000", False, id="rebound-name-with-port"),
        pytest.param("127.0.0.1", None, False, id="no-host"),
    ],
)
def test_who_sees_the_migration_page(small_table: MountTable, client: str, host: str | None, sees: bool) -> None:
    d = pipeline(small_table, trusted_proxies=PROXIES, allowed_hosts=("localhost",)).decide(
        head("/_gateway/", client=client, host=host))
    assert (d.render is not None) is sees
    assert sees or (d.reply is not None and d.reply.status in (400, 404))


# -- Cookies only their owners set ------------------------------------------------------------

def mounted(p: Pipeline, path: str, **fields: Any) -> Decision:
    decision = p.decide(head(path, **fields))
    assert decision.mount is not None and decision.reply is None
    return decision


@pytest.mark.parametrize(
    ("path", "cookie", "kept"),
    [
        pytest.param("/flask/", "sessionid=abc; Path=/", None, id="flask-sets-django-session"),
        pytest.param("/flask/", "csrftoken=abc; Path=/", None, id="flask-sets-csrf-token"),
        pytest.param("/django/", "gateway_canary=abc; Path=/", None, id="django-sets-canary"),
        pytest.param("/django/", "sessionid=abc; Path=/", "sessionid=abc; Path=/django", id="django-session"),
        pytest.param("/flask/", "sessionid=; Max-Age=0; Path=/", "sessionid=; Max-Age=0; Path=/flask",
                     id="flask-deletes-it"),
        pytest.param("/flask/", 'sessionid=""; Max-Age=0', 'sessionid=""; Max-Age=0; Path=/flask',
                     id="flask-deletes-it-quoted"),
        pytest.param("/flask/", "sessionid=", "sessionid=; Path=/flask", id="flask-deletes-it-bare"),
    ],
)
def test_reserved_cookies(site: MountTable, path: str, cookie: str, kept: str | None) -> None:
    p = pipeline(site)
    headers = completed(p, mounted(p, path), [("Set-Cookie", cookie)])
    assert [v for n, v in headers if n == "Set-Cookie"] == ([kept] if kept else [])


def test_dropped_cookies_are_said_once_each(site: MountTable, caplog: pytest.LogCaptureFixture) -> None:
    p = pipeline(site)
    d = mounted(p, "/flask/")
    with caplog.at_level(logging.WARNING, logger="gateway"):
        for _ in range(2):
            headers = completed(p, d, [("Set-Cookie", "sessionid=a"), ("Content-Type", "text/plain"),
                                       ("Set-Cookie", "csrftoken=b"), ("Set-Cookie", "theme=dark")])
            assert [h for h in headers if h[0] in ("Set-Cookie", "Content-Type")] == [
                ("Content-Type", "text/plain"), ("Set-Cookie", "theme=dark; Path=/flask")]
    assert [r.getMessage() for r in caplog.records] == [
        "The app at /flask set the cookie 'sessionid', which only Django sets; it was dropped.",
        "The app at /flask set the cookie 'csrftoken', which only Django sets; it was dropped."]


def test_the_shared_session_is_the_whole_sites_behind_a_prefix(site: MountTable) -> None:
    p = pipeline(site, shared_signin="sessionid")
    d = mounted(p, "/django/", root_path="/srv")
    headers = completed(p, d, [("Set-Cookie", "sessionid=abc; Path=/"), ("Set-Cookie", "other=1; Path=/")])
    assert [v for n, v in headers if n == "Set-Cookie"] == ["sessionid=abc; Path=/srv", "other=1; Path=/srv/django"]


def test_an_app_path_below_a_proxy_prefix_stays_in_its_mount(site: MountTable) -> None:
    p = pipeline(site)
    d = mounted(p, "/flask/", root_path="/srv")
    headers = completed(p, d, [("Set-Cookie", "a=1; Path=/flask/x")])
    assert headers[0] == ("Set-Cookie", "a=1; Path=/srv/flask/x")


# -- Headers in the ASGI form (bytes) ------------------------------------------------------------

def test_bytes_headers_stay_bytes(site: MountTable) -> None:
    p = pipeline(site)
    d = mounted(p, "/flask/", request_id="rid-3")
    headers = completed(p, d, [(b"content-type", b"text/html"), (b"set-cookie", b"a=\xe9; Path=/"),
                               (b"set-cookie", b"sessionid=x"), (b"referrer-policy", b"no-referrer"),
                               (b"content-security-policy", b"FRAME-ANCESTORS 'none'")])
    assert headers == [(b"content-type", b"text/html"), (b"set-cookie", b"a=\xe9; Path=/flask"),
                       (b"referrer-policy", b"no-referrer"), (b"content-security-policy", b"FRAME-ANCESTORS 'none'"),
                       (b"x-content-type-options", b"nosniff"), (b"cross-origin-opener-policy", b"same-origin"),
                       (b"x-request-id", b"rid-3")]


def test_bytes_headers_the_usual_case(site: MountTable) -> None:
    p = pipeline(site)
    headers = completed(p, mounted(p, "/flask/", request_id="rid-4"), [(b"content-type", b"text/html")])
    assert headers == [(b"content-type", b"text/html"), (b"x-content-type-options", b"nosniff"),
                       (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"DENY"),
                       (b"cross-origin-opener-policy", b"same-origin"), (b"x-request-id", b"rid-4")]


def test_a_frame_ancestors_policy_in_bytes_replaces_x_frame_options(site: MountTable) -> None:
    p = pipeline(site)
    headers = completed(p, mounted(p, "/flask/"), [(b"content-security-policy", b"frame-ancestors 'self'")])
    assert b"x-frame-options" not in [n for n, _ in headers] and b"referrer-policy" in [n for n, _ in headers]


# -- What complete() adds only sometimes ------------------------------------------------------

@pytest.mark.parametrize(
    ("https", "scheme", "app_sets_it", "sent"),
    [
        pytest.param(True, "http", False, [], id="plain-http"),
        pytest.param(False, "https", False, [], id="off"),
        pytest.param(True, "https", True, ["max-age=1"], id="app-set-it"),
        pytest.param(True, "https", False, ["max-age=31536000; includeSubDomains"], id="on"),
    ],
)
def test_hsts_while_draining(site: MountTable, https: bool, scheme: str, app_sets_it: bool, sent: list[str]) -> None:
    p = pipeline(site, https=https)
    p.draining = True
    given = [("Strict-Transport-Security", "max-age=1")] if app_sets_it else []
    headers = completed(p, mounted(p, "/flask/", scheme=scheme), given)
    assert [v for n, v in headers if n == "Strict-Transport-Security"] == sent
    assert headers[-1] == ("Connection", "close")


CANARY = [RouteSpec("/c", ("old",), canary="new", share=100.0), RouteSpec("/h", ("old",), canary="new", share=100.0,
                                                                          header="X-Beta")]


@pytest.fixture(scope="module")
def canary_table() -> MountTable:
    apps = {m.prefix: m.app for m in MountTable.from_specs([])}
    return rule_table(CANARY, {"old": apps["/flask"], "new": apps["/django"]})


def test_a_new_clients_canary_cookie_and_vary(canary_table: MountTable) -> None:
    p = Pipeline(canary_table, config_with())
    d = p.decide(head("/c", scheme="https"))
    assert d.set_cookie is not None and d.set_cookie.startswith("gateway_canary=")
    assert d.set_cookie.endswith("; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax; Secure")
    text = completed(p, d, [("Content-Type", "text/plain")])
    assert text[-2:] == [("Set-Cookie", d.set_cookie), ("Vary", "Cookie")]
    raw = completed(p, d, [(b"content-type", b"text/plain")])
    assert raw[-2:] == [(b"set-cookie", d.set_cookie.encode()), (b"vary", b"Cookie")]


def test_a_header_canary_varies_by_its_header(canary_table: MountTable) -> None:
    p = Pipeline(canary_table, config_with())
    d = p.decide(head("/h", fetch={"x-beta": "1"}.get))
    assert d.set_cookie is None and d.mount is not None
    assert completed(p, d, [])[-1] == ("Vary", "X-Beta")


def test_the_gateways_own_answer_while_draining_a_canary_site(canary_table: MountTable) -> None:
    p = Pipeline(canary_table, config_with())
    p.draining = True
    d = p.decide(head("/healthz"))
    assert d.mount is None and d.reply is not None
    headers = p.reply_headers(d.reply, d)
    assert headers[-1] == ("Connection", "close") and "Vary" not in [n for n, _ in headers]


# -- Route rules: chains and shadows by method -----------------------------------------------

def test_a_chain_only_for_its_methods_and_a_shadow_only_for_safe_ones() -> None:
    from gateway.migration.shadow import Shadower

    apps = {m.prefix: m.app for m in MountTable.from_specs([])}
    specs = [RouteSpec("/x", ("f", "d")),
             RouteSpec("/s", ("f",), shadow="d", shadow_headers=("etag",), shadow_credentials=True)]
    shadower = Shadower(None, size=1)
    p = Pipeline(rule_table(specs, {"f": apps["/flask"], "d": apps["/django"]}, shadower), config_with())
    get, post = p.decide(head("/x")), p.decide(head("/x", method="POST"))
    assert get.chain is not None and get.chain.key == specs[0].key and get.shadow is None
    assert post.chain is None and post.mount is not None
    shadowed = p.decide(head("/s"))
    assert shadowed.shadow is not None and shadowed.shadow.key == specs[1].key and shadowed.chain is None
    assert (shadowed.shadow.primary.prefix, shadowed.shadow.candidate.prefix, shadowed.shadow.shadower,
            shadowed.shadow.headers, shadowed.shadow.credentials) == (specs[1].key, specs[1].shadow_key, shadower,
                                                                      ("etag",), True)
    assert p.decide(head("/s", method="POST")).shadow is None
    shadower.queue.put(("full",))  # a full queue: the comparison is dropped, and counted
    assert p.decide(head("/s")).shadow is None
    assert shadower.snapshot(specs[1].key) == {"dropped": 1}


# -- Small functions ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("header", "left"),
    [
        pytest.param("a=1; sessionid=x; b=2", "a=1; b=2", id="middle"),
        pytest.param("sessionid=x=y; b=2", "b=2", id="value-with-equals"),
        pytest.param("a=1;sessionid=x;b=2", "a=1;b=2", id="no-spaces"),
    ],
)
def test_without_cookie(header: str, left: str) -> None:
    assert without_cookie(header, "sessionid") == left


@pytest.mark.parametrize(
    ("cookie", "path", "scoped"),
    [
        pytest.param(" a=1", "/m", "a=1; Path=/m", id="leading-space"),
        pytest.param("a=1; Path=/x", "", "a=1; Path=/x", id="site-wide-keeps-its-path"),
        pytest.param("a=1", "", "a=1; Path=/", id="site-wide-without-a-path"),
        pytest.param("a=1; Path=x", "", "a=1; Path=/", id="site-wide-relative-path"),
    ],
)
def test_scope_cookie_edges(cookie: str, path: str, scoped: str) -> None:
    assert scope_cookie(cookie, path) == scoped


def test_request_ids_are_the_prefix_then_a_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.core import pipeline as module

    monkeypatch.setattr(module.secrets, "token_hex", lambda n: "ab" * n)
    source = module._IdSource()
    assert source.prefix == "abababababababab"
    assert [source(), source()] == ["abababababababab0000000000000001", "abababababababab0000000000000002"]


def test_begin_sets_the_request_id_for_log_records(small_table: MountTable) -> None:
    import contextvars

    from gateway.core.pipeline import REQUEST_ID

    def begin() -> tuple[str | None, str]:
        request = pipeline(small_table).begin(head("/a/x", request_id="rid-7"), 0.0)
        return REQUEST_ID.get(), request.protocol

    assert contextvars.copy_context().run(begin) == ("rid-7", "-")  # a context of its own: nothing leaks


# -- decide(): what the other refusals and the rules' decisions carry -------------------------

@pytest.mark.parametrize(
    ("path", "fields", "says"),
    [
        pytest.param("/a/\x00", {}, b"the URL contains a NUL", id="nul-in-path"),
        pytest.param("/a/x", {"query": "q=%00"}, b"the URL contains a NUL", id="nul-in-query"),
        pytest.param("/a/x", {"header_nul": True}, b"a header value contains a NUL", id="nul-in-header"),
    ],
)
def test_nul_refusals_keep_the_head(small_table: MountTable, path: str, fields: dict[str, Any], says: bytes) -> None:
    d = pipeline(small_table).decide(head(path, request_id="rid-5", client="192.0.2.1", **fields))
    assert d.reply is not None and d.reply.status == 400 and says in d.reply.body
    assert (d.request_id, d.client, d.path_info, d.mount) == ("rid-5", "192.0.2.1", path, None)


def test_a_query_with_nul_only_in_the_path_or_only_in_the_query(small_table: MountTable) -> None:
    p = pipeline(small_table)
    assert p.decide(head("/a/x", query="q=%2500x")).reply is None  # "%2500" is a percent sign and "00"
    assert p.decide(head("/a/x", query="q=\x00")).reply is None  # NUL in the query only as %00


def test_metrics_only_when_on_and_asked(small_table: MountTable) -> None:
    off = pipeline(small_table)
    d = off.decide(head("/metrics", client="127.0.0.1"))
    assert d.render is None and d.reply is not None and d.reply.status == 404
    on = pipeline(small_table, metrics=True)
    assert on.decide(head("/a/x", client="127.0.0.1")).render is None
    assert on.decide(head("/metrics", client="127.0.0.1")).render is not None


@pytest.mark.parametrize(
    ("path", "method", "fields", "status"),
    [
        pytest.param("/django/", "POST", {"type": "application/x-www-form-urlencoded; charset=utf-16"}, 415,
                     id="django-utf-16-form"),
        pytest.param("/django/", "POST", {"type": "application/x-www-form-urlencoded; charset=utf-16",
                                          "length": "9" * 12}, 413, id="too-large-first"),
        pytest.param("/django/", "GET", {"type": "application/x-www-form-urlencoded; charset=utf-16"}, None,
                     id="django-get"),
        pytest.param("/django/", "POST", {"length": "3"}, None, id="django-no-type"),
        pytest.param("/flask/", "POST", {"type": "application/x-www-form-urlencoded; charset=utf-16"}, None,
                     id="flask-reads-it"),
        pytest.param("/django/", "POST", {"type": "application/x-www-form-urlencoded; charset=UTF-8"}, None,
                     id="utf-8-in-capitals"),
        pytest.param("/django/", "POST", {"type": "multipart/form-data; boundary=x; charset=latin-1"}, None,
                     id="multipart-ascii-compatible"),
        pytest.param("/django/", "POST", {"type": "multipart/form-data; boundary=x; charset=utf-16"}, 415,
                     id="multipart-utf-16"),
        pytest.param("/django/", "POST", {"type": "text/plain; charset=utf-16"}, None, id="not-a-form"),
        pytest.param("/django/", "POST", {"type": "multipart/form-data; boundary=x; xcharset=1"}, None,
                     id="no-charset-parameter"),
    ],
)
def test_a_form_django_cannot_read(site: MountTable, path: str, method: str, fields: dict[str, Any],
                                   status: int | None) -> None:
    d = pipeline(site).decide(head(path, method=method, body=Body(**fields)))
    assert (d.reply.status if d.reply else None) == status
    if status == 415:
        assert b"'utf-16'" in d.reply.body  # type: ignore[union-attr]


def test_a_413_names_the_limit(small_table: MountTable) -> None:
    d = pipeline(small_table, max_body_size=100).decide(head("/a/x", body=Body(length="101")))
    assert d.reply is not None and d.reply.status == 413 and b"the limit here is 100 bytes" in d.reply.body
    assert d.set_cookie is None


def test_canary_requests_are_counted_and_told(site: MountTable) -> None:
    apps = {m.prefix: m.app for m in site}
    table = rule_table([RouteSpec("/c", ("old",), canary="new", share=100.0)],
                       {"old": apps["/flask"], "new": apps["/django"]})
    routes = table.route_table
    assert routes is not None
    told: list[tuple[Any, ...]] = []
    routes.listen(lambda *said: told.append(said))
    p = Pipeline(table, config_with())
    key = next(iter(routes.specs))
    for _ in range(2):
        d = p.decide(head("/c", scheme="https"))
        assert d.mount is not None and d.mount.prefix == routes.specs[key].canary_key
    assert routes.canaried == {key: 2} and told == [("canary", key), ("canary", key)]
    assert sum(routes.traffic.series(key)) == 2 and sum(routes.traffic.series(key, what="canary")) == 2
    page = p.decide(head("/_gateway/", client="127.0.0.1")).render()  # type: ignore[misc]
    assert b"/c" in page.body


def test_a_chains_decision_carries_the_head_and_the_canarys_cookie(site: MountTable) -> None:
    apps = {m.prefix: m.app for m in site}
    spec = RouteSpec("/y", ("f", "d"), canary="g", share=0.0)
    table = rule_table([spec], {"f": apps["/flask"], "d": apps["/django"], "g": apps["/flask"]})
    p = Pipeline(table, config_with(trusted_proxies=PROXIES, max_body_size=1000, stream_bodies=(spec.key,)))
    d = p.decide(head("/y", root_path="/srv", request_id="rid-8", client="10.0.0.1", scheme="https",
                      server=("example.org", 443), forwarded={"for": "192.0.2.9"}))
    assert d.chain is not None and d.chain.key == spec.key and d.shadow is None and d.reply is None
    assert d.mount is not None and d.mount.prefix == spec.key
    assert (d.request_id, d.root, d.script_name, d.path_info, d.host, d.server, d.scheme, d.client, d.proxied,
            d.body_limit, d.buffered) == ("rid-8", "/srv", "/srv", "/y", "localhost", ("example.org", 443),
                                          "https", "192.0.2.9", True, 1000, False)
    assert d.set_cookie is not None and d.set_cookie.startswith("gateway_canary=")
    refused = p.decide(head("/y", method="GET", body=Body(length="1001")))
    assert refused.chain is None and refused.reply is not None and refused.reply.status == 413


def test_the_metrics_of_a_request_a_scrape_and_a_refusal(small_table: MountTable) -> None:
    import time

    p = pipeline(small_table, metrics=True)
    assert p.metrics is not None
    served = p.begin(head("/a/x"), time.perf_counter() - 2.5)
    scrape = p.begin(head("/metrics", client="127.0.0.1"), time.perf_counter())
    assert scrape.decision.render is not None
    served.status, scrape.status = 201, 200
    p.done(served)
    p.done(scrape)
    refused = p.decide(head("/a/x", host="evil.example"))
    assert refused.reply is not None
    p.reply_headers(refused.reply, refused)
    text = p.metrics.render().body.decode()
    assert 'gateway_requests_total{mount="/a",status="2xx"} 1.0' in text
    assert 'gateway_requests_total{mount="-",status="2xx"} 1.0' in text
    assert "gateway_requests_in_flight 0.0" in text  # the scrape was not counted in, nor out
    assert 'gateway_request_duration_seconds_bucket{le="1.0",mount="/a"} 0.0' in text  # it took 2.5 s
    assert 'gateway_request_duration_seconds_count{mount="/a"} 1.0' in text
    assert 'gateway_refusals_total{reason="bad_host"} 1.0' in text


# -- The canary's choice ------------------------------------------------------------------------

HALF = [RouteSpec("/c", ("old",), canary="new", share=50.0), RouteSpec("/h", ("old",), canary="new", share=50.0,
                                                                       header="X-Beta")]


def split_by(spec: RouteSpec) -> tuple[str, str]:
    """Two client IDs (32 hex digits) on either side of ``spec``'s share."""
    ids = [f"{n:032x}" for n in range(1, 100)]
    return (next(i for i in ids if spec.chooses_canary(i)), next(i for i in ids if not spec.chooses_canary(i)))


@pytest.fixture(scope="module")
def half_table() -> MountTable:
    apps = {m.prefix: m.app for m in MountTable.from_specs([])}
    return rule_table(HALF, {"old": apps["/flask"], "new": apps["/django"]})


def test_a_canary_cookie_keeps_its_client_on_its_side(half_table: MountTable) -> None:
    p = Pipeline(half_table, config_with())
    spec = HALF[0]
    for client, canary in zip(split_by(spec), (True, False), strict=True):
        d = p.decide(head("/c", fetch={"cookie": f"theme=dark; gateway_canary={client}"}.get))
        assert d.set_cookie is None and d.mount is not None
        assert (d.mount.prefix == spec.canary_key) is canary


@pytest.mark.parametrize(
    ("cookie", "scheme", "root", "ends"),
    [
        pytest.param(None, "http", "", "; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax", id="none"),
        pytest.param("gateway_canary=xyz", "wss", "", "; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax; Secure",
                     id="not-an-id-over-wss"),
        pytest.param("theme=dark", "http", "/srv", "; Path=/srv; Max-Age=31536000; HttpOnly; SameSite=Lax",
                     id="other-cookies-behind-a-prefix"),
    ],
)
def test_a_new_canary_client(half_table: MountTable, cookie: str | None, scheme: str, root: str, ends: str) -> None:
    import re

    p = Pipeline(half_table, config_with())
    d = p.decide(head("/c", scheme=scheme, root_path=root, fetch={"cookie": cookie}.get))
    assert d.set_cookie is not None and d.set_cookie.endswith(ends)
    client = re.fullmatch(r"gateway_canary=([0-9a-f]{32}); .*", d.set_cookie)
    assert client is not None and d.mount is not None
    assert (d.mount.prefix == HALF[0].canary_key) is HALF[0].chooses_canary(client[1])


def test_a_header_canary_follows_the_header_alone(half_table: MountTable) -> None:
    p = Pipeline(half_table, config_with())
    spec = HALF[1]
    for value, canary in zip(split_by(spec), (True, False), strict=True):
        d = p.decide(head("/h", fetch=lambda name, value=value: {"x-beta": value}.get(name.lower())))
        assert d.mount is not None and (d.mount.prefix == spec.canary_key) is canary and d.set_cookie is None
    assert p.decide(head("/h", fetch={}.get)).mount.prefix == spec.key  # type: ignore[union-attr]
    assert p.decide(head("/h")).mount.prefix == spec.key  # type: ignore[union-attr]


def test_the_canary_cookie_of_another_app_is_named_as_the_gateways(site: MountTable,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    p = pipeline(site)
    with caplog.at_level(logging.WARNING, logger="gateway"):
        completed(p, mounted(p, "/django/"), [("Set-Cookie", "gateway_canary=abc")])
    assert [r.getMessage() for r in caplog.records] == [
        "The app at /django set the cookie 'gateway_canary', which only the gateway sets; it was dropped."]


# -- Who reads the shared sign-in, who is Django ------------------------------------------------

def django_app(site: MountTable) -> Any:
    return next(m.app for m in site if m.prefix == "/django")


def wrapped(app: Any, depth: int) -> Any:
    """``app`` inside ``depth`` WSGI middleware of the usual kinds, in turn."""
    import functools

    class Middleware:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __call__(self, environ: Any, start_response: Any) -> Any:
            return self.inner(environ, start_response)

    def closure(inner: Any) -> Any:
        def middleware(environ: Any, start_response: Any) -> Any:
            return inner(environ, start_response)
        return middleware

    def partial(inner: Any) -> Any:
        return functools.partial(lambda inner, environ, start_response: inner(environ, start_response), inner)

    kinds = [Middleware, closure, partial]
    for level in range(depth):
        app = kinds[level % 3](app)
    return app


@pytest.mark.parametrize(
    ("depth", "django"),
    [pytest.param(n, n <= 4, id=f"{n}-deep") for n in range(6)],
)
def test_django_is_found_four_middleware_deep(site: MountTable, depth: int, django: bool) -> None:
    from gateway.core.pipeline import is_django

    assert is_django(wrapped(django_app(site), depth)) is django


@pytest.mark.parametrize("kind", ["partial-keyword", "wraps", "closure", "attribute"])
def test_django_behind_each_kind_of_wrapper(site: MountTable, kind: str) -> None:
    import functools

    from gateway.core.pipeline import is_django

    inner = django_app(site)
    wrappers = {
        "partial-keyword": lambda: functools.partial(lambda environ, start_response, app: app(environ, start_response),
                                                     app=inner),
        "wraps": lambda: functools.wraps(inner)(lambda environ, start_response: [b""]),
        "closure": lambda: wrapped(inner, 2),  # a closure around a Middleware
        "attribute": lambda: wrapped(inner, 1),
    }
    assert is_django(wrappers[kind]()) and not is_django(wrapped(lambda environ, start_response: [b""], 3))


def signin_site(site: MountTable) -> MountTable:
    import flask

    reader = flask.Flask("reader")
    reader.extensions["gateway_signin"] = object()
    from gateway.core.mounts import Mount

    return MountTable([*site, Mount("/reader", "tests:reader", "wsgi", reader)])


@pytest.mark.parametrize(
    ("path", "hidden"),
    [
        pytest.param("/flask/", "sessionid", id="flask-does-not-read-it"),
        pytest.param("/django/", None, id="django-reads-it"),
        pytest.param("/reader/", None, id="flask-with-django-signin"),
        pytest.param("/healthz", None, id="the-gateways-own"),
    ],
)
def test_the_shared_session_goes_only_to_its_readers(site: MountTable, path: str, hidden: str | None) -> None:
    p = pipeline(signin_site(site), shared_signin="sessionid")
    assert p.begin(head(path), 0.0, counted=False).hidden_cookie == hidden


def test_a_rules_key_reads_what_its_apps_read(site: MountTable) -> None:
    apps = {m.prefix: m.app for m in site}
    specs = [RouteSpec("/fd", ("f", "d")), RouteSpec("/ff", ("f", "f2"))]
    p = Pipeline(rule_table(specs, {"f": apps["/flask"], "f2": apps["/flask"], "d": apps["/django"]}),
                 config_with(shared_signin="sessionid"))
    assert p.begin(head("/fd"), 0.0, counted=False).hidden_cookie is None
    assert p.begin(head("/ff"), 0.0, counted=False).hidden_cookie == "sessionid"
    form = Body(type="application/x-www-form-urlencoded; charset=utf-16")
    assert p.decide(head("/fd", method="POST", body=form)).reply.status == 415  # type: ignore[union-attr]
    assert p.decide(head("/ff", method="POST", body=form)).reply is None


def test_sessionid_stays_djangos_when_the_shared_session_has_another_name(site: MountTable) -> None:
    p = pipeline(site, shared_signin="gw_session")
    d = mounted(p, "/flask/")
    headers = completed(p, d, [("Set-Cookie", "sessionid=a"), ("Set-Cookie", "gw_session=b"),
                               ("Set-Cookie", "csrftoken=c")])
    assert [v for n, v in headers if n == "Set-Cookie"] == []


# -- What the entry points read of the pipeline -------------------------------------------------

def test_observing_follows_metrics_and_tracing(small_table: MountTable, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.access")  # the access log off
    assert pipeline(small_table).observing is False
    assert pipeline(small_table, metrics=True).observing is True


def test_in_flight_counts_a_request_and_not_a_scrape(small_table: MountTable) -> None:
    p = pipeline(small_table, metrics=True)
    metrics = p.metrics
    assert metrics is not None
    served = p.begin(head("/a/x"), 0.0)
    assert "gateway_requests_in_flight 1.0" in metrics.render().body.decode()
    scrape = p.begin(head("/metrics", client="127.0.0.1"), 0.0)
    assert "gateway_requests_in_flight 1.0" in metrics.render().body.decode()
    p.done(scrape)
    assert "gateway_requests_in_flight 1.0" in metrics.render().body.decode()
    p.done(served)
    assert "gateway_requests_in_flight 0.0" in metrics.render().body.decode()


def test_the_index_lists_metrics_when_on(small_table: MountTable) -> None:
    on = pipeline(small_table, metrics=True).decide(head("/"))
    off = pipeline(small_table).decide(head("/"))
    assert on.reply is not None and off.reply is not None
    assert b"/metrics" in on.reply.body and b"/metrics" not in off.reply.body


def test_canary_requests_reach_the_metrics(site: MountTable) -> None:
    apps = {m.prefix: m.app for m in site}
    spec = RouteSpec("/c", ("old",), canary="new", share=100.0)
    p = Pipeline(rule_table([spec], {"old": apps["/flask"], "new": apps["/django"]}), config_with(metrics=True))
    p.decide(head("/c"))
    assert p.metrics is not None
    assert f'gateway_canary_requests_total{{rule="{spec.key}"}} 1.0' in p.metrics.render().body.decode()


def test_a_fallback_is_counted_for_its_rule(site: MountTable) -> None:
    apps = {m.prefix: m.app for m in site}
    spec = RouteSpec("/x", ("f", "d"))
    table = rule_table([spec], {"f": apps["/flask"], "d": apps["/django"]})
    p = Pipeline(table, config_with())
    chain = p.decide(head("/x")).chain
    assert chain is not None and table.route_table is not None
    p.fell_back(chain)
    assert table.route_table.fallbacks == {spec.key: 1}


@pytest.mark.parametrize(
    ("client", "host", "whole"),
    [
        pytest.param("127.0.0.1", "localhost", True, id="operator"),
        pytest.param("192.0.2.1", "localhost", False, id="anyone"),
        pytest.param("127.0.0.1", "evil.example", False, id="rebound-name"),
    ],
)
def test_readiness_details_only_for_operators(small_table: MountTable, client: str, host: str, whole: bool) -> None:
    import json

    from gateway.replies import Reply

    p = pipeline(small_table, allowed_hosts=("localhost",))
    d = p.decide(head("/readyz", client=client, host=host))
    reply = Reply(503, (("Content-Type", "application/json"),),
                  json.dumps({"status": "fail", "checks": {"db": "connection to db.internal:5432 refused"}}).encode())
    shown = json.loads(p.readiness_for(d, reply).body)
    assert shown["checks"]["db"] == ("connection to db.internal:5432 refused" if whole else "fail")


def test_new_request_ids_are_lower_case_hex(small_table: MountTable, monkeypatch: pytest.MonkeyPatch) -> None:
    import itertools

    from gateway.core import pipeline as module

    monkeypatch.setattr(module.new_request_id, "counter", itertools.count(0xABC))
    assert pipeline(small_table).decide(head("/a/x")).request_id == "0" * 29 + "abc"


def test_a_streaming_mount_is_not_buffered(small_table: MountTable) -> None:
    p = pipeline(small_table, stream_bodies=("/a",))
    assert p.decide(head("/a/x", method="POST", body=Body(length="5"))).buffered is False
    assert pipeline(small_table).decide(head("/a/x", method="POST", body=Body(length="5"))).buffered is True


def test_what_is_django_looks_into_and_what_it_leaves(site: MountTable) -> None:
    from gateway.core.pipeline import is_django

    inner = django_app(site)

    class ClassWrapped:
        """``__wrapped__`` on the class, not in the instance's ``__dict__``."""

        __wrapped__ = inner

        def __call__(self, environ: Any, start_response: Any) -> Any:
            return inner(environ, start_response)

    class Data:
        """Not callable: data the middleware keeps, not an app it calls."""

        def __init__(self) -> None:
            self.app = inner

    class KeepsData:
        def __init__(self) -> None:
            self.settings = Data()

        def __call__(self, environ: Any, start_response: Any) -> Any:
            return [b""]

    def unfilled() -> Any:
        def middleware(environ: Any, start_response: Any) -> Any:
            return later(environ, start_response)  # a cell not filled yet when it is looked at
        return middleware
        later = inner  # never reached: the closure's cell stays empty

    assert is_django(ClassWrapped())
    assert not is_django(KeepsData()) and not is_django(unfilled()) and not is_django(print)
