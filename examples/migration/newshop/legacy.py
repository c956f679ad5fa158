"""What the port borrows from the legacy shop while both run.

The legacy app still owns the cart: it is kept in the legacy app's session (Flask's
signed cookie), and adding to it is a ``POST /shop/cart`` that the gateway sends to the
legacy app. So the port reads that session with the legacy app's own serializer, and
the forms on its pages post to the legacy app with a token the legacy app accepts
(masked afresh on each page, as the legacy app does). Remove this module once the
cart's ``POST`` is ported too.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import BadSignature
from legacy_shop import app as legacy_app
from legacy_shop import mask


def session(request: HttpRequest) -> dict[str, Any]:
    """The legacy app's session, as it would read it ({} without a valid one)."""
    raw = request.COOKIES.get(legacy_app.config["SESSION_COOKIE_NAME"])
    serializer = SecureCookieSessionInterface().get_signing_serializer(legacy_app)  # Flask's own, as the app uses
    if not raw or serializer is None:
        return {}
    try:
        data = serializer.loads(raw, max_age=int(legacy_app.permanent_session_lifetime.total_seconds()))
    except BadSignature:
        return {}
    return data if isinstance(data, dict) else {}


def csrf_token(request: HttpRequest) -> str:
    """A token for the legacy app's forms ("" when the client has no legacy session yet)."""
    secret = session(request).get("csrf")
    return mask(secret) if isinstance(secret, str) else ""


def cart(request: HttpRequest) -> dict[str, int]:
    """The cart in the legacy session: ``{"item id": quantity}``."""
    data = session(request).get("cart")
    return data if isinstance(data, dict) else {}
