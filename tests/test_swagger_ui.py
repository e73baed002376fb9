"""Swagger UI's "Try it out", pressed as a newcomer would, in a real Chromium.

Log in with the prefilled example, authorize with the token it returns, then
list VMs with nothing changed: every VM of the scenario comes back (the
examples used to prefill each optional filter, and the login password with one
that answered 401 and counted toward throttling). Skipped without Debian's
chromium or the playwright package (tests/browser.py's fixtures).

The token given to "Authorize" outlives a reload (persistAuthorization).
"""

from __future__ import annotations

import json
from typing import Any

from tests.serving import served


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


def _authorize(page: Any) -> None:
    login = _try_it_out(page, "auth-login")
    assert login["status"] == 200, login
    page.locator(".btn.authorize").first.click()
    dialog = page.locator(".dialog-ux")
    dialog.locator("input").first.fill(login["body"]["token"])
    dialog.get_by_role("button", name="Authorize", exact=True).click()
    dialog.get_by_role("button", name="Close").click()


def test_try_it_out_as_it_comes(page: Any) -> None:
    with served("--speed", "0") as base:
        page.goto(f"{base}/api/v1/ui/")
        _authorize(page)
        vms = _try_it_out(page, "vms-list_vms")
        assert vms["status"] == 200, vms
        assert len(vms["body"]["vms"]) == 14  # the whole default scenario: no filter prefilled


def test_the_authorization_survives_a_reload(page: Any) -> None:
    with served("--speed", "0") as base:
        page.goto(f"{base}/api/v1/ui/")
        _authorize(page)
        page.reload()
        # Still authorized: the lock says so, and a call needing a token gets through.
        page.locator(".btn.authorize.locked").first.wait_for()
        vms = _try_it_out(page, "vms-list_vms")
        assert vms["status"] == 200, vms
