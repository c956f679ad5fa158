"""``gateway progress``: what is left to port. Every route of each app the route rules name,
from the framework's own tables (Flask's ``url_map``, Django's URL resolver); which app
the gateway sends it to now; whether another app has the same route (a port); and its
share of the requests over a window, from every instance's counts in the site's database
(:class:`gateway.migration.rollout.Visits`). Last, the legacy routes that still get
traffic and have no port, most requested first.

The counts are kept by the instances that serve a rule with a rollout ([route.rollout]).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gateway.core.mounts import MountTable
from gateway.migration.rollout_store import State, Store

# A converter in Werkzeug's and Django's route syntax: <name>, <int:name>, <path:name>.
_CONVERTER = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
_SAME = {None: "string", "str": "string", "slug": "string", "default": "string"}
_SAMPLES = {"int": "1", "path": "x", "uuid": str(uuid.UUID(int=1)), "float": "1.0"}


@dataclass(frozen=True, kw_only=True)
class Route:
    """One route of one app, and what the gateway and its traffic say of it."""

    app: str
    pattern: str  # as its framework writes it, with a leading "/"
    methods: tuple[str, ...]
    answered_by: str
    legacy: bool  # an app no rule sends to as a canary or a shadow
    ported: bool  # (a legacy route) an app that is one has the same route
    requests: int


def shape(pattern: str) -> str:
    """A route's pattern with its converters' names and variables dropped, so that Flask's
    ``/items/<int:item_id>`` and Django's ``/items/<int:pk>`` are the same route."""
    return _CONVERTER.sub(lambda m: f"<{_SAME.get(m.group(1), m.group(1))}>", pattern)


def sample(pattern: str) -> str | None:
    """A path the route matches (None for a regular expression: no sample is guessed)."""
    if any(char in pattern for char in "^$(?\\["):
        return None
    return _CONVERTER.sub(lambda m: _SAMPLES.get(m.group(1) or "", "x"), pattern)


def flask_routes(app: Any) -> Iterator[tuple[str, tuple[str, ...]]]:
    """Flask's routes: each rule of ``url_map`` but the static files'."""
    for rule in app.url_map.iter_rules():
        if rule.endpoint != "static":
            yield rule.rule, tuple(sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}))


def django_routes() -> Iterator[tuple[str, tuple[str, ...]]]:
    """Django's routes: each pattern of the URL resolver, included URLconfs walked."""
    from django.urls import URLPattern, URLResolver, get_resolver

    def walk(patterns: Any, prefix: str) -> Iterator[tuple[str, tuple[str, ...]]]:
        for pattern in patterns:
            # Joined as the resolver joins a match's route (what Resolver.route gives): an
            # included pattern's leading "^" is dropped (admin's "admin/(?P<app_label>...)/$").
            joined = prefix + str(pattern.pattern).removeprefix("^") if prefix else str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, joined)
            elif isinstance(pattern, URLPattern):
                yield "/" + joined, ()

    yield from walk(get_resolver().url_patterns, "")


class Resolver:
    """Which route of an app a request path reached, by the framework's own matching."""

    def __init__(self, app: Any) -> None:
        self.flask = hasattr(app, "url_map")
        self.adapter = app.url_map.bind("localhost") if self.flask else None

    def route(self, method: str, path: str) -> str | None:
        try:
            if self.adapter is not None:
                rule, _ = self.adapter.match(path, method, return_rule=True)
                return str(rule.rule)
            from django.urls import resolve

            return "/" + str(resolve(path).route)
        except Exception:  # NotFound, MethodNotAllowed, a redirect, Resolver404: no route of its own
            return None


def routes(table: MountTable, store: Store, window: int) -> tuple[list[Route], int]:
    """Each app's routes with who answers them and their requests over the last ``window``
    minutes; and the requests of every app in that window."""
    rules = table.route_table
    assert rules is not None
    specs = list(rules.specs.values())
    states = store.states()
    newer = {name for spec in specs for name in (spec.canary, spec.shadow) if name is not None}
    tables: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    resolvers: dict[str, Resolver] = {}
    for name, (app, _) in table.route_apps.items():
        resolvers[name] = Resolver(app)
        tables[name] = list(flask_routes(app) if resolvers[name].flask else django_routes())
    requests: dict[tuple[str, str], int] = {}
    total = 0
    for app_name, method, path, n in store.visits(int(time.time() // 60) - window + 1):
        total += n
        if app_name in resolvers and (reached := resolvers[app_name].route(method, path)) is not None:
            requests[app_name, reached] = requests.get((app_name, reached), 0) + n
    found = []
    for name, app_routes in tables.items():
        others = {shape(p) for other, rs in tables.items() if other != name and other in newer for p, _ in rs}
        merged: dict[str, set[str]] = {}  # a pattern's views, one per method (Flask's GET and POST)
        for pattern, verbs in app_routes:
            merged.setdefault(pattern, set()).update(verbs)
        for pattern, methods in merged.items():
            route = Route(app=name, pattern=pattern, methods=tuple(sorted(methods)),
                          answered_by=answered_by(rules, states, pattern), legacy=name not in newer,
                          ported=name not in newer and shape(pattern) in others,
                          requests=requests.get((name, pattern), 0))
            # A new app's routes that no rule reaches (a Django project's admin) are not the migration's.
            if route.legacy or route.requests or route.answered_by not in ("-", "?"):
                found.append(route)
    return found, total


def answered_by(rules: Any, states: dict[str, State], pattern: str) -> str:
    """Who the gateway's rules send a GET of ``pattern`` to now."""
    path = sample(pattern)
    if path is None:
        return "?"
    key = rules.match(path, "GET").key
    if key is None:
        return "-"
    spec = rules.specs[key]
    state = states.get(key) if spec.rollout is not None else None
    if state is not None and state.owner:
        return f"{state.owner} (handed over)"
    answer: str = spec.apps[0] + (f" (shadowed on {spec.shadow})" if spec.shadow else "")
    share = state.share if state is not None else (spec.share if spec.rollout is None else 0.0)
    if spec.canary is not None and share:
        answer += f"; {spec.canary} for {share:g}%"
    return answer


def report(found: list[Route], total: int, window: int) -> list[str]:
    """The table, then the legacy routes still to port, most requested first."""
    lines = [f"Requests through the route rules over the last {window} min: {total}.",
             f"{'APP':<10} {'ROUTE':<36} {'ANSWERED BY':<30} {'PORTED':<7} TRAFFIC"]
    for route in sorted(found, key=lambda r: (r.app, r.pattern)):
        share = f"{100 * route.requests / total:.1f}% ({route.requests})" if total else "-"
        lines.append(f"{route.app:<10} {route.pattern:<36} {route.answered_by:<30} "
                     f"{'yes' if route.ported else '-' if route.legacy else 'port':<7} {share}")
    left = sorted((r for r in found if r.legacy and not r.ported and r.requests), key=lambda r: -r.requests)
    lines.append("")
    if not left:
        lines.append("No legacy route with traffic is left without a port." if total else
                     "No traffic counted in the window (counts are kept while a rule has a rollout).")
        return lines
    lines.append("Still to port, by traffic:")
    for rank, route in enumerate(left, 1):
        lines.append(f"  {rank}. {route.app} {route.pattern}: {100 * route.requests / total:.1f}% of requests "
                     f"({route.requests})")
    return lines
