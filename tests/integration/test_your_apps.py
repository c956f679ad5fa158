"""Your apps first: a team's own Flask app and Django project, mounted from one gateway.toml.

In process: the file's ``[apps]`` (settings, path), import errors in one line, factories,
``gateway init``'s finding, the demo apps only when nothing is named, hidden mounts and
the index. On real servers: a new user's folder (a Flask module, ``django-admin
startproject``, ``gateway init``, ``gateway serve``), settings Django cannot run, and the
README's route-rules example, run as written.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from html import escape
from pathlib import Path

import httpx
import pytest

from gateway.core.config import Config
from gateway.core.mounts import MountError, MountTable, import_app
from gateway.core.pages import Pages
from gateway.migration.rules import ConfigFileError, RouteSpec, RouteTable, parse_gateway_file
from gateway.serve import frameworks
from gateway.serve.scaffold import find_django, find_flask, gateway_toml
from tests.support import GATEWAY, ROOT, ServerProcess, free_port, server_env

HELLO = '''from flask import Flask, url_for

app = Flask(__name__)


@app.get("/")
def index():
    return f"Hello from your Flask app at {url_for('index')}"
'''


def startproject(folder: Path, *, here: bool = False) -> None:
    """``django-admin startproject mysite`` in ``folder`` (``here``: ``mysite .``), Django's own command.

    On settings not configured yet, the command configures empty ones (no DATABASES), and every
    later test of this process that loads the gateway finds Django set up without a database; so
    Django is set up first as the gateway sets it up (the ``table`` fixture's way)."""
    import django
    from django.conf import settings
    from django.core.management import call_command

    if not settings.configured:
        from gateway.core.config import Config
        from gateway.serve import frameworks

        frameworks.set_up(Config.from_env())
        django.setup(set_prefix=False)  # as the demo's WSGI module does when the gateway imports it
    target = folder if here else folder / "mysite"
    target.mkdir(exist_ok=True)
    call_command("startproject", "mysite", str(target))


# --- gateway.toml's [apps] -------------------------------------------------------------


def test_an_app_names_its_django_settings_and_its_folder() -> None:
    parsed = parse_gateway_file(
        '[apps]\nshop = "shop:app"\n'
        'mysite = { app = "mysite.wsgi:application", settings = "mysite.settings", path = "mysite" }\n'
        '[mounts]\n"/mysite" = "mysite"\n')
    assert parsed.apps == {"shop": "shop:app", "mysite": "mysite.wsgi:application"}
    assert parsed.django_settings == "mysite.settings"
    assert parsed.paths == ("mysite",)
    assert parsed.mounts == ("/mysite=mysite.wsgi:application",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param('[apps]\na = { app = "a.wsgi:application", settings = "a.settings" }\n'
                     'b = { app = "b.wsgi:application", settings = "b.settings" }\n',
                     r"gateway\.toml, line 3: app 'b' names the Django settings b\.settings, and app 'a' names "
                     r"a\.settings; Django reads one settings module per process", id="two-settings"),
        pytest.param('[apps]\na = { app = "a.wsgi:application", settings = "a/settings.py" }\n',
                     r"line 2: settings must name a Django settings module, e\.g\. settings = \"mysite\.settings\" "
                     r"\(got 'a/settings\.py'\)", id="settings-a-file"),
        pytest.param('[apps]\na = { app = "a.wsgi:application", path = 3 }\n',
                     r"line 2: path must be a folder, relative to this file", id="path-a-number"),
        pytest.param('[apps]\na = { app = "a:app", port = 3 }\n', r"line 2: app 'a' must be name = ",
                     id="unknown-key"),
        pytest.param('[apps]\na = { settings = "a.settings" }\n', r"line 2: app 'a' must be name = ", id="no-app"),
    ],
)
def test_apps_that_cannot_work_are_refused_in_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigFileError, match=message) as caught:
        parse_gateway_file(text)
    assert "\n" not in str(caught.value)


def test_two_apps_may_name_the_same_settings() -> None:
    parsed = parse_gateway_file('[apps]\na = { app = "a.wsgi:application", settings = "site.settings" }\n'
                                'b = { app = "b.wsgi:application", settings = "site.settings" }\n')
    assert parsed.django_settings == "site.settings"


@pytest.mark.parametrize(
    ("config", "named", "demo"),
    [
        pytest.param(Config(), False, True, id="nothing-named"),
        pytest.param(Config(mounts=("/api=myapi:app",)), True, False, id="a-mount"),
        pytest.param(Config(file=parse_gateway_file('[apps]\nx = "x:app"\n')), True, False, id="an-app"),
        pytest.param(Config(file=parse_gateway_file('[mounts]\n"/flask" = "flask_hello:app"\n')), True, True,
                     id="a-demo-app-named"),
        pytest.param(Config(mounts=("/x=django_hello.wsgi:application",)), True, True, id="the-demo-django-named"),
    ],
)
def test_the_demo_apps_are_set_up_only_when_served(config: Config, named: bool, demo: bool) -> None:
    assert frameworks.names_apps(config) is named
    assert frameworks.serves_demo(config) is demo


def test_a_gateway_toml_in_the_current_folder_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Config.from_env({}).config_file is None
    (tmp_path / "gateway.toml").write_text('[apps]\nx = "x:app"\n[mounts]\n"/x" = "x"\n')
    config = Config.from_env({})
    assert config.config_file == tmp_path / "gateway.toml"
    assert config.file.mounts == ("/x=x:app",)
    other = tmp_path / "other.toml"
    other.write_text("")
    assert Config.from_env({"GATEWAY_CONFIG": str(other)}).config_file == other


def test_other_settings_in_a_process_whose_django_runs_already_are_refused(table: MountTable) -> None:
    config = Config(config_file=Path("gateway.toml"),
                    file=parse_gateway_file('[apps]\nm = { app = "m.wsgi:application", settings = "m.settings" }\n'))
    with pytest.raises(frameworks.SetupError, match=r"gateway\.toml names the Django settings m\.settings, but "
                                                    r"Django is already set up in this process with "
                                                    r"django_hello\.settings; Django reads one settings module"):
        frameworks.set_up(config)


# --- importing an app --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        pytest.param('raise RuntimeError("no database here\\nand a second line")',
                     'Importing "probe_mod" (from "probe_mod:app") failed: RuntimeError: no database here.',
                     id="runtime-error"),
        pytest.param('raise ValueError("bad value.")',
                     'Importing "probe_mod" (from "probe_mod:app") failed: ValueError: bad value.', id="value-error"),
        pytest.param('raise KeyError("Missing setting FOO_X.")',
                     'Importing "probe_mod" (from "probe_mod:app") failed: KeyError: \'Missing setting FOO_X.\'.',
                     id="key-error"),
        pytest.param('raise RuntimeError("Missing setting FOO_X.")',
                     'Importing "probe_mod" (from "probe_mod:app") failed: RuntimeError: Missing setting FOO_X.',
                     id="message-ending-in-x"),
        pytest.param("raise RuntimeError()",
                     'Importing "probe_mod" (from "probe_mod:app") failed: RuntimeError: (no message).',
                     id="no-message"),
        pytest.param('raise RuntimeError("  ")',
                     'Importing "probe_mod" (from "probe_mod:app") failed: RuntimeError: (no message).',
                     id="blank-message"),
        pytest.param("import no_such_dependency_here",
                     'Importing "probe_mod" (from "probe_mod:app") failed: ModuleNotFoundError: No module named '
                     "'no_such_dependency_here'.", id="its-import-fails"),
        pytest.param("def broken(:\n    pass", 'Importing "probe_mod" (from "probe_mod:app") failed: SyntaxError: ',
                     id="syntax-error"),
        pytest.param("raise SystemExit('bye')", None, id="system-exit-is-not-caught"),
    ],
)
def test_an_app_that_fails_to_import_is_one_line_naming_the_module(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, message: str | None) -> None:
    (tmp_path / "probe_mod.py").write_text(source + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "probe_mod", raising=False)
    if message is None:
        with pytest.raises(SystemExit):
            import_app("probe_mod:app")
        return
    with pytest.raises(MountError) as caught:
        import_app("probe_mod:app")
    if "SyntaxError" in message:  # its message goes on with the file's name and line
        assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    else:
        assert str(caught.value) == message
    assert caught.value.__cause__ is not None  # what --traceback prints


def test_a_factory_is_called(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "factory_mod.py").write_text(
        "from flask import Flask\n\ncalls = []\n\n"
        "def create_app():\n    calls.append(1)\n    return Flask('factory_mod')\n\n"
        "def broken():\n    raise KeyError('SECRET')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "factory_mod", raising=False)  # this test's module, imported afresh
    app = import_app("factory_mod:create_app()")
    assert type(app).__name__ == "Flask" and sys.modules["factory_mod"].calls == [1]
    with pytest.raises(MountError, match=r"^Calling \"factory_mod:broken\(\)\" failed: KeyError: 'SECRET'\.$"):
        import_app("factory_mod:broken()")
    assert frameworks.targets(Config(mounts=("/f=factory_mod:create_app()",))) == ["factory_mod:create_app()"]


# --- gateway init's finding ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "target"),
    [
        pytest.param({"hello.py": HELLO}, "hello:app", id="module-app"),
        pytest.param({"site/__init__.py": "from flask import Flask\n\ndef create_app():\n    return Flask(__name__)\n"},
                     "site:create_app()", id="package-factory"),
        pytest.param({"web.py": "import flask\nserver = flask.Flask(__name__)\n"}, "web:server", id="any-name"),
        pytest.param({"both.py": "from flask import Flask\n\ndef create_app():\n    return Flask(__name__)\n\n"
                                 "app = create_app()\n"}, "both:app", id="app-over-factory"),
        pytest.param({"notflask.py": "app = object()\n"}, None, id="no-flask-import"),
        pytest.param({"bad.py": "from flask import Flask\napp = (\n"}, None, id="syntax-error"),
        pytest.param({"my-app.py": HELLO}, None, id="not-a-module-name"),
        pytest.param({"manage.py": HELLO}, None, id="manage-py-is-skipped"),
    ],
)
def test_init_finds_a_flask_app_without_importing_it(tmp_path: Path, files: dict[str, str],
                                                     target: str | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert [found.target for found in find_flask(tmp_path)] == ([target] if target else [])


@pytest.mark.parametrize("here", [pytest.param(False, id="one-folder-down"), pytest.param(True, id="with-the-dot")])
def test_init_finds_a_startproject_and_writes_a_file_that_parses(tmp_path: Path, here: bool) -> None:
    startproject(tmp_path, here=here)
    (tmp_path / "hello.py").write_text(HELLO)
    [django] = find_django(tmp_path)
    assert (django.target, django.settings, django.path) == (
        "mysite.wsgi:application", "mysite.settings", None if here else "mysite")
    parsed = parse_gateway_file(gateway_toml(tmp_path, [*find_flask(tmp_path), django]))
    assert parsed.apps == {"hello": "hello:app", "mysite": "mysite.wsgi:application"}
    assert parsed.django_settings == "mysite.settings"
    assert parsed.paths == (() if here else ("mysite",))
    assert parsed.mounts == ("/hello=hello:app", "/mysite=mysite.wsgi:application")


def test_init_names_two_apps_of_one_name_apart(tmp_path: Path) -> None:
    (tmp_path / "mysite.py").write_text(HELLO)
    startproject(tmp_path)
    parsed = parse_gateway_file(gateway_toml(tmp_path, [*find_flask(tmp_path), *find_django(tmp_path)]))
    assert parsed.mounts == ("/mysite=mysite:app", "/mysite_django=mysite.wsgi:application")


# --- honest surfaces ----------------------------------------------------------------------


def _rules(*rules: str) -> RouteTable:
    return RouteTable([RouteSpec(rule, ("a",)) for rule in rules])


@pytest.mark.parametrize(
    ("rules", "hidden"),
    [
        pytest.param(("/<path:rest>",), {"/flask": "/<path:rest>", "/django": "/<path:rest>"}, id="catch-all"),
        pytest.param(("/django/admin/<path:rest>",), {}, id="below-the-root-only"),
        pytest.param(("/flask/",), {"/flask": "/flask/"}, id="the-mounts-root"),
        pytest.param(("/shop/<path:rest>", "/shop/"), {}, id="other-paths"),
        pytest.param(("/<slug>/",), {"/flask": "/<slug>/", "/django": "/<slug>/"}, id="a-converter-first"),
        pytest.param(("/flask/index.html",), {"/flask": "/flask/index.html"}, id="its-index-page"),
        pytest.param(("/django/a/<b>",), {"/django": "/django/a/<b>"}, id="two-segments-down"),
    ],
)
def test_a_rule_that_hides_a_mount_is_named(table: MountTable, rules: tuple[str, ...],
                                            hidden: dict[str, str]) -> None:
    made = MountTable(table, (), _rules(*rules))
    assert made.hidden() == hidden
    page = Pages(made).index("")
    for prefix, rule in hidden.items():
        assert re.search(rf'{prefix}/</a><span>[^<]*&middot; WSGI &middot; hidden in part by the rule '
                         rf"<code>{re.escape(escape(rule))}</code>", page)


@pytest.mark.parametrize("methods", [("GET",), ("POST",)])
def test_a_rule_for_one_method_hides_a_mount_too(table: MountTable, methods: tuple[str, ...]) -> None:
    made = MountTable(table, (), RouteTable([RouteSpec("/flask/", ("a",), methods)]))
    assert made.hidden() == {"/flask": "/flask/"}


def test_the_index_lists_the_rules_and_the_gateways_own_pages(table: MountTable) -> None:
    made = MountTable(table, (), _rules("/shop/<path:rest>"))
    page = Pages(made, metrics=True).index("/root")
    assert "<code>/shop/&lt;path:rest&gt;</code>" in page
    for path in ("/healthz", "/readyz", "/_gateway/", "/metrics"):
        assert f'<a href="/root{path}">{path}</a>' in page
    bare = Pages(table).index("")
    assert "Route rules" not in bare and "/_gateway/" not in bare and "/metrics" not in bare
    assert '<a href="/healthz">/healthz</a>' in bare


# --- on real servers ------------------------------------------------------------------------


def _user_env(**extra: str) -> dict[str, str]:
    """A new user's environment: no PYTHONPATH, no DJANGO_SETTINGS_MODULE, no data directory set."""
    env = server_env(Path("unused"), **extra)
    for name in ("GATEWAY_DATA_DIR", "PYTHONPATH", "DJANGO_SETTINGS_MODULE", "GATEWAY_CONFIG"):
        env.pop(name, None)
    return env


def _new_users_folder(folder: Path) -> None:
    (folder / "hello.py").write_text(HELLO)
    startproject(folder)


def _gateway(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GATEWAY, *args], cwd=folder, env=_user_env(), capture_output=True, text=True,
                          timeout=120)


@pytest.mark.server
def test_a_new_users_flask_app_and_startproject_are_served_from_their_folder(tmp_path: Path) -> None:
    _new_users_folder(tmp_path)
    made = _gateway(tmp_path, "init")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "gateway.toml").is_file()
    again = _gateway(tmp_path, "init")
    assert again.returncode == 1
    assert again.stderr.strip() == (f"gateway: error: {tmp_path / 'gateway.toml'} exists already: edit it, or add "
                                    "--force to write a new one.")
    port = free_port()
    server = ServerProcess([*GATEWAY, "serve", "--port", str(port)], port=port, env=_user_env(),
                           log_path=tmp_path.parent / f"{tmp_path.name}-server.log", ready_path="/hello/",
                           cwd=tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            hello = client.get("/hello/")
            assert (hello.status_code, hello.text) == (200, "Hello from your Flask app at /hello/")
            admin = client.get("/mysite/admin/")
            assert (admin.status_code, admin.headers["location"]) == (302, "/mysite/admin/login/?next=/mysite/admin/")
            login = client.get("/mysite/admin/login/")
            assert login.status_code == 200
            sheets = re.findall(r'href="([^"]+\.css)"', login.text)
            assert "/mysite/static/admin/css/base.css" in sheets
            for sheet in sheets:
                css = client.get(sheet)
                assert css.status_code == 200 and css.headers["content-type"].startswith("text/css"), sheet
            for demo in ("/flask/", "/django/"):
                assert client.get(demo).status_code == 404
            index = client.get("/").text
            assert 'href="/hello/"' in index and 'href="/mysite/"' in index and "/flask/" not in index
    finally:
        server.stop()
    assert re.search(r"^  /hello +http://127\.0\.0\.1:\d+/hello/  \(Flask \d", server.log, re.M), server.log
    assert re.search(r"^  /mysite +http://127\.0\.0\.1:\d+/mysite/  \(Django \d", server.log, re.M), server.log
    assert "Traceback" not in server.log
    # Nothing of the demo's: no data directory, and the project's database untouched.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.toml", "hello.py", "mysite"]
    assert not (tmp_path / "mysite" / "db.sqlite3").exists()
    migrated = _gateway(tmp_path, "manage", "migrate", "-v", "0")
    assert migrated.returncode == 0, migrated.stderr
    assert (tmp_path / "mysite" / "db.sqlite3").is_file()


@pytest.mark.server
@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(lambda s: re.sub(r"DATABASES = \{.*?\n\}\n", "", s, flags=re.S),
                     "gateway: error: The Django settings mysite.settings have no DATABASES, and the installed apps "
                     "admin, auth, contenttypes, sessions keep their data in one: add DATABASES to the settings "
                     '(startproject\'s is a SQLite file, BASE_DIR / "db.sqlite3").', id="no-databases"),
        pytest.param(lambda s: s.replace("'django.contrib.staticfiles',", "'django.contrib.staticfiles', 'blog',"),
                     'gateway: error: Importing "mysite.wsgi" (from "mysite.wsgi:application") failed: '
                     "ModuleNotFoundError: No module named 'blog'.", id="a-missing-app"),
        pytest.param(lambda s: s + "\nraise RuntimeError('settings broke\\nhere')\n",
                     'gateway: error: Importing "mysite.wsgi" (from "mysite.wsgi:application") failed: '
                     "RuntimeError: settings broke.", id="settings-raise"),
    ],
)
def test_settings_django_cannot_run_are_one_line(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    _new_users_folder(tmp_path)
    assert _gateway(tmp_path, "init").returncode == 0
    settings = tmp_path / "mysite" / "mysite" / "settings.py"
    changed = change(settings.read_text())
    assert changed != settings.read_text()
    settings.write_text(changed)
    for command in (["routes"], ["serve", "--port", "0"]):
        result = _gateway(tmp_path, *command)
        assert (result.returncode, result.stderr.strip()) == (1, message), result.stderr
    shown = _gateway(tmp_path, "--traceback", "routes")
    assert shown.stderr.startswith(message + "\nTraceback (most recent call last):"), shown.stderr


@pytest.mark.server
def test_a_catch_all_rule_is_named_with_the_mounts_it_hides(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text(HELLO)
    (tmp_path / "gateway.toml").write_text('[apps]\nhello = "hello:app"\n[mounts]\n"/hello" = "hello"\n'
                                           '[[route]]\nrule = "/<path:rest>"\napp = "hello"\n')
    listed = _gateway(tmp_path, "routes")
    assert listed.returncode == 0, listed.stderr
    assert ("warning: the rule /<path:rest> hides the mount /hello (hello:app): rules are matched first, so paths "
            "under /hello/ that it matches go to the rule's app.") in listed.stdout.splitlines()


@pytest.mark.server
@pytest.mark.parametrize("doc", ["README.md", "docs/migration.md"])
def test_the_docs_route_rules_example_runs_as_written(doc: str, tmp_path: Path) -> None:
    text = (ROOT / doc).read_text()
    command = re.search(r"with\s+`(gateway serve --config examples/migration/rules\.toml)`", text)
    assert command is not None
    toml = re.search(r"```toml\n(.*?)```", text[command.end():], re.S)  # the example that follows
    assert toml is not None
    example = tmp_path / "examples" / "migration"
    shutil.copytree(ROOT / "examples" / "migration", example)
    (example / "rules.toml").write_text(toml.group(1))
    port = free_port()
    env = _user_env(GATEWAY_DATA_DIR=str(tmp_path / "var"))
    server = ServerProcess([*GATEWAY, *command.group(1).split()[1:], "--port", str(port)], port=port, env=env,
                           log_path=tmp_path / "server.log", ready_path="/shop/cart", cwd=tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/shop/cart").headers["X-Served-By"] == "new shop (Django)"
            assert client.get("/shop/items/1").headers["X-Served-By"] == "new shop (Django)"
            legacy = client.get("/shop/items/1/reviews")  # no port: the legacy app's 404, under its rule
            assert legacy.status_code == 404 and "~/shop/<path:rest>" in server.wait_for("/shop/items/1/reviews")
            assert client.get("/flask/").status_code == 200
    finally:
        server.stop()
    assert "Traceback" not in server.log, server.log


# --- one configuration, every entry point -----------------------------------------------------

ONE_CONFIG = '''
[apps]
legacy = "tests.apps.shop:legacy"
new = "tests.apps.shop:new"

[mounts]
"/wsgi" = "tests.thirdapp:wsgi_app"
"/asgi" = "tests.thirdapp:asgi_app"
"/lazy" = "tests.thirdapp:lazy_app"

[[route]]
rule = "/shop/<path:rest>"
app = "legacy"

[[route]]
rule = "/shop/items/<int:item_id>"
app = ["new", "legacy"]

[[route]]
rule = "/shop/cart"
app = "new"
methods = ["GET"]
'''

#: (method, path): each answered alike by every entry point.
ASKED = [
    ("GET", "/shop/cart"),           # a rule, method-restricted
    ("POST", "/shop/cart"),          # ...the catch-all rule of its prefix for other methods
    ("GET", "/shop/items/7"),        # the first app of a fallback chain
    ("GET", "/shop/items/101"),      # ...a 404 from it: the next one answers
    ("GET", "/wsgi/y?q=1"),          # a WSGI prefix mount
    ("GET", "/asgi/a/b"),            # an ASGI prefix mount
    ("GET", "/lazy/x"),              # a WSGI generator, which starts its response at its first chunk
    ("GET", "/wsgi"),                # the bare prefix: 308
    ("GET", "/"),                    # the index
    ("GET", "/flask/"),              # no demo app: the gateway's 404
    ("DELETE", "/"),                 # the gateway's own pages take GET and HEAD
    ("GET", "/healthz"),
]


def _answer(status: int, headers: object, body: bytes) -> tuple[object, ...]:
    """What a client sees of an answer, less what differs by server (dates, request IDs)."""
    get = headers.get  # type: ignore[attr-defined]
    text = body.decode("utf-8", "replace")
    text = re.sub(r"flask-django-gateway [\w.]+", "", text)
    return status, get("content-type"), get("location"), get("allow"), text


def _in_process(config: Config, interface: str) -> list[tuple[object, ...]]:
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    from gateway.serve.builder import build
    from tests.support import SyncASGIClient

    app = build(config, interface)  # type: ignore[arg-type]
    answers = []
    try:
        for method, path in ASKED:
            if interface == "wsgi":  # the headers as the app sent them (a test client's Response adds some)
                environ = EnvironBuilder(path, method=method, base_url="http://127.0.0.1").get_environ()
                chunks, status, headers = run_wsgi_app(app, environ, buffered=True)
                answers.append(_answer(int(status[:3]), headers, b"".join(chunks)))
            else:
                response = SyncASGIClient(app, base_url="http://127.0.0.1").request(method, path)
                answers.append(_answer(response.status_code, response.headers, response.content))
    finally:
        if interface == "asgi":
            app.executor.shutdown(wait=True)
    return answers


def _served(tmp_path: Path, config_file: Path, *args: str) -> tuple[list[tuple[object, ...]], list[str]]:
    port = free_port()
    server = ServerProcess([*GATEWAY, "serve", "--port", str(port), "--config", str(config_file), *args],
                           port=port, env=server_env(tmp_path), log_path=tmp_path / f"server-{port}.log",
                           ready_path="/healthz")
    answers = []
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for method, path in ASKED:
                response = client.request(method, path)
                answers.append(_answer(response.status_code, response.headers, response.content))
        # Written after the responses: the last request's line (the ready probe's came first).
        deadline = time.monotonic() + 10
        while server.log.count('"GET /healthz HTTP/1.1" 200') < 2:
            assert time.monotonic() < deadline, server.log
            time.sleep(0.05)
    finally:
        server.stop()
    access = [re.sub(r" [\d.]+ms ", " ", line.partition("] ")[2]) for line in server.log.splitlines()
              if " gateway.access " in line and "/healthz" not in line]
    assert "Traceback" not in server.log, server.log
    return answers, access


def _one_config(tmp_path: Path) -> tuple[Path, Config]:
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(ONE_CONFIG)
    return config_file, Config.from_env({"GATEWAY_DATA_DIR": str(tmp_path), "GATEWAY_CONFIG": str(config_file)})


def test_one_configuration_is_answered_alike_by_both_entry_points(tmp_path: Path, table: MountTable) -> None:
    """gateway.wsgi and gateway.asgi, both made by gateway.serve.builder.build from one gateway.toml."""
    _, config = _one_config(tmp_path)
    wsgi = _in_process(config, "wsgi")
    assert [answer[0] for answer in wsgi] == [200, 200, 200, 200, 200, 200, 201, 308, 200, 404, 405, 200]
    assert wsgi[6] == (201, "text/plain", "/made", None, "made /x")
    assert '"app":"new"' in str(wsgi[0][4]) and '"app":"legacy"' in str(wsgi[1][4])
    assert '"app":"legacy"' in str(wsgi[3][4])  # the fallback
    assert 'href="/wsgi/"' in str(wsgi[8][4]) and "<code>/shop/cart</code>" in str(wsgi[8][4])  # the index
    assert _in_process(config, "asgi") == wsgi


@pytest.mark.server
def test_one_configuration_is_served_alike_by_every_entry_point(tmp_path: Path, table: MountTable) -> None:
    """gateway.wsgi in process, uvicorn's workers and Granian's, all built by
    gateway.serve.builder from one gateway.toml: the same answers, and the same access lines."""
    config_file, config = _one_config(tmp_path)
    wsgi = _in_process(config, "wsgi")
    uvicorn, uvicorn_log = _served(tmp_path, config_file, "--workers", "2")
    granian, granian_log = _served(tmp_path, config_file, "--server", "granian")
    assert uvicorn == wsgi and granian == wsgi
    # Two uvicorn workers write their lines each from its own thread: the same lines, in any order.
    assert len(uvicorn_log) == len(ASKED) - 1 and sorted(uvicorn_log) == sorted(granian_log)
    assert any(line.endswith("~/shop/cart GET,HEAD") for line in uvicorn_log), uvicorn_log


def test_an_app_that_starts_its_response_lazily_has_started_it_when_it_returns() -> None:
    """Under Granian the gateway's first chunk is drawn before its iterable is returned:
    Granian drops the status and headers of a response started inside the iterable."""
    from gateway.adapters.wsgi import StartFirst

    events: list[str] = []

    class Lazy:
        def __init__(self, start_response, chunks: list[bytes], fail: bool = False) -> None:  # type: ignore[no-untyped-def]
            self.start_response, self.chunks, self.fail = start_response, chunks, fail

        def __iter__(self):  # type: ignore[no-untyped-def]
            if self.fail:
                raise RuntimeError("broke before its first chunk")
            self.start_response("201 Created", [("Location", "/x")])
            events.append("started")
            yield from self.chunks

        def close(self) -> None:
            events.append("closed")

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> None:
        events.append(f"start {status} {headers}")

    for chunks in ([b"a", b"b"], []):
        events.clear()
        result = StartFirst(lambda environ, start, chunks=chunks: Lazy(start, chunks))({}, start_response)
        assert events == ["start 201 Created [('Location', '/x')]", "started"]
        assert b"".join(result) == b"".join(chunks)
        result.close()  # type: ignore[attr-defined]
        assert events[-1] == "closed"
    events.clear()
    with pytest.raises(RuntimeError, match="broke before"):
        StartFirst(lambda environ, start: Lazy(start, [], fail=True))({}, start_response)
    assert events == ["closed"]


@pytest.mark.server
def test_granian_re_reads_the_file_on_sighup(tmp_path: Path) -> None:
    """Granian respawns its workers on SIGHUP, and each new worker builds the gateway from the
    gateway.toml as it is now (before, it kept the file it was started with)."""
    import signal

    config_file = tmp_path / "gateway.toml"
    config_file.write_text('[mounts]\n"/a" = "tests.thirdapp:wsgi_app"\n')
    port = free_port()
    server = ServerProcess([*GATEWAY, "serve", "--server", "granian", "--port", str(port), "--config",
                            str(config_file)], port=port, env=server_env(tmp_path), log_path=tmp_path / "server.log",
                           ready_path="/a/")
    try:
        assert httpx.get(f"{server.url}/b/x").status_code == 404
        config_file.write_text('[mounts]\n"/a" = "tests.thirdapp:wsgi_app"\n"/b" = "tests.thirdapp:wsgi_app"\n')
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while (answer := httpx.get(f"{server.url}/b/x")).status_code != 200:
            assert time.monotonic() < deadline, server.log
            time.sleep(0.1)
        assert answer.text == "wsgi script_name=/b path_info=/x"
        assert httpx.get(f"{server.url}/a/y").status_code == 200
    finally:
        server.stop()
    assert "Traceback" not in server.log, server.log


def test_reload_watches_the_gateways_own_packages() -> None:
    """--reload watches the gateway's code and the demo apps' wherever the modules now live."""
    from gateway.serve.runners import SOURCE_DIRS, reload_dirs

    assert [Path(d).relative_to(ROOT).as_posix() for d in SOURCE_DIRS] == ["gateway", "flask_hello", "django_hello"]
    assert all(Path(d).is_dir() for d in SOURCE_DIRS)
    assert set(SOURCE_DIRS) <= set(reload_dirs(Config()))


def test_production_with_your_own_apps_checks_what_the_gateway_owns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Your apps keep their keys and debug switches in their own settings: production refuses
    a wildcard host, and asks nothing of the demo apps' variables, nor sets any of them."""
    for name in ("DJANGO_SECRET_KEY", "FLASK_SECRET_KEY", "FLASK_MAX_CONTENT_LENGTH", "DJANGO_DATA_DIR"):
        monkeypatch.setenv(name, "")  # each as it was, after the test
        monkeypatch.delenv(name)
    monkeypatch.setenv("DJANGO_DEBUG", "1")  # the demo's switch: not yours
    own = Config(env="production", mounts=("/x=x:app",))
    frameworks.set_up(own)
    assert {"FLASK_SECRET_KEY", "FLASK_MAX_CONTENT_LENGTH", "DJANGO_DATA_DIR"}.isdisjoint(os.environ)
    with pytest.raises(frameworks.SetupError, match=r'^GATEWAY_ALLOWED_HOSTS allows any host \("\*"\): list your host '
                                                    r"names, e\.g\. GATEWAY_ALLOWED_HOSTS=example\.org "
                                                    r"\(GATEWAY_ENV=production\)\.$"):
        frameworks.set_up(Config(env="production", mounts=("/x=x:app",), allowed_hosts=("*",)))
    frameworks.set_up(Config(env="production", mounts=("/x=x:app",), allowed_hosts=("*",)), strict=False)


def test_a_reload_sets_up_the_new_files_apps_as_the_start_did(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               table: MountTable) -> None:
    """SIGHUP's reload in place goes through the builder's set-up: an app the new file adds,
    in a folder of its own (path = "sub"), is found; other Django settings are refused."""
    from gateway.serve.builder import build
    from tests.support import SyncASGIClient

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "reloaded_mod.py").write_text(HELLO.replace('@app.get("/")', '@app.get("/hello/")')
                                                      .replace("your Flask app", "the reloaded app"))
    monkeypatch.delitem(sys.modules, "reloaded_mod", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the set-up adds the file's folders
    config_file = tmp_path / "gateway.toml"
    config_file.write_text('[apps]\nwsgi = "tests.thirdapp:wsgi_app"\n[mounts]\n"/w" = "wsgi"\n')
    config = Config.from_env({"GATEWAY_DATA_DIR": str(tmp_path), "GATEWAY_CONFIG": str(config_file)})
    app = build(config, "asgi")
    try:
        client = SyncASGIClient(app, base_url="http://127.0.0.1")
        assert client.get("/hello/").status_code == 404
        config_file.write_text('[apps]\nwsgi = "tests.thirdapp:wsgi_app"\n'
                               'hello = { app = "reloaded_mod:app", path = "sub" }\n[mounts]\n"/w" = "wsgi"\n'
                               '[[route]]\nrule = "/hello/"\napp = "hello"\n')
        assert app.reload() is True
        answer = client.get("/hello/")
        assert (answer.status_code, answer.text) == (200, "Hello from the reloaded app at /hello/")
        config_file.write_text('[apps]\nm = { app = "m.wsgi:application", settings = "m.settings" }\n'
                               '[[route]]\nrule = "/m/"\napp = "m"\n')
        assert app.reload() is False  # Django runs on django_hello.settings in this process
        assert client.get("/hello/").status_code == 200  # the rules stay as they were
    finally:
        app.executor.shutdown(wait=True)


# --- what the in-process tests pin of the scaffold and the set-up (found missing by mutmut) ----


def test_init_reports_each_flask_app_it_finds_with_where_it_found_it(tmp_path: Path) -> None:
    from gateway.serve.scaffold import Found

    files = {
        "my-app.py": HELLO,  # not a module name: passed over, and the others still read
        "annotated.py": "from flask import Flask\napp: Flask = Flask(__name__)\n",
        "named.py": "from flask.app import Flask\napplication = Flask(__name__)\n",
        "maker.py": "import flask\n\ndef make_app():\n    return flask.Flask(__name__)\n",
        "plain.py": "import flask.json\ncache = dict()\n",  # imports Flask, has no app
        "pkg/__init__.py": "from flask import Flask\nserver = Flask(__name__)\n",
        "pkg/views.py": HELLO,  # below a package: not looked at
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert find_flask(tmp_path) == [
        Found(name="annotated", framework="Flask", target="annotated:app", source="annotated.py"),
        Found(name="maker", framework="Flask", target="maker:make_app()", source="maker.py"),
        Found(name="named", framework="Flask", target="named:application", source="named.py"),
        Found(name="pkg", framework="Flask", target="pkg:server", source="pkg/__init__.py"),
    ]


def test_init_mounts_what_a_projects_settings_name_as_its_wsgi_application(tmp_path: Path) -> None:
    from gateway.serve.scaffold import Found

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manage.py").write_text("print('no settings named here')\n")
    startproject(tmp_path)
    split = tmp_path / "site"  # settings split by environment, the WSGI module elsewhere
    (split / "config" / "settings").mkdir(parents=True)
    (split / "manage.py").write_text('import os\nos.environ.setdefault("DJANGO_SETTINGS_MODULE", '
                                     '"config.settings.prod")\n')
    (split / "config" / "settings" / "prod.py").write_text('WSGI_APPLICATION = "config.serving.application"\n')
    (split / "config" / "serving.py").write_text("application = None\n")
    assert find_django(tmp_path) == [
        Found(name="mysite", framework="Django", target="mysite.wsgi:application", source="mysite/manage.py",
              settings="mysite.settings", path="mysite"),
        Found(name="config", framework="Django", target="config.serving:application", source="site/manage.py",
              settings="config.settings.prod", path="site"),
    ]
    (split / "config" / "serving.py").unlink()  # what the settings name is not there: not a project to mount
    assert [found.name for found in find_django(tmp_path)] == ["mysite"]


def test_the_written_file_says_where_each_app_came_from(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text(HELLO)
    startproject(tmp_path)
    text = gateway_toml(tmp_path, [*find_flask(tmp_path), *find_django(tmp_path)])
    assert f"as `gateway init` found it in {tmp_path}." in text.splitlines()[0]
    assert "# Flask, from hello.py.\nhello = " in text and "# Django, from mysite/manage.py.\n" in text
    assert '# app = "hello"' in text  # the commented route rule names a real app


def test_the_sets_up_puts_the_files_folder_then_its_apps_folders_first(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", ["/elsewhere"])
    path = tmp_path / "gateway.toml"
    path.write_text('[apps]\na = { app = "a:app", path = "one" }\nb = { app = "b:app", path = "two/three" }\n')
    config = Config.from_env({"GATEWAY_CONFIG": str(path)})
    frameworks.set_up(config)
    frameworks.set_up(config)  # twice: each folder once
    assert sys.path == [str(tmp_path), str(tmp_path / "one"), str(tmp_path / "two" / "three"), "/elsewhere"]


def test_django_settings_that_cannot_work_are_found_in_process(table: MountTable) -> None:
    """What check_django refuses, on the settings this process runs (django_hello's)."""
    from django.test import override_settings

    django_mount = table.mounts["/django"]
    frameworks.check_django([django_mount], Config())  # django_hello's settings work
    frameworks.check_django([table.mounts["/flask"]], Config(file=parse_gateway_file(
        '[apps]\nm = { app = "m.wsgi:application", settings = "other.settings" }\n')))  # no Django mount: no check
    with pytest.raises(frameworks.SetupError, match=r"^Django runs on the settings django_hello\.settings, not "
                                                    r"other\.settings as None names: something imported Django's "
                                                    r"settings first; mount the project's wsgi\.py\.$"):
        frameworks.check_django([django_mount], Config(file=parse_gateway_file(
            '[apps]\nm = { app = "m.wsgi:application", settings = "other.settings" }\n')))
    overriding = pytest.warns(UserWarning, match="Overriding setting DATABASES")  # Django's, as it should
    with overriding, override_settings(DATABASES={}), pytest.raises(frameworks.SetupError, match=(
            r"^The Django settings \S+ have no DATABASES, and the installed apps .*admin, "
            r".*auth, .*keep their data in one: add DATABASES to the settings \(startproject's is a SQLite "
            r'file, BASE_DIR / "db\.sqlite3"\)\.$')):
        frameworks.check_django([django_mount], Config())
    overriding = pytest.warns(UserWarning, match="Overriding setting DATABASES")
    with overriding, override_settings(DATABASES={"default": {"ENGINE": "django.db.backends.dummy"}}), \
            pytest.raises(frameworks.SetupError, match="have no DATABASES"):
        frameworks.check_django([django_mount], Config())


def test_a_projects_static_files_are_served_under_its_mount_unless_it_serves_them(table: MountTable) -> None:
    """WhiteNoise serves a Django project's static files from its finders, under the mount,
    when the project does not (django_hello does, with WhiteNoise's middleware)."""
    from django.conf import settings
    from django.test import override_settings
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    django_mount = table.mounts["/django"]
    assert frameworks.serve_static(django_mount) is django_mount  # django_hello has the middleware
    assert frameworks.serve_static(table.mounts["/flask"]) is table.mounts["/flask"]  # not Django
    without = [m for m in settings.MIDDLEWARE if "whitenoise" not in m]
    with override_settings(MIDDLEWARE=without, STATIC_ROOT=None):
        served = frameworks.serve_static(django_mount)
        assert served is not django_mount and served.framework.startswith("Django ")
        environ = EnvironBuilder("/static/admin/css/base.css").get_environ()
        environ["SCRIPT_NAME"], environ["PATH_INFO"] = "/django", "/static/admin/css/base.css"
        chunks, status, headers = run_wsgi_app(served.app, environ, buffered=True)
        assert status.startswith("200") and headers["Content-Type"].startswith("text/css")
        assert b"".join(chunks) == (Path(__import__("django").__file__).parent / "contrib" / "admin" / "static"
                                    / "admin" / "css" / "base.css").read_bytes()
        for static_url in ("/static/", "https://cdn.example/static/", "//cdn.example/static/", ""):
            with override_settings(STATIC_URL=static_url):
                assert frameworks.serve_static(django_mount) is django_mount, static_url
        installed = [a for a in settings.INSTALLED_APPS if a != "django.contrib.staticfiles"]
        with override_settings(INSTALLED_APPS=installed):
            assert frameworks.serve_static(django_mount) is django_mount


def test_settings_named_before_django_runs_are_set_with_a_warning_if_they_replace_others(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import django.conf

    monkeypatch.setattr(django.conf, "settings", django.conf.LazySettings())  # a process where Django has not run
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "mysite.settings")
    config = Config(config_file=Path("/srv/site/gateway.toml"))
    frameworks.use_django_settings("mysite.settings", config)
    assert os.environ["DJANGO_SETTINGS_MODULE"] == "mysite.settings" and not caplog.records
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "django_hello.settings")
    with caplog.at_level("WARNING", logger="gateway"):
        frameworks.use_django_settings("mysite.settings", config)
    assert os.environ["DJANGO_SETTINGS_MODULE"] == "mysite.settings"
    assert [r.getMessage() for r in caplog.records] == [
        "DJANGO_SETTINGS_MODULE=django_hello.settings is set, and /srv/site/gateway.toml names mysite.settings: "
        "Django runs on mysite.settings."]


def test_static_root_and_prefixed_static_folders_are_served_too(table: MountTable, tmp_path: Path) -> None:
    """collectstatic's STATIC_ROOT and a STATICFILES_DIRS entry with a prefix, as Django's
    finders and runserver serve them; a file the finders name twice is the first one's."""
    from django.conf import settings
    from django.test import override_settings
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    root, extra = tmp_path / "collected", tmp_path / "extra"
    (root / "site").mkdir(parents=True)
    (root / "site" / "collected.css").write_text("body { color: red }")
    (extra / "admin" / "css").mkdir(parents=True)
    (extra / "admin" / "css" / "base.css").write_text("/* not the admin's */")
    (extra / "logo.txt").write_text("logo")
    without = [m for m in settings.MIDDLEWARE if "whitenoise" not in m]

    def get(app, path: str) -> tuple[str, bytes]:  # type: ignore[no-untyped-def]
        environ = EnvironBuilder(path).get_environ()
        environ["SCRIPT_NAME"], environ["PATH_INFO"] = "/django", path
        chunks, status, _ = run_wsgi_app(app, environ, buffered=True)
        return status[:3], b"".join(chunks)

    with override_settings(MIDDLEWARE=without, STATIC_ROOT=str(root), STATICFILES_DIRS=[("brand", str(extra))]):
        served = frameworks.serve_static(table.mounts["/django"]).app
        assert get(served, "/static/site/collected.css") == ("200", b"body { color: red }")
        assert get(served, "/static/brand/logo.txt") == ("200", b"logo")
        assert get(served, "/static/logo.txt")[0] == "404"  # only under its prefix
    with override_settings(MIDDLEWARE=without, STATICFILES_DIRS=[str(extra)]):
        served = frameworks.serve_static(table.mounts["/django"]).app
        assert get(served, "/static/logo.txt") == ("200", b"logo")
        assert get(served, "/static/admin/css/base.css") == ("200", b"/* not the admin's */")  # first finder wins


def test_production_with_the_demo_apps_is_checked_unless_told_not_to(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """gateway check sets up with strict=False: it lists production's problems instead of refusing."""
    for name in ("DJANGO_SECRET_KEY", "FLASK_SECRET_KEY", "DJANGO_DATA_DIR", "DJANGO_ALLOWED_HOSTS",
                 "DJANGO_DATA_UPLOAD_MAX_MEMORY_SIZE", "FLASK_MAX_CONTENT_LENGTH"):
        monkeypatch.setenv(name, "")  # each as it was, after the test: the set-up sets some
        monkeypatch.delenv(name)
    demo = Config(env="production", data_dir=tmp_path)
    with pytest.raises(ValueError, match=r"^DJANGO_SECRET_KEY is not set \(GATEWAY_ENV=production\); "
                                         r"FLASK_SECRET_KEY is not set \(GATEWAY_ENV=production\)\.$"):
        frameworks.set_up(demo)
    frameworks.set_up(demo, strict=False)
    two = Config(env="production", mounts=("/x=x:app",), allowed_hosts=("*",))
    with pytest.raises(frameworks.SetupError) as caught:
        frameworks.set_up(two)
    assert str(caught.value).count("(GATEWAY_ENV=production)") == 1
