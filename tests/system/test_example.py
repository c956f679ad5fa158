"""The worked example of a migration (examples/migration/), started as its README says:
``examples/migration/run.sh`` with a data directory of its own, on a real server.

The legacy Flask shop answers /shop/; half of the clients get the Django port's cart,
each always the same one; item pages are the legacy app's, shadowed on the port, whose
one deliberate difference (the espresso machine's price, $1299.00 for $1,299.00) is
reported, while the CSRF tokens and times that change on every page are not.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, ServerProcess, free_port, server_env

pytestmark = pytest.mark.server

EXAMPLE = ROOT / "examples" / "migration"
RUN = EXAMPLE / "run.sh"
LEGACY, NEW = "legacy shop (Flask)", "new shop (Django)"
CANARY_ID = re.compile(r"gateway_canary=([0-9a-f]{32});")
TOKEN = re.compile(r'name="csrf_token" value="([0-9a-f]*)"')
# The shadow column of the migration page (/_gateway/), for the one rule in shadow mode.
SHADOW_CELL = re.compile(r"new: \S+ equal of (\d+) compared \((\d+) different, (\d+) dropped\)")


def start(data_dir: Path) -> ServerProcess:
    """The example as its README starts it: ``GATEWAY_DATA_DIR=... examples/migration/run.sh --port N``."""
    port = free_port()
    return ServerProcess([str(RUN), "--port", str(port)], port=port, env=server_env(data_dir),
                         log_path=data_dir / "server.log", ready_path="/shop/")


def run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Another command through run.sh (``routes``, ``diff``)."""
    return subprocess.run([str(RUN), *args], cwd=ROOT, env=server_env(data_dir), capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start(tmp_path_factory.mktemp("example"))
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.log, server.log


def served_by(answer: httpx.Response) -> str:
    return answer.headers["X-Served-By"]


def test_the_shop_is_the_legacy_flask_apps_and_the_site_still_works(example: ServerProcess) -> None:
    with httpx.Client(base_url=example.url, timeout=10) as client:
        shop = client.get("/shop/")
        assert (shop.status_code, served_by(shop)) == (200, LEGACY)
        assert '<a href="/shop/items/4">Espresso machine</a> <span class="price">$1,299.00</span>' in shop.text
        item = client.get("/shop/items/2")
        assert (item.status_code, served_by(item)) == (200, LEGACY)
        # The site's own mounts are untouched by the port joining its Django project.
        assert client.get("/django/").text.count("Hello from Django") >= 1
        assert client.get("/flask/").status_code == 200
        assert client.get("/readyz").json()["status"] == "ok"


def test_half_the_clients_get_the_ports_cart_and_each_keeps_its_app(example: ServerProcess) -> None:
    chosen: dict[str, str] = {}
    with httpx.Client(base_url=example.url, timeout=10) as client:
        for _ in range(400):  # 400 clients without cookies
            client.cookies.clear()
            answer = client.get("/shop/cart")
            assert answer.status_code == 200
            ids = CANARY_ID.findall("\n".join(answer.headers.get_list("set-cookie")))
            assert len(ids) == 1, answer.headers
            chosen[ids[0]] = served_by(answer)
        assert len(chosen) == 400
        share = sum(app == NEW for app in chosen.values()) / len(chosen)
        assert set(chosen.values()) == {LEGACY, NEW}
        assert 0.35 <= share <= 0.65, share
        for client_id, app in chosen.items():  # each sends its cookie back: the same app, no new cookie
            client.cookies.clear()
            again = client.get("/shop/cart", headers={"Cookie": f"gateway_canary={client_id}"})
            assert (again.status_code, served_by(again)) == (200, app)
            assert not CANARY_ID.search("\n".join(again.headers.get_list("set-cookie")))
        # Changing the cart is the legacy app's, for every client.
        for client_id in list(chosen)[:20]:
            client.cookies.clear()
            post = client.post("/shop/cart", data={"item": "1"}, headers={"Cookie": f"gateway_canary={client_id}"})
            assert (post.status_code, served_by(post)) == (400, LEGACY)  # no CSRF token: refused, by Flask


def test_both_apps_show_the_cart_the_legacy_app_keeps(example: ServerProcess) -> None:
    with httpx.Client(base_url=example.url, timeout=10) as client:
        token = TOKEN.search(client.get("/shop/items/4").text).group(1)  # type: ignore[union-attr]
        for item in ("4", "2", "4"):
            added = client.post("/shop/cart", data={"csrf_token": token, "item": item})
            assert (added.status_code, added.headers["Location"]) == (303, "/shop/cart")

        def cart(n: int) -> httpx.Response:
            """The cart, for this client (its legacy session) as canary client ``n``."""
            cookie = f"shop_session={client.cookies['shop_session']}; gateway_canary={n:032x}"
            return client.get("/shop/cart", headers={"Cookie": cookie})

        pages: dict[str, str] = {}
        for n in range(64):  # fixed client IDs: which app each one gets never changes
            answer = cart(n)
            pages.setdefault(served_by(answer), answer.text)
            if len(pages) == 2:
                break
        assert set(pages) == {LEGACY, NEW}
        rows = re.compile(r'<tr><td><a href="/shop/items/(\d)">([^<]+)</a></td><td>(\d)</td><td class="price">([^<]+)<')
        assert rows.findall(pages[LEGACY]) == [("2", "Kettle", "1", "$39.50"),
                                               ("4", "Espresso machine", "2", "$2,598.00")]
        assert rows.findall(pages[NEW]) == [("2", "Kettle", "1", "$39.50"),
                                            ("4", "Espresso machine", "2", "$2598.00")]  # the port's formatting
        assert "Served by Django, the new shop." in pages[NEW]
        # The port's form posts to the legacy app, with a token the legacy app accepts.
        new_token = TOKEN.search(pages[NEW]).group(1)  # type: ignore[union-attr]
        emptied = client.post("/shop/cart", data={"csrf_token": new_token, "empty": "1"})
        assert (emptied.status_code, served_by(emptied)) == (303, LEGACY)
        assert {served_by(cart(n)) for n in range(8)} == {LEGACY, NEW}
        assert all("Your cart is empty." in cart(n).text for n in range(8))


def test_the_shadow_reports_the_deliberate_difference_and_not_the_noise(tmp_path: Path) -> None:
    server = start(tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            pages = [client.get("/shop/items/1") for _ in range(2)]
            # The noise is real: two answers for the same page differ, in their CSRF token and time only.
            assert pages[0].text != pages[1].text
            stripped = [re.sub(r"<time>[^<]+</time>", "", TOKEN.sub("", page.text)) for page in pages]
            assert stripped[0] == stripped[1]
            asked = {**{n: 200 for n in range(1, 7)}, 99: 404}
            for item_id, status in asked.items():
                answer = client.get(f"/shop/items/{item_id}")
                assert (answer.status_code, served_by(answer)) == (status, LEGACY)
            total = len(pages) + len(asked)
            deadline = time.monotonic() + 10  # the client never waits for the comparisons: they run after
            while True:
                cell = SHADOW_CELL.search(client.get("/_gateway/").text)
                if (cell and int(cell.group(1)) == total) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        assert cell is not None and cell.groups() == (str(total), "1", "0"), cell and cell.group(0)
        # The counts come first, the line a moment later: wait for the one line.
        log = tmp_path / "shadow.jsonl"
        while not (log.exists() and log.read_text().endswith("\n")) and time.monotonic() < deadline + 5:
            time.sleep(0.05)
        records = [json.loads(line) for line in log.read_text().splitlines()]
        assert [(r["path"], r["status"], r["differences"]) for r in records] == [
            ("/shop/items/4", [200, 200], ["body: 1 token(s) differ"])]  # the price; not the token, not the time
        diff = records[0]["diff"].splitlines()
        assert [line for line in diff if "$" in line] == ["-$1,299.00", "+$1299.00"]
        # The diff shows the noise too (every token that differs), but it was not counted.
        assert sum(line.startswith(("-@value=", "+@value=")) for line in diff) == 2
        assert sum(line.startswith(("-20", "+20")) for line in diff) == 2  # the two times

        summary = run(tmp_path, "diff")
        assert summary.returncode == 0, summary.stderr
        lines = summary.stdout.splitlines()
        assert lines[:2] == ["~/shop/items/<int:item_id>: 1 difference(s) on 1 path(s); body x1",
                             "  /shop/items/4  x1"]
        assert "    -$1,299.00" in lines and "    +$1299.00" in lines
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log, server.log


def test_routes_explains_the_cart(tmp_path: Path) -> None:
    get = run(tmp_path, "routes", "--explain", "/shop/cart")
    assert get.returncode == 0, get.stderr
    lines = get.stdout.splitlines()
    assert lines[:4] == [
        "GET /shop/cart matches rule '/shop/cart' (line 28).",
        "More general rules that match too, and lose to it (Werkzeug orders rules by specificity): "
        "'/shop/<path:rest>'.",
        "50% of clients, chosen by the gateway_canary cookie, go to app 'new'; the others:",
        "App 'legacy' answers it, with SCRIPT_NAME \"\" and PATH_INFO '/shop/cart'.",
    ]
    post = run(tmp_path, "routes", "--explain", "/shop/cart", "--method", "POST")
    assert post.returncode == 0, post.stderr
    assert post.stdout.splitlines()[:1] == [
        "POST /shop/cart matches rule '/shop/<path:rest>' (line 21) with {'rest': 'cart'}."]
    table = run(tmp_path, "routes")
    assert table.returncode == 0, table.stderr
    assert [line.split()[:2] for line in table.stdout.splitlines()[1:5]] == [
        ["/shop/", "any"], ["/shop/<path:rest>", "any"], ["/shop/cart", "GET,HEAD"],
        ["/shop/items/<int:item_id>", "any"]]
