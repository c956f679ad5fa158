"""The mount table: parsing, loading, and routing by Werkzeug's dispatch rules."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from gateway.core.config import Config
from gateway.core.mounts import (
    MountError,
    MountSpec,
    MountTable,
    describe_framework,
    detect_interface,
    import_app,
    rule_options,
)
from gateway.migration.rules import RouteSpec

PREFIXES = ["/a", "/a/b", "/ab", "/c/d/e", "/flask", "/django"]


def dispatched(path: str) -> tuple[str | None, str, str]:
    """What Werkzeug's DispatcherMiddleware does with ``path``: (prefix, SCRIPT_NAME, PATH_INFO)."""
    seen: list[tuple[str | None, str, str]] = []

    def app_for(prefix: str | None):  # type: ignore[no-untyped-def]
        def app(environ, start_response):  # type: ignore[no-untyped-def]
            seen.append((prefix, environ["SCRIPT_NAME"], environ["PATH_INFO"]))
            return []

        return app

    dispatcher = DispatcherMiddleware(app_for(None), {p: app_for(p) for p in PREFIXES})
    dispatcher({"SCRIPT_NAME": "", "PATH_INFO": path}, lambda *a: None)
    return seen[0]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "ab", "c", "d", "e", "", "flask", "django", "x"]), max_size=5))
def test_match_agrees_with_werkzeugs_dispatcher(segments: list[str]) -> None:
    table = MountTable.from_specs([f"{p}=tests.thirdapp:wsgi_app" for p in PREFIXES], defaults=False)
    path = "/" + "/".join(segments)
    mount, script_name, path_info = table.match(path)
    prefix, werkzeug_script, werkzeug_info = dispatched(path)
    assert (mount.prefix if mount else None) == prefix
    if mount is not None:
        assert (script_name, path_info) == (werkzeug_script, werkzeug_info)
    else:
        assert (script_name, path_info) == ("", path)


@pytest.mark.parametrize(
    ("text", "prefix", "target", "interface"),
    [
        pytest.param("/api=pkg.mod:app", "/api", "pkg.mod:app", None, id="plain"),
        pytest.param("/a/b=m:obj.attr@asgi", "/a/b", "m:obj.attr", "asgi", id="nested-asgi"),
        pytest.param(" /x=m:a@wsgi ", "/x", "m:a", "wsgi", id="spaces"),
    ],
)
def test_spec_parse(text: str, prefix: str, target: str, interface: str | None) -> None:
    assert MountSpec.parse(text) == MountSpec(prefix, target, interface)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("api=m:a", id="no-slash"),
        pytest.param("/api/=m:a", id="trailing-slash"),
        pytest.param("/=m:a", id="root"),
        pytest.param("/a/../b=m:a", id="dot-dot"),
        pytest.param("/a/./b=m:a", id="dot"),
        pytest.param("/a=b=m:a", id="two-equals-signs"),
        pytest.param("/a=m", id="no-attribute"),
        pytest.param("/a=m:a@http", id="bad-interface"),
        pytest.param("/a", id="no-target"),
        pytest.param("/a b=m:a", id="space"),
    ],
)
def test_spec_parse_refuses(text: str) -> None:
    with pytest.raises(MountError) as error:
        MountSpec.parse(text)
    assert "/prefix" in str(error.value) or "must start with" in str(error.value)


def test_later_specs_replace_earlier_ones_and_defaults() -> None:
    table = MountTable.from_specs(["/flask=tests.thirdapp:wsgi_app", "/x=tests.thirdapp:asgi_app"])
    assert [(m.prefix, m.target, m.interface) for m in table] == [
        ("/flask", "tests.thirdapp:wsgi_app", "wsgi"),
        ("/django", "django_hello.wsgi:application", "wsgi"),
        ("/x", "tests.thirdapp:asgi_app", "asgi"),
    ]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        pytest.param("no_such_module:app", 'Could not import module "no_such_module" (from "no_such_module:app"): is '
                     "the folder that holds it the current directory, or the gateway.toml's?", id="module"),
        pytest.param("tests.thirdapp:nope", 'Attribute "nope" not found in module "tests.thirdapp"', id="attribute"),
        pytest.param("tests.thirdapp:not_callable", "is not a WSGI or ASGI application", id="not-callable"),
    ],
)
def test_load_errors_are_one_sentence(target: str, message: str) -> None:
    with pytest.raises(MountError, match=re.escape(message)):
        MountTable.from_specs([f"/x={target}"], defaults=False)


def test_a_bad_prefix_is_named_with_the_form_expected() -> None:
    with pytest.raises(MountError) as error:
        MountSpec.parse("/a/./b=m:a")
    assert str(error.value) == ('Mount prefix "/a/./b" must start with "/", have no trailing slash, and use only URL '
                                'path characters, e.g. "/flask" or "/apps/blog".')


class AsyncCallable:
    """An ASGI app as an instance of a class with an async ``__call__``."""

    async def __call__(self, scope: object, receive: object, send: object) -> None: ...


class SyncCallable:
    def __call__(self, environ: object, start_response: object) -> list[bytes]:
        return []


def test_the_interface_is_read_from_the_call() -> None:
    assert detect_interface(AsyncCallable()) == "asgi"
    assert detect_interface(SyncCallable()) == "wsgi"


def made_in(module: str) -> object:
    """An instance of a class defined in ``module`` (as an app of that framework is)."""
    return type("App", (SyncCallable,), {"__module__": module})()


def test_the_framework_is_named_from_the_apps_package() -> None:
    from flask_hello import app

    assert MountTable.from_specs(["/f=flask_hello:app"], defaults=False).mounts["/f"].framework == (
        f"Flask {metadata.version('flask')}")
    assert describe_framework(app, "wsgi") == f"Flask {metadata.version('flask')}"
    # Named whether or not the package is installed (here it is not, or not in every venv).
    for module, name in [("starlette.applications", "Starlette"), ("fastapi.applications", "FastAPI")]:
        assert describe_framework(made_in(module), "asgi").partition(" ")[0] == name
    assert describe_framework(made_in("myshop.app"), "asgi") == "ASGI app"
    assert describe_framework(SyncCallable(), "wsgi") == "WSGI app"


def test_the_shadow_log_is_where_gateway_diff_reads_it(tmp_path: Path) -> None:
    config = Config.from_env({"GATEWAY_DATA_DIR": str(tmp_path)})
    assert rule_options(config)["shadow_log"] == tmp_path / "shadow.jsonl"


def test_an_attribute_path_reaches_into_the_module() -> None:
    from flask_hello import app

    assert import_app("flask_hello:app.wsgi_app") == app.wsgi_app


def test_the_apps_of_route_rules_are_loaded_as_declared(tmp_path: Path) -> None:
    wrapped, plain = "tests.thirdapp:wrapped_asgi_items@asgi", "tests.thirdapp:wsgi_app"
    table = MountTable.from_specs((), defaults=False, apps={"items": wrapped, "plain": plain}, shared_dir=tmp_path,
                                  routes=[RouteSpec("/items/<int:n>", ("items",)),
                                          RouteSpec("/both/<int:n>", ("items", "plain"))])
    # "@asgi" where the call looks like WSGI's: taken as said, and probed by /readyz as ASGI.
    # Each app of a fallback chain has a mount of its own, in its own interface.
    assert {m.prefix: (m.target, m.interface) for m in table.routes.values()} == {
        "~/items/<int:n>": (wrapped, "asgi"), "~/both/<int:n>": (f"{wrapped}, {plain}", "asgi"),
        "~/both/<int:n> fallback 1": (plain, "wsgi")}
    assert {name: interface for name, (_, interface) in table.checked().items()} == {"app:items": "asgi",
                                                                                     "app:plain": "wsgi"}
    board = table.route_table.board if table.route_table is not None else None
    assert board is not None
    board.start()
    board.close()
    assert [path.suffix for path in tmp_path.iterdir()] == [".json"]  # the workers' counts, shared there


def test_an_app_of_another_interface_is_refused_in_one_sentence() -> None:
    with pytest.raises(MountError) as error:
        MountTable.from_specs((), defaults=False, apps={"items": "tests.thirdapp:asgi_items@http"},
                              routes=[RouteSpec("/items/<int:n>", ("items",))])
    assert str(error.value) == ('App "items" (tests.thirdapp:asgi_items@http): the interface after "@" must be wsgi '
                                "or asgi.")


def test_a_target_with_two_colons_names_the_attribute_it_lacks() -> None:
    """An [apps] value of gateway.toml reaches ``import_app`` unparsed: the module is what
    comes before the first colon."""
    with pytest.raises(MountError) as error:
        import_app("tests.thirdapp:wsgi_app:extra")
    assert str(error.value) == 'Attribute "wsgi_app:extra" not found in module "tests.thirdapp".'
