"""Route rules: apps sharing one URL space (gateway.toml), through both entry points in
process (tests/system/test_routes_servers.py: the ``gateway routes`` command and reloads on
real servers)."""

from __future__ import annotations

import io
import json
import pickle
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.config import Config
from gateway.core.mounts import MountTable
from gateway.migration.rules import NO_MATCH, ConfigFileError, Match, RouteSpec, RouteTable, parse_gateway_file
from gateway.migration.shadow import Shadower
from tests.apps.shop import CANARY, SHADOW, SHOP
from tests.entries import BASE, ENTRIES, Send, config_with, rule_table, who


def table_from(text: str) -> MountTable:
    parsed = parse_gateway_file(text)
    return MountTable.from_specs(parsed.mounts, routes=parsed.routes, apps=parsed.apps)


@pytest.fixture(scope="module")
def shop_table(table: MountTable) -> MountTable:  # the session's table configures Django
    shop = table_from(SHOP)
    return MountTable([*table, *shop], shop.routes.values(), shop.route_table)


@pytest.fixture(params=sorted(ENTRIES))
def shop(request: pytest.FixtureRequest, shop_table: MountTable) -> Iterator[Send]:
    send, app = ENTRIES[request.param](shop_table, config_with())
    yield send
    if hasattr(app, "executor"):
        app.executor.shutdown(wait=True)


def test_the_most_specific_rule_wins_and_nothing_is_stripped(shop: Send) -> None:
    cart = shop("GET", "/shop/cart").json()
    assert (cart["app"], cart["script_name"], cart["path"]) == ("new", "", "/shop/cart")
    assert cart["cart"] == "/shop/cart"  # url_for needs no change
    other = shop("GET", "/shop/anything/else")  # /shop/<path:rest>: the legacy app's own 404
    assert other.status == 404 and b"The requested URL was not found on the server" in other.body
    index = shop("GET", "/shop/").json()
    assert (index["app"], index["items"], index["cart"]) == ("legacy", "/shop/items/7", "/shop/cart")


def test_a_rule_limited_to_methods_leaves_the_others_to_the_next_rule(shop: Send) -> None:
    posted = shop("POST", "/shop/cart", {"Content-Type": "text/plain"}, b"two apples")
    assert posted.status == 200
    assert (posted.json()["app"], posted.json()["body"]) == ("legacy", "two apples")


def test_a_path_only_other_methods_take_is_a_405_with_allow(shop: Send) -> None:
    answer = shop("GET", "/only-post")
    assert answer.status == 405 and answer.get("Allow") == "POST"
    assert shop("POST", "/only-post").status == 404  # the legacy app has no such page: its own 404


def test_prefix_mounts_and_the_gateways_pages_still_answer(shop: Send) -> None:
    assert shop("GET", "/echo/x").json()["SCRIPT_NAME"] == "/echo"
    assert shop("GET", "/flask/").status == 200
    assert shop("GET", "/nowhere").status == 404


def test_a_404_to_get_falls_back_to_the_next_app(shop: Send, shop_table: MountTable) -> None:
    key = next(k for k in shop_table.routes if "items" in k)
    before = shop_table.route_table.fallbacks[key]  # type: ignore[union-attr]
    ported = shop("GET", "/shop/items/7").json()
    assert (ported["app"], ported["id"]) == ("new", 7)
    legacy = shop("GET", "/shop/items/500")
    assert legacy.status == 200 and legacy.json()["app"] == "legacy"
    assert b"not here" not in legacy.body  # nothing of the passed-over 404 reaches the client
    head = shop("HEAD", "/shop/items/500")
    assert head.status == 200 and head.body == b""
    assert shop_table.route_table.fallbacks[key] - before == 2  # type: ignore[union-attr]


def test_no_other_method_ever_falls_back(shop: Send, shop_table: MountTable) -> None:
    key = next(k for k in shop_table.routes if "items" in k)
    before = shop_table.route_table.fallbacks[key]  # type: ignore[union-attr]
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        answer = shop(method, "/shop/items/500", {"Content-Type": "text/plain"}, b"x")
        assert answer.status in (404, 405), (method, answer.status)
        assert b"legacy" not in answer.body
    assert shop_table.route_table.fallbacks[key] == before  # type: ignore[union-attr]


@pytest.fixture(params=sorted(ENTRIES))
def rules_of(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Build an entry point (``wsgi``, then ``asgi``) over route rules answered by app objects:
    ``rules_of(specs, apps)`` gives its ``send`` and the rules' table."""
    built: list[Any] = []

    def build(specs: list[RouteSpec], apps: dict[str, Any], shadower: Any = None) -> tuple[Send, RouteTable]:
        table = rule_table(specs, apps, shadower)
        send, app = ENTRIES[request.param](table, config_with())
        built.append(app)
        assert table.route_table is not None
        return send, table.route_table

    yield build
    for app in built:
        if hasattr(app, "executor"):
            app.executor.shutdown(wait=True)


def test_a_fallback_past_every_app_is_the_last_apps_404(rules_of: Any) -> None:
    def not_found(app: str) -> Any:
        def answer(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [f"{app} has no such page".encode()]
        return answer

    spec = RouteSpec("/x", ("a", "b"))
    send, routes = rules_of([spec], {"a": not_found("a"), "b": not_found("b")})
    answer = send("GET", "/x")
    assert (answer.status, answer.body) == (404, b"b has no such page")
    assert routes.fallbacks[spec.key] == 1


def test_a_generator_app_that_starts_its_response_late_falls_back_too(rules_of: Any) -> None:
    closed: list[str] = []

    class Late:
        def __init__(self, environ: dict[str, Any], start_response: Any) -> None:
            self.start_response = start_response

        def __iter__(self) -> Iterator[bytes]:
            self.start_response("404 Not Found", [])
            yield b"late 404"

        def close(self) -> None:
            closed.append("late")

    def found(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"found"]

    spec = RouteSpec("/y", ("late", "found"))
    send, routes = rules_of([spec], {"late": Late, "found": found})
    answer = send("GET", "/y")
    assert (answer.status, answer.body, closed, routes.fallbacks[spec.key]) == (200, b"found", ["late"], 1)


def test_explain_says_which_rule_answers_and_why() -> None:
    routes = RouteTable(parse_gateway_file(SHOP).routes)
    lines = routes.explain("/shop/cart")
    assert lines[0] == "GET /shop/cart matches rule '/shop/cart' (line 17)."
    assert "'/shop/<path:rest>'" in lines[1]
    assert lines[2] == "App 'new' answers it, with SCRIPT_NAME \"\" and PATH_INFO '/shop/cart'."
    assert routes.explain("/shop/items/3")[-1] == (
        "App 'new' answers it; on a 404 to GET or HEAD, 'legacy' is asked next.")
    assert routes.explain("/only-post") == ["GET /only-post: rules match this path for POST only: 405."]
    assert routes.explain("/flask/")[0].endswith("matches no rule: the prefix mounts, then the gateway's own "
                                                 "pages, answer it.")


@pytest.mark.parametrize(("text", "message"), [
    pytest.param("[apps\nx = 1", "gateway.toml: Expected ']' at the end of a table declaration (at line 1, "
                 "column 6).", id="toml-syntax"),
    pytest.param('[apps]\nshop = "m:a"\n\n[[route]]\nrule = "/a"\napp = "nope"\n',
                 "gateway.toml, line 4: app 'nope' is not in [apps] (known: shop).", id="unknown-app"),
    pytest.param('[apps]\nshop = "m:a"\n[[route]]\nrule = "/a/<nope:x>"\napp = "shop"\n',
                 "gateway.toml, line 3: rule '/a/<nope:x>' is not a Werkzeug rule: ", id="bad-converter"),
    pytest.param('[apps]\nshop = "m:a"\n[[route]]\nrule = "a"\napp = "shop"\n',
                 'gateway.toml, line 3: rule must be a path starting with "/"', id="relative-rule"),
    pytest.param('[apps]\nshop = "m:a"\n[[route]]\nrule = "/a"\napp = "shop"\nmethods = ["FETCH"]\n',
                 "gateway.toml, line 3: methods must be a list of HTTP methods", id="bad-method"),
    pytest.param('[apps]\nshop = "m:a"\n[[route]]\nrule = "/a"\napp = "shop"\n[[route]]\nrule = "/a"\napp = "shop"\n',
                 "gateway.toml, line 6: rule '/a' repeats the rule of line 3.", id="duplicate"),
    pytest.param('[apps]\nshop = "m:a"\n[[route]]\nrule = "/a"\napp = "shop"\nweight = 3\n',
                 "gateway.toml, line 3: unknown key 'weight' in [[route]]", id="unknown-key"),
    pytest.param('[apps]\nshop = "m:a"\n\n[routes]\nx = 1\n', "gateway.toml, line 4: unknown table or key 'routes'",
                 id="unknown-table"),
])
def test_a_bad_file_is_refused_with_one_line_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(ConfigFileError) as refused:
        parse_gateway_file(text)
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)


def ruled(rule: str) -> str:
    """A gateway.toml with one rule, on line 4."""
    return f'[apps]\nshop = "m:a"\n\n[[route]]\nrule = "{rule}"\napp = "shop"\n'


@pytest.mark.parametrize(("rule", "message"), [
    pytest.param("/a/<x>/<x>", "has two variables named 'x'", id="repeated-name"),
    pytest.param("/a/<string(length=99999999999):x>", "length must be a whole number from 1 to 1048576",
                 id="length-too-large"),
    pytest.param("/a/<string(length=0):x>", "length must be a whole number from 1", id="length-zero"),
    pytest.param("/a/<string(minlength=5, maxlength=2):x>", "minlength is more than maxlength", id="min-over-max"),
    pytest.param("/a/<string(length=3, maxlength=5):x>", "give length, or minlength and maxlength",
                 id="length-and-max"),
    pytest.param("/a/<int(min=abc):x>", "min must be a whole number, e.g. <int(min=1):x>", id="int-min-text"),
    pytest.param("/a/<int(min=1.5):x>", "min must be a whole number", id="int-min-fraction"),
    pytest.param("/a/<int(min=5, max=2):x>", "min is more than max", id="int-min-over-max"),
    pytest.param("/a/<int(signed=1):x>", "signed must be True or False", id="signed-number"),
    pytest.param("/a/<int(fixed_digits=5000):x>", "fixed_digits must be a whole number from 1 to Python's limit",
                 id="digits-past-int"),
    pytest.param("/a/<int(base=16):x>", "int has no argument 'base' (it takes fixed_digits, min, max, signed)",
                 id="unknown-argument"),
    pytest.param("/a/<int(1, 2, 3, True, 5):x>", "int takes at most 4 arguments", id="too-many"),
    pytest.param("/a/<float(max=nan):x>", "max must be a number", id="float-nan"),
    pytest.param("/a/<path(1):x>", "path takes no arguments", id="path-argument"),
    pytest.param("/a/<any():x>", "any takes one or more words", id="any-empty"),
    pytest.param("/a/<any(1, 2):x>", 'quoted if they are numbers: <any(new, used, "2"):x>', id="any-numbers"),
    pytest.param("/a/<int(min=):x>", "cannot read 'min=' as an argument", id="argument-without-value"),
    pytest.param("/a/<int(min=1, max=2 3):x>", "max must be a whole number", id="two-words"),
    pytest.param("/s" * 1500 + "/<int:n>", "has 1501 segments; a rule has at most 100", id="1501-segments"),
    pytest.param("/f/<path:a>/<path:b>/<path:c>/raw", "could take time that grows faster than the path: it has 3 "
                 "path converters (a, b, c)", id="three-paths"),
    pytest.param("/a/<slug>-<int:id>", "slug, id share a segment and vary in length", id="two-in-a-segment"),
    pytest.param("/a/<path:p>.<ext>", "p, ext share a segment", id="path-and-another"),
    pytest.param('/a/<any(x, xy):k><rest>', "k, rest share a segment", id="any-of-two-lengths"),
])
def test_a_rule_werkzeug_takes_but_cannot_work_is_refused_with_its_line(rule: str, message: str) -> None:
    """Werkzeug accepts these, then crashes (repeated names, huge lengths), fails every
    request (int(min=abc)) or backtracks for seconds on a long path (several path
    converters): the file is refused with one line naming the rule and its line."""
    with pytest.raises(ConfigFileError) as refused:
        parse_gateway_file(ruled(rule))
    assert str(refused.value).startswith(f"gateway.toml, line 4: rule {rule!r} ")
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("rule", [
    "/f/<path:a>/raw", "/a/<name>.json", "/a/<uuid:u>-<name>", "/a/<string(length=3):x><y>",
    "/<path:p>/<a>/<int:b>", "/a/<any(x, y):k>-<int:n>", "/a/<int(min=1, max=9, signed=True):n>",
    "/a/<string(minlength=2, maxlength=5):s>", "/a/<float(min=0.5):f>", "/a/<int(4):n>", "/s" * 99 + "/<int:n>",
])
def test_rules_with_one_way_to_match_are_taken(rule: str) -> None:
    assert [spec.rule for spec in parse_gateway_file(ruled(rule)).routes] == [rule]


@pytest.mark.parametrize(("text", "message"), [
    pytest.param("[gateway]\nx = " + "[" * 5000 + "]" * 5000 + "\n", "gateway.toml, line 2: arrays or tables nest "
                 "more than 100 deep", id="5000-deep-array"),
    pytest.param('[apps]\nshop = "m:a"\n# [[[[ ]\nx = { a = { b = "[[[[" } }\ny = ' + "[" * 5000 + "]" * 5000,
                 "gateway.toml, line 5: arrays or tables nest more than 100 deep", id="deep-after-strings"),
    pytest.param('[apps]\nshop = "m:a"\n[[route]]\nrule = "/a"\napp = "shop"\ncanary = { app = ["shop"] }\n',
                 "gateway.toml, line 3: canary app ['shop'] is not in [apps].", id="canary-app-list"),
    pytest.param('[apps]\nshop = "m:a"\n[[route]]\nrule = "/a"\napp = "shop"\nshadow = { app = 3 }\n',
                 "gateway.toml, line 3: shadow app 3 is not in [apps].", id="shadow-app-number"),
    pytest.param('\nx.a.b = 1\n', "gateway.toml, line 2: unknown table or key 'x'", id="dotted-key"),
    pytest.param('\n\n[x.a]\nb = 1\n', "gateway.toml, line 3: unknown table or key 'x'", id="dotted-table"),
    pytest.param('route = [1]\n[apps]\nshop = "m:a"\n', "gateway.toml, line 1: routes are written [[route]], each "
                 "a table", id="route-not-a-table"),
])
def test_a_file_tomllib_reads_but_that_cannot_work_is_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigFileError) as refused:
        parse_gateway_file(text)
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    from gateway.migration.rules import read_gateway_file

    path = tmp_path / "gateway.toml"
    path.write_bytes(b'[apps]\nshop = "caf\xe9:app"\n')
    with pytest.raises(ConfigFileError, match=r"gateway.toml: is not UTF-8 text \(byte 18 cannot be read\); save it "
                       "as UTF-8.$"):
        read_gateway_file(path)


ARGUMENT_TEXT = st.sampled_from(["1", "0", "-1", "2.5", "abc", "True", "None", '"x"', "'y,z'", "", "99999999999",
                                 "1e400", "nan", "inf", "(", ")", ",", "=", ">", "<", "/", ":"])
CONVERTER_NAME = st.sampled_from(["", "int", "float", "string", "default", "path", "any", "uuid", "nope", "int "])
ARGUMENT_NAME = st.sampled_from(["", "min", "max", "length", "minlength", "maxlength", "fixed_digits", "signed",
                                 "x"])


@st.composite
def rule_texts(draw: st.DrawFn) -> str:
    """Rules in Werkzeug's syntax and near it: converters with arguments of every kind."""
    pieces = []
    for index in range(draw(st.integers(1, 4))):
        pieces.append(draw(st.sampled_from(["/", "/a", "-", ".", "/b/", "x", "<", ">", "//"])))
        name = draw(st.sampled_from([f"v{index}", "v0", "1x", ""]))
        converter = draw(CONVERTER_NAME)
        arguments = ", ".join(f"{key}={value}" if key else value for key, value in draw(
            st.lists(st.tuples(ARGUMENT_NAME, ARGUMENT_TEXT), max_size=3)))
        if converter:
            converter += f"({arguments}):" if draw(st.booleans()) else ":"
        pieces.append(f"<{converter}{name}>")
    return "/" + "".join(pieces).lstrip("/")


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(rule_texts(), st.lists(st.sampled_from(["/a/1", "/a/x", "/b/1.5/c", "/a/" + "1" * 5000, "/a/x\ny",
                                                "//a/1", "/a/\u0661", "/" + "a/" * 800 + "x"]), max_size=4))
def test_a_rule_is_refused_with_one_line_or_matches_without_error(rule: str, paths: list[str]) -> None:
    """Any rule text: the file is refused with one ConfigFileError line, or its rule
    table is built and matches paths without raising."""
    text = ruled(rule.replace("\\", "\\\\").replace('"', '\\"'))
    try:
        parsed = parse_gateway_file(text)
    except ConfigFileError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("gateway.toml, line 4: "), exc
        return
    table = RouteTable(parsed.routes)
    for path in paths:
        assert table.match(path, "GET") in (NO_MATCH, table.matches[parsed.routes[0].key])


ASGI_RULES = '''
[apps]
legacy = "tests.thirdapp:echo_app"
items = "tests.thirdapp:asgi_items"

[[route]]
rule = "/own/<int:n>"
app = "items"

[[route]]
rule = "/chain/<int:n>"
app = ["items", "legacy"]

[[route]]
rule = "/back/<int:n>"
app = ["legacy", "items"]

[[route]]
rule = "/canary/<int:n>"
app = "legacy"
canary = { app = "items", share = 100 }

[[route]]
rule = "/shadowed/<int:n>"
app = "legacy"
shadow = { app = "items" }
'''


@pytest.fixture(params=sorted(ENTRIES))
def asgi_rules(request: pytest.FixtureRequest, table: MountTable, tmp_path: Path) -> Iterator[tuple[Send, Any]]:
    parsed = parse_gateway_file(ASGI_RULES)
    rules = MountTable.from_specs((), defaults=False, routes=parsed.routes, apps=parsed.apps,
                                  shadow_log=tmp_path / "shadow.jsonl")
    combined = MountTable([*table], rules.routes.values(), rules.route_table)
    combined.route_apps = rules.route_apps
    send, app = ENTRIES[request.param](combined, config_with())
    yield send, rules.route_table
    if hasattr(app, "executor"):
        app.executor.shutdown(wait=True)


def test_a_rule_can_name_an_asgi_app_as_owner_fallback_canary_or_shadow(asgi_rules: tuple[Send, Any]) -> None:
    send, routes = asgi_rules
    owned = send("GET", "/own/3")
    assert (owned.status, owned.body) == (200, b"asgi item 3")
    assert owned.get("X-Request-ID") and owned.get("X-Content-Type-Options") == "nosniff"  # completed as any
    assert send("GET", "/own/12").status == 404
    assert send("GET", "/chain/4").body == b"asgi item 4"  # the ASGI app first, and it has it
    fell = send("GET", "/chain/12")  # its 404 passed over: the WSGI app answers
    assert fell.status == 200 and fell.json()["PATH_INFO"] == "/chain/12"
    assert send("GET", "/back/5").json()["PATH_INFO"] == "/back/5"  # the WSGI app first, and it answers
    canary = send("GET", "/canary/6")
    assert (canary.status, canary.body) == (200, b"asgi item 6") and "gateway_canary=" in canary.get("Set-Cookie")
    shadowed = send("GET", "/shadowed/7")
    assert shadowed.json()["PATH_INFO"] == "/shadowed/7"  # the primary answers; the ASGI candidate is compared
    routes.shadower.drain()
    key = next(k for k in routes.specs if routes.specs[k].rule == "/shadowed/<int:n>")
    assert routes.shadower.counts[key] == {"compared": 1, "different": 1}
    ready = send("GET", "/readyz").json()["checks"]  # each app once, the ASGI one too (a 404 is below 500)
    assert (ready["app:items"], ready["app:legacy"]) == ("ok", "ok")


NATIVE_RULES = '''
[apps]
legacy = "tests.thirdapp:echo_app"
where = "tests.thirdapp:asgi_where"
wsgi_where = "tests.thirdapp:wsgi_where"
candidate = "tests.thirdapp:asgi_candidate"
big = "tests.thirdapp:big_answer"

[[route]]
rule = "/asgi-first/<int:n>"
app = ["where", "wsgi_where"]
fallback_methods = ["GET", "POST"]

[[route]]
rule = "/wsgi-first/<int:n>"
app = ["wsgi_where", "where"]
fallback_methods = ["GET", "POST"]

[[route]]
rule = "/shadowed/<int:n>"
app = "legacy"
shadow = { app = "candidate" }

[[route]]
rule = "/big"
app = "big"
shadow = { app = "candidate" }
'''


def native_rules(kind: str, table: MountTable, tmp_path: Path) -> tuple[Send, Any, Any]:
    parsed = parse_gateway_file(NATIVE_RULES)
    rules = MountTable.from_specs((), defaults=False, routes=parsed.routes, apps=parsed.apps,
                                  shadow_log=tmp_path / "shadow.jsonl")
    combined = MountTable([*table], rules.routes.values(), rules.route_table)
    send, app = ENTRIES[kind](combined, config_with())
    return send, app, rules.route_table


@pytest.fixture
def both(table: MountTable, tmp_path: Path) -> Iterator[dict[str, tuple[Send, Any]]]:
    """The same rules behind each entry point: ``{kind: (send, route table)}``."""
    built = {kind: native_rules(kind, table, tmp_path / kind) for kind in ENTRIES}
    for kind in ENTRIES:
        (tmp_path / kind).mkdir()
    yield {kind: (send, routes) for kind, (send, _, routes) in built.items()}
    for _, app, _ in built.values():
        if hasattr(app, "executor"):
            app.executor.shutdown(wait=True)


def without_a2wsgi(answer: Any) -> tuple[int, str | None, dict[str, Any]]:
    seen = dict(answer.json())
    seen.pop("a2wsgi")
    return answer.status, answer.get("Content-Type"), seen


@pytest.mark.parametrize(("method", "path", "app"), [
    pytest.param("GET", "/asgi-first/3", "asgi_where", id="asgi-first-answers"),
    pytest.param("GET", "/asgi-first/12", "wsgi_where", id="asgi-first-falls-to-wsgi"),
    pytest.param("GET", "/wsgi-first/12", "wsgi_where", id="wsgi-first-answers"),
    pytest.param("GET", "/wsgi-first/3", "asgi_where", id="wsgi-first-falls-to-asgi"),
    pytest.param("POST", "/asgi-first/12", "wsgi_where", id="post-asgi-first-falls-to-wsgi"),
    pytest.param("POST", "/wsgi-first/3", "asgi_where", id="post-wsgi-first-falls-to-asgi"),
])
def test_an_asgi_app_in_a_chain_answers_alike_on_both_sides(both: dict[str, tuple[Send, Any]], method: str,
                                                            path: str, app: str) -> None:
    body = b"" if method == "GET" else b"name=caf\xc3\xa9&n=1" * 3
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
    answers = {kind: send(method, path, headers, body) for kind, (send, _) in both.items()}
    assert without_a2wsgi(answers["wsgi"]) == without_a2wsgi(answers["asgi"])
    seen = answers["asgi"].json()
    assert (answers["asgi"].status, seen["app"], seen["path"], seen["method"]) == (200, app, path, method)
    assert seen["body"] == body.decode("latin-1")  # the whole body, also for the app after a passed-over 404
    for _, routes in both.values():
        assert sum(routes.fallbacks.values()) == (1 if path in ("/asgi-first/12", "/wsgi-first/3") else 0)


@pytest.mark.parametrize("path", ["/asgi-first/3", "/wsgi-first/3"])
def test_on_gateway_asgi_an_asgi_app_of_a_chain_is_called_natively(both: dict[str, tuple[Send, Any]],
                                                                  path: str) -> None:
    """a2wsgi hands an ASGI app a scope with the WSGI environ in it (``wsgi_environ``): on
    gateway.wsgi it must run the ASGI app so, on gateway.asgi it must not."""
    assert both["asgi"][0]("GET", path).json()["a2wsgi"] is False
    assert both["wsgi"][0]("GET", path).json()["a2wsgi"] is True


@pytest.mark.parametrize("size", [70_000, 300_000])  # past the 64 KiB kept in memory: from a temporary file
def test_a_long_post_falls_through_whole_on_both_sides(both: dict[str, tuple[Send, Any]], size: int) -> None:
    body = bytes(range(256)) * (size // 256)
    for kind, (send, _) in both.items():
        for path, app in (("/asgi-first/12", "wsgi_where"), ("/wsgi-first/3", "asgi_where")):
            answer = send("POST", path, {"Content-Type": "application/octet-stream"}, body)
            assert (answer.status, answer.json()["app"]) == (200, app), kind
            assert answer.json()["body"].encode("latin-1") == body, (kind, path)


def test_on_gateway_wsgi_an_asgi_404_passed_over_leaves_no_task_behind(table: MountTable, tmp_path: Path) -> None:
    """a2wsgi runs an ASGI app as its iterable is drawn; one closed early left the app's
    send waiting, a task pending on a2wsgi's loop for ever, one per passed-over 404."""
    import asyncio

    send, app, routes = native_rules("wsgi", table, tmp_path)
    key = next(k for k in routes.specs if routes.specs[k].rule == "/asgi-first/<int:n>")
    loop = app.apps[key].app.loop  # the a2wsgi middleware's own event loop

    async def others() -> int:
        return len(asyncio.all_tasks()) - 1  # this coroutine's own task aside

    for _ in range(3):
        assert send("GET", "/asgi-first/12").json()["app"] == "wsgi_where"
    assert asyncio.run_coroutine_threadsafe(others(), loop).result(10) == 0


def test_an_asgi_shadow_candidate_is_replayed_natively_off_the_serving_thread(
        both: dict[str, tuple[Send, Any]]) -> None:
    import threading

    from tests.thirdapp import CANDIDATE_CALLS

    for kind, (send, routes) in both.items():
        CANDIDATE_CALLS.clear()
        answer = send("GET", "/shadowed/7")
        assert answer.json()["PATH_INFO"] == "/shadowed/7"  # the primary's answer
        routes.shadower.drain()
        key = next(k for k in routes.specs if routes.specs[k].rule == "/shadowed/<int:n>")
        # Compared: the echo app says more than the candidate (the difference is written).
        assert routes.shadower.counts[key] == {"compared": 1, "different": 1}, kind
        (call,) = CANDIDATE_CALLS
        assert (call["a2wsgi"], call["path"], call["root_path"]) == (False, "/shadowed/7", ""), kind
        assert call["thread"] != threading.get_ident(), kind  # never on the thread (and loop) that served


def test_the_client_never_waits_on_an_asgi_candidate_that_blocks(table: MountTable, tmp_path: Path) -> None:
    import threading

    release = threading.Event()
    state: list[str] = []

    async def blocking(scope: Any, receive: Any, send: Any) -> None:
        state.append("entered")
        release.wait(10)  # blocks whatever runs it: on the serving loop, every client would wait
        state.append("finished")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})

    async def primary(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"now"})

    spec = RouteSpec("/x", ("old",), shadow="new")
    send, app = ENTRIES["asgi"](rule_table([spec], {"old": primary, "new": blocking}, Shadower(None, cpu=1.0)),
                                config_with())
    routes = app.pipeline.table.route_table
    try:
        assert send("GET", "/x").body == b"now"
        deadline = time.monotonic() + 10
        while not state and time.monotonic() < deadline:
            time.sleep(0.01)
        assert state == ["entered"]  # the candidate is still blocked: the answer did not wait for it
        assert send("GET", "/x").body == b"now"  # nor does the next client (its comparison is queued)
    finally:
        release.set()
    routes.shadower.drain()
    assert routes.shadower.counts[spec.key] == {"compared": 2, "different": 2}


def test_a_primary_answer_over_the_limit_that_reaches_its_length_is_counted_dropped(
        table: MountTable, tmp_path: Path) -> None:
    """The bridge, as a WSGI server should, stops iterating at the declared Content-Length;
    so does the driver below: the answer is whole, too long to compare, and counted."""
    from gateway.migration.shadow import MAX_BODY

    length = 2 * 1024 * 1024
    assert length > MAX_BODY
    for kind in ENTRIES:
        send, app, routes = native_rules(kind, table, tmp_path)
        key = next(k for k in routes.specs if routes.specs[k].rule == "/big")
        try:
            if kind == "asgi":
                answer = send("GET", "/big")
                assert (answer.status, len(answer.body)) == (200, length)
            else:
                environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/big", "SERVER_NAME": "localhost",
                           "SERVER_PORT": "80", "HTTP_HOST": "localhost", "wsgi.input": io.BytesIO(b""),
                           "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1"}
                result = app(environ, lambda status, headers, exc_info=None: None)
                sent = 0
                for chunk in result:
                    sent += len(chunk)
                    if sent >= length:
                        break  # PEP 3333: the declared bytes are out, nothing more is asked for
                result.close()
            routes.shadower.drain()
            assert routes.shadower.counts[key] == {"dropped": 1}, kind
        finally:
            if hasattr(app, "executor"):
                app.executor.shutdown(wait=True)


def test_the_file_travels_in_the_config(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(SHOP)
    config = Config.from_env({"GATEWAY_CONFIG": str(path)})
    assert config.config_file == path and [r.rule for r in config.file.routes][:2] == ["/shop/<path:rest>", "/shop/"]
    assert config.file.mounts == ("/echo=tests.thirdapp:echo_app",)
    assert pickle.loads(pickle.dumps(config)) == config  # as gateway serve hands it to each worker


@pytest.mark.parametrize(("cookie", "path"), [("a=1", "/"), ("a=1; Path=/", "/"), ("a=1; Path=/shop", "/shop"),
                                              ("a=1; Path=", "/"), ("a=1; Path=/; Path=/x", "/x")])
def test_cookies_of_a_route_app_keep_the_whole_site(cookie: str, path: str) -> None:
    from gateway.core.pipeline import scope_cookie

    assert scope_cookie(cookie, "") == f"a=1; Path={path}"


# -- Canaries -------------------------------------------------------------------------------


def canary_entry(share: float, kind: str, table: MountTable) -> tuple[Send, Any]:
    shop = table_from(CANARY.replace("SHARE", str(share)))
    combined = MountTable([*table, *shop], shop.routes.values(), shop.route_table)
    return ENTRIES[kind](combined, config_with())


@pytest.fixture(params=sorted(ENTRIES))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_a_canary_takes_its_share_of_clients_and_keeps_each(kind: str, table: MountTable) -> None:
    send, app = canary_entry(50, kind, table)
    try:
        ids = [f"{i:032x}" for i in range(1000)]
        chosen = {i: who(send("GET", "/shop/cart", {"Cookie": f"gateway_canary={i}"})) for i in ids}
        share = sum(a == "new" for a in chosen.values()) / len(ids)
        assert 0.45 <= share <= 0.55, share
        for i in ids[:50]:  # sticky: the same client, the same app, every time
            assert who(send("GET", "/shop/cart", {"Cookie": f"other=1; gateway_canary={i}"})) == chosen[i]
    finally:
        getattr(app, "executor", None) and app.executor.shutdown(wait=True)


def test_a_new_client_gets_its_cookie_and_stays(kind: str, table: MountTable) -> None:
    send, app = canary_entry(50, kind, table)
    try:
        first = send("GET", "/shop/cart")
        cookies = [c for c in first.all("Set-Cookie") if c.startswith("gateway_canary=")]
        assert len(cookies) == 1
        value, *attributes = [part.strip() for part in cookies[0].split(";")]
        assert sorted(attributes) == ["HttpOnly", "Max-Age=31536000", "Path=/", "SameSite=Lax"]
        assert all(who(send("GET", "/shop/cart", {"Cookie": value})) == who(first) for _ in range(10))
        assert not send("GET", "/shop/cart", {"Cookie": value}).all("Set-Cookie")
        bogus = send("GET", "/shop/cart", {"Cookie": "gateway_canary=not-an-id"})
        assert any(c.startswith("gateway_canary=") for c in bogus.all("Set-Cookie"))  # a new one
    finally:
        getattr(app, "executor", None) and app.executor.shutdown(wait=True)


# Control bytes, not NUL: NUL in any header value is a 400 (test_parity).
@pytest.mark.parametrize("cookie", [pytest.param(b"gateway_canary=\xff", id="not-utf-8"),
                                    pytest.param(b"a=\xc3; gateway_canary=\xfe\xff", id="others-not-utf-8-too"),
                                    pytest.param(b"gateway_canary=\x01\x02", id="control-bytes")])
def test_a_canary_cookie_of_any_bytes_is_a_new_client(kind: str, table: MountTable, cookie: bytes) -> None:
    """Bytes that are not UTF-8 in the cookie header were a 500 (UnicodeDecodeError); they are no
    canary ID, so the client is dealt a new one, as for any other unusable value."""
    send, app = canary_entry(50, kind, table)
    try:
        header = cookie.decode("latin-1") if kind == "wsgi" else cookie  # as each protocol carries it
        answer = send("GET", "/shop/cart", [("Cookie", header)])  # type: ignore[list-item]
        assert answer.status == 200 and who(answer) in {"legacy", "new"}
        assert any(c.startswith("gateway_canary=") for c in answer.all("Set-Cookie"))
    finally:
        getattr(app, "executor", None) and app.executor.shutdown(wait=True)


def test_a_canary_by_header_is_sticky_per_value_and_sets_no_cookie(kind: str, table: MountTable) -> None:
    send, app = canary_entry(50, kind, table)
    try:
        path = "/shop/items/3/reviews"
        answers = [send("GET", path, {"X-User-ID": f"user-{i}"}) for i in range(1000)]
        # Neither app has the page: which one answered is told by its 404 page... so ask the table.
        assert all(a.status == 404 and not a.all("Set-Cookie") for a in answers)
        routes = RouteTable(parse_gateway_file(CANARY.replace("SHARE", "50")).routes)
        spec = next(s for s in routes.specs.values() if s.header == "X-User-ID")
        share = sum(spec.chooses_canary(f"user-{i}") for i in range(1000)) / 1000
        assert 0.25 <= share <= 0.35, share
        assert send("GET", path).all("Set-Cookie") == []  # no header: the owner, and no cookie
    finally:
        getattr(app, "executor", None) and app.executor.shutdown(wait=True)


def test_raising_the_share_only_adds_clients() -> None:
    low = RouteTable(parse_gateway_file(CANARY.replace("SHARE", "10")).routes)
    high = RouteTable(parse_gateway_file(CANARY.replace("SHARE", "60")).routes)
    key = next(k for k, s in low.specs.items() if s.rule == "/shop/cart")
    ids = [f"{i:032x}" for i in range(2000)]
    before = {i for i in ids if low.specs[key].chooses_canary(i)}
    after = {i for i in ids if high.specs[key].chooses_canary(i)}
    assert before < after
    assert 0.05 <= len(before) / 2000 <= 0.15 and 0.55 <= len(after) / 2000 <= 0.65


@pytest.mark.parametrize(("canary", "message"), [
    ('{ app = "nope", share = 5 }', "canary app 'nope' is not in [apps]."),
    ('{ app = "new", share = 101 }', "canary share must be a number of per cent from 0 to 100"),
    ('{ app = "new", share = "ten" }', "canary share must be a number of per cent from 0 to 100"),
    ('{ app = "new", share = 5, header = "X User" }', "canary header must be a header name"),
    ('{ share = 5 }', 'canary must be canary = { app = "name", share = 10 }'),
    ('"new"', 'canary must be canary = { app = "name", share = 10 }'),
])
def test_a_bad_canary_is_refused_with_its_line(canary: str, message: str) -> None:
    text = f'[apps]\nlegacy = "m:a"\nnew = "m:b"\n\n[[route]]\nrule = "/a"\napp = "legacy"\ncanary = {canary}\n'
    with pytest.raises(ConfigFileError) as refused:
        parse_gateway_file(text)
    assert str(refused.value).startswith(f"gateway.toml, line 5: {message}")


# -- Reloading -------------------------------------------------------------------------------


def test_reload_swaps_the_rules_and_refuses_a_bad_file(tmp_path: Path, table: MountTable,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    import asyncio
    import logging

    import httpx

    from gateway.adapters.asgi import create_asgi_app

    path = tmp_path / "gateway.toml"
    path.write_text(CANARY.replace("SHARE", "0"))
    config = config_with().with_file(path)
    shop = table_from(CANARY.replace("SHARE", "0"))
    app = create_asgi_app(MountTable([*table, *shop], shop.routes.values(), shop.route_table), config, threads=2)

    async def apps_seen(count: int) -> set[str]:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            seen = set()
            for i in range(count):
                answer = await client.get("/shop/cart", headers={"Cookie": f"gateway_canary={i:032x}"})
                seen.add(answer.json()["app"])
            return seen

    try:
        assert asyncio.run(apps_seen(50)) == {"legacy"}
        path.write_text(CANARY.replace("SHARE", "100"))
        assert app.reload() is True
        assert asyncio.run(apps_seen(50)) == {"new"}
        path.write_text(CANARY.replace("SHARE", "100").replace('app = "legacy"\nmethods', 'app = "nwe"\nmethods'))
        with caplog.at_level(logging.ERROR, "gateway"):
            assert app.reload() is False
        assert [r.getMessage() for r in caplog.records if r.name == "gateway"] == [
            f"{path} was not reloaded: {path}, line 17: app 'nwe' is not in [apps] (known: legacy, new). "
            "The route rules stay as they were."]
        assert asyncio.run(apps_seen(20)) == {"new"}  # the last good rules
    finally:
        app.executor.shutdown(wait=True)


# -- Shadow comparison -------------------------------------------------------------------------


@pytest.fixture
def shadowed(request: pytest.FixtureRequest, table: MountTable, tmp_path: Path) -> Iterator[tuple[Any, Any, Path]]:
    parsed = parse_gateway_file(SHADOW)
    log = tmp_path / "shadow.jsonl"
    shop = MountTable.from_specs(parsed.mounts, routes=parsed.routes, apps=parsed.apps, shadow_log=log)
    combined = MountTable([*table, *shop], shop.routes.values(), shop.route_table)
    send, app = ENTRIES["asgi"](combined, config_with())
    yield send, shop.route_table, log
    app.executor.shutdown(wait=True)


def counts_of(routes: Any, rule: str) -> dict[str, int]:
    routes.shadower.drain()
    key = next(k for k in routes.specs if routes.specs[k].rule == rule)
    return {k: v for k, v in routes.shadower.counts.get(key, {}).items()}


def test_the_deliberate_difference_is_reported_and_the_noise_is_not(shadowed: Any) -> None:
    send, routes, log = shadowed
    for product in (7, 21, 13, 7):
        answer = send("GET", f"/shop/products/{product}")
        assert answer.status == 200 and b'class="product" id="p' in answer.body  # the primary's page
    counts = counts_of(routes, "/shop/products/<int:product_id>")
    assert counts == {"compared": 4, "noise": 3, "different": 1}, counts
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["path"] for r in records] == ["/shop/products/13"]
    assert records[0]["differences"] == ["body: 2 token(s) differ"]  # where "(new)" went in; not the token or time
    assert records[0]["status"] == [200, 200]
    assert "\n+(new)\n" in records[0]["diff"]  # the diff shows every token that differs, noise too


def test_json_key_order_is_not_a_difference(shadowed: Any) -> None:
    send, routes, _ = shadowed
    for product in (7, 13):
        assert send("GET", f"/shop/api/products/{product}").status == 200
    assert counts_of(routes, "/shop/api/products/<int:product_id>") == {"compared": 2, "noise": 2}


def test_no_unsafe_method_is_ever_shadowed(shadowed: Any) -> None:
    send, routes, _ = shadowed
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        send(method, "/shop/products/7", {"Content-Type": "text/plain"}, b"x")
    assert counts_of(routes, "/shop/products/<int:product_id>") == {}


def test_a_full_queue_drops_and_counts_and_never_delays_the_client(rules_of: Any) -> None:
    import threading

    release = threading.Event()

    def slow(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        release.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"late"]

    def fast(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"now"]

    shadower = Shadower(None, threads=1, size=2)
    spec = RouteSpec("/x", ("fast",), shadow="slow")
    send, _ = rules_of([spec], {"fast": fast, "slow": slow}, shadower)
    try:
        import time

        started = time.monotonic()
        for _ in range(10):
            assert send("GET", "/x").body == b"now"
        assert time.monotonic() - started < 5  # the candidate's 10 s never reached the client
        shadower_counts = shadower.counts[spec.key]
        assert shadower_counts["dropped"] >= 7  # one running, two queued, the rest dropped
    finally:
        release.set()
    shadower.drain()
    assert shadower.counts[spec.key]["compared"] + shadower.counts[spec.key]["dropped"] == 10


def test_normalisers() -> None:
    from gateway.migration.shadow import tokens

    html_a, html_b = b'<p  class="a" id="b">x   y</p>', b'<p id="b" class="a">\nx y</p>'
    assert tokens("text/html", html_a) == tokens("text/html", html_b)
    assert tokens("application/json", b'{"a": 1, "b": [1, 2]}') == tokens("application/json", b'{"b":[1,2],"a":1}')
    assert tokens("application/json", b'{"b": [2, 1]}') != tokens("application/json", b'{"b": [1, 2]}')


def test_gateway_diff_shows_what_clients_and_apps_wrote_without_sending_it_to_the_terminal(tmp_path: Path) -> None:
    """A client chooses the path, and an app the page: escape sequences, a bell, a bidi override
    or a NUL in them are shown escaped, never written to the operator's terminal as they are."""
    from gateway.migration.shadow import summarise

    log = tmp_path / "shadow.jsonl"
    log.write_text(json.dumps({
        "time": "t", "rule": "~/sh/<path:p>", "method": "GET", "path": "/sh/\x1b]0;TITLE\x07\u202egnp.exe",
        "query": "", "status": [200, 200], "differences": ["body: 1 token(s) differ"],
        "diff": "-a\x1b[2J\n+b\x00\x9b"}) + "\n")
    lines = summarise(log)
    assert all(line.isprintable() for line in lines), lines
    assert "  /sh/\\x1b]0;TITLE\\x07\\u202egnp.exe  x1" in lines
    assert lines[-2:] == ["    -a\\x1b[2J", "    +b\\x00\\x9b"]


@pytest.mark.parametrize("line", [pytest.param('{"rule": 1}', id="rule-not-text"),
                                  pytest.param('["a list"]', id="not-an-object"),
                                  pytest.param('{"rule": "~/x", "path": "/x"}', id="fields-missing"),
                                  pytest.param("\udcff", id="not-json")])
def test_gateway_diff_names_a_line_it_cannot_read(tmp_path: Path, line: str) -> None:
    from gateway.migration.shadow import summarise

    log = tmp_path / "shadow.jsonl"
    log.write_text("\n" + line + "\n", errors="surrogateescape")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(log))}, line 2: not a JSON line of the shadow log\.$"):
        summarise(log)


# -- The migration page -------------------------------------------------------------------------


def test_the_migration_page_shows_each_rule_to_loopback_only(table: MountTable, tmp_path: Path) -> None:
    import re

    from werkzeug.test import Client

    from gateway.adapters.wsgi import create_wsgi_app

    parsed = parse_gateway_file(CANARY.replace("SHARE", "50") + SHADOW[len(SHOP):])
    shop = MountTable.from_specs(parsed.mounts, routes=parsed.routes, apps=parsed.apps,
                                 shadow_log=tmp_path / "shadow.jsonl")
    app = create_wsgi_app(MountTable([*table, *shop], shop.routes.values(), shop.route_table), config_with())
    client = Client(app, use_cookies=False)
    local = {"REMOTE_ADDR": "127.0.0.1"}
    for i in range(20):
        client.get("/shop/cart", headers={"Cookie": f"gateway_canary={i:032x}"}, environ_overrides=local)
    for product in (7, 13):
        client.get(f"/shop/products/{product}", environ_overrides=local, buffered=True)
    client.get("/shop/items/500", environ_overrides=local)  # a fallback
    shop.route_table.shadower.drain()  # type: ignore[union-attr]
    page = client.get("/_gateway/", environ_overrides=local)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    html = page.get_data(as_text=True)
    assert "<script" not in html
    from html import unescape

    texts = [unescape(re.sub("<[^>]+>", " ", m)) for m in re.findall(r"<tr><td><code>.*?</tr>", html)]
    rows = {text.split()[0]: " ".join(text.split()) for text in texts}
    cart = rows["/shop/cart"]
    assert " 20 " in f" {cart} " and "new: 50% of clients" in cart
    assert re.search(r"of clients, \d+% of requests", cart)
    assert "new then legacy" in rows["/shop/items/<int:item_id>"] and "1 (100%)" in rows["/shop/items/<int:item_id>"]
    assert "new: 50% equal of 2 compared (1 different, 0 dropped)" in rows["/shop/products/<int:product_id>"]
    assert client.get("/_gateway/", environ_overrides={"REMOTE_ADDR": "203.0.113.9"}).status_code == 404


def test_traffic_keeps_the_last_minutes() -> None:
    from gateway.migration.traffic import MINUTES, Traffic

    traffic = Traffic()
    start = 1_000_000 * 60.0
    for minute in range(MINUTES + 3):
        for _ in range(minute):
            traffic.hit("~/a", start + minute * 60)
    series = traffic.series("~/a", start + (MINUTES + 2) * 60)
    assert series == list(range(3, MINUTES + 3))
    [(_, tally)] = traffic.tallies
    assert sorted({minute for minute, _, _ in tally}) == [int(start // 60) + m for m in range(3, MINUTES + 3)]


def test_the_pages_shares_are_of_the_same_minutes_requests() -> None:
    """Fallbacks and canary requests are counted by the minute, as requests are: an hour
    ago's do not count against the last minutes' requests."""
    import re
    from html import unescape

    from gateway.migration.page import render
    from gateway.migration.traffic import CANARY, FALLBACKS

    fallback = RouteSpec("/items/<int:id>", ("new", "old"))
    canary = RouteSpec("/cart", ("old",), canary="new", share=50)
    routes = RouteTable([fallback, canary])
    hour_ago, now = 1_000_000 * 60.0, 1_000_060 * 60.0
    for _ in range(10):
        routes.traffic.hit(fallback.key, hour_ago)
        routes.traffic.hit(fallback.key, hour_ago, FALLBACKS)
        routes.traffic.hit(canary.key, hour_ago)
        routes.traffic.hit(canary.key, hour_ago, CANARY)
    for i in range(4):
        routes.traffic.hit(fallback.key, now)
        routes.traffic.hit(canary.key, now)
        if i < 2:
            routes.traffic.hit(canary.key, now, CANARY)
    routes.traffic.hit(fallback.key, now, FALLBACKS)
    html = render(routes, now).body.decode()
    rows = [" ".join(unescape(re.sub("<[^>]+>", " ", row)).split()) for row in re.findall(r"<tr><td>.*?</tr>", html)]
    bars = "0 " * 9 + "4"  # each minute's bar has its count as its title; this minute's is the last
    assert rows == [f"/items/<int:id> any new then old {bars} 4 1 (25%) - -",
                    f"/cart any old {bars} 4 - new: 50% of clients, 50% of requests -"]


def test_the_page_adds_up_the_other_workers_counts(tmp_path: Path) -> None:
    """Two workers' tables on one GATEWAY_MIGRATION_DIR: each page shows both workers'
    counts, its own from memory and the other's from its file, never its own twice."""
    import re
    import time
    from html import unescape

    from gateway.migration.page import render
    from gateway.migration.traffic import CANARY

    cart = RouteSpec("/cart", ("old",), canary="new", share=50)
    items = RouteSpec("/items/<int:id>", ("old",), shadow="new")
    one = RouteTable([cart, items], shared_dir=tmp_path)
    two = RouteTable([cart, items], shared_dir=tmp_path)
    assert one.board is not None and two.board is not None and one.board.name != two.board.name
    now = time.time()
    for _ in range(3):
        one.traffic.hit(cart.key, now)
    for _ in range(5):
        two.traffic.hit(cart.key, now)
    two.traffic.hit(cart.key, now, CANARY)
    two.shadower.count(items.key, "compared", "different")
    one.shadower.count(items.key, "compared", "equal")
    for table in (one, two):
        table.board.write(table.board.counts())  # type: ignore[union-attr]
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".json"]  # nothing left aside

    def rows(table: RouteTable) -> list[str]:
        html = render(table, now).body.decode()
        return [" ".join(unescape(re.sub("<[^>]+>", " ", row)).split()).split(" any ")[1]
                for row in re.findall(r"<tr><td>.*?</tr>", html)]

    bars = "0 " * 9 + "8"
    for table in (one, two):
        assert rows(table) == [f"old {bars} 8 - new: 50% of clients, 12% of requests -",
                               f"old {bars[:-1]}0 0 - - new: 50% equal of 2 compared (1 different, 0 dropped) 50%"]
    unshared = RouteTable([cart, items])
    assert unshared.board is None


def test_a_board_writes_its_last_counts_as_it_closes(tmp_path: Path) -> None:
    import json

    table = RouteTable([RouteSpec("/cart", ("old",))], shared_dir=tmp_path)
    assert table.board is not None
    table.board.close()  # never started: this worker served no rule, and writes nothing
    assert list(tmp_path.iterdir()) == []
    table.board.stopped.clear()
    table.board.start()
    table.traffic.hit("~/cart")
    table.board.close()  # at once, not a period later
    writer = table.board.thread
    assert writer is not None and not writer.is_alive()
    [[_, what, key, n]] = json.loads((tmp_path / table.board.name).read_text())["traffic"]
    assert (what, key, n) == ("requests", "~/cart", 1)


def test_a_migration_directory_must_be_one_the_workers_can_write(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^GATEWAY_MIGRATION_DIR=\S+missing is not a writable directory: create it"):
        Config.from_env({"GATEWAY_MIGRATION_DIR": str(tmp_path / "missing")})
    assert Config.from_env({"GATEWAY_MIGRATION_DIR": str(tmp_path)}).migration_dir == tmp_path
    assert Config.from_env({"GATEWAY_MIGRATION_DIR": " "}).migration_dir is None
    assert Config.from_env({}).migration_dir is None


def test_each_worker_writes_its_counts_each_second(tmp_path: Path) -> None:
    import json
    import time

    table = RouteTable([RouteSpec("/cart", ("old",))], shared_dir=tmp_path)
    assert table.board is not None

    table.board.start()
    writer = table.board.thread
    table.board.start()  # once
    try:
        assert writer is not None and writer.is_alive() and table.board.thread is writer
        assert writer.name == "gateway-migration-board" and writer.daemon
        first = int(time.time() // 60)
        table.traffic.hit("~/cart")
        path = tmp_path / table.board.name
        deadline = time.monotonic() + 10
        while not path.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        [[minute, what, key, n]] = json.loads(path.read_text())["traffic"]
        assert (what, key, n) == ("requests", "~/cart", 1) and first <= minute <= int(time.time() // 60)
    finally:
        table.board.stop()
        table.board.thread.join(5)  # type: ignore[union-attr]
    assert not writer.is_alive()


def test_traffic_counts_every_threads_hits() -> None:
    """Each thread counts without a lock in a tally of its own; the page adds them up,
    those of threads that have ended too, until their minutes are over."""
    import threading

    from gateway.migration.traffic import MINUTES, Traffic

    traffic = Traffic()
    now = 1_000_000 * 60.0
    go = threading.Barrier(4)

    def hits() -> None:
        go.wait()
        for _ in range(20_000):
            traffic.hit("~/a", now)
            traffic.hit("~/b", now + 60)

    threads = [threading.Thread(target=hits) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert traffic.series("~/a", now + 60)[-2:] == [80_000, 0]
    assert traffic.series("~/b", now + 60)[-2:] == [0, 80_000]
    assert len(traffic.tallies) == 4  # ended, but their minutes are shown
    assert traffic.series("~/b", now + 60 * (MINUTES + 1)) == [0] * MINUTES
    assert traffic.tallies == []  # ended, and nothing of theirs left to show


def test_a_reload_keeps_the_counts_and_the_shadow_log(tmp_path: Path, table: MountTable) -> None:
    import asyncio

    import httpx

    from gateway.adapters.asgi import create_asgi_app

    text = CANARY.replace("SHARE", "50") + SHADOW[len(SHOP):]
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    config = replace_data_dir(config_with().with_file(path), tmp_path)
    parsed = parse_gateway_file(text)
    shop = MountTable.from_specs(parsed.mounts, routes=parsed.routes, apps=parsed.apps,
                                 shadow_log=tmp_path / "shadow.jsonl")
    app = create_asgi_app(MountTable([*table, *shop], shop.routes.values(), shop.route_table), config, threads=2)

    async def get(target: str) -> None:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            assert (await client.get(target)).status_code == 200

    try:
        asyncio.run(get("/shop/items/500"))  # a fallback
        assert app.reload() is True
        asyncio.run(get("/shop/items/500"))
        asyncio.run(get("/shop/products/13"))  # a difference, after the reload
        routes = app.pipeline.table.route_table
        routes.shadower.drain()
        assert sum(routes.fallbacks.values()) == 2  # counted on across the reload
        assert [json.loads(line)["path"] for line in (tmp_path / "shadow.jsonl").read_text().splitlines()] == [
            "/shop/products/13"]
    finally:
        app.executor.shutdown(wait=True)


def replace_data_dir(config: Config, directory: Path) -> Config:
    from dataclasses import replace

    return replace(config, data_dir=directory)


def test_explain_a_plain_rule_has_no_fallback_line() -> None:
    routes = RouteTable(parse_gateway_file(SHOP).routes)
    assert not any("is asked next" in line for line in routes.explain("/shop/anything"))


# -- Pinned details: what the mutation run showed no test noticed ---------------------------------


def test_canary_places_are_stable_across_releases() -> None:
    """A client's place is part of the contract: a new release must not move clients
    between the apps (the hash, its size, its byte order and the scale are pinned)."""
    spec = RouteSpec("/shop/cart", ("legacy",), canary="new", share=50)
    assert "".join("1" if spec.chooses_canary(f"{i:032x}") else "0" for i in range(40)) == (
        "0111100110000001101111001000101011111101")
    fine = RouteSpec("/shop/cart", ("legacy",), canary="new", share=0.5)  # a share to 0.01%
    assert sum(fine.chooses_canary(f"{i:032x}") for i in range(10_000)) == 62
    assert not RouteSpec("/a", ("x",), canary="y", share=0).chooses_canary("anyone")
    assert all(RouteSpec("/a", ("x",), canary="y", share=100).chooses_canary(f"c{i}") for i in range(500))


def three_apps() -> tuple[dict[str, Any], list[str], list[str]]:
    calls: list[str] = []
    closed: list[str] = []

    class Closing(list):  # type: ignore[type-arg]
        def __init__(self, name: str, body: bytes) -> None:
            super().__init__([body])
            self.name = name

        def close(self) -> None:
            closed.append(self.name)

    def app(name: str, status: str) -> Any:
        def answer(environ: dict[str, Any], start_response: Any) -> Any:
            calls.append(f"{environ['REQUEST_METHOD']} {name} {environ['wsgi.input'].read()!r}")
            start_response(status, [("Content-Type", "text/plain")])
            return Closing(name, f"{name}: {status}".encode())
        return answer

    return {"a": app("a", "404 Not Found"), "b": app("b", "404 Not Found"), "c": app("c", "200 OK")}, calls, closed


def test_a_fallback_asks_each_app_in_turn_and_closes_what_it_passes_over(rules_of: Any) -> None:
    apps, calls, closed = three_apps()
    spec = RouteSpec("/x", ("a", "b", "c"))
    send, routes = rules_of([spec], apps)
    answer = send("GET", "/x")
    assert (answer.status, answer.body) == (200, b"c: 200 OK")
    assert calls == ["GET a b''", "GET b b''", "GET c b''"] and routes.fallbacks[spec.key] == 2
    assert closed == ["a", "b", "c"]  # the passed-over answers, then the one sent


def test_a_fallback_sends_other_methods_to_the_first_app_only(rules_of: Any) -> None:
    apps, calls, _ = three_apps()
    spec = RouteSpec("/x", ("a", "b", "c"))
    send, routes = rules_of([spec], apps)
    answer = send("POST", "/x", {"Content-Type": "text/plain"}, b"once")
    assert (answer.status, calls, routes.fallbacks[spec.key]) == (404, ["POST a b'once'"], 0)


@pytest.mark.parametrize("size", [5, 200_000])  # in memory, and in a temporary file
def test_a_post_the_rule_lets_fall_through_reaches_each_app_whole(rules_of: Any, size: int) -> None:
    apps, calls, _ = three_apps()
    spec = RouteSpec("/x", ("a", "b", "c"), fallback_methods=("POST",))
    send, routes = rules_of([spec], apps)
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    answer = send("POST", "/x", {"Content-Type": "application/octet-stream"}, body)
    assert (answer.status, answer.body) == (200, b"c: 200 OK")
    assert calls == [f"POST {name} {body!r}" for name in "abc"] and routes.fallbacks[spec.key] == 2


def test_a_fallback_passes_exc_info_on(table: MountTable) -> None:
    import sys

    def failing(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"x"]

    seen: list[Any] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        seen.append(exc_info)
        return lambda data: None

    from gateway.adapters.wsgi import create_wsgi_app

    gateway = create_wsgi_app(rule_table([RouteSpec("/y", ("a", "b"))], {"a": failing, "b": failing}), config_with())
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/y", "SERVER_NAME": "localhost", "SERVER_PORT": "80",
               "HTTP_HOST": "localhost", "wsgi.input": io.BytesIO(b""), "wsgi.url_scheme": "http"}
    list(gateway(environ, start_response))
    assert seen[0] is not None and seen[0][0] is RuntimeError


def answer_of(status: int, body: bytes = b"same", **headers: str) -> Any:
    return status, {"content-type": "text/plain", **{k.replace("_", "-"): v for k, v in headers.items()}}, body


def test_compare_statuses_headers_and_bodies() -> None:
    from gateway.migration.shadow import compare

    same = answer_of(200)
    assert compare(same, same, same, ()) == ("equal", [])
    assert compare(same, same, answer_of(404), ()) == ("different", ["status 200 != 404"])
    assert compare(same, answer_of(503), answer_of(404), ()) == ("noise", [])  # the primary varies too
    tagged = answer_of(200, etag="a")
    assert compare(tagged, tagged, answer_of(200, etag="b"), ("ETag",)) == (
        "different", ["header etag: 'a' != 'b'"])
    assert compare(tagged, answer_of(200, etag="c"), answer_of(200, etag="b"), ("ETag",)) == ("noise", [])
    assert compare(tagged, tagged, answer_of(200, etag="b"), ()) == ("equal", [])  # not named: not compared
    assert compare(answer_of(200, b"a b c"), answer_of(200, b"a b c"), answer_of(200, b"z a b c"), ()) == (
        "different", ["body: 1 token(s) differ"])  # an insertion at the start marks its neighbour


def test_a_difference_is_written_with_what_differs(tmp_path: Path) -> None:
    from gateway.migration.shadow import Shadower

    log = tmp_path / "shadow.jsonl"
    shadower = Shadower(log, keep=2)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/p", "QUERY_STRING": "q=1"}
    for n in range(3):
        shadower.record("~/p", environ, answer_of(200, b"old"), answer_of(201, f"new{n}".encode()), ["x"])
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 2  # at most keep a rule
    first = records[0]
    assert (first["rule"], first["method"], first["path"], first["query"], first["status"], first["differences"]) == (
        "~/p", "GET", "/p", "q=1", [200, 201], ["x"])
    assert first["diff"].splitlines()[:2] == ["--- primary", "+++ candidate"] and "-old" in first["diff"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first["time"])


def test_fallbacks_canaries_and_shadows_are_on_the_metrics_endpoint(table: MountTable, tmp_path: Path) -> None:
    from tests.support import samples, value

    cart = '''rule = "/shop/cart"
app = "new"
methods = ["GET"]'''
    assert cart in SHADOW
    parsed = parse_gateway_file(SHADOW.replace(cart, '''rule = "/shop/cart"
app = "legacy"
methods = ["GET"]
canary = { app = "new", share = 100 }'''))
    shop = MountTable.from_specs(parsed.mounts, routes=parsed.routes, apps=parsed.apps,
                                 shadow_log=tmp_path / "shadow.jsonl")
    combined = MountTable([*table, *shop], shop.routes.values(), shop.route_table)
    send, app = ENTRIES["asgi"](combined, config_with(metrics=True))
    routes = shop.route_table
    assert routes is not None
    try:
        for product in (7, 13):
            assert send("GET", f"/shop/products/{product}").status == 200
        assert who(send("GET", "/shop/items/500")) == "legacy"  # after the new app's 404
        assert who(send("GET", "/shop/cart")) == "new"  # the canary, at 100%
        routes.shadower.drain()
        got = samples(send("GET", "/metrics").body.decode())
        key = {spec.rule: k for k, spec in routes.specs.items()}
        shadow = key["/shop/products/<int:product_id>"]
        assert value(got, "gateway_shadow_total", rule=shadow, outcome="compared") == 2
        assert value(got, "gateway_shadow_total", rule=shadow, outcome="different") == 1  # 13: the port's "(new)"
        assert value(got, "gateway_shadow_total", rule=shadow, outcome="noise") == 1
        assert value(got, "gateway_route_fallbacks_total", rule=key["/shop/items/<int:item_id>"]) == 1
        assert value(got, "gateway_canary_requests_total", rule=key["/shop/cart"]) == 1
        assert value(got, "gateway_requests_total", mount=key["/shop/cart"] + " canary", status="2xx") == 1
    finally:
        app.executor.shutdown(wait=True)


def test_the_compiled_rules_and_the_cache_answer_as_werkzeug_does() -> None:
    static = RouteTable([RouteSpec("/shop/<path:rest>", ("a",)), RouteSpec("/", ("a",)),
                         RouteSpec("/cart", ("b",), ("POST",))])
    assert static.compiled is not None and set(static.compiled.firsts or ()) == {"shop", "", "cart"}
    dynamic = RouteTable([RouteSpec("/shop/<path:rest>", ("a",)), RouteSpec("/<int:year>/<slug>", ("b",))])
    assert dynamic.compiled is not None and dynamic.compiled.firsts is None  # a converter first: no shortcut
    for _ in range(2):  # the second time, the 405 from the cache
        assert static.match("/shop/a/b", "GET").key == RouteSpec("/shop/<path:rest>", ("a",)).key
        assert static.match("/shop", "GET").key is None  # /shop/<path:rest> needs a rest
        assert static.match("/", "GET").key == RouteSpec("/", ("a",)).key
        assert static.match("/cart", "GET") == Match(None, ("POST",))
        assert static.match("/flask/x", "GET") == Match(None)
        assert static.match("/shopping", "GET") == Match(None)
        assert dynamic.match("/2026/news", "GET").key == RouteSpec("/<int:year>/<slug>", ("b",)).key
        assert dynamic.match("/news/2026", "GET") == Match(None)
    long = "/shop/" + "x" * 300
    assert static.match(long, "GET").key == RouteSpec("/shop/<path:rest>", ("a",)).key
    # Only the 405 of /cart went to Werkzeug: asked once, then from the cache.
    assert static._cached.cache_info()[:2] == (1, 1)  # (hits, misses)
    assert dynamic._cached.cache_info()[:2] == (0, 0)


def test_the_shadow_pool_rests_to_stay_within_its_share_of_a_core(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from gateway.migration import shadow

    slept: list[float] = []
    monkeypatch.setattr(shadow.time, "sleep", slept.append)
    one = Shadower(None)  # one thread, 2% of a core
    one.rest(0.002)
    assert slept == [pytest.approx(0.098)]  # 2 ms of work, then 98 ms of rest: 2%
    two = Shadower(None, threads=2, cpu=0.2)  # two threads share 20%: 10% each
    two.rest(0.002)
    assert slept[-1] == pytest.approx(0.018)
    whole = Shadower(None, cpu=1.0)
    whole.rest(0.002)
    assert len(slept) == 2  # a whole core: no rest
    monkeypatch.undo()

    burnt: list[float] = []

    def burning(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        started = time.thread_time()
        while time.thread_time() - started < 0.01:
            pass
        burnt.append(time.thread_time() - started)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"same"]

    rests: list[float] = []
    pool = Shadower(None, cpu=0.25)
    monkeypatch.setattr(pool, "rest", rests.append)
    pool.submit("~/x", {"REQUEST_METHOD": "GET", "PATH_INFO": "/x"}, (200, {}, b"same"),
                ((burning, "wsgi"), (burning, "wsgi")), ())
    pool.drain()
    deadline = time.monotonic() + 10
    while not rests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rests and rests[0] >= sum(burnt) >= 0.02  # the CPU of both replays, as the thread measured it


@pytest.mark.parametrize(("table", "cpu", "message"), [
    ("", 0.02, None),
    ("[shadow]\ncpu = 20\n", 0.2, None),
    ("[shadow]\ncpu = 100\n", 1.0, None),
    ("[shadow]\ncpu = 0\n", None, "line 1: [shadow] takes cpu = 2"),
    ("[shadow]\ncpu = 101\n", None, "[shadow] takes cpu = 2"),
    ("[shadow]\ncpu = \"5\"\n", None, "[shadow] takes cpu = 2"),
    ("[shadow]\ncpu = true\n", None, "[shadow] takes cpu = 2"),
    ("[shadow]\nshare = 5\n", None, "[shadow] takes cpu = 2"),
])
def test_the_shadow_share_is_read_from_the_file(table: str, cpu: float | None, message: str | None) -> None:
    if message is None:
        parsed = parse_gateway_file(table + SHADOW)
        assert parsed.shadow_cpu == cpu
        routes = RouteTable(parsed.routes, shadow_cpu=parsed.shadow_cpu)
        assert routes.shadower.cpu == cpu
        assert RouteTable(parsed.routes, previous=routes, shadow_cpu=0.5).shadower is routes.shadower
        assert routes.shadower.cpu == 0.5  # a reload sets the pool's share
    else:
        with pytest.raises(ConfigFileError, match=re.escape(message)):
            parse_gateway_file(table + SHADOW)


def test_a_full_queue_hands_the_primarys_answer_over_untouched() -> None:
    """When the pool cannot take more, the request is dropped (counted) before anything of
    it is copied: the primary's own iterable goes back to the server."""
    from gateway.adapters.wsgi import create_wsgi_app

    answer = [b"now"]

    def primary(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return answer

    shadower = Shadower(None, size=1)
    spec = RouteSpec("/x", ("old",), shadow="new")
    gateway = create_wsgi_app(rule_table([spec], {"old": primary, "new": primary}, shadower), config_with())
    shadower.queue.put_nowait(("~/x",))  # full, and no worker started to take it

    def environ(method: str) -> dict[str, Any]:
        return {"REQUEST_METHOD": method, "PATH_INFO": "/x", "SERVER_NAME": "localhost", "SERVER_PORT": "80",
                "HTTP_HOST": "localhost", "wsgi.input": io.BytesIO(b""), "wsgi.url_scheme": "http"}

    assert gateway(environ("GET"), lambda status, headers, exc_info=None: None) is answer
    assert shadower.counts[spec.key] == {"dropped": 1}
    assert gateway(environ("POST"), lambda *a: None) is answer  # never shadowed, never counted
    assert shadower.counts[spec.key] == {"dropped": 1}


def test_the_pipeline_sends_each_header_value_where_the_rule_says(table: MountTable) -> None:
    from gateway.core.pipeline import Head, Pipeline

    shop = table_from(CANARY.replace("SHARE", "50"))
    combined = MountTable([*table, *shop], shop.routes.values(), shop.route_table)
    pipeline = Pipeline(combined, config_with())
    routes = shop.route_table
    assert routes is not None and pipeline.wants_headers
    spec = next(s for s in routes.specs.values() if s.header == "X-User-ID")
    path = "/shop/items/3/reviews"
    for i in range(200):
        user = f"user-{i}"
        head = Head(method="GET", path=path, host="localhost",
                    fetch=lambda name, user=user: user if name == "X-User-ID" else None)
        decision = pipeline.decide(head)
        assert decision.mount is not None and decision.set_cookie is None
        assert decision.mount.prefix == (spec.canary_key if spec.chooses_canary(user) else spec.key), user
    chosen = sum(spec.chooses_canary(f"user-{i}") for i in range(200))
    assert routes.canaried[spec.key] == chosen > 0  # each one counted, not just noted
    no_header = pipeline.decide(Head(method="GET", path=path, host="localhost", fetch=lambda name: None))
    assert no_header.mount is not None and no_header.mount.prefix == spec.key


@pytest.mark.parametrize(("scheme", "secure"), [("http", False), ("https", True), ("ws", False), ("wss", True)])
def test_the_canary_cookie_is_secure_over_tls(table: MountTable, scheme: str, secure: bool) -> None:
    from gateway.core.pipeline import Head, Pipeline

    shop = table_from(CANARY.replace("SHARE", "50"))
    pipeline = Pipeline(MountTable([*table, *shop], shop.routes.values(), shop.route_table), config_with())
    decision = pipeline.decide(Head(method="GET", path="/shop/cart", host="localhost", scheme=scheme,
                                    fetch=lambda name: "other=1" if name == "cookie" else None))
    assert decision.set_cookie is not None
    assert decision.set_cookie.endswith("; Secure") is secure
    assert decision.set_cookie.count("Secure") == int(secure)


def test_load_rules_reads_checks_and_compiles_a_file_in_any_thread(tmp_path: Path, table: MountTable) -> None:
    """What a reload does before it swaps the rules in runs in a worker thread, with no
    event loop, and reuses the regular expressions of the rules it replaces."""
    from concurrent.futures import ThreadPoolExecutor

    from gateway.core.mounts import load_rules

    path = tmp_path / "gateway.toml"
    path.write_text(SHOP)
    config = config_with().with_file(path)
    first = table_from(SHOP).route_table
    assert first is not None and first.compiled is not None
    prepared: list[Path | None] = []
    with ThreadPoolExecutor(1) as pool:
        fresh, loaded = pool.submit(load_rules, config, first, lambda c: prepared.append(c.config_file)).result()
        assert prepared == [path.resolve()]
        assert [spec.rule for spec in fresh.file.routes] == [spec.rule for spec in config.file.routes]
        assert not loaded.mounts  # the rules only: a reload keeps the prefix mounts it has
        rules = loaded.route_table
        assert rules is not None and rules.compiled is not None
        assert rules.match("/shop/items/7", "GET").key == "~/shop/items/<int:item_id>"
        reused = {id(pattern) for pattern in first.compiled.made.values()}
        assert rules.compiled.made and all(id(p) in reused for p in rules.compiled.made.values())  # none compiled again
        path.write_text(ruled("/f/<path:a>/<path:b>"))
        with pytest.raises(ConfigFileError, match=r"^\S+gateway.toml, line 4: rule '/f/<path:a>/<path:b>' could take "):
            pool.submit(load_rules, config, rules).result()


@pytest.mark.parametrize(("path", "answer"), [
    pytest.param("/shop/items/4", ("new", "/shop/items/4"), id="ascii-digits"),
    pytest.param("/shop/items/%D9%A1", ("legacy", "/shop/items/\u0661"), id="arabic-indic-digit"),
    pytest.param("//shop/items/4", None, id="leading-double-slash"),
    pytest.param("/shop/a%0Ab", None, id="newline-under-a-path-rule"),
])
def test_a_path_the_apps_routers_read_apart_goes_where_the_rules_say(shop: Send, path: str,
                                                                     answer: tuple[str, str] | None) -> None:
    """`%D9%A1` is no int for the rules (Django's int refuses it): the more general rule's
    app gets it, and reads it as its own router does. A leading `//` and a newline under
    `<path:>` match no rule (Werkzeug and Django read them apart): the gateway's 404."""
    got = shop("GET", f"{BASE}{path}")
    if answer is None:
        assert got.status == 404 and b"No app is mounted at this path" in got.body  # the gateway's, no app's
    else:
        assert got.status == 200 and (got.json()["app"], got.json()["path"]) == answer
