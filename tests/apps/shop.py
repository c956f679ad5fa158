"""Two Flask apps that share one URL space, for the route rules' tests: a "legacy" shop and
the "new" one that takes over some of its pages (as a migration does, a page at a time)."""

from __future__ import annotations

from flask import Flask, jsonify, request, url_for

legacy = Flask("legacy_shop")
new = Flask("new_shop")


def _seen(app: str) -> dict[str, str]:
    return {"app": app, "script_name": request.environ.get("SCRIPT_NAME", ""), "path": request.path,
            "method": request.method}


@legacy.get("/shop/")
def index() -> object:
    return jsonify(**_seen("legacy"), items=url_for("item", item_id=7), cart=url_for("cart"))


@legacy.get("/shop/items/<int:item_id>")
def item(item_id: int) -> object:
    return jsonify(**_seen("legacy"), id=item_id)


@legacy.route("/shop/cart", methods=["GET", "POST"])
def cart() -> object:
    return jsonify(**_seen("legacy"), body=request.get_data(as_text=True))


@new.get("/shop/cart")
def new_cart() -> object:
    return jsonify(**_seen("new"), cart=url_for("new_cart"))


@new.get("/shop/items/<int:item_id>")
def new_item(item_id: int) -> object:
    if item_id > 100:  # not ported yet: the legacy app answers (a fallback)
        return jsonify(error="not here"), 404
    return jsonify(**_seen("new"), id=item_id)


@new.post("/shop/items/<int:item_id>")
def new_item_post(item_id: int) -> object:
    return jsonify(error="not here"), 404


# Pages for the shadow comparison: each run has a fresh CSRF token and time (noise), the
# new app writes its attributes in another order and its white space otherwise (not a
# difference), and its product 13 has a deliberate difference in its name.
_NAMES = {7: "Teapot", 13: "Kettle", 21: "Cup"}


def _product(app: str, product_id: int) -> str:
    import secrets
    import time

    name = _NAMES.get(product_id, "Spoon")
    token, now = secrets.token_hex(8), f"{time.time():.6f}"
    if app == "legacy":
        return (f'<div class="product" id="p{product_id}"><h1>{name}</h1>'
                f'<input type="hidden" name="csrf" value="{token}"><time>{now}</time></div>')
    if product_id == 13:
        name = "Kettle (new)"
    return (f'<div id="p{product_id}"   class="product">\n  <h1>{name}</h1>\n'
            f'  <input name="csrf" value="{token}" type="hidden">\n  <time>{now}</time>\n</div>\n')


@legacy.get("/shop/products/<int:product_id>")
def legacy_product(product_id: int) -> str:
    return _product("legacy", product_id)


@new.get("/shop/products/<int:product_id>")
def new_product(product_id: int) -> str:
    return _product("new", product_id)


@legacy.post("/shop/products/<int:product_id>")
def legacy_product_post(product_id: int) -> str:
    return "posted"


@legacy.get("/shop/api/products/<int:product_id>")
def legacy_api(product_id: int) -> object:
    import secrets

    return jsonify(id=product_id, name=_NAMES.get(product_id, "Spoon"), request_id=secrets.token_hex(4))


@new.get("/shop/api/products/<int:product_id>")
def new_api(product_id: int) -> object:
    import json
    import secrets

    from flask import Response

    # The same object with its keys in another order: equal.
    body = {"request_id": secrets.token_hex(4), "name": _NAMES.get(product_id, "Spoon"), "id": product_id}
    return Response(json.dumps(body), content_type="application/json")


# --- gateway.toml texts that mount these two apps on one URL space ------------------------

#: ``legacy`` and ``new`` sharing ``/shop/``: the cart is ported (GET), an item falls back
#: from ``new`` to ``legacy``, POST-only routes stay with ``legacy``.
SHOP = '''
[apps]
legacy = "tests.apps.shop:legacy"
new = "tests.apps.shop:new"

[mounts]
"/echo" = "tests.thirdapp:echo_app"

[[route]]
rule = "/shop/<path:rest>"
app = "legacy"

[[route]]
rule = "/shop/"
app = "legacy"

[[route]]
rule = "/shop/cart"
app = "new"
methods = ["GET"]

[[route]]
rule = "/shop/items/<int:item_id>"
app = ["new", "legacy"]

[[route]]
rule = "/only-post"
app = "legacy"
methods = ["POST"]
'''

#: :data:`SHOP` with canaries: ``SHARE`` (replace it) per cent of the cart to ``new``, and
#: 30% of the reviews by the ``X-User-ID`` header.
CANARY = SHOP.replace('''[[route]]
rule = "/shop/cart"
app = "new"
methods = ["GET"]''', '''[[route]]
rule = "/shop/cart"
app = "legacy"
methods = ["GET"]
canary = { app = "new", share = SHARE }

[[route]]
rule = "/shop/items/<int:item_id>/reviews"
app = "legacy"
canary = { app = "new", share = 30, header = "X-User-ID" }''')

#: :data:`SHOP` with two rules in shadow mode, ``new`` as the candidate.
SHADOW = SHOP + '''
[[route]]
rule = "/shop/products/<int:product_id>"
app = "legacy"
shadow = { app = "new", headers = ["Content-Type"] }

[[route]]
rule = "/shop/api/products/<int:product_id>"
app = "legacy"
shadow = { app = "new" }
'''

#: The cart's canary as a rollout: steps of 10, 50 and 100 per cent, judged no sooner than an
#: hour and 100,000 requests (tests move it by command).
ROLLOUT = '''
[apps]
legacy = "tests.apps.shop:legacy"
new = "tests.apps.shop:new"

[mounts]
"/echo" = "tests.thirdapp:echo_app"

[[route]]
rule = "/shop/cart"
app = "legacy"
methods = ["GET"]
canary = { app = "new" }

[route.rollout]
steps = [10, 50, 100]
interval = 3600
requests = 100000
'''
