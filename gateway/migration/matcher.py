"""Werkzeug's rule matching, compiled to a few regular expressions a request.

Werkzeug's ``Map`` matches a path with a state machine, walked in Python a segment at a
time: 9 to 13 us a path on our CI machines, whatever the number of rules (bench/routes.py).
That walk tries, at each segment, the static transition first, then the dynamic ones in
the ``Map``'s order of weights, and backtracks. So for one path, the rules are tried in
the order of a walk over the machine's states, which depends on the rules alone, with
two twists for a trailing slash (a rule ``/a`` also matches ``/a/``, after the states
below it; a rule ``/a/`` also matches ``/a``, just after the rules of ``/a``). This
module numbers the rules, and those two variants, in that order, and writes each as one
regular expression over the whole path. The rules whose static segments a path begins
with are then tried at once, as one alternation in that order (first match wins), a
short one for each static prefix.

Where it cannot be sure to answer as Werkzeug does, it does not answer, and the caller
asks Werkzeug (:meth:`Compiled.match` returns None):

- a path that some rule matches only for other methods (Werkzeug's 405, or a 404 when
  only a trailing-slash variant matches);
- a path under a rule with a converter it does not know (its ``to_python`` may refuse a
  value, and Werkzeug then answers 404 without trying the next rule), with arguments
  that make it refuse values (``int(min=1)``), or with a ``path`` converter ending in a
  slash;
- a path under a static prefix that more than :data:`MOST_ALTERNATIVES` variants share
  (Python's ``re`` tries an alternation's branches one by one: 1,000 of them took
  470 us here);
- a path under a rule that redirects in Werkzeug (``redirect_to``, an ``alias``, or a
  ``redirect_defaults`` redirect to another rule of its endpoint);
- a path longer than Python's limit on an integer's digits
  (:func:`sys.get_int_max_str_digits`, 4,300) when some rule has an ``int``: Werkzeug's
  ``int`` converter refuses such a value after its regex took it, and answers 404.

Python's ``re`` backtracks. A regular expression of a rule stays linear in the path's
length only if it has at most one ``path`` converter and at most one converter of varying
length in each segment: :func:`backtracking` says why a rule breaks this, and the
gateway refuses such rules when it reads its file (three ``path`` converters took 50 s
on a 1.6 KB path).

The gateway's own rules (:data:`CONVERTERS`) match what both Werkzeug's and Django's
converters of the same name accept: ``int`` and ``float`` take ASCII digits only
(Werkzeug's regex takes any Unicode digit, such as U+0661, which ``int()`` reads as 1
and Django's ``[0-9]+`` refuses), ``path`` takes no newline (Werkzeug's ``[^/].*?`` takes one as its
first character, Django's ``.+`` none), and ``uuid`` only lower-case hex (Django's).

It reads Werkzeug's state machine (``Map._matcher``), which is not public; with a
Werkzeug that has none, :func:`compile_map` returns None and every path goes to Werkzeug.
tests/unit/test_matcher.py checks the two agree on generated rule tables and paths.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any

from werkzeug.routing import Map, Rule, converters

#: Variants under one static prefix beyond which that prefix's paths go to Werkzeug.
MOST_ALTERNATIVES = 32

_GROUP = re.compile(r"\(\?P<__werkzeug_\d+>")
_DIGITS = re.compile(r"\d+")  # what Werkzeug's int takes, Unicode digits included


class IntegerConverter(converters.IntegerConverter):
    """Werkzeug's ``int`` on ASCII digits only, as Django's ``int``."""

    regex = "[0-9]+"


class FloatConverter(converters.FloatConverter):
    """Werkzeug's ``float`` on ASCII digits only."""

    regex = r"[0-9]+\.[0-9]+"


class PathConverter(converters.PathConverter):
    """Werkzeug's ``path`` without newlines, as Django's ``path`` (``.+``)."""

    regex = "[^/\n][^\n]*?"


class UUIDConverter(converters.UUIDConverter):
    """Werkzeug's ``uuid`` in lower-case hex only, as Django's ``uuid``."""

    regex = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


#: The converters of the gateway's rules: Werkzeug's, narrowed to what Django's take too.
CONVERTERS: dict[str, type[converters.BaseConverter]] = {
    "int": IntegerConverter, "float": FloatConverter, "path": PathConverter, "uuid": UUIDConverter}
#: Converters whose ``to_python`` takes whatever their regex takes.
_PLAIN = (converters.UnicodeConverter, converters.PathConverter, PathConverter, converters.UUIDConverter,
          UUIDConverter)
_NUMBERS = (converters.IntegerConverter, converters.FloatConverter, IntegerConverter, FloatConverter)


@dataclass
class _Variant:
    """One way a rule matches: its place in Werkzeug's order, and its segments (a static
    text, or a regular expression; a final one takes the rest of the path)."""

    place: int
    rule: Rule
    pieces: list[tuple[bool, str]]  # (static, text or regex)


@dataclass
class _Bucket:
    """The variants whose static segments are a path's first ones, and the buckets one
    static segment further."""

    variants: list[_Variant] = field(default_factory=list)
    children: dict[str, _Bucket] = field(default_factory=dict)
    deferred: bool = False  # a path reaching here goes to Werkzeug
    #: Whether the alternations hold the variants of the buckets below too (no more than
    #: :data:`MOST_ALTERNATIVES`, none deferred): a path's walk ends here.
    flat: bool = False
    #: One alternation per method the rules name, one for other methods (None), and one
    #: for any method (``"*"``), with the variant each branch stands for.
    patterns: dict[str | None, tuple[re.Pattern[str] | None, list[_Variant]]] = field(default_factory=dict)


class Compiled:
    """A ``Map``'s rules as regular expressions under a trie of static segments."""

    def __init__(self, root: _Bucket, methods: frozenset[str], ints: bool = False) -> None:
        self.root = root
        self.methods = methods
        #: The buckets of the first segments that rules begin with, when every rule begins
        #: with static text: a path beginning otherwise is a 404 at once (the prefix
        #: mounts' paths), and the others start their walk two buckets down.
        top = root.children.get("")
        #: Whether a rule compiled here has an ``int``, whose values Python may refuse.
        self.ints = ints
        #: Each regular expression, by its text (a reload reuses them).
        self.made: dict[str, re.Pattern[str]] = {}
        self.firsts: dict[str, _Bucket] | None = None
        if top is not None and not (root.variants or root.deferred or top.variants or top.deferred):
            self.firsts = top.children

    def match(self, path: str, method: str) -> Rule | bool | None:
        """The rule Werkzeug would match, False for none (a 404), or None when Werkzeug
        must answer (see the module's docstring)."""
        if self.ints and len(path) > (limit := sys.get_int_max_str_digits() or len(path)) and max(
                map(len, _DIGITS.findall(path)), default=0) > limit:
            return None  # a value of more digits than int() reads: Werkzeug's 404
        if not path.startswith("/") or path.startswith("//"):
            if not path:
                return None  # no segment at all: Werkzeug's own case
            path = "/" + path.lstrip("/")  # as MapAdapter.match does
        if self.firsts is not None:
            first = self.firsts.get(path[1:].partition("/")[0])
            if first is None:
                return False
            method = method.upper()
            key = method if method in self.methods else None
            if first.flat:  # the usual case: one regular expression answers
                pattern, variants = first.patterns[key]
                found = pattern.match(path) if pattern is not None else None
                if found is not None:
                    return variants[found.lastindex - 1].rule  # type: ignore[operator]
                pattern = first.patterns["*"][0]
                return None if pattern is not None and pattern.match(path) is not None else False
            bucket, depth = first, 2
        else:
            method = method.upper()
            key = method if method in self.methods else None
            bucket, depth = self.root, 0
        segments = path.split("/")
        best: _Variant | None = None
        seen = []
        while True:
            if bucket.deferred:
                return None
            if bucket.variants or bucket.flat:
                pattern, variants = bucket.patterns[key]
                found = pattern.match(path) if pattern is not None else None
                if found is not None:
                    variant = variants[found.lastindex - 1]  # type: ignore[operator]
                    if best is None or variant.place < best.place:
                        best = variant
                elif best is None:
                    seen.append(bucket)
            if bucket.flat or depth == len(segments):
                break
            child = bucket.children.get(segments[depth])
            if child is None:
                break
            bucket, depth = child, depth + 1
        if best is not None:
            return best.rule
        for each in seen:
            pattern = each.patterns["*"][0]
            if pattern is not None and pattern.match(path) is not None:
                return None  # matched for other methods only: Werkzeug says 405 or 404
        return False


def compile_map(rules_map: Map, previous: Compiled | None = None) -> Compiled | None:
    """Compile ``rules_map`` (built with ``strict_slashes=False``), or None if this
    Werkzeug keeps its rules in a way this module does not read.

    ``previous``: the compiled rules this replaces (a reload); its regular expressions
    are reused where the new rules make the same ones. Compiling one took 200 us here, and
    a file of 10,000 rules makes about 10,000 (one per static prefix).
    """
    rules_map.update()
    try:
        return _compile_map(rules_map, {} if previous is None else dict(previous.made))
    except (AttributeError, KeyError, TypeError, ValueError):  # Werkzeug's internals have changed
        return None


def _compile_map(rules_map: Map, made: dict[str, re.Pattern[str]]) -> Compiled | None:
    domain = rules_map._matcher._root.static[""]
    if rules_map.host_matching or rules_map.merge_slashes or any(
            rule.strict_slashes or rule.websocket or rule.subdomain for rule in rules_map.iter_rules()):
        return None
    places: dict[tuple[int, str], int] = {}
    _number(domain, places, [0])
    root = _Bucket()
    methods: set[str] = set()
    ints = False
    for rule in rules_map.iter_rules():
        if rule.build_only:  # never matched
            continue
        methods |= rule.methods or set()
        parts = [(part.static, part.content, part.final, part.suffixed) for part in rule._parts[1:]]
        if not _simple(rule) or _redirects(rules_map, rule) or any(suffixed for *_, suffixed in parts):
            _bucket(root, _static_prefix([(s, c) for s, c, *_ in parts[:-1]])).deferred = True
            continue
        ints = ints or any(isinstance(c, converters.IntegerConverter) for c in rule._converters.values())
        pieces = [(static, content if static else _GROUP.sub("(?:", content).removesuffix(r"\Z"))
                  for static, content, _, _ in parts]
        variants = [_Variant(places[id(rule), "exact"], rule, pieces),
                    _Variant(places[id(rule), "slash added"], rule, [*pieces, (True, "")])]
        if pieces[-1] == (True, "") and len(pieces) > 2:  # "/" without its slash is "", Werkzeug's case
            variants.append(_Variant(places[id(rule), "slash dropped"], rule, pieces[:-1]))
        if parts[-1][2]:
            variants.pop(1)  # a final part takes a trailing slash itself
        for variant in variants:
            _bucket(root, _static_prefix(variant.pieces)).variants.append(variant)
    used: dict[str, re.Pattern[str]] = {}
    _build(root, frozenset(methods), made, used)
    compiled = Compiled(root, frozenset(methods), ints)
    compiled.made = used
    return compiled


def _number(state: Any, places: dict[tuple[int, str], int], counter: list[int]) -> None:
    """Number the rules' variants in the order Werkzeug's matcher tries them (its
    ``StateMachineMatcher.match``): a state's rules when the path ends there, then the
    rules of its ``""`` state (a path without the rule's trailing slash), then the states
    below (static before dynamic, dynamic in the map's order), and last the state's rules
    once more, for a path that goes on with one empty segment (a slash added)."""
    def place(rule: Rule, kind: str) -> None:
        places[id(rule), kind] = counter[0]
        counter[0] += 1

    for rule in state.rules:
        place(rule, "exact")
    if "" in state.static:
        for rule in state.static[""].rules:
            place(rule, "slash dropped")
    for child in state.static.values():
        _number(child, places, counter)
    for _, child in state.dynamic:
        _number(child, places, counter)
    for rule in state.rules:
        place(rule, "slash added")


def _redirects(rules_map: Map, rule: Rule) -> bool:
    """Whether Werkzeug may answer a path of ``rule`` with a redirect (``MapAdapter.match``)."""
    if rule.redirect_to is not None or (rule.alias and rules_map.redirect_defaults):
        return True
    return rules_map.redirect_defaults and any(
        other is not rule and other.defaults for other in rules_map._rules_by_endpoint[rule.endpoint])


def _simple(rule: Rule) -> bool:
    """Whether every converter of ``rule`` matches a value by its regex alone (its
    ``to_python`` refuses nothing the regex lets through, but the digits of an ``int``)
    and within one segment, but a ``path``."""
    for converter in rule._converters.values():
        kind = type(converter)
        if kind in _PLAIN:
            continue
        if isinstance(converter, converters.NumberConverter) and kind in _NUMBERS and not (
                converter.fixed_digits or converter.min is not None or converter.max is not None):
            continue
        if kind is converters.AnyConverter and "/" not in converter.regex:
            continue
        return False
    return True


def _static_prefix(pieces: list[tuple[bool, str]]) -> list[str]:
    prefix = []
    for static, text in pieces:
        if not static:
            break
        prefix.append(text)
    return prefix


def _bucket(root: _Bucket, prefix: list[str]) -> _Bucket:
    bucket = root
    for segment in prefix:
        bucket = bucket.children.setdefault(segment, _Bucket())
    return bucket


def _build(bucket: _Bucket, methods: frozenset[str], made: dict[str, re.Pattern[str]],
           used: dict[str, re.Pattern[str]]) -> list[_Variant] | None:
    """Compile each bucket's alternations: its variants in Werkzeug's order, each a
    branch over the whole path, and those of the buckets below when they are few (one
    regular expression answers the path then). Returns the variants of the bucket and
    those below, or None when some are left to Werkzeug or they are too many."""
    below: list[_Variant] | None = []
    for child in bucket.children.values():
        theirs = _build(child, methods, made, used)
        below = None if theirs is None or below is None else below + theirs
    if len(bucket.variants) > MOST_ALTERNATIVES:
        bucket.deferred = True
    if bucket.deferred:
        return None
    if below is not None and len(bucket.variants) + len(below) <= MOST_ALTERNATIVES:
        bucket.flat = True
        _compile(bucket, sorted(bucket.variants + below, key=lambda variant: variant.place), methods, made, used)
        return bucket.variants + below
    _compile(bucket, sorted(bucket.variants, key=lambda variant: variant.place), methods, made, used)
    return None


def _compile(bucket: _Bucket, variants: list[_Variant], methods: frozenset[str], made: dict[str, re.Pattern[str]],
             used: dict[str, re.Pattern[str]]) -> None:
    """Compile the alternations of ``bucket``; those already ``made`` (for other methods,
    or by the rules a reload replaces) are reused, and each one used is kept in ``used``."""
    for key in [*methods, None, "*"]:
        chosen = [v for v in variants if key == "*" or v.rule.methods is None
                  or (key is not None and key in v.rule.methods)]
        branches = "|".join(f"({_regex(v.pieces)}\\Z)" for v in chosen)
        if chosen and branches not in made:
            made[branches] = re.compile(branches)
        if chosen:
            used[branches] = made[branches]
        bucket.patterns[key] = (made[branches] if chosen else None, chosen)


def _regex(pieces: list[tuple[bool, str]]) -> str:
    return "/".join(re.escape(text) if static else text for static, text in pieces)


def backtracking(rule: Rule) -> str | None:
    """Why matching ``rule`` (bound to a ``Map``) could take more than linear time in the
    path's length, or None.

    Python's ``re`` backtracks: ``[^/].*?/[^/].*?/raw`` tries every way to share a path
    between two ``path`` converters, and ``[^/]+-[^/]+`` every way to cut a segment in
    two. With one ``path`` converter in a rule, and one converter of varying length in
    each segment (the ``path`` counting in the segment it starts), what follows the
    ``path`` is tried once at each slash, over the few segments it spans: linear.
    """
    paths = [name for name, converter in rule._converters.items() if not converter.part_isolating]
    if len(paths) > 1:
        return (f"it has {len(paths)} path converters ({', '.join(paths)}), and the ways to share a path "
                "between them grow with its length: keep one, and make the others one segment each (<name>)")
    trace = rule._trace[rule._trace.index((False, "|")) + 1:]
    segment: list[str] = []
    for dynamic, data in [*trace, (False, "/")]:
        if not dynamic:
            if "/" in data:
                if len(segment) > 1:
                    return (f"{', '.join(segment)} share a segment and vary in length, so each way to cut "
                            "the segment between them is tried: put each in a segment of its own, or give all "
                            "but one a fixed length (string(length=8), uuid)")
                segment = []
            continue
        if not _fixed_length(rule._converters[data]):
            segment.append(data)
    return None


def _fixed_length(converter: converters.BaseConverter) -> bool:
    """Whether every value ``converter`` matches has the same length (one way to match)."""
    if isinstance(converter, converters.UUIDConverter):
        return True
    if isinstance(converter, converters.AnyConverter):
        return len({len(item) for item in converter.items}) == 1
    return isinstance(converter, converters.UnicodeConverter) and re.fullmatch(
        r"\[\^/\]\{\d+\}", converter.regex) is not None
