"""Shadow comparison: the old page against the new one, on live traffic, off the request path.

A route rule in shadow mode (``shadow = { app = "new" }`` in ``gateway.toml``) answers
from its own app, the primary, as always. For GET and HEAD only (the pipeline's
decision, :class:`gateway.core.pipeline.Shadow`), the adapter that serves the request
keeps a copy of the primary's answer as it goes to the client (:class:`Capture`) and,
once the response is closed, hands the request to a small pool of its own
(:class:`Shadower`), which, calling each app in its own interface (a WSGI app as a
server would, an ASGI one natively, :func:`call_asgi`):

1. replays it on the candidate;
2. replays it on the primary a second time (Twitter's Diffy calls this the secondary:
   what differs between two runs of the same app, such as CSRF tokens, timestamps or
   request IDs, is noise, not a difference);
3. compares the status, the headers the rule names, and the body, normalised: JSON by
   value (key order does not count), HTML and text by token (white space and attribute
   order do not count).

The client never waits for any of it: the hand-over is a non-blocking put on a bounded
queue, and a full queue drops the comparison (counted). Nor does the pool take the CPU the
requests need: a comparison costs several requests' worth (it runs both apps and
tokenises three bodies; about 2 ms against 0.6 ms for the page itself, measured on the
worked example), so after each one the pool rests long enough to stay within its share of
one core (``[shadow] cpu = 2`` per cent by default, per process). Comparisons that arrive
meanwhile are dropped and counted: under load the pool samples. Results are counted per rule
(compared, equal, different, noise only, dropped, error, timeout), and differences are
written as JSON lines, each with a unified diff, to ``shadow.jsonl`` in the data
directory, which ``gateway diff`` summarises.

What a replay may not do:

- **Carry the client's credentials**, unless the rule says ``credentials = true``. The
  ``Cookie``, ``Authorization`` and ``Proxy-Authorization`` headers, any other header
  whose name says key, token, auth, secret, session, password, signature, credential or
  JWT (``X-Api-Key``), and query parameters whose names say so (``?api_key=``,
  ``?access_token=``, ``?key=``, ``?sig=``, ``?code=``) are left out of both
  replays, so a candidate never acts as the signed-in user. A request that came with any
  of them is then replayed twice on the primary, without them, and the candidate is
  compared with the first of those replays (the client's own answer was a signed-in page,
  which an anonymous replay cannot match).
- **Hold the pool.** Each comparison has ``[shadow] timeout`` seconds (5 by default) for all
  its replays. Each replay runs in a thread of its own, so a candidate that hangs is left
  behind and counted (``timeout``); at most :data:`MAX_STUCK` of them at a time, past
  which comparisons are dropped until one ends. A request that waited in the queue longer
  than the timeout is dropped, not replayed late.
- **Flood the log.** An app that raises is counted (``error``), with one WARNING line per
  rule and kind of failure a minute, and its traceback at DEBUG.
"""

from __future__ import annotations

import asyncio
import difflib
import html.parser
import io
import json
import logging
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from gateway.types import Environ, Message, WSGIApp

logger = logging.getLogger("gateway.shadow")

OUTCOMES = ("compared", "equal", "different", "noise", "dropped", "error", "timeout")
MAX_BODY = 1024 * 1024  # answers longer than this are not compared (counted as dropped)
SAFE = frozenset({"GET", "HEAD"})
#: The share of one core the comparisons may use, per process, unless ``[shadow] cpu`` says.
DEFAULT_CPU = 0.02
#: Seconds a comparison's replays may take together, unless ``[shadow] timeout`` says.
DEFAULT_TIMEOUT = 5.0
#: Replays left running past their timeout at one time; past this, comparisons are dropped.
MAX_STUCK = 4
#: The request headers that carry a client's credentials: not replayed unless a rule says so.
CREDENTIALS = ("HTTP_COOKIE", "HTTP_AUTHORIZATION", "HTTP_PROXY_AUTHORIZATION")
#: What else marks a credential: a word of a header's name (``X-Api-Key``, ``X-Auth-Token``,
#: ``X-Amz-Security-Token``, ``X-CSRFToken``) or of a query parameter's (``api_key``,
#: ``access_token``, ``X-Amz-Signature``, ``sig``, ``code``: an OAuth code), the words split
#: at what is not a letter or a digit. Left out of both replays, as the headers above.
_SECRET_WORDS = frozenset({
    "KEY", "APIKEY", "ACCESSKEY", "TOKEN", "ACCESSTOKEN", "CSRFTOKEN", "XSRFTOKEN", "AUTH", "AUTHORIZATION",
    "SECRET", "SESSION", "SESSIONID", "SID", "PASSWORD", "PASSWD", "PWD", "SIGNATURE", "SIG", "CREDENTIAL",
    "CREDENTIALS", "JWT", "CODE"})
_WORD = re.compile(r"[A-Z0-9]+")
#: The environ's copies of the whole target, query included (gunicorn's RAW_URI, others').
_TARGETS = ("RAW_URI", "REQUEST_URI")
#: Seconds between two log lines of one rule and kind of failure.
LOG_EVERY = 60.0

Answer = tuple[int, dict[str, str], bytes]
#: An app a comparison replays, with its interface (``"wsgi"`` or ``"asgi"``).
Replayed = tuple[Any, str]


def call(app: WSGIApp, environ: Environ) -> Answer:
    """Call a WSGI app with a copy of ``environ``; its status, headers and body (capped):
    what it gave the ``write()`` callable (PEP 3333), then its iterable's chunks."""
    got: dict[str, Any] = {}
    body: list[bytes] = []
    size = 0

    def write(chunk: bytes) -> None:
        nonlocal size
        size += len(chunk)
        if size > MAX_BODY:
            raise TooLarge
        body.append(chunk)

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        got["status"], got["headers"] = int(status[:3]), headers
        return write

    result = app(fresh(environ), start_response)
    try:
        for chunk in result:
            write(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return got.get("status", 0), {n.lower(): v for n, v in got.get("headers", [])}, b"".join(body)


def call_asgi(app: Any, environ: Environ) -> Answer:
    """Call an ASGI app natively with the request of ``environ``; its status, headers and
    body (capped).

    It runs on an event loop of its own, in the replay's own thread (:meth:`Shadower.replay`),
    never on the server's: the serving loop never waits on a comparison and never runs
    one, a candidate that hangs or burns CPU is left behind like a WSGI one, and its CPU
    time counts against the pool's share (``thread_time``). What an app keeps bound to the
    server's loop (its lifespan's state) is not there: such a replay fails, counted as an
    error, as it did through a2wsgi, which also runs the app on a loop of its own.
    """
    return asyncio.run(_asgi_answer(app, scope_of(environ)))


async def _asgi_answer(app: Any, scope: dict[str, Any]) -> Answer:
    got: dict[str, Any] = {}
    body: list[bytes] = []
    size = 0
    over = asyncio.Event()
    asked = False

    async def receive() -> Message:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await over.wait()  # as a client that stays until its answer is whole
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal size
        if message["type"] == "http.response.start":
            got["status"] = int(message["status"])
            got["headers"] = {bytes(n).decode("latin-1").lower(): bytes(v).decode("latin-1")
                              for n, v in message.get("headers", ())}
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                raise TooLarge
            body.append(chunk)
            if not message.get("more_body", False):
                over.set()

    await app(scope, receive, send)
    return got.get("status", 0), got.get("headers", {}), b"".join(body)


def scope_of(environ: Environ) -> dict[str, Any]:
    """The HTTP scope of a replay's ``environ``: what an ASGI app sees of the same request
    (the path whole, ``root_path`` the script name, as current ASGI servers give them)."""
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:]
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = key
        else:
            continue
        headers.append((name.lower().replace("_", "-").encode("latin-1"), str(value).encode("latin-1")))
    root = environ.get("SCRIPT_NAME", "").encode("latin-1").decode("utf-8", "replace")
    path = root + environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
    port = str(environ.get("SERVER_PORT", ""))
    protocol = str(environ.get("SERVER_PROTOCOL", "HTTP/1.1"))
    client = environ.get("REMOTE_ADDR")
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": protocol.partition("/")[2] or "1.1",
        "method": environ.get("REQUEST_METHOD", "GET"), "scheme": environ.get("wsgi.url_scheme", "http"),
        "path": path, "query_string": environ.get("QUERY_STRING", "").encode("latin-1"),
        "root_path": root, "headers": headers,
        # ASCII digits, five at most: gunicorn copies the port from the client's Host header.
        "server": (environ.get("SERVER_NAME", "localhost"),
                   int(port) if port.isascii() and port.isdigit() and len(port) <= 5 else None),
        "client": (client, int(environ.get("REMOTE_PORT") or 0)) if client else None,
    }


class TooLarge(Exception):
    """An answer over :data:`MAX_BODY`: not compared."""


def _secret_name(name: str) -> bool:
    return not _SECRET_WORDS.isdisjoint(_WORD.findall(name.upper()))


def is_credential(key: str) -> bool:
    """Whether the environ's ``key`` is a request header that carries a credential."""
    return key in CREDENTIALS or (key.startswith("HTTP_") and _secret_name(key[5:]))


def _secret_parameter(pair: str) -> bool:
    from urllib.parse import unquote_plus

    return _secret_name(unquote_plus(pair.partition("=")[0]))


def without_credentials(query: str) -> str:
    """A query string without the parameters that carry credentials (the others as they were)."""
    return "&".join(pair for pair in query.split("&") if not _secret_parameter(pair))


def carries_credentials(environ: Environ) -> bool:
    """Whether the request came with a credential, in a header or in its query."""
    return any(is_credential(key) for key in environ) or without_credentials(
        environ.get("QUERY_STRING", "")) != environ.get("QUERY_STRING", "")


def fresh(environ: Environ, credentials: bool = True) -> Environ:
    """A copy of a request's environ to replay it: the framework's own keys dropped, no body,
    and without the client's credentials (:func:`is_credential`, :func:`without_credentials`)
    unless ``credentials``."""
    copy = {k: v for k, v in environ.items()
            if (k.isupper() or k.startswith("wsgi.")) and (credentials or not is_credential(k))}
    if not credentials and (query := copy.get("QUERY_STRING")):
        kept = without_credentials(query)
        if kept != query:
            copy["QUERY_STRING"] = kept
            for key in _TARGETS:
                copy.pop(key, None)
    copy["wsgi.input"] = io.BytesIO(b"")
    copy["wsgi.errors"] = environ.get("wsgi.errors")
    return copy


# -- Normalising and comparing ---------------------------------------------------------------


class _Tokens(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tokens: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tokens.append(f"<{tag}>")
        self.tokens.extend(f"@{name}={value}" for name, value in sorted((n, v or "") for n, v in attrs))

    def handle_endtag(self, tag: str) -> None:
        self.tokens.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        self.tokens.extend(data.split())


def tokens(content_type: str, body: bytes) -> list[str]:
    """A body as tokens to compare: JSON as sorted ``path=value`` lines, HTML by tags,
    sorted attributes and words, anything else by words."""
    text = body.decode("utf-8", "replace")
    if "json" in content_type:
        try:
            return [f"{path}={value}" for path, value in sorted(_flatten(json.loads(text)))]
        except ValueError:
            pass
    if "html" in content_type:
        parser = _Tokens()
        parser.feed(text)
        parser.close()
        return parser.tokens
    return text.split()


def _flatten(value: Any, path: str = "$") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _flatten(item, f"{path}[{index}]")
    else:
        yield path, json.dumps(value)


def changed(a: list[str], b: list[str]) -> set[int]:
    """The positions of ``a`` that ``b`` changes (an insertion marks its neighbours)."""
    positions: set[int] = set()
    for op, i1, i2, _, _ in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op != "equal":
            positions.update(range(i1, i2) if i2 > i1 else {max(i1 - 1, 0), i1})
    return positions


def compare(primary: Answer, secondary: Answer, candidate: Answer, headers: Iterable[str]) -> tuple[str, list[str]]:
    """``equal``, ``noise`` (the only differences are ones two runs of the primary have too)
    or ``different``, with what differs for real."""
    real: list[str] = []
    noisy = False
    if candidate[0] != primary[0]:
        if secondary[0] != primary[0]:
            noisy = True
        else:
            real.append(f"status {primary[0]} != {candidate[0]}")
    for name in headers:
        name = name.lower()
        mine, theirs = primary[1].get(name), candidate[1].get(name)
        if mine != theirs:
            if secondary[1].get(name) != mine:
                noisy = True
            else:
                real.append(f"header {name}: {mine!r} != {theirs!r}")
    kind = primary[1].get("content-type", "")
    a = tokens(kind, primary[2])
    moved = changed(a, tokens(candidate[1].get("content-type", ""), candidate[2]))
    if moved:
        noise = changed(a, tokens(secondary[1].get("content-type", ""), secondary[2]))
        if moved <= noise:
            noisy = True
        else:
            real.append(f"body: {len(moved - noise)} token(s) differ")
    return ("different" if real else "noise" if noisy else "equal"), real


def unified(primary: Answer, candidate: Answer) -> str:
    """A unified diff of the two bodies' tokens, one a line."""
    kind = primary[1].get("content-type", "")
    return "\n".join(difflib.unified_diff(tokens(kind, primary[2]), tokens(kind, candidate[2]),
                                          "primary", "candidate", lineterm="", n=2))


# -- The pool --------------------------------------------------------------------------------


class ReplayFailed(Exception):
    """A replay raised (``which``: "candidate" or "primary"); the cause is chained."""

    def __init__(self, which: str, error: BaseException) -> None:
        super().__init__(which, error)
        self.which = which
        self.error = error


class ReplayTimedOut(Exception):
    """A replay did not end by the comparison's deadline (``which``: the app's role)."""

    def __init__(self, which: str) -> None:
        super().__init__(which)
        self.which = which


class Shadower:
    """A bounded queue and a few daemon threads that replay and compare, off the request path."""

    def __init__(self, log_path: Path | None, *, threads: int = 1, size: int = 64, keep: int = 1000,
                 cpu: float = DEFAULT_CPU, timeout: float = DEFAULT_TIMEOUT,
                 patience: float | None = None) -> None:
        self.queue: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=size)
        self.counts: dict[str, Counter[str]] = {}
        self.lock = threading.Lock()
        self.file_lock = threading.Lock()  # the log's writes: never held by a request's thread
        #: The share of one core the pool may use, 0 to 1 (``[shadow] cpu``, per cent).
        self.cpu = cpu
        #: Seconds a comparison's replays may take together (``[shadow] timeout``).
        self.timeout = timeout
        #: Seconds a comparison may wait in the queue before it is dropped as too late;
        #: ``None``: the timeout. (A test of the timeout alone sets it long: a queue wait
        #: is the scheduler's, and on a loaded machine may pass a timeout of 50 ms.)
        self.patience = patience
        #: Replays left running past their deadline, still running.
        self.stuck = 0
        #: When each rule and kind of failure was last logged, and how many since.
        self.logged: dict[tuple[str, str], tuple[float, int]] = {}
        self.log_path = log_path
        self.keep = keep  # differences written per rule, at most
        self.written: Counter[str] = Counter()
        self.workers = [threading.Thread(target=self.work, name=f"gateway-shadow-{i}", daemon=True)
                        for i in range(threads)]
        self.started = False
        #: Told of each count, as ``listener("shadow", rule, outcomes)`` (the metrics).
        self.listener: Callable[..., None] | None = None

    def count(self, rule: str, *outcomes: str) -> None:
        """Count ``outcomes`` together: a reader never sees one without the others."""
        with self.lock:
            counts = self.counts.setdefault(rule, Counter())
            for outcome in outcomes:
                counts[outcome] += 1
        if self.listener is not None:
            self.listener("shadow", rule, outcomes)

    def all_counts(self) -> dict[str, dict[str, int]]:
        """A copy of every rule's counts (for the other workers' migration pages)."""
        with self.lock:
            return {rule: dict(counts) for rule, counts in self.counts.items()}

    def snapshot(self, rule: str) -> Counter[str]:
        """A copy of ``rule``'s counts, taken under the lock."""
        with self.lock:
            return Counter(self.counts.get(rule, {}))

    def take(self, rule: str) -> bool:
        """Whether a comparison of ``rule`` may begin: with the queue full it is dropped
        (counted) at once, before anything of the request is copied; under load that is
        most requests (see bench/README.md, "Shadow comparison")."""
        if self.queue.full():
            self.count(rule, "dropped")
            return False
        return True

    def submit(self, rule: str, environ: Environ, primary: Answer, apps: tuple[Replayed, Replayed],
               headers: tuple[str, ...], anonymous: bool = False) -> None:
        """Queue a comparison; never blocks: a full queue drops it (counted), as do
        :data:`MAX_STUCK` replays still running past their deadline. ``anonymous``: the
        client's credentials were left out of ``environ``, so ``primary`` cannot be compared."""
        if not self.started:
            with self.lock:
                if not self.started:
                    for worker in self.workers:
                        worker.start()
                    self.started = True
        if self.stuck >= MAX_STUCK:
            self.count(rule, "dropped")
            return
        try:
            self.queue.put_nowait((time.monotonic(), rule, environ, primary, apps, headers, anonymous))
        except queue.Full:
            self.count(rule, "dropped")

    def work(self) -> None:
        while True:
            queued, *job = self.queue.get()
            started = time.thread_time()
            spent = [0.0]
            try:
                patience = self.timeout if self.patience is None else self.patience
                if time.monotonic() - queued > patience:
                    self.count(job[0], "dropped")  # too late: the client's request is long over
                else:
                    self.compare(*job, spent=spent)
            except Exception:  # one bad comparison must not stop the pool
                logger.exception("Shadow comparison failed for %s", job[0])
            finally:
                self.queue.task_done()
            self.rest(time.thread_time() - started + spent[0])

    def rest(self, spent: float) -> None:
        """After ``spent`` seconds of CPU, sleep so that the pool's threads together stay
        within :attr:`cpu` of one core."""
        share = self.cpu / len(self.workers)
        if 0 < share < 1:
            time.sleep(spent * (1 - share) / share)

    def replay(self, replayed: Replayed, environ: Environ, deadline: float, which: str,
               spent: list[float]) -> Answer:
        """The answer of ``replayed`` (an app and its interface) to ``environ``, from a
        thread of its own, by ``deadline`` (``time.monotonic()``). Its CPU time is added to
        ``spent[0]``. A WSGI app is called as a server would; an ASGI one natively
        (:func:`call_asgi`).

        A call cannot be stopped from outside, so one that runs past the deadline is
        left to finish on its own (:attr:`stuck` counts it) and :class:`ReplayTimedOut` is
        raised; an app that raises gives :class:`ReplayFailed`."""
        state: dict[str, Any] = {}
        app, interface = replayed

        def run() -> None:
            begun = time.thread_time()
            try:
                state["answer"] = call(app, environ) if interface == "wsgi" else call_asgi(app, environ)
            except BaseException as exc:  # handed to the waiting thread, which counts it
                state["error"] = exc
            finally:
                with self.lock:
                    state["cpu"] = time.thread_time() - begun
                    if state.get("abandoned"):
                        self.stuck -= 1

        thread = threading.Thread(target=run, name=f"gateway-shadow-{which}", daemon=True)
        thread.start()
        thread.join(max(0.0, deadline - time.monotonic()))
        with self.lock:
            if "cpu" not in state:
                state["abandoned"] = True
                self.stuck += 1
                raise ReplayTimedOut(which)
        spent[0] += state["cpu"]
        if "error" in state:
            if isinstance(state["error"], TooLarge):
                raise TooLarge
            raise ReplayFailed(which, state["error"])
        return state["answer"]  # type: ignore[no-any-return]

    def compare(self, rule: str, environ: Environ, primary: Answer, apps: tuple[Replayed, Replayed],
                headers: tuple[str, ...], anonymous: bool = False, *, spent: list[float] | None = None) -> None:
        """Replay ``environ`` and compare; count the outcome (and write a difference)."""
        candidate_app, primary_app = apps
        spent = [0.0] if spent is None else spent
        deadline = time.monotonic() + self.timeout
        try:
            if anonymous:  # the client's answer was for its credentials: replay the primary without
                primary = self.replay(primary_app, environ, deadline, "primary", spent)
            candidate = self.replay(candidate_app, environ, deadline, "candidate", spent)
            secondary = self.replay(primary_app, environ, deadline, "primary", spent)
        except TooLarge:
            self.count(rule, "dropped")
            return
        except ReplayTimedOut as exc:
            self.count(rule, "timeout")
            self.warn(rule, f"{exc.which} timeout", f"the {exc.which} did not answer within {self.timeout:g} s "
                      "([shadow] timeout); it is left to finish, and the comparison is not made")
            return
        except ReplayFailed as exc:
            self.count(rule, "error")
            kind = type(exc.error).__name__
            self.warn(rule, f"{exc.which} {kind}", f"the {exc.which} raised {kind}: {exc.error}", exc.error)
            return
        outcome, real = compare(primary, secondary, candidate, headers)
        if outcome == "different":  # written before it is counted: a count never runs ahead of the file
            self.record(rule, environ, primary, candidate, real)
        self.count(rule, "compared", outcome)

    def warn(self, rule: str, kind: str, what: str, error: BaseException | None = None) -> None:
        """One WARNING line per ``rule`` and ``kind`` a minute (:data:`LOG_EVERY`), saying how
        many more there were since the last; the traceback goes to DEBUG."""
        now = time.monotonic()
        with self.lock:
            last, since = self.logged.get((rule, kind), (-LOG_EVERY, 0))
            if now - last < LOG_EVERY:
                self.logged[rule, kind] = (last, since + 1)
                return
            self.logged[rule, kind] = (now, 0)
        more = f" ({since} more since the last such line)" if since else ""
        logger.warning("Shadow comparison of rule %s: %s%s; counted, and logged at most once a minute.",
                       rule, what, more)
        if error is not None:
            logger.debug("The %s of rule %s failed.", kind, rule, exc_info=error)

    def record(self, rule: str, environ: Environ, primary: Answer, candidate: Answer, real: list[str]) -> None:
        if self.log_path is None or self.written[rule] >= self.keep:
            return
        self.written[rule] += 1
        line = json.dumps({
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rule": rule,
            "method": environ.get("REQUEST_METHOD"), "path": environ.get("PATH_INFO"),
            "query": environ.get("QUERY_STRING", ""), "status": [primary[0], candidate[0]],
            "differences": real, "diff": unified(primary, candidate),
        })
        with self.file_lock, open(self.log_path, "a", encoding="utf-8") as out:
            out.write(line + "\n")

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until every queued comparison is done (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)


class Capture:
    """The primary's answer to a shadowed request, copied (up to :data:`MAX_BODY`) by the
    adapter that serves it, as it goes to the client, and handed to the :class:`Shadower`
    once the response is closed.

    ``environ``: the request as the primary's app saw it (the ASGI side translates its
    scope); the replays get a copy with no body, without the client's credentials unless
    ``credentials``. ``apps``: the candidate and the primary, each with its interface.
    The adapter calls :meth:`start`, :meth:`add` for each chunk, :meth:`end` when the
    body is over, and :meth:`close` in any case.
    """

    __slots__ = ("anonymous", "apps", "body", "compared", "complete", "environ", "headers", "rule", "shadower",
                 "size", "status")

    def __init__(self, shadower: Shadower, rule: str, environ: Environ, apps: tuple[Replayed, Replayed],
                 compared: tuple[str, ...] = (), credentials: bool = False) -> None:
        self.shadower = shadower
        self.rule = rule
        self.environ = fresh(environ, credentials)
        #: The client's credentials were left out, so the client's own answer cannot be compared.
        self.anonymous = not credentials and carries_credentials(environ)
        self.apps = apps
        self.compared = compared
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0  # every byte, also past MAX_BODY: the declared length is checked against it
        self.complete = False

    def start(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        """The app's status and headers, as it gave them (before the gateway completes them)."""
        self.status = status
        self.headers = {name.lower(): value for name, value in headers}

    def add(self, chunk: bytes) -> None:
        """A chunk of the body on its way to the client."""
        self.size += len(chunk)
        if self.size <= MAX_BODY:
            self.body.append(chunk)

    def end(self) -> None:
        """The body is over: the app said so."""
        self.complete = True

    def _declared_length_out(self) -> bool:
        """The body reached its Content-Length: a server stops iterating there (PEP 3333),
        so the iterable's end may never be asked for, and the answer is still whole."""
        declared = self.headers.get("content-length", "").strip()
        return declared.isdigit() and self.size >= int(declared)

    def close(self) -> None:
        """After the response: queue the comparison (never waiting), or count it dropped."""
        if not self.complete and self._declared_length_out():
            self.complete = True  # whatever its size: one over MAX_BODY is counted below
        if not self.complete or self.status is None:
            return  # the client left, or the app failed: nothing to compare
        if self.size > MAX_BODY:
            self.shadower.count(self.rule, "dropped")
            return
        primary = (self.status, self.headers, b"".join(self.body))
        self.shadower.submit(self.rule, self.environ, primary, self.apps, self.compared, self.anonymous)


def summarise(path: Path) -> list[str]:
    """``gateway diff``: what the shadow log says, per rule, most differences first."""
    per_rule: dict[str, list[dict[str, Any]]] = {}
    with open(path, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue  # a blank line (a log cut and appended to by hand) says nothing
            try:
                record = json.loads(line)
                if not (isinstance(record, dict) and isinstance(record.get("rule"), str)
                        and isinstance(record.get("path"), str) and isinstance(record.get("differences"), list)
                        and isinstance(record.get("diff"), str)):
                    raise ValueError(record)
            except ValueError:
                raise ValueError(f"{path}, line {number}: not a JSON line of the shadow log.") from None
            per_rule.setdefault(record["rule"], []).append(record)
    out = []
    for rule, records in sorted(per_rule.items(), key=lambda item: -len(item[1])):
        paths = Counter(r["path"] for r in records)
        kinds = Counter(re.sub(r"\d+", "N", d.split(":")[0]) for r in records for d in r["differences"])
        out.append(f"{rule}: {len(records)} difference(s) on {len(paths)} path(s); "
                   + ", ".join(f"{k} x{n}" for k, n in kinds.most_common(3)))
        out.extend(f"  {p}  x{n}" for p, n in paths.most_common(5))
        last = records[-1]
        out.append(f"  latest ({last['time']}, {last['path']}):")
        out.extend(f"    {line}" for line in last["diff"].splitlines()[:20])
    # Paths and pages come from clients and apps: a control character (an escape sequence)
    # is shown, not sent to the operator's terminal.
    return [shown(line) for line in out] or [f"{path}: no differences recorded."]


def shown(text: str) -> str:
    """``text`` with every character that does not print (controls, bidi overrides) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
