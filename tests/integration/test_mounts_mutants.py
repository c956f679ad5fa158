"""The mount table (:mod:`gateway.core.mounts`): what mutation testing found that no other
fast test held (docs/testing.md): which mounts a route rule hides, the one-line errors of
``import_app``, the names a rule's mounts show, and the framework named for an app.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.core.mounts import MountError, MountTable, describe_framework, import_app, rule_mounts_of
from gateway.migration.rules import RouteSpec


def hidden_by(rule: str, methods: str = '["GET"]') -> dict[str, str]:
    from gateway.migration.rules import parse_gateway_file

    parsed = parse_gateway_file(f'''
[apps]
shop = "tests.thirdapp:echo_app"

[mounts]
"/a" = "tests.thirdapp:wsgi_app"
"/b" = "tests.thirdapp:wsgi_app"

[[route]]
rule = "{rule}"
app = "shop"
methods = {methods}
''')
    return MountTable.from_specs(parsed.mounts, defaults=False, routes=parsed.routes, apps=parsed.apps).hidden()


@pytest.mark.parametrize(
    ("rule", "methods", "hidden"),
    [
        pytest.param("/<path:rest>", '["GET"]', {"/a": "/<path:rest>", "/b": "/<path:rest>"}, id="catch-all"),
        pytest.param("/a/", '["GET"]', {"/a": "/a/"}, id="the-mount-root"),
        pytest.param("/a/index.html", '["GET"]', {"/a": "/a/index.html"}, id="an-index-page"),
        pytest.param("/a/<x>/<y>", '["GET"]', {"/a": "/a/<x>/<y>"}, id="two-segments-down"),
        pytest.param("/a/a/b", '["GET"]', {"/a": "/a/a/b"}, id="two-static-segments-down"),
        pytest.param("/a/<x>", '["POST"]', {"/a": "/a/<x>"}, id="post-only"),
        pytest.param("/c/<x>", '["GET"]', {}, id="no-mount-under-it"),
    ],
)
def test_the_mounts_a_rule_hides(rule: str, methods: str, hidden: dict[str, str]) -> None:
    assert hidden_by(rule, methods) == hidden


def test_a_table_without_rules_hides_nothing() -> None:
    assert MountTable.from_specs(["/a=tests.thirdapp:wsgi_app"], defaults=False).hidden() == {}


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("mutmounts_dep", "mutmounts_raises", "mutmounts_factory"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    (tmp_path / "mutmounts_dep.py").write_text("import mutmounts_nosuchdep\n")
    (tmp_path / "mutmounts_raises.py").write_text("raise RuntimeError('Bad BOX.\\nsecond line')\n")
    (tmp_path / "mutmounts_factory.py").write_text(
        "def app(environ, start_response):\n    return [b'']\n\n"
        "def make():\n    return app\n\n"
        "def broken():\n    raise ValueError('nope')\n\n"
        "def silent():\n    raise ValueError()\n")
    return tmp_path


@pytest.mark.parametrize(
    ("target", "message"),
    [
        pytest.param("mutmounts_dep:app", 'Importing "mutmounts_dep" (from "mutmounts_dep:app") failed: '
                     "ModuleNotFoundError: No module named 'mutmounts_nosuchdep'.", id="a-missing-dependency"),
        pytest.param("mutmounts_raises:app", 'Importing "mutmounts_raises" (from "mutmounts_raises:app") failed: '
                     "RuntimeError: Bad BOX.", id="the-module-raises"),
        pytest.param("mutmounts_factory:broken()", 'Calling "mutmounts_factory:broken()" failed: ValueError: nope.',
                     id="the-factory-raises"),
        pytest.param("mutmounts_factory:silent()",
                     'Calling "mutmounts_factory:silent()" failed: ValueError: (no message).', id="without-a-message"),
    ],
)
def test_import_errors_are_one_line(modules: Path, target: str, message: str) -> None:
    with pytest.raises(MountError) as caught:
        import_app(target)
    assert str(caught.value) == message and caught.value.__cause__ is not None


def test_a_factory_is_called(modules: Path) -> None:
    app = import_app("mutmounts_factory:make()")
    assert app.__name__ == "app" and app is import_app("mutmounts_factory:app")


def test_a_rules_mounts_name_their_targets() -> None:
    def app(environ: Any, start_response: Any) -> Any:
        return [b""]

    spec = RouteSpec("/x", ("a", "b"), canary="c", shadow="d")
    loaded = {name: (app, "wsgi") for name in "abcd"}
    named = rule_mounts_of([spec], loaded, {name: f"pkg:{name}" for name in "abcd"})
    assert [(m.prefix, m.target, m.interface) for m in named] == [
        (spec.key, "pkg:a, pkg:b", "wsgi"), (spec.fallback_key(1), "pkg:b", "wsgi"),
        (spec.canary_key, "pkg:c", "wsgi"), (spec.shadow_key, "pkg:d", "wsgi")]
    assert all(m.app is app for m in named)
    assert [m.target for m in rule_mounts_of([spec], loaded, {})] == ["a, b", "b", "c", "d"]


def test_a_rules_app_is_imported_and_its_interface_detected() -> None:
    from gateway.migration.rules import parse_gateway_file
    from tests.thirdapp import asgi_app

    parsed = parse_gateway_file('''
[apps]
shop = "tests.thirdapp:asgi_app"

[[route]]
rule = "/shop"
app = "shop"
''')
    table = MountTable.from_specs(parsed.mounts, defaults=False, routes=parsed.routes, apps=parsed.apps)
    mount = table.routes[parsed.routes[0].key]
    assert (mount.app, mount.interface, mount.target) == (asgi_app, "asgi", "tests.thirdapp:asgi_app")


def test_django_is_named_with_its_version() -> None:
    from importlib import metadata

    django = next(m.app for m in MountTable.from_specs([]) if m.prefix == "/django")
    assert describe_framework(django, "wsgi") == f"Django {metadata.version('django')}"
