"""The gateway's own pages (gateway/core/pages.py): the index at ``/``, the 404 for paths no
mount claims, and the methods they answer, exactly as a browser gets them."""

from __future__ import annotations

import pytest

from gateway import __version__
from gateway.core.mounts import MountTable
from gateway.core.pages import Pages
from gateway.migration.rules import parse_gateway_file
from gateway.replies import Reply

ONE_RULE = '''
[apps]
legacy = "tests.apps.shop:legacy"

[mounts]
"/echo" = "tests.thirdapp:echo_app"

[[route]]
rule = "/shop/<path:rest>"
app = "legacy"
'''


@pytest.fixture(scope="module")
def with_rule() -> MountTable:
    parsed = parse_gateway_file(ONE_RULE)
    return MountTable.from_specs(parsed.mounts, defaults=False, routes=parsed.routes, apps=parsed.apps)


def body(page: str) -> str:
    """The page between ``<body>`` and its footer, which must name this version."""
    assert page.startswith("<!doctype html>\n") and page.endswith(
        f"\n<footer>flask-django-gateway {__version__}</footer>\n</body>\n</html>\n")
    return page.split("<body>\n", 1)[1].split("\n<footer>", 1)[0]


def test_the_index_lists_mounts_rules_and_own_pages(with_rule: MountTable) -> None:
    page = Pages(with_rule, metrics=True).index("/r")
    assert "<title>Gateway</title>" in page
    assert body(page) == (
        '<h1>Flask and Django, one process</h1>\n'
        '<p class="lead">This gateway serves each app below under its own path prefix.</p>\n'
        '<ul class="mounts">\n<li><a href="/r/echo/">/echo/</a><span>WSGI app &middot; WSGI</span></li>\n</ul>\n'
        "<h2>Route rules</h2>\n"
        "<p>These paths of the root URL space go to the apps named, before the prefix mounts.</p>\n"
        '<ul class="links">\n<li><code>/shop/&lt;path:rest&gt;</code><span>tests.apps.shop:legacy</span></li>\n'
        "</ul>\n<h2>The gateway's own pages</h2>\n"
        '<ul class="links">\n'
        '<li><a href="/r/healthz">/healthz</a><span>liveness</span></li>\n'
        '<li><a href="/r/readyz">/readyz</a><span>readiness</span></li>\n'
        '<li><a href="/r/_gateway/">/_gateway/</a><span>the migration page (loopback and trusted proxies)</span></li>\n'
        '<li><a href="/r/metrics">/metrics</a><span>Prometheus metrics (loopback and trusted proxies)</span></li>\n'
        "</ul>")


def test_the_index_of_nothing_says_so() -> None:
    assert body(Pages(MountTable([])).index("")) == (
        '<h1>Flask and Django, one process</h1>\n'
        '<p class="lead">This gateway serves each app below under its own path prefix.</p>\n'
        '<ul class="mounts">\n<li>No prefix mounts.</li>\n</ul>\n'
        "<h2>The gateway's own pages</h2>\n"
        '<ul class="links">\n'
        '<li><a href="/healthz">/healthz</a><span>liveness</span></li>\n'
        '<li><a href="/readyz">/readyz</a><span>readiness</span></li>\n'
        "</ul>")


def test_the_404_page_links_the_index(with_rule: MountTable) -> None:
    page = Pages(with_rule).not_found("/r")
    assert "<title>Not Found</title>" in page
    assert body(page) == ('<h1>Not Found</h1>\n<p class="lead">No app is mounted at this path. See the '
                          '<a href="/r/">index</a> for what this server serves.</p>')


@pytest.mark.parametrize(("method", "path", "status", "reason"), [
    pytest.param("GET", "/", 200, "", id="index"),
    pytest.param("GET", "", 200, "", id="index-of-an-empty-path"),
    pytest.param("GET", "/nowhere", 404, "no_mount", id="not-found"),
    pytest.param("HEAD", "/", 200, "", id="head-index"),
    pytest.param("HEAD", "/nowhere", 404, "no_mount", id="head-not-found"),
])
def test_get_and_head(with_rule: MountTable, method: str, path: str, status: int, reason: str) -> None:
    pages = Pages(with_rule)
    page = (pages.index("/r") if status == 200 else pages.not_found("/r")).encode()
    reply = pages.reply(method, path, "/r")
    assert reply == Reply(status, (("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(page)))),
                          b"" if method == "HEAD" else page, reason)


def test_other_methods_are_refused_and_options_answered(with_rule: MountTable) -> None:
    pages = Pages(with_rule)
    assert pages.reply("OPTIONS", "/", "") == Reply(204, (("Allow", "GET, HEAD, OPTIONS"),), b"", "")
    text = b"Method Not Allowed: the gateway's own pages answer GET and HEAD.\n"
    for method in ("POST", "get", "head", "options"):
        assert pages.reply(method, "/", "") == Reply(405, (
            ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(text))),
            ("Allow", "GET, HEAD, OPTIONS")), text, "method_not_allowed")
