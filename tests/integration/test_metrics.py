"""``/metrics``: off by default, for loopback and trusted proxies only, and counts that
add up, in process through both entry points (tests/system/test_metrics_servers.py: over real
servers with several workers)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.adapters.asgi import create_asgi_app
from gateway.core.config import Config
from gateway.core.mounts import Mount, MountTable
from gateway.observe.metrics import MULTIPROC_ENV, WorkerFiles, forget_dead_workers, prepare_directory
from tests.entries import BASE, ENTRIES, TRUSTED, Answer, Send, builder, config_with
from tests.support import Samples, samples, value


@pytest.fixture(autouse=True)
def multiproc_variable_put_back() -> Iterator[None]:
    """``prepare_directory()`` sets ``PROMETHEUS_MULTIPROC_DIR`` itself, outside monkeypatch:
    each test here leaves it as it found it (a directory made and removed by one test was
    handed to a server that a later test of the same process started: it refused to start)."""
    before = os.environ.get(MULTIPROC_ENV)
    yield
    if before is None:
        os.environ.pop(MULTIPROC_ENV, None)
    else:
        os.environ[MULTIPROC_ENV] = before


def scrape(entry: Send, **headers: str) -> Samples:
    answer = entry("GET", "/metrics", headers)
    assert answer.status == 200, answer.body
    assert (answer.get("Content-Type") or "").startswith("text/plain; version=")
    assert answer.get("Cache-Control") == "no-store"
    return samples(answer.body.decode())


HELD = threading.Event()
ENTERED = threading.Event()


def held_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Answers once the test lets it go (a request to count as in flight)."""
    ENTERED.set()
    HELD.wait(10)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"let go"]


def raising_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    raise RuntimeError("a bug in a view")


@pytest.fixture(scope="module")
def metrics_table(table: MountTable) -> MountTable:  # type: ignore[no-untyped-def]
    return MountTable([*table, *MountTable.from_specs(["/echo=tests.thirdapp:echo_app"], defaults=False),
                       Mount("/held", "tests.integration.test_metrics:held_app", "wsgi", held_app),
                       Mount("/raise", "tests.integration.test_metrics:raising_app", "wsgi", raising_app)])


@pytest.fixture(params=sorted(ENTRIES))
def make(request: pytest.FixtureRequest, metrics_table: MountTable) -> Iterator[Callable[..., Send]]:
    yield from builder(request.param, metrics_table)


def test_off_unless_asked_for(make: Callable[..., Send]) -> None:
    answer = make()("GET", "/metrics")
    assert answer.status == 404
    assert b"gateway_requests_total" not in answer.body


def test_requests_by_mount_and_status_class_and_refusals_by_reason(make: Callable[..., Send]) -> None:
    entry = make(metrics=True, max_body_size=100)
    for _ in range(3):
        assert entry("GET", "/echo/x").status == 200
    assert entry("GET", "/nowhere").status == 404
    assert entry("GET", "/echo/x", {"Host": "evil.example"}).status == 400
    assert entry("TRACE", "/echo/x").status == 405
    assert entry("POST", "/echo/x", body=b"x" * 101).status == 413
    assert entry("GET", "/echo").status == 308
    got = scrape(entry)
    assert value(got, "gateway_requests_total", mount="/echo", status="2xx") == 3
    # The 413 is decided on its Content-Length, for the mount: it counts as the mount's.
    assert value(got, "gateway_requests_total", mount="/echo", status="4xx") == 1
    assert value(got, "gateway_requests_total", mount="/echo", status="3xx") == 1
    assert value(got, "gateway_requests_total", mount="-", status="4xx") == 3
    assert value(got, "gateway_requests_total", mount="-", status="2xx") == 0  # the scrape counts once answered
    for reason in ("no_mount", "bad_host", "method_refused", "body_too_large"):
        assert value(got, "gateway_refusals_total", reason=reason) == 1, reason
    assert value(got, "gateway_refusals_total", reason="bad_length") == 0
    assert value(got, "gateway_request_duration_seconds_count", mount="/echo") == 5
    assert value(got, "gateway_request_duration_seconds_bucket", mount="/echo", le="+Inf") == 5
    assert 0 < value(got, "gateway_request_duration_seconds_sum", mount="/echo") < 5
    assert value(got, "gateway_requests_in_flight") == 0
    again = scrape(entry)
    assert value(again, "gateway_requests_total", mount="-", status="2xx") == 1  # the first scrape


def test_only_loopback_and_trusted_proxies_see_it(make: Callable[..., Send]) -> None:
    entry = make(metrics=True, trusted_proxies=TRUSTED)
    assert entry("GET", "/metrics").status == 200  # from 127.0.0.1
    # Behind the trusted proxy, the client is the one it names: not loopback, not a proxy.
    outside = entry("GET", "/metrics", {"X-Forwarded-For": "203.0.113.5"})
    assert outside.status == 404
    assert b"gateway_" not in outside.body


def test_a_nul_in_the_url_is_counted(make: Callable[..., Send]) -> None:
    entry = make(metrics=True)
    assert entry("GET", "/echo/x?a=%00").status == 400
    got = scrape(entry)
    assert value(got, "gateway_refusals_total", reason="nul_in_url") == 1
    assert value(got, "gateway_refusals_total", reason="bad_host") == 0


def asgi_send(app: Any, method: str, path: str) -> Answer:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            return await client.request(method, path)

    response = asyncio.run(go())
    return Answer(response.status_code, list(response.headers.multi_items()), response.content)


def test_in_flight_busy_threads_and_the_wait_for_a_thread(metrics_table: MountTable) -> None:
    app = create_asgi_app(metrics_table, config_with(metrics=True), threads=3)
    HELD.clear()
    ENTERED.clear()
    try:
        held = threading.Thread(target=asgi_send, args=(app, "GET", "/held/"))
        held.start()
        assert ENTERED.wait(10)
        during = samples(asgi_send(app, "GET", "/metrics").body.decode())
        assert value(during, "gateway_requests_in_flight") == 1
        assert value(during, "gateway_wsgi_threads_busy") == 1
        assert value(during, "gateway_wsgi_threads") == 3
        HELD.set()
        held.join(10)
        assert asgi_send(app, "GET", "/echo/x").status == 200
        after = samples(asgi_send(app, "GET", "/metrics").body.decode())
        assert value(after, "gateway_requests_in_flight") == 0
        assert value(after, "gateway_wsgi_threads_busy") == 0
        assert value(after, "gateway_wsgi_thread_wait_seconds_count") == 2  # /held/ and /echo/x
        assert value(after, "gateway_requests_total", mount="/held", status="2xx") == 1
    finally:
        HELD.set()
        app.executor.shutdown(wait=True)


def test_a_wsgi_app_that_raises_is_counted_and_leaves_the_flight(make: Callable[..., Send]) -> None:
    entry = make(metrics=True)
    try:
        # Under the ASGI entry point the bridge answers 500; under WSGI the exception goes
        # on to the server (which answers 500), here the test client.
        assert entry("GET", "/raise/").status == 500
    except RuntimeError as exc:
        assert str(exc) == "a bug in a view"
    got = scrape(entry)
    assert value(got, "gateway_requests_total", mount="/raise", status="5xx") == 1
    assert value(got, "gateway_requests_in_flight") == 0


def test_dead_workers_live_gauges_are_forgotten(tmp_path: Path) -> None:
    top = int(Path("/proc/sys/kernel/pid_max").read_text())
    dead = next(pid for pid in range(top - 1, 1, -1) if not Path(f"/proc/{pid}").exists())
    for pid in (dead, os.getpid()):
        (tmp_path / f"gauge_livesum_{pid}.db").write_bytes(b"")
    (tmp_path / f"counter_{dead}.db").write_bytes(b"")
    forget_dead_workers(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"gauge_livesum_{os.getpid()}.db", f"counter_{dead}.db"])  # counts of the dead still count


def test_a_given_directory_must_be_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"PROMETHEUS_MULTIPROC_DIR=.*missing is not a writable directory"):
        prepare_directory()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert prepare_directory() == str(tmp_path)


def test_the_setting_is_strict() -> None:
    assert Config.from_env({"GATEWAY_METRICS": "1"}).metrics is True
    assert Config.from_env({}).metrics is False
    with pytest.raises(ValueError, match="GATEWAY_METRICS"):
        Config.from_env({"GATEWAY_METRICS": "maybe"})
    assert Config.from_env({"GATEWAY_METRICS": "off"}).metrics is False


# -- Several workers' files (tests/system/test_metrics_servers.py runs real ones) ---------


def test_a_scrape_passes_over_a_worker_file_not_yet_sized(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """prometheus/client_python#1199 and #425: neither an empty file nor one removed
    between the listing and the reading fails the scrape."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.mmap_dict import MmapedDict, mmap_key
    from prometheus_client.multiprocess import MultiProcessCollector

    written = MmapedDict(str(tmp_path / "counter_1000.db"))
    written.write_value(mmap_key("gateway_requests", "gateway_requests_total", ["mount", "status"],
                                 ["/flask", "2xx"], "Requests."), 5.0, 0)
    written.close()
    (tmp_path / "counter_1001.db").write_bytes(b"")  # a worker between creating and sizing it
    real_merge = MultiProcessCollector.merge
    calls = []

    def merge_once_late(files: list[str], accumulate: bool = True) -> Any:
        calls.append(sorted(Path(f).name for f in files))
        if len(calls) == 1:
            raise FileNotFoundError(files[0])  # as if a dead worker's file went meanwhile
        return real_merge(files, accumulate)

    monkeypatch.setattr(MultiProcessCollector, "merge", staticmethod(merge_once_late))
    registry = CollectorRegistry()
    registry.register(WorkerFiles(str(tmp_path)))
    text = generate_latest(registry).decode()
    assert value(samples(text), "gateway_requests_total", mount="/flask", status="2xx") == 5
    assert calls == [["counter_1000.db"], ["counter_1000.db"]]


def test_a_status_outside_the_classes_is_other_and_latency_is_observed() -> None:
    from gateway.observe.metrics import Metrics

    metrics = Metrics()
    metrics.started()
    metrics.finished("/a", 0, 0.2)  # no status was sent
    metrics.started()
    metrics.finished("/a", 204, 0.003)
    got = samples(metrics.render().body.decode())
    assert value(got, "gateway_requests_total", mount="/a", status="other") == 1
    assert value(got, "gateway_requests_total", mount="/a", status="2xx") == 1
    assert value(got, "gateway_request_duration_seconds_sum", mount="/a") == pytest.approx(0.203)
    assert value(got, "gateway_request_duration_seconds_bucket", mount="/a", le="0.005") == 1
    assert value(got, "gateway_request_duration_seconds_bucket", mount="/a", le="0.25") == 2
    assert value(got, "gateway_requests_in_flight") == 0


def test_in_multiprocess_mode_a_scrape_reads_every_workers_files(tmp_path: Path) -> None:
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    from gateway.observe.metrics import Metrics

    metrics = Metrics()
    metrics.directory = str(tmp_path)  # as if PROMETHEUS_MULTIPROC_DIR had been set at import
    for pid, count in ((1000, 3.0), (1001, 4.0)):
        written = MmapedDict(str(tmp_path / f"counter_{pid}.db"))
        written.write_value(mmap_key("gateway_requests", "gateway_requests_total", ["mount", "status"],
                                     ["/flask", "2xx"], "Requests."), count, 0)
        written.close()
    top = int(Path("/proc/sys/kernel/pid_max").read_text())
    dead = next(pid for pid in range(top - 1, 1, -1) if not Path(f"/proc/{pid}").exists())
    (tmp_path / f"gauge_livesum_{dead}.db").write_bytes(b"")
    reply = metrics.render()
    assert (reply.status, dict(reply.headers)["Cache-Control"]) == (200, "no-store")
    assert dict(reply.headers)["Content-Length"] == str(len(reply.body))
    assert value(samples(reply.body.decode()), "gateway_requests_total", mount="/flask", status="2xx") == 7
    assert not (tmp_path / f"gauge_livesum_{dead}.db").exists()  # the dead worker's gauges went


def test_multiprocess_mode_needs_the_variable_before_the_import(monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import values

    from gateway.observe.metrics import multiprocess_dir

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/somewhere")
    monkeypatch.setattr(values, "ValueClass", values.MutexValue)  # imported before it was set
    assert multiprocess_dir() is None
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    assert multiprocess_dir() == "/somewhere"
    from gateway.observe.metrics import Metrics

    monkeypatch.setattr(values, "ValueClass", values.MutexValue)  # values kept in memory, as in a test
    monkeypatch.setattr("gateway.observe.metrics.multiprocess_dir", lambda: "/somewhere")
    assert Metrics().directory == "/somewhere"
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    assert multiprocess_dir() is None


def test_serve_makes_a_fresh_directory_and_removes_it_at_exit(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import atexit
    import tempfile

    from gateway.observe import metrics

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    registered: list[tuple[Any, ...]] = []
    monkeypatch.setattr(atexit, "register", lambda *args, **kwargs: registered.append((*args, kwargs)))
    made = Path(metrics.prepare_directory())
    assert made.parent == tmp_path and made.name.startswith("gateway-metrics-") and made.is_dir()
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(made)
    (function, directory, options), = registered
    function(directory, **options)
    assert not made.exists()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match="is not a writable directory"):
        metrics.prepare_directory()
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o500)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(read_only))
    if os.geteuid() != 0:  # root writes anywhere
        with pytest.raises(ValueError, match="is not a writable directory"):
            metrics.prepare_directory()


def test_a_pid_another_user_holds_is_a_dead_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.observe import metrics

    def kill(pid: int, signal: int) -> None:
        raise {1: PermissionError, 2: ProcessLookupError}.get(pid, OSError)()

    monkeypatch.setattr(metrics.os, "kill", kill)
    assert metrics._alive(1) is False
    assert metrics._alive(2) is False
    sent: list[int] = []
    monkeypatch.setattr(metrics.os, "kill", lambda pid, signal: sent.append(signal))
    assert metrics._alive(3) is True
    assert sent == [0]  # the null signal: asks, sends nothing


def test_each_metric_with_its_help_labels_and_buckets() -> None:
    """What a scrape shows of a fresh registry after one of each event: names, help texts, labels."""
    from gateway.observe.metrics import Metrics

    metrics = Metrics()
    metrics.route_event("fallback", "/a/<id>")
    metrics.route_event("canary", "/b")
    metrics.route_event("canary", "/b")
    metrics.route_event("shadow", "/c", ("compared", "equal"))
    metrics.route_event("rollout", "/d", ("canary", "25", "5xx"))
    metrics.route_event("rollout_share", "/d", ("25",))
    metrics.pool(4)
    metrics.thread_started(0.0003)
    metrics.refused("bad_host")
    metrics.started()
    metrics.finished("/a", 404, 0.02)
    text = metrics.render().body.decode()
    helps = {family.name: family.documentation for family in text_string_to_metric_families(text)
             if not family.name.endswith("_created")}
    assert helps == {
        "gateway_requests": "Requests answered, by mount and status class.",
        "gateway_request_duration_seconds": "Time to answer a request, by mount.",
        "gateway_requests_in_flight": "Requests being answered now.",
        "gateway_wsgi_threads": "WSGI threads (GATEWAY_THREADS, per worker, summed).",
        "gateway_wsgi_threads_busy": "WSGI threads running an app now.",
        "gateway_wsgi_thread_wait_seconds": "Wait for a free WSGI thread.",
        "gateway_refusals": "The gateway's own 4xx answers, by reason.",
        "gateway_route_fallbacks": "Fallbacks taken, by route rule.",
        "gateway_canary_requests": "Requests sent to a canary, by route rule.",
        "gateway_shadow": "Shadow comparisons, by route rule and outcome.",
        "gateway_rollout_share": "A rollout's canary share now (per cent), by rule.",
        "gateway_rollout_responses": "Answers of a rollout's arms, by rule, arm (baseline, canary), step (its share) "
                                     "and status class.",
    }
    got = samples(text)
    assert value(got, "gateway_route_fallbacks_total", rule="/a/<id>") == 1
    assert value(got, "gateway_canary_requests_total", rule="/b") == 2
    assert value(got, "gateway_shadow_total", rule="/c", outcome="compared") == 1
    assert value(got, "gateway_shadow_total", rule="/c", outcome="equal") == 1
    assert value(got, "gateway_rollout_responses_total", rule="/d", arm="canary", step="25", status="5xx") == 1
    assert value(got, "gateway_rollout_share", rule="/d") == 25
    assert value(got, "gateway_refusals_total", reason="bad_host") == 1
    assert value(got, "gateway_requests_total", mount="/a", status="4xx") == 1
    assert (value(got, "gateway_wsgi_threads"), value(got, "gateway_wsgi_threads_busy")) == (4, 1)
    assert sorted(float(dict(labels)["le"]) for name, labels in got
                  if name == "gateway_request_duration_seconds_bucket") == [
        0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, float("inf")]
    assert value(got, "gateway_request_duration_seconds_bucket", mount="/a", le="0.01") == 0
    assert value(got, "gateway_request_duration_seconds_bucket", mount="/a", le="0.025") == 1
    assert value(got, "gateway_wsgi_thread_wait_seconds_bucket", le="0.0001") == 0
    assert value(got, "gateway_wsgi_thread_wait_seconds_bucket", le="0.0005") == 1
    assert len([name for name, _ in got if name == "gateway_wsgi_thread_wait_seconds_bucket"]) == 11


def test_a_given_directory_that_is_a_file_is_refused_in_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    given = tmp_path / "a-file"
    given.write_text("")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(given))
    with pytest.raises(ValueError) as refused:
        prepare_directory()
    assert str(refused.value) == (f"PROMETHEUS_MULTIPROC_DIR={given} is not a writable directory: create it, empty, "
                                  "or unset the variable and the gateway makes one.")


def test_a_given_directory_this_user_cannot_write_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "access", lambda path, mode: mode != os.W_OK | os.X_OK)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="is not a writable directory"):
        prepare_directory()


def test_a_directory_made_here_is_removed_at_exit_even_if_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    import atexit

    at_exit: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(atexit, "register", lambda f, *a, **k: at_exit.append((f, a, k)))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    directory = prepare_directory()
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == directory and os.path.isdir(directory)
    for function, args, kwargs in at_exit * 2:  # the second time it is already gone: no error at exit
        function(*args, **kwargs)
    assert not os.path.exists(directory)
