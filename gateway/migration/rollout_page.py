"""The rollouts' section of the migration page (``/_gateway/``): for each rule with a
rollout, its steps on a time axis, each arm's numbers on the current step (latency
distribution, 5xx rate, the shadow's equality), and the audit trail with the judge's
verdicts. Plain HTML and inline SVG: no JavaScript. It reads the site's database, in the
thread that renders the page (never on the event loop)."""

from __future__ import annotations

import time
from html import escape
from typing import TYPE_CHECKING, Any

from gateway.migration.judge import Arm
from gateway.migration.rollout_store import BASELINE, CANARY, Audit, Store

if TYPE_CHECKING:  # the page reads the table it is given; rules.py never imports the page
    from gateway.migration.rules import RouteTable

WIDTH, HEIGHT = 480, 90
#: Colours by action on the time axis: a rollback stands out.
_COLOURS = {"rollback": "#c33", "done": "#27a", "hold": "#c90"}


def section(routes: RouteTable | None, now: float | None = None) -> str:
    """The section's HTML, or "" when no rule has a rollout."""
    rollouts = routes.rollouts if routes else None
    if rollouts is None or not rollouts.specs:
        return ""
    now = time.time() if now is None else now
    parts = ["<h2>Rollouts</h2>"]
    try:
        with Store(rollouts.url) as store:
            states = store.states(tuple(rollouts.specs))
            for key, spec in rollouts.specs.items():
                state = states.get(key)
                if state is None:
                    parts.append(f"<h3><code>{escape(spec.rule)}</code></h3><p>Not started yet.</p>")
                    continue
                arms, (equal, compared) = store.tallies(key, state.epoch)
                trail = store.audit(key, last=50)
                parts.append(
                    f"<h3><code>{escape(spec.rule)}</code>: {escape(state.status)}, canary "
                    f"{escape(spec.canary or '')} at {state.share:g}%"
                    + (f", handed over to {escape(state.owner)}" if state.owner else "") + "</h3>"
                    + timeline(trail, now) + arm_table(arms, (equal, compared) if spec.shadow else None)
                    + audit_table(trail))
    except Exception as exc:  # any driver's error: the page still renders, and says so
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        parts.append(f"<p>The rollouts' database cannot be reached ({escape(first)}): every rollout is frozen "
                     "where it is.</p>")
    return "".join(parts)


def timeline(trail: list[Audit], now: float) -> str:
    """The share over time, as a step line from the first line of the trail to now."""
    moves = [line for line in trail if line.to_share is not None]
    if not moves:
        return ""
    start = moves[0].at
    span = max(now - start, 1.0)

    def x(at: float) -> float:
        return 30 + (at - start) / span * (WIDTH - 40)

    def y(share: float) -> float:
        return 10 + (100 - share) / 100 * (HEIGHT - 30)

    points = []
    share = 0.0
    for line in moves:
        points += [f"{x(line.at):.1f},{y(share):.1f}", f"{x(line.at):.1f},{y(line.to_share or 0):.1f}"]
        share = line.to_share or 0.0
    points.append(f"{x(now):.1f},{y(share):.1f}")
    marks = "".join(
        f'<circle cx="{x(line.at):.1f}" cy="{y(line.to_share or 0):.1f}" r="3" '
        f'fill="{_COLOURS.get(line.action, "#4a7")}"><title>{escape(_when(line.at))} {escape(line.actor)} '
        f"{escape(line.action)} {line.to_share:g}%</title></circle>" for line in moves)
    axis = (f'<text x="0" y="{y(100) + 4:.0f}" font-size="10">100%</text>'
            f'<text x="8" y="{y(0) + 4:.0f}" font-size="10">0%</text>'
            f'<text x="30" y="{HEIGHT - 2}" font-size="10">{escape(_when(start))}</text>'
            f'<text x="{WIDTH - 10}" y="{HEIGHT - 2}" font-size="10" text-anchor="end">now</text>')
    return (f'<svg role="img" aria-label="canary share over time" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}"><polyline fill="none" stroke="#4a7" stroke-width="2" '
            f'points="{" ".join(points)}"/>{marks}{axis}</svg>')


def histogram(arm: Arm, width: int = 160, height: int = 24) -> str:
    """An arm's latency distribution on the current step, as inline SVG bars by bucket."""
    if not arm.latency:
        return ""
    low, high = min(arm.latency), max(arm.latency)
    top = max(arm.latency.values())
    step = width / (high - low + 1)
    rects = "".join(f'<rect x="{(i - low) * step:.1f}" y="{height - n / top * height:.1f}" '
                    f'width="{max(step - 0.5, 0.5):.1f}" height="{n / top * height:.1f}"/>'
                    for i, n in sorted(arm.latency.items()))
    return (f'<svg role="img" aria-label="latency distribution" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">{rects}</svg>')


def arm_table(arms: dict[str, Arm], shadow: tuple[int, int] | None) -> str:
    rows = []
    for name in (BASELINE, CANARY):
        arm = arms.get(name, Arm())
        if not arm.requests:
            rows.append(f"<tr><td>{name}</td><td>0</td><td>-</td><td>-</td><td></td></tr>")
            continue
        rows.append(f"<tr><td>{name}</td><td>{arm.requests}</td><td>{100 * arm.error_rate:.2f}%</td>"
                    f"<td>{1000 * arm.quantile(0.5):.1f} / {1000 * arm.quantile(0.99):.1f} ms</td>"
                    f"<td>{histogram(arm)}</td></tr>")
    equality = ""
    if shadow is not None:
        equal, compared = shadow
        equality = (f"<p>Shadow: {equal} of {compared} comparisons equal on this step"
                    + (f" ({100 * equal / compared:.1f}%)" if compared else "") + ".</p>")
    return ("<table><thead><tr><th>Arm, this step</th><th>Requests</th><th>5xx</th><th>Median / p99</th>"
            f"<th>Latency</th></tr></thead><tbody>{''.join(rows)}</tbody></table>{equality}")


def audit_table(trail: list[Audit]) -> str:
    rows = "".join(
        f"<tr><td>{escape(_when(line.at))}</td><td>{escape(line.actor)}</td><td>{escape(line.action)}</td>"
        f"<td>{_shares(line)}</td><td>{escape(line.reason)}{_score(line.figures)}</td></tr>"
        for line in reversed(trail))
    return ("<table><thead><tr><th>When</th><th>Who</th><th>What</th><th>Share</th><th>Why</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _shares(line: Audit) -> str:
    before = "" if line.from_share is None else f"{line.from_share:g}% &rarr; "
    return f"{before}{line.to_share:g}%" if line.to_share is not None else ""


def _score(figures: Any) -> str:
    if not isinstance(figures, dict) or "outcome" not in figures:
        return ""
    return f" <strong>{escape(str(figures['outcome']))}</strong>, score {escape(str(figures['score']))}"


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))
