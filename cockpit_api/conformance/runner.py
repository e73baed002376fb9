"""``cockpit-api conformance``: check a live Cockpit API deployment against openapi.yaml.

It logs in, then runs schemathesis (every check, examples, coverage, fuzzing and
the stateful phase driven by the spec's links) against the deployment, with
our hooks for auth refresh and safety (:mod:`cockpit_api.conformance.hooks`).

Safety on a real cluster:

- by default only reads and auth calls are sent (no action, migration or
  cancel; no probing with undeclared methods);
- ``--allow-writes`` adds actions, migrations and cancels, and every one of
  them is rewritten to target only the VMs named with ``--vm`` or matched by
  ``--vm-pattern``; cancels only name migrations this run started.

Exit code: 0 when nothing failed; 1 on any failure, including a run in which
authentication did not work (schemathesis alone would exit 0 then); 2 when the
run could not start (bad URL, credentials, options).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx

# 501 and 503 are documented answers (hypervisor lacks the feature; host unreachable).
_CONFIG = """
[warnings]
display = ["missing_auth", "unused_openapi_auth", "missing_test_data", "validation_mismatch"]
fail-on = ["missing_auth", "unused_openapi_auth"]

[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "501", "503"]

# A cursor is opaque: one of the right shape that this list did not issue is 400
# `invalid_cursor`, and a metrics window that starts after it ends is 400
# `invalid_window`. A schema cannot say either (an opaque token; two parameters
# compared), so schema-valid data may meet a documented 400 on these operations.
[[operations]]
include-operation-id = ["list_hosts", "list_vms", "list_migrations", "get_vm_metrics",
                        "get_host_metrics", "list_audit"]
checks.positive_data_acceptance.expected-statuses = [
  "2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
"""

_WRITE_OPERATIONS = ("vm_action", "migrate_vm", "cancel_migration")


class UsageError(Exception):
    pass


def given_password(args: argparse.Namespace) -> str | None:
    """The password of a client command (snapshot, twin): a line of stdin with
    ``--password-stdin`` (never a flag: it would show in ps), else COCKPIT_PASSWORD."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return os.environ.get("COCKPIT_PASSWORD")


def api_root(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if base.endswith("/api/v1") else f"{base}/api/v1"


def resolve_vms(api: str, token: str, ids: list[str], pattern: str | None) -> list[str]:
    """The VM ids a write may touch: those named, plus those whose name matches."""
    chosen = list(ids)
    if pattern:
        rx = re.compile(pattern)
        cursor: str | None = None
        while True:
            params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
            r = httpx.get(f"{api}/vms", params=params, timeout=30,
                          headers={"Authorization": f"Bearer {token}"})
            r.raise_for_status()
            page = r.json()
            chosen += [v["id"] for v in page["vms"] if rx.search(v["name"])]
            cursor = page["next_cursor"]
            if not cursor:
                break
    return sorted(set(chosen))


def build_command(args: argparse.Namespace, api: str, workdir: Path) -> list[str]:
    exe = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    config = workdir / "schemathesis.toml"
    config.write_text(_CONFIG, encoding="utf-8")
    cmd = [exe, "--config-file", str(config), "--no-color", "run", f"{api}/openapi.json",
           "--checks", "all", "--max-examples", str(args.max_examples), "--seed", str(args.seed),
           "--workers", "1", "--phases", args.phases, "--request-timeout", "30"]
    if not args.allow_writes:
        for op in _WRITE_OPERATIONS:
            cmd += ["--exclude-operation-id", op]
        # unsupported_method would send undeclared methods (PUT, DELETE...) to real paths.
        cmd += ["--exclude-checks", "unsupported_method"]
    # Always a JUnit report: the per-operation summary reads its failures.
    cmd += ["--report", "junit", "--report-junit-path", str(args.junit or workdir / "junit.xml")]
    if args.max_time:
        cmd += ["--max-time", str(args.max_time)]
    return cmd


def run(args: argparse.Namespace) -> int:
    api = api_root(args.base_url)
    try:
        r = httpx.post(f"{api}/auth/login", timeout=30,
                       json={"username": args.username, "password": args.password})
    except httpx.HTTPError as exc:
        print(f"conformance: cannot reach {api}: {exc}", file=sys.stderr)
        return 2
    if r.status_code != 200:
        print(f"conformance: login as {args.username} failed: {r.status_code} {r.text[:200]}",
              file=sys.stderr)
        return 2
    token = r.json()["token"]
    vms: list[str] = []
    if args.allow_writes:
        vms = resolve_vms(api, token, args.vm, args.vm_pattern)
        if not vms:
            print("conformance: --allow-writes needs the VMs it may touch: --vm ID or "
                  "--vm-pattern REGEX (matching at least one VM name)", file=sys.stderr)
            return 2
        print(f"conformance: writes allowed, only on {len(vms)} VM(s): {', '.join(vms)}")
    else:
        print("conformance: read-only run (reads and auth calls only; --allow-writes to add "
              "actions and migrations on named VMs)")
    env = dict(os.environ)
    env["SCHEMATHESIS_HOOKS"] = "cockpit_api.conformance.hooks"
    calls_file = Path(tempfile.mkstemp(prefix="cockpit-conformance-calls-")[1])
    env["COCKPIT_CONFORMANCE_CALLS"] = str(calls_file)
    env["COCKPIT_CONFORMANCE"] = json.dumps({
        "api": api, "username": args.username, "password": args.password,
        "allow_writes": bool(args.allow_writes), "vms": vms,
    })
    with tempfile.TemporaryDirectory(prefix="cockpit-conformance-") as tmp:
        cmd = build_command(args, api, Path(tmp))
        print("conformance: " + " ".join(c for c in cmd if c != args.password), flush=True)
        proc = subprocess.run(cmd, env=env, cwd=tmp)
        print(summary(calls_file, args.junit or Path(tmp) / "junit.xml"))
    calls_file.unlink(missing_ok=True)
    if proc.returncode == 0:
        print("conformance: no failures")
    else:
        print(f"conformance: FAILED (schemathesis exit {proc.returncode}); see the failures "
              "above, each with a curl line that reproduces it")
    return 0 if proc.returncode == 0 else 1


def summary(calls_file: Path, junit: Path) -> str:
    """A table per operation: calls by status class, failures, and a curl line for the first."""
    try:
        calls: dict[str, dict[str, int]] = json.loads(calls_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        calls = {}
    failures: dict[str, list[str]] = {}
    try:
        for case in ET.parse(junit).getroot().iter("testcase"):
            for bad in [*case.iter("failure"), *case.iter("error")]:
                text = (bad.get("message") or "") + "\n" + (bad.text or "")
                failures.setdefault(case.get("name", "?"), []).append(text)
    except (OSError, ET.ParseError):
        pass
    rows = [f"{'operation':<42} {'calls':>7} {'2xx':>6} {'4xx':>6} {'5xx':>5} {'failures':>8}"]
    for op in sorted(set(calls) | set(failures)):
        c = calls.get(op, {})
        rows.append(f"{op:<42} {sum(c.values()):>7} {c.get('2xx', 0):>6} {c.get('4xx', 0):>6} "
                    f"{c.get('5xx', 0):>5} {len(failures.get(op, [])):>8}")
        for text in failures.get(op, [])[:1]:
            curl = next((line.strip() for line in text.splitlines() if "curl " in line), None)
            if curl:
                rows.append(f"    reproduce: {curl[curl.index('curl '):]}")
    return "\nconformance: per operation\n" + "\n".join(rows)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("conformance", help="check a live deployment against openapi.yaml",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080")
    p.add_argument("--username", required=True)
    p.add_argument("--password", default=os.environ.get("COCKPIT_PASSWORD"),
                   help="or the COCKPIT_PASSWORD environment variable")
    p.add_argument("--allow-writes", action="store_true",
                   help="also send actions, migrations and cancels (only to --vm / --vm-pattern)")
    p.add_argument("--vm", action="append", default=[], metavar="ID",
                   help="a VM writes may touch (repeatable)")
    p.add_argument("--vm-pattern", metavar="REGEX", help="VMs whose name matches may be touched")
    p.add_argument("--max-examples", type=int, default=50, help="cases per operation and phase")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--phases", default="examples,coverage,fuzzing,stateful")
    p.add_argument("--max-time", type=int, default=None, help="time budget in seconds")
    p.add_argument("--junit", type=Path, default=None, help="write a JUnit XML report here")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if not args.password:
        raise UsageError("give --password or set COCKPIT_PASSWORD")
    return run(args)
