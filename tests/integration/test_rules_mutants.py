"""Route rules (:mod:`gateway.migration.rules`): what mutation testing found that no other
test held (docs/testing.md): each refusal of a ``gateway.toml`` word for word with its line,
the forms each table takes, the nesting count that names a line, converter arguments at
their bounds, ``gateway routes --explain`` line by line, and a client's canary place.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from gateway.migration.rules import (
    MOST_FILE_BYTES,
    ConfigFileError,
    RouteSpec,
    RouteTable,
    check_rule,
    parse_gateway_file,
    read_gateway_file,
)

APPS = '[apps]\nshop = "m:a"\nnew = "m:b"\n'
FORM = ('name = "package.module:attribute", or name = { app = "package.module:attribute", settings = '
        '"project.settings", path = "folder" } (settings: a Django project\'s; path: the folder that holds the '
        "module, relative to this file)")


def refusal(text: str, name: str = "gateway.toml") -> str:
    with pytest.raises(ConfigFileError) as refused:
        parse_gateway_file(text, name)
    return str(refused.value)


def route(extra: str, app: str = '"shop"') -> str:
    """A file with one rule, its [[route]] on line 4."""
    return f'{APPS}[[route]]\nrule = "/a"\napp = {app}\n{extra}\n'


# -- Reading the file ----------------------------------------------------------------------------


def test_a_fifo_is_no_gateway_toml(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    os.mkfifo(path)
    with pytest.raises(ConfigFileError) as refused:
        read_gateway_file(path)
    assert str(refused.value) == (f"{path}: is not a regular file (a FIFO, a device or a folder); name the "
                                  "gateway.toml itself.")


def test_a_file_of_the_largest_size_is_read_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_bytes(b"#" * MOST_FILE_BYTES)  # one comment: tomllib reads it in a blink
    assert read_gateway_file(path).routes == ()
    path.write_bytes(b"#" * (MOST_FILE_BYTES + 1))
    with pytest.raises(ConfigFileError) as refused:
        read_gateway_file(path)
    assert str(refused.value) == f"{path}: is larger than 16 MiB; a gateway.toml of 10,000 rules is about 600 KB."


# -- The tables ----------------------------------------------------------------------------------


def test_each_table_may_be_left_out_and_gateway_settings_keep_their_lines() -> None:
    parsed = parse_gateway_file('\n[gateway]\n\nthreads = 50\n"log_level" = "info"\n')
    assert (parsed.apps, parsed.mounts, parsed.routes) == ({}, (), ())
    assert parsed.settings == {"threads": ("gateway.toml, line 4", 50), "log_level": ("gateway.toml, line 5", "info")}


def test_a_mount_may_name_an_app_of_apps() -> None:
    parsed = parse_gateway_file(APPS + '[mounts]\n"/s" = "shop"\n"/t" = "x.y:z"\n')
    assert parsed.mounts == ("/s=m:a", "/t=x.y:z")


@pytest.mark.parametrize(("text", "message"), [
    pytest.param("\ngateway = 3\n", "gateway.toml, line 2: [gateway] is a table of settings, e.g. threads = 50 "
                 "(docs/configuration.md lists them).", id="gateway-not-a-table"),
    pytest.param("\n\nmounts = 3\n", 'gateway.toml, line 3: mounts must be a table of "/prefix" = '
                 '"package.module:attribute".', id="mounts-not-a-table"),
    pytest.param('\n[mounts]\n"/a" = 3\n', 'gateway.toml, line 2: mounts must be a table of "/prefix" = '
                 '"package.module:attribute".', id="mount-not-text"),
    pytest.param('\nroute = 3\n', "gateway.toml, line 2: routes are written [[route]].", id="route-not-a-list"),
    pytest.param('\n[colours]\n', "gateway.toml, line 2: unknown table or key 'colours'; use [gateway], [apps], "
                 "[mounts], [shadow] and [[route]].", id="unknown-table"),
    pytest.param(route("weight = 3"), "gateway.toml, line 4: unknown key 'weight' in [[route]]; use rule, app, "
                 "methods, fallback_methods, canary, shadow and rollout.", id="unknown-route-key"),
    pytest.param("\napps = 3\n", f"gateway.toml, line 2: apps must be a table of {FORM}.", id="apps-not-a-table"),
    pytest.param('[apps]\n"two words" = "m:a"\n', f"gateway.toml, line 2: app 'two words' must be {FORM}.",
                 id="app-name"),
    pytest.param('[apps]\nshop = 3\n', f"gateway.toml, line 2: app 'shop' must be {FORM}.", id="app-a-number"),
    pytest.param('[apps]\nshop = { app = "m:a", port = 1 }\n', f"gateway.toml, line 2: app 'shop' must be {FORM}.",
                 id="app-unknown-key"),
    pytest.param('[apps]\nshop = { app = "m:a", path = "" }\n', 'gateway.toml, line 2: path must be a folder, '
                 'relative to this file, e.g. path = "mysite".', id="path-empty"),
    pytest.param('[apps]\nshop = { app = "m:a", path = 3 }\n', 'gateway.toml, line 2: path must be a folder, '
                 'relative to this file, e.g. path = "mysite".', id="path-a-number"),
    pytest.param('[apps]\nshop = { app = "m:a", path = "a\\u0000b" }\n', 'gateway.toml, line 2: path must be a '
                 'folder, relative to this file, e.g. path = "mysite".', id="path-nul"),
    pytest.param('[apps]\nshop = { app = "m:a", settings = "my-site.settings" }\n', 'gateway.toml, line 2: '
                 'settings must name a Django settings module, e.g. settings = "mysite.settings" (got '
                 "'my-site.settings').", id="settings-not-a-module"),
    pytest.param('[apps]\nshop = { app = "m:a", settings = 3 }\n', 'gateway.toml, line 2: settings must name a '
                 'Django settings module, e.g. settings = "mysite.settings" (got 3).', id="settings-a-number"),
    pytest.param('[apps]\nshop = { app = "m:a", settings = "one.settings" }\n\nnew = { app = "m:b", settings = '
                 '"two.settings" }\n', "gateway.toml, line 4: app 'new' names the Django settings two.settings, and "
                 "app 'shop' names one.settings; Django reads one settings module per process: serve one Django "
                 "project per gateway (its apps can share it), or run a gateway for each.", id="two-settings"),
])
def test_a_table_of_the_wrong_form_is_refused_word_for_word(text: str, message: str) -> None:
    assert refusal(text) == message


def test_the_files_name_starts_each_refusal() -> None:
    assert refusal('[apps]\nshop = 3\n', "site/gateway.toml").startswith("site/gateway.toml, line 2: app 'shop'")


def test_apps_in_the_table_form_give_their_settings_and_folders() -> None:
    parsed = parse_gateway_file('[apps]\nshop = { app = "m:a", settings = "site.settings", path = "one" }\n'
                                'new = { app = "m:b", settings = "site.settings", path = "two" }\n'
                                'old = { app = "m:c", path = "one" }\nplain = "m:d"\n')
    assert parsed.apps == {"shop": "m:a", "new": "m:b", "old": "m:c", "plain": "m:d"}
    assert (parsed.django_settings, parsed.paths) == ("site.settings", ("one", "two"))
    assert parse_gateway_file('[apps]\nplain = "m:d"\n').django_settings is None


# -- [shadow], and a route's fallback_methods, canary and shadow -------------------------------------

POOL = ("[shadow] takes cpu = 2 (the per cent of one core shadow comparisons may use, above 0, at most 100) and "
        "timeout = 5 (the seconds a comparison's replays may take, above 0, at most 3600).")


def test_the_shadow_pool_takes_its_bounds() -> None:
    parsed = parse_gateway_file("[shadow]\ncpu = 0.5\ntimeout = 3600\n")
    assert (parsed.shadow_cpu, parsed.shadow_timeout) == (0.005, 3600.0)
    assert refusal("\n[shadow]\ntimeout = 3601\n") == f"gateway.toml, line 2: {POOL}"
    assert refusal("\n[shadow]\nthreads = 2\n") == f"gateway.toml, line 2: {POOL}"


@pytest.mark.parametrize(("given", "methods"), [
    pytest.param('["post"]', ("POST",), id="post-alone"),
    pytest.param('["get", "post"]', ("GET", "HEAD", "POST"), id="head-goes-with-get"),
])
def test_fallback_methods_are_upper_cased_and_head_goes_with_get(given: str, methods: tuple[str, ...]) -> None:
    (spec,) = parse_gateway_file(route(f"fallback_methods = {given}", '["shop", "new"]')).routes
    assert spec.fallback_methods == methods


METHODS = 'gateway.toml, line 4: fallback_methods must be a list of HTTP methods, e.g. ["GET", "POST"].'


@pytest.mark.parametrize(("extra", "app", "message"), [
    pytest.param('fallback_methods = ["GET"]', '"shop"', 'gateway.toml, line 4: fallback_methods needs a list of '
                 'apps to fall back along, e.g. app = ["new", "old"].', id="one-app"),
    pytest.param("fallback_methods = []", '["shop", "new"]', METHODS, id="empty"),
    pytest.param("fallback_methods = 3", '["shop", "new"]', METHODS, id="a-number"),
    pytest.param('fallback_methods = ["GET", 3]', '["shop", "new"]', METHODS, id="a-number-in-the-list"),
    pytest.param("canary = 3", '"shop"', 'gateway.toml, line 4: canary must be canary = { app = "name", share = 10 } '
                 '(share: per cent of clients; optional header = "X-User-ID").', id="canary-a-number"),
    pytest.param('shadow = "new"', '"shop"', 'gateway.toml, line 4: shadow must be shadow = { app = "name" } '
                 '(optionally headers = ["Content-Type", ...] to compare, and credentials = true to replay the '
                 "client's cookies and authorization).", id="shadow-not-a-table"),
    pytest.param("shadow = 3", '"shop"', "gateway.toml, line 4: shadow must be ", id="shadow-a-number"),
    pytest.param('shadow = { app = "new", weight = 1 }', '"shop"', "gateway.toml, line 4: shadow must be ",
                 id="shadow-unknown-key"),
    pytest.param('shadow = { app = "nope" }', '"shop"', "gateway.toml, line 4: shadow app 'nope' is not in [apps].",
                 id="shadow-app-unknown"),
    pytest.param('shadow = { app = "new", headers = "Content-Type" }', '"shop"', "gateway.toml, line 4: shadow "
                 'headers must be a list of header names, e.g. ["Content-Type"].', id="headers-not-a-list"),
    pytest.param('shadow = { app = "new", headers = [3] }', '"shop"', "gateway.toml, line 4: shadow headers must be ",
                 id="header-a-number"),
    pytest.param('shadow = { app = "new", credentials = "yes" }', '"shop"', "gateway.toml, line 4: shadow "
                 "credentials must be true or false (false, the default: the candidate gets no Cookie, "
                 "Authorization or Proxy-Authorization).", id="credentials-not-a-bool"),
])
def test_a_routes_options_of_the_wrong_form_are_refused(extra: str, app: str, message: str) -> None:
    text = route(extra, app)
    if message.endswith(".") or message.endswith(")."):
        assert refusal(text) == message
    else:
        assert refusal(text).startswith(message)


def test_a_route_without_canary_or_shadow_has_neither() -> None:
    (spec,) = parse_gateway_file(route("")).routes
    assert (spec.canary, spec.share, spec.header) == (None, 0.0, None)
    assert (spec.shadow, spec.shadow_headers, spec.shadow_credentials) == (None, (), False)


def test_a_shadow_takes_headers_and_credentials() -> None:
    (spec,) = parse_gateway_file(route('shadow = { app = "new", headers = ["Content-Type"], credentials = true }'
                                       )).routes
    assert (spec.shadow, spec.shadow_headers, spec.shadow_credentials) == ("new", ("Content-Type",), True)
    (plain,) = parse_gateway_file(route('shadow = { app = "new" }')).routes
    assert (plain.shadow_headers, plain.shadow_credentials) == ((), False)


def test_a_route_written_as_an_inline_array_is_named_by_its_key_line() -> None:
    text = '\nroute = [{ rule = "a", app = "shop" }]\n' + APPS
    assert refusal(text) == 'gateway.toml, line 2: rule must be a path starting with "/", e.g. rule = "/shop/<int:id>".'
    (spec,) = parse_gateway_file('\nroute = [{ rule = "/a", app = "shop" }]\n' + APPS).routes
    assert spec.line == 2


# -- Nesting -------------------------------------------------------------------------------------

DEEP = "z = " + "[" * 5000 + "]" * 5000  # tomllib raises RecursionError


def deepest(*lines: str) -> str:
    """The refusal of a file whose lines are ``lines`` and then DEEP."""
    return refusal("\n".join([*lines, DEEP]) + "\n")


def nested(line: int) -> str:
    return (f"gateway.toml, line {line}: arrays or tables nest more than 100 deep; a gateway.toml needs a few "
            "levels at most.")


def test_the_first_line_nesting_past_100_is_named() -> None:
    assert refusal(DEEP + "\n") == nested(1)
    # 99 open, one closed, three more: 101 deep on line 2 (the count goes down as brackets close).
    assert deepest("a = 1", "b = " + "[" * 99 + "1], [[[1]]]" + "]" * 98) == nested(2)
    # Exactly 100 deep, then 60 twice over: neither goes past 100.
    assert deepest("a = " + "[" * 100 + "]" * 100, "b = [" + "[" * 59 + "]" * 59 + ", " + "[" * 59 + "]" * 59 + "]"
                   ) == nested(3)


@pytest.mark.parametrize("line", [
    pytest.param('a = "' + "[" * 150 + '"', id="in-a-string"),
    pytest.param("# " + "[" * 150, id="in-a-comment"),
    pytest.param('a = "x\\"' + "[" * 150 + '"', id="after-an-escaped-quote"),
    pytest.param('a = ""', id="an-empty-string"),
    pytest.param("a = 'c:\\'", id="a-literal-string-ends-at-its-quote"),
    pytest.param("X" * 101 + " = 1", id="a-long-key"),
])
def test_brackets_that_do_not_nest_are_not_counted(line: str) -> None:
    assert deepest(line, "b = 1") == nested(3)


def test_a_literal_strings_backslash_escapes_nothing() -> None:
    """In 'c:\\' the backslash is text: the string ends at the quote after it, and the
    brackets on the next line nest."""
    assert deepest("a = 'c:\\'", "b = " + "[" * 101 + "]" * 101) == nested(2)


# -- Rules and converter arguments ---------------------------------------------------------------


@pytest.mark.parametrize(("rule", "problem"), [
    pytest.param("/s" * 101, "has 101 segments; a rule has at most 100 (Werkzeug walks a rule a segment a call "
                 "deeper, and Python stops at 1,000 calls)", id="segments"),
    pytest.param("/a/<int(min=abc):x>", "has <int(min=abc):x>: min must be a whole number, e.g. <int(min=1):x>",
                 id="names-the-converter"),
    pytest.param("/a/<path(x=1):p>", "has <path(x=1):p>: path has no argument 'x' (it takes no arguments)",
                 id="path-takes-none"),
    pytest.param("/a/<string(length=3, minlength=2):s>", "has <string(length=3, minlength=2):s>: give length, or "
                 "minlength and maxlength, not both", id="length-and-minlength"),
    pytest.param("/a/<string(minlength=3, maxlength=2):s>", "has <string(minlength=3, maxlength=2):s>: minlength "
                 "is more than maxlength: no value could match", id="minlength-over-maxlength"),
    pytest.param("/a/<int(min=3, max=2):n>", "has <int(min=3, max=2):n>: min is more than max: no value could match",
                 id="min-over-max"),
    pytest.param("/a/<float(min=abc):f>", "has <float(min=abc):f>: min must be a number, e.g. <float(min=0.5):f>",
                 id="float-text"),
    pytest.param("/a/<int(min=True):n>", "has <int(min=True):n>: min must be a whole number, e.g. <int(min=1):n>",
                 id="bool-is-no-whole-number"),
])
def test_a_rules_problem_is_said_whole(rule: str, problem: str) -> None:
    assert check_rule(rule) == problem


@pytest.mark.parametrize("rule", [
    "/a/<string(maxlength=1):s>", "/a/<string(minlength=2, maxlength=2):s>", "/a/<int(max=5):n>",
    "/a/<int(min=2, max=2):n>", "/a/<string(length=1):s>", "/a/<string(length=1048576):s>",
    "/a/<int(fixed_digits=1):n>", f"/a/<int(fixed_digits={sys.get_int_max_str_digits()}):n>",
])
def test_arguments_at_their_bounds_are_taken(rule: str) -> None:
    assert check_rule(rule) is None


# -- Explaining and choosing ---------------------------------------------------------------------

EXPLAINED = APPS + '''old = "m:c"
[[route]]
rule = "/p/<path:rest>"
app = "shop"
[[route]]
rule = "/p/<name>/<int:n>"
app = "shop"
[[route]]
rule = "/p/items/<int:n>"
app = ["new", "shop", "old"]
[[route]]
rule = "/cookie"
app = "shop"
canary = { app = "new", share = 12.5 }
[[route]]
rule = "/header"
app = "shop"
canary = { app = "new", share = 5, header = "X-User-ID" }
[[route]]
rule = "/shadowed"
app = "shop"
shadow = { app = "new" }
[[route]]
rule = "/verbs"
app = "shop"
methods = ["POST", "PUT"]
'''


def test_explain_says_each_step_word_for_word() -> None:
    routes = RouteTable(parse_gateway_file(EXPLAINED).routes)
    assert routes.explain("/p/items/3") == [
        "GET /p/items/3 matches rule '/p/items/<int:n>' (line 11) with {'n': 3}.",
        "More general rules that match too, and lose to it (Werkzeug orders rules by specificity): "
        "'/p/<path:rest>', '/p/<name>/<int:n>'.",
        "App 'new' answers it; on a 404 to GET or HEAD, 'shop', then 'old' is asked next."]
    assert routes.explain("/cookie")[1:] == [
        "12.5% of clients, chosen by the gateway_canary cookie, go to app 'new'; the others:",
        "App 'shop' answers it, with SCRIPT_NAME \"\" and PATH_INFO '/cookie'."]
    assert routes.explain("/header")[1] == (
        "5% of clients, chosen by the value of its X-User-ID header, go to app 'new'; the others:")
    assert routes.explain("/shadowed")[-1] == (
        "In shadow mode: after the answer, a GET or HEAD is replayed on 'new' and compared (gateway diff).")
    assert routes.explain("/verbs") == ["GET /verbs: rules match this path for POST, PUT only: 405."]
    assert routes.explain("/verbs", "PUT")[0] == "PUT /verbs matches rule '/verbs' (line 26)."


def test_more_general_rules_are_those_that_match_the_method_too() -> None:
    text = (APPS + '[[route]]\nrule = "/q/<path:p>"\napp = "shop"\nmethods = ["POST"]\n'
            '[[route]]\nrule = "/q/x"\napp = "new"\n')
    routes = RouteTable(parse_gateway_file(text).routes)
    assert len(routes.explain("/q/x")) == 2  # the POST-only rule is not listed for a GET
    assert routes.explain("/q/x", "POST")[1] == ("More general rules that match too, and lose to it (Werkzeug orders "
                                                 "rules by specificity): '/q/<path:p>'.")


ROLLOUT = (APPS + '[[route]]\nrule = "/cart"\napp = "shop"\ncanary = { app = "new" }\n'
           "[route.rollout]\nsteps = [10, 100]\ninterval = 3600\nrequests = 30\nhandover = true\n"
           '[[route]]\nrule = "/plain"\napp = "shop"\ncanary = { app = "new", share = 7 }\n')


def test_explain_says_a_rollouts_share_and_its_hand_over(tmp_path: Path) -> None:
    pytest.importorskip("scipy")
    from gateway.migration.rollout import act
    from gateway.migration.rollout_store import Store, database_url

    spec, plain = parse_gateway_file(ROLLOUT).routes
    assert RouteTable([spec]).explain("/cart")[1] == (  # no database: the rule's own share
        "0% of clients, chosen by the gateway_canary cookie, go to app 'new' (its rollout's share now); the others:")
    url = database_url(tmp_path, {})
    routes = RouteTable([spec, plain], rollout_database=url)
    rollouts = routes.rollouts
    assert rollouts is not None
    heard: list[tuple[object, ...]] = []
    try:
        rollouts.poll()  # begins the rollout at its first step
        routes.listen(lambda *told: heard.append(told))
        assert heard == [("rollout_share", spec.key, ("10",))]
        assert (routes.share(spec), routes.share(plain)) == (10.0, 7.0)  # a rule without a rollout keeps its own
        assert routes.explain("/cart")[1] == ("10% of clients, chosen by the gateway_canary cookie, go to app 'new' "
                                              "(its rollout's share now); the others:")
        assert routes.explain("/plain")[1] == (
            "7% of clients, chosen by the gateway_canary cookie, go to app 'new'; the others:")
        with Store(url) as store:
            act(store, spec, "promote", actor="erin", reason="")
            act(store, spec, "promote", actor="erin", reason="")  # past the last step: done, handed over
        rollouts.poll()
        assert routes.explain("/cart")[1:] == [
            "Its rollout is done and handed the rule over: app 'new' answers it, for every client, with "
            "SCRIPT_NAME \"\" and PATH_INFO '/cart'."]
        assert routes.explain("/plain")[1].startswith("7% of clients")
    finally:
        rollouts.stop()


def test_a_clients_canary_place_never_changes_between_releases() -> None:
    """A client's place is a hash of the rule and its ID: a new release must not move clients
    between the apps. Client ``c3612``'s place on this rule is 5000, the first past 50%."""
    spec = RouteSpec("/cart", ("old",), canary="new", share=50)
    assert not spec.chooses_canary("c3612") and spec.chooses_canary("c3612", 50.01)
    assert RouteSpec("/cart", ("old",), canary="new", share=0).chooses_canary("c3612", 50.01)  # the share given wins


def test_a_reload_carries_the_counts_the_shared_board_and_the_rollouts_on(tmp_path: Path) -> None:
    pytest.importorskip("scipy")
    from gateway.migration.rollout_store import database_url

    spec, plain = parse_gateway_file(ROLLOUT).routes
    old = RouteTable([spec, plain], shared_dir=tmp_path, rollout_database=database_url(tmp_path, {}))
    assert old.board is not None and old.rollouts is not None
    try:
        old.rollouts.poll()
        old.fell_back(plain.key)
        old.canaried[plain.key] += 3
        new = RouteTable([spec, plain], previous=old)
        assert (new.fallbacks[plain.key], new.canaried[plain.key]) == (1, 3)
        assert new.traffic.series(plain.key, what="fallback")[-1] == 1  # the migration page's minute counts
        assert new.board is old.board  # one writer of this worker's file for the other workers
        assert new.rollouts is old.rollouts and new.share(spec) == 10.0  # the rollout goes on, not restarted
    finally:
        old.rollouts.stop()
        old.board.close()


def test_a_long_path_werkzeug_answers_is_matched_whole() -> None:
    """Paths over 256 characters are not cached; Werkzeug still answers their 405s."""
    text = APPS + '[[route]]\nrule = "/long/<path:p>"\napp = "shop"\nmethods = ["POST"]\n'
    routes = RouteTable(parse_gateway_file(text).routes)
    long = "/long/" + "a" * 300
    assert routes.match(long, "GET").allowed == ("POST",)
    assert routes.match(long, "POST").key == routes.match("/long/a", "POST").key is not None


def test_methods_are_upper_cased_and_head_goes_with_get() -> None:
    (spec,) = parse_gateway_file(route('methods = ["get", "post"]')).routes
    assert spec.methods == ("GET", "HEAD", "POST")
    (posting,) = parse_gateway_file(route('methods = ["post"]')).routes
    assert posting.methods == ("POST",)
    assert refusal(route("methods = 3")) == ('gateway.toml, line 4: methods must be a list of HTTP methods, e.g. '
                                             '["GET", "POST"].')


@pytest.mark.parametrize(("text", "message"), [
    pytest.param(route("", "[3]"), "gateway.toml, line 4: app must name an app of [apps], or a list of them in "
                 "fallback order.", id="app-a-number"),
    pytest.param(route("", "[]"), "gateway.toml, line 4: app must name an app of [apps], or a list of them in "
                 "fallback order.", id="app-empty"),
    pytest.param('[[route]]\nrule = "/a"\napp = "shop"\n', "gateway.toml, line 1: app 'shop' is not in [apps].",
                 id="no-apps"),
    pytest.param(route('shadow = { app = "new" }', '["shop", "new"]'), "gateway.toml, line 4: a rule in shadow mode "
                 "has one app, and no canary (but the one a rollout judges, when it is the shadow's app).",
                 id="shadow-with-two-apps"),
    pytest.param(route('shadow = { app = "new" }\ncanary = { app = "new", share = 5 }'), "gateway.toml, line 4: a "
                 "rule in shadow mode has one app, and no canary (but the one a rollout judges, when it is the "
                 "shadow's app).", id="shadow-and-its-canary-without-a-rollout"),
])
def test_a_routes_apps_of_the_wrong_form_are_refused(text: str, message: str) -> None:
    assert refusal(text) == message
