"""The protocol-free core: a request head in, a decision out; response headers completed."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from gateway.core.config import Config
from gateway.core.mounts import MountTable
from gateway.core.pipeline import (
    Body,
    Decision,
    Head,
    HostPolicy,
    Pipeline,
    Request,
    scope_cookie,
    valid_client,
    valid_port,
    valid_prefix,
)


@pytest.fixture(scope="module")
def small_table() -> MountTable:
    return MountTable.from_specs(["/a=tests.thirdapp:wsgi_app", "/a/b=tests.thirdapp:echo_app",
                                  "/s=tests.thirdapp:asgi_app"], defaults=False)


def pipeline(small_table: MountTable, **changes: object) -> Pipeline:
    config = replace(Config.from_env({}), **changes)  # type: ignore[arg-type]
    return Pipeline(small_table, config)


def head(path: str, **fields: object) -> Head:
    fields.setdefault("host", "localhost")
    said = {name: fields.pop(name) for name in ("length", "type", "coding") if name in fields}
    if said:
        fields["body"] = Body(**said)  # type: ignore[arg-type]
    return Head(method=str(fields.pop("method", "GET")), root_path=str(fields.pop("root_path", "")), path=path,
                **fields)  # type: ignore[arg-type]


TRUSTED = Config.from_env({"GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8"}).trusted_proxies


@pytest.mark.parametrize(
    ("path", "prefix", "script_name", "path_info"),
    [
        pytest.param("/a/x", "/a", "/a", "/x", id="mount"),
        pytest.param("/a/b/x", "/a/b", "/a/b", "/x", id="longest-prefix"),
        pytest.param("/a/bx", "/a", "/a", "/bx", id="segment-boundary"),
        pytest.param("/ax", None, "", "/ax", id="not-a-segment"),
        pytest.param("/a/", "/a", "/a", "/", id="mount-root"),
    ],
)
def test_routing(small_table: MountTable, path: str, prefix: str | None, script_name: str, path_info: str) -> None:
    decision = pipeline(small_table).decide(head(path))
    assert (decision.mount.prefix if decision.mount else None) == prefix
    assert (decision.script_name, decision.path_info) == (script_name, path_info)
    assert decision.reply is None if prefix else decision.reply is not None and decision.reply.status == 404


def test_server_root_path_comes_before_the_mount(small_table: MountTable) -> None:
    decision = pipeline(small_table).decide(head("/a/x", root_path="/srv"))
    assert (decision.root, decision.script_name, decision.path_info) == ("/srv", "/srv/a", "/x")


def test_bare_prefix_redirect_quotes_the_location(small_table: MountTable) -> None:
    decision = pipeline(small_table).decide(head("/a", root_path="/caf\xc3\xa9", query="x=1"))
    assert decision.reply is not None and decision.reply.status == 308
    assert dict(decision.reply.headers)["Location"] == "/caf%C3%A9/a/?x=1"
    assert decision.mount is not None and decision.mount.prefix == "/a"


@pytest.mark.parametrize(
    ("size", "limit", "status"),
    [
        pytest.param(100, 100, None, id="at-the-limit"),
        pytest.param(101, 100, 431, id="one-past"),
    ],
)
def test_header_limit(small_table: MountTable, size: int, limit: int, status: int | None) -> None:
    decision = pipeline(small_table, max_header_size=limit).decide(head("/a/x", header_size=size))
    assert (decision.reply.status if decision.reply else None) == status


def test_health_skips_every_check(small_table: MountTable) -> None:
    p = pipeline(small_table, max_header_size=10)
    live = p.decide(head("/healthz", host=None, header_size=99, method="TRACE"))
    assert live.reply is not None and live.reply.status == 200 and not live.ready
    ready = p.decide(head("/readyz", host="evil.example"))
    assert ready.reply is None and ready.ready and ready.mount is None


def test_refusals_in_order(small_table: MountTable) -> None:
    p = pipeline(small_table, max_header_size=100)
    assert p.decide(head("/a/x", host="evil", header_size=101, method="TRACE")).reply.status == 431  # type: ignore[union-attr]
    assert p.decide(head("/a/x", host="evil", method="TRACE")).reply.status == 400  # type: ignore[union-attr]
    assert p.decide(head("/a/x", host=None)).reply.status == 400  # type: ignore[union-attr]
    for method in ("TRACE", "TRACK", "CONNECT"):
        assert p.decide(head("/a/x", method=method)).reply.status == 405  # type: ignore[union-attr]
    assert p.decide(head("/a/x", method="PATCH")).reply is None


@pytest.mark.parametrize(
    ("length", "status"),
    [
        pytest.param("100", None, id="at-the-limit"),
        pytest.param("101", 413, id="one-past"),
        pytest.param("0", None, id="zero"),
        pytest.param("-1", 400, id="negative"),
        pytest.param("1e3", 400, id="not-digits"),
        pytest.param("\xb2", 400, id="unicode-digit"),
        pytest.param(" 5", 400, id="space"),
    ],
)
def test_content_length(small_table: MountTable, length: str, status: int | None) -> None:
    p = pipeline(small_table, max_body_size=1000, max_body_sizes={"/a": 100})
    decision = p.decide(head("/a/x", length=length))
    assert (decision.reply.status if decision.reply else None) == status
    assert decision.body_limit == 100
    assert p.decide(head("/s/x", length="101")).reply is None  # the default limit, 1000


def test_request_id(small_table: MountTable) -> None:
    p = pipeline(small_table)
    assert p.decide(head("/a/x", request_id="a" * 128)).request_id == "a" * 128
    made = p.decide(head("/a/x", request_id="a" * 129)).request_id
    assert len(made) == 32 and made != p.decide(head("/a/x")).request_id


@pytest.mark.parametrize(
    ("forwarded", "client", "scheme", "host", "server", "root"),
    [
        pytest.param({"for": "203.0.113.1"}, "203.0.113.1", "http", "localhost:8000", ("127.0.0.1", 8000), "",
                     id="for"),
        pytest.param({"for": "[2001:db8::1]"}, "2001:db8::1", "http", "localhost:8000", ("127.0.0.1", 8000), "",
                     id="for-ipv6-brackets"),
        pytest.param({"proto": "HTTPS"}, "10.0.0.1", "https", "localhost:8000", ("localhost", 8000), "",
                     id="proto-any-case"),
        pytest.param({"host": "example.org"}, "10.0.0.1", "http", "example.org", ("example.org", 80), "",
                     id="host"),
        pytest.param({"host": "example.org", "proto": "https"}, "10.0.0.1", "https", "example.org",
                     ("example.org", 443), "", id="host-https"),
        pytest.param({"host": "[::1]:9000"}, "10.0.0.1", "http", "[::1]:9000", ("[::1]", 9000), "", id="host-ipv6"),
        pytest.param({"port": "80"}, "10.0.0.1", "http", "localhost", ("localhost", 80), "", id="port-default"),
        pytest.param({"port": "65535"}, "10.0.0.1", "http", "localhost:65535", ("localhost", 65535), "",
                     id="port-max"),
        pytest.param({"port": "1"}, "10.0.0.1", "http", "localhost:1", ("localhost", 1), "", id="port-min"),
        pytest.param({"prefix": "/"}, "10.0.0.1", "http", "localhost:8000", ("127.0.0.1", 8000), "",
                     id="prefix-root"),
        pytest.param({"prefix": "/x/y/"}, "10.0.0.1", "http", "localhost:8000", ("127.0.0.1", 8000), "/x/y",
                     id="prefix-trailing-slash"),
    ],
)
def test_forwarded(small_table: MountTable, forwarded: dict[str, str], client: str, scheme: str, host: str,
                   server: tuple[str, int], root: str) -> None:
    p = pipeline(small_table, trusted_proxies=TRUSTED, allowed_hosts=("*",))
    d = p.decide(head("/a/x", host="localhost:8000", server=("127.0.0.1", 8000), client="10.0.0.1",
                      forwarded=forwarded))
    assert (d.client, d.scheme, d.host, d.server, d.root, d.script_name) == (
        client, scheme, host, server, root, root + "/a")
    assert d.proxied is (set(forwarded) != {"prefix"})
    assert not p.ignored


def test_forwarded_needs_a_trusted_peer(small_table: MountTable) -> None:
    p = pipeline(small_table, trusted_proxies=TRUSTED)
    for client in ("192.168.0.1", None, "not-an-address"):
        d = p.decide(head("/a/x", client=client, forwarded={"for": "203.0.113.1", "prefix": "/x"}))
        assert (d.client, d.script_name, d.proxied) == (client, "/a", False)


def test_forwarded_is_off_without_proxies(small_table: MountTable) -> None:
    d = pipeline(small_table).decide(head("/a/x", client="10.0.0.1", forwarded={"for": "203.0.113.1"}))
    assert d.client == "10.0.0.1"


@pytest.mark.parametrize(
    ("value", "valid"),
    [("203.0.113.1", "203.0.113.1"), ("::1", "::1"), ("[::1]", "::1"), ("1.2.3", None), ("", None),
     ("[::1", None), ("a<b>", None)],
)
def test_valid_client(value: str, valid: str | None) -> None:
    assert valid_client(value) == valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [("/apps", "/apps"), ("/apps/", "/apps"), ("/", ""), ("/a/b", "/a/b"), ("//evil", None), ("", None),
     ("apps", None), ("/a//b", None), ("/./a", None), ("/a/..", None), ("/a b", None), ("/a%2F", None),
     ("/a?b", None), ("/a#b", None), ("javascript:x//", None)],
)
def test_valid_prefix(value: str, valid: str | None) -> None:
    assert valid_prefix(value) == valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [("1", 1), ("443", 443), ("65535", 65535), ("0", None), ("65536", None), ("008080", None), ("", None),
     ("-1", None), ("\xb2", None), ("80 ", None)],
)
def test_valid_port(value: str, valid: int | None) -> None:
    assert valid_port(value) == valid


@pytest.mark.parametrize(
    ("allowed", "host", "ok"),
    [
        pytest.param(("localhost",), "localhost:8000", True, id="port"),
        pytest.param(("localhost",), "LOCALHOST", True, id="case"),
        pytest.param(("localhost",), "localhost.", True, id="trailing-dot"),
        pytest.param(("[::1]",), "[::1]:8000", True, id="ipv6"),
        pytest.param(("[::1]",), "[::1]", True, id="ipv6-no-port"),
        pytest.param((".example.org",), "a.b.example.org", True, id="subdomain"),
        pytest.param((".example.org",), "example.org", True, id="suffix-itself"),
        pytest.param((".example.org",), "badexample.org", False, id="not-a-subdomain"),
        pytest.param(("*",), "anything.test", True, id="any"),
        pytest.param(("*",), "a_b@c", False, id="any-but-malformed"),
        pytest.param(("localhost",), "localhost:99999", False, id="bad-port"),
        pytest.param(("localhost",), "localhost:0", False, id="port-zero"),
        pytest.param(("localhost",), "localhost:65535", True, id="port-max"),
        pytest.param(("localhost",), "", False, id="empty"),
        pytest.param(("localhost",), "other", False, id="other"),
    ],
)
def test_host_policy(allowed: tuple[str, ...], host: str, ok: bool) -> None:
    policy = HostPolicy(allowed)
    assert policy.allows(host) is ok
    assert policy.allows(host) is ok  # the cached answer


def decision(mount: bool = True, scheme: str = "http") -> Decision:
    table = MountTable.from_specs(["/m=tests.thirdapp:wsgi_app"], defaults=False)
    return Decision(request_id="rid-1", mount=next(iter(table)) if mount else None, root="", script_name="/m",
                    path_info="/", host="localhost", server=("localhost", 80), scheme=scheme, client=None)


@pytest.mark.parametrize(
    ("given", "added"),
    [
        pytest.param([], ["X-Content-Type-Options", "Referrer-Policy", "X-Frame-Options",
                          "Cross-Origin-Opener-Policy"], id="none-set"),
        pytest.param([("x-frame-options", "SAMEORIGIN")], ["X-Content-Type-Options", "Referrer-Policy",
                                                            "Cross-Origin-Opener-Policy"], id="app-frame-options"),
        pytest.param([("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")],
                     ["X-Content-Type-Options", "Referrer-Policy", "Cross-Origin-Opener-Policy"],
                     id="csp-frame-ancestors"),
        pytest.param([("Content-Security-Policy", "FRAME-ANCESTORS 'self'")],
                     ["X-Content-Type-Options", "Referrer-Policy", "Cross-Origin-Opener-Policy"],
                     id="csp-frame-ancestors-upper-case"),
        pytest.param([("Content-Security-Policy", "default-src 'self'")],
                     ["X-Content-Type-Options", "Referrer-Policy", "X-Frame-Options", "Cross-Origin-Opener-Policy"],
                     id="csp-without-frame-ancestors"),
        pytest.param([("Referrer-Policy", "no-referrer"), ("X-Content-Type-Options", "nosniff")],
                     ["X-Frame-Options", "Cross-Origin-Opener-Policy"], id="app-set-some"),
    ],
)
def test_security_headers_the_app_did_not_set(small_table: MountTable, given: list[tuple[str, str]],
                                              added: list[str]) -> None:
    headers = list(given)
    pipeline(small_table).complete(headers, decision())
    assert headers[: len(given)] == given
    assert [n for n, _ in headers[len(given):]] == [*added, "X-Request-ID"]
    assert headers[-1] == ("X-Request-ID", "rid-1")


@pytest.mark.parametrize(
    ("https", "scheme", "present", "hsts"),
    [
        pytest.param(True, "https", False, True, id="on"),
        pytest.param(True, "wss", False, True, id="on-wss"),
        pytest.param(True, "http", False, False, id="plain-http"),
        pytest.param(False, "https", False, False, id="off"),
        pytest.param(True, "https", True, False, id="app-set-it"),
    ],
)
def test_hsts(small_table: MountTable, https: bool, scheme: str, present: bool, hsts: bool) -> None:
    headers = [("Strict-Transport-Security", "max-age=1")] if present else []
    pipeline(small_table, https=https).complete(headers, decision(scheme=scheme))
    values = [v for n, v in headers if n == "Strict-Transport-Security"]
    assert values == (["max-age=31536000; includeSubDomains"] if hsts else ["max-age=1"] if present else [])


def test_draining_adds_connection_close(small_table: MountTable) -> None:
    p = pipeline(small_table)
    headers: list[tuple[str, str]] = []
    p.complete(headers, decision())
    assert ("Connection", "close") not in headers
    p.draining = True
    p.complete(headers, decision())
    assert headers[-1] == ("Connection", "close")


def test_cookies_scoped_only_for_mounts(small_table: MountTable) -> None:
    p = pipeline(small_table)
    own = [("Set-Cookie", "a=1; Path=/")]
    p.complete(own, decision(mount=False))
    assert own[0] == ("Set-Cookie", "a=1; Path=/")
    mounted = [("set-cookie", "a=1; Path=/"), ("Set-Cookie", "b=2")]
    p.complete(mounted, decision())
    assert mounted[:2] == [("set-cookie", "a=1; Path=/m"), ("Set-Cookie", "b=2; Path=/m")]


@pytest.mark.parametrize(
    ("cookie", "scoped"),
    [
        ("a=1", "a=1; Path=/m"),
        ("a=1; Path=/", "a=1; Path=/m"),
        ("a=1; Path=/; Path=/", "a=1; Path=/m"),
        ("a=1; Path=/m; Path=/", "a=1; Path=/m"),
        ("a=1; Path=/; Path=/m/x", "a=1; Path=/m/x"),
        ("a=1; Path=/mx", "a=1; Path=/m/mx"),
        ("a=1; Path=/m", "a=1; Path=/m"),
        ("a=1; Path=x", "a=1; Path=/m"),
        ("a=1; Max-Age=5; path=/", "a=1; Max-Age=5; Path=/m"),
        ("a=1; Pathology=1", "a=1; Pathology=1; Path=/m"),
    ],
)
def test_scope_cookie(cookie: str, scoped: str) -> None:
    assert scope_cookie(cookie, "/m") == scoped


def answered(request: Request, status: int, size: int) -> Request:
    """``request`` as the adapter leaves it once the response is out."""
    request.status, request.size = status, size
    return request


def test_access_log_line(small_table: MountTable, caplog: pytest.LogCaptureFixture) -> None:
    from gateway.observe.logs import access

    p = pipeline(small_table)
    served, refused = head("/a/x", client="127.0.0.1", request_id="rid-9", query="q=1"), head("/a/x", host="evil")
    d = p.decide(served)
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        p.log(answered(Request(served, d, 0.0, "HTTP/1.1"), 200, 12))
        p.log(answered(Request(refused, p.decide(refused), 0.0, "HTTP/1.1"), 400, 3))
        access.flush()  # written by the access log's own thread
    first, second = caplog.records
    assert (first.request_id, first.name, first.threadName) == ("rid-9", "gateway.access", "gateway-access-log")  # type: ignore[attr-defined]
    assert first.getMessage().startswith('127.0.0.1 "GET /a/x?q=1 HTTP/1.1" 200 12 ')
    assert first.getMessage().endswith("ms /a")
    assert (first.status, first.bytes, first.mount, first.client) == (200, 12, "/a", "127.0.0.1")  # type: ignore[attr-defined]
    assert (second.mount, second.client) == ("-", "-")  # type: ignore[attr-defined]


# -- Pinned by mutation testing (mutmut over gateway/core/pipeline.py) ---------------------------

def test_answered_decisions_carry_the_head_as_given(small_table: MountTable) -> None:
    p = pipeline(small_table, max_header_size=100)
    given = {"root_path": "/srv", "host": "localhost:8000", "server": ("127.0.0.1", 8000), "scheme": "https",
             "client": "192.0.2.1"}
    for path, fields, status in [("/healthz", {}, 200), ("/a/x", {"header_size": 101}, 431),
                                 ("/a/x", {"method": "TRACE"}, 405), ("/nowhere", {}, 404)]:
        d = p.decide(head(path, **given, **fields))  # type: ignore[arg-type]
        assert d.reply is not None and d.reply.status == status
        assert (d.ready, d.mount, d.root, d.script_name, d.path_info, d.host, d.server, d.scheme, d.client,
                d.proxied) == (False, None, "/srv", "/srv", path, "localhost:8000", ("127.0.0.1", 8000), "https",
                               "192.0.2.1", False)
    ready = p.decide(head("/readyz", **given))  # type: ignore[arg-type]
    assert (ready.ready, ready.reply, ready.root, ready.script_name, ready.path_info, ready.client) == (
        True, None, "/srv", "/srv", "/readyz", "192.0.2.1")
    served = p.decide(head("/a/x", **given))  # type: ignore[arg-type]
    assert (served.ready, served.reply, served.host, served.server, served.scheme, served.client) == (
        False, None, "localhost:8000", ("127.0.0.1", 8000), "https", "192.0.2.1")


def test_a_refused_request_keeps_what_a_trusted_proxy_said(small_table: MountTable) -> None:
    p = pipeline(small_table, trusted_proxies=TRUSTED)
    d = p.decide(head("/a/x", method="TRACE", client="10.0.0.1", forwarded={"for": "203.0.113.1", "proto": "https"}))
    assert d.reply is not None and d.reply.status == 405
    assert (d.client, d.scheme, d.proxied) == ("203.0.113.1", "https", True)


def test_the_redirect_reply_whole(small_table: MountTable) -> None:
    d = pipeline(small_table).decide(head("/a"))
    assert d.reply == (308, (("Location", "/a/"), ("Content-Length", "0")), b"", "")


@pytest.mark.parametrize(
    ("scheme", "proto", "expected"),
    [("https", "http", "http"), ("ws", "https", "wss"), ("wss", "http", "ws"), ("ws", "http", "ws"),
     ("http", "https", "https")],
)
def test_forwarded_proto_in_both_directions(small_table: MountTable, scheme: str, proto: str, expected: str) -> None:
    p = pipeline(small_table, trusted_proxies=TRUSTED)
    d = p.decide(head("/a/x", scheme=scheme, client="10.0.0.1", forwarded={"proto": proto}))
    assert d.scheme == expected and d.proxied


def test_forwarded_port_without_a_host_header(small_table: MountTable) -> None:
    p = pipeline(small_table, trusted_proxies=TRUSTED)
    d = p.decide(head("/healthz", host=None, server=("10.0.0.5", 8000), client="10.0.0.1",
                      forwarded={"port": "8443"}))
    assert (d.server, d.host) == (("10.0.0.5", 8443), "10.0.0.5:8443")


def test_last_hop_of_three(small_table: MountTable) -> None:
    p = pipeline(small_table, trusted_proxies=TRUSTED)
    d = p.decide(head("/a/x", client="10.0.0.1", forwarded={"for": "198.51.100.1, 198.51.100.2, 203.0.113.3"}))
    assert d.client == "203.0.113.3"


def test_ignored_values_are_logged_at_debug(small_table: MountTable, caplog: pytest.LogCaptureFixture) -> None:
    p = pipeline(small_table, trusted_proxies=TRUSTED)
    with caplog.at_level(logging.DEBUG, logger="gateway"):
        p.decide(head("/a/x", client="10.0.0.1", forwarded={"prefix": "//evil.example" + "x" * 200}))
    (record,) = [r for r in caplog.records if r.name == "gateway"]
    assert record.levelno == logging.DEBUG
    assert record.getMessage() == (
        f"Ignored X-Forwarded-Prefix from a trusted proxy: {('//evil.example' + 'x' * 200)[:100]!r} is not valid.")


def test_host_policy_edges() -> None:
    assert HostPolicy(("example.org.",)).allows("example.org")
    assert not HostPolicy(("localhost",)).allows("localhost:65536")
    policy = HostPolicy(("*",))
    for n in range(1100):
        assert policy.allows(f"h{n}.example")
    assert len(policy.seen) == 1024 and policy.seen["h0.example"] is True
    # Even "*" takes host names only: labels, none empty, and at most the root's one dot.
    anything, subdomains = HostPolicy(("*",)), HostPolicy((".example.org",))
    for host in ("a..b", ".a", "a..", "a.b..", "..", ".", "a_b", "a..b:80", "[::1"):
        assert not anything.allows(host) and not subdomains.allows(host + ".example.org"), host
    for host in ("a", "a.", "a.b.", "a-b.c", "a:80", "a.:80", "[::1]", "[::1]:8000"):
        assert anything.allows(host), host
    assert subdomains.allows("www.example.org.") and subdomains.allows("example.org.")
    assert not subdomains.allows("example.org..") and not subdomains.allows("www..example.org")


def test_cookie_paths_keep_path_characters_and_the_cache_is_bounded() -> None:
    table = MountTable.from_specs(["/a:b@c=tests.thirdapp:wsgi_app"], defaults=False)
    p = Pipeline(table, replace(Config.from_env({}), trusted_proxies=TRUSTED))
    d = p.decide(head("/a:b@c/x", root_path="/caf\xc3\xa9"))
    headers = [("Set-Cookie", "s=1; Path=/")]
    p.complete(headers, d)
    assert headers[0] == ("Set-Cookie", "s=1; Path=/caf%C3%A9/a:b@c")
    for n in range(300):
        p.cookie_path(f"/p{n}")
    assert len(p.cookie_paths) == 256 and p.cookie_paths["/caf\xc3\xa9/a:b@c"] == "/caf%C3%A9/a:b@c"


def test_scope_cookie_path_with_an_equals_sign() -> None:
    assert scope_cookie("a=1; Path=/m/a=b", "/m") == "a=1; Path=/m/a=b"


def test_access_log_duration(small_table: MountTable) -> None:
    import time

    from gateway.observe.logs import access

    p = pipeline(small_table)
    h = head("/a/x")
    d = p.decide(h)
    queued: list[tuple[object, ...]] = []
    real_put, access.put = access.put, queued.append  # type: ignore[method-assign]
    try:
        p.log(answered(Request(h, d, time.perf_counter() - 1.0, "HTTP/1.1"), 200, 5))
    finally:
        access.put = real_put  # type: ignore[method-assign]
    (entry,) = queued
    assert 1000 <= entry[8] < 1000.9  # type: ignore[operator]
    assert entry[1:8] == (d.request_id, "-", "GET", "/a/x", "HTTP/1.1", 200, 5) and entry[9] == "/a"


def test_request_ids_count_from_one_after_a_reseed() -> None:
    from gateway.core.pipeline import _IdSource

    source = _IdSource()
    assert source().endswith("0000000000000001") and source().endswith("0000000000000002")


def test_a_content_length_of_thousands_of_digits_is_a_413(small_table: MountTable) -> None:
    d = pipeline(small_table).decide(head("/a/x", length="9" * 5000))
    assert d.reply is not None and d.reply.status == 413


def test_control_characters_in_the_logged_target_are_escaped(small_table: MountTable) -> None:
    from gateway.observe.logs import access

    p = pipeline(small_table)
    queued: list[tuple[object, ...]] = []
    real_put, access.put = access.put, queued.append  # type: ignore[method-assign]
    try:
        for h in (head('/a/x\r\n2026-01-01 INFO gateway.access [forged] 6.6.6.6 "GET /admin'),
                  head("/caf\xc3\xa9", query="q=\x85")):
            p.log(answered(Request(h, p.decide(h), 0.0, "HTTP/1.1"), 200, 0))
    finally:
        access.put = real_put  # type: ignore[method-assign]
    assert queued[0][4] == '/a/x\\r\\n2026-01-01 INFO gateway.access [forged] 6.6.6.6 "GET /admin'
    assert queued[1][4] == "/caf\\xc3\\xa9?q=\\x85"  # escaped: every non-ASCII byte as \\xNN


def rules_table(text: str) -> MountTable:
    from gateway.migration.rules import parse_gateway_file

    parsed = parse_gateway_file(text)
    return MountTable.from_specs(parsed.mounts, defaults=False, routes=parsed.routes, apps=parsed.apps)


CAFE = '''
[apps]
shop = "tests.thirdapp:echo_app"

[mounts]
"/a" = "tests.thirdapp:wsgi_app"

[[route]]
rule = "/caf\u00e9/<int:n>"
app = "shop"
'''


def test_rules_match_the_decoded_path_and_undecodable_bytes_match_none() -> None:
    p = pipeline(rules_table(CAFE))
    # The native WSGI string of /caf%C3%A9/7: the UTF-8 bytes, each as one latin-1 character.
    native = "/caf\u00e9/7".encode().decode("latin-1")
    d = p.decide(head(native))
    assert d.mount is not None and d.mount.prefix.startswith("~/caf")
    assert (d.script_name, d.path_info) == ("", native)  # nothing stripped, still native
    assert p.decide(head("/caf\xe9/7")).mount is None  # the byte 0xE9 alone is not UTF-8: no rule
    assert p.wants_headers is False  # no canary, no tracing: no header lookups


def test_a_fallback_chain_with_django_in_it_is_djangos() -> None:
    from gateway.core.pipeline import is_django
    from gateway.migration.rules import RouteSpec
    from tests.entries import config_with, rule_table

    apps = {m.prefix: m.app for m in MountTable.from_specs([])}
    django, flask = apps["/django"], apps["/flask"]
    assert is_django(django) and not is_django(flask)
    specs = [RouteSpec("/x", ("f", "d")), RouteSpec("/y", ("f",)), RouteSpec("/z", ("f",), shadow="d")]
    p = Pipeline(rule_table(specs, {"f": flask, "d": django}), config_with())
    assert {spec.key for spec in specs} & p.django == {specs[0].key, specs[2].key}


def test_the_migration_page_decision_keeps_the_head(small_table: MountTable) -> None:
    p = pipeline(small_table)
    d = p.decide(head("/_gateway/", request_id="ops-1", client="127.0.0.1", root_path="/r", scheme="https",
                      server=("example.org", 443), host="localhost"))
    assert d.reply is None and d.render is not None  # rendered by the adapter, off the event loop
    page = d.render()
    assert page.status == 200 and b"<html" in page.body.lower()
    assert (d.request_id, d.mount, d.ready, d.root, d.script_name, d.path_info, d.host, d.server, d.scheme,
            d.client, d.proxied) == ("ops-1", None, False, "/r", "/r", "/_gateway/", "localhost",
                                     ("example.org", 443), "https", "127.0.0.1", False)
    assert p.shared_cookie is None and p.draining is False


def test_done_queues_the_access_line_with_what_the_entry_point_saw(small_table: MountTable,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.core import pipeline as module

    queued: list[tuple[object, ...]] = []
    monkeypatch.setattr(module.access, "enabled", lambda: True)
    monkeypatch.setattr(module.access, "put", queued.append)
    p = pipeline(small_table)
    h = head("/a/x\r\nforged", query="q=1", client="192.0.2.7", request_id="req-1")
    request = answered(p.begin(h, 0.0, "HTTP/2"), 201, 1234)
    assert request.decision.request_id == "req-1" and request.head is h
    p.done(request)
    (entry,) = queued
    assert entry[1:8] == ("req-1", "192.0.2.7", "GET", "/a/x\\r\\nforged?q=1", "HTTP/2", 201, 1234)
    assert entry[9] == "/a"
    monkeypatch.setattr(module.access, "enabled", lambda: False)
    p.done(request)
    assert len(queued) == 1  # the log off: nothing queued


def test_the_metrics_decision_keeps_the_head(small_table: MountTable) -> None:
    p = pipeline(small_table, metrics=True)
    d = p.decide(head("/metrics", request_id="ops-2", client="127.0.0.1", root_path="/r", scheme="https",
                      server=("example.org", 443)))
    assert d.reply is None and d.render is not None  # rendered by the adapter, off the event loop
    metrics = d.render()
    assert metrics.status == 200 and b"gateway_requests_in_flight" in metrics.body
    assert (d.request_id, d.mount, d.ready, d.root, d.script_name, d.path_info, d.host, d.server, d.scheme,
            d.client, d.proxied) == ("ops-2", None, False, "/r", "/r", "/metrics", "localhost",
                                     ("example.org", 443), "https", "127.0.0.1", False)


def test_a_path_rules_take_for_other_methods_is_a_whole_405(small_table: MountTable) -> None:
    text = '''
[apps]
shop = "tests.thirdapp:echo_app"

[[route]]
rule = "/cart"
app = "shop"
methods = ["POST", "PUT"]
'''
    p = pipeline(rules_table(text))
    d = p.decide(head("/cart", request_id="r-3", client="127.0.0.1", root_path="/r", scheme="https",
                      server=("example.org", 443)))
    assert d.reply is not None
    assert (d.reply.status, d.reply.body, d.reply.reason) == (405, b"Method Not Allowed.\n", "method_not_allowed")
    assert dict(d.reply.headers)["Allow"] == "POST, PUT"
    assert (d.request_id, d.mount, d.ready, d.root, d.script_name, d.path_info, d.host, d.server, d.scheme,
            d.client, d.proxied) == ("r-3", None, False, "/r", "/r", "/cart", "localhost",
                                     ("example.org", 443), "https", "127.0.0.1", False)


def test_a_content_length_of_leading_zeros_is_read_up_to_18_digits(small_table: MountTable) -> None:
    p = pipeline(small_table)
    assert p.decide(head("/a/x", method="POST", length="0" * 17 + "5")).reply is None
    refused = p.decide(head("/a/x", method="POST", length="0" * 18 + "5")).reply
    assert refused is not None and refused.status == 413


def test_head_and_decision_are_frozen_and_keyword_only(small_table: MountTable) -> None:
    import inspect

    h = head("/a/x")
    d = pipeline(small_table).decide(h)
    for record, field in ((h, "path"), (d, "mount")):
        with pytest.raises(AttributeError):
            setattr(record, field, None)
    with pytest.raises(TypeError):
        Head("GET", "", "/a/x")  # type: ignore[misc]
    with pytest.raises(TypeError):
        Decision("rid", None)  # type: ignore[misc]
    for record in (Head, Decision):  # the constructor names every field, in order, and only by keyword
        parameters = list(inspect.signature(record.__new__).parameters.values())[1:]
        assert [p.name for p in parameters] == list(record._fields)
        assert {p.kind for p in parameters} == {inspect.Parameter.KEYWORD_ONLY}
        # ...and so does the hot path's copy of it, with the same defaults
        assert list(inspect.signature(record.of).parameters.values()) == parameters
    values = {name: object() for name in Head._fields}
    assert Head.of(**values) == Head(**values) == tuple(values.values()) and type(Head.of(**values)) is Head
    values = {name: object() for name in Decision._fields}
    assert Decision.of(**values) == Decision(**values) == tuple(values.values())
    assert type(Decision.of(**values)) is Decision
    assert Head(method="GET", path="/p", query="q=1")._asdict() == {
        **dict.fromkeys(Head._fields), "method": "GET", "root_path": "", "path": "/p", "query": "q=1",
        "scheme": "http", "server": ("localhost", 80), "forwarded": {}, "header_size": 0, "header_nul": False,
        "http_version": "1.1"}


@pytest.mark.parametrize(
    ("fields", "unframed", "bodiless"),
    [
        pytest.param({}, False, True, id="http1-nothing"),
        pytest.param({"length": "0"}, False, True, id="length-zero"),
        pytest.param({"length": "5"}, False, False, id="length"),
        pytest.param({"coding": "chunked"}, True, False, id="chunked"),
        pytest.param({"coding": "chunked", "length": "5"}, False, False, id="chunked-with-length"),
        pytest.param({"http_version": "2"}, True, False, id="http2-no-length"),
        pytest.param({"http_version": "2", "length": "0"}, False, True, id="http2-length-zero"),
    ],
)
def test_how_a_body_ends_is_decided_once(fields: dict[str, object], unframed: bool, bodiless: bool) -> None:
    h = head("/a/x", **fields)
    assert (h.body_unframed, h.bodiless) == (unframed, bodiless)


@pytest.mark.parametrize(
    ("fields", "status", "says"),
    [
        pytest.param({"coding": "chunked"}, None, "", id="chunked"),
        pytest.param({"coding": " CHUNKED "}, None, "", id="chunked-in-capitals-with-spaces"),
        pytest.param({"coding": "gzip , chunked"}, 501, "Not Implemented: Transfer-Encoding gzip is not supported; "
                     "send the body without it (chunked alone, or with Content-Length).\n", id="gzip-chunked"),
        pytest.param({"coding": ", gzip,, chunked"}, 501, "Transfer-Encoding gzip is not", id="empty-elements"),
        pytest.param({"coding": "chunked,chunked"}, 400,
                     "Bad Request: Transfer-Encoding must end with chunked, once.\n", id="chunked-twice"),
        pytest.param({"coding": "chunked, gzip"}, 400, "must end with chunked", id="chunked-not-last"),
        pytest.param({"coding": ""}, 400, "must end with chunked", id="empty"),
        pytest.param({"coding": "chunked", "length": "3"}, 400,
                     "Bad Request: both Content-Length and Transfer-Encoding: the body's length is ambiguous.\n",
                     id="with-content-length"),
        pytest.param({"coding": "gzip", "length": "3"}, 400, "both Content-Length", id="gzip-with-content-length"),
        pytest.param({"coding": "chunked", "http_version": "1.0"}, 400,
                     "Bad Request: Transfer-Encoding in HTTP/1.0: the body's length is ambiguous.\n", id="http-1.0"),
        pytest.param({"length": "3", "http_version": "1.0"}, None, "", id="http-1.0-with-a-length"),
    ],
)
def test_a_framing_the_gateway_cannot_pass_on_whole_is_refused(small_table: MountTable, fields: dict[str, object],
                                                              status: int | None, says: str) -> None:
    decision = pipeline(small_table).decide(head("/a/x", method="POST", **fields))
    reply = decision.reply
    assert (reply.status if reply else None) == status
    if reply is not None:
        assert says in reply.body.decode()
        assert ("Connection", "close") in reply.headers
        assert reply.reason == ("transfer_coding" if status == 501 else "bad_framing")


def test_a_long_list_of_codings_is_named_in_at_most_100_characters(small_table: MountTable) -> None:
    reply = pipeline(small_table).decide(head("/a/x", method="POST", coding="x," * 1000 + "chunked")).reply
    assert reply is not None and reply.status == 501
    assert reply.body.decode() == ("Not Implemented: Transfer-Encoding " + ("x, " * 34)[:100] + " is not supported; "
                                   "send the body without it (chunked alone, or with Content-Length).\n")


def test_strip_root_only_on_a_segment_boundary() -> None:
    from gateway.core.pipeline import strip_root

    assert strip_root("/foo", "/foo/bar") == "/bar"
    assert strip_root("/foo", "/foo") == ""
    assert strip_root("/foo", "/foo-1/bar") == "/foo-1/bar"  # not under /foo
    assert strip_root("", "/foo") == "/foo"
    assert strip_root("/foo", "/other") == "/other"  # taken as already relative


def test_repeated_values_are_joined_in_linear_time() -> None:
    from gateway.core.pipeline import join_values

    assert join_values(["a", "b"]) == "a,b"
    assert join_values(["a=1", "b=2"], cookie=True) == "a=1; b=2"
    assert join_values(["x"] * 400_000).count(",") == 399_999


@pytest.mark.parametrize(
    ("cookie", "scoped"),
    [
        pytest.param("session=1; Path=/flask", "session=1; Path=/apps/flask", id="application-root"),
        pytest.param("session=1; Path=/flask/admin", "session=1; Path=/apps/flask/admin", id="below-it"),
        pytest.param("session=1; Path=/apps/flask", "session=1; Path=/apps/flask", id="already-whole"),
        pytest.param("session=1; Path=/other", "session=1; Path=/apps/flask/other", id="outside"),
        pytest.param("session=1; Path=/", "session=1; Path=/apps/flask", id="site-root"),
    ],
)
def test_an_app_root_behind_a_proxy_prefix_keeps_its_cookie(cookie: str, scoped: str) -> None:
    # Flask's APPLICATION_ROOT="/flask" behind X-Forwarded-Prefix: /apps: the session
    # cookie's Path=/flask is the mount without the proxy's prefix, not a path under it.
    assert scope_cookie(cookie, "/apps/flask", "/apps") == scoped


def test_the_request_state_is_the_adapters_not_a_context_variable(small_table: MountTable) -> None:
    import gateway.core.pipeline as module

    assert not any(type(value).__name__ == "ContextVar" and name != "REQUEST_ID"
                   for name, value in vars(module).items())
    request = pipeline(small_table).begin(head("/a/x"), 1.5, "HTTP/1.1")
    assert (request.started, request.protocol, request.body_read, request.status, request.size) == (
        1.5, "HTTP/1.1", False, 0, 0)
