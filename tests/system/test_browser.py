"""End to end: headless Chromium drives ``gateway serve`` on loopback.

Needs Debian's Chromium at ``/usr/bin/chromium`` and the ``playwright`` package; the
browser is launched from that path, so ``playwright install`` is never needed::

    apt-get install -y chromium && pip install playwright
    pytest tests/system/test_browser.py

Every step leaves a screenshot in ``tests/artifacts/browser/``. With
``UPDATE_SCREENSHOTS=1`` the run also rewrites the three images under ``docs/images/``.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

from tests.support import GATEWAY, ROOT, ServerProcess, server_env

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Frame, Page, Request, Response

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    ),
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install playwright)"
)
expect = sync_api.expect

CHROMIUM_ARGS = [
    "--no-sandbox",  # CI containers run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 10_000
ARTIFACTS = ROOT / "tests" / "artifacts" / "browser"
DOC_IMAGES = ROOT / "docs" / "images"
PREFIXES = ("/flask/", "/django/")
# Chromium asks for /favicon.ico on its own (no page declares an icon), unseen by the page's
# events; it is the one request outside the prefixes, and its 404 the one error status, that
# the server's log may show.
BROWSER_OWN = {("/favicon.ico", 404)}
USERNAME = "admin"
PASSWORD = secrets.token_urlsafe(16)

expect.set_options(timeout=TIMEOUT_MS)


def in_prefixes(path: str) -> bool:
    """Tell whether ``path`` is the index or lies under a mount."""
    return path == "/" or path.startswith(PREFIXES)


def mounts() -> list[tuple[str, str]]:
    """Each default mount's prefix and the framework and version the index must show."""
    return [
        ("/flask", f"Flask {metadata.version('flask')}"),
        ("/django", f"Django {metadata.version('django')}"),
    ]


@dataclass
class Traffic:
    """What a page asked its origin for: navigations, requests, statuses, failures."""

    origin: str
    navigations: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        """Record everything ``page`` navigates to and requests from now on."""
        page.on("framenavigated", self._navigated)
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("response", self._responded)
        page.on("requestfailed", self._failed)

    def _navigated(self, frame: Frame) -> None:
        if frame.parent_frame is None:
            self.navigations.append(frame.url)

    def _responded(self, response: Response) -> None:
        if response.status >= 400:
            self.errors.append(f"{response.status} {response.url}")

    def _failed(self, request: Request) -> None:
        self.errors.append(f"failed ({request.failure}) {request.url}")

    def paths(self, urls: list[str]) -> list[str]:
        """The paths of ``urls``; every URL must be on this origin (loopback)."""
        foreign = [u for u in urls if u.startswith("http") and not u.startswith(self.origin + "/")]
        assert not foreign, f"requests left {self.origin}: {foreign}"
        return [urlsplit(u).path for u in urls if u.startswith("http")]

    def check(self) -> None:
        """Assert the page stayed under the prefixes and got no error status."""
        outside = [p for p in self.paths(self.navigations + self.requests) if not in_prefixes(p)]
        assert not outside, f"the browser left the prefixes: {outside}"
        assert not self.errors, f"unexpected errors: {self.errors}"


def served(server: ServerProcess) -> list[tuple[str, int]]:
    """The path and status of every request in the server's access log."""
    lines = re.findall(r'"[A-Z]+ (\S+) HTTP/[\d.]+" (\d{3})', server.log)
    return [(urlsplit(target).path, int(status)) for target, status in lines]


def shoot(page: Page, name: str, doc: str | None = None) -> None:
    """Save a screenshot of the step; with UPDATE_SCREENSHOTS=1 also as docs/images/doc."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)
    if doc and os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=DOC_IMAGES / doc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless; each launch gets a fresh temporary profile."""
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Open pages in fresh contexts with short timeouts; the contexts close afterwards."""
    contexts = []

    def open_page(**options: object) -> Page:
        context = browser.new_context(
            viewport={"width": 1024, "height": 640}, color_scheme="light", **options
        )
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture
def site(start_gateway: Callable[..., ServerProcess], tmp_path: Path) -> ServerProcess:
    """``gateway serve`` on its own data directory, with an admin user created in it."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = start_gateway(data_dir=data_dir)  # it migrates before it answers
    env = server_env(
        data_dir,
        DJANGO_SUPERUSER_USERNAME=USERNAME,
        DJANGO_SUPERUSER_PASSWORD=PASSWORD,
        DJANGO_SUPERUSER_EMAIL="admin@example.com",
    )
    subprocess.run(
        [*GATEWAY, "manage", "createsuperuser", "--noinput"],
        cwd=ROOT, env=env, check=True, capture_output=True, timeout=60,
    )
    return server


def check_index(page: Page) -> None:
    """Assert the index lists every mount: link, prefix, framework and version."""
    items = page.locator("ul.mounts li")
    expect(items).to_have_count(len(mounts()))
    for prefix, framework in mounts():
        item = items.filter(has=page.locator(f'a[href="{prefix}/"]'))
        expect(item.locator("a")).to_have_text(f"{prefix}/")
        expect(item).to_contain_text(framework)


def loaded(page: Page, url: str) -> None:
    """Wait for the navigation to ``url`` to commit, then for that document's load event.

    Take every step of a journey on a loaded page. A URL check alone passes at commit,
    when the new document may hold nothing but the start of its ``<head>``: the admin's
    head loads ``theme.js`` without ``defer``, so until that script arrives
    ``document.body`` is null and the stylesheets may be pending. And a step that leaves
    a page still loading aborts its pending requests (``net::ERR_ABORTED``), which
    ``Traffic`` counts as errors. The load event comes after every stylesheet, script
    and image of the page. Commit clears the frame's load state before the frame reports
    its new URL, so this waits for the new document's load, never the one before.
    """
    expect(page).to_have_url(url)
    page.wait_for_load_state("load")


def check_admin_styled(page: Page) -> None:
    """Assert admin/css/base.css was applied: the header takes its --header-bg colour.

    Call it on a page that has loaded (see ``loaded``), never right after a URL check.
    """
    state, header_bg, expected = page.evaluate("""() => {
        if (document.readyState !== "complete") return [document.readyState, null, null];
        const probe = document.createElement("div");
        probe.style.backgroundColor = "var(--header-bg)";
        document.body.append(probe);
        const expected = getComputedStyle(probe).backgroundColor;
        probe.remove();
        const header = getComputedStyle(document.querySelector("#header")).backgroundColor;
        return [document.readyState, header, expected];
    }""")
    assert state == "complete", f"check_admin_styled on a page still {state}: {page.url}"
    # Without base.css the variable is undefined and both are transparent.
    assert header_bg == expected and header_bg not in {"rgba(0, 0, 0, 0)", "rgb(255, 255, 255)"}


def greet_in_flask(page: Page, base: str) -> None:
    """Follow the index's link to Flask and greet through its form."""
    page.click('a[href="/flask/"]')
    loaded(page, f"{base}/flask/")
    expect(page.locator("#greeting")).to_have_text("Hello, World!")
    # #0b6e4f from flask_hello/static/style.css: the stylesheet loaded under the prefix.
    expect(page.locator("h1")).to_have_css("color", "rgb(11, 110, 79)")
    shoot(page, "02-flask")
    page.fill("#name", "Ada")
    page.click("button[type=submit]")
    loaded(page, f"{base}/flask/?name=Ada&lang=")
    expect(page.locator("#greeting")).to_have_text("Hello, Ada!")
    shoot(page, "03-flask-ada")
    page.fill("#name", "<b>x</b>")
    page.click("button[type=submit]")
    loaded(page, f"{base}/flask/?name=%3Cb%3Ex%3C%2Fb%3E&lang=")
    expect(page.locator("#greeting")).to_have_text("Hello, <b>x</b>!")
    expect(page.locator("#greeting b")).to_have_count(0)
    expect(page.locator("#name")).to_have_value("<b>x</b>")
    shoot(page, "04-flask-markup")


def greet_from_django_data(page: Page, base: str) -> None:
    """Flask greets in the language the admin just added, read through Django's ORM."""
    page.goto(f"{base}/flask/")
    page.fill("#name", "Ada")
    page.fill("#lang", "fr")
    page.click("button[type=submit]")
    loaded(page, f"{base}/flask/?name=Ada&lang=fr")
    expect(page.locator("#greeting")).to_have_text("Bonjour, Ada!")
    shoot(page, "10-flask-bonjour")
    page.get_by_role("link", name="Greetings in every language").click()
    loaded(page, f"{base}/flask/greetings")
    expect(page.locator("#greetings li")).to_have_text(["fr: Bonjour"])
    shoot(page, "11-flask-greetings")


def use_admin(page: Page, base: str) -> None:
    """Log in to the admin, add a Greeting, see it listed, log out."""
    page.get_by_role("link", name="Django admin").click()
    loaded(page, f"{base}/django/admin/login/?next=/django/admin/")
    check_admin_styled(page)
    shoot(page, "06-admin-login")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    loaded(page, f"{base}/django/admin/")
    check_admin_styled(page)
    expect(page.locator("#user-tools")).to_contain_text(USERNAME)
    greetings = "/django/admin/django_hello/greeting/"
    model = page.locator("#content-main").get_by_role("link", name="Greetings", exact=True)
    expect(model).to_have_attribute("href", greetings)
    shoot(page, "07-admin", doc="admin.png")
    page.click(f'#content-main a.addlink[href="{greetings}add/"]')
    loaded(page, f"{base}{greetings}add/")
    page.fill("#id_language", "fr")
    page.fill("#id_text", "Bonjour")
    shoot(page, "08-admin-add")
    page.click("input[name=_save]")
    loaded(page, base + greetings)
    expect(page.locator(".messagelist .success")).to_contain_text("was added successfully")
    row = page.locator("#result_list tbody tr")
    expect(row).to_have_count(1)
    expect(row.locator(".field-language")).to_have_text("fr")
    expect(row.locator(".field-text")).to_have_text("Bonjour")
    shoot(page, "09-admin-changelist")
    page.click("#logout-form button[type=submit]")
    loaded(page, f"{base}/django/admin/logout/")
    expect(page.locator("#content h1")).to_have_text("Logged out")
    log_in_again = page.get_by_role("link", name="Log in again")
    expect(log_in_again).to_have_attribute("href", "/django/admin/")
    shoot(page, "10-admin-logged-out")


def test_journey(site: ServerProcess, new_page: Callable[..., Page]) -> None:
    """Index, Flask's form, Django, the admin: all under the prefixes, no error status."""
    base = site.url
    page = new_page()
    traffic = Traffic(base)
    traffic.watch(page)

    page.goto(f"{base}/")
    check_index(page)
    shoot(page, "01-index", doc="index.png")
    greet_in_flask(page, base)

    page.goto(f"{base}/")
    page.click('a[href="/django/"]')
    loaded(page, f"{base}/django/")
    expect(page.locator("#greeting")).to_have_text("Hello, Django!")
    shoot(page, "05-django")
    use_admin(page, base)
    greet_from_django_data(page, base)

    traffic.check()
    assert traffic.paths(traffic.navigations) == [
        "/", "/flask/", "/flask/", "/flask/", "/", "/django/", "/django/admin/login/",
        "/django/admin/", "/django/admin/django_hello/greeting/add/",
        "/django/admin/django_hello/greeting/", "/django/admin/logout/",
        "/flask/", "/flask/", "/flask/greetings",
    ]
    log = served(site)
    assert ("/django/admin/logout/", 200) in log, "no access log to check"
    unexpected = [
        (path, status) for path, status in log
        if (path, status) not in BROWSER_OWN and (not in_prefixes(path) or status >= 400)
    ]
    assert not unexpected, f"the server saw requests outside the prefixes or failing: {unexpected}"


def test_without_javascript(gateway_server: ServerProcess, new_page: Callable[..., Page]) -> None:
    """The index, its links and Flask's form work with JavaScript off."""
    base = gateway_server.url
    page = new_page(java_script_enabled=False)
    traffic = Traffic(base)
    traffic.watch(page)

    page.goto(f"{base}/")
    check_index(page)
    shoot(page, "11-index-no-js")
    page.click('a[href="/flask/"]')
    loaded(page, f"{base}/flask/")
    page.fill("#name", "Grace")
    page.click("button[type=submit]")
    loaded(page, f"{base}/flask/?name=Grace&lang=")
    expect(page.locator("#greeting")).to_have_text("Hello, Grace!")
    page.go_back()
    page.go_back()
    expect(page).to_have_url(f"{base}/")
    page.click('a[href="/django/"]')
    loaded(page, f"{base}/django/")
    expect(page.locator("#greeting")).to_have_text("Hello, Django!")
    shoot(page, "12-django-no-js")
    traffic.check()


# -- One sign-in for both frameworks (GATEWAY_SHARED_SIGNIN) -----------------------------------


def add_admin(data_dir: Path) -> None:
    """Create the superuser USERNAME/PASSWORD in ``data_dir``'s database, as ``site`` does."""
    env = server_env(
        data_dir,
        DJANGO_SUPERUSER_USERNAME=USERNAME,
        DJANGO_SUPERUSER_PASSWORD=PASSWORD,
        DJANGO_SUPERUSER_EMAIL="admin@example.com",
    )
    subprocess.run(
        [*GATEWAY, "manage", "createsuperuser", "--noinput"],
        cwd=ROOT, env=env, check=True, capture_output=True, timeout=60,
    )


@pytest.fixture
def shared_site(start_gateway: Callable[..., ServerProcess], tmp_path: Path) -> ServerProcess:
    """``gateway serve`` with one sign-in for both apps, and an admin user."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = start_gateway(env={"GATEWAY_SHARED_SIGNIN": "1"}, data_dir=data_dir)
    add_admin(data_dir)
    return server


def sign_in_for_flask(page: Page, base: str) -> None:
    """From /flask/account, signed out: Django's login, then back to the Flask page."""
    page.goto(f"{base}/flask/account")
    loaded(page, f"{base}/django/admin/login/?next=%2Fflask%2Faccount")
    check_admin_styled(page)
    expect(page.locator("input[name=next]")).to_have_value("/flask/account")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    loaded(page, f"{base}/flask/account")
    expect(page.locator("body")).to_have_text(f"Signed in as {USERNAME}.")


def signed_out_everywhere(page: Page, base: str) -> None:
    """Both apps send the browser to Django's login page, and it holds no session cookie."""
    assert [c for c in page.context.cookies() if c["name"] == "sessionid"] == []
    page.goto(f"{base}/django/admin/")
    loaded(page, f"{base}/django/admin/login/?next=/django/admin/")
    page.goto(f"{base}/flask/account")
    loaded(page, f"{base}/django/admin/login/?next=%2Fflask%2Faccount")


def test_one_sign_in_for_both_frameworks(shared_site: ServerProcess, new_page: Callable[..., Page]) -> None:
    """Sign in through Django for Flask; sign out of either app and both are signed out."""
    base = shared_site.url
    page = new_page()
    traffic = Traffic(base)
    traffic.watch(page)

    sign_in_for_flask(page, base)
    shoot(page, "13-flask-account")
    held = page.context.cookies()  # every cookie of the context, whatever its path
    assert sorted(c["name"] for c in held) == ["csrftoken", "sessionid"]
    cookies = {c["name"]: c for c in held}
    assert cookies["sessionid"]["path"] == "/"  # the one cookie both apps read
    assert cookies["sessionid"]["httpOnly"] and cookies["sessionid"]["sameSite"] == "Lax"
    assert cookies["csrftoken"]["path"] == "/django"  # Django's CSRF cookie stays on its mount
    page.goto(f"{base}/django/admin/")
    loaded(page, f"{base}/django/admin/")
    expect(page.locator("#user-tools")).to_contain_text(USERNAME)

    # Flask's sign-out has no form on any page: add one to the admin's page and submit it.
    page.evaluate("""() => {
        const form = document.createElement("form");
        form.method = "post";
        form.action = "/flask/signout";
        const button = document.createElement("button");
        button.id = "flask-signout";
        button.textContent = "Sign out of Flask";
        form.append(button);
        document.body.append(form);
    }""")
    page.click("#flask-signout")
    loaded(page, f"{base}/flask/")
    signed_out_everywhere(page, base)

    sign_in_for_flask(page, base)
    page.goto(f"{base}/django/admin/")
    loaded(page, f"{base}/django/admin/")
    page.click("#logout-form button[type=submit]")
    loaded(page, f"{base}/django/admin/logout/")
    expect(page.locator("#content h1")).to_have_text("Logged out")
    signed_out_everywhere(page, base)
    shoot(page, "14-signed-out-of-both")

    traffic.check()
    assert traffic.paths(traffic.navigations) == [
        "/django/admin/login/", "/flask/account", "/django/admin/", "/flask/",
        "/django/admin/login/", "/django/admin/login/",
        "/django/admin/login/", "/flask/account", "/django/admin/", "/django/admin/logout/",
        "/django/admin/login/", "/django/admin/login/",
    ]
    log = served(shared_site)
    assert ("/flask/signout", 302) in log and ("/django/admin/logout/", 200) in log
    unexpected = [(path, status) for path, status in log
                  if (path, status) not in BROWSER_OWN and (not in_prefixes(path) or status >= 400)]
    assert not unexpected, f"the server saw requests outside the prefixes or failing: {unexpected}"


# -- The migration page ---------------------------------------------------------------------------


def wait_for_page(url: str, texts: list[str], timeout: float = 10.0) -> None:
    """Wait until the page at ``url`` holds every one of ``texts`` (the shadow comparisons
    run on the gateway's threads after the answers; the page is the one place they show)."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while not all(text in (html := httpx.get(url, timeout=5).text) for text in texts):
        if time.monotonic() > deadline:
            raise AssertionError(f"{texts} not all on {url} within {timeout} s:\n{html}")
        time.sleep(0.05)


def test_the_migration_page_without_javascript(start_gateway: Callable[..., ServerProcess], tmp_path: Path,
                                               new_page: Callable[..., Page]) -> None:
    """``/_gateway/`` in Chromium, JavaScript off: each rule, its bars on one scale under one
    time axis, its count beside its chart, canary and shadow, and the link to its latest difference."""
    import time

    import httpx

    from gateway.migration.rules import RouteTable, parse_gateway_file
    from gateway.migration.traffic import MINUTES
    from tests.apps.shop import CANARY, SHADOW, SHOP

    text = CANARY.replace("SHARE", "50") + SHADOW[len(SHOP):]  # the rules of test_routes' page test
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = start_gateway("--config", str(config), data_dir=data_dir)
    base = server.url
    specs = {spec.rule: spec for spec in RouteTable(parse_gateway_file(text).routes).specs.values()}

    def get(path: str, **headers: str) -> httpx.Response:
        return httpx.get(base + path, headers=headers, timeout=10)

    cart_clients = [f"{i:032x}" for i in range(20)]
    for client in cart_clients:
        assert get("/shop/cart", Cookie=f"gateway_canary={client}").status_code == 200
    users = [f"user-{i}" for i in range(10)]
    for user in users:  # neither app has the page: each answers its 404
        assert get("/shop/items/3/reviews", **{"X-User-ID": user}).status_code == 404
    assert get("/shop/items/7").json()["app"] == "new"
    assert get("/shop/items/500").json()["app"] == "legacy"  # a fallback
    for product in (7, 13):  # 13: the new app's deliberate difference
        assert get(f"/shop/products/{product}").status_code == 200
    assert get("/shop/api/products/7").status_code == 200
    assert get("/shop/").status_code == 200
    assert httpx.post(f"{base}/only-post", timeout=10).status_code == 404  # the legacy app's own 404
    products = "new: 50% equal of 2 compared (1 different, 0 dropped)"
    api = "new: 100% equal of 1 compared (0 different, 0 dropped)"
    wait_for_page(f"{base}/_gateway/", [products, api])

    page = new_page(java_script_enabled=False)
    page.set_viewport_size({"width": 1440, "height": 760})  # the whole table, for docs/images/migration-page.png
    traffic = Traffic(base)
    traffic.watch(page)
    minutes = {time.strftime("%H:%M", time.gmtime())}
    answer = page.goto(f"{base}/_gateway/")
    minutes.add(time.strftime("%H:%M", time.gmtime()))
    loaded(page, f"{base}/_gateway/")
    assert answer is not None and answer.status == 200
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    expect(page).to_have_title("Migration - gateway")
    expect(page.locator("script")).to_have_count(0)
    shoot(page, "15-migration-page", doc="migration-page.png")
    expect(page.locator("thead tr").first.locator("th")).to_have_text(
        ["Rule", "Methods", "Owner", f"Requests a minute, last {MINUTES} min", f"Fallbacks, last {MINUTES} min",
         f"Canary, last {MINUTES} min", "Shadow, since start"])
    # One time axis, under the head of the charts' column: the last minute is this one, in UTC.
    time_axis = page.locator("thead tr.axis svg.axis")
    expect(time_axis).to_have_count(1)
    first, last = time_axis.locator("text").all_text_contents()
    assert last.endswith(" UTC") and last[:-4] in minutes, (last, minutes)
    assert (int(last[:2]) * 60 + int(last[3:5]) - int(first[:2]) * 60 - int(first[3:5])) % (24 * 60) == MINUTES - 1
    rows = page.locator("tbody tr")
    expect(rows.locator("td:nth-child(1)")).to_have_text(list(specs))  # every rule, in the file's order

    cart_canaried = sum(specs["/shop/cart"].chooses_canary(c) for c in cart_clients)
    review_canaried = sum(specs["/shop/items/<int:item_id>/reviews"].chooses_canary(u) for u in users)
    assert 0 < cart_canaried < len(cart_clients) and 0 < review_canaried < len(users)
    expected = {  # rule: methods, owners, requests, fallbacks, canary, shadow
        "/shop/<path:rest>": ("any", "legacy", 0, "-", "-", "-"),
        "/shop/": ("any", "legacy", 1, "-", "-", "-"),
        "/shop/cart": ("GET,HEAD", "legacy", len(cart_clients), "-",
                       f"new: 50% of clients, {cart_canaried / len(cart_clients):.0%} of requests", "-"),
        "/shop/items/<int:item_id>/reviews": ("any", "legacy", len(users), "-",
                                              f"new: 30% of clients, {review_canaried / len(users):.0%} of requests",
                                              "-"),
        "/shop/items/<int:item_id>": ("any", "new then legacy", 2, "1 (50%)", "-", "-"),
        "/only-post": ("POST", "legacy", 1, "-", "-", "-"),
        "/shop/products/<int:product_id>": ("any", "legacy", 2, "-", "-", products),
        "/shop/api/products/<int:product_id>": ("any", "legacy", 1, "-", "-", api),
    }
    for rule, (methods, owners, requests, fallbacks, canary, shadow) in expected.items():
        row = rows.filter(has=page.locator("td:nth-child(1) code", has_text=re.compile(f"^{re.escape(rule)}$")))
        cells = row.locator("td")
        expect(cells.nth(1)).to_have_text(methods)
        expect(cells.nth(2)).to_have_text(owners)
        chart = cells.nth(3).locator("svg")
        expect(chart).to_have_attribute("aria-label", f"{requests} requests")
        bars = chart.locator("rect")
        expect(bars).to_have_count(MINUTES)  # one bar a minute
        assert sum(int(t) for t in bars.locator("title").all_text_contents()) == requests, rule
        count = cells.nth(3).locator(".count")
        expect(count).to_have_text(str(requests))
        chart_box, count_box = chart.bounding_box(), count.bounding_box()
        assert chart_box is not None and count_box is not None
        # Beside the chart, on its line: not wrapped under it.
        assert count_box["x"] >= chart_box["x"] + chart_box["width"], (rule, chart_box, count_box)
        assert count_box["y"] < chart_box["y"] + chart_box["height"], (rule, chart_box, count_box)
        expect(cells.nth(4)).to_have_text(fallbacks)
        expect(cells.nth(5)).to_have_text(canary)
        if shadow == "-":
            expect(cells.nth(6)).to_have_text("-")
        else:
            expect(cells.nth(6)).to_contain_text(shadow)
    # One scale: the tallest bar of any rule is the scale's top, drawn at the chart's full height.
    counts = [int(n) for n in rows.locator("svg rect title").all_text_contents()]
    top = max(counts)
    expect(page.locator("thead tr.axis .count")).to_have_text(f"scale: 0 to {top} a minute")
    drawn = rows.locator("svg rect").evaluate_all("rects => rects.map(rect => rect.getAttribute('height'))")
    heights = {float(h) for h, n in zip(drawn, counts, strict=True) if n == top}
    assert heights == {24.0}, heights
    meters = rows.locator("meter")
    expect(meters).to_have_count(2)
    expect(meters.nth(0)).to_have_attribute("value", "0.500")
    expect(meters.nth(1)).to_have_attribute("value", "1.000")
    # The page's stylesheet applied with JavaScript off: the bars take its colour, at full size.
    expect(page.locator("svg rect").first).to_have_css("fill", "rgb(68, 170, 119)")
    box = page.locator("svg").first.bounding_box()
    assert box is not None and (box["width"], box["height"]) == (120, 24)
    assert traffic.errors == [] and traffic.paths(traffic.navigations) == ["/_gateway/"]
    assert traffic.paths(traffic.requests) == ["/_gateway/"]  # nothing else: no script, no stylesheet
    # The products rule's one difference, linked from its row, on the same page.
    products_row = rows.filter(has=page.locator("td:nth-child(1) code", has_text="/shop/products/"))
    products_row.get_by_role("link", name="latest difference").click()
    assert re.fullmatch(rf"{re.escape(base)}/_gateway/#diff-\d+", page.url), page.url
    section = page.locator(f"section#{page.url.rsplit('#', 1)[1]}")
    expect(section.locator("h3")).to_have_text("/shop/products/<int:product_id>")
    expect(section.locator("p")).to_contain_text("GET /shop/products/13")
    expect(section.locator("pre")).to_contain_text("+++ candidate")
    expect(rows.get_by_role("link", name="latest difference")).to_have_count(1)  # the api rule has no difference
    assert traffic.paths(traffic.requests) == ["/_gateway/"]  # the link is to the page itself
    assert "Traceback" not in server.log


def test_the_rollouts_section_without_javascript(start_gateway: Callable[..., ServerProcess], tmp_path: Path,
                                                 new_page: Callable[..., Page]) -> None:
    """The rollouts' section of ``/_gateway/`` in Chromium, JavaScript off: the share over
    time, each arm's numbers and latency, and the audit trail."""
    import time

    import httpx

    from gateway.migration.rollout import act
    from gateway.migration.rollout_store import Store, database_url
    from gateway.migration.rules import parse_gateway_file
    from tests.apps.shop import ROLLOUT as SHOP

    config = tmp_path / "gateway.toml"
    config.write_text(SHOP)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = start_gateway("--config", str(config), data_dir=data_dir, ready_path="/healthz")
    spec = parse_gateway_file(SHOP).routes[0]
    wait_for_page(f"{server.url}/_gateway/", ["canary new at 10%"])
    with Store(database_url(data_dir, {})) as store:
        act(store, spec, "promote", actor="frank", reason="first look is fine")
    wait_for_page(f"{server.url}/_gateway/", ["new: 50% of clients"])  # the instance serves the step now
    for i in range(40):
        assert httpx.get(f"{server.url}/shop/cart", headers={"Cookie": f"gateway_canary={i:032x}"},
                         timeout=10).status_code == 200

    def arms_counted() -> int:
        html = httpx.get(f"{server.url}/_gateway/", timeout=10).text
        return sum(int(n) for n in re.findall(r"<tr><td>(?:baseline|canary)</td><td>(\d+)</td>", html))

    deadline = time.monotonic() + 10
    while arms_counted() != 40:  # each instance writes its counts every half second
        assert time.monotonic() < deadline, arms_counted()
        time.sleep(0.05)

    page = new_page(java_script_enabled=False)
    page.goto(f"{server.url}/_gateway/")
    loaded(page, f"{server.url}/_gateway/")
    expect(page.locator("script")).to_have_count(0)
    expect(page.locator("h2")).to_have_text("Rollouts")
    expect(page.locator("h3")).to_have_text("/shop/cart: running, canary new at 50%")
    timeline = page.locator('svg[aria-label="canary share over time"]')
    expect(timeline).to_be_visible()
    expect(timeline.locator("circle")).to_have_count(2)  # the start at 10%, the promotion to 50%
    box = timeline.bounding_box()
    assert box is not None and (box["width"], box["height"]) == (480, 90)
    arms = page.locator("h3 ~ table").first.locator("tbody tr")
    expect(arms.locator("td:nth-child(1)")).to_have_text(["baseline", "canary"])
    counted = [int(n) for n in arms.locator("td:nth-child(2)").all_text_contents()]
    assert sum(counted) == 40 and all(counted)
    expect(arms.locator('svg[aria-label="latency distribution"]')).to_have_count(2)
    trail = page.locator("h3 ~ table").nth(1).locator("tbody tr")
    expect(trail.locator("td:nth-child(3)")).to_have_text(["promote", "start"])  # newest first
    expect(trail.first.locator("td:nth-child(4)")).to_have_text("10% → 50%")
    expect(trail.first.locator("td:nth-child(5)")).to_have_text("first look is fine (promote by frank)")
    shoot(page, "16-rollouts-section")
    assert "Traceback" not in server.log
