"""One sign-in for both frameworks (GATEWAY_SHARED_SIGNIN): the Flask app sees the Django
user through Django's own session and auth code, in process through the WSGI gateway."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from werkzeug.test import Client

from gateway.adapters.wsgi import create_wsgi_app
from gateway.core.config import Config
from gateway.core.mounts import Mount, MountTable
from tests.support import Account, csrf_token


@pytest.fixture
def user(account: Account) -> Account:
    return account


LOGIN = "/django/admin/login/"
#: What a browser sends with a form it posts to the page's own site.
SAME_ORIGIN = {"Origin": "http://localhost"}


def gateway_with(table: MountTable, shared: bool) -> Any:
    import flask_hello

    flask_app = flask_hello.create_app({"SHARED_SIGNIN": True, "SECRET_KEY": secrets.token_hex(16)})
    mounts = [Mount("/flask", "flask_hello:create_app", "wsgi", flask_app), *(m for m in table if m.prefix != "/flask")]
    config = replace(Config.from_env({}), shared_signin="sessionid" if shared else None)
    return create_wsgi_app(MountTable(mounts), config)


@pytest.fixture
def browser(table: MountTable) -> Iterator[Client]:
    yield Client(gateway_with(table, shared=True))


def sign_in(client: Client, user: Account) -> Any:
    page = client.get(LOGIN, buffered=True)
    return client.post(LOGIN, data={"csrfmiddlewaretoken": csrf_token(page.get_data(as_text=True)),
                                    "username": user.username, "password": user.password,
                                    "next": "/flask/account"}, buffered=True)


def test_flask_sends_a_stranger_to_djangos_login_and_back(browser: Client) -> None:
    answer = browser.get("/flask/account?tab=1", buffered=True)
    assert answer.status_code == 302
    assert answer.headers["Location"] == "/django/admin/login/?next=%2Fflask%2Faccount%3Ftab%3D1"


def test_a_django_sign_in_signs_flask_in(browser: Client, user: Account) -> None:
    signed = sign_in(browser, user)
    assert signed.status_code == 302 and signed.headers["Location"] == "/flask/account"
    cookies = {c.split("=", 1)[0]: c for c in signed.headers.getlist("Set-Cookie")}
    assert "Path=/;" in cookies["sessionid"] + ";"  # the one cookie both apps read
    first_visit = Client(browser.application).get(LOGIN, buffered=True)
    csrf = next(c for c in first_visit.headers.getlist("Set-Cookie") if c.startswith("csrftoken="))
    assert "Path=/django" in csrf  # each app keeps its own CSRF cookie
    answer = browser.get("/flask/account", buffered=True)
    assert (answer.status_code, answer.get_data(as_text=True)) == (200, f"Signed in as {user.username}.\n")


def test_signing_out_of_flask_signs_django_out(browser: Client, user: Account) -> None:
    sign_in(browser, user)
    assert browser.get("/django/admin/", buffered=True).status_code == 200
    out = browser.post("/flask/signout", headers=SAME_ORIGIN, buffered=True)
    assert out.status_code == 302
    assert browser.get("/django/admin/", buffered=True).status_code == 302  # to the login page
    assert browser.get("/flask/account", buffered=True).status_code == 302


def test_signing_out_of_django_signs_flask_out(browser: Client, user: Account) -> None:
    sign_in(browser, user)
    page = browser.get("/django/admin/", buffered=True).get_data(as_text=True)
    assert browser.post("/django/admin/logout/", data={"csrfmiddlewaretoken": csrf_token(page)},
                        buffered=True).status_code == 200
    assert browser.get("/flask/account", buffered=True).status_code == 302


def test_a_session_revoked_in_django_is_refused_by_flask(browser: Client, user: Account) -> None:
    from django.contrib.auth import get_user_model

    sign_in(browser, user)
    assert browser.get("/flask/account", buffered=True).status_code == 200
    user = get_user_model().objects.get(username=user.username)
    user.set_password(secrets.token_urlsafe(16))  # the session's auth hash no longer matches
    user.save()
    assert browser.get("/flask/account", buffered=True).status_code == 302


def test_without_the_option_each_app_keeps_its_cookies(table: MountTable, user: Account) -> None:
    client = Client(gateway_with(table, shared=False))
    signed = sign_in(client, user)
    assert "Path=/django" in next(c for c in signed.headers.getlist("Set-Cookie") if c.startswith("sessionid="))
    assert client.get("/flask/account", buffered=True).status_code == 302  # Flask never sees the session


def test_the_option_is_read_and_refused_in_one_line() -> None:
    assert Config.from_env({"GATEWAY_SHARED_SIGNIN": "1"}).shared_signin == "sessionid"
    assert Config.from_env({"GATEWAY_SHARED_SIGNIN": "mysession"}).shared_signin == "mysession"
    assert Config.from_env({"GATEWAY_SHARED_SIGNIN": "0"}).shared_signin is None
    with pytest.raises(ValueError, match="GATEWAY_SHARED_SIGNIN=\"a b\" must be 1, 0, or the name"):
        Config.from_env({"GATEWAY_SHARED_SIGNIN": "a b"})


def test_signing_out_ends_the_session_on_the_server(browser: Client, user: Account) -> None:
    """A copy of the session cookie kept from before (another tab, a stolen cookie) is dead too."""
    signed = sign_in(browser, user)
    cookie = next(c for c in signed.headers.getlist("Set-Cookie") if c.startswith("sessionid="))
    session_id = cookie.split(";", 1)[0].split("=", 1)[1]
    out = browser.post("/flask/signout", headers=SAME_ORIGIN, buffered=True)
    assert "sessionid=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/" in out.headers.getlist("Set-Cookie")
    replay = Client(browser.application)
    replay.set_cookie("sessionid", session_id)
    assert replay.get("/flask/account", buffered=True).status_code == 302
    assert replay.get("/django/admin/", buffered=True).status_code == 302


def test_the_login_page_by_default_is_the_django_admins(table: MountTable) -> None:
    from flask import Flask

    from gateway.migration.signin import DjangoSignIn, login_required

    app = Flask("signin-default")
    DjangoSignIn(app)

    @app.get("/x")
    @login_required
    def x() -> str:
        return "in"

    answer = app.test_client().get("/x")
    assert (answer.status_code, answer.headers["Location"]) == (302, "/django/admin/login/?next=%2Fx")


def test_signing_out_without_a_session_drops_the_cookie_at_djangos_path(table: MountTable) -> None:
    """A Flask app without the extension (no session loaded) still answers, and the cookie is
    deleted at the path Django set it with."""
    from django.test import override_settings
    from flask import Flask, make_response

    from gateway.migration.signin import sign_out

    app = Flask("signout-alone")
    with override_settings(SESSION_COOKIE_PATH="/django"), app.test_request_context(
            "/signout", method="POST", headers={"Origin": "http://localhost"}):
        response = sign_out(make_response("out"))
    assert response.headers.getlist("Set-Cookie") == [
        "sessionid=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/django"]


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "https://localhost"},  # another scheme is another origin
    {"Origin": "http://localhost:8000"},  # and another port
    {"Origin": "null"},  # a sandboxed page, or a redirect from another site
    {},  # no Origin and no token: a client that is not a browser, an old browser
])
def test_a_sign_out_from_elsewhere_is_refused_and_signs_nobody_out(browser: Client, user: Account,
                                                                   headers: dict[str, str]) -> None:
    sign_in(browser, user)
    out = browser.post("/flask/signout", headers=headers, buffered=True)
    assert out.status_code == 403
    assert "Sign-out must be a POST from this site" in out.get_data(as_text=True)
    assert not [c for c in out.headers.getlist("Set-Cookie") if c.startswith("sessionid=")]
    assert browser.get("/flask/account", buffered=True).status_code == 200  # still signed in
    assert browser.get("/django/admin/", buffered=True).status_code == 200


def test_a_form_with_this_sessions_token_signs_out_without_an_origin(browser: Client, user: Account) -> None:
    import re

    from flask import Flask, make_response, render_template_string

    from gateway.migration.signin import DjangoSignIn, sign_out

    signed = sign_in(browser, user)
    cookie = next(c for c in signed.headers.getlist("Set-Cookie") if c.startswith("sessionid="))
    session_id = cookie.split(";", 1)[0].split("=", 1)[1]
    app = Flask("signout-form")
    DjangoSignIn(app)

    @app.get("/form")
    def form() -> str:
        return render_template_string('<input type="hidden" name="signout_token" value="{{ signout_token() }}">')

    @app.post("/out")
    def out() -> Any:
        return sign_out(make_response("out"))

    stranger = app.test_client()
    strangers_token = re.findall(r'value="([0-9a-f]+)"', stranger.get("/form").get_data(as_text=True))[0]
    client = app.test_client()
    client.set_cookie("sessionid", session_id)
    token = re.findall(r'value="([0-9a-f]+)"', client.get("/form").get_data(as_text=True))[0]
    assert token != strangers_token  # a token is this session's own
    for wrong in ("", "0" * len(token), strangers_token):
        assert client.post("/out", data={"signout_token": wrong}).status_code == 403
    assert client.post("/out", data={"signout_token": token}).status_code == 200
    assert browser.get("/django/admin/", buffered=True).status_code == 302  # Django signed out too


def test_a_get_cannot_sign_out(table: MountTable) -> None:
    from flask import Flask, make_response

    from gateway.migration.signin import sign_out

    app = Flask("signout-get")
    with app.test_request_context("/signout", method="GET", headers={"Origin": "http://localhost"}), \
            pytest.raises(Exception) as refused:
        sign_out(make_response("out"))
    assert getattr(refused.value, "code", None) == 403
