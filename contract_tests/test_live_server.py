"""The schemathesis CLI against the real server, from outside, over TCP.

``cockpit-api serve`` runs as a subprocess on a free port (the ``live_server``
fixture polls until it serves its spec and stops it by its PID afterwards).
The test logs in as the demo admin and runs ``schemathesis run`` with every
check, both generation modes and every phase, stateful included. It passes
only if schemathesis exits 0, its JUnit and JSON reports count no failure,
error or unexpected warning, and the server's access log shows authenticated
operations (an admin-only one among them) answered 2xx: schemathesis itself
exits 0 when every request was refused for want of credentials.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import yaml

from contract_tests.conftest import LiveServer
from contract_tests.harness import ADMIN, MAX_EXAMPLES, ROOT, SEED, ST_CONFIG

RUN_TIMEOUT = 600.0
# Operations without `security`: 401 is their answer to made-up credentials, which
# schemathesis reports as "missing_auth"; any other operation in that list fails the test.
PUBLIC = {"POST /auth/login", "POST /auth/refresh", "POST /auth/logout"}
OPERATIONS = sum(1 for item in yaml.safe_load((ROOT / "openapi.yaml").read_text())["paths"].values()
                 for key in item if key in ("get", "put", "post", "delete", "patch"))
# Authenticated operations that must have been answered 2xx at least once.
MUST_SUCCEED = [("GET", "/api/v1/hosts"), ("GET", "/api/v1/vms/{id}"),
                ("POST", "/api/v1/vms/{id}/action")]
# Our access log (cockpit_api/http/access.py, text format):
# `INFO cockpit_api.http.access: GET /api/v1/hosts 200 1.2ms op=list_hosts user=admin rid=...`
ACCESS_LINE = re.compile(r"cockpit_api\.http\.access: ([A-Z]+) (/\S*) (\d{3}) ")
UUID = re.compile(r"/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _login(base: str) -> str:
    username, password = ADMIN
    request = urllib.request.Request(
        f"{base}/api/v1/auth/login", method="POST",
        data=json.dumps({"username": username, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        token: str = json.load(response)["token"]
    return token


def _template(path: str) -> str:
    path = path.split("?", 1)[0]
    path = UUID.sub("/{id}", path)
    return re.sub(r"^/api/v1/migrations/[^/]+", "/api/v1/migrations/{migration_id}", path)


def test_schemathesis_cli_against_live_server(live_server: LiveServer, tmp_path: Path) -> None:
    token = _login(live_server.base)
    junit_path, json_path = tmp_path / "junit.xml", tmp_path / "report.json"
    command = [
        sys.executable, "-m", "schemathesis.cli",
        "--config-file", str(ST_CONFIG),
        "run", f"{live_server.base}/api/v1/openapi.json",
        "--checks", "all",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--mode", "all",
        "--header", f"Authorization: Bearer {token}",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--generation-deterministic",
        "--workers", "1",
        "--report", "junit,json",
        "--report-junit-path", str(junit_path),
        "--report-json-path", str(json_path),
        "--no-color",
    ]
    started = time.monotonic()
    env = dict(os.environ, SCHEMATHESIS_HOOKS="contract_tests.live_hooks",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    output = run.stdout + run.stderr
    print(f"schemathesis CLI: exit {run.returncode} in {time.monotonic() - started:.1f} s")
    print(output[-5000:])
    assert run.returncode == 0, f"schemathesis failed (exit {run.returncode}):\n{output}"

    # The JUnit report agrees: test cases ran and none failed.
    junit = ET.parse(junit_path).getroot()
    suites = [junit] if junit.tag == "testsuite" else list(junit.iter("testsuite"))
    assert sum(int(s.get("tests", 0)) for s in suites) > 0
    assert sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites) == 0, \
        ET.tostring(junit, encoding="unicode")[:4000]

    # The JSON report: every operation tested, no failure, no error, no warning but
    # "missing_auth" on the public auth endpoints.
    report = json.loads(json_path.read_text(encoding="utf-8"))
    warnings = {kind: labels for kind, labels in report["warnings"].items() if labels}
    print("test cases:", report["test_cases"], "warnings:", warnings)
    assert report["exit_code"] == 0 and not report["failures"] and not report["errors"], report
    assert report["operations"]["tested"] == report["operations"]["selected"] == OPERATIONS
    unexpected = {kind: labels for kind, labels in warnings.items()
                  if not (kind == "missing_auth" and set(labels) <= PUBLIC)}
    assert not unexpected, f"schemathesis warned: {unexpected}"

    # Auth really worked: protected operations were answered 2xx, not only 401.
    seen = Counter((method, _template(path), int(status) // 100)
                   for method, path, status in ACCESS_LINE.findall(live_server.log_text()))
    print("2xx answers:", {f"{m} {t}": n for (m, t, c), n in sorted(seen.items()) if c == 2})
    for method, template in MUST_SUCCEED:
        assert seen[(method, template, 2)] > 0, (
            f"{method} {template} never got a 2xx: the run was not authenticated\n"
            f"{sorted(seen.items())}")
    assert seen[("GET", "/api/v1/hosts", 4)] > 0  # and negative data was sent too
