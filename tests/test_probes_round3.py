"""Probes of issue 21's third round: new cases of each class the outside testers found
(docs/hardening.md, "Third round"). Where a row's test sits better beside its module's
tests (tests/test_mount_match.py), it is there."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from types import FrameType, ModuleType
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.core.config import Config
from gateway.serve import frameworks


def stdlib_cookies() -> ModuleType:
    """A fresh copy of :mod:`http.cookies`, as this Python ships it (the gateway may have
    replaced its ``_unquote`` in this process)."""
    spec = importlib.util.find_spec("http.cookies")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def c_calls(work: Any) -> Counter[str]:
    """The calls of C functions ``work()`` makes, by name: a count of steps, not a time."""
    calls: Counter[str] = Counter()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call":
            calls[getattr(arg, "__name__", "?")] += 1

    sys.setprofile(profile)
    try:
        work()
    finally:
        sys.setprofile(None)
    return calls


def test_django_reads_a_cookie_of_thousands_of_backslashes_in_one_pass() -> None:
    """T2: ``Cookie: x="\\\\\\\\..."`` (7,000 escaped backslashes, 14 KB). Django reads it with
    ``http.cookies._unquote``, two regular-expression searches from each escape to the end
    before CPython 3.11.10 (python/cpython#123067): 2.1 s a request, and 100 of them held
    uvicorn's /healthz 74 s (the GIL). Once the gateway has set the frameworks up, the value
    is read in a few steps, whatever the Python."""
    from django.http import parse_cookie

    frameworks.set_up(Config())
    header = 'x="' + "\\\\" * 7000 + '"; y=1'
    parsed: dict[str, str] = {}
    calls = c_calls(lambda: parsed.update(parse_cookie(header)))
    assert parsed == {"x": "\\" * 7000, "y": "1"}
    assert calls["search"] < 100, calls.most_common(3)


escapes = st.lists(st.sampled_from(["\\", '"', "0", "3", "7", "8", "a", " ", "\\0", "\\37", "\\377", "\\400", "é"]),
                   max_size=12).map("".join)


@given(escapes)
def test_the_one_pass_reading_is_the_stdlibs(value: str) -> None:
    """T2: :func:`frameworks.unquote_cookie` reads every value as the stdlib's ``_unquote`` does."""
    reference = stdlib_cookies()._unquote
    for text in (value, f'"{value}"'):
        assert frameworks.unquote_cookie(text) == reference(text)
