"""bench/instructions.py keeps working: every scenario serves its requests between its two
marks, and the table is made from callgrind's dumps. It asserts no speed: the counts come
from valgrind, run by hand (bench/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import instructions


def test_the_scenarios_and_what_each_is_compared_with() -> None:
    assert instructions.SCENARIOS == (
        "flask", "wsgi-flask", "wsgi-flask-log", "bridge-flask", "asgi-flask", "asgi-flask-log",
        "django", "wsgi-django", "wsgi-django-log", "bridge-django", "asgi-django", "asgi-django-log",
        "wsgi-flask-chain", "asgi-flask-chain")
    assert [instructions.parse(n) for n in ("asgi-flask-log", "django", "bridge-flask")] == [
        ("asgi", "flask", True), ("bare", "django", False), ("bridge", "flask", False)]
    assert [instructions.baseline_of(n) for n in ("wsgi-flask-log", "asgi-django", "flask", "bridge-flask")] == [
        "flask", "bridge-django", None, None]


def test_the_table_from_callgrinds_dumps(tmp_path: Path) -> None:
    dump = tmp_path / "cg.out.2"
    dump.write_text("# callgrind format\nversion: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 1050000\n")
    assert instructions.total(dump) == 1050000
    (tmp_path / "empty").write_text("events: Ir\n")
    with pytest.raises(SystemExit, match="no summary line"):
        instructions.total(tmp_path / "empty")
    assert instructions.table({"flask": 1000.0, "wsgi-flask": 1020.0, "bridge-flask": 2000.0}) == (
        "| scenario | instructions per request | against | ratio |\n"
        "|---|---:|---|---:|\n"
        "| `flask` | 1,000 | | |\n"
        "| `wsgi-flask` | 1,020 | `flask` | 1.020x |\n"
        "| `bridge-flask` | 2,000 | | |")
