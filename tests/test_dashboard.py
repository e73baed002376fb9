"""The dashboard in a real browser (headless Chromium, tests/browser.py) against a real
`cockpit-api serve` over loopback.

The server's virtual clock is frozen (``--speed 0``) and moved from the page's own
simulator panel, so a migration's progress is exact and quick; every wait is a page
condition with a bounded timeout, never a sleep. Each test starts from the default world.

``COCKPIT_SCREENSHOTS=1`` writes the main views to docs/screenshots/ (the README
shows them).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests import dashboard_support
from tests.browser import Console, skip_reason
from tests.dashboard_support import (
    NODE1,
    NODE2,
    NODE3,
    NODE4,
    OFF_VM,
    OTHER_OFF_VM,
    ROOT,
    RUNNING_VM,
    SHOTS,
    advance,
    log_in,
    shot,
)

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

# The fixtures `server` (one served simulator for the module) and `base` (a fresh world).
server_fixture = dashboard_support.server_fixture
base_fixture = dashboard_support.base_fixture

WRITE_TOOLS = ["start", "stop", "force-stop", "restart", "suspend", "resume", "migrate", "cancel"]


def vm_row(page: Page, vm_id: str) -> str:
    return f"tr[data-vm='{vm_id}']"


def test_log_in_and_see_the_default_scenarios_hosts_and_vms(page: Page, base: str,
                                                            console: Console) -> None:
    console.allow_status(401)  # the wrong password, on purpose
    page.goto(f"{base}/dashboard/")
    # Demo users are prefilled on the simulator.
    assert page.get_by_label("Username").input_value() == "admin"
    assert page.get_by_label("Password").input_value() == "admin"
    shot(page, "login")
    # A wrong password: the problem's title and detail, and the form stays.
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_label("Password").press("Enter")  # the keyboard is enough
    problem = page.locator(".problem[data-code='bad_credentials']")
    problem.wait_for()
    assert "Unauthorized" in problem.inner_text()
    assert "wrong username or password" in problem.inner_text()
    page.get_by_label("Password").fill("admin")
    page.get_by_label("Password").press("Enter")
    page.locator("tr[data-vm]").first.wait_for()
    assert page.locator(".host-items li[data-host]").count() == 4
    assert page.locator("tr[data-vm]").count() == 14
    assert page.locator(f"li[data-host='{NODE4}']").get_attribute("data-status") == "disconnected"
    assert "4 VMs" in page.locator(f"li[data-host='{NODE1}']").inner_text()
    assert page.locator(vm_row(page, RUNNING_VM)).get_attribute("data-status") == "running"
    # Choosing a host lists its VMs only.
    page.locator(f"[data-key='host-{NODE2}']").click()
    page.wait_for_function("document.querySelectorAll('tr[data-vm]').length === 4")
    assert page.locator(f"tr[data-host='{NODE2}']").count() == 4
    page.locator("[data-key='host-all']").click()
    page.wait_for_function("document.querySelectorAll('tr[data-vm]').length === 14")
    shot(page, "overview")


def test_start_a_vm_and_see_it_run_without_reloading(page: Page, base: str) -> None:
    log_in(page, base)
    page.evaluate("window.__same_page = true")
    start = page.locator(f"[data-key='act-{OFF_VM}-start']")
    start.focus()
    page.keyboard.press("Enter")  # keyboard only
    page.locator(f"{vm_row(page, OFF_VM)}[data-status='running']").wait_for()
    # A change made elsewhere (another client) shows up too, from the feed or a poll.
    token = httpx.post(f"{base}/api/v1/auth/login",
                       json={"username": "admin", "password": "admin"}).json()["token"]
    r = httpx.post(f"{base}/api/v1/vms/{OTHER_OFF_VM}/action", json={"action": "start"},
                   headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    page.locator(f"{vm_row(page, OTHER_OFF_VM)}[data-status='running']").wait_for()
    assert page.evaluate("window.__same_page") is True


def test_migrate_a_vm_and_watch_the_bar_reach_100_and_the_vm_move(page: Page, base: str) -> None:
    log_in(page, base)
    page.locator(f"[data-key='host-{NODE1}']").click()
    page.wait_for_function("document.querySelectorAll('tr[data-vm]').length === 4")
    page.get_by_role("button", name="Migrate web-frontend-01").click()
    dialog = page.locator("dialog")
    dialog.get_by_label("Destination host").select_option(NODE2)
    # A disconnected host cannot be picked.
    assert dialog.locator(f"option[value='{NODE4}']").is_disabled()
    dialog.get_by_role("button", name="Migrate", exact=True).click()
    row = page.locator(vm_row(page, RUNNING_VM))
    bar = row.get_by_role("progressbar", name="Migration of web-frontend-01")
    bar.wait_for()
    assert row.get_by_role("button", name="Cancel the migration of web-frontend-01").is_visible()

    # Move the frozen clock from the panel: part of the way, then past the end.
    advance(page, 3)
    page.wait_for_function(
        "(() => { const p = document.querySelector(\"li[data-migration] progress\");"
        " return p && p.value > 0 && p.value < 100; })()")
    shot(page, "migration")
    advance(page, 60)
    job = page.locator("li[data-migration][data-status='completed']")
    job.wait_for()
    assert job.locator("progress").evaluate("p => p.value") == 100
    assert re.search(r"100\s*%", job.inner_text())
    # It left vapor-node-01's list, and vapor-node-02 now has it.
    page.locator(vm_row(page, RUNNING_VM)).wait_for(state="detached")
    page.locator(f"[data-key='host-{NODE2}']").click()
    page.locator(f"{vm_row(page, RUNNING_VM)}[data-host='{NODE2}']").wait_for()
    assert page.locator(vm_row(page, RUNNING_VM)).get_attribute("data-status") == "running"
    page.wait_for_function(
        f"document.querySelector(\"li[data-host='{NODE2}']\").innerText.includes('5 VMs')")


def test_the_migrate_dialog_works_from_the_keyboard(page: Page, base: str) -> None:
    log_in(page, base)
    migrate = page.get_by_role("button", name="Migrate web-frontend-01")
    migrate.focus()
    page.keyboard.press("Enter")
    dialog = page.locator("dialog[open]")
    dialog.wait_for()
    assert page.evaluate("document.activeElement.id") == "mig-dest"  # focus moved in
    page.keyboard.press("Escape")  # closes without migrating; focus comes back
    dialog.wait_for(state="detached")
    assert page.evaluate("document.activeElement.dataset.key") == f"mig-{RUNNING_VM}"
    assert page.locator("li[data-migration]").count() == 0


def test_a_failed_migration_shows_its_error_and_cancel_stops_one(page: Page, base: str) -> None:
    log_in(page, base)
    page.get_by_label("Operation").select_option("migrate")
    page.get_by_label("Mode").select_option("fail")
    page.get_by_label("At % (fail)").fill("40")
    page.get_by_label("Message").fill("destination ran out of memory")
    page.get_by_role("button", name="Arm fault").click()
    page.locator("[data-sim='active']", has_text="1 faults armed").wait_for()
    page.get_by_role("button", name="Migrate web-frontend-01").click()
    page.locator("dialog").get_by_role("button", name="Migrate", exact=True).click()
    page.locator(f"{vm_row(page, RUNNING_VM)} progress").wait_for()
    advance(page, 60)
    failed = page.locator("li[data-migration][data-status='failed']")
    failed.wait_for()
    assert "destination ran out of memory" in failed.inner_text()
    assert page.locator(vm_row(page, RUNNING_VM)).get_attribute("data-host") == NODE1

    page.get_by_role("button", name="Migrate web-frontend-02").click()
    page.locator("dialog").get_by_role("button", name="Migrate", exact=True).click()
    page.get_by_role("button", name="Cancel the migration of web-frontend-02").first.click()
    page.locator("li[data-migration][data-status='cancelled']").wait_for()


def test_a_viewer_sees_no_write_buttons(page: Page, base: str) -> None:
    log_in(page, base, "viewer")
    page.locator("#user", has_text="viewer").wait_for()
    for tool in WRITE_TOOLS:
        assert page.locator(f"[data-action='{tool}']").count() == 0, tool
    assert page.locator("#sim").count() == 0
    assert page.locator("[data-sim-host]").count() == 0
    # Reading is allowed: charts are there for everyone.
    assert page.locator("[data-action='charts']").count() == 14
    shot(page, "viewer")


def test_a_chart_has_points_and_a_lost_host_is_drawn_with_gaps(page: Page, base: str) -> None:
    log_in(page, base)
    page.get_by_role("button", name="Charts of web-frontend-01").click()
    cpu = page.locator("figure.chart[data-chart='cpu']")
    page.wait_for_function(
        "Number(document.querySelector(\"figure[data-chart='cpu']\")?.dataset.points) > 0")
    assert cpu.locator("canvas").count() == 1
    assert int(cpu.get_attribute("data-points") or 0) >= 60
    page.get_by_label("Window").select_option("900")
    page.get_by_label("Step").select_option("10")
    page.locator("[data-summary='cpu']", has_text="every 10 s").wait_for()
    shot(page, "charts", "#perf")

    # A host lost for 10 minutes (from the panel, on the frozen clock): its chart has
    # points before and after, and the 10 minutes between drawn as a gap.
    page.get_by_role("button", name="Disconnect vapor-node-03.corp.awan.io").click()
    page.locator(f".host-items li[data-host='{NODE3}'][data-status='disconnected']").wait_for()
    advance(page, 600)
    page.get_by_role("button", name="Reconnect vapor-node-03.corp.awan.io").click()
    page.locator(f".host-items li[data-host='{NODE3}'][data-status='connected']").wait_for()
    advance(page, 120)
    page.get_by_role("button", name="Charts of vapor-node-03.corp.awan.io").click()
    page.get_by_label("Window").select_option("3600")
    page.get_by_label("Step").select_option("60")
    page.wait_for_function(
        "(() => { const f = document.querySelector(\"figure[data-chart='cpu']\");"
        " return f && Number(f.dataset.gaps) >= 9 && Number(f.dataset.points) > 40; })()")
    assert "drawn as gaps" in page.locator("[data-summary='cpu']").inner_text()


def test_a_host_disconnected_from_the_panel_shows_as_disconnected(page: Page, base: str) -> None:
    log_in(page, base)
    page.get_by_role("button", name="Disconnect vapor-node-03.corp.awan.io").click()
    page.locator(f".host-items li[data-host='{NODE3}'][data-status='disconnected']").wait_for()
    # Its VMs' actions would answer 503 host_disconnected: the row says why they wait.
    restart = page.get_by_role("button", name="Restart monitoring-01")
    restart.wait_for()
    page.locator(f"[data-key='{restart.get_attribute('data-key')}'][aria-disabled='true']").wait_for()
    assert "vapor-node-03 is disconnected" in page.locator(
        f"#{restart.get_attribute('aria-describedby')}").inner_text()
    shot(page, "disconnected")
    shot(page, "simulator", "#sim")
    page.get_by_role("button", name="Reconnect vapor-node-03.corp.awan.io").click()
    page.locator(f".host-items li[data-host='{NODE3}'][data-status='connected']").wait_for()


def test_a_sandbox_is_made_listed_and_opened_from_the_panel(page: Page, base: str) -> None:
    log_in(page, base)
    page.get_by_label("Label").fill("dashboard test")
    page.get_by_role("button", name="New sandbox").click()
    item = page.locator("li[data-sandbox]", has_text="dashboard test")
    item.wait_for()
    sandbox = item.get_attribute("data-sandbox")
    link = item.get_by_role("link", name=f"Open sandbox {sandbox} in a new tab")
    href = link.get_attribute("href")
    assert href == f"/sandboxes/{sandbox}/dashboard/"
    try:
        # The sandbox's own dashboard: its own world, its own login.
        page.goto(f"{base}{href}")
        page.get_by_role("button", name="Log in").click()
        page.locator("tr[data-vm]").first.wait_for()
        assert page.locator("#where").inner_text() == f"sandbox {sandbox}"
        page.get_by_role("button", name="Disconnect vapor-node-01.corp.awan.io").click()
        page.locator(f".host-items li[data-host='{NODE1}'][data-status='disconnected']").wait_for()
        page.locator(".sim-sandboxes", has_text="default world").wait_for()
        # The default world did not change.
        page.goto(f"{base}/dashboard/")
        page.locator(f".host-items li[data-host='{NODE1}']").wait_for()
        assert page.locator(f".host-items li[data-host='{NODE1}']").get_attribute(
            "data-status") == "connected"
    finally:
        page.get_by_role("button", name=f"Delete sandbox {sandbox}").click()
        page.locator(f"li[data-sandbox='{sandbox}']").wait_for(state="detached")


def test_the_header_says_where_live_updates_come_from(page: Page, base: str) -> None:
    """`live` from the change feed when the server has one, else `polling` (the fallback)."""
    token = httpx.post(f"{base}/api/v1/auth/login",
                       json={"username": "admin", "password": "admin"}).json()["token"]
    has_feed = httpx.post(f"{base}/api/v1/events/ticket",
                          headers={"Authorization": f"Bearer {token}"}).status_code != 404
    log_in(page, base)
    page.locator(f"#feed[data-mode='{'live' if has_feed else 'polling'}']").wait_for()


def test_the_change_feed_client_follows_the_contract(page: Page, base: str) -> None:
    """The feed's client against the COORD contract, served by the test (page.route):
    a ticket with the bearer token, an EventSource with it, events applied as they come,
    and the next connection resumed from the last event id with a new ticket."""
    seen: list[str] = []
    vm = httpx.get(f"{base}/api/v1/vms/{RUNNING_VM}", headers={
        "Authorization": "Bearer " + httpx.post(
            f"{base}/api/v1/auth/login", json={"username": "admin", "password": "admin"},
        ).json()["token"]}).json()
    tickets = iter(range(1, 100))

    def ticket(route: Route) -> None:
        assert (route.request.headers.get("authorization") or "").startswith("Bearer ")
        route.fulfill(status=200, json={"ticket": f"t{next(tickets)}", "expires_in": 30})

    def events(route: Route) -> None:
        seen.append(route.request.url)
        if len(seen) == 1:
            paused = dict(vm, status="paused")
            body = f"id: 41\nevent: vm\ndata: {json.dumps(paused)}\n\n"
        else:
            body = ": nothing new\n\n"
        route.fulfill(status=200, body=body, headers={"Content-Type": "text/event-stream"})

    page.route("**/api/v1/events/ticket", ticket)
    page.route(re.compile(r".*/api/v1/events\?.*"), events)
    log_in(page, base)
    page.locator(f"{vm_row(page, RUNNING_VM)}[data-status='paused']").wait_for()
    page.wait_for_function("document.querySelectorAll('tr[data-vm]').length === 14")
    page.wait_for_function("document.getElementById('feed').dataset.mode !== 'connecting'")
    if len(seen) < 2:  # the first stream ended: the client comes back with a new ticket
        page.wait_for_event("requestfinished", lambda r: "ticket=t2" in r.url)
    assert "ticket=t1" in seen[0]
    assert "ticket=t2" in seen[1] and "last_event_id=41" in seen[1]


def test_the_panel_sets_latency_and_speed_and_loads_a_scenario(page: Page, base: str,
                                                              console: Console) -> None:
    console.allow_status(400, 404)  # a delay and a scenario the server refuses, on purpose
    log_in(page, base)
    # What the form would stop, the server refuses: its 400 is shown as sent.
    page.locator("#sim-latency").evaluate("el => el.removeAttribute('max')")
    page.get_by_label("Delay (ms)").fill("70000")
    page.get_by_role("button", name="Set latency").click()
    page.locator(".problem[data-status='400']", has_text="Set latency").wait_for()
    page.get_by_label("Delay (ms)").fill("5")
    page.get_by_role("button", name="Set latency").click()
    page.locator("[data-sim='latency']", has_text="5 ms").wait_for()
    page.get_by_label("Speed (virtual s per s)").fill("0")
    page.get_by_role("button", name="Set speed").click()
    page.locator("[data-sim='speed']", has_text="0\u00d7").wait_for()
    page.get_by_label("Name", exact=True).fill("no-such-scenario")
    page.get_by_role("button", name="Load").click()
    page.locator(".problem[data-status='404']").wait_for()
    page.get_by_label("Name", exact=True).fill("default")
    page.get_by_role("button", name="Load").click()
    page.locator("[data-sim='latency']", has_text="0 ms").wait_for()  # a load clears it
    # The session survives a reload (kept for this tab only).
    page.reload()
    page.locator("tr[data-vm]").first.wait_for()
    assert page.locator("#username").count() == 0


def test_a_narrow_window_still_fits(page: Page, base: str) -> None:
    page.set_viewport_size({"width": 390, "height": 800})
    log_in(page, base)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    # The action buttons stay on screen and usable.
    start = page.locator(f"[data-key='act-{OFF_VM}-start']")
    box = start.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 390
    shot(page, "narrow")
    # Charts and the simulator panel fit too.
    page.get_by_role("button", name="Charts of web-frontend-01").click()
    page.locator("figure[data-chart='cpu'][data-points]").wait_for()
    assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
    plot = page.locator("figure[data-chart='cpu'] canvas").bounding_box()
    assert plot is not None and plot["x"] + plot["width"] <= 390


def test_every_control_has_a_name(page: Page, base: str) -> None:
    """Buttons, inputs and selects all have an accessible name (label, text or aria-label)."""
    log_in(page, base)
    page.get_by_role("button", name="Charts of web-frontend-01").click()
    page.locator("#chart-window").wait_for()
    unnamed = page.evaluate("""() => [...document.querySelectorAll('button, input, select')]
        .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                      && !el.textContent.trim())
        .map(el => el.outerHTML.slice(0, 80))""")
    assert unnamed == []


AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"


@pytest.mark.parametrize("who", ["nobody", "admin", "viewer"])
def test_axe_finds_no_accessibility_violations(page: Page, base: str, who: str) -> None:
    """axe-core (pinned in package.json) on the login form, and on the main view with
    charts open, at WCAG 2.1 AA: contrast, labels, names, roles."""
    if not AXE.exists():
        pytest.skip("axe-core not installed: run `npm ci` (make test does)")
    if who == "nobody":
        page.goto(f"{base}/dashboard/")
        page.get_by_label("Username").wait_for()
    else:
        log_in(page, base, who)
        page.get_by_role("button", name="Charts of web-frontend-01").click()
        page.locator("figure[data-chart='cpu'][data-points]").wait_for()
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("""async () => {
        const r = await axe.run(document, {runOnly: {type: 'tag',
            values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}});
        return r.violations.map(v => ({id: v.id, help: v.help,
            nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}));
    }""")
    assert result == []


def test_screenshots_are_committed() -> None:
    """The README shows these; COCKPIT_SCREENSHOTS=1 regenerates them."""
    names = {p.stem for p in Path(SHOTS).glob("*.png")}
    assert {"login", "overview", "migration", "charts", "viewer", "disconnected", "simulator",
            "narrow"} <= names
