"""One sign-in for both frameworks (opt-in): a Flask app sees the Django user.

Django keeps who is signed in in its session; this module reads that session, in the
same process, with Django's own code (the session engine of ``SESSION_ENGINE``, and
``django.contrib.auth.get_user``, which also checks the session's auth hash, so a
password change or a session revoked in Django ends the Flask side too)::

    from gateway.migration.signin import DjangoSignIn, login_required

    signin = DjangoSignIn(app, login_url="/django/admin/login/")

    @app.get("/account")
    @login_required
    def account():
        return f"Signed in as {g.django_user.get_username()}"

Signing out from Flask (:func:`sign_out`) flushes the same session: Django's pages are
signed out as well. It must be a request of the site's own: a POST whose ``Origin`` is the
site's, or whose form carries :func:`signout_token` (``signout_token`` in the templates).
Anything else is a 403, so another site cannot sign a user out (a ``SameSite=Lax``
cookie does not stop a sibling subdomain, or a client that is not a browser).

For the Flask app to receive Django's session cookie when the two are mounted at
different prefixes, the gateway must leave that one cookie's path at the
site root: ``GATEWAY_SHARED_SIGNIN=1`` (:attr:`gateway.core.config.Config.shared_signin`).
Each app keeps its own CSRF protection: Django's CSRF cookie stays scoped to Django's
mount, and nothing here signs in or writes the session from Flask.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, abort, current_app, g, redirect, request

EXTENSION = "gateway_signin"


class DjangoSignIn:
    """A Flask extension: ``g.django_user`` is the user Django's session names, or an
    anonymous user."""

    def __init__(self, app: Flask | None = None, *, login_url: str = "/django/admin/login/") -> None:
        self.login_url = login_url
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        import django
        from django.apps import apps

        if not apps.ready:
            django.setup(set_prefix=False)
        app.extensions[EXTENSION] = self
        app.before_request(self.load_user)
        app.jinja_env.globals["signout_token"] = signout_token

    def load_user(self) -> None:
        """Before each request: find the Django user of the request's session cookie."""
        from django.conf import settings
        from django.contrib.auth import get_user

        key = request.cookies.get(settings.SESSION_COOKIE_NAME)
        session = session_store(key)
        g.django_session = session
        g.django_user = get_user(SimpleNamespace(session=session))


def session_store(key: str | None) -> Any:
    """Django's session for ``key``, from its configured engine (empty for an unknown key)."""
    from importlib import import_module

    from django.conf import settings

    return import_module(settings.SESSION_ENGINE).SessionStore(key)


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """A Flask view that needs a signed-in Django user; others go to Django's login page,
    with ``next`` pointing back here."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        user = getattr(g, "django_user", None)
        if user is None or not user.is_authenticated:
            signin: DjangoSignIn = current_app.extensions[EXTENSION]
            back = request.full_path.rstrip("?") if request.query_string else request.path
            target = request.script_root + back
            return redirect(f"{signin.login_url}?{urlencode({'next': target})}")
        return view(*args, **kwargs)

    return wrapped


#: The form field a sign-out carries its token in.
TOKEN_FIELD = "signout_token"


def signout_token() -> str:
    """The token a sign-out form carries (field :data:`TOKEN_FIELD`): an HMAC of this
    request's Django session key with Django's ``SECRET_KEY``, so no other site can make one."""
    from django.utils.crypto import salted_hmac

    session = getattr(g, "django_session", None)
    key = session.session_key if session is not None else None
    return str(salted_hmac("gateway.migration.signin.sign_out", key or "").hexdigest())


def same_site_request() -> bool:
    """Whether this POST comes from the site itself: its ``Origin`` is the request's own
    scheme and host, or its form carries this session's :func:`signout_token`."""
    import hmac

    origin = request.headers.get("Origin")
    if origin is not None and origin != "null":
        return origin == f"{request.scheme}://{request.host}"
    token = request.form.get(TOKEN_FIELD, "") if request.mimetype in (
        "application/x-www-form-urlencoded", "multipart/form-data") else ""
    # As bytes: compare_digest refuses str with characters outside ASCII (a TypeError, a
    # 500), and a client chooses the token.
    return bool(token) and hmac.compare_digest(token.encode("utf-8", "surrogateescape"), signout_token().encode())


def sign_out(response: Response) -> Response:
    """End the Django session of this request (both apps are signed out) and drop its cookie.

    Only for a request of the site's own (:func:`same_site_request`); any other is a 403
    and signs nobody out."""
    from django.conf import settings

    if request.method != "POST" or not same_site_request():
        abort(403, "Sign-out must be a POST from this site: its Origin, or the form's signout_token.")
    session = getattr(g, "django_session", None)
    if session is not None and session.session_key:
        session.flush()
    response.delete_cookie(settings.SESSION_COOKIE_NAME, path=settings.SESSION_COOKIE_PATH)
    return response
