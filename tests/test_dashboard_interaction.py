"""The dashboard under a user's hands (headless Chromium against a served simulator):
clicks that land while the page is busy, a world replaced under it, buttons that say what
will happen, charts one can read, a console without errors.

Each test starts from the default world on a frozen clock (tests/dashboard_support.py);
the tests that need time to pass set the clock's speed or move it, and every wait is a
page condition with a bounded timeout. The one fixed pause is a human's: a press held
120 ms before its release, as a hand clicks.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from cockpit_api.backends.sim import scenario as scenarios
from tests import dashboard_support
from tests.browser import TIMEOUT_MS, VIEWPORT, Console, skip_reason
from tests.dashboard_support import (
    FRONTEND2_VM,
    GATEWAY_VM,
    MAIL_VM,
    MONITORING_VM,
    NODE2,
    NODE3,
    RUNNING_VM,
    admin_headers,
    log_in,
    vm_row,
)
from tests.serving import ROOT

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page, Request

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # pragma: no cover - then every test here is skipped
    PlaywrightTimeout = TimeoutError  # type: ignore[misc,assignment]

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

# The fixtures `server` (one served simulator for the module) and `base` (a fresh world).
server_fixture = dashboard_support.server_fixture
base_fixture = dashboard_support.base_fixture

HOLD_MS = 120  # a human click: press, hold, release
CLICKS = 20
# Keeps every uPlot the page makes in window.__plots (the test reads the ticks it drew)
# and counts the migration events the page's EventSource receives.
INSTRUMENT = """(() => {
  let real;
  window.__plots = [];
  Object.defineProperty(window, "uPlot", {
    configurable: true,
    get() { return real; },
    set(v) {
      real = new Proxy(v, { construct(target, args) {
        const u = Reflect.construct(target, args); window.__plots.push(u); return u; } });
    },
  });
  window.__migrationEvents = 0;
  const add = EventSource.prototype.addEventListener;
  EventSource.prototype.addEventListener = function (type, fn, opts) {
    if (type === "migration") {
      return add.call(this, type, (ev) => { window.__migrationEvents++; fn(ev); }, opts);
    }
    return add.call(this, type, fn, opts);
  };
})();"""


def waiting(button: Locator) -> bool:
    """Disabled for now (aria-disabled: the button keeps focus, its reason is read)."""
    return button.get_attribute("aria-disabled") == "true"


def press(page: Page, target: Locator) -> None:
    """Click as a hand does: move to the button on screen, press, hold, release (whatever
    the page does meanwhile, and whether or not the button is enabled)."""
    target.wait_for()
    box = target.bounding_box()
    if box is None:  # redrawn between finding and measuring it: a hand would see the new one
        target.wait_for()
        box = target.bounding_box()
    assert box is not None, "the button is not on screen"
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.wait_for_timeout(HOLD_MS)
    page.mouse.up()


def sim(base: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{base}/_sim/{path}", json=body, headers=admin_headers(base))
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def migrate(base: str, vm_id: str, dest: str) -> str:
    r = httpx.post(f"{base}/api/v1/vms/{vm_id}/migrate", json={"destination_host_id": dest},
                   headers=admin_headers(base))
    assert r.status_code == 202, r.text
    job: str = r.json()["migration_id"]
    return job


def posts(page: Page, fragment: str) -> list[Request]:
    seen: list[Request] = []
    page.on("request", lambda r: seen.append(r) if r.method == "POST" and fragment in r.url
            else None)
    return seen


# --- lost clicks ------------------------------------------------------------------------

def test_every_human_speed_click_takes_effect_during_a_migration(page: Page, base: str) -> None:
    """A migration's progress arrives twice a second; Pause/Resume pressed and held like a
    hand does, twenty times on another VM's row, must each take effect, and so must the
    migration's own Cancel. (Rebuilding the table on every event lost 2 to 4 of 12: one
    press in five; twenty presses all landing by luck is about one chance in a hundred.)"""
    page.add_init_script(INSTRUMENT)
    log_in(page, base)
    migrate(base, GATEWAY_VM, NODE2)
    # 8 GiB at 512 MiB/s: 16 virtual seconds, over 5 minutes at this speed: the job runs,
    # and reports progress, all through the clicks.
    sim(base, "clock", {"speed": 0.05})
    bar = page.locator(f"{vm_row(GATEWAY_VM)} progress")
    bar.wait_for()
    page.wait_for_function("window.__migrationEvents >= 2")
    events_before = page.evaluate("window.__migrationEvents")
    row = page.locator(vm_row(RUNNING_VM))
    missed: list[int] = []
    for i in range(CLICKS):
        status = row.get_attribute("data-status")
        name, after = ("Pause", "paused") if status == "running" else ("Resume", "running")
        press(page, row.get_by_role("button", name=f"{name} web-frontend-01"))
        try:
            page.locator(f"{vm_row(RUNNING_VM)}[data-status='{after}']").wait_for(timeout=3000)
        except PlaywrightTimeout:  # a lost click: counted, and the next one tried
            missed.append(i)
    events = page.evaluate("window.__migrationEvents") - events_before
    assert events >= 3, f"only {events} progress events arrived: the test did not test"
    assert page.locator(f"{vm_row(GATEWAY_VM)} progress").count() == 1, "the job ended early"
    assert missed == [], f"{len(missed)} of {CLICKS} clicks were lost (presses {missed})"
    press(page, page.locator(vm_row(GATEWAY_VM)).get_by_role(
        "button", name="Cancel the migration of api-gateway-01"))
    page.locator("li[data-migration][data-status='cancelled']").wait_for()


# --- a world replaced under the page ----------------------------------------------------

def test_loading_a_scenario_with_a_host_selected_shows_the_new_world(page: Page,
                                                                     base: str) -> None:
    log_in(page, base)
    page.get_by_label("Name", exact=True).fill("large")
    page.get_by_role("button", name="Load").click()
    page.locator("#host-filter").wait_for(timeout=60_000)  # 1,000 hosts: the filter box
    first = page.locator(".host-items li[data-host] .host-pick").first
    picked = first.locator(".host-name").inner_text()
    first.click()
    page.locator("#vms-h", has_text=f"Virtual machines on {picked}").wait_for()
    page.locator("tr[data-vm]").first.wait_for()
    page.locator(".host-items li[data-host] [data-key^='hchart-']").first.click()
    page.locator("figure[data-chart='cpu'][data-points]").wait_for()
    page.get_by_label("Name", exact=True).fill("default")
    page.get_by_role("button", name="Load").click()
    page.wait_for_function("document.querySelectorAll('.host-items li[data-host]').length === 4"
                           " && document.querySelectorAll('tr[data-vm]').length === 14")
    assert page.locator("#vms-h").inner_text() == "Virtual machines"
    assert page.locator("[data-key='host-all']").get_attribute("aria-pressed") == "true"
    assert page.locator("#host-filter").count() == 0  # 4 hosts need no filter
    assert page.locator("#perf-h").inner_text() == "Performance"  # no charts of a lost host
    assert page.locator(".problem").count() == 0, page.locator(".problem").all_inner_texts()


# --- buttons that say what will happen -----------------------------------------------------

def test_a_second_press_during_a_slow_call_sends_nothing_and_shows_it_pending(
        page: Page, base: str) -> None:
    log_in(page, base)
    actions = posts(page, "/action")
    sim(base, "latency", {"ms": 1500, "path": "/api/v1/vms/*/action"})
    pause = page.locator(f"[data-key='act-{RUNNING_VM}-suspend']")
    press(page, pause)
    # While the call is out: the button says so, and the row's other actions wait too.
    page.locator(f"[data-key='act-{RUNNING_VM}-suspend'][aria-busy='true']").wait_for()
    assert "Pausing" in pause.inner_text()
    assert waiting(pause)
    assert waiting(page.locator(f"[data-key='act-{RUNNING_VM}-stop']"))
    press(page, pause)  # the impatient second press
    page.locator(f"{vm_row(RUNNING_VM)}[data-status='paused']").wait_for()
    assert len(actions) == 1, [r.post_data for r in actions]
    resume = page.locator(f"[data-key='act-{RUNNING_VM}-resume']")
    assert not waiting(resume) and resume.get_attribute("aria-busy") is None
    # A migration asked for from the dialog: the row says so until the job is there.
    sim(base, "latency", {"ms": 1500, "path": "/api/v1/vms/*/migrate"})
    migrations = posts(page, "/migrate")
    page.get_by_role("button", name="Migrate web-frontend-02").click()
    page.locator("dialog").get_by_role("button", name="Migrate", exact=True).click()
    busy = page.locator(f"[data-key='mig-{FRONTEND2_VM}'][aria-busy='true']")
    busy.wait_for()
    assert "Migrating" in busy.inner_text()
    press(page, busy)
    page.locator(f"{vm_row(FRONTEND2_VM)} progress").wait_for()
    assert len(migrations) == 1
    assert page.locator(".problem").count() == 0, page.locator(".problem").all_inner_texts()


def test_a_vm_on_a_disconnected_host_has_its_buttons_disabled_with_the_reason(
        page: Page, base: str) -> None:
    log_in(page, base)
    actions = posts(page, "/action")
    # vapor-node-04 is disconnected in the default scenario; its VMs can only be charted.
    mail = page.locator(vm_row(MAIL_VM))
    assert "vapor-node-04 is disconnected" in mail.inner_text()
    buttons = mail.locator("button[data-action]:not([data-action='charts'])")
    assert buttons.count() >= 2
    for button in buttons.all():
        assert waiting(button)
        reason = page.locator(f"#{button.get_attribute('aria-describedby')}")
        assert "disconnected" in reason.inner_text()
    assert not waiting(mail.get_by_role("button", name="Charts of mail-relay-01"))

    page.get_by_role("button", name="Disconnect vapor-node-03.corp.awan.io").click()
    monitoring = page.locator(vm_row(MONITORING_VM))
    monitoring.locator("text=vapor-node-03 is disconnected").wait_for()
    restart = monitoring.get_by_role("button", name="Restart monitoring-01")
    assert waiting(restart)
    press(page, restart)  # nothing happens: the answer would be a 503
    page.get_by_role("button", name="Reconnect vapor-node-03.corp.awan.io").click()
    page.locator(f"[data-key='act-{MONITORING_VM}-restart']:not([aria-disabled])").wait_for()
    assert "disconnected" not in monitoring.inner_text()
    assert actions == []
    assert page.locator(".problem").count() == 0


def test_a_failed_migration_shows_on_its_vms_row(page: Page, base: str) -> None:
    log_in(page, base)
    sim(base, "faults", {"operation": "migrate", "mode": "fail", "at_percent": 40, "count": 1,
                         "message": "destination ran out of memory"})
    migrate(base, RUNNING_VM, NODE2)
    page.locator(f"{vm_row(RUNNING_VM)} progress").wait_for()
    sim(base, "clock", {"advance": 60})
    page.locator("li[data-migration][data-status='failed']").wait_for()
    row = page.locator(vm_row(RUNNING_VM))
    note = row.locator(".row-problem")
    note.wait_for()
    assert "Migration to vapor-node-02 failed" in note.inner_text()
    assert "destination ran out of memory" in note.inner_text()
    assert row.locator("progress").count() == 0
    # The VM stayed where it was and can be migrated again; the next job replaces the note.
    assert row.get_attribute("data-host") != NODE2
    migrate(base, RUNNING_VM, NODE3)
    page.locator(f"{vm_row(RUNNING_VM)} progress").wait_for()
    assert row.locator(".row-problem").count() == 0


# --- charts -----------------------------------------------------------------------------

BINARY = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}


def plots(page: Page) -> dict[str, dict[str, Any]]:
    """What each chart's uPlot drew: its axes' split values and labels, its data."""
    drawn: dict[str, dict[str, Any]] = page.evaluate("""() => Object.fromEntries(
        window.__plots.filter(u => u.root.isConnected).map(u => [
          u.root.closest('figure').dataset.chart,
          {x: u.axes[0]._splits, xLabels: u.axes[0]._values,
           y: u.axes[1]._splits, yLabels: u.axes[1]._values, xs: u.data[0], ys: u.data[1]}]))""")
    return drawn


def nice_bytes_step(step: float) -> bool:
    """1, 2 or 5 times a power of ten (below 1024) of a binary unit."""
    return any(step == m * 10**e * unit for unit in BINARY.values() for m in (1, 2, 5)
               for e in range(3))


def label_bytes(label: str) -> float:
    m = re.fullmatch(r"(-?[\d.]+) (B|KiB|MiB|GiB|TiB)(/s)?", label)
    assert m, label
    return float(m.group(1)) * BINARY[m.group(2)]


def open_charts(page: Page, name: str) -> None:
    page.get_by_role("button", name=f"Charts of {name}").click()
    page.wait_for_function(
        "Number(document.querySelector(\"figure[data-chart='cpu']\")?.dataset.points) > 0")
    page.wait_for_function("window.__plots.filter(u => u.root.isConnected"
                           " && u.axes[1]._values && u.data[0].length).length === 4")


def test_byte_charts_tick_at_1_2_5_steps_of_binary_units(page: Page, base: str) -> None:
    page.add_init_script(INSTRUMENT)
    log_in(page, base)
    open_charts(page, "db-primary-01")  # 16 GiB: gigabytes of memory, megabytes a second
    drawn = plots(page)
    for chart in ("memory", "disk", "net"):
        ys, labels = drawn[chart]["y"], drawn[chart]["yLabels"]
        assert len(ys) >= 2, (chart, labels)
        steps = {b - a for a, b in itertools.pairwise(ys)}
        assert len(steps) == 1 and nice_bytes_step(steps.pop()), (chart, ys, labels)
        # Each label says exactly its tick's value: no "954 MiB" for a billion bytes.
        assert [label_bytes(x) for x in labels] == ys, (chart, labels)


def test_an_empty_chart_has_no_duplicated_ticks(page: Page, base: str) -> None:
    page.add_init_script(INSTRUMENT)
    log_in(page, base)
    open_charts(page, "build-runner-01")  # shut off: flat zero everywhere
    for chart, drawn in plots(page).items():
        labels = drawn["yLabels"]
        assert len(labels) >= 2 and len(set(labels)) == len(labels), (chart, labels)


def utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def test_the_legend_shows_the_hovered_time_and_values_in_utc(browser: Browser, base: str,
                                                             console: Console) -> None:
    # A browser far from UTC: a chart drawn in local time shows 5 h 30 min off the panel.
    ctx = browser.new_context(viewport=VIEWPORT, timezone_id="Asia/Kolkata")  # type: ignore[arg-type]
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        page = ctx.new_page()
        console.watch(page)
        page.add_init_script(INSTRUMENT)
        log_in(page, base)
        open_charts(page, "web-frontend-01")
        cpu = page.locator("figure[data-chart='cpu']")
        drawn = plots(page)["cpu"]
        # The time axis: ticks labelled in UTC, and it says so.
        for t, label in zip(drawn["x"], drawn["xLabels"], strict=True):
            assert datetime.fromtimestamp(t, UTC).strftime("%H:%M") in label, (t, label)
        assert "UTC" in cpu.inner_text()
        # Not hovering: the latest sample. Hovering: the instant under the pointer.
        legend = cpu.locator(".chart-legend")
        latest = max(x for x, y in zip(drawn["xs"], drawn["ys"], strict=True) if y is not None)
        assert utc(latest) in legend.inner_text()
        assert re.search(r"CPU %\s*\d+(\.\d+)? %", legend.inner_text())
        over = cpu.locator(".u-over").bounding_box()
        assert over is not None
        page.mouse.move(over["x"] + over["width"] * 0.3, over["y"] + over["height"] / 2)
        page.wait_for_function("window.__plots.some(u => u.root.isConnected"
                               " && u.root.closest('figure').dataset.chart === 'cpu'"
                               " && u.cursor.idx != null)")
        hovered = page.evaluate("""() => { const u = window.__plots.find(u => u.root.isConnected
            && u.root.closest('figure').dataset.chart === 'cpu');
            return u.data[0][u.cursor.idx]; }""")
        assert hovered < latest
        legend.filter(has_text=utc(hovered)).wait_for()
        assert re.search(r"CPU %\s*\d+(\.\d+)? %", legend.inner_text())
        unexpected = console.unexpected()
        assert unexpected == []
    finally:
        ctx.close()


# --- a clean console --------------------------------------------------------------------

def test_a_bad_scenario_name_is_stopped_by_the_page(page: Page, base: str) -> None:
    log_in(page, base)
    loads = posts(page, "/_sim/scenario")
    name = page.get_by_label("Name", exact=True)
    name.fill("bad name!")
    page.get_by_role("button", name="Load").click()
    assert name.evaluate("el => el.validity.patternMismatch") is True
    name.fill("default")
    page.get_by_role("button", name="Load").click()
    page.wait_for_function("document.getElementById('announce').textContent"
                           ".includes('Load scenario default: done')")
    assert [r.post_data_json for r in loads] == [{"name": "default"}]


def test_a_sandboxs_dashboard_loads_without_an_error(page: Page, base: str) -> None:
    r = httpx.post(f"{base}/_sim/sandboxes", json={"scenario": "default"},
                   headers=admin_headers(base))
    assert r.status_code == 201, r.text
    sandbox = r.json()
    failed: list[str] = []
    page.on("response", lambda res: failed.append(f"{res.status} {res.url}")
            if res.status >= 400 else None)
    try:
        page.goto(f"{base}{sandbox['path']}/dashboard/")
        page.get_by_role("button", name="Log in").click()
        page.locator("tr[data-vm]").first.wait_for()
        page.locator(".sim-sandboxes", has_text="default world").wait_for()
        page.reload()  # and again on every load
        page.locator("tr[data-vm]").first.wait_for()
        page.locator(".sim-sandboxes", has_text="default world").wait_for()
        assert failed == []
    finally:
        httpx.delete(f"{base}/_sim/sandboxes/{sandbox['id']}", headers=admin_headers(base))


def _snapshot(base: str, out: Path) -> dict[str, Any]:
    """The real `cockpit-api snapshot` of a served world (as tests/test_snapshot.py runs it)."""
    p = subprocess.run(
        [sys.executable, "-m", "cockpit_api.cli", "snapshot", "--base-url", base, "--username",
         "admin", "--password-stdin", "--quiet", "--anonymize", "--salt", "dash", "-o", str(out)],
        input="admin\n", cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    data: dict[str, Any] = scenarios.read_data(out)
    return data


def test_a_snapshot_file_uploaded_in_the_sandbox_form_is_the_new_sandboxs_world(
        page: Page, base: str, tmp_path: Path) -> None:
    # Anonymized: its host and VM names are none of the default world's, so a sandbox of
    # the default scenario (the name box still says "default") cannot pass for it.
    snap = tmp_path / "cluster.yaml"
    data = _snapshot(base, snap)
    assert snap.read_text(encoding="utf-8").startswith("#")
    want_hosts = sorted(h["hostname"] for h in data["hosts"])
    want_vms = sorted((v["id"], v["name"]) for v in data["vms"])
    assert len(want_vms) == 14 and "web-frontend-01" not in {n for _, n in want_vms}
    made: list[Any] = []
    page.on("request", lambda r: made.append(r.post_data_json)
            if r.method == "POST" and r.url.endswith("/_sim/sandboxes") else None)
    log_in(page, base)
    page.locator("#sandbox-file").set_input_files(str(snap))
    page.get_by_label("Label").fill("from a snapshot")
    page.locator("#sandbox-new").click()
    item = page.locator("li[data-sandbox]", has_text="from a snapshot")
    item.wait_for()
    # Sent inline: the document itself, not a name (and no header comment in it).
    assert len(made) == 1 and made[0]["scenario"]["hosts"] == data["hosts"]
    sandbox = item.get_attribute("data-sandbox")
    path = f"/sandboxes/{sandbox}"
    try:
        page.goto(f"{base}{path}/dashboard/")
        page.get_by_role("button", name="Log in").click()
        page.locator("tr[data-vm]").first.wait_for()
        page.wait_for_function(
            f"document.querySelectorAll('tr[data-vm]').length === {len(want_vms)}")
        shown = sorted(page.locator("tr[data-vm]").evaluate_all(
            "rows => rows.map(r => [r.dataset.vm,"
            " r.querySelector('th.vm-name').firstChild.textContent.trim()])"))
        assert [vm_id for vm_id, _ in shown] == [vm_id for vm_id, _ in want_vms]
        for (_, name), (_, cell) in zip(want_vms, shown, strict=True):
            assert cell == name, (name, cell)
        hosts = sorted(page.locator(".sim-host-items li > span").evaluate_all(
            "spans => spans.map(s => s.firstChild.textContent)"))
        assert hosts == sorted(x.split(".")[0] for x in want_hosts)
    finally:
        httpx.delete(f"{base}/_sim/sandboxes/{sandbox}", headers=admin_headers(base))


def test_a_scenario_file_the_page_or_the_server_refuses_says_why(
        page: Page, base: str, console: Console, tmp_path: Path) -> None:
    console.allow_status(400)
    log_in(page, base)
    # A hand-written YAML scenario: not read in the browser, and nothing is sent.
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url)
            if r.method == "POST" and "/_sim/" in r.url else None)
    page.locator("#sandbox-file").set_input_files(str(ROOT / "scenarios" / "default.yaml"))
    page.locator("#sandbox-new").click()
    problem = page.locator(".problem", has_text="Cannot read this file")
    problem.wait_for()
    assert "cockpit-api snapshot" in problem.inner_text() and sent == []
    # A JSON document the server refuses: its 400 and the field it names.
    bad = tmp_path / "bad.json"
    bad.write_text('{"hosts": [{"hostname": "a.example"}], "colour": "blue"}', encoding="utf-8")
    page.locator("#sim-scenario-file").set_input_files(str(bad))
    page.get_by_role("button", name="Load").click()
    page.locator(".problem[data-status='400']").wait_for()
    assert len(sent) == 1 and sent[0].endswith("/_sim/scenario")
    # And the same file in the sandbox form: its 400, and no sandbox made.
    page.locator("#sandbox-file").set_input_files(str(bad))
    page.locator("#sandbox-new").click()
    page.locator(".problem[data-status='400']", has_text="New sandbox").wait_for()
    assert len(sent) == 2 and sent[1].endswith("/_sim/sandboxes")
    assert page.locator("li[data-sandbox]").count() == 0
    # The world was kept.
    assert page.locator("[data-sim='inventory']").inner_text() == "4 hosts, 14 VMs"
