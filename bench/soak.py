"""Soak: a mixed load over the default world, 3 sandboxes and 50 event streams; RSS over time.

    .venv/bin/python bench/soak.py [--seconds 60] [--streams 50] [--sandboxes 3]
                                   [--workers 8] [--vms 1200] [--migrate-rate 40]
                                   [--results-dir bench/results]

Opt-in (issue 18, "Done when"): serves ``cockpit-api serve`` on a loopback port
with a state directory of its own, creates the sandboxes, opens the streams
(half with a bearer token, half with a ticket from ``POST /events/ticket``)
spread over the worlds, and runs ``--workers`` clients for ``--seconds``: VM
suspends and resumes (the changes the streams carry), lists, gets, tickets,
long-polls, logins with a wrong password (throttled after the limit) and with
the right one followed by a logout, /readyz and /metrics, and now and then a
sandbox's ``/_sim/reset``. The default world is loaded with ``--vms`` generated
VMs on 8 hosts, and a migrator starts ``--migrate-rate`` migrations a second in
it: their progress events (every 0.5 s per running job) fill its feed history
within the run. The server's RSS is read from ``/proc`` every second
with each world's feed position; once the default world's feed history is full
(:data:`cockpit_api.feed.changes.HISTORY` events) RSS should stay flat.

Writes ``bench/results/soak-latest.{json,md}``: the samples, the requests by
status, and RSS at the moment the history filled, at the end, the growth between
and the least-squares slope (MiB per minute) over that stretch. Bounded: every
client stops at the deadline; the server is stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

# bench/harness.py: ports, RSS of a process, results files
from harness import free_port, rss_kib, stop_group, write_results

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SECRET = "bench-secret-of-at-least-thirty-two-bytes!"
API = "/api/v1"
HISTORY = 10_000  # cockpit_api.feed.changes.HISTORY (not imported: the bench runs the server apart)


@dataclass
class World:
    name: str
    base: str  # the base URL: the server's, or a sandbox's
    headers: dict[str, str] = field(default_factory=dict)
    vms: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    sandbox: bool = False


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB), in MiB per minute."""
    if len(points) < 2:
        return 0.0
    mx = statistics.fmean(t for t, _ in points)
    my = statistics.fmean(v for _, v in points)
    den = sum((t - mx) ** 2 for t, _ in points)
    return 60 * sum((t - mx) * (v - my) for t, v in points) / den if den else 0.0


async def _login(http: httpx.AsyncClient, world: World) -> None:
    r = await http.post(f"{world.base}{API}/auth/login",
                        json={"username": "admin", "password": "admin"})
    r.raise_for_status()
    world.headers = {"Authorization": f"Bearer {r.json()['token']}"}
    await _inventory(http, world)


async def _inventory(http: httpx.AsyncClient, world: World) -> None:
    world.vms, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        r = await http.get(f"{world.base}{API}/vms", params=params, headers=world.headers)
        r.raise_for_status()
        world.vms += [v["id"] for v in r.json()["vms"]]
        cursor = r.json()["next_cursor"]
        if not cursor:
            break
    r = await http.get(f"{world.base}{API}/hosts", params={"limit": 100}, headers=world.headers)
    r.raise_for_status()
    world.hosts = [h["id"] for h in r.json()["hosts"] if h["status"] == "connected"]


async def _migrator(http: httpx.AsyncClient, world: World, rate: float, rng: random.Random,
                    deadline: float, statuses: Counter[str]) -> None:
    """``rate`` migrations a second in ``world``, each to another connected host."""
    pending: set[asyncio.Task[None]] = set()

    async def one() -> None:
        vm, dest = rng.choice(world.vms), rng.choice(world.hosts)
        try:
            r = await http.post(f"{world.base}{API}/vms/{vm}/migrate",
                                json={"destination_host_id": dest}, headers=world.headers)
            statuses[f"migrate {r.status_code}"] += 1
        except httpx.HTTPError as exc:
            statuses[f"migrate {type(exc).__name__}"] += 1

    while time.monotonic() < deadline and rate > 0:
        if len(pending) < 4:  # never more than a few requests of its own in flight
            task = asyncio.create_task(one())
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*pending, return_exceptions=True)


async def _stream(http: httpx.AsyncClient, world: World, use_ticket: bool, deadline: float,
                  received: Counter[str]) -> None:
    """One SSE client until the deadline; it reconnects if the server ends the stream."""
    while time.monotonic() < deadline:
        params: dict[str, str] = {}
        headers = {"Accept": "text/event-stream"}
        if use_ticket:
            r = await http.post(f"{world.base}{API}/events/ticket", headers=world.headers)
            r.raise_for_status()
            params["ticket"] = r.json()["ticket"]
        else:
            headers.update(world.headers)
        with contextlib.suppress(httpx.HTTPError):
            async with http.stream("GET", f"{world.base}{API}/events", params=params,
                                   headers=headers,
                                   timeout=httpx.Timeout(5, read=None)) as r:
                if r.status_code != 200:
                    received[f"stream {r.status_code}"] += 1
                    await asyncio.sleep(1)
                    continue
                async for line in r.aiter_lines():
                    if line.startswith("event:"):
                        received[line[6:].strip()] += 1
                    if time.monotonic() >= deadline:
                        return


async def _worker(http: httpx.AsyncClient, worlds: list[World], rng: random.Random,
                  deadline: float, statuses: Counter[str]) -> None:
    ops = ["action"] * 10 + ["list"] * 3 + ["get", "ticket", "poll", "bad_login", "login",
                                            "readyz", "metrics"]
    while time.monotonic() < deadline:
        # Half the work goes to the default world, so that its history fills in the run.
        world = worlds[0] if rng.random() < 0.5 else rng.choice(worlds)
        op = rng.choice(ops)
        if world.sandbox and rng.random() < 0.002:
            op = "reset"
        base, h = world.base, world.headers
        try:
            if op == "action":
                vm = rng.choice(world.vms)
                action = rng.choice(("suspend", "resume"))
                r = await http.post(f"{base}{API}/vms/{vm}/action", json={"action": action},
                                    headers=h)
            elif op == "list":
                r = await http.get(f"{base}{API}/vms", params={"limit": 100}, headers=h)
            elif op == "get":
                r = await http.get(f"{base}{API}/vms/{rng.choice(world.vms)}", headers=h)
            elif op == "ticket":
                r = await http.post(f"{base}{API}/events/ticket", headers=h)
                if r.status_code == 200 and rng.random() < 0.5:  # half of them are used
                    r = await http.get(f"{base}{API}/events",
                                       params={"ticket": r.json()["ticket"]})
            elif op == "poll":
                r = await http.get(f"{base}{API}/events", params={"wait": 0}, headers=h)
            elif op == "bad_login":
                r = await http.post(f"{base}{API}/auth/login",
                                    json={"username": "viewer", "password": "wrong"})
            elif op == "login":
                r = await http.post(f"{base}{API}/auth/login",
                                    json={"username": "viewer", "password": "viewer"})
                if r.status_code == 200:
                    r = await http.post(f"{base}{API}/auth/logout",
                                        json={"refresh_token": r.json()["refresh_token"]})
            elif op == "readyz":
                r = await http.get(f"{base}/readyz")
            elif op == "metrics":
                r = await http.get(f"{base}/metrics")
            else:
                r = await http.post(f"{base}/_sim/reset", headers=h)
            statuses[f"{op} {r.status_code}"] += 1
        except httpx.HTTPError as exc:
            statuses[f"{op} {type(exc).__name__}"] += 1


async def _positions(http: httpx.AsyncClient, worlds: list[World]) -> list[int]:
    """Each world's feed sequence number (the part after the epoch of X-Feed-Position)."""
    out = []
    for w in worlds:
        r = await http.get(f"{w.base}{API}/hosts", params={"limit": 1}, headers=w.headers)
        out.append(int(r.headers.get("x-feed-position", "0-0").rpartition("-")[2] or 0))
    return out


async def _run(base: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=args.streams + args.workers + 16)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        root = World("default", base)
        await _login(http, root)
        r = await http.post(f"{base}/_sim/scenario", headers=root.headers, json={"data": {
            "name": "soak", "seed": 18, "generate": {"hosts": 8, "vms": args.vms}}})
        r.raise_for_status()
        await _inventory(http, root)
        worlds = [root]
        for n in range(args.sandboxes):
            r = await http.post(f"{base}/_sim/sandboxes", headers=root.headers,
                                json={"label": f"soak {n}", "ttl_seconds": 3600})
            r.raise_for_status()
            box = World(f"sandbox {n}", r.json()["base_url"], sandbox=True)
            await _login(http, box)
            worlds.append(box)
        t0 = time.monotonic()
        deadline = t0 + args.seconds
        received: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        rng = random.Random(18)
        tasks = [asyncio.create_task(_stream(http, worlds[i % len(worlds)], i % 2 == 1,
                                             deadline, received))
                 for i in range(args.streams)]
        tasks += [asyncio.create_task(_worker(http, worlds, random.Random(rng.random()),
                                              deadline, statuses))
                  for _ in range(args.workers)]
        tasks.append(asyncio.create_task(_migrator(http, root, args.migrate_rate,
                                                   random.Random(7), deadline, statuses)))
        samples: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            positions = await _positions(http, worlds)
            samples.append({"t": round(time.monotonic() - t0, 1),
                            "rss_mib": round(rss_kib(pid) / 1024, 2), "positions": positions})
            await asyncio.sleep(1)
        # Clients stop at the deadline; a stream blocked in a read is cancelled.
        _done, pending = await asyncio.wait(tasks, timeout=3)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        samples.append({"t": round(time.monotonic() - t0, 1),
                        "rss_mib": round(rss_kib(pid) / 1024, 2),
                        "positions": await _positions(http, worlds)})
    full = next((s for s in samples if s["positions"][0] >= HISTORY), None)
    after = [s for s in samples if full is not None and s["t"] >= full["t"]]
    summary: dict[str, Any] = {
        "rss_start_mib": samples[0]["rss_mib"], "rss_end_mib": samples[-1]["rss_mib"],
        "rss_max_mib": max(s["rss_mib"] for s in samples),
        "history_full_at_s": full["t"] if full else None,
    }
    if full is not None and len(after) >= 2:
        rss = [s["rss_mib"] for s in after]
        summary.update({
            "rss_at_full_mib": after[0]["rss_mib"],
            "rss_growth_after_full_mib": round(after[-1]["rss_mib"] - after[0]["rss_mib"], 2),
            "rss_range_after_full_mib": round(max(rss) - min(rss), 2),
            "rss_slope_after_full_mib_per_min": round(
                _slope([(s["t"], s["rss_mib"]) for s in after]), 3),
            "seconds_after_full": round(after[-1]["t"] - after[0]["t"], 1),
        })
    return {"summary": summary, "worlds": [w.name for w in worlds],
            "requests": dict(sorted(statuses.items())), "requests_total": sum(statuses.values()),
            "events_received": dict(sorted(received.items())), "samples": samples}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--streams", type=int, default=50)
    ap.add_argument("--sandboxes", type=int, default=3)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--vms", type=int, default=1200, help="VMs of the default world")
    ap.add_argument("--migrate-rate", type=float, default=40,
                    help="migrations started per second in the default world")
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    args = ap.parse_args()
    if not 0 < args.seconds <= 600:
        ap.error("--seconds is between 0 and 600")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    state = tempfile.TemporaryDirectory(prefix="cockpit-soak-")
    env = dict(os.environ, COCKPIT_JWT_SECRET=SECRET, COCKPIT_STATE_DIR=state.name,
               PYTHONPATH=str(ROOT))
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "cockpit_api.cli", "serve", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}{API}/openapi.json", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                print(f"the server did not start:\n{log.read()}", file=sys.stderr)
                return 2
            time.sleep(0.1)
        result = asyncio.run(_run(base, proc.pid, args))
    finally:
        stop_group(proc, 15)
        log.seek(0)
        server_log = log.read()
        log.close()
        state.cleanup()
    result.update({
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {"seconds": args.seconds, "streams": args.streams,
                   "sandboxes": args.sandboxes, "workers": args.workers, "vms": args.vms,
                   "migrate_rate": args.migrate_rate, "history": HISTORY},
        "server_errors": [ln for ln in server_log.splitlines()
                          if "Traceback" in ln or " 500 " in ln][:20],
    })
    s = result["summary"]
    md = "\n".join([
        f"# Soak ({result['when']}): {args.seconds:g} s, default world + {args.sandboxes} "
        f"sandboxes, {args.streams} streams, {args.workers} workers", "",
        f"{result['requests_total']:,} requests; "
        f"{sum(result['events_received'].values()):,} events received by the streams.", "",
        "| server RSS | MiB |", "|---|---:|",
        f"| at start of the load | {s['rss_start_mib']} |",
        f"| when the default world's feed history was full "
        f"({s['history_full_at_s']} s) | {s.get('rss_at_full_mib', '-')} |",
        f"| at the end | {s['rss_end_mib']} |", f"| max | {s['rss_max_mib']} |",
        f"| growth after the history was full | {s.get('rss_growth_after_full_mib', '-')} |",
        f"| range after the history was full | {s.get('rss_range_after_full_mib', '-')} |",
        f"| slope after the history was full, MiB/min | "
        f"{s.get('rss_slope_after_full_mib_per_min', '-')} |", "",
        f"Feed positions at the end (default, sandboxes): {result['samples'][-1]['positions']}.",
        f"Server errors logged: {len(result['server_errors'])}.", ""])
    write_results(args.results_dir, "soak-latest", result, md, indent=1)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
