"""`cockpit-api snapshot` of the `large` scenario (1,000 hosts / 100,000 VMs) served by us.

    .venv/bin/python bench/snapshot.py [--metrics-vms 500] [--scenario large]

Serves ``cockpit-api serve --scenario large`` (clock pinned) on a loopback port, runs
``cockpit-api snapshot`` against it in its own process and reports the command's wall
time and peak RSS (``wait4``'s ``ru_maxrss`` of that process alone), the file's size,
and how long the written file takes to load back as a scenario. Writes
``bench/results/snapshot-latest.{md,json}``. Goal (issue 21): under 60 s, memory
bounded (pages are streamed; raw responses are not kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="large")
    ap.add_argument("--metrics-vms", type=int, default=500)
    args = ap.parse_args()
    port = free_port()
    state = tempfile.TemporaryDirectory(prefix="bench-snapshot-")
    env = dict(os.environ, COCKPIT_JWT_SECRET="bench-secret-of-at-least-thirty-two-bytes!",
               COCKPIT_STATE_DIR=state.name)
    t0 = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-m", "cockpit_api.cli", "serve", "--scenario", args.scenario,
         "--port", str(port), "--speed", "0", "--clock-start", "2026-12-01T08:00:00Z",
         "--log-level", "warning"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{base}/api/v1/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.2)  # polling a real process's readiness, bounded by the deadline
        serve_s = time.monotonic() - t0
        out = Path(state.name) / "large-snapshot.yaml"
        t0 = time.monotonic()
        snap = subprocess.Popen(
            [sys.executable, "-m", "cockpit_api.cli", "snapshot", "--base-url", base,
             "--username", "admin", "--password-stdin", "--quiet", "-o", str(out),
             "--metrics-vms", str(args.metrics_vms)],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert snap.stdin is not None and snap.stderr is not None
        snap.stdin.write(b"admin\n")
        snap.stdin.close()
        err = snap.stderr.read().decode()
        _, status, usage = os.wait4(snap.pid, 0)
        took = time.monotonic() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"snapshot failed: {err}")
        sys.path.insert(0, str(ROOT))
        from cockpit_api.backends.sim import scenario as scenarios

        t1 = time.monotonic()
        sc = scenarios.load(out)
        load_s = time.monotonic() - t1
        fitted = sum(1 for v in sc.vms if v.guest.behaviour is not None)
        result = {
            "scenario": args.scenario, "hosts": len(sc.hosts), "vms": len(sc.vms),
            "metrics_vms": args.metrics_vms, "charts_fitted": fitted,
            "snapshot_seconds": round(took, 1), "snapshot_peak_rss_mib":
                round(usage.ru_maxrss / 1024, 1),
            "file_mib": round(out.stat().st_size / 2**20, 1),
            "load_back_seconds": round(load_s, 1), "server_start_seconds": round(serve_s, 1),
            "goal": "under 60 s, bounded memory",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), "
                       f"Python {platform.python_version()}",
        }
    finally:
        server.terminate()
        server.wait(timeout=30)
        state.cleanup()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "snapshot-latest.json").write_text(json.dumps(result, indent=2) + "\n",
                                                  encoding="utf-8")
    md = ["# cockpit-api snapshot of the large scenario", "",
          "| what | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in result.items()]
    (RESULTS / "snapshot-latest.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
