"""The web console at /ui, driven in headless Chromium against the real binary.

Each behaviour runs on the embedded broker and on Redis with two replicas;
with Redis the page is opened on replica A while events are published and
consumed through replica B. Every test ends by checking that the browser
console logged no error. Screenshots of each page go to
$TARGET_DIR/ui-screenshots/ (docs/ui.md shows them).

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package
(scripts/test.sh installs them).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import pathlib
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import websocket
from conftest import ROOT, Router, router_binary
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver import Chrome
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

WAIT = 15.0
ADMIN_KEY = "ui-admin-" + uuid.uuid4().hex
VIEWER_KEY = "ui-viewer-" + uuid.uuid4().hex


def _sdk_fixtures() -> Any:
    """The SDK suite's fixtures module, for its `RedisServer` (one helper
    that starts a real redis-server on a free loopback port)."""
    path = ROOT / "clients" / "python" / "tests" / "conftest.py"
    spec = importlib.util.spec_from_file_location("sdk_test_fixtures", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def screenshot_dir() -> pathlib.Path:
    target = pathlib.Path(router_binary()).resolve().parents[1]
    path = target / "ui-screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Chrome]:
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.fail(
            "chromium and chromium-driver are not installed (scripts/test.sh installs them)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


class Cluster:
    """Where the page is opened (`page`) and where the test publishes and
    consumes (`other`): one router on the memory broker, or two replicas
    sharing a real redis-server."""

    def __init__(self, kind: str, page: Router, other: Router) -> None:
        self.kind = kind
        self.page = page
        self.other = other


@pytest.fixture(params=["memory", "redis"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    if request.param == "memory":
        router = Router()
        try:
            yield Cluster("memory", router, router)
        finally:
            router.stop()
        return
    redis = _sdk_fixtures().RedisServer()
    routers: list[Router] = []
    try:
        routers.append(Router("--redis", redis.url))
        routers.append(Router("--redis", redis.url))
        yield Cluster("redis", routers[0], routers[1])
    finally:
        for r in routers:
            r.stop()
        redis.stop()


@pytest.fixture
def console(browser: Chrome) -> Iterator[Chrome]:
    """The browser, with its console log drained before the test and checked
    for errors after it."""
    console_log(browser)
    yield browser
    errors = severe(browser)
    assert not errors, f"the browser console logged errors: {errors}"


def console_log(driver: Chrome) -> list[dict[str, Any]]:
    """Browser console entries since the last call (reading drains them)."""
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return entries


def severe(driver: Chrome) -> list[dict[str, Any]]:
    return [e for e in console_log(driver) if e.get("level") == "SEVERE"]


# --- helpers -------------------------------------------------------------------


def wait_for(driver: Chrome, what: str, check: Callable[[Chrome], Any]) -> Any:
    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(check)
    except TimeoutException:
        shot = screenshot_dir() / f"failed-{uuid.uuid4().hex[:8]}.png"
        driver.save_screenshot(str(shot))
        pytest.fail(f"timed out waiting for {what} (screenshot: {shot})")


def element(driver: Chrome, css: str) -> WebElement:
    def find(d: Chrome) -> WebElement | bool:
        found = d.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found and found[0].is_displayed() else False

    found: WebElement = wait_for(driver, css, find)
    return found


def text_of(driver: Chrome, css: str, want: str) -> None:
    wait_for(
        driver,
        f"{css} to read {want!r}",
        lambda d: any(e.text.strip() == want for e in d.find_elements(By.CSS_SELECTOR, css)),
    )


def open_page(driver: Chrome, router: Router, path: str) -> None:
    driver.get(router.http_url + path)
    element(driver, "#principal")


def shoot(driver: Chrome, name: str) -> None:
    driver.save_screenshot(str(screenshot_dir() / f"{name}.png"))


def publish(router: Router, event: dict[str, Any], token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = requests.post(f"{router.http_url}/api/v1/events", json=event, headers=headers, timeout=10)
    assert r.status_code == 202, r.text
    return str(r.json()["event_id"])


def api(router: Router, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = requests.request(method, router.http_url + path, headers=headers, timeout=10, **kw)
    assert r.ok, f"{method} {path}: {r.status_code} {r.text}"
    return r.json()


def dlq_size(router: Router, name: str, token: str | None = None) -> int:
    return len(api(router, "GET", f"/api/v1/subscriptions/{name}/dlq", token)["dead_letters"])


def poison(router: Router, name: str, count: int, token: str | None = None) -> list[str]:
    """Creates durable subscription `name` on `poison.<name>.#`, publishes
    `count` events to it and nacks every delivery until all are dead
    letters."""
    api(
        router,
        "PUT",
        f"/api/v1/subscriptions/{name}",
        token,
        json={"topics": [f"poison.{name}.#"], "delivery": {"maxAttempts": 2}},
    )
    header = [f"Authorization: Bearer {token}"] if token else []
    ws = websocket.create_connection(router.ws_url, timeout=WAIT, header=header)
    try:
        ws.send(
            json.dumps(
                {"op": "subscribe", "id": "s", "topics": [f"poison.{name}.#"], "group": name}
            )
        )
        ok = json.loads(ws.recv())
        assert ok.get("op") == "ok", ok
        ids = [
            publish(
                router, {"type": f"poison.{name}.order", "priority": 6, "payload": {"n": i}}, token
            )
            for i in range(count)
        ]
        deadline = time.monotonic() + WAIT
        while dlq_size(router, name, token) < count:
            assert time.monotonic() < deadline, "events never reached the dead-letter queue"
            ws.settimeout(0.5)
            try:
                frame = json.loads(ws.recv())
            except websocket.WebSocketTimeoutException:
                continue
            if frame.get("op") == "event":
                nack = {
                    "op": "nack",
                    "delivery_id": frame["delivery_id"],
                    "delay_ms": 0,
                    "reason": "poisoned: payload cannot be parsed",
                }
                ws.send(json.dumps(nack))
        return ids
    finally:
        ws.close()


# --- tests ---------------------------------------------------------------------


def test_overview_shows_broker_readiness_and_live_rate_charts(
    console: Chrome, cluster: Cluster
) -> None:
    open_page(console, cluster.page, "/ui/")
    text_of(console, "#broker-kind", cluster.kind)
    text_of(console, "#readiness", "ready")
    if cluster.kind == "redis":
        wait_for(
            console,
            "two replicas",
            lambda d: d.find_element(By.ID, "replicas").text.startswith("2:"),
        )
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            publish(cluster.other, {"type": "demo.tick", "payload": {"t": time.time()}})
            stop.wait(0.1)

    feeder = threading.Thread(target=traffic, daemon=True)
    feeder.start()
    try:
        # Two stats readings make a rate: the chart's series gets a value.
        wait_for(
            console,
            "a non-zero publish rate in the chart",
            lambda d: any(
                float(e.get_attribute("data-value") or 0) > 0
                for e in d.find_elements(
                    By.CSS_SELECTOR, '.chart .reading[data-series="published"]'
                )
            ),
        )
        assert len(console.find_elements(By.CSS_SELECTOR, ".chart canvas")) == 2
        time.sleep(4)  # a few more readings, for a screenshot with a line in it
        shoot(console, "overview" if cluster.kind == "memory" else "overview-redis")
    finally:
        stop.set()
        feeder.join(timeout=5)


def test_event_published_over_http_appears_in_the_live_tail(
    console: Chrome, cluster: Cluster
) -> None:
    open_page(console, cluster.page, "/ui/tail")
    element(console, "#tail-live")
    marker = uuid.uuid4().hex
    # The stream subscribes asynchronously: publish until the first arrives.
    deadline = time.monotonic() + WAIT
    event_id = ""
    while time.monotonic() < deadline:
        event_id = publish(
            cluster.other,
            {"type": "order.created", "source": "shop", "payload": {"marker": marker, "total": 42}},
        )
        if console.find_elements(By.CSS_SELECTOR, "li.event"):
            break
        time.sleep(0.3)
    row = element(console, f'li.event[data-id="{event_id}"]')
    row.find_element(By.TAG_NAME, "summary").click()
    pre = row.find_element(By.CSS_SELECTOR, "pre.json")
    shown = json.loads(pre.text)
    assert shown["id"] == event_id
    assert shown["payload"] == {"marker": marker, "total": 42}
    assert shown["type"] == "order.created"
    shoot(console, "tail" if cluster.kind == "memory" else "tail-redis")


def test_filtered_tail_shows_only_matching_events_and_pause_holds_them(
    console: Chrome, cluster: Cluster
) -> None:
    # The selection lives in the page URL, so a filtered tail is bookmarkable.
    open_page(console, cluster.page, "/ui/tail?topics=order.*&filter=priority:gte:7")
    assert console.find_element(By.ID, "tail-filter").get_attribute("value") == "priority:gte:7"
    element(console, "#tail-live")
    wanted: list[str] = []
    unwanted: list[str] = []
    deadline = time.monotonic() + WAIT
    while not console.find_elements(By.CSS_SELECTOR, "li.event"):
        assert time.monotonic() < deadline, "no matching event reached the tail"
        unwanted.append(publish(cluster.other, {"type": "order.created", "priority": 3}))
        unwanted.append(publish(cluster.other, {"type": "audit.order", "priority": 9}))
        wanted.append(publish(cluster.other, {"type": "order.paid", "priority": 9}))
        time.sleep(0.3)
    last = publish(cluster.other, {"type": "order.shipped", "priority": 8})
    wanted.append(last)
    element(console, f'li.event[data-id="{last}"]')
    shown = {e.get_attribute("data-id") for e in console.find_elements(By.CSS_SELECTOR, "li.event")}
    assert shown, "nothing shown"
    assert shown <= set(wanted), f"events outside the filter were shown: {shown - set(wanted)}"
    assert not shown & set(unwanted)
    topics = {
        e.get_attribute("data-topic") for e in console.find_elements(By.CSS_SELECTOR, "li.event")
    }
    assert topics <= {"order.paid", "order.shipped"}, topics

    console.find_element(By.ID, "tail-pause").click()
    text_of(console, "#tail-pause", "Resume")
    held = publish(cluster.other, {"type": "order.held", "priority": 10})
    wait_for(
        console,
        "the held count",
        lambda d: "1 held while paused" in d.find_element(By.ID, "tail-counts").text,
    )
    assert not console.find_elements(By.CSS_SELECTOR, f'li.event[data-id="{held}"]')
    console.find_element(By.ID, "tail-pause").click()
    element(console, f'li.event[data-id="{held}"]')


def test_dead_letters_are_listed_redriven_and_purged_only_after_confirmation(
    console: Chrome, cluster: Cluster
) -> None:
    name = "poison" + uuid.uuid4().hex[:6]
    ids = poison(cluster.other, name, 3)

    open_page(console, cluster.page, "/ui/dead-letters")
    text_of(console, f'#dlq-index tr[data-subscription="{name}"] td:nth-child(2)', "3")

    # An SSE subscriber on the page's replica is listed with its patterns.
    watcher = requests.get(
        f"{cluster.page.http_url}/api/v1/events/stream",
        params={"topics": "audit.#", "filter": "priority:gte:7"},
        stream=True,
        timeout=WAIT,
    )
    try:
        assert watcher.status_code == 200
        open_page(console, cluster.page, "/ui/subscriptions")
        row = element(console, f'#subscriptions tr[data-subscription="{name}"]')
        text_of(console, f'tr[data-subscription="{name}"] td.dead-letters', "3")
        text_of(console, f'tr[data-subscription="{name}"] td.topics', f"poison.{name}.#")
        text_of(console, '#subscribers tr[data-transport="sse"] td.topics', "audit.#")
        if cluster.kind == "memory":
            shoot(console, "subscriptions")
    finally:
        watcher.close()
    row.find_element(By.CSS_SELECTOR, "td.dead-letters a").click()
    wait_for(
        console,
        "the dead-letter page",
        lambda d: d.current_url.endswith(f"/ui/dead-letters/{name}"),
    )
    text_of(console, "#dlq-count", "3")
    shown = {
        e.get_attribute("data-id") for e in console.find_elements(By.CSS_SELECTOR, "tr.dead-letter")
    }
    assert len(shown) == 3
    first = console.find_elements(By.CSS_SELECTOR, "tr.dead-letter")[0]
    assert (
        "poisoned: payload cannot be parsed"
        in first.find_element(By.CSS_SELECTOR, "td.reason").text
    )
    first.find_element(By.TAG_NAME, "summary").click()
    details = first.find_elements(By.CSS_SELECTOR, "pre.json")
    event = json.loads(details[0].text)
    assert event["id"] in ids
    assert len(first.find_elements(By.CSS_SELECTOR, "ol.attempts li")) == 2
    if cluster.kind == "memory":
        shoot(console, "dead-letters")

    # Redrive one: it goes back to the subscription and the count drops.
    first.find_element(By.CSS_SELECTOR, "input.pick").click()
    console.find_element(By.ID, "redrive-selected").click()
    text_of(console, "#dlq-count", "2")
    assert "1 dead letters moved back" in console.find_element(By.ID, "dlq-result").text
    assert dlq_size(cluster.other, name) == 2
    info = api(cluster.other, "GET", f"/api/v1/subscriptions/{name}")
    assert info["pending"] + info["retrying"] + info["in_flight"] == 1, info

    # Purge asks first; cancelling leaves everything in place.
    console.find_element(By.ID, "purge-all").click()
    confirm = element(console, "#purge-confirm")
    assert "Purge all 2 dead letters" in confirm.text
    if cluster.kind == "memory":
        shoot(console, "dead-letters-purge-confirm")
    assert dlq_size(cluster.other, name) == 2
    console.find_element(By.ID, "purge-confirm-no").click()
    wait_for(
        console,
        "the confirmation to close",
        lambda d: not d.find_element(By.ID, "purge-confirm").is_displayed(),
    )
    time.sleep(0.3)
    assert dlq_size(cluster.other, name) == 2
    text_of(console, "#dlq-count", "2")

    console.find_element(By.ID, "purge-all").click()
    element(console, "#purge-confirm-yes").click()
    text_of(console, "#dlq-count", "0")
    assert dlq_size(cluster.other, name) == 0


def test_publish_and_replay_forms(console: Chrome, cluster: Cluster) -> None:
    name = "replay" + uuid.uuid4().hex[:6]
    api(cluster.other, "PUT", f"/api/v1/subscriptions/{name}", json={"topics": ["nothing.matches"]})
    topic = f"form.{uuid.uuid4().hex[:8]}"

    open_page(console, cluster.page, "/ui/publish")
    console.find_element(By.ID, "pub-topic").send_keys(topic)
    payload = console.find_element(By.ID, "pub-payload")
    payload.clear()
    payload.send_keys('{"sku": "A-1", "qty": 2}')
    console.find_element(By.ID, "pub-send").click()
    result = element(console, "#pub-result .notice.ok")
    event_id = result.text.removeprefix("Published ").rstrip(".")
    history = api(cluster.other, "GET", "/api/v1/events", params={"topic": topic})
    events = [entry["event"] for entry in history["events"]]
    assert [e["id"] for e in events] == [event_id], history
    assert events[0]["payload"] == {"sku": "A-1", "qty": 2}
    if cluster.kind == "memory":
        shoot(console, "publish")

    open_page(console, cluster.page, "/ui/replay")
    wait_for(
        console,
        "the subscription list",
        lambda d: d.find_elements(By.CSS_SELECTOR, f'#replay-subscription option[value="{name}"]'),
    )
    console.find_element(By.CSS_SELECTOR, f'#replay-subscription option[value="{name}"]').click()
    console.find_element(By.ID, "replay-topics").send_keys(topic)
    console.find_element(By.ID, "replay-send").click()
    text_of(console, "#replay-result .notice", f"1 events queued into {name}.")
    info = api(cluster.other, "GET", f"/api/v1/subscriptions/{name}")
    assert info["pending"] == 1, info
    if cluster.kind == "memory":
        shoot(console, "replay")


# --- auth ----------------------------------------------------------------------


@pytest.fixture
def secured(tmp_path: pathlib.Path) -> Iterator[Router]:
    def digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    auth = tmp_path / "auth.yaml"
    auth.write_text(
        "api_keys:\n"
        f'  - name: ops\n    sha256: "{digest(ADMIN_KEY)}"\n'
        f'  - name: viewer\n    sha256: "{digest(VIEWER_KEY)}"\n'
        "acl:\n"
        '  - principal: ops\n    admin: true\n    publish: ["#"]\n    subscribe: ["#"]\n'
        '  - principal: viewer\n    subscribe: ["#"]\n    groups: ["poison*"]\n'
    )
    router = Router("--auth", str(auth))
    try:
        yield router
    finally:
        router.stop()


def sign_in(driver: Chrome, key: str) -> None:
    field = element(driver, "#token")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
    element(driver, "#principal")


def test_with_auth_the_page_asks_for_a_token_and_a_non_admin_cannot_redrive(
    browser: Chrome, secured: Router
) -> None:
    console_log(browser)
    name = "poison" + uuid.uuid4().hex[:6]
    poison(secured, name, 2, token=ADMIN_KEY)

    browser.get(secured.http_url + f"/ui/dead-letters/{name}")
    element(browser, "#token-form")
    shoot(browser, "sign-in")
    sign_in(browser, VIEWER_KEY)
    text_of(browser, "#principal", "viewer")
    assert not browser.find_elements(By.CSS_SELECTOR, "#who .badge")
    assert not browser.find_element(By.CSS_SELECTOR, 'a[data-page="replay"]').is_displayed()
    text_of(browser, "#dlq-count", "2")
    for button in ("redrive-selected", "redrive-all", "purge-selected", "purge-all"):
        assert not browser.find_elements(By.ID, button), f"{button} shown to a non-admin"
    # The server refuses it too, whatever the page shows.
    status = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const token = sessionStorage.getItem("event-router.token");
        fetch(arguments[0], {method: "POST", headers: {Authorization: "Bearer " + token}})
          .then((r) => done(r.status), (e) => done(String(e)));
        """,
        f"/api/v1/subscriptions/{name}/dlq/redrive",
    )
    assert status == 403
    assert dlq_size(secured, name, ADMIN_KEY) == 2
    errors = [e for e in severe(browser) if "/dlq/redrive" not in e.get("message", "")]
    assert not errors, errors

    # Signing out forgets the token; an admin sees the actions.
    browser.find_element(By.ID, "sign-out").click()
    sign_in(browser, ADMIN_KEY)
    text_of(browser, "#principal", "ops")
    element(browser, "#redrive-all").click()
    text_of(browser, "#dlq-count", "0")
    assert dlq_size(secured, name, ADMIN_KEY) == 0

    # A wrong token is refused with a message, not a blank page.
    browser.find_element(By.ID, "sign-out").click()
    sign_in_field = element(browser, "#token")
    sign_in_field.send_keys("not-a-key")
    browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
    element(browser, "#token-form .notice.error")
    console_log(browser)  # the refused whoami is logged as a 401

    for key in (ADMIN_KEY, VIEWER_KEY):
        assert key not in browser.current_url
        assert not any(key in line for line in secured.output), "a token reached the router's log"
