"""Headless Chromium for browser tests: Debian's ``chromium`` driven by Playwright.

Playwright (the PyPI package) brings its own Node driver but no browser: we never
run ``playwright install`` (it downloads a browser build; the machines that run the
tests reach only package registries). It launches the system browser instead,
``/usr/bin/chromium`` from Debian's ``chromium`` package (lab/install-deps.sh
installs it as root; ``make test`` runs that).

tests/conftest.py imports the fixtures, so any test can ask for them::

    def test_it(page: Page) -> None:
        page.goto(...)

``browser`` is one Chromium per test module (starting it costs ~1 s); ``page`` is a
fresh context (own cookies and storage) and page per test, 1280x800.

A page's console is part of what is tested: any console message of type ``error``
(an invalid ``pattern``, a failed request, a script's ``console.error``) or uncaught
error fails the test that saw it. A test that provokes a failed request on purpose
says so through the ``console`` fixture: ``console.allow_status(401)``.
Without chromium or playwright the tests that use them are skipped with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

CHROMIUM = Path(os.environ.get("COCKPIT_CHROMIUM", "/usr/bin/chromium"))
# Quiet, reproducible, offline: no GPU (there is none), no QUIC or background
# traffic (loopback only), no first-run or component updates, no sandbox (tests
# run as root, where Chromium's sandbox refuses to start).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
# Every wait in a browser test is bounded: a condition on the page, never a sleep.
TIMEOUT_MS = 15_000


def skip_reason() -> str | None:
    """Why browser tests cannot run here, or None when they can."""
    if not (CHROMIUM.exists() and os.access(CHROMIUM, os.X_OK)):
        return (f"no Chromium at {CHROMIUM}: install Debian's chromium package "
                "(lab/install-deps.sh, run by `make test` as root)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (the test extra installs it)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    # A fresh profile each run: nothing cached or remembered between runs.
    profile = tempfile.mkdtemp(prefix="cockpit-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
                viewport=VIEWPORT,  # type: ignore[arg-type]
            )
            # launch_persistent_context returns the default context; its browser
            # makes the further, isolated contexts each test gets.
            chromium = context.browser
            if chromium is None:  # pragma: no cover - Chromium always has one
                pytest.fail("Chromium gave no browser object")
            try:
                yield chromium
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


class Console:
    """What one page said on its console as errors, and what its test allows it to say."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        # The browser's own look for an icon on a page that names none (a JSON document):
        # no page asked for it.
        self._allowed: list[re.Pattern[str]] = [re.compile(r"status of 404 .*/favicon\.ico\)$")]

    def watch(self, pg: Page) -> None:
        pg.on("console", lambda msg: self._console(msg.type, msg.text, msg.location))
        pg.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def _console(self, kind: str, text: str, location: Any) -> None:
        if kind == "error":
            url = location.get("url", "") if isinstance(location, dict) else ""
            self.errors.append(f"{text} ({url})" if url else text)

    def allow(self, pattern: str) -> None:
        """Errors matching this regular expression are expected by the test."""
        self._allowed.append(re.compile(pattern))

    def allow_status(self, *statuses: int) -> None:
        """Chromium logs every answer >= 400 as "Failed to load resource": allow these."""
        for status in statuses:
            self.allow(
                rf"Failed to load resource: the server responded with a status of {status}\b")

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self._allowed)]


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def page(context: BrowserContext, console: Console) -> Iterator[Page]:
    pg = context.new_page()
    console.watch(pg)
    yield pg
    # A console error or a script error fails the test that saw it, with the message.
    unexpected = console.unexpected()
    if unexpected:
        pytest.fail("errors on the page's console:\n" + "\n".join(unexpected))
