"""Both prefixes through both entry points, in process."""

from __future__ import annotations

import re

import pytest

CLIENTS = ["wsgi_client", "asgi_client"]


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Each entry point's client in turn."""
    return request.getfixturevalue(request.param)


def body(response) -> str:  # type: ignore[no-untyped-def]
    data = response.get_data(as_text=True) if hasattr(response, "get_data") else response.text
    return str(data)


def status(response) -> int:  # type: ignore[no-untyped-def]
    return int(response.status_code)


def header(response, name: str) -> str | None:  # type: ignore[no-untyped-def]
    return response.headers.get(name)


def set_cookies(response) -> list[str]:  # type: ignore[no-untyped-def]
    if hasattr(response.headers, "get_list"):
        return list(response.headers.get_list("set-cookie"))
    return list(response.headers.getlist("set-cookie"))


@pytest.mark.parametrize(
    ("url", "text"),
    [
        pytest.param("/flask/", "Hello, World!", id="flask-default"),
        pytest.param("/flask/?name=Ada", "Hello, Ada!", id="flask-name"),
        pytest.param("/flask/?name=%3Cscript%3E", "Hello, &lt;script&gt;!", id="flask-escaped"),
        pytest.param("/django/", "Hello, Django!", id="django"),
    ],
)
def test_greetings(client, url: str, text: str) -> None:  # type: ignore[no-untyped-def]
    response = client.get(url)
    assert status(response) == 200
    assert text in body(response)
    assert "<script>" not in body(response)


def test_index_links_each_mount(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/")
    assert status(response) == 200
    page = body(response)
    assert 'href="/flask/"' in page and 'href="/django/"' in page
    assert re.search(r"Flask \d", page) and re.search(r"Django \d", page)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("/flaskx", id="flaskx"),
        pytest.param("/djangoadmin/", id="djangoadmin"),
        pytest.param("/nothing/here", id="unknown"),
        pytest.param("/FLASK/", id="case"),
        pytest.param("/flask/nope", id="flask-404"),
        pytest.param("/django/nope/", id="django-404"),
    ],
)
def test_not_found(client, url: str) -> None:  # type: ignore[no-untyped-def]
    response = client.get(url)
    assert status(response) == 404
    assert "Hello" not in body(response)


@pytest.mark.parametrize(
    ("url", "location"),
    [
        pytest.param("/flask", "/flask/", id="flask"),
        pytest.param("/django", "/django/", id="django"),
        pytest.param("/flask?name=Ada", "/flask/?name=Ada", id="flask-query"),
        pytest.param("/django?a=1&b=2", "/django/?a=1&b=2", id="django-query"),
    ],
)
def test_bare_prefix_redirects(client, url: str, location: str) -> None:  # type: ignore[no-untyped-def]
    response = client.get(url)
    assert status(response) == 308
    assert header(response, "location") == location


def test_flask_static_urls_carry_prefix(client) -> None:  # type: ignore[no-untyped-def]
    page = body(client.get("/flask/"))
    href = re.search(r'<link rel="stylesheet" href="([^"]+)"', page)
    assert href and href.group(1) == "/flask/static/style.css"
    css = client.get(href.group(1))
    assert status(css) == 200 and "font-family" in body(css)


def test_django_reverse_and_static_carry_prefix(client) -> None:  # type: ignore[no-untyped-def]
    page = body(client.get("/django/"))
    assert 'href="/django/admin/"' in page
    href = re.search(r'<link rel="stylesheet" href="([^"]+)"', page)
    assert href and href.group(1) == "/django/static/django_hello/style.css"
    assert status(client.get(href.group(1))) == 200


def test_admin_redirects_to_login_under_prefix(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/django/admin/")
    assert status(response) == 302
    assert header(response, "location") == "/django/admin/login/?next=/django/admin/"


def test_admin_login_page_css_under_prefix(client) -> None:  # type: ignore[no-untyped-def]
    page = body(client.get("/django/admin/login/?next=/django/admin/"))
    sheets = re.findall(r'<link rel="stylesheet" href="([^"]+)"', page)
    assert "/django/static/admin/css/base.css" in sheets
    assert all(s.startswith("/django/static/") for s in sheets)
    css = client.get("/django/static/admin/css/base.css")
    assert status(css) == 200 and "text/css" in (header(css, "content-type") or "")


def test_cookies_scoped_to_their_mount(client) -> None:  # type: ignore[no-untyped-def]
    flask_cookies = set_cookies(client.get("/flask/?name=Ada"))
    assert any(c.startswith("session=") and "Path=/flask" in c for c in flask_cookies)
    django_cookies = set_cookies(client.get("/django/admin/login/"))
    assert any(c.startswith("csrftoken=") and "Path=/django" in c for c in django_cookies)
    assert not any(re.search(r"Path=/(;|$)", c) for c in flask_cookies + django_cookies)
