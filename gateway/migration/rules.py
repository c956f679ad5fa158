"""Route rules: several apps sharing one URL space, as a migration from one framework to
another moves a page at a time.

Prefix mounts give each app a path of its own (``/flask``, ``/django``). A route rule
instead gives an app some URLs of the root URL space, in Werkzeug's routing syntax, and
strips nothing: the app sees ``SCRIPT_NAME=""`` and the whole path, so its own URLs,
``url_for`` and ``reverse()`` need no change. The rules live in a ``gateway.toml``::

    [apps]
    shop = "legacy_shop:app"                # a name for each app, and where it is
    new = "newshop.wsgi:application"

    [mounts]                                # prefix mounts, as --mount (optional)
    "/flask" = "flask_hello:app"

    [[route]]
    rule = "/shop/<path:rest>"              # Werkzeug's syntax: converters, methods
    app = "shop"

    [[route]]
    rule = "/shop/items/<int:id>"
    app = ["new", "shop"]                   # fallback: on a 404 to GET or HEAD, the next
    methods = ["GET", "HEAD", "POST"]
    fallback_methods = ["GET", "POST"]      # optional: POST's 404 falls through too

    [[route]]
    rule = "/shop/cart"
    app = "shop"
    canary = { app = "new", share = 10 }    # 10% of clients, each always to the same app

A canary sends a share of clients (a percentage, to 0.01) to another app, sticky per
client: by a cookie the gateway sets (``gateway_canary``, a random ID), or by the value
of a header the rule names (``header = "X-User-ID"``). A client's place is a hash of its
ID and the rule, so raising the share only adds clients, and lowering it only removes
some. The rules are re-read on ``SIGHUP`` (see :mod:`gateway.asgi`).

A request is matched against the rules first, the most specific rule winning, ordered as
Werkzeug's ``Map`` orders them; a path no rule matches goes on to the prefix mounts, then
to the gateway's own pages. A path that rules match for other methods only gets a 405
with their ``Allow``. A rule's apps may be WSGI or ASGI apps, in any role: which app
answers, which 404 falls through to the next app and what a shadow comparison replays
are the pipeline's decisions (:class:`gateway.core.pipeline.Chain`,
:class:`gateway.core.pipeline.Shadow`), and each entry point runs them in its own
protocol.

Each rule is checked as the file is read (:func:`check_rule`): a rule Werkzeug takes but
that cannot work (a repeated name, a converter argument of the wrong kind) or could
backtrack (two ``path`` converters) is refused with one line naming its line. Rules
match only what both Werkzeug's and Django's converters take
(:data:`gateway.migration.matcher.CONVERTERS`), and no path that starts with ``//``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import stat
import sys
import threading
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, RequestRedirect, Rule
from werkzeug.routing.rules import _converter_args_re, _part_re, parse_converter_args

from gateway.migration.matcher import CONVERTERS, Compiled, backtracking, compile_map
from gateway.migration.rollout import Rollouts
from gateway.migration.rollout_spec import RolloutSpec, parse_rollout
from gateway.migration.shadow import DEFAULT_CPU, DEFAULT_TIMEOUT, Shadower
from gateway.migration.traffic import Board, Traffic

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_MODULE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Rule keys are told from mount prefixes by this mark (both key the adapters' tables).
RULE_MARK = "~"


class ConfigFileError(ValueError):
    """A ``gateway.toml`` that cannot be used; the message is one line naming where."""


@dataclass(frozen=True)
class RouteSpec:
    """One ``[[route]]``: a Werkzeug rule, the apps that answer it in fallback order,
    methods, and a canary: another app for ``share`` per cent of clients."""

    rule: str
    apps: tuple[str, ...]
    methods: tuple[str, ...] | None = None
    line: int = 0
    canary: str | None = None
    share: float = 0.0
    header: str | None = None  # the canary is sticky by this header's value, else by a cookie
    shadow: str | None = None  # the candidate a shadow comparison replays GET and HEAD on
    shadow_headers: tuple[str, ...] = ()  # response headers the comparison includes
    shadow_credentials: bool = False  # the replays carry the client's cookies and authorization
    #: The methods whose 404 falls through to the next app (``fallback_methods``).
    fallback_methods: tuple[str, ...] = ("GET", "HEAD")
    rollout: RolloutSpec | None = None  # the canary's share walks steps, judged (gateway.migration.rollout)

    @property
    def canary_key(self) -> str:
        """The canary's own key in the mount table."""
        return self.key + " canary"

    def fallback_key(self, position: int) -> str:
        """The key in the mount table of the app at ``position`` (1 on) of the fallback order;
        the first app's is the rule's own."""
        return f"{self.key} fallback {position}"

    @property
    def shadow_key(self) -> str:
        """The shadow comparison's candidate's key in the mount table."""
        return self.key + " shadow"

    def chooses_canary(self, client: str, share: float | None = None) -> bool:
        """Whether ``client`` (a cookie's ID, a header's value) is among the canary's share
        (``share``: a rollout's now, else the rule's)."""
        digest = hashlib.blake2b(f"{self.rule}\0{client}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % 10_000 < round((self.share if share is None else share) * 100)

    @property
    def key(self) -> str:
        """The rule's key in the mount table and the access log, e.g. ``~/shop/<path:rest>``."""
        return RULE_MARK + self.rule + ("" if self.methods is None else " " + ",".join(self.methods))


@dataclass(frozen=True)
class GatewayFile:
    """What a ``gateway.toml`` says: named apps, prefix mounts, route rules."""

    apps: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[str, ...] = ()
    routes: tuple[RouteSpec, ...] = ()
    #: The share of one core shadow comparisons may use, per process (``[shadow] cpu``, 0-1).
    shadow_cpu: float = DEFAULT_CPU
    #: The Django settings module an app of ``[apps]`` names (``settings = "mysite.settings"``).
    django_settings: str | None = None
    #: Folders the apps' modules are imported from (``path = "mysite"``), relative to the file.
    paths: tuple[str, ...] = ()
    #: The ``[gateway]`` table: each setting's value as TOML gives it, and where it stands
    #: (``gateway.toml, line 3``); read by ``gateway.core.config.load_config``.
    settings: Mapping[str, tuple[str, object]] = field(default_factory=dict)
    #: Seconds a shadow comparison's replays may take together (``[shadow] timeout``).
    shadow_timeout: float = DEFAULT_TIMEOUT


#: The largest gateway.toml read: 10,000 rules take about 600 KB.
MOST_FILE_BYTES = 16 * 1024 * 1024


def read_gateway_file(path: Path) -> GatewayFile:
    """Read and check ``path``; a problem raises :class:`ConfigFileError` naming its line.

    Only a regular file, and at most :data:`MOST_FILE_BYTES` of it: a FIFO held the read
    (and Granian's main process, its signals with it) until a writer came, and a link to
    ``/dev/zero`` grew uvicorn's process to 8.6 GB in 20 s, on a SIGHUP."""
    try:
        # O_NONBLOCK: opening a FIFO waits for a writer without it.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(descriptor, "rb") as file:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise ConfigFileError(f"{path}: is not a regular file (a FIFO, a device or a folder); "
                                      "name the gateway.toml itself.")
            data = file.read(MOST_FILE_BYTES + 1)
        if len(data) > MOST_FILE_BYTES:
            raise ConfigFileError(f"{path}: is larger than {MOST_FILE_BYTES // 2**20} MiB; a gateway.toml "
                                  "of 10,000 rules is about 600 KB.")
        text = data.decode("utf-8")
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot be read: {exc.strerror}.") from None
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"{path}: is not UTF-8 text (byte {exc.start} cannot be read); "
                              "save it as UTF-8.") from None
    return parse_gateway_file(text, str(path))


def parse_gateway_file(text: str, name: str = "gateway.toml") -> GatewayFile:
    """Parse the text of a ``gateway.toml``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{name}: {exc}.") from None
    except RecursionError:  # tomllib reads nested arrays and tables by recursion
        raise ConfigFileError(f"{name}, line {_too_deep(text)}: arrays or tables nest more than "
                              f"{_MOST_NESTED} deep; a gateway.toml needs a few levels at most.") from None
    lines = text.splitlines()
    unknown = set(data) - {"gateway", "apps", "mounts", "route", "shadow"}
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigFileError(f"{name}, line {_line_of(lines, key)}: unknown table or key {key!r}; "
                              "use [gateway], [apps], [mounts], [shadow] and [[route]].")
    settings = data.get("gateway", {})
    if not isinstance(settings, dict):
        raise ConfigFileError(f"{name}, line {_line_of(lines, 'gateway')}: [gateway] is a table of settings, "
                              "e.g. threads = 50 (docs/configuration.md lists them).")
    located = {key: (f"{name}, line {_line_of(lines, key)}", value) for key, value in settings.items()}
    shadow_cpu, shadow_timeout = _shadow_pool(data.get("shadow", {}), f"{name}, line {_line_of(lines, 'shadow')}")
    apps, django_settings, paths = _apps(data.get("apps", {}), name, lines)
    mounts = data.get("mounts", {})
    if not isinstance(mounts, dict) or not all(isinstance(t, str) for t in mounts.values()):
        raise ConfigFileError(f"{name}, line {_line_of(lines, 'mounts')}: mounts must be a table of "
                              '"/prefix" = "package.module:attribute".')
    mount_specs = tuple(f"{prefix}={apps.get(target, target)}" for prefix, target in mounts.items())
    routes = data.get("route", [])
    if not isinstance(routes, list):
        raise ConfigFileError(f"{name}, line {_line_of(lines, 'route')}: routes are written [[route]].")
    route_lines = [i + 1 for i, line in enumerate(lines) if re.match(r"\s*\[\[\s*route\s*\]\]", line)]
    specs = []
    seen: dict[str, int] = {}
    checked = rules_map(())  # each rule is bound to it as it is checked: one Map for the file
    for index, route in enumerate(routes):
        # route = [{...}] (an inline array of tables) has no [[route]] line: name the key's.
        line = route_lines[index] if index < len(route_lines) else _line_of(lines, "route")
        where = f"{name}, line {line}"
        if not isinstance(route, dict):
            raise ConfigFileError(f"{name}, line {_line_of(lines, 'route')}: routes are written [[route]], "
                                  'each a table: rule = "/shop/<int:id>", app = "shop".')
        extra = set(route) - {"rule", "app", "methods", "canary", "shadow", "fallback_methods", "rollout"}
        if extra:
            raise ConfigFileError(f"{where}: unknown key {sorted(extra)[0]!r} in [[route]]; "
                                  "use rule, app, methods, fallback_methods, canary, shadow and rollout.")
        rule = route.get("rule")
        if not isinstance(rule, str) or not rule.startswith("/"):
            raise ConfigFileError(f'{where}: rule must be a path starting with "/", e.g. rule = "/shop/<int:id>".')
        answering = route.get("app")
        names = (answering,) if isinstance(answering, str) else tuple(answering or ())
        if not names or not all(isinstance(n, str) for n in names):
            raise ConfigFileError(f'{where}: app must name an app of [apps], or a list of them in fallback order.')
        for app_name in names:
            if app_name not in apps:
                raise ConfigFileError(f"{where}: app {app_name!r} is not in [apps]"
                                      + (f" (known: {', '.join(sorted(apps))})." if apps else "."))
        methods = route.get("methods")
        if methods is not None:
            if not isinstance(methods, list) or not methods or not all(
                    isinstance(m, str) and m.upper() in _METHODS for m in methods):
                raise ConfigFileError(f'{where}: methods must be a list of HTTP methods, e.g. ["GET", "POST"].')
            methods = tuple(sorted({m.upper() for m in methods} | ({"HEAD"} if "GET" in (
                m.upper() for m in methods) else set())))
        fallback_methods = _fallback_methods(route.get("fallback_methods"), len(names), where)
        canary, share, header = _canary(route.get("canary"), apps, where)
        shadow, shadow_headers, shadow_credentials = _shadow(route.get("shadow"), apps, where)
        try:
            rollout = parse_rollout(route.get("rollout"), where, route.get("canary"))
        except ValueError as exc:
            raise ConfigFileError(str(exc)) from None
        if shadow is not None and (len(names) > 1 or (canary is not None and (rollout is None or canary != shadow))):
            raise ConfigFileError(f"{where}: a rule in shadow mode has one app, and no canary (but the one a "
                                  "rollout judges, when it is the shadow's app).")
        spec = RouteSpec(rule, names, methods, line, canary, share, header, shadow, shadow_headers,
                         shadow_credentials, fallback_methods, rollout)
        problem = check_rule(rule, checked=checked)
        if problem is not None:
            raise ConfigFileError(f"{where}: rule {rule!r} {problem}.")
        if spec.key in seen:
            raise ConfigFileError(f"{where}: rule {rule!r} repeats the rule of line {seen[spec.key]}.")
        seen[spec.key] = line
        specs.append(spec)
    return GatewayFile(apps, mount_specs, tuple(specs), shadow_cpu, django_settings, paths, located, shadow_timeout)


_APP_FORM = ('name = "package.module:attribute", or name = { app = "package.module:attribute", '
             'settings = "project.settings", path = "folder" } (settings: a Django project\'s; path: the folder '
             "that holds the module, relative to this file)")


def _apps(value: Any, name: str, lines: list[str]) -> tuple[dict[str, str], str | None, tuple[str, ...]]:
    """Check ``[apps]``: each name's ``module:attr``, the one Django settings module they
    name, and the folders their modules are imported from."""
    if not isinstance(value, dict):
        raise ConfigFileError(f"{name}, line {_line_of(lines, 'apps')}: apps must be a table of {_APP_FORM}.")
    apps: dict[str, str] = {}
    paths: list[str] = []
    settings: tuple[str, str] | None = None  # (the module, the app that names it)
    for app_name, entry in value.items():
        where = f"{name}, line {_line_of(lines, app_name)}"
        folder = None
        if isinstance(entry, dict) and not set(entry) - {"app", "settings", "path"}:
            target, named, folder = entry.get("app"), entry.get("settings"), entry.get("path")
        else:
            target, named = entry, None
        if not _NAME.fullmatch(app_name) or not isinstance(target, str):
            raise ConfigFileError(f"{where}: app {app_name!r} must be {_APP_FORM}.")
        if folder is not None:
            if not isinstance(folder, str) or not folder or "\0" in folder:
                raise ConfigFileError(f'{where}: path must be a folder, relative to this file, e.g. path = "mysite".')
            paths.append(folder)
        if named is not None:
            if not isinstance(named, str) or not _MODULE.fullmatch(named):
                raise ConfigFileError(f'{where}: settings must name a Django settings module, e.g. '
                                      f'settings = "mysite.settings" (got {named!r}).')
            if settings is not None and settings[0] != named:
                raise ConfigFileError(
                    f"{where}: app {app_name!r} names the Django settings {named}, and app {settings[1]!r} "
                    f"names {settings[0]}; Django reads one settings module per process: serve one Django "
                    "project per gateway (its apps can share it), or run a gateway for each.")
            settings = (named, app_name)
        apps[app_name] = target
    return apps, settings[0] if settings else None, tuple(dict.fromkeys(paths))


def _shadow_pool(value: Any, where: str) -> tuple[float, float]:
    """Check ``[shadow] cpu = 5, timeout = 5``: the per cent of one core comparisons may use
    (as 0-1), and the seconds a comparison's replays may take."""
    form = ("[shadow] takes cpu = 2 (the per cent of one core shadow comparisons may use, above 0, at most "
            "100) and timeout = 5 (the seconds a comparison's replays may take, above 0, at most 3600)")
    if not isinstance(value, dict) or set(value) - {"cpu", "timeout"}:
        raise ConfigFileError(f"{where}: {form}.")
    cpu = value.get("cpu", DEFAULT_CPU * 100)
    timeout = value.get("timeout", DEFAULT_TIMEOUT)
    for number, top in ((cpu, 100), (timeout, 3600)):
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 < number <= top:
            raise ConfigFileError(f"{where}: {form}.")
    return float(cpu) / 100, float(timeout)


def _fallback_methods(value: Any, apps: int, where: str) -> tuple[str, ...]:
    """Check a route's ``fallback_methods = ["GET", "POST"]``: the methods whose 404 goes on
    to the next app (GET and HEAD by default; HEAD goes with GET)."""
    if value is None:
        return ("GET", "HEAD")
    if apps < 2:
        raise ConfigFileError(f"{where}: fallback_methods needs a list of apps to fall back along, "
                              'e.g. app = ["new", "old"].')
    if not isinstance(value, list) or not value or not all(isinstance(m, str) and m.upper() in _METHODS
                                                            for m in value):
        raise ConfigFileError(f'{where}: fallback_methods must be a list of HTTP methods, e.g. ["GET", "POST"].')
    methods = {m.upper() for m in value}
    return tuple(sorted(methods | ({"HEAD"} if "GET" in methods else set())))


def _canary(value: Any, apps: Mapping[str, Any], where: str) -> tuple[str | None, float, str | None]:
    """Check a route's ``canary = { app = "new", share = 10, header = "X-User-ID" }``."""
    if value is None:
        return None, 0.0, None
    form = 'canary = { app = "name", share = 10 } (share: per cent of clients; optional header = "X-User-ID")'
    if not isinstance(value, dict) or set(value) - {"app", "share", "header"} or "app" not in value:
        raise ConfigFileError(f"{where}: canary must be {form}.")
    if not isinstance(value["app"], str) or value["app"] not in apps:
        raise ConfigFileError(f"{where}: canary app {value['app']!r} is not in [apps].")
    share = value.get("share", 0)
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 100:
        raise ConfigFileError(f"{where}: canary share must be a number of per cent from 0 to 100, e.g. share = 10.")
    header = value.get("header")
    if header is not None and not (isinstance(header, str) and re.fullmatch(r"[A-Za-z0-9-]+", header)):
        raise ConfigFileError(f'{where}: canary header must be a header name, e.g. header = "X-User-ID".')
    return str(value["app"]), float(share), header


def _shadow(value: Any, apps: Mapping[str, Any], where: str) -> tuple[str | None, tuple[str, ...], bool]:
    """Check a route's ``shadow = { app = "new", headers = ["Content-Type"], credentials = false }``."""
    if value is None:
        return None, (), False
    form = ('shadow = { app = "name" } (optionally headers = ["Content-Type", ...] to compare, and '
            "credentials = true to replay the client's cookies and authorization)")
    if not isinstance(value, dict) or set(value) - {"app", "headers", "credentials"} or "app" not in value:
        raise ConfigFileError(f"{where}: shadow must be {form}.")
    if not isinstance(value["app"], str) or value["app"] not in apps:
        raise ConfigFileError(f"{where}: shadow app {value['app']!r} is not in [apps].")
    headers = value.get("headers", [])
    if not isinstance(headers, list) or not all(isinstance(h, str) and re.fullmatch(r"[A-Za-z0-9-]+", h)
                                                for h in headers):
        raise ConfigFileError(f'{where}: shadow headers must be a list of header names, e.g. ["Content-Type"].')
    credentials = value.get("credentials", False)
    if not isinstance(credentials, bool):
        raise ConfigFileError(f"{where}: shadow credentials must be true or false (false, the default: the "
                              "candidate gets no Cookie, Authorization or Proxy-Authorization).")
    return str(value["app"]), tuple(headers), credentials


#: Nesting of arrays and tables beyond which a file is refused (tomllib recurses: 5,000
#: levels raise RecursionError).
_MOST_NESTED = 100


def _too_deep(text: str) -> int:
    """The line where ``[`` and ``{`` first nest more than :data:`_MOST_NESTED` deep, or 0
    (strings and comments skipped; escapes inside strings read as TOML reads them)."""
    depth, line, quote, escaped, comment = 0, 1, "", False, False
    for char in text:
        if char == "\n":
            line, comment = line + 1, False
        elif comment:
            continue
        elif quote:
            if escaped:
                escaped = False
            elif char == "\\" and quote == '"':
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "#":
            comment = True
        elif char in "[{":
            depth += 1
            if depth > _MOST_NESTED:
                return line
        elif char in "]}":
            depth -= 1
    return 0


class MatchingRule(Rule):
    """A Werkzeug ``Rule`` that matches and never builds a URL.

    Werkzeug compiles two URL builders for each rule, as Python source: 1.2 ms of the
    1.9 ms a rule cost to load (cProfile, 3,000 rules), and the gateway builds no URL from
    its rules.
    """

    def _compile_builder(self, append_unknown: bool = True) -> Callable[..., tuple[str, str]]:
        return _no_builder


def _no_builder(*args: object, **values: object) -> tuple[str, str]:
    raise NotImplementedError("the gateway's route rules match paths; they build no URL")


def rules_map(rules: Iterable[Rule]) -> Map:
    """A ``Map`` of the gateway's rules: its converters, no redirects (a trailing slash,
    merged slashes and defaults are the app's business)."""
    return Map(rules, converters=CONVERTERS, strict_slashes=False, merge_slashes=False, redirect_defaults=False)


#: Each converter's arguments, in the order Werkzeug takes them, and what each takes.
_ARGUMENTS: dict[str, dict[str, str]] = {
    "default": {"minlength": "length", "maxlength": "length", "length": "length"},
    "string": {"minlength": "length", "maxlength": "length", "length": "length"},
    "int": {"fixed_digits": "digits", "min": "whole", "max": "whole", "signed": "bool"},
    "float": {"min": "number", "max": "number", "signed": "bool"},
    "path": {},
    "uuid": {},
}
#: Segments a rule may have: Werkzeug builds and walks its state machine by recursion, a
#: segment a call (a rule of 1,500 segments raised RecursionError as the Map was built).
_MOST_SEGMENTS = 100
#: The longest value a length may give: a request's head is refused beyond 1 MiB.
_MOST_LENGTH = 1 << 20
_EXAMPLES = {"length": "8", "digits": "4", "whole": "1", "number": "0.5", "bool": "True"}


def check_rule(rule: str, methods: Iterable[str] | None = None, *, checked: Map | None = None) -> str | None:
    """What is wrong with ``rule`` for the gateway, or None: the end of a sentence that
    starts with the rule (``"has two variables named 'x'"``).

    Checks what Werkzeug accepts and then fails on: repeated names, converter arguments
    of the wrong kind or out of range, and rules whose matching could backtrack
    (:func:`gateway.migration.matcher.backtracking`). ``checked``: a ``Map`` to bind the
    rule to (one for many rules costs less than a ``Map`` each).
    """
    if rule.count("/") > _MOST_SEGMENTS:
        return (f"has {rule.count('/')} segments; a rule has at most {_MOST_SEGMENTS} (Werkzeug walks a rule "
                "a segment a call deeper, and Python stops at 1,000 calls)")
    names: set[str] = set()
    position = 0
    while position < len(rule):
        part = _part_re.match(rule, position)
        if part is None:
            break  # Werkzeug says how below
        position = part.end()
        variable = part.group("variable")
        if variable is None:
            continue
        if variable in names:
            return f"has two variables named {variable!r}: give each its own name"
        names.add(variable)
        problem = _check_converter(part.group("converter") or "default", part.group("arguments"), variable)
        if problem is not None:
            return f"has {part.group(0)}: {problem}"
    try:
        made = MatchingRule(rule, endpoint=0, methods=None if methods is None else list(methods))
        (checked or rules_map(())).add(made)
        for piece in made._parts:
            re.compile(piece.content)
    except (ValueError, LookupError, TypeError, re.error, OverflowError, RecursionError) as exc:
        return f"is not a Werkzeug rule: {exc}"
    reason = backtracking(made)
    return None if reason is None else f"could take time that grows faster than the path: {reason}"


def _check_converter(kind: str, arguments: str | None, variable: str) -> str | None:
    """What is wrong with the arguments of one converter, or None."""
    try:
        args, kwargs = parse_converter_args(arguments or "")
    except ValueError as exc:
        return f"{exc}"
    read = max((item.end() for item in _converter_args_re.finditer((arguments or "") + ",")), default=0)
    if arguments and read < len(arguments) + 1:  # Werkzeug drops what follows the last argument it reads
        return f"cannot read {arguments[read:]!r} as an argument: write name=value, e.g. <int(min=1):{variable}>"
    if kind == "any":
        if kwargs or not args or not all(isinstance(item, str) and item for item in args):
            return f'any takes one or more words, quoted if they are numbers: <any(new, used, "2"):{variable}>'
        return None
    known = _ARGUMENTS.get(kind)
    if known is None:
        return None  # an unknown converter: Werkzeug names it
    if len(args) > len(known):
        return f"{kind} takes at most {len(known)} arguments" if known else f"{kind} takes no arguments"
    given = dict(zip(known, args, strict=False))
    for key, value in kwargs.items():
        if key not in known:
            takes = ", ".join(known) or "no arguments"
            return f"{kind} has no argument {key!r} (it takes {takes})"
        if key in given:
            return f"{key} is given twice"
        given[key] = value
    for key, value in given.items():
        what = known[key]
        if not _fits(what, value):
            return f"{key} must be {_KINDS[what]}, e.g. <{kind}({key}={_EXAMPLES[what]}):{variable}>"
    if "length" in given and ("minlength" in given or "maxlength" in given):
        return "give length, or minlength and maxlength, not both"
    if given.get("minlength", 1) > given.get("maxlength", math.inf):
        return "minlength is more than maxlength: no value could match"
    if given.get("min", -math.inf) > given.get("max", math.inf):
        return "min is more than max: no value could match"
    return None


_KINDS = {
    "length": f"a whole number from 1 to {_MOST_LENGTH}",
    "digits": "a whole number from 1 to Python's limit on an integer's digits (sys.get_int_max_str_digits())",
    "whole": "a whole number",
    "number": "a number",
    "bool": "True or False",
}


def _fits(what: str, value: object) -> bool:
    """Whether ``value`` (as Werkzeug reads a converter argument) is of kind ``what``."""
    if what == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if what == "number":
        return math.isfinite(value)
    if not isinstance(value, int):
        return False
    if what == "length":
        return 1 <= value <= _MOST_LENGTH
    if what == "digits":
        return 1 <= value <= (sys.get_int_max_str_digits() or _MOST_LENGTH)
    return True


def _line_of(lines: list[str], key: str) -> int:
    """The first line that starts the table or key ``key`` (1-based; ``key.sub`` too), or 0."""
    pattern = re.compile(rf'\s*(\[+\s*{re.escape(key)}\s*[\].]|"?{re.escape(key)}"?\s*[=.])')
    return next((i + 1 for i, line in enumerate(lines) if pattern.match(line)), 0)


#: Route matches kept per table, and the longest path kept. A bigger cache measured worse: with
#: 4,096 entries a path not in it cost 2 us more (bench/routes.py, distinct paths), with 256 0.5 us.
CACHED_PATHS = 256
CACHED_PATH_LENGTH = 256


@dataclass(frozen=True)
class Match:
    """What the rules say of a request: the rule's key, or the methods a 405 allows."""

    key: str | None
    allowed: tuple[str, ...] = ()


NO_MATCH = Match(None)


class RouteTable:
    """The rules of a ``gateway.toml`` as one Werkzeug ``Map``."""

    def __init__(self, specs: Iterable[RouteSpec], shadow_log: Path | None = None,
                 previous: RouteTable | None = None, shadow_cpu: float = DEFAULT_CPU,
                 shared_dir: Path | None = None, shadow_timeout: float = DEFAULT_TIMEOUT,
                 rollout_database: str | None = None) -> None:
        """``previous``: the table a reload replaces; its counts and shadow pool carry on
        (with ``shadow_cpu``, the file's share now, and ``shadow_timeout``). ``shared_dir``: where the workers of
        one server share the migration page's counts (``GATEWAY_MIGRATION_DIR``). ``rollout_database``: where
        the rules' rollouts are kept (:mod:`gateway.migration.rollout`)."""
        self.specs = {spec.key: spec for spec in specs}
        #: Runs the shadow comparisons of the rules in shadow mode (its counts are per rule).
        self.shadower: Shadower = previous.shadower if previous is not None else Shadower(shadow_log)
        self.shadower.cpu = shadow_cpu
        self.shadower.timeout = shadow_timeout
        self.map = rules_map(MatchingRule(spec.rule, endpoint=key, methods=spec.methods)
                             for key, spec in self.specs.items())
        self.adapter = self.map.bind("gateway.invalid", "/")
        #: Fallbacks taken, and requests sent to a canary, per rule key.
        self.fallbacks: Counter[str] = previous.fallbacks if previous is not None else Counter()
        self.canaried: Counter[str] = previous.canaried if previous is not None else Counter()
        #: Requests a minute per rule, for the migration page (``/_gateway/``).
        self.traffic: Traffic = previous.traffic if previous is not None else Traffic()
        self.board: Board | None = previous.board if previous is not None else (
            Board(shared_dir, self.traffic, self.shadower.all_counts) if shared_dir is not None else None)
        self.lock = threading.Lock()
        self.listener: Callable[..., None] | None = None
        self._cached = functools.lru_cache(maxsize=CACHED_PATHS)(self._match)
        #: The rules as regular expressions, which answer most paths in a fifth of the time.
        self.compiled: Compiled | None = compile_map(self.map, previous.compiled if previous is not None else None)
        self.matches = {key: Match(key) for key in self.specs}
        self.rollouts: Rollouts | None = previous.rollouts if previous is not None else None
        if self.rollouts is not None:
            self.rollouts.configure(self.specs.values())
        elif rollout_database is not None and any(spec.rollout for spec in self.specs.values()):
            self.rollouts = Rollouts(self.specs.values(), rollout_database, self.shadower.snapshot)

    def listen(self, listener: Callable[..., None]) -> None:
        """Tell ``listener`` of each fallback, canary request and shadow outcome, as
        ``listener(kind, rule[, outcomes])`` (the metrics)."""
        self.listener = self.shadower.listener = listener
        if self.rollouts is not None:
            self.rollouts.listen(listener)

    def fell_back(self, key: str) -> None:
        """Count a fallback of rule ``key``: an app's answer was passed over for the next one's."""
        with self.lock:
            self.fallbacks[key] += 1
        self.notify("fallback", key)

    def notify(self, kind: str, key: str) -> None:
        """Count a fallback or a canary request (``kind``) of rule ``key``, for the
        migration page and the listener."""
        self.traffic.hit(key, what=kind)
        if self.listener is not None:
            self.listener(kind, key)

    def share(self, spec: RouteSpec) -> float:
        """The share of clients ``spec``'s canary has now: its rollout's, else its own."""
        return spec.share if spec.rollout is None or self.rollouts is None else self.rollouts.share(spec)

    def __bool__(self) -> bool:
        return bool(self.specs)

    def match(self, path: str, method: str) -> Match:
        """Match a decoded ``path``: the rule's key, a 405's methods, or no rule.

        Werkzeug's matcher was 60% of a decision with 1,000 rules (cProfile), so the
        rules compiled by :mod:`gateway.migration.matcher` answer first. Where they leave the answer
        to Werkzeug (a 405, rare converters), its recent answers are kept
        (:data:`CACHED_PATHS` of them, paths up to :data:`CACHED_PATH_LENGTH` characters).
        A reload makes a new table, and so a new cache.

        A path that starts with ``//`` matches no rule: Werkzeug drops the extra slashes
        before it matches, Django's resolver does not (and answers 404).
        """
        if path.startswith("//"):
            return NO_MATCH
        if self.compiled is not None:
            rule = self.compiled.match(path, method)
            if rule is False:
                return NO_MATCH
            if rule is not None:
                return self.matches[rule.endpoint]  # type: ignore[union-attr]
        if len(path) > CACHED_PATH_LENGTH:
            return self._match(path, method)
        return self._cached(path, method)

    def _match(self, path: str, method: str) -> Match:
        try:
            key, _ = self.adapter.match(path, method)
        except MethodNotAllowed as exc:
            return Match(None, tuple(sorted(exc.valid_methods or ())))
        except (NotFound, RequestRedirect):
            return Match(None)
        return Match(str(key))

    def explain(self, path: str, method: str = "GET") -> list[str]:
        """Why ``path`` goes where it goes, one line a step, for ``gateway routes --explain``."""
        match = self.match(path, method)
        if match.key is not None:
            spec = self.specs[match.key]
            try:
                _, values = self.adapter.match(path, method)
            except Exception:  # matched a moment ago
                values = {}
            lines = [f"{method} {path} matches rule {spec.rule!r} (line {spec.line})"
                     + (f" with {values}" if values else "") + "."]
            candidates = [s.rule for s in self.specs.values() if s.key != match.key and _matches(s, path, method)]
            if candidates:
                lines.append("More general rules that match too, and lose to it (Werkzeug orders rules "
                             f"by specificity): {', '.join(repr(c) for c in candidates)}.")
            owner = self.rollouts.owner(spec) if self.rollouts is not None and spec.rollout is not None else None
            if owner is not None:
                lines.append(f"Its rollout is done and handed the rule over: app {owner!r} answers it, for every "
                             f"client, with SCRIPT_NAME \"\" and PATH_INFO {path!r}.")
                return lines
            if spec.canary is not None:
                sticky = f"the value of its {spec.header} header" if spec.header else "the gateway_canary cookie"
                share = spec.share if spec.rollout is None or self.rollouts is None else self.rollouts.share(spec)
                lines.append(f"{share:g}% of clients, chosen by {sticky}, go to app {spec.canary!r}"
                             + (" (its rollout's share now)" if spec.rollout is not None else "") + "; the others:")
            if len(spec.apps) == 1:
                lines.append(f"App {spec.apps[0]!r} answers it, with SCRIPT_NAME \"\" and PATH_INFO {path!r}.")
            else:
                lines.append(f"App {spec.apps[0]!r} answers it; on a 404 to {' or '.join(spec.fallback_methods)}, "
                             + ", then ".join(repr(a) for a in spec.apps[1:]) + " is asked next.")
            if spec.shadow is not None:
                lines.append(f"In shadow mode: after the answer, a GET or HEAD is replayed on {spec.shadow!r} "
                             "and compared (gateway diff).")
            return lines
        if match.allowed:
            return [f"{method} {path}: rules match this path for {', '.join(match.allowed)} only: 405."]
        return [f"{method} {path} matches no rule: the prefix mounts, then the gateway's own pages, answer it."]


def _matches(spec: RouteSpec, path: str, method: str) -> bool:
    adapter = rules_map([MatchingRule(spec.rule, endpoint=0, methods=spec.methods)]).bind("gateway.invalid", "/")
    try:
        adapter.match(path, method)
    except (NotFound, MethodNotAllowed, RequestRedirect):
        return False
    return True
