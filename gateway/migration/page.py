"""``/_gateway/``: the migration page, outside every app's URL space.

For each route rule: its owner or owners, its traffic over the last minutes (a small bar
chart, inline SVG: no JavaScript), its fallback and canary shares, and its shadow
comparison's equality rate. It answers only the trusted proxies' addresses and loopback
(anyone else gets the gateway's 404), and nothing on it is cached.
"""

from __future__ import annotations

import logging
from collections import Counter
from html import escape
from typing import TYPE_CHECKING

from gateway.migration.rollout_page import section as rollouts_section
from gateway.migration.traffic import CANARY, FALLBACKS, MINUTES
from gateway.replies import Reply

if TYPE_CHECKING:  # the page reads the table it is given; rules.py never imports the page
    from gateway.migration.rules import RouteTable

logger = logging.getLogger("gateway")

PATHS = frozenset({"/_gateway", "/_gateway/"})


def bars(values: list[int], width: int = 120, height: int = 24) -> str:
    """A bar chart as inline SVG, one bar a value."""
    top = max(values) or 1
    step = width / len(values)
    rects = "".join(
        f'<rect x="{i * step:.1f}" y="{height - v / top * height:.1f}" width="{step - 1:.1f}" '
        f'height="{v / top * height:.1f}"><title>{v}</title></rect>' for i, v in enumerate(values))
    return (f'<svg role="img" aria-label="{sum(values)} requests" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">{rects}</svg>')


def share(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def render(routes: RouteTable | None, now: float | None = None) -> Reply:
    """The page, for ``routes`` (or none)."""
    rows = []
    totals: dict[tuple[int, str, str], int] = {}
    shared: dict[str, Counter[str]] = {}
    if routes:
        totals = routes.traffic.totals(now)
        if routes.board is not None:  # the other workers' counts
            theirs, shared = routes.board.others()
            for counted, n in theirs.items():
                totals[counted] = totals.get(counted, 0) + n
    for key, spec in (routes.specs.items() if routes else ()):
        assert routes is not None
        traffic = routes.traffic.series(key, now, totals=totals)
        total = sum(traffic)
        owners = " then ".join(escape(a) for a in spec.apps)
        # Shares of the same minutes' requests.
        canaried = sum(routes.traffic.series(key, now, CANARY, totals))
        fallbacks = sum(routes.traffic.series(key, now, FALLBACKS, totals))
        canary = (f"{escape(spec.canary)}: {routes.share(spec):g}% of clients, {share(canaried, total)} of "
                  "requests" if spec.canary else "-")
        fallback = f"{fallbacks} ({share(fallbacks, total)})" if len(spec.apps) > 1 else "-"
        shadow = "-"
        if spec.shadow:
            counts = routes.shadower.snapshot(key) + shared.get(key, Counter())
            compared = counts["compared"]
            rate = (counts["equal"] + counts["noise"]) / compared if compared else 0.0
            shadow = (f"{escape(spec.shadow)}: {share(counts['equal'] + counts['noise'], compared)} equal of "
                      f"{compared} compared ({counts['different']} different, {counts['dropped']} dropped"
                      + (f", {counts['error']} failed, {counts['timeout']} timed out" if counts["error"]
                         or counts["timeout"] else "") + ") "
                      f'<meter min="0" max="1" value="{rate:.3f}">{rate:.0%}</meter>')
        rows.append(f"<tr><td><code>{escape(spec.rule)}</code></td><td>{escape(','.join(spec.methods or ('any',)))}"
                    f"</td><td>{owners}</td><td>{bars(traffic)} {total}</td><td>{fallback}</td><td>{canary}</td>"
                    f"<td>{shadow}</td></tr>")
    table = ("<table><thead><tr><th>Rule</th><th>Methods</th><th>Owner</th>"
             f"<th>Requests, last {MINUTES} min</th><th>Fallbacks, last {MINUTES} min</th>"
             f"<th>Canary, last {MINUTES} min</th><th>Shadow, since start</th></tr></thead>"
             f"<tbody>{''.join(rows)}</tbody></table>") if rows else "<p>No route rules (see gateway.toml).</p>"
    body = ("<!doctype html><html lang=en><meta charset=utf-8><title>Migration - gateway</title>"
            "<style>body{font:14px system-ui,sans-serif;margin:2em}td,th{padding:.3em .6em;text-align:left;"
            "border-bottom:1px solid #ddd}svg rect{fill:#4a7}</style>"
            f"<h1>Migration</h1>{table}{rollouts_section(routes, now)}</html>").encode()
    return Reply(200, (("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store")), body)
