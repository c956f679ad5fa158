"""The mount table: parsing, loading, and routing by Werkzeug's dispatch rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from gateway.core.mounts import MountError, MountSpec, MountTable

PREFIXES = ["/a", "/a/b", "/ab", "/c/d/e", "/flask", "/django"]


@pytest.fixture(scope="module")
def table() -> MountTable:  # type: ignore[override]
    return MountTable.from_specs([f"{p}=tests.thirdapp:wsgi_app" for p in PREFIXES], defaults=False)


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
        assert path_info == path


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
        pytest.param("no_such_module:app", 'Could not import module "no_such_module"', id="module"),
        pytest.param("tests.thirdapp:nope", 'Attribute "nope" not found in module "tests.thirdapp"', id="attribute"),
        pytest.param("tests.thirdapp:not_callable", "is not a WSGI or ASGI application", id="not-callable"),
    ],
)
def test_load_errors_are_one_sentence(target: str, message: str) -> None:
    with pytest.raises(MountError, match=message):
        MountTable.from_specs([f"/x={target}"], defaults=False)
