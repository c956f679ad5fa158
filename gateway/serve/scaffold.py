"""``gateway init``: find the Flask app and the Django project in a folder, and write the
``gateway.toml`` that mounts them.

Nothing is imported: the folder's Python files are read as text (``ast``), as a reader
would, so that an app with side effects at import is not started by looking at it.

- A **Flask app** is a module of the folder (``hello.py``, or a package's ``__init__.py``)
  that imports Flask and has, at its top level, what ``flask run`` looks for: an ``app``
  or ``application`` (``module:app``), else a ``create_app`` or ``make_app`` factory
  (``module:create_app()``), else any name assigned ``Flask(...)``.
- A **Django project** is a ``manage.py``, in the folder or in a folder just below it
  (``django-admin startproject mysite`` makes ``mysite/manage.py``): its
  ``DJANGO_SETTINGS_MODULE`` names the settings, and the settings' ``WSGI_APPLICATION``
  the app that is mounted (else the ``wsgi.py`` of the settings' top package).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

#: What ``gateway init`` writes, in this folder.
FILE_NAME = "gateway.toml"

_SETTINGS = re.compile(r"""DJANGO_SETTINGS_MODULE['"]\s*,\s*['"]([A-Za-z_][\w.]*)['"]""")
_WSGI_APPLICATION = re.compile(r"""^WSGI_APPLICATION\s*=\s*['"]([A-Za-z_][\w.]*)['"]""", re.MULTILINE)
_SKIPPED = {"manage.py", "setup.py", "conftest.py", "noxfile.py"}


@dataclass(frozen=True, kw_only=True)
class Found:
    """An app ``gateway init`` found: its name, where it is, and how to mount it."""

    name: str
    framework: str
    target: str
    source: str
    settings: str | None = None
    path: str | None = None


def find_flask(folder: Path) -> list[Found]:
    """The Flask apps of ``folder``'s top-level modules and packages, in name order."""
    found = []
    candidates = [(p.stem, p) for p in folder.glob("*.py") if p.name not in _SKIPPED]
    candidates += [(p.parent.name, p) for p in folder.glob("*/__init__.py")]
    for module, path in sorted(candidates):
        if not module.isidentifier():
            continue
        attribute = _flask_attribute(path)
        if attribute is not None:
            found.append(Found(name=module, framework="Flask", target=f"{module}:{attribute}",
                               source=str(path.relative_to(folder))))
    return found


def _flask_attribute(path: Path) -> str | None:
    """What to mount of the module at ``path``: ``app``, ``create_app()``, ..., or None."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return None
    imports_flask = any(
        (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "flask")
        or (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "flask" for a in node.names))
        for node in ast.walk(tree))
    if not imports_flask:
        return None
    assigned: dict[str, ast.expr] = {}
    functions = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    assigned[target.id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            assigned[node.target.id] = node.value
        elif isinstance(node, ast.FunctionDef):
            functions.add(node.name)
    for name in ("app", "application"):
        if name in assigned:
            return name
    for name in ("create_app", "make_app"):
        if name in functions:
            return f"{name}()"
    for name, value in assigned.items():
        if isinstance(value, ast.Call) and _called(value) == "Flask":
            return name
    return None


def _called(call: ast.Call) -> str | None:
    """The name a call calls: ``Flask`` for ``Flask(...)`` and ``flask.Flask(...)``."""
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def find_django(folder: Path) -> list[Found]:
    """The Django projects whose ``manage.py`` is in ``folder`` or a folder just below it."""
    found = []
    for manage in sorted([*folder.glob("manage.py"), *folder.glob("*/manage.py")]):
        try:
            text = manage.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        match = _SETTINGS.search(text)
        if match is None:
            continue
        settings = match.group(1)
        home = manage.parent
        target = _wsgi_target(home, settings)
        if target is None:
            continue
        path = None if home == folder else home.relative_to(folder).as_posix()
        found.append(Found(name=settings.split(".")[0], framework="Django", target=target,
                           source=str(manage.relative_to(folder)), settings=settings, path=path))
    return found


def _wsgi_target(home: Path, settings: str) -> str | None:
    """The project's WSGI app, ``module:attribute``: what its settings' ``WSGI_APPLICATION``
    names (``startproject`` writes ``mysite.wsgi.application``), else the ``wsgi.py`` of the
    settings' top package; None if that module is not in ``home``."""
    candidates = [home / (settings.replace(".", "/") + ".py"), home / settings.replace(".", "/") / "__init__.py"]
    dotted = f"{settings.split('.')[0]}.wsgi.application"
    for source in candidates:
        try:
            named = _WSGI_APPLICATION.search(source.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
        if named is not None:
            dotted = named.group(1)
        break
    module, _, attribute = dotted.rpartition(".")
    if not module or not (home / (module.replace(".", "/") + ".py")).is_file():
        return None
    return f"{module}:{attribute}"


def gateway_toml(folder: Path, apps: list[Found]) -> str:
    """The text of a ``gateway.toml`` that mounts ``apps``, each at ``/<its name>``."""
    names: dict[str, Found] = {}
    for app in apps:
        name = app.name
        while name in names:
            name += "_" + app.framework.lower()
        names[name] = app
    lines = [
        f"# What `gateway serve` serves, as `gateway init` found it in {folder}.",
        "# Edit it freely: `gateway routes` shows what it mounts, and `gateway serve` reads it",
        "# from this folder (elsewhere: gateway serve --config path/to/gateway.toml).",
        "",
        "# Each app: a name, and the module:attribute of its WSGI (or ASGI) app.",
        "[apps]",
    ]
    for name, app in names.items():
        lines.append(f"# {app.framework}, from {app.source}.")
        if app.settings is None:
            lines.append(f'{name} = "{app.target}"')
            continue
        lines.append("# Django reads one settings module per process: the gateway sets this one before")
        lines.append("# anything imports Django. path: the folder of manage.py, where the project's modules are.")
        path = f', path = "{app.path}"' if app.path else ""
        lines.append(f'{name} = {{ app = "{app.target}", settings = "{app.settings}"{path} }}')
    lines += ["", "# Each app under a path prefix of its own; its links, redirects and cookies carry it.", "[mounts]"]
    lines += [f'"/{name}" = "{name}"' for name in names]
    lines += [
        "",
        "# Route rules give an app paths of the root URL space, in Werkzeug's syntax, before the",
        "# prefix mounts: to move pages from one app to the other one at a time.",
        "# [[route]]",
        '# rule = "/shop/<path:rest>"',
        f'# app = "{next(iter(names))}"',
        "",
    ]
    return "\n".join(lines)
