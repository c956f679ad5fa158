"""``/_gateway/`` rendered alone (gateway/migration/page.py): who sees it, its bar charts,
and each cell of a rule's row, from counts set by the test."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from gateway.migration import page
from gateway.migration.rules import RouteSpec, RouteTable
from gateway.migration.traffic import CANARY, FALLBACKS

NOW = 6000.0  # minute 100
TRUSTED = (ipaddress.ip_network("10.0.0.0/8"),)


@pytest.mark.parametrize(("client", "seen"), [
    ("127.0.0.1", True), ("::1", True), ("10.1.2.3", True), ("192.0.2.1", False), ("unknown", False),
    ("", False), (None, False)])
def test_only_loopback_and_the_trusted_proxies_see_it(client: str | None, seen: bool) -> None:
    from gateway.core.pipeline import is_trusted  # the one trusted-address check, for every operators' page

    assert is_trusted(client, TRUSTED, loopback=True) is seen
    assert is_trusted(client, TRUSTED) is (seen and client == "10.1.2.3")  # the proxies alone: no loopback


def test_bars_share_the_scale_they_are_given() -> None:
    assert page.bars([0, 5, 10], 10, 30, 20) == (
        '<svg role="img" aria-label="15 requests" width="30" height="20" viewBox="0 0 30 20">'
        '<rect x="0.0" y="20.0" width="9.0" height="0.0"><title>0</title></rect>'
        '<rect x="10.0" y="10.0" width="9.0" height="10.0"><title>5</title></rect>'
        '<rect x="20.0" y="0.0" width="9.0" height="20.0"><title>10</title></rect></svg>')
    assert page.bars([3], 6) == (  # half the height: another rule's chart reaches 6
        '<svg role="img" aria-label="3 requests" width="120" height="24" viewBox="0 0 120 24">'
        '<rect x="0.0" y="12.0" width="119.0" height="12.0"><title>3</title></rect></svg>')
    assert page.bars([0, 0], 0, 20, 10).count('height="0.0"') == 2  # nothing yet: no division by zero


def test_the_time_axis_names_its_first_and_last_minutes_in_utc() -> None:
    svg = page.axis(100, 10)  # minutes 100 to 109 since the epoch: 01:40 to 01:49 UTC
    assert svg.startswith('<svg class="axis" role="img" aria-label="from 01:40 to 01:49 UTC" width="120" height="24" ')
    assert svg.count("<line ") == 11  # the axis, and a tick under each of the 10 bars
    assert '<line x1="5.5" y1="0" x2="5.5" y2="4"/>' in svg and '<line x1="113.5" y1="0" x2="113.5" y2="4"/>' in svg
    assert svg.endswith('<text x="0" y="16">01:40</text><text x="120" y="16" text-anchor="end">01:49 UTC</text></svg>')


def test_share_of_nothing_is_a_dash() -> None:
    assert (page.share(1, 3), page.share(0, 0)) == ("33%", "-")


def rows(table: RouteTable) -> str:
    reply = page.render(table, NOW)
    assert reply.status == 200
    assert dict(reply.headers) == {"Content-Type": "text/html; charset=utf-8",
                                   "Content-Length": str(len(reply.body)), "Cache-Control": "no-store"}
    return reply.body.decode().split("<tbody>", 1)[1].split("</tbody>", 1)[0]


def test_a_rule_with_a_fallback_a_canary_and_a_shadow() -> None:
    table = RouteTable([RouteSpec("/x/<id>", ("new", "old"), methods=("GET", "POST"), canary="c", share=25,
                                  shadow="s")])
    (key,) = table.specs
    for _ in range(4):
        table.traffic.hit(key, NOW)
    table.traffic.hit(key, NOW - 120)
    table.traffic.hit(key, NOW - 60 * 10)  # older than the page's minutes
    table.traffic.hit(key, NOW, FALLBACKS)
    table.traffic.hit(key, NOW, CANARY)
    table.shadower.count(key, "compared", "equal")  # type: ignore[union-attr]
    table.shadower.count(key, "compared", "noise")  # type: ignore[union-attr]
    table.shadower.count(key, "compared", "different")  # type: ignore[union-attr]
    table.shadower.count(key, "dropped")  # type: ignore[union-attr]
    row = rows(table)
    assert row.startswith("<tr><td><code>/x/&lt;id&gt;</code></td><td>GET,POST</td><td>new then old</td>"
                          '<td class="chart"><svg role="img" aria-label="5 requests" ')
    assert '<rect x="84.0" y="18.0" width="11.0" height="6.0"><title>1</title></rect>' in row  # 1 of 4
    assert row.endswith(
        '</svg><span class="count">5</span></td><td>1 (20%)</td><td>c: 25% of clients, 20% of requests</td>'
        '<td>s: 67% equal of 3 compared (1 different, 1 dropped) <meter min="0" max="1" value="0.667">67%</meter>'
        "</td></tr>")


def test_a_plain_rule_has_dashes() -> None:
    table = RouteTable([RouteSpec("/y", ("new",)), RouteSpec("/z", ("a",), shadow="b")])
    row_y, row_z = rows(table).split("</tr>")[:2]
    assert row_y.startswith("<tr><td><code>/y</code></td><td>any</td><td>new</td>")
    assert row_y.endswith('<span class="count">0</span></td><td>-</td><td>-</td><td>-</td>')
    assert row_z.startswith("<tr><td><code>/z</code></td><td>any</td><td>a</td>")
    assert row_z.endswith('<td>b: - equal of 0 compared (0 different, 0 dropped) '
                          '<meter min="0" max="1" value="0.000">0%</meter></td>')


def test_no_rules() -> None:
    assert page.render(None).body == (
        b"<!doctype html><html lang=en><meta charset=utf-8><title>Migration - gateway</title>"
        b"<style>body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
        b"td,th{padding:.3em .6em;text-align:left;"
        b"border-bottom:1px solid #ddd}svg rect{fill:#4a7}svg line{stroke:#888}svg text{font-size:10px;"
        b"fill:#555}td.chart,tr.axis th{white-space:nowrap}.count{margin-left:.4em;vertical-align:top}"
        b"tr.axis th{font-weight:normal;color:#555;padding-top:0}pre{background:#f6f6f6;padding:.6em;"
        b"overflow-x:auto}</style><h1>Migration</h1>"
        b"<p>No route rules (see gateway.toml).</p></html>")
    header = page.render(RouteTable([RouteSpec("/y", ("new",))]), NOW).body.decode().split("<tbody>")[0]
    assert header.endswith("<h1>Migration</h1><table><thead><tr><th>Rule</th><th>Methods</th><th>Owner</th>"
                           "<th>Requests a minute, last 10 min</th><th>Fallbacks, last 10 min</th>"
                           "<th>Canary, last 10 min</th><th>Shadow, since start</th></tr>"
                           f'<tr class="axis"><th colspan="3"></th><th>{page.axis(91, 10)}'
                           '<span class="count">scale: 0 to 0 a minute</span></th><th colspan="3"></th></tr></thead>')


def test_counts_older_than_the_pages_minutes_are_left_out() -> None:
    from gateway.migration.traffic import MINUTES, REQUESTS, Traffic

    traffic = Traffic()
    traffic.hit("/r", NOW - 60 * MINUTES)  # minute 90: the page shows 91 to 100
    traffic.hit("/r", NOW - 60 * (MINUTES - 1))
    assert traffic.totals(NOW) == {(100 - MINUTES + 1, REQUESTS, "/r"): 1}


def test_a_forked_worker_writes_under_a_name_of_its_own(tmp_path: Path) -> None:
    from gateway.migration.traffic import Board, Traffic

    directory = tmp_path
    board = Board(directory, Traffic(), dict)
    board._forked()  # not started: nothing to start again
    assert board.thread is None
    board.start()
    first, name = board.thread, board.name
    board._forked()  # as os.register_at_fork calls it in the child
    try:
        assert board.thread is not first and board.thread is not None and board.thread.is_alive()
        assert board.name != name and board.name.endswith(".json")
    finally:
        board.close()
        first.join(5)  # type: ignore[union-attr]
    assert (directory / board.name).is_file()


def test_a_board_whose_directory_is_gone_says_so_at_debug(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from gateway.migration.traffic import Board, Traffic

    directory = tmp_path / "gone"
    directory.mkdir()
    board = Board(directory, Traffic(), dict)
    board.start()
    directory.rmdir()
    with caplog.at_level(logging.DEBUG, logger="gateway"):
        board.close()
    (record,) = [r for r in caplog.records if r.name == "gateway"]
    assert record.getMessage() == f"Could not write the migration page's counts to {directory}."
    assert record.exc_info and issubclass(record.exc_info[0], FileNotFoundError)  # type: ignore[index]
    assert record.levelno == logging.DEBUG


def test_the_other_workers_counts_are_summed(tmp_path: Path) -> None:
    import json
    from collections import Counter

    from gateway.migration.traffic import REQUESTS, Board, Traffic

    traffic = Traffic()
    traffic.hit("/r", NOW)
    board = Board(tmp_path, traffic, lambda: {"/r": {"compared": 5}})
    board.write(board.counts())  # this worker's own file: left out
    for worker, n in (("1-1", 2), ("2-2", 3), ("3-3", 4)):
        (tmp_path / f"{worker}.json").write_text(json.dumps(
            {"traffic": [[100, REQUESTS, "/r", n]], "shadow": {"/r": {"compared": n, "equal": 1}}}))
    (tmp_path / "4-4.json").write_text("{")  # never half-written: a worker's file is renamed over whole
    assert board.others() == ({(100, REQUESTS, "/r"): 9}, {"/r": Counter({"compared": 9, "equal": 3})})


def test_every_rules_chart_shares_one_scale() -> None:
    """A rule with 1 request a minute is drawn a quarter as tall as one with 4, not as tall."""
    table = RouteTable([RouteSpec("/busy", ("a",)), RouteSpec("/quiet", ("b",))])
    busy, quiet = table.specs
    for _ in range(4):
        table.traffic.hit(busy, NOW)
    table.traffic.hit(quiet, NOW)
    body = page.render(table, NOW).body.decode()
    row_busy, row_quiet = body.split("<tbody>", 1)[1].split("</tr>")[:2]
    assert '<rect x="108.0" y="0.0" width="11.0" height="24.0"><title>4</title></rect>' in row_busy
    assert '<rect x="108.0" y="18.0" width="11.0" height="6.0"><title>1</title></rect>' in row_quiet
    assert '<span class="count">scale: 0 to 4 a minute</span>' in body


def shadow_record(rule: str, path: str, diff: str) -> str:
    import json

    return json.dumps({"time": "2026-12-05T11:40:00Z", "rule": rule, "method": "GET", "path": path, "query": "",
                       "status": [200, 200], "differences": ["body: 1 token(s) differ"], "diff": diff}) + "\n"


def test_each_rules_differences_link_to_the_latest(tmp_path: Path) -> None:
    log = tmp_path / "shadow.jsonl"
    table = RouteTable([RouteSpec("/p/<int:id>", ("old",), shadow="new"), RouteSpec("/q", ("old",), shadow="new"),
                        RouteSpec("/r", ("old",))], shadow_log=log)
    p_key = next(iter(table.specs))
    log.write_text(shadow_record(p_key, "/p/1", "-old 1\n+new 1") + "not json\n"
                   + shadow_record(p_key, "/p/<script>", "-<b>old</b>\n+<b>new</b>") + '{"rule": 1}\n')
    body = page.render(table, NOW).body.decode()
    row_p, row_q, row_r = body.split("<tbody>", 1)[1].split("</tbody>", 1)[0].split("</tr>")[:3]
    assert row_p.endswith(' <a href="#diff-0">latest difference</a></td>')
    assert "latest difference" not in row_q + row_r  # nothing recorded for /q; /r is not shadowed
    latest = body.split("<h2>Latest differences</h2>", 1)[1]
    assert latest == (
        '<section id="diff-0"><h3><code>/p/&lt;int:id&gt;</code></h3><p>GET <code>/p/&lt;script&gt;</code> at '
        "2026-12-05T11:40:00Z: body: 1 token(s) differ</p><pre>-&lt;b&gt;old&lt;/b&gt;\n+&lt;b&gt;new&lt;/b&gt;</pre>"
        "</section></html>")
    assert "<script>" not in body


def test_only_the_logs_tail_is_read(tmp_path: Path) -> None:
    log = tmp_path / "shadow.jsonl"
    first, second = shadow_record("/a", "/a/1", "-1\n+2"), shadow_record("/b", "/b/1", "-x\n+y")
    log.write_text(first + second)
    assert set(page.latest_differences(log)) == {"/a", "/b"}
    assert set(page.latest_differences(log, tail=len(second) + 5)) == {"/b"}  # the cut line of /a is left out
    assert page.latest_differences(tmp_path / "missing.jsonl") == page.latest_differences(None) == {}


def test_a_long_diff_is_cut_and_says_where_the_rest_is() -> None:
    diff = "\n".join(f"+line {i}" for i in range(50))
    section = page.difference("diff-3", "/x", {"diff": diff, "differences": []}, lines=40)
    assert "+line 39\n... 10 more line(s): gateway diff</pre>" in section and "+line 40" not in section
