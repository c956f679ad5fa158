"""The mount table: which app answers under which path prefix.

Both entry points read it: ``gateway.wsgi`` hands it to Werkzeug's
``DispatcherMiddleware``, ``gateway.asgi`` routes with :meth:`MountTable.match`, which
follows the same rules (segment boundaries, longest prefix first). A mount is written
``/prefix=package.module:attribute``, optionally followed by ``@wsgi`` or ``@asgi``
when the app's interface should not be detected::

    table = MountTable.from_specs(["/flask=flask_hello:app", "/api=myapi:app@asgi"])
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from gateway.core.config import Config
from gateway.migration.rollout_store import database_url
from gateway.migration.rules import RouteSpec, RouteTable
from gateway.migration.shadow import DEFAULT_CPU, DEFAULT_TIMEOUT

Interface = Literal["wsgi", "asgi"]

#: What ``MountTable.from_specs`` mounts unless told not to: the demo apps.
DEFAULT_MOUNTS = (
    "/flask=flask_hello:app",
    "/django=django_hello.wsgi:application",
)

PREFIX_PATTERN = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@-]+(?:/[A-Za-z0-9._~!$&'()*+,;=:@-]+)*")
_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*(?:\(\))?")
_FORM = ('"/prefix=package.module:attribute" (or "package.module:factory()"; optionally followed by "@wsgi" '
         'or "@asgi")')


def rule_options(config: Config) -> dict[str, Any]:
    """What :meth:`MountTable.from_specs` takes to load ``config``'s route rules, at start and on a reload."""
    return {"routes": config.file.routes, "apps": config.file.apps, "shadow_log": config.data_dir / "shadow.jsonl",
            "shadow_cpu": config.file.shadow_cpu, "shared_dir": config.migration_dir,
            "shadow_timeout": config.file.shadow_timeout,
            "rollout_database": database_url(config.data_dir, os.environ)}


def load_rules(config: Config, previous: RouteTable | None = None,
               set_up: Callable[[Config], None] | None = None) -> tuple[Config, MountTable]:
    """Re-read ``config``'s ``gateway.toml`` and load its route rules: everything a reload
    does before it swaps the rules in, and nothing of the event loop.

    It reads the file, checks each rule, imports the rules' apps (after ``set_up``, which
    prepares the frameworks for the new file) and compiles the rules: 10,005 rules took
    seconds (docs/hardening.md), so a server runs it in a thread. A file that cannot be
    used raises a ``ValueError`` (:class:`~gateway.migration.rules.ConfigFileError`,
    :class:`MountError`) of one line.
    """
    fresh = config.with_file(config.config_file)
    if set_up is not None:
        set_up(fresh)
    return fresh, MountTable.from_specs((), defaults=False, previous=previous, **rule_options(fresh))


class MountError(ValueError):
    """A mount that cannot be parsed or loaded; the message is one full sentence."""


@dataclass(frozen=True)
class MountSpec:
    """A parsed, not yet imported, mount: ``/prefix=module:attr[@interface]``."""

    prefix: str
    target: str
    interface: Interface | None = None

    @classmethod
    def parse(cls, text: str) -> MountSpec:
        """Parse ``/prefix=package.module:attribute[@wsgi|@asgi]``."""
        prefix, sep, target = text.strip().partition("=")
        interface: str | None = None
        if "@" in target:
            target, _, interface = target.rpartition("@")
        if not sep or not _TARGET.fullmatch(target) or interface not in (None, "wsgi", "asgi"):
            raise MountError(f'Mount "{text}" must be in the form {_FORM}.')
        if not PREFIX_PATTERN.fullmatch(prefix) or any(s in {".", ".."} for s in prefix.split("/")):
            raise MountError(
                f'Mount prefix "{prefix}" must start with "/", have no trailing slash, and use '
                'only URL path characters, e.g. "/flask" or "/apps/blog".'
            )
        return cls(prefix, target, interface)  # type: ignore[arg-type]

    def load(self) -> Mount:
        """Import the app and detect its interface."""
        app = import_app(self.target)
        return Mount(self.prefix, self.target, self.interface or detect_interface(app), app)


@dataclass(frozen=True)
class Mount:
    """A loaded mount: the app object and whether it speaks WSGI or ASGI."""

    prefix: str
    target: str
    interface: Interface
    app: Any

    @property
    def framework(self) -> str:
        """Name the framework and version of the app, e.g. ``Flask 3.1.3``."""
        return describe_framework(self.app, self.interface)


class MountTable:
    """An ordered set of mounts with Werkzeug's dispatch rules, and the route rules of a
    shared URL space (:mod:`gateway.migration.rules`), whose keys start with ``~``."""

    def __init__(self, mounts: Iterable[Mount], routes: Iterable[Mount] = (),
                 route_table: RouteTable | None = None) -> None:
        self.mounts: dict[str, Mount] = {}
        for mount in mounts:
            self.mounts[mount.prefix] = mount
        #: Every prefix is one segment (``/flask``, not ``/api/v1``), so :meth:`match` can
        #: look at a path's first segment alone. A table's prefixes are set here: the
        #: builder only replaces a prefix's mount (to serve its static files).
        self.one_segment = all(prefix.count("/") == 1 for prefix in self.mounts)
        #: The longest prefix: the walk of :meth:`match` starts there, not at the path's end.
        self.longest = max(map(len, self.mounts), default=0)
        self.routes: dict[str, Mount] = {mount.prefix: mount for mount in routes}
        self.route_table = route_table
        #: The apps route rules name, by name, with their interface (readiness probes each once).
        self.route_apps: dict[str, tuple[Any, Interface]] = {}

    @classmethod
    def from_specs(cls, specs: Iterable[str], *, defaults: bool = True, routes: Iterable[RouteSpec] = (),
                   apps: Mapping[str, str] | None = None, shadow_log: Path | None = None,
                   previous: RouteTable | None = None, shadow_cpu: float = DEFAULT_CPU,
                   shared_dir: Path | None = None, shadow_timeout: float = DEFAULT_TIMEOUT,
                   rollout_database: str | None = None) -> MountTable:
        """Parse and load mounts; later specs replace earlier ones with the same prefix.

        ``routes`` are route rules answered by the named ``apps`` (``name: module:attr``).
        """
        parsed: dict[str, MountSpec] = {}
        for text in (*(DEFAULT_MOUNTS if defaults else ()), *specs):
            spec = MountSpec.parse(text)
            parsed[spec.prefix] = spec
        routes = tuple(routes)
        if not routes:
            return cls(spec.load() for spec in parsed.values())
        table = RouteTable(routes, shadow_log, previous, shadow_cpu, shared_dir, shadow_timeout, rollout_database)
        loaded: dict[str, tuple[Any, Interface]] = {}
        for name in dict.fromkeys(n for route in routes
                                  for n in (*route.apps, *filter(None, [route.canary, route.shadow]))):
            target = (apps or {})[name]
            app = import_app(target.partition("@")[0])
            kind = target.partition("@")[2] or detect_interface(app)
            if kind not in ("wsgi", "asgi"):
                raise MountError(f'App "{name}" ({target}): the interface after "@" must be wsgi or asgi.')
            loaded[name] = app, "asgi" if kind == "asgi" else "wsgi"

        rule_mounts = rule_mounts_of(routes, loaded, apps or {})
        made = cls((spec.load() for spec in parsed.values()), rule_mounts, table)
        made.route_apps = loaded
        return made

    def checked(self) -> dict[str, tuple[Any, Interface]]:
        """What ``/readyz`` checks, by name, with its interface: each prefix mount (at its
        root), and each app the route rules name, once (``app:NAME``, at its root)."""
        checked: dict[str, tuple[Any, Interface]] = {m.prefix: (m.app, m.interface) for m in self.mounts.values()}
        for name, app in self.route_apps.items():
            checked[f"app:{name}"] = app
        return checked

    def with_rules(self, rules: MountTable) -> MountTable:
        """This table's prefix mounts with the route rules of ``rules`` (a reload's, made by
        :func:`load_rules`): prefix mounts are not reloaded."""
        table = MountTable(self.mounts.values(), rules.routes.values(), rules.route_table)
        table.route_apps = rules.route_apps
        return table

    def __iter__(self) -> Iterator[Mount]:
        """The prefix mounts (the route rules' are in :meth:`all`)."""
        return iter(self.mounts.values())

    def all(self) -> Iterator[Mount]:
        """Every mount: the prefix mounts, then one per route rule."""
        yield from self.mounts.values()
        yield from self.routes.values()

    def served(self) -> Iterator[Mount]:
        """The mounts the entry points serve: every one but the shadow comparisons'
        candidates, which only the comparisons call (:mod:`gateway.migration.shadow`)."""
        rules = self.route_table
        candidates = {spec.shadow_key for spec in rules.specs.values() if spec.shadow is not None} if rules else ()
        return (mount for mount in self.all() if mount.prefix not in candidates)

    def __len__(self) -> int:
        return len(self.mounts)

    def hidden(self) -> dict[str, str]:
        """Each prefix mount whose paths a route rule answers first, with that rule:
        ``{"/flask": "/<path:rest>"}``. Rules are matched before mounts, so a catch-all, or
        any rule over a mount's paths, takes them from the mount."""
        rules = self.route_table
        if not rules:
            return {}
        hidden = {}
        for prefix in self.mounts:
            for path in (prefix, prefix + "/", prefix + "/index.html", prefix + "/a/b"):
                key = next(filter(None, (rules.match(path, method).key for method in ("GET", "POST"))), None)
                if key is not None:
                    hidden[prefix] = rules.specs[key].rule
                    break
        return hidden

    def match(self, path: str) -> tuple[Mount | None, str, str]:
        """Split ``path`` into ``(mount, script_name, path_info)``.

        The same walk as ``werkzeug.middleware.dispatcher.DispatcherMiddleware``: drop
        the last segment until a prefix matches, so ``/flaskx`` never reaches ``/flask``.
        Without a match the mount is ``None`` and the whole path is the path info.
        """
        mounts = self.mounts
        if self.one_segment:  # the first segment is the only prefix it can be: no walk
            slash = path.find("/", 1)
            if slash > 0:
                script = path[:slash]
                mount = mounts.get(script)
                if mount is not None:
                    return mount, script, path[slash:]
        # Only the first ``longest`` characters can be a prefix: walking a path of 29,000
        # segments from its end, as the dispatcher does, took 0.9 s of the event loop.
        script = path
        if len(path) > self.longest:
            cut = path.rfind("/", 0, self.longest + 1)
            if cut < 0:
                return None, "", path
            script = path[:cut]
        while "/" in script:
            if script in mounts:
                return mounts[script], script, path[len(script):]
            script = script.rsplit("/", 1)[0]
        if script in mounts:
            return mounts[script], script, path[len(script):]
        return None, "", path


def rule_mounts_of(routes: Iterable[RouteSpec], loaded: Mapping[str, tuple[Any, Interface]],
                   targets: Mapping[str, str]) -> list[Mount]:
    """A mount for each app a route rule names, keyed in the table: the first app under
    the rule's own key, the apps it falls back to (:meth:`RouteSpec.fallback_key`), its
    canary and its shadow comparison's candidate, each as it is, WSGI or ASGI.
    ``loaded``: each app by name, with its interface; ``targets``: where each is.

    What to do with them is the pipeline's: :class:`gateway.core.pipeline.Chain` and
    :class:`gateway.core.pipeline.Shadow`.
    """
    made = []
    for route in routes:
        app, interface = loaded[route.apps[0]]
        made.append(Mount(route.key, ", ".join(targets.get(n, n) for n in route.apps), interface, app))
        for position, name in enumerate(route.apps[1:], 1):
            app, interface = loaded[name]
            made.append(Mount(route.fallback_key(position), targets.get(name, name), interface, app))
        if route.canary is not None:
            app, interface = loaded[route.canary]
            made.append(Mount(route.canary_key, targets.get(route.canary, route.canary), interface, app))
        if route.shadow is not None:
            app, interface = loaded[route.shadow]
            made.append(Mount(route.shadow_key, targets.get(route.shadow, route.shadow), interface, app))
    return made


def import_app(target: str) -> Any:
    """Import ``package.module:attribute`` and return the attribute; ``module:factory()``
    calls the factory with no arguments and returns what it returns (gunicorn's form).

    Whatever goes wrong is one :class:`MountError` naming the module, the exception's type
    and its message; the exception itself is its ``__cause__`` (``gateway --traceback``).
    """
    module_name, _, attr = target.partition(":")
    factory = attr.endswith("()")
    attr = attr.removesuffix("()")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name + ".").startswith(exc.name + "."):
            raise MountError(f'Could not import module "{module_name}" (from "{target}"): is the folder that '
                             "holds it the current directory, or the gateway.toml's?") from exc
        raise MountError(_failed(f'Importing "{module_name}" (from "{target}")', exc)) from exc
    except Exception as exc:  # the module's own code raised: one line, whatever it raised
        raise MountError(_failed(f'Importing "{module_name}" (from "{target}")', exc)) from exc
    app: Any = module
    try:
        for part in attr.split("."):
            app = getattr(app, part)
    except AttributeError:
        raise MountError(f'Attribute "{attr}" not found in module "{module_name}".') from None
    if factory:
        try:
            app = app()
        except Exception as exc:
            raise MountError(_failed(f'Calling "{module_name}:{attr}()"', exc)) from exc
    if not callable(app):
        raise MountError(f'"{target}" is not a WSGI or ASGI application: it is not callable.')
    return app


def _failed(what: str, exc: BaseException) -> str:
    """One line: ``what`` failed, with the exception's type and the first line of its message."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else "(no message)"
    return f"{what} failed: {type(exc).__name__}: {message.rstrip('.')}."


def detect_interface(app: Any) -> Interface:
    """Tell an ASGI app (a coroutine function or async ``__call__``) from a WSGI one."""
    if inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(type(app).__call__):
        return "asgi"
    return "wsgi"


def describe_framework(app: Any, interface: Interface) -> str:
    """Name the framework behind ``app`` from its class's top-level package."""
    package = type(inspect.unwrap(app)).__module__.partition(".")[0]
    names = {"flask": "Flask", "django": "Django", "starlette": "Starlette", "fastapi": "FastAPI"}
    if package in names:
        try:
            return f"{names[package]} {metadata.version(package)}"
        except metadata.PackageNotFoundError:
            return names[package]
    return f"{interface.upper()} app"
