"""MountTable.match: its shortcut for tables of one-segment prefixes gives what the walk of
Werkzeug's DispatcherMiddleware gives, for any path."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.core.mounts import Mount, MountTable


def walk(prefixes: list[str], path: str) -> tuple[str | None, str, str]:
    """DispatcherMiddleware's walk: drop the last segment until a prefix matches."""
    script, path_info = path, ""
    while "/" in script:
        if script in prefixes:
            return script, script, path_info
        script, last = script.rsplit("/", 1)
        path_info = f"/{last}{path_info}"
    if script in prefixes:
        return script, script, path_info
    return None, "", path


def table_of(prefixes: list[str]) -> MountTable:
    app: Any = object()
    return MountTable([Mount(prefix, "x:y", "wsgi", app) for prefix in prefixes])


segment = st.sampled_from(["flask", "django", "a", "", "flaskx", "%2F", "x.y"])
paths = st.lists(segment, max_size=4).map(lambda parts: "/" + "/".join(parts)) | st.text(max_size=12)


@given(st.sampled_from([["/flask", "/django"], ["/flask", "/flask/a", "/django"], ["/a"], []]), paths)
def test_the_shortcut_and_the_walk_agree(prefixes: list[str], path: str) -> None:
    mount, script, path_info = table_of(prefixes).match(path)
    assert (mount.prefix if mount is not None else None, script, path_info) == walk(prefixes, path)


def test_a_deeper_prefix_wins_over_its_first_segment() -> None:
    table = table_of(["/flask", "/flask/admin"])
    assert not table.one_segment
    mount, script, path_info = table.match("/flask/admin/users")
    assert (mount.prefix if mount else None, script, path_info) == ("/flask/admin", "/flask/admin", "/users")
    shallow = table_of(["/flask", "/django"])
    assert shallow.one_segment
    assert shallow.match("/flask/admin/users")[1:] == ("/flask", "/admin/users")


class CountingDict(dict):  # type: ignore[type-arg]
    """A dict that counts the keys it is asked whether it holds."""

    asked = 0

    def __contains__(self, key: object) -> bool:
        self.asked += 1
        return super().__contains__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self.asked += 1
        return super().get(key, default)


long_paths = st.lists(segment, min_size=5, max_size=40).map(lambda parts: "/" + "/".join(parts))


@given(st.sampled_from([["/flask", "/flask/a", "/django"], ["/a/b/c", "/flask"], ["/a"], []]), paths | long_paths)
def test_the_walk_from_the_longest_prefix_agrees_with_the_whole_walk(prefixes: list[str], path: str) -> None:
    mount, script, path_info = table_of(prefixes).match(path)
    assert (mount.prefix if mount is not None else None, script, path_info) == walk(prefixes, path)


def test_a_path_of_many_segments_is_matched_by_its_first_ones_alone() -> None:
    """A path of thousands of segments (a 58 KB URL of slashes held uvicorn's event loop 1.4 s
    per request, 13 s for eight) asks the table about at most as many prefixes as its longest
    has characters, not one per segment of the path."""
    for prefixes in (["/flask", "/django"], ["/flask", "/flask/admin"]):
        table = table_of(prefixes)
        for path in ("/" + "/" * 29_000, "/zz/" + "b/" * 29_000, "/flask/admin" + "/" * 29_000):
            table.mounts = CountingDict(table.mounts)
            mount, script, path_info = table.match(path)
            assert (mount.prefix if mount is not None else None, script, path_info) == walk(prefixes, path)
            assert table.mounts.asked <= max(map(len, prefixes)) + 2, (prefixes, path[:20], table.mounts.asked)
