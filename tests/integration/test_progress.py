"""``gateway progress`` in process (gateway/serve/progress.py): each app's routes from its
framework's own table, who the rules send each to, its share of the counted requests, and
the report's exact lines (tests/system/test_rollout_example.py runs the command for real)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask

from gateway.core.mounts import MountTable
from gateway.migration.rollout_store import DONE, Store
from gateway.migration.rules import parse_gateway_file
from gateway.serve import progress
from gateway.serve.progress import (
    Resolver,
    Route,
    answered_by,
    django_routes,
    flask_routes,
    report,
    routes,
    sample,
    shape,
)
from tests.apps.shop import legacy as legacy_shop

# -- A route's shape and a path it matches ----------------------------------------------------


@pytest.mark.parametrize(("pattern", "shaped"), [
    ("/items/<int:item_id>", "/items/<int>"),
    ("/items/<int:pk>", "/items/<int>"),
    ("/items/<item_id>", "/items/<string>"),
    ("/items/<string:name>", "/items/<string>"),
    ("/items/<str:name>", "/items/<string>"),
    ("/items/<slug:name>", "/items/<string>"),
    ("/items/<default:name>", "/items/<string>"),
    ("/files/<path:rest>", "/files/<path>"),
    ("/at/<uuid:id>/<float:x>", "/at/<uuid>/<float>"),
    ("/<any(a, b):kind>/<int(signed=True):n>", "/<any>/<int>"),
    ("/plain/", "/plain/"),
])
def test_a_shape_drops_the_converters_names_and_variables(pattern: str, shaped: str) -> None:
    assert shape(pattern) == shaped


@pytest.mark.parametrize(("pattern", "path"), [
    ("/items/<int:item_id>/", "/items/1/"),
    ("/files/<path:rest>", "/files/x"),
    ("/at/<uuid:id>", "/at/00000000-0000-0000-0000-000000000001"),
    ("/price/<float:x>", "/price/1.0"),
    ("/items/<name>", "/items/x"),
    ("/items/<string:name>/<str:other>/<slug:s>", "/items/x/x/x"),
    ("/Xmas/<int:a>-<int:b>", "/Xmas/1-1"),
    ("/", "/"),
])
def test_a_sample_puts_a_value_of_its_kind_for_each_converter(pattern: str, path: str) -> None:
    assert sample(pattern) == path


@pytest.mark.parametrize("pattern", [
    "/admin/^(?P<app_label>auth)/$", "^start", "/end$", "/(group)", "/maybe?", "/back\\slash", "/[set]",
    "/<any(a,b):kind>"])
def test_a_regular_expression_gets_no_sample(pattern: str) -> None:
    assert sample(pattern) is None


# -- The frameworks' own tables ---------------------------------------------------------------


def test_flasks_routes_leave_out_the_static_files_head_and_options() -> None:
    app = Flask("progress_test")

    @app.route("/things/<int:n>", methods=["POST", "GET", "DELETE"])
    def things(n: int) -> str:
        return ""

    @app.route("/probe", methods=["OPTIONS"])
    def probe() -> str:
        return ""

    assert next(rule.endpoint for rule in app.url_map.iter_rules()) == "static"
    assert list(flask_routes(app)) == [("/things/<int:n>", ("DELETE", "GET", "POST")), ("/probe", ())]


def test_flasks_routes_of_the_legacy_shop_one_per_view() -> None:
    assert list(flask_routes(legacy_shop)) == [
        ("/shop/", ("GET",)), ("/shop/items/<int:item_id>", ("GET",)), ("/shop/cart", ("GET", "POST")),
        ("/shop/products/<int:product_id>", ("GET",)), ("/shop/products/<int:product_id>", ("POST",)),
        ("/shop/api/products/<int:product_id>", ("GET",))]


def test_djangos_routes_walk_the_included_urlconfs(table: MountTable) -> None:
    from django.conf import settings

    assert settings.ROOT_URLCONF == "django_hello.urls"  # the test process's project
    found = list(django_routes())
    assert found[:4] == [("/", ()), ("/admin/", ()), ("/admin/login/", ()), ("/admin/logout/", ())]
    assert ("/admin/auth/user/<id>/password/", ()) in found
    assert ("/admin/auth/group/<path:object_id>/change/", ()) in found
    assert found[-1] == ("/admin/(?P<url>.*)$", ())
    assert all(pattern.startswith("/") and methods == () for pattern, methods in found)


# -- Which route a request reached --------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "route"), [
    ("GET", "/shop/", "/shop/"),
    ("HEAD", "/shop/cart", "/shop/cart"),
    ("POST", "/shop/cart", "/shop/cart"),
    ("GET", "/shop/items/3", "/shop/items/<int:item_id>"),
    ("POST", "/shop/products/3", "/shop/products/<int:product_id>"),
    ("GET", "/shop/items/x", None),  # no route
    ("GET", "/elsewhere", None),
    ("DELETE", "/shop/cart", None),  # method not allowed
    ("GET", "/shop", None),  # a redirect to /shop/
])
def test_a_flask_path_reaches_its_rule(method: str, path: str, route: str | None) -> None:
    resolver = Resolver(legacy_shop)
    assert resolver.flask
    assert resolver.route(method, path) == route


@pytest.mark.parametrize(("method", "path", "route"), [
    ("GET", "/", "/"),
    ("GET", "/admin/", "/admin/"),
    ("DELETE", "/admin/", "/admin/"),  # Django's resolver does not look at the method
    ("GET", "/admin/r/3/4/", "/admin/r/<path:content_type_id>/<path:object_id>/"),
    ("GET", "/admin/auth/user/5/password/", "/admin/auth/user/<id>/password/"),
    ("GET", "/admin/nothing/here", "/admin/(?P<url>.*)$"),
    ("GET", "/admin", None),  # APPEND_SLASH's redirect is middleware: no route
    ("GET", "/nope", None),
])
def test_a_django_path_reaches_its_pattern(table: MountTable, method: str, path: str, route: str | None) -> None:
    from django_hello.wsgi import application

    resolver = Resolver(application)
    assert not resolver.flask and resolver.adapter is None
    assert resolver.route(method, path) == route


# -- Every app's routes, who answers them and their traffic ---------------------------------------

SITE = '''
[apps]
legacy = "tests.apps.shop:legacy"
new = "tests.apps.shop:new"
dj = "django_hello.wsgi:application"
hello = "flask_hello:app"

[[route]]
rule = "/"
app = "legacy"
shadow = { app = "dj" }

[[route]]
rule = "/greetings"
app = "hello"

[[route]]
rule = "/shop/"
app = "legacy"
canary = { app = "new", share = 12.5 }

[[route]]
rule = "/shop/items/<int:item_id>"
app = "legacy"
shadow = { app = "new" }
canary = { app = "new" }

[route.rollout]
steps = [10, 100]

[[route]]
rule = "/shop/cart"
app = "legacy"
methods = ["GET"]
canary = { app = "new" }

[route.rollout]
steps = [25, 100]

[[route]]
rule = "/shop/api/products/<int:product_id>"
app = "legacy"
canary = { app = "new" }

[route.rollout]
steps = [10, 100]

[[route]]
rule = "/shop/products/<int:product_id>"
app = "legacy"
canary = { app = "new" }

[route.rollout]
steps = [10, 100]
'''

MINUTE = 29_000_000  # the clock's minute in these tests
ITEMS, CART = "~/shop/items/<int:item_id>", "~/shop/cart GET,HEAD"
API, PRODUCTS, SHOP = "~/shop/api/products/<int:product_id>", "~/shop/products/<int:product_id>", "~/shop/"


@pytest.fixture(scope="module")
def site(table: MountTable) -> MountTable:  # the session's table sets Django up
    parsed = parse_gateway_file(SITE)
    return MountTable.from_specs(parsed.mounts, defaults=False, routes=parsed.routes, apps=parsed.apps)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """The site's database, with the rollouts' states; the clock at 59.5 s into ``MINUTE``."""
    monkeypatch.setattr(progress, "time", SimpleNamespace(time=lambda: MINUTE * 60 + 59.5))
    with Store(f"sqlite:///{tmp_path}/r.sqlite3") as store:
        for rule, share in ((ITEMS, 10), (CART, 25), (API, 10), (SHOP, 50)):
            assert store.begin(rule, share, "judge")
        for rule in (API, SHOP):  # handed over; /shop/ has no rollout now, so its row is stale
            state = store.states()[rule]
            assert store.change(state, actor="judge", action="done", reason="", figures={}, status=DONE, step=1,
                                share=100, owner="new")
        yield store


def visit(store: Store, app: str, method: str, path: str, n: int, ago: int = 0, instance: str = "a") -> None:
    store.write_visits(MINUTE - ago, instance, app, method, path, n)


def counted(store: Store) -> None:
    visit(store, "legacy", "GET", "/shop/", 30)
    visit(store, "legacy", "GET", "/shop/", 5, ago=9, instance="b")  # the window's first minute
    visit(store, "legacy", "GET", "/shop/", 1000, ago=10)  # the minute before it
    visit(store, "legacy", "GET", "/shop/items/3", 10, ago=3)
    visit(store, "legacy", "GET", "/shop/items/3", 2, ago=3, instance="b")
    visit(store, "legacy", "GET", "/shop/items/4", 1)
    visit(store, "legacy", "POST", "/shop/cart", 7)
    visit(store, "new", "GET", "/shop/cart", 20)
    visit(store, "legacy", "GET", "/shop/products/5", 3)
    visit(store, "hello", "GET", "/greetings", 16)
    visit(store, "legacy", "GET", "/shop/nothing", 4)  # no route of the app's own: in the total only
    visit(store, "ghost", "GET", "/x", 6)  # an app no rule names now
    visit(store, "dj", "GET", "/admin/", 8)  # no rule reaches it, but it has requests
    visit(store, "dj", "GET", "/admin/nothing/here", 2)  # a regular expression's route
    visit(store, "legacy", "DELETE", "/shop/cart", 2)  # method not allowed
    visit(store, "legacy", "GET", "/shop", 1)  # a redirect


LEGACY_ITEMS = "legacy (shadowed on new); new for 10%"
EXPECTED = [
    Route(app="legacy", pattern="/shop/", methods=("GET",), answered_by="legacy; new for 12.5%", legacy=True,
          ported=False, requests=35),
    Route(app="legacy", pattern="/shop/items/<int:item_id>", methods=("GET",), answered_by=LEGACY_ITEMS,
          legacy=True, ported=True, requests=13),
    Route(app="legacy", pattern="/shop/cart", methods=("GET", "POST"), answered_by="legacy; new for 25%",
          legacy=True, ported=True, requests=7),
    Route(app="legacy", pattern="/shop/products/<int:product_id>", methods=("GET", "POST"), answered_by="legacy",
          legacy=True, ported=True, requests=3),
    Route(app="legacy", pattern="/shop/api/products/<int:product_id>", methods=("GET",),
          answered_by="new (handed over)", legacy=True, ported=True, requests=0),
    Route(app="dj", pattern="/", methods=(), answered_by="legacy (shadowed on dj)", legacy=False, ported=False,
          requests=0),
    Route(app="dj", pattern="/admin/", methods=(), answered_by="-", legacy=False, ported=False, requests=8),
    Route(app="dj", pattern="/admin/(?P<url>.*)$", methods=(), answered_by="?", legacy=False, ported=False,
          requests=2),
    Route(app="hello", pattern="/", methods=("GET",), answered_by="legacy (shadowed on dj)", legacy=True,
          ported=True, requests=0),
    Route(app="hello", pattern="/greetings", methods=("GET",), answered_by="hello", legacy=True, ported=False,
          requests=16),
    Route(app="new", pattern="/shop/cart", methods=("GET",), answered_by="legacy; new for 25%", legacy=False,
          ported=False, requests=20),
    Route(app="new", pattern="/shop/items/<int:item_id>", methods=("GET", "POST"), answered_by=LEGACY_ITEMS,
          legacy=False, ported=False, requests=0),
    Route(app="new", pattern="/shop/products/<int:product_id>", methods=("GET",), answered_by="legacy",
          legacy=False, ported=False, requests=0),
    Route(app="new", pattern="/shop/api/products/<int:product_id>", methods=("GET",),
          answered_by="new (handed over)", legacy=False, ported=False, requests=0),
]


def test_each_apps_routes_with_who_answers_them_and_their_requests_in_the_window(site: MountTable,
                                                                                   store: Store) -> None:
    counted(store)
    found, total = routes(site, store, 10)
    assert total == 35 + 13 + 7 + 20 + 3 + 16 + 4 + 6 + 8 + 2 + 2 + 1
    assert found == EXPECTED


def test_a_window_of_one_minute_counts_this_minute_alone(site: MountTable, store: Store) -> None:
    counted(store)
    found, total = routes(site, store, 1)
    assert total == 30 + 1 + 7 + 20 + 3 + 16 + 4 + 6 + 8 + 2 + 2 + 1
    assert [(r.app, r.pattern, r.requests) for r in found if r.requests] == [
        ("legacy", "/shop/", 30), ("legacy", "/shop/items/<int:item_id>", 1), ("legacy", "/shop/cart", 7),
        ("legacy", "/shop/products/<int:product_id>", 3), ("dj", "/admin/", 8),
        ("dj", "/admin/(?P<url>.*)$", 2), ("hello", "/greetings", 16), ("new", "/shop/cart", 20)]


def test_without_counts_a_new_apps_routes_no_rule_reaches_are_left_out(site: MountTable, store: Store) -> None:
    found, total = routes(site, store, 60)
    assert total == 0
    assert found == [dataclasses.replace(route, requests=0) for route in EXPECTED
                     if route.legacy or route.answered_by not in ("-", "?")]
    assert [(r.app, r.pattern) for r in found if not r.legacy] == [
        ("dj", "/"), ("new", "/shop/cart"), ("new", "/shop/items/<int:item_id>"),
        ("new", "/shop/products/<int:product_id>"), ("new", "/shop/api/products/<int:product_id>")]


def test_the_report_of_the_site(site: MountTable, store: Store) -> None:
    counted(store)
    found, total = routes(site, store, 10)
    assert report(found, total, 10) == [
        "Requests through the route rules over the last 10 min: 117.",
        "APP        ROUTE                                ANSWERED BY                    PORTED  TRAFFIC",
        "dj         /                                    legacy (shadowed on dj)        port    0.0% (0)",
        "dj         /admin/                              -                              port    6.8% (8)",
        "dj         /admin/(?P<url>.*)$                  ?                              port    1.7% (2)",
        "hello      /                                    legacy (shadowed on dj)        yes     0.0% (0)",
        "hello      /greetings                           hello                          -       13.7% (16)",
        "legacy     /shop/                               legacy; new for 12.5%          -       29.9% (35)",
        "legacy     /shop/api/products/<int:product_id>  new (handed over)              yes     0.0% (0)",
        "legacy     /shop/cart                           legacy; new for 25%            yes     6.0% (7)",
        "legacy     /shop/items/<int:item_id>            legacy (shadowed on new); new for 10% yes     11.1% (13)",
        "legacy     /shop/products/<int:product_id>      legacy                         yes     2.6% (3)",
        "new        /shop/api/products/<int:product_id>  new (handed over)              port    0.0% (0)",
        "new        /shop/cart                           legacy; new for 25%            port    17.1% (20)",
        "new        /shop/items/<int:item_id>            legacy (shadowed on new); new for 10% port    0.0% (0)",
        "new        /shop/products/<int:product_id>      legacy                         port    0.0% (0)",
        "",
        "Still to port, by traffic:",
        "  1. legacy /shop/: 29.9% of requests (35)",
        "  2. hello /greetings: 13.7% of requests (16)",
    ]


# -- Who answers a route ------------------------------------------------------------------------


def rules_of(site: MountTable) -> Any:
    rules = site.route_table
    assert rules is not None
    return rules


@pytest.mark.parametrize(("pattern", "answer"), [
    ("/shop/", "legacy; new for 12.5%"),  # the rule's own share: no rollout (its stale state is not read)
    ("/shop/cart", "legacy"),  # a rollout not begun: no share yet
    ("/shop/api/products/<int:product_id>", "legacy"),
    ("/shop/items/<int:n>", "legacy (shadowed on new)"),
    ("/", "legacy (shadowed on dj)"),
    ("/greetings", "hello"),
    ("/nowhere", "-"),
    ("/admin/^(?P<app_label>auth)/$", "?"),
])
def test_who_answers_without_rollout_states(site: MountTable, pattern: str, answer: str) -> None:
    rules = rules_of(site)
    assert answered_by(rules, {}, pattern) == answer


def test_a_rollout_at_0_percent_or_with_an_empty_owner_is_the_rules_first_app(site: MountTable,
                                                                                 store: Store) -> None:
    rules = rules_of(site)
    for rule in (CART, API):
        state = store.states()[rule]
        assert store.change(state, actor="judge", action="rollback", reason="", figures={}, status="rolled back",
                            step=-1, share=0, owner="")
    states = store.states()
    assert answered_by(rules, states, "/shop/cart") == "legacy"
    assert answered_by(rules, states, "/shop/api/products/<int:product_id>") == "legacy"
    assert answered_by(rules, states, "/shop/items/<int:item_id>") == LEGACY_ITEMS


# -- The report's lines -------------------------------------------------------------------------


def route(app: str, pattern: str, requests: int, *, legacy: bool = True, ported: bool = False,
          answered: str = "old") -> Route:
    return Route(app=app, pattern=pattern, methods=("GET",), answered_by=answered, legacy=legacy, ported=ported,
                 requests=requests)


def test_the_legacy_routes_left_are_ranked_by_their_requests() -> None:
    found = [route("old", "/a", 1), route("old", "/b", 6), route("old", "/c", 0), route("old", "/d", 3, ported=True),
             route("new", "/e", 9, legacy=False), route("other", "/f", 2)]
    assert report(found, 21, 30) == [
        "Requests through the route rules over the last 30 min: 21.",
        "APP        ROUTE                                ANSWERED BY                    PORTED  TRAFFIC",
        "new        /e                                   old                            port    42.9% (9)",
        "old        /a                                   old                            -       4.8% (1)",
        "old        /b                                   old                            -       28.6% (6)",
        "old        /c                                   old                            -       0.0% (0)",
        "old        /d                                   old                            yes     14.3% (3)",
        "other      /f                                   old                            -       9.5% (2)",
        "",
        "Still to port, by traffic:",
        "  1. old /b: 28.6% of requests (6)",
        "  2. other /f: 9.5% of requests (2)",
        "  3. old /a: 4.8% of requests (1)",
    ]


def test_with_every_legacy_route_ported_the_report_says_so() -> None:
    found = [route("old", "/a", 2, ported=True), route("new", "/a", 1, legacy=False), route("old", "/b", 0)]
    assert report(found, 3, 60)[-2:] == ["", "No legacy route with traffic is left without a port."]
    assert report(found, 3, 60)[2:5] == [
        "new        /a                                   old                            port    33.3% (1)",
        "old        /a                                   old                            yes     66.7% (2)",
        "old        /b                                   old                            -       0.0% (0)"]


def test_without_traffic_the_shares_are_dashes_and_the_report_says_why() -> None:
    found = [route("old", "/a", 0), route("a-long-app-name", "/" + "x" * 40, 0, answered="y" * 33)]
    assert report(found, 0, 5) == [
        "Requests through the route rules over the last 5 min: 0.",
        "APP        ROUTE                                ANSWERED BY                    PORTED  TRAFFIC",
        f"a-long-app-name /{'x' * 40} {'y' * 33} -       -",
        "old        /a                                   old                            -       -",
        "",
        "No traffic counted in the window (counts are kept while a rule has a rollout).",
    ]
    assert report([], 0, 5)[-1] == "No traffic counted in the window (counts are kept while a rule has a rollout)."


# -- A regular expression in an included URLconf -------------------------------------------------

APP_INDEX = "/admin/(?P<app_label>django_hello|auth|axes)/$"  # admin's app index: re_path("^(?P<app_label>...)/$")


def test_an_included_regular_expression_is_listed_as_djangos_resolver_names_it(table: MountTable) -> None:
    from django_hello.wsgi import application

    assert Resolver(application).route("GET", "/admin/auth/") == APP_INDEX  # Django drops the included "^"
    assert (APP_INDEX, ()) in list(django_routes())


def test_the_requests_of_an_included_regular_expression_are_its_own(site: MountTable, store: Store) -> None:
    visit(store, "dj", "GET", "/admin/auth/", 3)
    found, total = routes(site, store, 10)
    assert total == 3
    assert [(r.app, r.pattern, r.answered_by, r.requests) for r in found if r.requests] == [("dj", APP_INDEX, "?", 3)]


def test_a_route_two_legacy_apps_share_is_no_port(table: MountTable, store: Store) -> None:
    parsed = parse_gateway_file('''
[apps]
legacy = "tests.apps.shop:legacy"
new = "tests.apps.shop:new"

[[route]]
rule = "/shop/"
app = "legacy"

[[route]]
rule = "/shop/cart"
app = "new"
''')  # no canary and no shadow: both apps are legacy ones
    both = MountTable.from_specs(parsed.mounts, defaults=False, routes=parsed.routes, apps=parsed.apps)
    visit(store, "legacy", "GET", "/shop/cart", 4)
    visit(store, "new", "GET", "/shop/cart", 6)
    found, total = routes(both, store, 10)
    assert [(r.app, r.pattern, r.answered_by, r.legacy, r.ported, r.requests) for r in found] == [
        ("legacy", "/shop/", "legacy", True, False, 0),
        ("legacy", "/shop/items/<int:item_id>", "-", True, False, 0),
        ("legacy", "/shop/cart", "new", True, False, 4),
        ("legacy", "/shop/products/<int:product_id>", "-", True, False, 0),
        ("legacy", "/shop/api/products/<int:product_id>", "-", True, False, 0),
        ("new", "/shop/cart", "new", True, False, 6),
        ("new", "/shop/items/<int:item_id>", "-", True, False, 0),
        ("new", "/shop/products/<int:product_id>", "-", True, False, 0),
        ("new", "/shop/api/products/<int:product_id>", "-", True, False, 0)]
    assert report(found, total, 10)[-3:] == [
        "Still to port, by traffic:", "  1. new /shop/cart: 60.0% of requests (6)",
        "  2. legacy /shop/cart: 40.0% of requests (4)"]



def a_view(request: Any) -> Any:
    raise AssertionError("not called: the resolver only matches")


def test_each_regular_expression_is_listed_as_its_requests_resolve(table: MountTable) -> None:
    from django.test import override_settings
    from django.urls import include, path, re_path

    from django_hello.wsgi import application

    class RegexURLs:  # a URLconf (any object with urlpatterns): at the top, under "", two includes deep
        urlpatterns = [re_path(r"^feed/(?P<n>[0-9]+)$", a_view),
                       path("", include([re_path(r"^x/$", a_view)])),
                       path("a/", include([path("", include([re_path(r"^c$", a_view)]))]))]

    with override_settings(ROOT_URLCONF=RegexURLs):
        listed = list(django_routes())
        reached = [Resolver(application).route("GET", path) for path in ("/feed/12", "/x/", "/a/c")]
    assert listed == [("/^feed/(?P<n>[0-9]+)$", ()), ("/^x/$", ()), ("/a/c$", ())]
    assert reached == [pattern for pattern, _ in listed]
