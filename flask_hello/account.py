"""Pages for one sign-in with the Django project (on when ``SHARED_SIGNIN`` is set, e.g.
``FLASK_SHARED_SIGNIN=true``; the gateway sets it with ``GATEWAY_SHARED_SIGNIN=1``)."""

from __future__ import annotations

from flask import Blueprint, Flask, g, make_response, redirect, url_for
from markupsafe import escape

from gateway.migration.signin import DjangoSignIn, login_required, sign_out

bp = Blueprint("account", __name__)


def init_app(app: Flask) -> None:
    # FLASK_DJANGO_LOGIN_URL: Django's login page, as the browser sees it.
    DjangoSignIn(app, login_url=app.config.get("DJANGO_LOGIN_URL", "/django/admin/login/"))
    app.register_blueprint(bp)


@bp.get("/account")
@login_required
def account() -> str:
    """Who is signed in, as Django knows them."""
    return f"Signed in as {escape(g.django_user.get_username())}.\n"


@bp.post("/signout")
def signout() -> object:
    """Sign out of both apps: a POST from this site only (its ``Origin``, or the form's
    ``signout_token``); another site's is a 403 (:func:`gateway.migration.signin.sign_out`)."""
    return sign_out(make_response(redirect(url_for("hello.hello"))))
