"""Two browser sessions in two sandboxes, side by side: each sees only its own world.

A static page on its own loopback origin (like a frontend dev server) drives
the mock cross-origin with ``fetch``, so CORS is real too: preflights for
JSON bodies, ``DELETE /_sim/faults`` and an ``X-Request-Id`` header. Two
browser contexts (separate storage, like two developers or two test workers)
each get a sandbox and run conflicting flows at the same time: resets, a
fault on every action, a fault aimed at one VM, latency, migrations. Each page
then renders its VM list; neither shows the other's changes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest

from tests.sandbox_flows import World, new_sandbox
from tests.serving import served

if TYPE_CHECKING:
    from playwright.sync_api import Browser

ROUNDS = 5

# The frontend under test: plain JS, no build step. `run(base, kind, tag, rounds)` returns
# what it observed; `render(base)` lists the sandbox's VMs into the page.
APP = """<!doctype html>
<html><head><meta charset="utf-8"><title>sandbox flow</title></head>
<body><ul id="vms"></ul>
<script>
const NODE2 = "019e0014-ffff-7057-b326-000000000002";
const NODE3 = "019e0014-1a2b-7057-b326-000000000003";
const WEB1 = "d13c513a-42f8-4da1-97b1-165f0971b7c4";
const DB1 = "f4d6d235-08bd-4d96-b6e9-c8092966493d";
const BUILD1 = "bc2c8e3e-93af-4954-a14c-1d7e84488709";
const BUILD2 = "4630de19-bf77-438d-8b9b-7cefad989a70";
let headers = null;

async function call(method, url, body) {
  const r = await fetch(url, {method, headers, body: body ? JSON.stringify(body) : undefined});
  const text = await r.text();
  return {status: r.status, body: text ? JSON.parse(text) : null,
          requestId: r.headers.get("X-Request-Id")};
}

async function login(base) {
  const r = await fetch(base + "/api/v1/auth/login", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({username: "admin", password: "admin"})});
  const token = (await r.json()).token;
  headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"};
}

async function run(base, kind, tag, rounds) {
  await login(base);
  const api = base + "/api/v1", sim = base + "/_sim", seen = [];
  for (let i = 0; i < rounds; i++) {
    headers["X-Request-Id"] = tag + "-" + i;
    const reset = await call("POST", sim + "/reset");
    seen.push(["reset", reset.status, reset.body.faults_armed]);
    if (kind === "actions") {
      await call("POST", sim + "/faults", {operation: "action", count: 1000, message: tag});
      const refused = await call("POST", api + "/vms/" + BUILD2 + "/action", {action: "start"});
      seen.push(["refused", refused.status, refused.body.detail]);
      const cleared = await call("DELETE", sim + "/faults");
      seen.push(["cleared", cleared.status, cleared.body.faults_armed]);
      const started = await call("POST", api + "/vms/" + BUILD2 + "/action", {action: "start"});
      seen.push(["started", started.status, started.body.status]);
      await call("POST", sim + "/latency", {ms: 1, path: "/api/v1/vms*"});
      const m = await call("POST", api + "/vms/" + DB1 + "/migrate", {destination_host_id: NODE3});
      await call("POST", sim + "/clock", {advance: 120});
      const job = await call("GET", api + "/migrations/" + m.body.migration_id);
      seen.push(["job", job.status, job.body.status]);
    } else {
      await call("POST", sim + "/faults",
                 {operation: "migrate", vm_id: WEB1, mode: "fail", at_percent: 40, message: tag});
      const m = await call("POST", api + "/vms/" + WEB1 + "/migrate", {destination_host_id: NODE2});
      await call("POST", sim + "/clock", {advance: 60});
      const job = await call("GET", api + "/migrations/" + m.body.migration_id);
      seen.push(["job", job.status, job.body.status, job.body.error]);
      const started = await call("POST", api + "/vms/" + BUILD1 + "/action", {action: "start"});
      seen.push(["started", started.status, started.body.status]);
    }
    const jobs = await call("GET", api + "/migrations");
    seen.push(["jobs", jobs.status, jobs.body.migrations.length]);
  }
  return seen;
}

async function render(base) {
  const vms = (await call("GET", base + "/api/v1/vms?limit=100")).body.vms;
  document.getElementById("vms").innerHTML = vms.map(
    v => `<li data-name="${v.name}">${v.name}: ${v.status}</li>`).join("");
}
</script></body></html>
"""


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with served() as base:
        yield base


@pytest.fixture(scope="module")
def frontend() -> Iterator[str]:
    """The page above on its own origin, as a frontend dev server would serve it."""
    body = APP.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # quiet test output

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_two_browser_sessions_in_two_sandboxes(browser: Browser, server: str,
                                               frontend: str) -> None:
    root = World(server)
    a, b = new_sandbox(root, "browser a"), new_sandbox(root, "browser b")
    contexts = [browser.new_context(), browser.new_context()]
    try:
        pages = [ctx.new_page() for ctx in contexts]
        errors: list[Any] = []

        def on_error(error: Any) -> None:
            errors.append(error)

        for page in pages:
            page.on("pageerror", on_error)
            page.goto(frontend)
        # Start both flows, then wait for both: they run at the same time in the browser.
        for page, world, kind in ((pages[0], a, "migrations"), (pages[1], b, "actions")):
            page.evaluate("([base, kind, n]) => { window.flow = run(base, kind, kind, n); }",
                          [world.base, kind, ROUNDS])
        seen_a, seen_b = (page.evaluate("() => window.flow") for page in pages)
        assert not errors, errors
        per_round_a = [["reset", 200, 0], ["job", 200, "failed", "migrations"],
                       ["started", 200, "running"], ["jobs", 200, 1]]
        per_round_b = [["reset", 200, 0], ["refused", 503, "actions"], ["cleared", 200, 0],
                       ["started", 200, "running"], ["job", 200, "completed"], ["jobs", 200, 1]]
        assert seen_a == per_round_a * ROUNDS
        assert seen_b == per_round_b * ROUNDS
        for page, world in zip(pages, (a, b), strict=True):
            page.evaluate("(base) => render(base)", world.base)
        shown = [{li.get_attribute("data-name"): li.inner_text().split(": ")[1]
                  for li in page.locator("#vms li").all()} for page in pages]
        # Each sees its own start, and not the other's.
        assert (shown[0]["build-runner-01"], shown[0]["build-runner-02"]) == ("running", "shutoff")
        assert (shown[1]["build-runner-01"], shown[1]["build-runner-02"]) == ("shutoff", "running")
        assert len(shown[0]) == len(shown[1]) == 14
    finally:
        for ctx in contexts:
            ctx.close()
        for w in (a, b):
            root.sim("DELETE", f"/sandboxes/{w.base.rsplit('/', 1)[1]}", expect=204)
            w.close()
        root.close()
