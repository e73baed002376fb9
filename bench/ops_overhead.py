#!/usr/bin/env python3
"""What metrics and JSON access logs cost: GET /api/v1/vms?limit=100 with and without them.

    .venv/bin/python bench/ops_overhead.py [--base-ref main] [--rounds 3] [--duration 10]
    .venv/bin/python bench/ops_overhead.py --bytecodes    # in process, deterministic

Serves, with bench/run.py's harness (pinning, wrk, interleaved rounds, CPU
accounting): ``base``, the tree of ``--base-ref`` (git archive into a temp dir:
no metrics, no request ids, no access log); ``metrics``, this tree with logs
off; ``metrics+json``, this tree with ``--log-format json --access-log``
(every request a JSON line into the server's log file). Prints req/s, p50/p99,
requests per server CPU-second, and each variant's cost against ``base``.

``--bytecodes`` counts instead the Python bytecodes one GET /api/v1/vms?limit=100
executes in process, with the request layer bypassed, with it (metrics), and
with the JSON access log too: the same number on any machine, however busy (C
code, orjson's and the regex engine's, is not counted).
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests/bytecodes.py

import harness  # bench/harness.py: servers, pinning, wrk
import run


def export(ref: str, into: Path) -> Path:
    raw = subprocess.run(["git", "archive", ref], cwd=harness.ROOT, capture_output=True,
                         check=True, timeout=60).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        tar.extractall(into, filter="data")
    return into


def bytecodes() -> int:
    import asyncio
    import os

    from starlette.testclient import TestClient

    from cockpit_api.app import create_app
    from cockpit_api.config import Settings
    from cockpit_api.ops.logs import JsonAccessLog
    from tests.bytecodes import least_bytecodes  # the counter tests/test_ops.py uses

    app = create_app(Settings(jwt_secret="bench-secret-" + "x" * 32))
    layer = app.inner  # the AccessMiddleware around the Connexion app
    with TestClient(app) as client:
        r = client.post(f"{harness.PREFIX}/auth/login",
                        json={"username": "admin", "password": "admin"})
        token = r.json()["token"]
    headers = [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {token}".encode())]
    async def measure() -> dict[str, int]:
        out = {}
        for name in ("off", "metrics", "metrics+json"):
            app.inner = layer.app if name == "off" else layer
            layer.access_log = JsonAccessLog() if name == "metrics+json" else None
            out[name] = await least_bytecodes(app, headers, warm=20, runs=5)
        return out

    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the access lines, for the process's life
    counts = asyncio.run(measure())
    for name, n in counts.items():
        print(f"{name:13s} {n:6,d} bytecodes per request  "
              f"{100 * (n / counts['off'] - 1):+.1f} %", file=sys.__stdout__)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytecodes", action="store_true",
                        help="count Python bytecodes per request in process instead")
    parser.add_argument("--base-ref", default="main")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if args.bytecodes:
        return bytecodes()
    plan = run.Plan.make(quick=False)
    pin = harness.Pinning.choose(True)
    tmp = Path(tempfile.mkdtemp(prefix="cockpit-ops-bench-"))
    wrk = harness.Wrk(plan, pin, tmp)
    base_tree = export(args.base_ref, tmp / "base")
    py = sys.executable
    variants = {
        # `env -C`: the base tree must be the working directory, first on `-m`'s path.
        "base": ["env", "-C", str(base_tree), py, "-m", "cockpit_api.cli", "serve"],
        "metrics": [py, "-m", "cockpit_api.cli", "serve"],
        "metrics+json": [py, "-m", "cockpit_api.cli", "serve", "--log-format", "json",
                         "--access-log"],
    }
    targets: dict[str, harness.Target] = {}
    try:
        for name, cmd in variants.items():
            port = harness.free_port()
            server = harness.Server(name, [*pin.server, *cmd, "--port", str(port)], port,
                                tmp).start()
            server.wait_ready(f"{harness.PREFIX}/openapi.json")
            token = harness.login(server.base)
            targets[name] = harness.Target(server.base + harness.LIST_100, token, server=server)
        print(f"machine: {harness.machine()}\npinning: {pin.describe()}", flush=True)
        results = harness.interleaved(wrk, targets, args.warmup, args.duration, args.rounds,
                                  lambda m: print(m, flush=True))
    finally:
        harness.stop_all()
    base = results["base"]
    # On a shared machine req/s follows the neighbours; requests per CPU-second of the
    # server is the cost that matters here, so both are shown.
    print("\n| variant | req/s | p50 ms | p99 ms | req/CPU-s | vs base, req/s | "
          "vs base, req/CPU-s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        d_rps = 100 * (r["rps"] / base["rps"] - 1)
        d_cpu = 100 * ((r.get("req_per_cpu_s") or 0) / (base.get("req_per_cpu_s") or 1) - 1)
        print(f"| {name} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r.get('req_per_cpu_s') or 0:,.0f} | {d_rps:+.1f} % | {d_cpu:+.1f} % |")
    for name, r in results.items():
        print(f"{name} rounds req/CPU-s: "
              + ", ".join(f"{x['rps'] / (x['server_cpu_pct'] or 100) * 100:,.0f}"
                          for x in r["rounds"]))
    log_lines = sum(1 for _ in (tmp / next(p.name for p in tmp.glob("metrics+json-*.log"))
                                ).open())
    print(f"\nJSON log lines written by metrics+json: {log_lines:,}; logs in {tmp}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
