"""The replies the gateway makes itself (gateway/replies.py): status, headers, body and the
refusal's name in the metrics, exactly as both entry points send them."""

from __future__ import annotations

import json

import pytest

from gateway import replies
from gateway.replies import Reply


def test_plain_is_utf8_text_with_its_length_and_the_extra_headers() -> None:
    reply = replies.plain(418, "caf\u00e9\n", ("X-One", "1"), ("X-Two", "2"))
    assert reply == Reply(418, (("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "6"),
                                ("X-One", "1"), ("X-Two", "2")), b"caf\xc3\xa9\n", "")
    assert replies.plain(400, "x", reason="bad_host").reason == "bad_host"


def test_json_reply_is_not_cached() -> None:
    assert replies.json_reply(503, b'{"a": 1}') == Reply(
        503, (("Content-Type", "application/json"), ("Content-Length", "8"), ("Cache-Control", "no-store")),
        b'{"a": 1}', "")


def test_too_large_names_the_limit_and_closes() -> None:
    body = b"Request body too large: the limit here is 1024 bytes.\n"
    assert replies.too_large(1024) == Reply(413, (("Content-Type", "text/plain; charset=utf-8"),
                                                  ("Content-Length", str(len(body))), ("Connection", "close")),
                                            body, "body_too_large")


@pytest.mark.parametrize(("charset", "shown"), [
    pytest.param("utf-16", "'utf-16'", id="readable"),
    pytest.param("x" * 40, repr("x" * 40), id="40-characters"),
    pytest.param("x" * 41, "'(unreadable)'", id="41-characters"),
    pytest.param("\u00e9t\u00e9", "'(unreadable)'", id="not-ascii"),
    pytest.param("utf\n8", "'(unreadable)'", id="not-printable"),
])
def test_bad_charset_quotes_a_short_printable_charset_only(charset: str, shown: str) -> None:
    body = (f"Unsupported Media Type: form data in charset {shown} cannot be read here; "
            "send it as UTF-8.\n").encode()
    assert replies.bad_charset(charset) == Reply(415, (("Content-Type", "text/plain; charset=utf-8"),
                                                       ("Content-Length", str(len(body))), ("Connection", "close")),
                                                 body, "unreadable_charset")


def test_verdicts_only_keeps_ok_and_hides_each_failure_text() -> None:
    checks = {"django": "ok", "database": "OperationalError: connection to db.internal:5432 refused"}
    reply = replies.json_reply(503, json.dumps({"status": "fail", "checks": checks}).encode())
    hidden = replies.verdicts_only(reply)
    assert hidden.status == 503
    assert json.loads(hidden.body) == {"status": "fail", "checks": {"django": "ok", "database": "fail"}}
    assert dict(hidden.headers) == {"Content-Type": "application/json", "Content-Length": str(len(hidden.body)),
                                    "Cache-Control": "no-store"}


@pytest.mark.parametrize("body", [
    pytest.param(b"not json", id="not-json"),
    pytest.param(b'{"status": "ok"}', id="no-checks"),
    pytest.param(b'["checks"]', id="not-an-object"),
    pytest.param(b'{"checks": ["db"]}', id="checks-not-an-object"),
])
def test_verdicts_only_passes_on_a_reply_it_cannot_read(body: bytes) -> None:
    reply = replies.json_reply(200, body)
    assert replies.verdicts_only(reply) is reply
