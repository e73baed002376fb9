"""Swagger UI's "Try it out", pressed as a newcomer would, in a real Chromium.

Log in with the prefilled example, authorize with the token it returns, then
list VMs with nothing changed: every VM of the scenario comes back (the
examples used to prefill each optional filter, and the login password with one
that answered 401 and counted toward throttling). Skipped without Debian's
chromium or the playwright package.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serving import served

CHROMIUM = Path(os.environ.get("COCKPIT_CHROMIUM", "/usr/bin/chromium"))
TIMEOUT_MS = 15_000  # every wait is a condition on the page, bounded


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    if not (CHROMIUM.exists() and shutil.which(str(CHROMIUM))):
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium package")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-quic"])
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def _try_it_out(page: Any, operation: str) -> dict[str, Any]:
    """Expand an operation, press Try it out then Execute, and return status and JSON body."""
    op = page.locator(f"#operations-{operation}")
    op.locator(".opblock-summary").first.click()
    op.get_by_role("button", name="Try it out").click()
    op.get_by_role("button", name="Execute").click()
    row = op.locator(".live-responses-table .response").first
    row.wait_for()
    status = int(row.locator(".response-col_status").inner_text().strip())
    body = row.locator(".response-col_description pre").first.inner_text()
    return {"status": status, "body": json.loads(body)}


def test_try_it_out_as_it_comes(page: Any) -> None:
    with served("--speed", "0") as base:
        page.goto(f"{base}/api/v1/ui/")
        login = _try_it_out(page, "auth-login")
        assert login["status"] == 200, login
        page.locator(".btn.authorize").first.click()
        dialog = page.locator(".dialog-ux")
        dialog.locator("input").first.fill(login["body"]["token"])
        dialog.get_by_role("button", name="Authorize", exact=True).click()
        dialog.get_by_role("button", name="Close").click()
        vms = _try_it_out(page, "vms-list_vms")
        assert vms["status"] == 200, vms
        assert len(vms["body"]["vms"]) == 14  # the whole default scenario: no filter prefilled
