"""Sandboxes: create time, memory per sandbox, and what a request into one costs.

    .venv/bin/python bench/sandboxes.py [--count 100] [--seconds 10] [--rounds 3] [--quick]

Serves ``cockpit-api serve`` (default scenario) on a loopback port, then:

1. creates ``--count`` sandboxes one after another over HTTP (``POST /_sim/sandboxes``)
   and reports client-side create times (the first one apart: it parses the scenario);
2. logs into each and lists its VMs (so each holds a session and a settled world), and
   reports the server's RSS growth per sandbox;
3. loads ``GET /api/v1/vms?limit=100`` with wrk (``-t2 -c32``), in the default world and
   in one sandbox, interleaved over ``--rounds`` rounds, server pinned to CPU 0 and wrk
   to CPU 1 when ``taskset`` exists.

Writes ``bench/results/sandboxes-latest.{md,json}``. Goals (issue 12): each create under
50 ms, 100 sandboxes under 1 GiB, a request into a sandbox as cheap as into the root.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

# bench/harness.py: ports, pinning, logins, RSS of a process
from harness import Pinning, free_port, login, rss_kib, stop_group, write_results

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SECRET = "bench-secret-of-at-least-thirty-two-bytes!"
PATH = "/api/v1/vms?limit=100"


def _wrk(url: str, token: str, seconds: int) -> dict[str, float]:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(f'wrk.headers["Authorization"] = "Bearer {token}"\n')
    try:
        out = subprocess.run(
            [*Pinning.choose(True).client, "wrk", "-t2", "-c32", f"-d{seconds}s", "--latency",
             "-s", str(script), url], capture_output=True, text=True, timeout=seconds + 30,
            check=True).stdout
    finally:
        script.unlink()
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")

    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps, out
    return {"rps": float(rps.group(1)), "p50": ms("50"), "p99": ms("99")}


def _heap(count: int) -> dict[str, float]:
    """In-process: Python heap per sandbox (tracemalloc), each logged into and listed."""
    import asyncio
    import tracemalloc
    import warnings

    # Connexion imports Starlette's test client, which warns about httpx (cockpit_api/cli.py).
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")

    sys.path.insert(0, str(ROOT))
    from cockpit_api.backends.base import PageRequest, VmFilter
    from cockpit_api.config import Settings
    from cockpit_api.sandboxes.registry import SandboxRegistry

    registry = SandboxRegistry(Settings(sandbox_max=count + 1), time.time, [])

    async def run() -> dict[str, float]:
        await registry.create()  # warm: the parsed scenario and the demo users' hashes
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        t = time.perf_counter()
        for _ in range(count):
            await registry.create()
        create_ms = (time.perf_counter() - t) * 1000 / count
        created = tracemalloc.get_traced_memory()[0]
        for box in registry.all()[1:]:
            box.services.auth.login("admin", "admin", "127.0.0.1")
            await box.services.backend.list_vms(PageRequest(100, None), VmFilter())
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        await registry.close()
        return {"kib_per_sandbox": round((after - before) / count / 1024, 1),
                "kib_per_sandbox_created": round((created - before) / count / 1024, 1),
                "create_ms_in_process": round(create_ms, 3)}

    return asyncio.run(run())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--seconds", type=int, default=10, help="per wrk run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one round of 4 s")
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.rounds = 4, 1
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # Its own state directory: never the user's (whose store may be of another version).
    state = tempfile.TemporaryDirectory(prefix="cockpit-bench-")
    env = dict(os.environ, COCKPIT_JWT_SECRET=SECRET, COCKPIT_SANDBOX_MAX=str(args.count + 1),
               PYTHONPATH=str(ROOT), COCKPIT_STATE_DIR=state.name)
    proc = subprocess.Popen(
        [*Pinning.choose(True).server, sys.executable, "-m", "cockpit_api.cli", "serve",
         "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=30) as http:
            while True:
                try:
                    if http.get(f"{base}/api/v1/openapi.json").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    print("the server did not start", file=sys.stderr)
                    return 2
                time.sleep(0.1)
            root = {"Authorization": f"Bearer {login(base)}"}
            http.get(f"{base}{PATH}", headers=root).raise_for_status()
            rss0 = rss_kib(proc.pid) / 1024
            times, boxes = [], []
            for _ in range(args.count):
                t = time.perf_counter()
                r = http.post(f"{base}/_sim/sandboxes", json={"ttl_seconds": 3600},
                              headers=root)
                times.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
                boxes.append(r.json()["base_url"])
            rss_created = rss_kib(proc.pid) / 1024
            tokens = []
            for box in boxes:
                h = {"Authorization": f"Bearer {login(box)}"}
                http.get(f"{box}{PATH}", headers=h).raise_for_status()
                tokens.append(h["Authorization"].split()[1])
            rss1 = rss_kib(proc.pid) / 1024
        loads: dict[str, list[dict[str, float]]] = {"default world": [], "a sandbox": []}
        for _ in range(args.rounds):
            loads["default world"].append(_wrk(f"{base}{PATH}", root["Authorization"].split()[1],
                                               args.seconds))
            loads["a sandbox"].append(_wrk(f"{boxes[0]}{PATH}", tokens[0], args.seconds))
    finally:
        stop_group(proc, 10)
        state.cleanup()

    heap = _heap(args.count)
    rest = sorted(times[1:]) or times
    result: dict[str, Any] = {
        "count": args.count,
        "create_ms": {"first": round(times[0], 2), "p50": round(statistics.median(rest), 2),
                      "p99": round(rest[min(len(rest) - 1, int(len(rest) * 0.99))], 2),
                      "max": round(max(rest), 2)},
        "rss_mib": {"before": round(rss0, 1), "created": round(rss_created, 1),
                    "after": round(rss1, 1),
                    "per_sandbox_created": round((rss_created - rss0) / args.count, 3),
                    "per_sandbox": round((rss1 - rss0) / args.count, 3)},
        "heap": heap,
        "load": {k: {"rps": round(statistics.median(x["rps"] for x in v)),
                     "p50_ms": round(statistics.median(x["p50"] for x in v), 2),
                     "p99_ms": round(statistics.median(x["p99"] for x in v), 2)}
                 for k, v in loads.items()},
        "wrk": f"-t2 -c32 -d{args.seconds}s x {args.rounds} rounds, interleaved",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    c, m, ld = result["create_ms"], result["rss_mib"], result["load"]
    md = "\n".join([
        f"# Sandboxes ({result['when']}, {args.count} sandboxes, default scenario)", "",
        "| create (HTTP, client side) | ms |", "|---|---:|",
        f"| first (parses the scenario) | {c['first']} |", f"| p50 | {c['p50']} |",
        f"| p99 | {c['p99']} |", f"| max | {c['max']} |", "",
        "| memory (server RSS) | MiB |", "|---|---:|",
        f"| before | {m['before']} |", f"| after {args.count} sandboxes created | "
        f"{m['created']} |", f"| after each was logged into and listed | {m['after']} |",
        f"| per sandbox, created | {m['per_sandbox_created']} |",
        f"| per sandbox, logged into and listed | {m['per_sandbox']} |",
        f"| per sandbox, Python heap (tracemalloc, in-process, created) | "
        f"{heap['kib_per_sandbox_created'] / 1024:.3f} |",
        f"| per sandbox, Python heap (tracemalloc, in-process, logged in and listed) | "
        f"{heap['kib_per_sandbox'] / 1024:.3f} |", "",
        f"In-process create (no HTTP): {heap['create_ms_in_process']} ms each.", "",
        f"| GET {PATH}, wrk {result['wrk']} | req/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
        *(f"| {k} | {v['rps']:,} | {v['p50_ms']} | {v['p99_ms']} |" for k, v in ld.items()),
        ""])
    write_results(args.results_dir, "sandboxes-latest", result, md, indent=2)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
