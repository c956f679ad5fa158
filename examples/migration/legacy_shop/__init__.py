"""The legacy shop: a small, ordinary Flask app, the one being moved to Django.

Pages: the item list at ``/shop/``, an item page at ``/shop/items/<id>`` with an "Add to
cart" form, and the cart at ``/shop/cart`` (``POST /shop/cart`` adds an item or empties
it). The cart lives in Flask's session (a signed cookie, ``shop_session``). Forms carry
a CSRF token: a secret kept in the session, masked with a fresh random pad each time a
page is rendered (as Django does), so every rendering of a page differs in its token.
Every page also says when it was rendered, to the microsecond.

It knows nothing of the gateway: ``flask --app legacy_shop run`` serves it alone (from
this directory). Its secret key comes from ``FLASK_SECRET_KEY``, which the gateway sets.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import UTC, datetime
from decimal import Decimal

from catalogue import ITEMS, cart_lines, parse_item_id
from flask import Flask, abort, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

app = Flask(__name__)
app.config.update(SESSION_COOKIE_NAME="shop_session", SESSION_COOKIE_SAMESITE="Lax")
app.config.from_prefixed_env()  # FLASK_SECRET_KEY, FLASK_SESSION_COOKIE_SECURE, ...
if not app.config["SECRET_KEY"]:
    app.config["SECRET_KEY"] = secrets.token_hex(32)  # `flask run` alone: sessions last as long as the process


@app.template_filter("money")
def money(amount: Decimal) -> str:
    """``$1,299.00``: dollars, thousands grouped, two decimals."""
    return f"${amount:,.2f}"


def mask(secret: str) -> str:
    """A token for ``secret`` (hex) that differs every time: a random pad, then the secret XOR the pad."""
    key = bytes.fromhex(secret)
    pad = secrets.token_bytes(len(key))
    return (pad + bytes(a ^ b for a, b in zip(key, pad, strict=True))).hex()


def unmask(token: str) -> str:
    """The secret a token was made from ("" for anything that is not a token)."""
    try:
        raw = bytes.fromhex(token)
    except ValueError:
        return ""
    half = len(raw) // 2
    if not half or len(raw) != 2 * half:
        return ""
    return bytes(a ^ b for a, b in zip(raw[half:], raw[:half], strict=True)).hex()


@app.context_processor
def page_globals() -> dict[str, object]:
    def csrf_token() -> str:
        if "csrf" not in session:
            session["csrf"] = secrets.token_hex(16)
        return mask(session["csrf"])

    return {"csrf_token": csrf_token, "now": datetime.now(UTC).isoformat()}


@app.after_request
def served_by(response: Response) -> Response:
    response.headers["X-Served-By"] = "legacy shop (Flask)"
    return response


@app.get("/shop/")
def items() -> str:
    return render_template("items.html", items=ITEMS.values())


@app.get("/shop/items/<int:item_id>")
def item(item_id: int) -> tuple[str, int]:
    if item_id not in ITEMS:
        return render_template("missing.html", item_id=item_id), 404
    return render_template("item.html", item=ITEMS[item_id]), 200


@app.get("/shop/cart")
def cart() -> str:
    lines, total = cart_lines(session.get("cart", {}))
    return render_template("cart.html", lines=lines, total=total)


@app.post("/shop/cart")
def change_cart() -> Response:
    """Add ``item`` to the cart, or empty it (``empty``); then back to the cart."""
    secret = session.get("csrf", "")
    if not secret or not hmac.compare_digest(unmask(request.form.get("csrf_token", "")), secret):
        abort(400, description="The form's CSRF token is missing or wrong: reload the page and try again.")
    cart = dict(session.get("cart", {}))
    if request.form.get("empty"):
        cart = {}
    else:
        chosen = parse_item_id(request.form.get("item", ""))
        if chosen is None:
            abort(400, description="No such item.")
        key = str(chosen)  # one key an item, however the form wrote its number ("04")
        cart[key] = cart.get(key, 0) + 1
    session["cart"] = cart
    return redirect(url_for("cart"), 303)
