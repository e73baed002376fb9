"""What the dashboard's browser tests share: one served simulator per module on a frozen
clock (the `server` fixture), a fresh default world per test (`base`), and the few steps
every test takes (log in, move the clock from the panel). A test module binds the two
fixtures (`server_fixture`, `base_fixture`) to names of its own to use them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.serving import ROOT, served

if TYPE_CHECKING:
    from playwright.sync_api import Page

NODE1 = "019e0014-abcd-7057-b326-000000000001"
NODE2 = "019e0014-ffff-7057-b326-000000000002"
NODE3 = "019e0014-1a2b-7057-b326-000000000003"
NODE4 = "019e0014-dead-7057-b326-000000000004"  # disconnected in the default scenario
OFF_VM = "bc2c8e3e-93af-4954-a14c-1d7e84488709"  # build-runner-01: shut off, on node 1
RUNNING_VM = "d13c513a-42f8-4da1-97b1-165f0971b7c4"  # web-frontend-01: running on node 1
OTHER_OFF_VM = "4630de19-bf77-438d-8b9b-7cefad989a70"  # build-runner-02: shut off, on node 2
FRONTEND2_VM = "48a7c825-2abc-4619-a5ab-d89bd67e4d92"  # web-frontend-02: running on node 1
GATEWAY_VM = "eca9bad1-449e-48e4-b15c-e760f3e452f2"  # api-gateway-01: running on node 1, 8 GiB
MONITORING_VM = "825dc254-fc63-4b8b-853c-9fd548740684"  # monitoring-01: running on node 3
MAIL_VM = "627e79c7-2b42-4dd8-82e2-e271c93de18f"  # mail-relay-01: running on node 4
SHOTS = ROOT / "docs" / "screenshots"


@contextmanager
def dashboard_server() -> Iterator[str]:
    """One served simulator on a frozen clock (a test module's `server` fixture)."""
    with served("--speed", "0") as base:
        yield base


def admin_headers(base: str) -> dict[str, str]:
    token = httpx.post(f"{base}/api/v1/auth/login",
                       json={"username": "admin", "password": "admin"}).json()["token"]
    return {"Authorization": f"Bearer {token}"}


def fresh_world(server: str) -> str:
    """The default world again (a test may have loaded another), on a frozen clock."""
    headers = admin_headers(server)
    r = httpx.post(f"{server}/_sim/scenario", json={"name": "default"}, headers=headers)
    assert r.status_code == 200, r.text
    r = httpx.post(f"{server}/_sim/clock", json={"speed": 0}, headers=headers)
    assert r.status_code == 200, r.text
    return server


# Named apart from what they give: a test module binds them to module names (an imported
# `base` would clash, for ruff, with every test's `base` parameter); pytest finds them by `name`.
@pytest.fixture(scope="module", name="server")
def server_fixture() -> Iterator[str]:
    with dashboard_server() as base:
        yield base


@pytest.fixture(name="base")
def base_fixture(server: str) -> str:
    return fresh_world(server)


def shot(page: Page, name: str, selector: str | None = None) -> None:
    """Write docs/screenshots/NAME.png (the viewport from the top, or one element)."""
    if not os.environ.get("COCKPIT_SCREENSHOTS"):
        return
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = str(SHOTS / f"{name}.png")
    page.mouse.move(0, 0)  # no hover effect in the picture
    if selector:
        page.locator(selector).screenshot(path=path)
    else:
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=path)


def log_in(page: Page, base: str, user: str = "admin") -> None:
    page.goto(f"{base}/dashboard/")
    page.get_by_label("Username").wait_for()
    if user != "admin":
        # The simulator's demo users fill the form in with one click.
        page.locator(f"[data-demo={user}]").click()
    page.get_by_role("button", name="Log in").click()
    page.locator("tr[data-vm]").first.wait_for()


def advance(page: Page, seconds: int) -> None:
    """Move the server's frozen clock from the simulator panel, and wait for the answer."""
    before = page.locator("[data-sim='now']").inner_text()
    page.get_by_label("Advance (s)").fill(str(seconds))
    page.locator("#sim-advance-go").click()
    page.wait_for_function(
        f"document.querySelector(\"[data-sim='now']\").innerText !== {before!r}")


def vm_row(vm_id: str) -> str:
    return f"tr[data-vm='{vm_id}']"
