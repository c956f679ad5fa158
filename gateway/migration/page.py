"""``/_gateway/``: the migration page, outside every app's URL space.

For each route rule: its owner or owners, its requests a minute over the last minutes (a
small bar chart, inline SVG: no JavaScript), its fallback and canary shares, and its shadow
comparison's equality rate, linked to its latest difference. Every chart shares one time
axis and one scale, drawn once in the table's head, so that equal bars are equal counts. It
answers only the trusted proxies' addresses and loopback (anyone else gets the gateway's
404), and nothing on it is cached.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.migration.rollout_page import section as rollouts_section
from gateway.migration.traffic import CANARY, FALLBACKS, MINUTES
from gateway.replies import Reply

if TYPE_CHECKING:  # the page reads the table it is given; rules.py never imports the page
    from gateway.migration.rules import RouteTable

logger = logging.getLogger("gateway")

PATHS = frozenset({"/_gateway", "/_gateway/"})


def bars(values: list[int], top: int, width: int = 120, height: int = 24) -> str:
    """A bar chart as inline SVG, one bar a value, on a scale where ``top`` fills the height."""
    top = max(top, 1)
    step = width / len(values)
    rects = "".join(
        f'<rect x="{i * step:.1f}" y="{height - v / top * height:.1f}" width="{step - 1:.1f}" '
        f'height="{v / top * height:.1f}"><title>{v}</title></rect>' for i, v in enumerate(values))
    return (f'<svg role="img" aria-label="{sum(values)} requests" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">{rects}</svg>')


def axis(first_minute: int, minutes: int, width: int = 120, height: int = 24) -> str:
    """The charts' time axis as inline SVG: a tick under each bar, and the first and last
    minutes' times (UTC) at its ends."""
    step = width / minutes
    ticks = "".join(f'<line x1="{(i + .5) * step - .5:.1f}" y1="0" x2="{(i + .5) * step - .5:.1f}" y2="4"/>'
                    for i in range(minutes))
    first, last = (time.strftime("%H:%M", time.gmtime(m * 60)) for m in (first_minute, first_minute + minutes - 1))
    return (f'<svg class="axis" role="img" aria-label="from {first} to {last} UTC" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}"><line x1="0" y1="0" x2="{width}" y2="0"/>{ticks}'
            f'<text x="0" y="16">{first}</text><text x="{width}" y="16" text-anchor="end">{last} UTC</text></svg>')


def latest_differences(path: Path | None, tail: int = 1 << 20) -> dict[str, dict[str, Any]]:
    """Each rule's latest difference in the shadow log, read from its last ``tail`` bytes
    (the page is rendered off the event loop; the tail bounds what one rendering reads)."""
    if path is None:
        return {}
    try:
        with open(path, "rb") as log:
            size = log.seek(0, 2)
            log.seek(max(0, size - tail))
            lines = log.read().split(b"\n")
    except OSError:
        return {}
    latest = {}
    for line in lines[1:] if size > tail else lines:  # the first line of a tail may be cut
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("rule"), str) and isinstance(record.get("diff"), str):
            latest[record["rule"]] = record
    return latest


def difference(anchor: str, rule: str, record: dict[str, Any], lines: int = 40) -> str:
    """One rule's latest difference: where and when, what differs, and its diff."""
    diff = record["diff"].splitlines()
    shown = "\n".join(diff[:lines]) + (f"\n... {len(diff) - lines} more line(s): gateway diff" if len(diff) > lines
                                      else "")
    what = "; ".join(str(d) for d in record.get("differences", ()) if isinstance(d, str))
    return (f'<section id="{anchor}"><h3><code>{escape(rule)}</code></h3>'
            f"<p>{escape(str(record.get('method', '')))} <code>{escape(str(record.get('path', '')))}</code> at "
            f"{escape(str(record.get('time', '')))}: {escape(what)}</p><pre>{escape(shown)}</pre></section>")


def share(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def render(routes: RouteTable | None, now: float | None = None) -> Reply:
    """The page, for ``routes`` (or none)."""
    now = time.time() if now is None else now
    rows = []
    totals: dict[tuple[int, str, str], int] = {}
    shared: dict[str, Counter[str]] = {}
    if routes:
        totals = routes.traffic.totals(now)
        if routes.board is not None:  # the other workers' counts
            theirs, shared = routes.board.others()
            for counted, n in theirs.items():
                totals[counted] = totals.get(counted, 0) + n
    series = {key: routes.traffic.series(key, now, totals=totals) for key in routes.specs} if routes else {}
    top = max((n for values in series.values() for n in values), default=0)  # one scale for every chart
    latest = latest_differences(routes.shadower.log_path) if routes else {}
    differences = []
    for number, (key, spec) in enumerate(routes.specs.items() if routes else ()):
        assert routes is not None
        traffic = series[key]
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
            if key in latest:
                shadow += f' <a href="#diff-{number}">latest difference</a>'
                differences.append(difference(f"diff-{number}", spec.rule, latest[key]))
        rows.append(f"<tr><td><code>{escape(spec.rule)}</code></td><td>{escape(','.join(spec.methods or ('any',)))}"
                    f'</td><td>{owners}</td><td class="chart">{bars(traffic, top)}<span class="count">{total}</span>'
                    f"</td><td>{fallback}</td><td>{canary}</td><td>{shadow}</td></tr>")
    minute = int(now // 60)
    table = ("<table><thead><tr><th>Rule</th><th>Methods</th><th>Owner</th>"
             f"<th>Requests a minute, last {MINUTES} min</th><th>Fallbacks, last {MINUTES} min</th>"
             f"<th>Canary, last {MINUTES} min</th><th>Shadow, since start</th></tr>"
             f'<tr class="axis"><th colspan="3"></th><th>{axis(minute - MINUTES + 1, MINUTES)}'
             f'<span class="count">scale: 0 to {top} a minute</span></th><th colspan="3"></th></tr></thead>'
             f"<tbody>{''.join(rows)}</tbody></table>") if rows else "<p>No route rules (see gateway.toml).</p>"
    if differences:
        table += f"<h2>Latest differences</h2>{''.join(differences)}"
    body = ("<!doctype html><html lang=en><meta charset=utf-8><title>Migration - gateway</title>"
            "<style>body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{padding:.3em .6em;text-align:left;"
            "border-bottom:1px solid #ddd}svg rect{fill:#4a7}svg line{stroke:#888}svg text{font-size:10px;"
            "fill:#555}td.chart,tr.axis th{white-space:nowrap}.count{margin-left:.4em;vertical-align:top}"
            "tr.axis th{font-weight:normal;color:#555;padding-top:0}pre{background:#f6f6f6;padding:.6em;"
            "overflow-x:auto}</style>"
            f"<h1>Migration</h1>{table}{rollouts_section(routes, now)}</html>").encode()
    return Reply(200, (("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store")), body)
