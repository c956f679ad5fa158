"""Doors left open in the admin and in production mode (issue 10, items 8, 9 and 11).

- Admin logins are throttled by django-axes, per username and client address together;
  the address is the gateway's REMOTE_ADDR (a trusted proxy's client, or the peer), never
  a header the client chose. In process through ``gateway.wsgi``.
- Malformed staff requests to the admin (an action on ``_selected_action=abc``, a
  ``__regex`` lookup, a NUL) get a 4xx or the admin's message, one log line, no 500.
- ``GATEWAY_ENV=production`` refuses debug mode and wildcard hosts, in one line.

Logins here use Django's MD5 hasher (``fast_hashes``), as Django advises for tests: the
default PBKDF2 takes about 0.3 s a password here, and a lock-out test checks a dozen.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Account, csrf_token

LOGIN = "/django/admin/login/?next=/django/admin/"
CHANGELIST = "/django/admin/django_hello/greeting/"
STRONG = secrets.token_urlsafe(50)


# --- helpers -----------------------------------------------------------------------------


def make_client(app):  # type: ignore[no-untyped-def]
    from werkzeug.test import Client

    return Client(app)


def login(client, user: Account, password: str | None = None, *, address: str,  # type: ignore[no-untyped-def]
          forwarded_for: str | None = None):
    """Post the admin's login form from ``address`` (the TCP peer), as a browser would."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    environ = {"REMOTE_ADDR": address}
    page = client.get(LOGIN, headers=headers, environ_overrides=environ, buffered=True)
    assert page.status_code == 200, page.status_code
    return client.post(LOGIN, data={
        "csrfmiddlewaretoken": csrf_token(page.get_data(as_text=True)), "username": user.username,
        "password": user.password if password is None else password, "next": "/django/admin/",
    }, headers=headers, environ_overrides=environ, buffered=True)


def failures(username: str) -> dict[str, int]:
    """The failures axes has recorded for ``username``, by client address."""
    from axes.models import AccessAttempt

    counts: dict[str, int] = {}
    for attempt in AccessAttempt.objects.filter(username=username):
        counts[attempt.ip_address] = counts.get(attempt.ip_address, 0) + attempt.failures_since_start
    return counts


def limit() -> int:
    from django.conf import settings

    return int(settings.AXES_FAILURE_LIMIT)


def lock_out(client, user: Account, **where: str) -> None:  # type: ignore[no-untyped-def]
    """Send the failure limit's worth of wrong passwords: all but the last get the form
    again (200); the one that reaches the limit is already answered 429."""
    statuses = [login(client, user, "wrong-password", **where).status_code for _ in range(limit())]
    assert statuses == [200] * (limit() - 1) + [429]


def assert_logged_in(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 302, (response.status_code, response.get_data(as_text=True)[:500])
    assert response.headers["Location"] == "/django/admin/"


# --- 1. Login throttling ----------------------------------------------------------------


def test_limit_and_cool_off_are_set(table) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from django.conf import settings

    assert settings.AXES_FAILURE_LIMIT == 5
    cool_off = settings.AXES_COOLOFF_TIME
    assert cool_off == timedelta(minutes=15)
    assert settings.AXES_LOCKOUT_PARAMETERS == [["username", "ip_address"]]
    assert settings.AXES_HTTP_RESPONSE_CODE == 429


def test_lock_out_refuses_even_the_right_password(wsgi_client, account: Account,  # type: ignore[no-untyped-def]
                                                   caplog: pytest.LogCaptureFixture) -> None:
    attacker = "203.0.113.10"
    lock_out(wsgi_client, account, address=attacker)
    refused = login(wsgi_client, account, address=attacker)  # the right password
    assert refused.status_code == 429
    assert "too many login attempts" in refused.get_data(as_text=True)
    assert "sessionid" not in refused.headers.get("Set-Cookie", "")
    # Recorded in the database, against the peer's address; the refused right password
    # is not counted (nor does it extend the lock-out).
    assert failures(account.username) == {attacker: limit()}
    assert any("AXES: Locking out" in r.getMessage() for r in caplog.records)
    # The real admin, anywhere else, is not locked out.
    assert_logged_in(login(make_client(wsgi_client.application), account, address="198.51.100.20"))


def test_forwarded_for_from_an_untrusted_peer_changes_nothing(wsgi_client, account: Account) -> None:  # type: ignore[no-untyped-def]
    # The default gateway trusts no proxy. A new X-Forwarded-For each time does not make
    # a new client: every failure is the peer's, and the peer is locked out.
    peer = "203.0.113.11"
    statuses = [login(wsgi_client, account, "wrong-password", address=peer,
                      forwarded_for=f"192.0.2.{n}").status_code for n in range(limit())]
    assert statuses == [200] * (limit() - 1) + [429]
    assert login(wsgi_client, account, address=peer, forwarded_for="192.0.2.200").status_code == 429
    assert failures(account.username) == {peer: limit()}
    # Naming a victim's address in the header locked out the attacker, not the victim.
    victim = "192.0.2.3"
    assert_logged_in(login(make_client(wsgi_client.application), account, address=victim))


def test_trusted_proxy_clients_are_counted_separately(table, account: Account) -> None:  # type: ignore[no-untyped-def]
    from gateway.adapters.wsgi import create_wsgi_app
    from gateway.core.config import Config

    proxy = "10.9.0.1"
    config = dataclasses.replace(Config.from_env(), trusted_proxies=(ipaddress.ip_network(proxy),))
    app = create_wsgi_app(table, config)
    attacker, admin = "192.0.2.51", "192.0.2.52"
    lock_out(make_client(app), account, address=proxy, forwarded_for=attacker)
    assert login(make_client(app), account, address=proxy, forwarded_for=attacker).status_code == 429
    # The same proxy, another client: not locked out.
    assert_logged_in(login(make_client(app), account, address=proxy, forwarded_for=admin))
    # Counted against the client the proxy named, never against the proxy itself.
    assert failures(account.username) == {attacker: limit()}


def test_gateway_manage_axes_reset_lifts_the_lock_out(wsgi_client, account: Account,  # type: ignore[no-untyped-def]
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.serve.cli import main

    address = "203.0.113.12"
    lock_out(wsgi_client, account, address=address)
    assert login(wsgi_client, account, address=address).status_code == 429
    capsys.readouterr()
    main(["manage", "axes_reset"])
    assert re.fullmatch(r"\d+ attempts removed\.\n", capsys.readouterr().out)
    assert failures(account.username) == {}
    assert_logged_in(login(wsgi_client, account, address=address))
    assert wsgi_client.get("/django/admin/", environ_overrides={"REMOTE_ADDR": address}).status_code == 200


def test_a_successful_login_clears_only_its_own_failures(wsgi_client, account: Account) -> None:  # type: ignore[no-untyped-def]
    # AXES_RESET_ON_SUCCESS: a login clears the failures of that username from that
    # address, the pair a lock-out counts; another address's failures stay.
    here, elsewhere = "203.0.113.13", "203.0.113.14"
    below = limit() - 1
    for address in (here, elsewhere):
        for _ in range(below):
            assert login(wsgi_client, account, "wrong-password", address=address).status_code == 200
    assert failures(account.username) == {here: below, elsewhere: below}
    assert_logged_in(login(make_client(wsgi_client.application), account, address=here))
    assert failures(account.username) == {elsewhere: below}
    # The other address is one failure from its lock-out, as before ...
    assert login(wsgi_client, account, "wrong-password", address=elsewhere).status_code == 429
    # ... and this one starts again from zero.
    for _ in range(below):
        assert login(wsgi_client, account, "wrong-password", address=here).status_code == 200
    assert_logged_in(login(make_client(wsgi_client.application), account, address=here))


# --- 2. Malformed staff requests in the admin ------------------------------------------


@pytest.fixture
def staff(wsgi_client, account: Account):  # type: ignore[no-untyped-def]
    """``wsgi_client`` logged in to the admin as a superuser."""
    assert_logged_in(login(wsgi_client, account, address="127.0.0.1"))
    return wsgi_client


@pytest.fixture
def greeting(table) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    from django_hello.models import Greeting

    row = Greeting.objects.create(language=f"t-{uuid.uuid4().hex[:8]}", text="Hi")
    yield row
    Greeting.objects.filter(pk=row.pk).delete()


def warnings_and_worse(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


def post_action(client, selected: list[str], **extra: str):  # type: ignore[no-untyped-def]
    token = csrf_token(client.get(CHANGELIST, buffered=True).get_data(as_text=True))
    return client.post(CHANGELIST, data={"csrfmiddlewaretoken": token, "action": "delete_selected",
                                         "index": "0", "_selected_action": selected, **extra}, buffered=True)


@pytest.mark.parametrize(
    "bad",
    [pytest.param("abc", id="not-a-number"), pytest.param("9" * 30, id="out-of-range"),
     pytest.param("1\x00", id="nul"), pytest.param("", id="empty")],
)
@pytest.mark.parametrize("confirmed", [pytest.param(False, id="first-step"), pytest.param(True, id="confirmed")])
def test_action_on_an_invalid_id_is_refused_with_a_message(staff, greeting, caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
                                                           bad: str, confirmed: bool) -> None:
    from django_hello.models import Greeting

    caplog.clear()
    extra = {"post": "yes"} if confirmed else {}
    response = post_action(staff, [str(greeting.pk), bad], **extra)
    assert response.status_code == 302, response.get_data(as_text=True)[:3000]
    assert response.headers["Location"] == CHANGELIST
    [record] = warnings_and_worse(caplog)
    assert record.name == "django_hello.admin" and record.exc_info is None
    assert record.getMessage().startswith("Admin action on django_hello.Greeting refused: 1 of 2 selected ids")
    page = staff.get(CHANGELIST, buffered=True).get_data(as_text=True)
    assert "Items must be selected in order to perform actions on them." in page
    assert Greeting.objects.filter(pk=greeting.pk).exists()  # a tampered selection runs nothing


def test_action_on_valid_ids_still_runs(staff, greeting, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    # The control: the same request with only a valid id deletes the row.
    from django_hello.models import Greeting

    confirm = post_action(staff, [str(greeting.pk)])
    assert confirm.status_code == 200 and "<title>Delete multiple objects" in confirm.get_data(as_text=True)
    assert post_action(staff, [str(greeting.pk)], post="yes").status_code == 302
    assert not Greeting.objects.filter(pk=greeting.pk).exists()
    assert warnings_and_worse(caplog) == []


@pytest.mark.parametrize(
    ("query", "refused"),
    [
        pytest.param("language__regex=(", "language__regex", id="regex"),
        pytest.param("text__iregex=(a%2B)%2B%24", "text__iregex", id="iregex"),
        pytest.param("language__startswith=a&text__regex=x", "text__regex", id="regex-among-others"),
    ],
)
def test_regex_lookups_are_refused_with_400(staff, greeting, caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
                                            query: str, refused: str) -> None:
    # With a row in the table: SQLite runs the pattern per row, and "(" failed there with a
    # 503 ("database unavailable"); PostgreSQL failed with a 500 (see the last test).
    caplog.clear()
    response = staff.get(f"{CHANGELIST}?{query}", buffered=True)
    assert response.status_code == 400
    [record] = warnings_and_worse(caplog)
    assert record.name == "django.security.DisallowedModelAdminLookup"
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage() == f"Filtering by {refused} not allowed"


@pytest.mark.parametrize(
    ("changelist", "label", "field"),
    [
        pytest.param("/django/admin/auth/user/", "auth.User", "username", id="users"),
        pytest.param("/django/admin/auth/group/", "auth.Group", "name", id="groups"),
        pytest.param("/django/admin/axes/accessattempt/", "axes.AccessAttempt", "username", id="axes-attempts"),
        pytest.param("/django/admin/axes/accesslog/", "axes.AccessLog", "username", id="axes-logs"),
    ],
)
def test_the_other_admin_pages_are_hardened_too(staff, caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
                                                changelist: str, label: str, field: str) -> None:
    caplog.clear()
    assert staff.get(f"{changelist}?{field}__regex=(", buffered=True).status_code == 400
    assert staff.get(f"{changelist}?{field}__startswith=a", buffered=True).status_code == 200
    token = csrf_token(staff.get(changelist, buffered=True).get_data(as_text=True))
    action = staff.post(changelist, data={"csrfmiddlewaretoken": token, "action": "delete_selected", "index": "0",
                                          "_selected_action": "abc"}, buffered=True)
    assert action.status_code == 302 and action.headers["Location"] == changelist
    assert [r.getMessage() for r in warnings_and_worse(caplog)] == [
        f"Filtering by {field}__regex not allowed",
        f"Admin action on {label} refused: 1 of 1 selected ids are not valid ids, e.g. 'abc'."]


def test_the_user_admin_keeps_its_own_refusals(staff) -> None:  # type: ignore[no-untyped-def]
    # UserAdmin refuses lookups on password hashes; hardened, it still does.
    assert staff.get("/django/admin/auth/user/?password__startswith=md5", buffered=True).status_code == 400


def test_nul_in_lookups_and_search_is_refused_by_the_admin_itself(table) -> None:  # type: ignore[no-untyped-def]
    # Through the gateway a NUL in the URL never reaches an app (a 400 from the pipeline);
    # the admin refuses it too, for when the Django project runs alone.
    from django.contrib import admin
    from django.contrib.admin.exceptions import DisallowedModelAdminLookup

    from django_hello.models import Greeting

    model_admin = admin.site._registry[Greeting]
    assert not model_admin.lookup_allowed("language__startswith", "a\x00", None)
    assert model_admin.lookup_allowed("language__startswith", "a", None)
    with pytest.raises(DisallowedModelAdminLookup):
        model_admin.get_search_results(None, Greeting.objects.all(), "a\x00")


@pytest.mark.parametrize("query", ["language__exact=fr", "language__startswith=f", "q=fr", "o=1", "language__in=fr,de"])
def test_ordinary_lookups_still_work(staff, caplog: pytest.LogCaptureFixture, query: str) -> None:  # type: ignore[no-untyped-def]
    caplog.clear()
    assert staff.get(f"{CHANGELIST}?{query}", buffered=True).status_code == 200
    assert warnings_and_worse(caplog) == []


def test_an_unknown_lookup_keeps_djangos_own_redirect(staff) -> None:  # type: ignore[no-untyped-def]
    response = staff.get(f"{CHANGELIST}?language__nosuch=1", buffered=True)
    assert response.status_code == 302 and response.headers["Location"].endswith("?e=1")


# --- 3. Production refuses debug mode and wildcard hosts --------------------------------


def production(tmp_path: Path, **environ: str) -> tuple[Any, dict[str, str]]:
    from gateway.core.config import Config

    env = {"GATEWAY_ENV": "production", "GATEWAY_DATA_DIR": str(tmp_path), "DJANGO_SECRET_KEY": STRONG,
           "FLASK_SECRET_KEY": STRONG[::-1], **environ}
    return Config.from_env(env), {k: v for k, v in env.items() if not k.startswith("GATEWAY_")}


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param({"DJANGO_DEBUG": "1"},
                     'DJANGO_DEBUG="1" turns on Django\'s debug pages: unset it or set DJANGO_DEBUG=0', id="django-1"),
        pytest.param({"DJANGO_DEBUG": "True"}, 'DJANGO_DEBUG="True" turns on', id="django-true"),
        pytest.param({"FLASK_DEBUG": "1"},
                     'FLASK_DEBUG="1" turns on Flask\'s debug mode: unset it or set FLASK_DEBUG=0', id="flask-1"),
        pytest.param({"FLASK_DEBUG": "true"}, 'FLASK_DEBUG="true" turns on', id="flask-true"),
        # Flask's from_prefixed_env keeps a value that is not JSON as a string: "no" is on.
        pytest.param({"FLASK_DEBUG": "no"}, 'FLASK_DEBUG="no" turns on', id="flask-no-is-a-true-string"),
        pytest.param({"GATEWAY_ALLOWED_HOSTS": "example.org,*"},
                     'GATEWAY_ALLOWED_HOSTS allows any host ("*"): list your host names, '
                     "e.g. GATEWAY_ALLOWED_HOSTS=example.org", id="gateway-hosts"),
        pytest.param({"DJANGO_ALLOWED_HOSTS": "*"}, 'DJANGO_ALLOWED_HOSTS allows any host ("*")', id="django-hosts"),
    ],
)
def test_production_refuses_debug_and_wildcard_hosts(tmp_path: Path, environ: dict[str, str], message: str) -> None:
    from gateway.core.config import configure_apps

    config, env = production(tmp_path, **environ)
    with pytest.raises(ValueError) as raised:
        configure_apps(config, env)
    text = str(raised.value)
    assert text.startswith(message) and text.endswith(" (GATEWAY_ENV=production).")
    assert "\n" not in text and ";" not in text  # one problem, one line
    assert "DJANGO_SETTINGS_MODULE" not in env  # refused before anything is set


def test_production_lists_every_problem_in_one_line(tmp_path: Path) -> None:
    from gateway.core.config import configure_apps

    config, env = production(tmp_path, DJANGO_DEBUG="on", FLASK_DEBUG="1", GATEWAY_ALLOWED_HOSTS="*",
                             DJANGO_ALLOWED_HOSTS="a.example,*")
    env["FLASK_SECRET_KEY"] = "short"
    with pytest.raises(ValueError) as raised:
        configure_apps(config, env)
    problems = str(raised.value).removesuffix(" (GATEWAY_ENV=production).").split("; ")
    assert [p.split(" ", 1)[0].split("=")[0] for p in problems] == [
        "FLASK_SECRET_KEY", "DJANGO_DEBUG", "FLASK_DEBUG", "GATEWAY_ALLOWED_HOSTS", "DJANGO_ALLOWED_HOSTS"]
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({}, id="defaults"),
        pytest.param({"DJANGO_DEBUG": "0", "FLASK_DEBUG": "0"}, id="zero"),
        pytest.param({"DJANGO_DEBUG": "false", "FLASK_DEBUG": "false"}, id="false"),
        pytest.param({"DJANGO_DEBUG": "", "FLASK_DEBUG": "", "GATEWAY_ALLOWED_HOSTS": ".example.org"}, id="empty"),
    ],
)
def test_production_accepts_safe_settings(tmp_path: Path, environ: dict[str, str]) -> None:
    from gateway.core.config import configure_apps

    config, env = production(tmp_path, **environ)
    configure_apps(config, env)
    assert env["DJANGO_SETTINGS_MODULE"] == "django_hello.settings"


def test_development_allows_debug_and_any_host(tmp_path: Path) -> None:
    from gateway.core.config import Config, configure_apps

    env = {"DJANGO_DEBUG": "1", "FLASK_DEBUG": "1", "FLASK_SECRET_KEY": STRONG}
    configure_apps(Config.from_env({"GATEWAY_DATA_DIR": str(tmp_path), "GATEWAY_ALLOWED_HOSTS": "*"}), env)
    assert env["DJANGO_ALLOWED_HOSTS"] == "*"
