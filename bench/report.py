"""Turn the raw records of ``bench/run.py`` into medians, ratios, a Markdown report and
a chart (``results.md`` and ``chart.png`` in the results directory)."""

from __future__ import annotations

import statistics
import subprocess
from collections import defaultdict
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.configs import CEILINGS, SLOW_IDEAL_RPS, WORKLOADS, Setup

PACKAGES = ("flask", "werkzeug", "django", "uvicorn", "uvloop", "httptools", "granian", "gunicorn",
            "a2wsgi", "asgiref", "starlette", "hypercorn")  # fmt: skip
SERVERS = ("uvicorn", "granian", "gunicorn-gthread", "gunicorn-sync")


def versions() -> dict[str, str]:
    """Return the versions of the packages and of wrk the figures depend on."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "-"
    try:
        wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
        found["wrk"] = (wrk.stdout or wrk.stderr).split()[1]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        found["wrk"] = "-"
    return found


def median(values: Iterable[float]) -> float | None:
    """Median of the values, None when there are none."""
    values = list(values)
    return statistics.median(values) if values else None


class Summary:
    """Medians over rounds of every (configuration, workload) measured."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.cells: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        self.footprint = [r for r in records if r["kind"] == "footprint"]
        for record in records:
            if record["kind"] in {"load", "ceiling"}:
                self.cells[(record["setup"], record["workload"])].append(record)

    def ok(self, setup: str, workload: str) -> list[dict[str, Any]]:
        return [r for r in self.cells.get((setup, workload), []) if "error" not in r]

    def value(self, setup: str, workload: str, field: str = "rps_ok") -> float | None:
        """Median of ``field`` over the rounds that succeeded."""
        return median(r[field] for r in self.ok(setup, workload) if field in r)

    def total(self, setup: str, field: str) -> int:
        """Sum of ``field`` over every workload and round of ``setup``."""
        return sum(int(r.get(field, 0)) for (key, _), rs in self.cells.items() if key == setup for r in rs)

    def runs(self, setup: str) -> dict[tuple[int, int], dict[str, Any]]:
        """One record per server run (round, launch) of ``setup``, for per-server figures."""
        return {(r["round"], r.get("launch", 0)): r for (key, _), rs in self.cells.items() if key == setup for r in rs}

    def logged(self, setup: str) -> tuple[int, list[str], bool]:
        """Errors the servers of ``setup`` logged, their commonest kinds, any forced kill."""
        runs = self.runs(setup).values()
        kinds = sorted({k for r in runs for k in r.get("log_kinds", [])}, key=lambda k: -int(k.split(" x ")[0]))
        return sum(r.get("log_errors", 0) for r in runs), kinds, any(r.get("killed") for r in runs)

    def silent(self, setup: str) -> list[str]:
        """Workloads of ``setup`` with a run where wrk got no answer at all (it counts no timeout)."""
        return sorted({w for (key, w), rs in self.cells.items() if key == setup for r in rs if r.get("no_response")})

    def failures(self, setup: str) -> list[str]:
        return [r["error"] for (key, _), rs in self.cells.items() if key == setup for r in rs if "error" in r]

    def memory(self, setup: Setup, field: str = "rss_mb") -> str:
        """Median peak memory (MiB) of each server of ``setup``, e.g. ``71`` or ``45 / 60 / 31``."""
        parts = []
        for index, launch in enumerate(setup.launches):
            # One peak per round and server (its workloads all carry the same value).
            by_round = {
                r["round"]: r[field]
                for name in launch.paths
                for r in self.cells.get((setup.key, name), [])
                if r.get("launch") == index and r.get(field)
            }
            parts.append(_num(median(by_round.values())))
        return " / ".join(parts)


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def tables(s: Summary, setups: list[Setup]) -> list[str]:
    """Throughput, latency and error tables in Markdown."""
    names = [w.name for w in WORKLOADS]
    heads = [f"{w.title} ({w.connections} conn.)" for w in WORKLOADS]
    lines = ["## Throughput: successful (2xx; for the admin writes, 302) requests per second, median over rounds",
             ""]
    lines += ["| Configuration | Key | " + " | ".join(heads) + " | Peak RSS MiB | Peak PSS MiB |"]
    lines += ["|---|---|" + "---:|" * (len(heads) + 2)]
    for setup in setups:
        cells = [_num(s.value(setup.key, n)) if n in setup.workloads() else "n/a" for n in names]
        lines.append(
            f"| {setup.label} | `{setup.key}` | "
            + " | ".join(cells)
            + f" | {s.memory(setup)} | {s.memory(setup, 'pss_mb')} |"
        )
    for ceiling in (c for c in CEILINGS if any((c.key, n) in s.cells for n in names)):
        cells = [_num(s.value(ceiling.key, n)) if n in ceiling.targets else "n/a" for n in names]
        lines.append(f"| {ceiling.label} | `{ceiling.key}` | " + " | ".join(cells) + " | - | - |")
    ideal = [f"{SLOW_IDEAL_RPS:,.0f}" if n == "slow" else "" for n in names]
    lines.append("| ideal for the slow view (64 conn. / 50 ms) | | " + " | ".join(ideal) + " | | |")

    lines += ["", "## Latency: p50 / p99 in ms, median over rounds", ""]
    lines += ["| Key | " + " | ".join(w.title for w in WORKLOADS) + " |", "|---|" + "---:|" * len(WORKLOADS)]
    for setup in setups:
        cells = []
        for n in names:
            p50, p99 = s.value(setup.key, n, "p50_us"), s.value(setup.key, n, "p99_us")
            if n not in setup.workloads():
                cells.append("n/a")
            elif p50 is None or p99 is None:
                cells.append("-")
            else:
                cells.append(f"{p50 / 1000:.2f} / {p99 / 1000:.1f}")
        lines.append(f"| `{setup.key}` | " + " | ".join(cells) + " |")

    lines += ["", "## Errors, summed over workloads and rounds", ""]
    lines += ["| Key | failed answers (non-2xx; writes: non-302) | socket errors | runs with no answer "
              "| errors in server log | commonest logged exception | needed SIGKILL | failed runs |",
              "|---|---:|---:|---|---:|---|---|---|"]  # fmt: skip
    for setup in setups:
        logged, kinds, killed = s.logged(setup.key)
        failed = s.failures(setup.key)
        cells = [
            f"`{setup.key}`",
            str(s.total(setup.key, "non2xx")),
            str(s.total(setup.key, "socket_errors")),
            ", ".join(s.silent(setup.key)),
            str(logged),
            kinds[0].replace("|", "/") if kinds else "",
            "yes" if killed else "no",
            f"{len(failed)}: {failed[0]}" if failed else "0",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def ratios(s: Summary, setups: list[Setup]) -> list[str]:
    """Each figure against its baseline, as Markdown sections (empty ones left out)."""
    sections = [
        ("Gateway vs the app alone on the same server (1.00x = no overhead):", _vs_alone(s, setups)),
        ("Default gateway (`gateway-uvicorn`) vs the best peer composition:", _vs_peers(s, setups)),
        ("Cost of the access log (`gateway-accesslog` vs `gateway-uvicorn`; 1.00x = free):", [
            f"- {w.name} {_ratio(s.value('gateway-accesslog', w.name), s.value('gateway-uvicorn', w.name))}"
            for w in WORKLOADS if s.value("gateway-accesslog", w.name) and s.value("gateway-uvicorn", w.name)
        ]),
        ("Fastest served path vs the ceiling (bare app called in-process):", _vs_ceiling(s, setups)),
        (f"Slow view vs the ideal {SLOW_IDEAL_RPS:,.0f} req/s:", [
            f"- `{x.key}` {_ratio(s.value(x.key, 'slow'), SLOW_IDEAL_RPS)}"
            for x in setups if s.value(x.key, "slow")
        ]),
        ("Memory and start-up (uvicorn, after load on both pages), median over rounds:", _footprint(s)),
    ]  # fmt: skip
    out = ["## Ratios"]
    for title, body in sections:
        if body:
            out += ["", title, "", *body]
    return out


def _vs_alone(s: Summary, setups: list[Setup]) -> list[str]:
    lines = []
    for server in SERVERS:
        gateway = next((x for x in setups if x.group == "gateway" and x.server == server), None)
        alone = next((x for x in setups if x.group == "alone" and x.server == server), None)
        if gateway is not None and alone is not None:
            parts = [f"{w.name} {_ratio(s.value(gateway.key, w.name), s.value(alone.key, w.name))}"
                     for w in WORKLOADS if w.name in alone.workloads()]
            lines.append(f"- {server}: " + ", ".join(parts))
    return lines


def _vs_peers(s: Summary, setups: list[Setup]) -> list[str]:
    if not any(x.key == "gateway-uvicorn" for x in setups):
        return []
    lines = []
    for w in WORKLOADS:
        ranked = sorted((s.value(x.key, w.name) or 0, x.key) for x in setups if x.group == "peer")
        if ranked and ranked[-1][0]:
            best, key = ranked[-1]
            ratio = _ratio(s.value("gateway-uvicorn", w.name), best)
            lines.append(f"- {w.name}: {ratio} (best peer `{key}`, {best:,.0f} req/s)")
    return lines


def _vs_ceiling(s: Summary, setups: list[Setup]) -> list[str]:
    lines = []
    for name in ("flask", "django"):
        ceiling = s.value("ceiling", name)
        ranked = sorted((s.value(x.key, name) or 0, x.key) for x in setups)
        if ceiling and ranked and ranked[-1][0]:
            best, key = ranked[-1]
            lines.append(f"- {name}: `{key}` {best:,.0f} req/s = {_ratio(best, ceiling)} of {ceiling:,.0f} calls/s")
        in_process = s.value("gateway-inprocess", name)
        if ceiling and in_process:
            lines.append(f"- {name}: gateway.wsgi in-process vs the bare app in-process: {_ratio(in_process, ceiling)}")
    return lines


def _footprint(s: Summary) -> list[str]:
    if not s.footprint:
        return []
    keys = ("gateway_rss_mb", "flask_rss_mb", "django_rss_mb", "gateway_startup_s", "flask_startup_s",
            "django_startup_s")  # fmt: skip
    f = {k: median(r[k] for r in s.footprint if k in r) for k in keys}
    two = (f["flask_rss_mb"] or 0) + (f["django_rss_mb"] or 0)
    return [
        f"- peak RSS: gateway, one process {_num(f['gateway_rss_mb'], 1)} MiB vs the two apps in two "
        f"processes {_num(two, 1)} MiB ({_num(f['flask_rss_mb'], 1)} + {_num(f['django_rss_mb'], 1)}) "
        f"= {_ratio(f['gateway_rss_mb'], two)}",
        f"- start-up, launch to first 200 on /flask/ and /django/: gateway serve "
        f"{_num(f['gateway_startup_s'], 2)} s (Flask alone {_num(f['flask_startup_s'], 2)} s, "
        f"Django alone {_num(f['django_startup_s'], 2)} s)",
    ]


def chart(s: Summary, setups: list[Setup], path: Path, title: str) -> None:
    """Draw requests per second per configuration, one panel per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colors = {"gateway": "#1f77b4", "alone": "#7f7f7f", "peer": "#ff7f0e"}
    fig, axes = plt.subplots(1, len(WORKLOADS), figsize=(16, 0.45 * len(setups) + 2), sharey=True)
    keys = [x.key for x in setups]
    for ax, workload in zip(axes, WORKLOADS, strict=True):
        values = [s.value(x.key, workload.name) or 0 for x in setups]
        ax.barh(keys, values, color=[colors[x.group] for x in setups])
        for y, value in enumerate(values):
            if value:
                ax.text(value, y, f" {value:,.0f}", va="center", fontsize=8)
        limit = SLOW_IDEAL_RPS if workload.name == "slow" else s.value("ceiling", workload.name)
        if limit:
            what = "ideal" if workload.name == "slow" else "in-process ceiling"
            ax.axvline(limit, color="black", linestyle="--", linewidth=1)
            ax.text(
                limit,
                0.01,
                f"{what} {limit:,.0f} ",
                fontsize=8,
                ha="right",
                va="bottom",
                transform=ax.get_xaxis_transform(),
            )
        ax.set_title(f"{workload.title}, {workload.connections} connections")
        ax.set_xlabel("2xx requests/s (median)")
        ax.margins(x=0.2)
    axes[0].invert_yaxis()
    fig.suptitle(title, fontsize=10)
    names = {"gateway": "gateway", "alone": "app alone (baseline)", "peer": "peer composition"}
    fig.legend(handles=[Patch(color=c, label=names[g]) for g, c in colors.items()], loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(records: list[dict[str, Any]], meta: dict[str, Any], setups: list[Setup], out: Path) -> str:
    """Write ``results.md`` and ``chart.png`` into ``out``; return the Markdown text."""
    s = Summary(records)
    measured = {key for key, _ in s.cells}
    shown = [x for x in setups if x.key in measured]
    header = [
        "# Gateway benchmark" + (" (QUICK RUN: a smoke test, not a result)" if meta.get("quick") else ""),
        "",
        f"{meta['started']}; {meta['rounds']} round(s) x {meta['duration_s']:g} s "
        f"(+{meta['warmup_s']:g} s warm-up); server on CPU {meta['server_cpu']}, wrk on CPU "
        f"{meta['client_cpu']} of {meta['cpus']}; {meta['threads']} WSGI threads; one worker; Python {meta['python']}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "",
    ]
    text = "\n".join([*header, *tables(s, shown), "", *ratios(s, shown), ""])
    (out / "results.md").write_text(text)
    try:
        title = f"{meta['rounds']} round(s) x {meta['duration_s']:g} s, {meta['started']}"
        chart(s, shown, out / "chart.png", ("QUICK RUN, not a result: " if meta.get("quick") else "") + title)
        text += f"\nChart: {out / 'chart.png'}\n"
    except Exception as exc:  # the table matters more than the picture
        text += f"\nChart not drawn: {exc!r}\n"
    return text
