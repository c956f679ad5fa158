"""What the gateway decides about a request and adds to a response, with no WSGI or ASGI in it.

The entry points (:mod:`gateway.wsgi`, :mod:`gateway.asgi`) translate a request into a
:class:`Head` and ask :meth:`Pipeline.decide`, which returns a :class:`Decision`: a
:class:`Reply` the gateway sends itself (a refusal, a redirect, its own pages), the
readiness check, or the mount that serves the request with the head as that mount must
see it (script name and path info, host, port, scheme, client, request ID). On the way
back, :meth:`Pipeline.complete` finishes the response headers for both protocols, and
:meth:`Pipeline.done` writes the access line, the metrics and the span's end::

    pipeline = Pipeline(table, config)
    decision = pipeline.decide(Head(method="GET", path="/flask/", host="localhost"))
    decision.mount.prefix, decision.script_name, decision.path_info  # "/flask", "/flask", "/"

The rules, in order:

- From a trusted proxy (``GATEWAY_TRUSTED_PROXIES``), one hop of ``X-Forwarded-For``,
  ``-Proto``, ``-Host``, ``-Port`` and ``-Prefix`` replaces the client, scheme, host,
  port and script root, each only when it is well formed (an IP address; ``http`` or
  ``https``; a host name; 1-65535; a path of segments). Anything else is ignored and
  counted in :attr:`Pipeline.ignored`. From anyone else the headers are left alone.
- ``/healthz`` and ``/readyz`` are answered before any check, so that probes by address
  work; so are ``/_gateway/`` (the migration page) and, when on, ``/metrics``
  (:mod:`gateway.observe.metrics`), for loopback and the trusted proxies only.
- Request headers over ``GATEWAY_MAX_HEADER_SIZE`` in all: 431. A ``Host`` that is
  missing, malformed, repeated or not allowed: 400. ``TRACE``, ``TRACK``, ``CONNECT``: 405.
- A request ID: the client's ``X-Request-ID`` when it is a sane token, else a new one.
- Paths go to the mount with the longest matching prefix, on segment boundaries
  (:meth:`gateway.core.mounts.MountTable.match`); a bare prefix redirects to its slash form;
  a ``Content-Length`` over the mount's body limit gets a 413 before the body is read.
  What no mount claims gets the gateway's index or a 404.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import ipaddress
import itertools
import logging
import os
import re
import secrets
import time
import types
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import quote

from werkzeug.http import parse_cookie

from gateway.core.config import Config, Network
from gateway.core.mounts import PREFIX_PATTERN, Mount, MountTable
from gateway.core.pages import Pages
from gateway.migration import page as migration_page
from gateway.migration.rules import RouteSpec
from gateway.migration.shadow import SAFE, Capture, Shadower
from gateway.observe.logs import REQUEST_ID, access
from gateway.observe.metrics import PATH as METRICS_PATH
from gateway.observe.metrics import Metrics
from gateway.observe.tracing import Tracing
from gateway.replies import (
    BAD_HOST,
    BAD_LENGTH,
    BAD_METHOD,
    HEADERS_TOO_LARGE,
    HEALTHY,
    NUL_IN_HEADER,
    NUL_IN_URL,
    Reply,
    bad_charset,
    plain,
    too_large,
    verdicts_only,
)

logger = logging.getLogger("gateway")
__all__ = ["REQUEST_ID"]  # re-exported: apps read the request ID from here

#: The close code of a websocket the gateway refuses before it is accepted (the client
#: sees a 403 either way): 1008, policy violation (RFC 6455, 7.4.1).
WEBSOCKET_REFUSED = 1008
HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
REFUSED_METHODS = frozenset({"TRACE", "TRACK", "CONNECT"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
HSTS = "max-age=31536000; includeSubDomains"  # what django_hello sends under DJANGO_HTTPS
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
)
_SECURITY = tuple((name.lower(), name, value) for name, value in SECURITY_HEADERS)
_RAW_SECURITY_HEADERS = tuple((name.lower().encode("latin-1"), value.encode("latin-1"))
                              for name, value in SECURITY_HEADERS)
_SECURITY_NAMES = frozenset(lower for lower, _, _ in _SECURITY)
#: The security headers as apps spell them (text and bytes), each with its lower-case
#: name: no lower() for each of the four a Django response carries (callgrind: 300
#: instructions a header).
_SPELLED_SECURITY = {spelled: lower for lower, name, _ in _SECURITY
                     for spelled in (name, lower, lower.encode("latin-1"))}
_tuple_new = tuple.__new__
#: Response headers :meth:`Pipeline.complete` neither reads nor adds, as Flask, Django and
#: ASGI servers spell them: passed over without lower-casing (300 instructions a header).
_PLAIN_HEADERS = frozenset(
    spelled for name in ("Content-Type", "Content-Length", "Vary", "Cache-Control", "ETag", "Last-Modified",
                         "Expires", "Location", "Content-Language", "Content-Encoding", "Content-Disposition",
                         "Date", "Server", "Allow")
    for spelled in (name, name.lower(), name.lower().encode("latin-1")))
_TOKEN = re.compile(r"[A-Za-z0-9._:=+/@-]{1,128}")
# A host name of labels (no empty one: "a..b", ".a" and "a.." are refused) with at most one
# trailing dot, the root's, which Django drops; or a bracketed IPv6 address. A port of ASCII
# digits: Django reads no other (r"\d" takes any script's).
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9-]+\.)*[A-Za-z0-9-]+\.?)(?::([0-9]{1,5}))?")
# Characters a cookie path may carry unquoted, less ";" and "," that would end an attribute.
_COOKIE_PATH_SAFE = "/:@!$&'()*+=-._~"


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class _HeadFields(NamedTuple):
    method: str
    root_path: str
    path: str
    query: str
    host: str | None
    scheme: str
    server: tuple[str, int | None]
    client: str | None
    request_id: str | None
    forwarded: Mapping[str, str]
    header_size: int
    header_nul: bool
    body: Body | None
    http_version: str
    fetch: Callable[[str], str | None] | None


class Body(NamedTuple):
    """What a request head says of its body: ``Content-Length``, ``Content-Type`` and
    ``Transfer-Encoding``, each as sent (None when not sent)."""

    length: str | None = None
    type: str | None = None
    coding: str | None = None

    @property
    def chunked(self) -> bool:
        """Whether ``Transfer-Encoding`` was sent (the body is framed in chunks)."""
        return self.coding is not None


class Head(_HeadFields):
    """A request as the gateway sees it, before any app does, in one form for both protocols.

    Frozen (a tuple) and made by keyword only. The adapters translate once, at the edge:
    paths are native WSGI strings (each byte of the percent-decoded path as one latin-1
    character), header values are latin-1 text, and a header sent more than once is one
    value, joined by :func:`join_values`.

    - ``root_path``: where the server mounted the gateway (SCRIPT_NAME, ASGI root_path);
      ``path``: the path below it (:func:`strip_root`).
    - ``host``: the Host header (several are joined, and so refused); None when missing.
    - ``request_id``: X-Request-ID as sent; ``forwarded``: ``"for"``, ``"proto"``, ... of
      X-Forwarded-*.
    - ``header_size``: the names and values of every header, as sent; ``header_nul``: a
      header value holds NUL (RFC 9110, 5.5: refuse or replace it; PostgreSQL refuses NUL
      in text, and a session cookie was a 500 there).
    - ``body``: what the head says of the body (:class:`Body`), None when it says nothing
      (most GETs); with ``http_version`` (``"1.1"``, ``"2"``) it tells how the body ends
      (:attr:`body_unframed`).
    - ``fetch``: any other request header by name (``"cookie"``), handed over only when a
      rule needs one.

    Why a tuple and not a frozen dataclass, and at most 15 fields (valgrind, CPython 3.11):
    a frozen dataclass sets each field with ``object.__setattr__``, 37,000 instructions
    for a record of 17 fields made by keyword against 8,300 for this tuple; and a call with
    16 or more keyword arguments costs about 9,600 instructions against 2,100 with 15.
    """

    __slots__ = ()

    def __new__(cls, *, method: str, root_path: str = "", path: str, query: str = "", host: str | None = None,
                scheme: str = "http", server: tuple[str, int | None] = ("localhost", 80), client: str | None = None,
                request_id: str | None = None, forwarded: Mapping[str, str] = _NO_HEADERS, header_size: int = 0,
                header_nul: bool = False, body: Body | None = None, http_version: str = "1.1",
                fetch: Callable[[str], str | None] | None = None) -> Head:
        return tuple.__new__(cls, (method, root_path, path, query, host, scheme, server, client, request_id,
                                   forwarded, header_size, header_nul, body, http_version, fetch))

    @staticmethod
    def of(*, method: str, root_path: str = "", path: str, query: str = "", host: str | None = None,
           scheme: str = "http", server: tuple[str, int | None] = ("localhost", 80), client: str | None = None,
           request_id: str | None = None, forwarded: Mapping[str, str] = _NO_HEADERS, header_size: int = 0,
           header_nul: bool = False, body: Body | None = None, http_version: str = "1.1",
           fetch: Callable[[str], str | None] | None = None) -> Head:
        """The same constructor, as a plain function: what the hot path uses. A class called
        with keywords packs them into a dict first (CPython 3.11's ``type_call``), and a
        classmethod binds the class on every call: 5,600 instructions a Head that way,
        4,900 this way (callgrind). ``tests/unit/test_pipeline.py`` holds its signature to
        :meth:`__new__`'s."""
        return _tuple_new(Head, (method, root_path, path, query, host, scheme, server, client, request_id,
                                 forwarded, header_size, header_nul, body, http_version, fetch))

    @property
    def body_unframed(self) -> bool:
        """Whether the body's length is unknown until it ends: chunked, or HTTP/2 (or 3)
        without a ``Content-Length`` (their frames carry no ``Transfer-Encoding``)."""
        body = self.body
        return (body is None or body.length is None) and (
            (body is not None and body.chunked) or not self.http_version.startswith("1"))

    @property
    def bodiless(self) -> bool:
        """Whether the request has no body at all: HTTP/1 with neither ``Content-Length``
        (or ``Content-Length: 0``) nor ``Transfer-Encoding`` (RFC 9112, 6.3)."""
        if self.body is None:  # the usual GET's, answered without the two calls below (callgrind)
            return self.http_version.startswith("1")
        return self.content_length in (None, "0") and not self.body_unframed

    @property
    def content_length(self) -> str | None:
        """The ``Content-Length`` as sent, or None."""
        return self.body.length if self.body is not None else None

    @property
    def content_type(self) -> str | None:
        """The ``Content-Type`` as sent, or None."""
        return self.body.type if self.body is not None else None

    @property
    def chunked(self) -> bool:
        """Whether ``Transfer-Encoding`` was sent."""
        return self.body is not None and self.body.chunked


class _DecisionFields(NamedTuple):
    request_id: str
    reply: Reply | None
    render: Callable[[], Reply] | None
    mount: Mount | None
    ready: bool
    root: str
    script_name: str
    path_info: str
    host: str | None
    server: tuple[str, int | None]
    scheme: str
    client: str | None
    proxied: bool
    body_limit: int | None
    buffered: bool
    set_cookie: str | None
    chain: Chain | None
    shadow: Shadow | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Chain:
    """A route rule's fallback order, decided for a request: ``mounts`` answer in turn,
    and an answer whose status is in ``passed_over`` goes no further than the gateway,
    which asks the next mount (the last one's answer is sent whatever it is). Each entry
    point runs the chain in its own protocol, each app in its own (WSGI apps in the
    bridge on the ASGI side), with the same request body for each.

    Made once per rule (:meth:`Pipeline.use`); a decision carries it only for a method
    of ``methods`` (GET and HEAD, unless the rule's ``fallback_methods`` says more).
    """

    key: str
    mounts: tuple[Mount, ...]
    methods: frozenset[str]
    passed_over: frozenset[int] = frozenset({404})


@dataclass(frozen=True, kw_only=True, slots=True)
class Shadow:
    """A route rule's shadow comparison, decided for a request: the answer of ``primary``
    (the rule's mount) is copied as it goes out (:class:`~gateway.migration.shadow.Capture`)
    and replayed with ``candidate`` by ``shadower``, comparing the response ``headers``
    named; the client's credentials go along only with ``credentials``.

    Made once per rule (:meth:`Pipeline.use`); a decision carries it only for GET and
    HEAD, and only while the shadower's queue has room.
    """

    key: str
    primary: Mount
    candidate: Mount
    shadower: Shadower
    headers: tuple[str, ...] = ()
    credentials: bool = False


class Decision(_DecisionFields):
    """What to do with a request: reply, check readiness, render one of the gateway's own
    pages, or serve it by ``mount``. Frozen (a tuple, as :class:`Head`) and made by keyword only.

    - ``render``: one of the operators' pages (``/_gateway/``, ``/metrics``); it reads
      files and databases, so the adapter renders it off the event loop.
    - ``root``: the gateway's own root (the server's, or a trusted X-Forwarded-Prefix);
      ``script_name``, ``path_info``, ``host``, ``server``, ``scheme``, ``client``: what
      the app must see; ``proxied``: a trusted proxy changed the host, port, scheme or client.
    - ``buffered``: the body is read whole before the app runs (in a thread), unless the
      mount streams its uploads (``GATEWAY_STREAM_BODIES``).
    - ``set_cookie``: a cookie the gateway sets on the response (a canary's client ID).
    - ``chain``: the apps of a route rule's fallback, in order (:class:`Chain`); ``shadow``:
      the rule's shadow comparison (:class:`Shadow`). None for any other request.
    """

    __slots__ = ()

    def __new__(cls, *, request_id: str, reply: Reply | None = None, render: Callable[[], Reply] | None = None,
                mount: Mount | None = None, ready: bool = False, root: str, script_name: str, path_info: str,
                host: str | None, server: tuple[str, int | None], scheme: str, client: str | None,
                proxied: bool = False, body_limit: int | None = None, buffered: bool = True,
                set_cookie: str | None = None, chain: Chain | None = None, shadow: Shadow | None = None) -> Decision:
        return tuple.__new__(cls, (request_id, reply, render, mount, ready, root, script_name, path_info, host,
                                   server, scheme, client, proxied, body_limit, buffered, set_cookie, chain, shadow))

    @staticmethod
    def of(*, request_id: str, reply: Reply | None = None, render: Callable[[], Reply] | None = None,
           mount: Mount | None = None, ready: bool = False, root: str, script_name: str, path_info: str,
           host: str | None, server: tuple[str, int | None], scheme: str, client: str | None,
           proxied: bool = False, body_limit: int | None = None, buffered: bool = True,
           set_cookie: str | None = None, chain: Chain | None = None, shadow: Shadow | None = None) -> Decision:
        """The same constructor, as a plain function: see :meth:`Head.of`."""
        return _tuple_new(Decision, (request_id, reply, render, mount, ready, root, script_name, path_info, host,
                                     server, scheme, client, proxied, body_limit, buffered, set_cookie, chain,
                                     shadow))

    @property
    def mount_label(self) -> str:
        """The mount's prefix, or ``-`` for a request the gateway answered itself."""
        return self.mount.prefix if self.mount is not None else "-"


class Request:
    """One request's state while it is served, passed on explicitly by the adapter that
    serves it (on the WSGI side in the environ, as :data:`ENVIRON_KEY`): its head and
    decision, and what happens after the decision.

    ``hidden_cookie``: see :meth:`Pipeline.begin`. The only mutable per-request record:
    ``body_read`` (the ASGI adapter read the whole body on the event loop), the
    OpenTelemetry ``span`` and the ``trace_headers`` that make the app's spans its
    children, and the response's ``status`` and ``size``, for the access log and the
    metrics (:meth:`Pipeline.done`); for a request with a shadow comparison, the copy of
    the primary's answer (``shadow_copy``, made by :meth:`Pipeline.capture`).
    """

    __slots__ = ("body_read", "decision", "head", "hidden_cookie", "protocol", "shadow_copy", "size", "span",
                 "started", "status", "trace_headers")

    def __init__(self, head: Head, decision: Decision, started: float, protocol: str = "-",
                 hidden_cookie: str | None = None) -> None:
        self.head = head
        self.decision = decision
        self.started = started
        self.protocol = protocol
        #: The shared sign-in's cookie, when the mount that serves the request may not
        #: read it: the adapters take it out of the ``Cookie`` header (:func:`without_cookie`).
        self.hidden_cookie = hidden_cookie
        self.body_read = False
        self.span: Any = None
        self.trace_headers: tuple[tuple[str, str], ...] = ()
        self.status = 0
        self.size = 0
        self.shadow_copy: Capture | None = None


#: Where the WSGI boundary finds the :class:`Request` in a request's environ.
ENVIRON_KEY = "gateway.request"


def strip_root(root_path: str, path: str) -> str:
    """``path`` below ``root_path``, which is stripped only on a ``/`` boundary (``/foo-1``
    is not under ``/foo``: Kludex/starlette#2599); a path without it is taken as already
    relative. Both ASGI translations (the adapter's head and the bridge's environ) use it."""
    if root_path and (path == root_path or path.startswith(root_path + "/")):
        return path[len(root_path):]
    return path


def join_values(values: list[str], *, cookie: bool = False) -> str:
    """One value for a header sent several times (RFC 9110, 5.3): joined by commas, and
    ``Cookie`` by ``; `` (RFC 6265, 5.4). Joined once, in linear time: adding to a string
    per repeat is quadratic in a number the client chooses."""
    return ("; " if cookie else ",").join(values)


def decode_path(path: str) -> str:
    """A native WSGI path (UTF-8 bytes as latin-1) as text, for Werkzeug's routing;
    bytes that are not UTF-8 are kept as escapes, which no rule's text matches."""
    return path if path.isascii() else path.encode("latin-1").decode("utf-8", "surrogateescape")


CANARY_COOKIE = "gateway_canary"
_CANARY_ID = re.compile(r"[0-9a-f]{32}")
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # Django's CSRF check reads no form then


def shares_signin(app: Any) -> bool:
    """Whether ``app`` reads the shared sign-in's session: Django's, or a Flask app with
    :class:`gateway.migration.signin.DjangoSignIn`."""
    return is_django(app) or "gateway_signin" in (getattr(app, "extensions", None) or ())


def without_cookie(header: str, name: str) -> str:
    """A ``Cookie`` header's value without the cookie ``name`` (every one of that name)."""
    kept = [part for part in header.split(";") if part.partition("=")[0].strip() != name]
    return ";".join(kept).strip()


def is_django(app: Any, depth: int = 0) -> bool:
    """Whether ``app`` is Django's, or wraps it: any WSGI middleware around Django's handler
    (WhiteNoise's ``application``, Werkzeug's ``app``, a closure, a ``functools.partial``),
    looked for :data:`_WRAPPED_DEPTH` wrappers deep. Django's own checks (the form
    charset's 415) must follow Django however the user mounted it; a route rule's key
    follows each app it names (:meth:`Pipeline.use`)."""
    if type(app).__module__.partition(".")[0] == "django":
        return True
    return depth < _WRAPPED_DEPTH and any(is_django(inner, depth + 1) for inner in _wrapped(app))


#: How many middleware deep :func:`is_django` looks for Django's handler.
_WRAPPED_DEPTH = 4


def _wrapped(app: Any) -> list[Any]:
    """The callables a WSGI middleware ``app`` may hold: its attributes', a closure's cells,
    a ``functools.partial``'s function and arguments (no data, no classes, no modules)."""
    found = []
    if isinstance(app, functools.partial):
        found += [app.func, *app.args, *app.keywords.values()]
    for cell in getattr(app, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # a cell not filled yet
            found.append(cell.cell_contents)
    attributes = getattr(app, "__dict__", None)
    if isinstance(attributes, dict) and not isinstance(app, type | types.ModuleType):
        found += attributes.values()
    wrapped = getattr(app, "__wrapped__", None)  # functools.wraps
    if wrapped is not None:
        found.append(wrapped)
    return [each for each in found if callable(each) and not isinstance(each, type | types.ModuleType)]


_FORM_SYNTAX = "a=b&c=%41+d;e"


def framing_refused(coding: str, length: str | None, version: str) -> Reply | None:
    """The answer to a body framed by ``Transfer-Encoding: coding`` that the gateway cannot
    pass on whole, or None for ``chunked`` alone (RFC 9112, 6.1 and 6.3). The servers
    differ: h11 refuses what httptools lets through, and Granian takes ``chunked, chunked``
    and a ``Content-Length`` beside it, so the apps got a body read one way or another:

    - with ``Content-Length`` too, or in HTTP/1.0 (which has no chunks): 400, the framing is
      ambiguous (a proxy in front may have read it the other way: request smuggling);
    - ``chunked`` not last, or more than once: 400, the length cannot be known;
    - another coding before ``chunked`` (``gzip, chunked``): 501, the gateway does not undo
      it, and the app would take the coded bytes for the body.
    """
    if length is None and version != "1.0" and coding.strip().lower() == "chunked":
        return None  # the usual chunked body, at the cost of one comparison
    if length is not None or version == "1.0":
        why = "both Content-Length and Transfer-Encoding" if length is not None else "Transfer-Encoding in HTTP/1.0"
        return plain(400, f"Bad Request: {why}: the body's length is ambiguous.\n", ("Connection", "close"),
                     reason="bad_framing")
    codings = [part.strip().lower() for part in coding.split(",")]
    if codings[-1] != "chunked" or codings.count("chunked") > 1:
        return plain(400, "Bad Request: Transfer-Encoding must end with chunked, once.\n", ("Connection", "close"),
                     reason="bad_framing")
    others = ", ".join(c for c in codings[:-1] if c)
    return plain(501, f"Not Implemented: Transfer-Encoding {others[:100]} is not supported; send the body "
                      "without it (chunked alone, or with Content-Length).\n", ("Connection", "close"),
                 reason="transfer_coding")


def unreadable_form(content_type: str) -> str | None:
    """Return the charset of a form ``Content-Type`` that Django cannot read, else None.

    Django answers an urlencoded form in any charset but ``utf-8`` with a ``BadRequest``
    that its CSRF check raises again while answering it: a 500 (seen with
    ``charset=utf-16`` on the admin's login), and so does a multipart form in a charset
    it cannot decode with ``errors="replace"`` (``idna``). The parameters are read as
    Django reads them (the last ``charset``, quoted strings, RFC 2231 ``charset*``), with
    Django's parser. A multipart form's charset must also keep ASCII as ASCII, or its
    boundaries and headers cannot be found (UTF-16, UTF-7). Labels Python does not know
    are ignored, as Django ignores them.
    """
    if "charset" not in content_type.lower():
        return None
    # Django's own parser: others differ on repeated and RFC 2231 parameters (Werkzeug's
    # takes a plain charset= after a charset*=, Django the charset*=), and the fuzz
    # target found the difference.
    from django.utils.http import parse_header_parameters

    media, params = parse_header_parameters(content_type)
    charset = params.get("charset")
    if charset is None or media not in _FORM_TYPES or not _known(charset):
        return None
    if media == _FORM_TYPES[0]:
        return None if charset.lower() == "utf-8" else charset
    return None if _reads_as_ascii(charset.lower()) else charset


@functools.lru_cache(maxsize=64)
def _known(charset: str) -> bool:
    try:
        codecs.lookup(charset)
    except LookupError:
        return False
    return True


@functools.lru_cache(maxsize=64)
def _reads_as_ascii(charset: str) -> bool:
    try:
        return (codecs.encode(_FORM_SYNTAX, charset) == _FORM_SYNTAX.encode("ascii")
                and codecs.decode(_FORM_SYNTAX.encode("ascii"), charset, "replace") == _FORM_SYNTAX)
    except Exception:  # a bytes-to-bytes codec (TypeError), or no "replace" (idna)
        return False


class _IdSource:
    """Request IDs: a random 64-bit prefix per process and a counter, as 32 hex digits.

    Unique across processes and restarts without a system call per request:
    ``secrets.token_hex`` reads ``os.urandom`` each time, which gives up the GIL and
    measured 6-7% of a hello request's time on uvicorn.
    """

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self.prefix = secrets.token_hex(8)
        #: The prefix and the counter as one number, formatted once per ID: an f-string of
        #: the two cost 1,100 instructions more per ID (callgrind).
        self.counter = itertools.count((int(self.prefix, 16) << 64) + 1)

    def __call__(self) -> str:
        return "%032x" % next(self.counter)  # noqa: UP031 - 400 instructions fewer than format() (callgrind)


new_request_id = _IdSource()


def request_id(offered: str | None) -> str:
    """Keep the client's request ID when it is a sane token, else make a new one."""
    if offered and _TOKEN.fullmatch(offered):
        return offered
    return "%032x" % next(new_request_id.counter)  # noqa: UP031 - new_request_id(), without the call


class HostPolicy:
    """Django's ``ALLOWED_HOSTS`` rules: exact names, ``.suffix`` for subdomains, ``*``."""

    def __init__(self, allowed: Iterable[str]) -> None:
        names = [h.lower().removesuffix(".") if h != "." else h for h in allowed]
        self.any = "*" in names
        self.exact = frozenset(n for n in names if not n.startswith("."))
        self.suffixes = tuple(n[1:] for n in names if n.startswith("."))
        # A few Host values come back on every request (decide() looks a missing one up too).
        self.seen: dict[str | None, bool] = {}

    def allows(self, host: str | None) -> bool:
        """True if ``host`` (a ``Host`` header, port optional) is well formed and allowed."""
        if not host:
            return False
        known = self.seen.get(host)
        if known is not None:
            return known
        allowed = self._allows(host)
        if len(self.seen) < 1024:  # bounded: a client sending random hosts fills nothing
            self.seen[host] = allowed
        return allowed

    def _allows(self, host: str) -> bool:
        if split_host(host) is None:
            return False
        if self.any:
            return True
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.lower().removesuffix(".")  # the root's dot, as Django drops it (split_domain_port)
        return name in self.exact or any(name == s or name.endswith("." + s) for s in self.suffixes)


def split_host(host: str) -> tuple[str, int | None] | None:
    """Split a well-formed ``Host`` value into name and port; None if malformed."""
    match = _HOST.fullmatch(host)
    if match is None:
        return None
    port = match.group(2)
    if port is None:
        return match.group(1), None
    return (match.group(1), int(port)) if 0 < int(port) < 65536 else None


def is_trusted(address: str | None, proxies: tuple[Network, ...], *, loopback: bool = False) -> bool:
    """True if ``address`` lies in one of the trusted proxy networks, or, with
    ``loopback``, is a loopback address (the operators' pages, ``/readyz``'s details)."""
    if not address or not (proxies or loopback):
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return (loopback and ip.is_loopback) or any(ip in network for network in proxies)


def last_hop(value: str) -> str:
    """The value the nearest proxy added: the last of a comma-separated list."""
    return value.rsplit(",", 1)[-1].strip()


def valid_client(value: str) -> str | None:
    """An ``X-Forwarded-For`` hop as an IP address (brackets allowed), or None."""
    address = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def valid_prefix(value: str) -> str | None:
    """An ``X-Forwarded-Prefix`` as a path of segments (``/apps``), ``""`` for ``/``, or None."""
    if value == "/":
        return ""
    prefix = value[:-1] if value.endswith("/") else value
    if not PREFIX_PATTERN.fullmatch(prefix) or any(s in {".", ".."} for s in prefix.split("/")):
        return None
    return prefix


def valid_port(value: str) -> int | None:
    """An ``X-Forwarded-Port`` as 1-65535, or None."""
    if not (value.isascii() and value.isdigit() and len(value) <= 5):
        return None
    port = int(value)
    return port if 0 < port < 65536 else None


def rule_plans(table: MountTable) -> tuple[dict[str, Chain], dict[str, Shadow]]:
    """The :class:`Chain` of each route rule that names several apps, and the
    :class:`Shadow` of each rule in shadow mode, by the rule's key."""
    chains: dict[str, Chain] = {}
    shadows: dict[str, Shadow] = {}
    rules = table.route_table
    if not rules:
        return chains, shadows
    for key, spec in rules.specs.items():
        if len(spec.apps) > 1:
            mounts = (table.routes[key], *(table.routes[spec.fallback_key(i)] for i in range(1, len(spec.apps))))
            chains[key] = Chain(key=key, mounts=mounts, methods=frozenset(spec.fallback_methods))
        if spec.shadow is not None:
            shadows[key] = Shadow(key=key, primary=table.routes[key], candidate=table.routes[spec.shadow_key],
                                  shadower=rules.shadower, headers=spec.shadow_headers,
                                  credentials=spec.shadow_credentials)
    return chains, shadows


def own(seen: tuple[str, str, str, str | None, tuple[str, int | None], str, str | None, bool],
        reply: Reply | None = None, *, ready: bool = False, render: Callable[[], Reply] | None = None) -> Decision:
    """The decision for a request the gateway answers itself: ``seen`` is what it keeps of
    the head (request ID, root, path, host, server, scheme, client, proxied)."""
    rid, root, path, host, server, scheme, client, proxied = seen
    return Decision.of(request_id=rid, reply=reply, ready=ready, render=render, root=root, script_name=root,
                    path_info=path, host=host, server=server, scheme=scheme, client=client, proxied=proxied)


class Pipeline:
    """The gateway's request and response policy, shared by both entry points."""

    def __init__(self, table: MountTable, config: Config) -> None:
        self.table = table
        self.config = config
        self.hosts = HostPolicy(config.allowed_hosts)
        self.proxies = config.trusted_proxies
        self.max_header_size = config.max_header_size
        self.streaming = frozenset(config.stream_bodies)
        #: ``sessionid=``: the cookie left at the site root for one sign-in, or None.
        self.shared_cookie = f"{config.shared_signin}=" if config.shared_signin else None
        #: Cookie names only their owners set (:meth:`scope`).
        self.reserved = frozenset({CANARY_COOKIE, "sessionid", "csrftoken", config.shared_signin or "sessionid"})
        self.refused_cookies: set[tuple[str, str]] = set()
        #: Prometheus metrics (``GATEWAY_METRICS``), or None.
        self.metrics = Metrics() if config.metrics else None
        #: OpenTelemetry spans (``GATEWAY_TRACING``), or None.
        self.tracing = Tracing() if config.tracing else None
        #: Whether metrics or tracing need each response's status and size.
        self.measured = self.metrics is not None or self.tracing is not None
        self.use(table)
        self.cookie_paths: dict[str, str] = {}
        #: Forwarded headers from a trusted proxy that were malformed, and so ignored.
        self.ignored: Counter[str] = Counter()
        #: Set by the server integration once shutdown has begun: responses then ask
        #: clients to close their connections, and ``/readyz`` answers 503.
        self.draining = False

    def use(self, table: MountTable) -> None:
        """Serve ``table`` from now on (a reload of the route rules swaps it in).

        Called on the event loop, between requests' decisions; a request already decided
        keeps the mount it was given.
        """
        limits = {m.prefix: self.config.body_limit(m.prefix) for m in table.all()}
        wants = bool(table.route_table) and any(
            spec.canary is not None for spec in table.route_table.specs.values())  # type: ignore[union-attr]
        #: Each route rule's fallback order and shadow comparison, by the rule's key.
        self.chains, self.shadows = rule_plans(table)
        # A rule's key reads what any app it names reads: Django's checks and the shared
        # sign-in follow each app of its chain, and its shadow's candidate.
        named = {key: [m.prefix for m in chain.mounts] for key, chain in self.chains.items()}
        for key, shadow in self.shadows.items():
            named[key] = [key, shadow.candidate.prefix]
        django = {m.prefix for m in table.all() if is_django(m.app)}
        signin = {m.prefix for m in table.all() if shares_signin(m.app)}
        for key, prefixes in named.items():
            django.update([key] if django.intersection(prefixes) else [])
            signin.update([key] if signin.intersection(prefixes) else [])
        self.table, self.limits, self.django = table, limits, frozenset(django)
        #: The mounts the shared sign-in's cookie goes to (:func:`shares_signin`).
        self.signin = frozenset(signin)
        #: What a canary rule's answers vary by, by the key of each of its apps: the header
        #: that chooses the app, else the cookie. Without ``Vary``, a shared cache in front
        #: (nginx's proxy_cache, a CDN) kept one client's app's page and gave it to others.
        self.varies: dict[str, str] = {}
        if table.route_table:
            for spec in table.route_table.specs.values():
                if spec.canary is not None:
                    self.varies[spec.key] = self.varies[spec.canary_key] = spec.header or "Cookie"
        self.pages = Pages(table, metrics=self.metrics is not None)
        if table.route_table and self.metrics is not None:
            table.route_table.listen(self.metrics.route_event)
        if table.route_table and table.route_table.board is not None:
            table.route_table.board.start()
        #: The route rules' rollouts, which count each response of their arms (:meth:`done`).
        self.rollouts = table.route_table.rollouts if table.route_table else None
        if self.rollouts is not None:
            self.rollouts.start()
        #: Whether a rule reads request headers of its own (a canary's), or tracing reads
        #: ``traceparent``, so the adapters hand :attr:`Head.fetch` over.
        self.wants_headers = wants or self.tracing is not None

    def insider(self, client: str | None, host: str | None) -> bool:
        """Whether a request may see the operators' pages (``/_gateway/``, ``/metrics``): from
        loopback or a trusted proxy, for an allowed host or an address. A browser on the
        operator's machine sent to a name that resolves to 127.0.0.1 (DNS rebinding) sends
        that name as its ``Host``, never an address."""
        if not is_trusted(client, self.proxies, loopback=True):
            return False
        if self.hosts.allows(host):
            return True
        parts = split_host(host) if host else None
        try:
            return parts is not None and bool(ipaddress.ip_address(parts[0].strip("[]")))
        except ValueError:
            return False

    def readiness_for(self, decision: Decision, reply: Reply) -> Reply:
        """``/readyz``'s answer as ``decision``'s client may see it: whole for those who see
        ``/_gateway/`` and ``/metrics`` (:meth:`insider`); for anyone else, each check's verdict
        without its text, which names database hosts, ports and users."""
        return reply if self.insider(decision.client, decision.host) else verdicts_only(reply)

    def decide(self, head: Head) -> Decision:
        """Decide what to do with ``head``."""
        # Every field at once, in _HeadFields' order: read one by one by name, as before,
        # they cost 1,700 instructions more a decision (callgrind).
        (method, root, path, query, host, scheme, server, client, offered, forwarded, header_size, header_nul,
         body, version, _) = head
        # request_id() and HostPolicy.allows(), inlined for the usual request (no ID
        # offered, a Host seen before): a call costs about 700 instructions (callgrind).
        rid = offered if offered and _TOKEN.fullmatch(offered) else "%032x" % next(new_request_id.counter)  # noqa: UP031
        proxied = False
        if forwarded and self.proxies and is_trusted(client, self.proxies):
            host, server, scheme, client, root, proxied = self.forward(head)
        # What a reply of the gateway's own keeps of the head (no closure: one per request
        # cost more than the tuple).
        seen = (rid, root, path, host, server, scheme, client, proxied)
        if path in HEALTH_PATHS:
            return own(seen, HEALTHY) if path == "/healthz" else own(seen, ready=True)
        insider = self.insider(client, host) if path in migration_page.PATHS or path == METRICS_PATH else False
        if insider and path in migration_page.PATHS:
            # Like the health answers: outside the apps, for operators by address.
            return own(seen, render=functools.partial(migration_page.render, self.table.route_table))
        if insider and path == METRICS_PATH and self.metrics is not None:
            return own(seen, render=self.metrics.render)
        if header_size > self.max_header_size:
            return own(seen, HEADERS_TOO_LARGE)
        if not (allowed if (allowed := self.hosts.seen.get(host)) is not None else self.hosts.allows(host)):
            return own(seen, BAD_HOST)
        if method.upper() in REFUSED_METHODS:  # Werkzeug and Django read the method in upper case
            return own(seen, BAD_METHOD)
        if "\x00" in path or "%00" in query:
            # Valid in a URL, but PostgreSQL refuses NUL in text, and no page means it.
            return own(seen, NUL_IN_URL)
        if header_nul:
            return own(seen, NUL_IN_HEADER)
        routes = self.table.route_table
        found = routes.match(decode_path(path), method) if routes else None
        set_cookie = None
        chain: Chain | None = None
        shadow: Shadow | None = None
        if found is not None and found.key is not None:
            # A rule of the shared URL space: nothing is stripped, the app sees the whole path.
            prefix, path_info, script_name = found.key, path, root
            spec = routes.specs[found.key]  # type: ignore[union-attr]
            routes.traffic.hit(found.key)  # type: ignore[union-attr]
            if spec.canary is not None:
                canary, set_cookie = self.canary(spec, head, root, scheme, None if spec.rollout is None else (
                    routes.rollouts.share(spec)))  # type: ignore[union-attr]
                if canary:
                    prefix = spec.canary_key
                    with routes.lock:  # type: ignore[union-attr]
                        routes.canaried[found.key] += 1  # type: ignore[union-attr]
                    routes.notify("canary", found.key)  # type: ignore[union-attr]
            if prefix is found.key:  # the rule's own apps, not its canary
                chain, shadow = self.plan(prefix, method)
            mount: Mount | None = self.table.routes[prefix]
        elif found is not None and found.allowed:
            return own(seen, plain(405, "Method Not Allowed.\n", ("Allow", ", ".join(found.allowed)),
                             reason="method_not_allowed"))
        else:
            mount, prefix, path_info = self.table.match(path)
            if mount is None:
                return own(seen, self.pages.reply(method, path, root))
            script_name = root + prefix
        limit = self.limits[prefix]
        reply = None
        if not path_info:
            location = self.cookie_path(script_name) + "/"
            reply = Reply(308, (("Location", f"{location}?{query}" if query else location),
                                ("Content-Length", "0")), b"")
        elif body is not None:
            if body.coding is not None:
                reply = framing_refused(body.coding, body.length, version)
            if reply is None and (length := body.length) is not None:
                if not (length.isascii() and length.isdigit()):
                    reply = BAD_LENGTH
                elif len(length) > 18 or int(length) > limit:  # int() refuses 4301 digits
                    reply = too_large(limit)
        if (reply is None and body is not None and body.type is not None and prefix in self.django
                and method not in _SAFE_METHODS and (charset := unreadable_form(body.type))):
            reply = bad_charset(charset)
        if (chain is not None or shadow is not None) and reply is None:
            # Without reply=: a call of 16 keywords cost 12,900 instructions against 900
            # with 15 (callgrind, CPython 3.11); a refused request runs no chain anyway.
            return Decision.of(request_id=rid, mount=mount, root=root, script_name=script_name,
                               path_info=path_info, host=host, server=server, scheme=scheme, client=client,
                               proxied=proxied, body_limit=limit, buffered=prefix not in self.streaming,
                               set_cookie=set_cookie, chain=chain, shadow=shadow)
        return Decision.of(request_id=rid, reply=reply, mount=mount, root=root, script_name=script_name,
                        path_info=path_info, host=host, server=server, scheme=scheme, client=client,
                        proxied=proxied, body_limit=limit, buffered=prefix not in self.streaming,
                        set_cookie=set_cookie)

    def plan(self, key: str, method: str) -> tuple[Chain | None, Shadow | None]:
        """What rule ``key`` does with a request by ``method`` beyond sending it to its first
        app: fall back along its :class:`Chain` (for the chain's methods), or compare with
        its :class:`Shadow` (GET and HEAD, while the comparisons' queue has room: a full
        one counts the request dropped now, before anything of it is copied)."""
        chain = self.chains.get(key)
        if chain is not None and method not in chain.methods:
            chain = None
        shadow = self.shadows.get(key)
        if shadow is not None and (method not in SAFE or not shadow.shadower.take(key)):
            shadow = None
        return chain, shadow

    def fell_back(self, chain: Chain) -> None:
        """An app of ``chain`` answered with a status it passes over: the next one is asked (counted)."""
        routes = self.table.route_table
        if routes:
            routes.fell_back(chain.key)

    def capture(self, request: Request, environ: dict[str, Any]) -> Capture:
        """Start the copy of the primary's answer to a request with a shadow comparison:
        ``environ`` is the request as the primary's app sees it (what the replays are
        made from). The adapter that serves the request feeds the copy and closes it."""
        shadow = request.decision.shadow
        assert shadow is not None
        candidate, primary = shadow.candidate, shadow.primary
        copy = Capture(shadow.shadower, shadow.key, environ,
                       ((candidate.app, candidate.interface), (primary.app, primary.interface)),
                       shadow.headers, shadow.credentials)
        request.shadow_copy = copy
        return copy

    def canary(self, spec: RouteSpec, head: Head, root: str, scheme: str, share: float | None = None
               ) -> tuple[bool, str | None]:
        """Whether this client goes to ``spec``'s canary, and the cookie to set if it is new
        (``share``: its rollout's share now, else the rule's).

        Sticky by the header the rule names (no header: not the canary), else by the
        ``gateway_canary`` cookie, which a client without one gets now.
        """
        fetch = head.fetch
        if spec.header is not None:
            value = fetch(spec.header) if fetch is not None else None
            return (value is not None and spec.chooses_canary(value, share)), None
        client = None
        if fetch is not None and (cookies := fetch("cookie")) and CANARY_COOKIE in cookies:
            try:
                client = parse_cookie(cookies).get(CANARY_COOKIE)
            except UnicodeDecodeError:  # Werkzeug reads cookies as UTF-8: these bytes are no canary ID
                client = None
        if client is not None and _CANARY_ID.fullmatch(client):
            return spec.chooses_canary(client, share), None
        client = secrets.token_hex(16)
        secure = "; Secure" if scheme in {"https", "wss"} else ""
        cookie = (f"{CANARY_COOKIE}={client}; Path={self.cookie_path(root) or '/'}; Max-Age=31536000; HttpOnly; "
                  f"SameSite=Lax{secure}")
        return spec.chooses_canary(client, share), cookie

    def begin(self, head: Head, started: float, protocol: str = "-", *, counted: bool = True) -> Request:
        """Decide, and start the request's state; the decision's request ID goes on every
        log record of this context.

        ``counted``: the request is in flight until the entry point calls :meth:`done`
        (a websocket is not counted).
        """
        decision = self.decide(head)
        # The shared session goes only to the apps that read it: any other could replay it.
        hidden = (self.shared_cookie[:-1] if self.shared_cookie is not None and decision.mount is not None
                  and decision.mount.prefix not in self.signin else None)
        request = Request(head, decision, started, protocol, hidden)
        REQUEST_ID.set(decision.request_id)
        if counted:
            if self.metrics is not None and decision.render is None:  # a scrape does not count itself
                self.metrics.started()
            if self.tracing is not None:
                self.tracing.start(request)
        return request

    @property
    def observing(self) -> bool:
        """Whether the entry points must note each response's status and size for :meth:`done`."""
        return (self.measured or self.rollouts is not None
                or access.logger.isEnabledFor(logging.INFO))  # access.enabled(), without the call

    def done(self, request: Request) -> None:
        """A request is answered (``request.status``, ``request.size`` bytes of body): its
        access-log line, its metrics and the end of its span."""
        if access.enabled():
            self.log(request)
        if self.metrics is not None:
            self.metrics.finished(request.decision.mount_label, request.status, time.perf_counter() - request.started,
                                  in_flight=request.decision.render is None)
        if self.tracing is not None:
            self.tracing.end(request)
        if (rollouts := self.rollouts) is not None and (mount := request.decision.mount) is not None and (
                mount.prefix in rollouts.watched):
            rollouts.record(mount.prefix, request.status, time.perf_counter() - request.started,
                            request.head.method, request.decision.path_info)

    def forward(self, head: Head) -> tuple[str | None, tuple[str, int | None], str, str | None, str, bool]:
        """Apply one hop of a trusted proxy's well-formed ``X-Forwarded-*`` headers."""
        fwd = head.forwarded
        host, server, scheme, client, root = head.host, head.server, head.scheme, head.client, head.root_path
        proxied = False
        if "for" in fwd:
            if (address := valid_client(last_hop(fwd["for"]))) is not None:
                client, proxied = address, True
            else:
                # A client the proxy could not name (``unknown``, ``host:port``, nothing) is
                # unknown, never the proxy itself: that would show it the operators' pages.
                self.ignore("for", fwd["for"])
                client, proxied = None, True
        forwarded_proto = False
        if "proto" in fwd:
            proto = last_hop(fwd["proto"]).lower()
            if proto in {"http", "https"}:
                websocket = head.scheme in {"ws", "wss"}
                scheme = ("wss" if proto == "https" else "ws") if websocket else proto
                proxied = forwarded_proto = True
            else:
                self.ignore("proto", fwd["proto"])
        forwarded_host = False
        if "host" in fwd:
            value = last_hop(fwd["host"])
            if (parts := split_host(value)) is not None:
                host, proxied, forwarded_host = value, True, True
                server = (parts[0], parts[1] or DEFAULT_PORTS[scheme])
            else:
                self.ignore("host", fwd["host"])
        if forwarded_proto and not forwarded_host and host is not None and (parts := split_host(host)) is not None:
            # The client reached the proxy by this scheme, at the Host it asked for.
            server = (parts[0], parts[1] or DEFAULT_PORTS[scheme])
        if "port" in fwd:
            if (port := valid_port(last_hop(fwd["port"]))) is not None:
                name = server[0]
                if host is not None and (parts := split_host(host)) is not None:
                    name = parts[0]
                server = (name, port)
                host = name if port == DEFAULT_PORTS.get(scheme) else f"{name}:{port}"
                proxied = True
            else:
                self.ignore("port", fwd["port"])
        if "prefix" in fwd:
            if (prefix := valid_prefix(last_hop(fwd["prefix"]))) is not None:
                root = prefix
            else:
                self.ignore("prefix", fwd["prefix"])
        return host, server, scheme, client, root, proxied

    def ignore(self, name: str, value: str) -> None:
        """Count a malformed forwarded header, and say so at debug level."""
        self.ignored[name] += 1
        logger.debug("Ignored X-Forwarded-%s from a trusted proxy: %r is not valid.", name.title(), value[:100])

    def complete(self, headers: list[tuple[Any, Any]], decision: Decision) -> None:
        """Finish a response's headers in place, for any app and the gateway's own replies.

        ``headers`` are text (WSGI) or bytes (ASGI), left in their form: only the values
        of ``Set-Cookie`` and ``Content-Security-Policy`` are read as text. Cookies of a
        mount are scoped to it; the security headers the app did not set, HSTS over HTTPS
        when ``GATEWAY_HTTPS`` is on, the request ID, and ``Connection: close`` while
        draining are added.
        """
        raw = bool(headers) and type(headers[0][0]) is not str  # one form for the whole list
        present = set()
        frame_ancestors = False
        dropped = None
        for i, (name, value) in enumerate(headers):
            if name in _PLAIN_HEADERS:
                continue  # a header complete() neither reads nor adds, as apps spell it
            if (lower := _SPELLED_SECURITY.get(name)) is not None:  # Django sets all four
                present.add(lower)
                continue
            lower = name.decode("latin-1").lower() if raw else name.lower()
            present.add(lower)
            if lower == "set-cookie":
                if decision.mount is not None:
                    text = self.scope(value.decode("latin-1") if raw else value, decision)
                    if text is None:
                        dropped = [*(dropped or ()), i]
                    else:
                        headers[i] = (name, text.encode("latin-1") if raw else text)
            elif lower == "content-security-policy" and "frame-ancestors" in (
                    value.decode("latin-1") if raw else value).lower():
                frame_ancestors = True
        if dropped is not None:
            for i in reversed(dropped):
                del headers[i]
        if frame_ancestors or not present.isdisjoint(_SECURITY_NAMES):
            if not present.issuperset(_SECURITY_NAMES):  # Django's responses carry all four
                added = [(name, value) for lower, name, value in _SECURITY
                         if lower not in present and not (frame_ancestors and lower == "x-frame-options")]
                headers.extend(added if not raw else [(name.lower().encode("latin-1"), value.encode("latin-1"))
                                                      for name, value in added])
        else:  # the usual case: the app set none of them
            headers.extend(_RAW_SECURITY_HEADERS if raw else SECURITY_HEADERS)
        rid = decision.request_id
        headers.append((b"x-request-id", rid.encode("latin-1")) if raw else ("X-Request-ID", rid))
        if ((self.config.https and decision.scheme in {"https", "wss"} and "strict-transport-security" not in present)
                or decision.set_cookie is not None or self.draining
                or (self.varies and decision.mount is not None and decision.mount.prefix in self.varies)):
            self.complete_rarely(headers, decision, raw, present)

    def complete_rarely(self, headers: list[tuple[Any, Any]], decision: Decision, raw: bool, present: set[str]
                        ) -> None:
        """The headers :meth:`complete` adds only on some responses: HSTS over HTTPS, the
        canary's cookie, a canary rule's ``Vary``, ``Connection: close`` while draining."""
        added = []
        if self.config.https and decision.scheme in {"https", "wss"} and "strict-transport-security" not in present:
            added.append(("Strict-Transport-Security", HSTS))
        if decision.set_cookie is not None:
            added.append(("Set-Cookie", decision.set_cookie))
        if self.varies and decision.mount is not None and (vary := self.varies.get(decision.mount.prefix)):
            added.append(("Vary", vary))  # a line of its own: the app's Vary, if any, stays as it is
        if self.draining:
            added.append(("Connection", "close"))
        if raw:
            headers.extend((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in added)
        else:
            headers.extend(added)

    def scope(self, cookie: str, decision: Decision) -> str | None:
        """A mount's ``Set-Cookie`` value, scoped to the mount (:func:`scope_cookie`), or to
        the whole site for the one session both apps read (``GATEWAY_SHARED_SIGNIN``); None
        for a cookie the mount may not set, which is dropped.

        The names the gateway reserves are their owners' only: ``gateway_canary`` the
        gateway's, Django's session and CSRF cookies (``sessionid``, or the shared sign-in's
        name, and ``csrftoken``) a Django mount's. Any other app setting them could fix a
        session on the apps that trust them (session fixation): a rule's app sets its
        cookies for the whole site, and the shared session is the whole site's. Deleting
        one (an empty value) stays allowed: a Flask sign-out deletes the shared session's.
        The name is the one the cookie comes back under (:func:`returned_name`).
        """
        name, deletion = returned_name(cookie)
        if (name in self.reserved and not deletion
                and (name == CANARY_COOKIE or decision.mount is None or decision.mount.prefix not in self.django)):
            self.refuse_cookie(name, decision)
            return None
        shared = self.shared_cookie
        if shared is not None and name == shared[:-1]:
            return scope_cookie(cookie, self.cookie_path(decision.root))
        return scope_cookie(cookie, self.cookie_path(decision.script_name), self.cookie_path(decision.root))

    def refuse_cookie(self, name: str, decision: Decision) -> None:
        """Say once per mount and name that a cookie it may not set was dropped."""
        key = (decision.mount_label, name)
        if key not in self.refused_cookies and len(self.refused_cookies) < 256:
            self.refused_cookies.add(key)
            logger.warning("The app at %s set the cookie %r, which only %s sets; it was dropped.",
                           decision.mount_label, name, "the gateway" if name == CANARY_COOKIE else "Django")

    def cookie_path(self, script_name: str) -> str:
        """A mount's full script name, quoted for a cookie's ``Path`` (there are few distinct ones)."""
        path = self.cookie_paths.get(script_name)
        if path is None:
            path = quote(script_name.encode("latin-1"), safe=_COOKIE_PATH_SAFE)
            if len(self.cookie_paths) < 256:  # bounded: trusted prefixes could vary
                self.cookie_paths[script_name] = path
        return path

    def reply_headers(self, reply: Reply, decision: Decision) -> list[tuple[str, str]]:
        """The completed headers of one of the gateway's own replies (a refusal is counted)."""
        if reply.reason and self.metrics is not None:
            self.metrics.refused(reply.reason)
        headers = list(reply.headers)
        self.complete(headers, decision)
        return headers

    def log(self, request: Request) -> None:
        """Queue the request's access-log line (:meth:`done` checked that the log is on).

        The target is the path the client asked for (a trusted proxy's prefix included)
        and its query.
        """
        decision, head = request.decision, request.head
        duration = (time.perf_counter() - request.started) * 1000
        path = decision.script_name + decision.path_info
        target = f"{path}?{head.query}" if head.query else path
        if not target.isprintable():  # a decoded %0d%0a must not start a line of its own
            target = target.encode("unicode_escape").decode("ascii")
        access.put((time.time(), decision.request_id, decision.client or "-", head.method, target, request.protocol,
                    request.status, request.size, duration, decision.mount_label))


def returned_name(cookie: str) -> tuple[str, bool]:
    """The name a ``Set-Cookie`` value comes back under in the ``Cookie`` header, and
    whether it deletes that cookie (an empty value).

    As browsers read it (RFC 6265, 5.2): the name and value are what comes before the
    first ``;``, split at the first ``=``. A cookie with no name (``=sessionid=x``, or
    ``sessionid`` with no ``=``) is kept, and sent back as its value alone,
    ``sessionid=x``, which Django and Werkzeug read as a ``sessionid`` cookie: that is its
    name here, and it deletes nothing (the cookie it names stays beside it).
    """
    pair = cookie.partition(";")[0]
    name, equals, value = pair.partition("=")
    name = name.strip()
    if equals and name:
        return name, value.strip() in ("", '""')
    returned, _, value = (value if equals else pair).partition("=")
    return returned.strip(), False


def scope_cookie(value: str, path: str, root: str = "") -> str:
    """Return a ``Set-Cookie`` value whose path lies inside ``path`` (a mount's).

    Every ``Path`` attribute goes and one takes their place, so that a second ``Path=/``
    cannot undo the first: the app's last path (browsers use the last) if it lies inside
    the mount; the same below ``root`` (a trusted proxy's prefix) when the app named its
    mount without it (Flask's ``APPLICATION_ROOT``, Django's ``FORCE_SCRIPT_NAME``); the
    mount with the app's path under it if that path is the site root or outside the
    mount; and the mount itself when the app set none. Leading white space goes too:
    Django 5.2 writes one, which h11 rejects.
    """
    parts = value.lstrip().split(";")
    kept = [parts[0]]
    wanted = ""
    for part in parts[1:]:
        name, _, attr = part.partition("=")
        if name.strip().lower() == "path":
            wanted = attr.strip()
        else:
            kept.append(part)
    if not path:  # an app of the shared URL space (route rules): the whole site is its
        scoped = wanted if wanted.startswith("/") else "/"
    elif wanted == path or wanted.startswith(path + "/"):
        scoped = wanted
    elif root and wanted.startswith("/") and (root + wanted == path or (root + wanted).startswith(path + "/")):
        scoped = root + wanted
    elif wanted.startswith("/") and wanted != "/":
        scoped = path + wanted
    else:
        scoped = path
    kept.append(f" Path={scoped}")
    return ";".join(kept)
