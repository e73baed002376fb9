#!/usr/bin/env python3
"""The change feed under load: many SSE subscribers, one change every 10 ms.

    .venv/bin/python bench/feed.py                      # 1,000 subscribers, 20 s (~40 s)
    .venv/bin/python bench/feed.py --subscribers 100 --duration 5

What it does:

1. Serves the simulator (``cockpit-api serve``, default scenario) on a free
   loopback port, pinned to the first CPU (taskset, when there are two).
2. Opens ``--subscribers`` event streams (``GET /api/v1/events?types=vm``,
   bearer header) from one asyncio client process pinned to the other CPU, and
   measures the server's RSS before and after: memory per idle subscriber.
3. A driver process (same CPU as the client) makes one change every
   ``--interval`` seconds on an absolute schedule: alternately suspends and
   resumes one of 8 VMs through the API (change k on VM k % 8, one connection
   per VM: open loop). Each change is one ``vm`` event for its VM, so the n-th
   event of VM i a subscriber reads is change 8n + i.
4. Delivery latency of an event to a subscriber = when the subscriber read it
   minus when the driver sent the request that made it (so it includes the
   action's own round trip). Changes during the warm-up are left out.
5. Server CPU over the measured window from /proc/PID/stat; the client's own CPU
   too (a saturated client inflates the latencies it reports).

Prints a table and writes ``bench/results/feed-latest.{md,json}``. Every process
started here is stopped here, by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# bench/harness.py: ports, pinning, CPU and RSS of a process
from harness import Pinning, free_port, process_cpu_seconds, rss_kib, runqueue_seconds

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SECRET = "bench-feed-secret-of-at-least-32-bytes!!"
VM = "d13c513a-42f8-4da1-97b1-165f0971b7c4"  # web-frontend-01, running
# The default scenario's running VMs on connected hosts: the driver's targets.
VMS = ("d13c513a-42f8-4da1-97b1-165f0971b7c4", "48a7c825-2abc-4619-a5ab-d89bd67e4d92",
       "eca9bad1-449e-48e4-b15c-e760f3e452f2", "f4d6d235-08bd-4d96-b6e9-c8092966493d",
       "959575fe-0a73-4d03-b43a-2c9fbed3e91c", "72488b81-0dfa-4e39-8727-d4dad921bf95",
       "a06bcdfe-7533-40fd-a339-11c082f5e35d", "825dc254-fc63-4b8b-853c-9fd548740684")
_ID = re.compile(rb"\nid: [0-9a-f]+-(\d+)\n|^id: [0-9a-f]+-(\d+)\n")
# A vm event's VM: its data starts with the VM's id.
_VM_EVENT = re.compile(rb'event: vm\ndata: \{"id":"([0-9a-f-]{36})"')


def http(method: str, url: str, body: Any = None, token: str | None = None
         ) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as r:
        headers = {k.lower(): v for k, v in r.headers.items()}
        return r.status, headers, json.loads(r.read() or b"null")


# ------------------------------------------------------------------ the driver (own process)


def drive(port: int, token: str, interval: float, count: int, start_at: float,
          out: Any) -> None:
    """Change k at ``start_at + k * interval``, on VM ``k % 8``; sends (sent, answered) times.

    Open loop across VMs: one connection per VM, so a slow answer delays only that
    VM's next change (which must follow it: suspend, then resume). A change due
    after the window is not made.
    """
    sent: dict[int, float] = {}
    answered: dict[int, float] = {}
    end = start_at + count * interval

    async def worker(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for k in range(i, count, len(VMS)):
            delay = start_at + k * interval - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.time() > end:
                break  # behind schedule: the window is over, stop rather than catch up
            action = "suspend" if (k // len(VMS)) % 2 == 0 else "resume"
            body = json.dumps({"action": action}).encode()
            sent[k] = time.time()
            writer.write(
                f"POST /api/v1/vms/{VMS[i]}/action HTTP/1.1\r\nHost: bench\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"content-length: (\d+)", head.lower())
            await reader.readexactly(int(length.group(1)) if length else 0)
            answered[k] = time.time()
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode())
        writer.close()

    async def main() -> None:
        await asyncio.gather(*(worker(i) for i in range(len(VMS))))

    asyncio.run(main())
    out.put((sent, answered))


# ------------------------------------------------------------------ the subscribers


class Subscriber:
    def __init__(self) -> None:
        self.vms: list[bytes] = []
        self.times = array("d")
        self.ready = asyncio.Event()
        self.tail = b""


async def subscribe(port: int, token: str, sub: Subscriber) -> None:
    """Read one stream until cancelled, noting when each event id arrived."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /api/v1/events?types=vm HTTP/1.1\r\nHost: bench\r\n"
                 f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    try:
        while chunk := await reader.read(65536):
            now = time.time()
            sub.ready.set()
            data = sub.tail + chunk
            # Chunked transfer framing sits between SSE frames; ids are whole lines.
            for vm in _VM_EVENT.findall(data):
                sub.vms.append(vm)
                sub.times.append(now)
            cut = data.rfind(b"\n\n")  # a frame cut in two is read whole next time
            sub.tail = data[cut:] if cut >= 0 else data[-4096:]
    finally:
        writer.close()


def percentile(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


async def run_clients(args: argparse.Namespace, port: int, token: str, pid: int
                      ) -> dict[str, Any]:
    subs = [Subscriber() for _ in range(args.subscribers)]
    rss0 = rss_kib(pid)
    tasks = []
    for i, sub in enumerate(subs):
        tasks.append(asyncio.ensure_future(subscribe(port, token, sub)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # do not flood the accept queue
    async with asyncio.timeout(60):
        await asyncio.gather(*(s.ready.wait() for s in subs))
    await asyncio.sleep(2)  # idle: heartbeats and session checks only
    rss1 = rss_kib(pid)

    count = int((args.warmup + args.duration) / args.interval)
    start_at = time.time() + 0.5
    queue: Any = mp.get_context("fork").Queue()
    driver = mp.get_context("fork").Process(
        target=drive, args=(port, token, args.interval, count, start_at, queue))
    driver.start()
    await asyncio.sleep(max(0.0, start_at + args.warmup - time.time()))
    cpu0 = process_cpu_seconds(pid, children=False)
    wall0, me0 = time.monotonic(), time.process_time()
    wait0 = runqueue_seconds(pid)
    await asyncio.sleep(args.duration)
    cpu1 = process_cpu_seconds(pid, children=False)
    wall1, me1 = time.monotonic(), time.process_time()
    wait1 = runqueue_seconds(pid)
    sent, answered = await asyncio.to_thread(queue.get, True, 600)
    driver.join(30)
    await asyncio.sleep(1.0)  # the last events on their way
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    first = int(args.warmup / args.interval)
    index = {vm.encode(): i for i, vm in enumerate(VMS)}
    lat: list[float] = []
    missing = 0
    for sub in subs:
        # The n-th event of VM i is change n * 8 + i (each change toggles its VM).
        seen = dict.fromkeys(index, 0)
        got: dict[int, float] = {}
        for vm, t in zip(sub.vms, sub.times, strict=True):
            got[seen[vm] * len(VMS) + index[vm]] = t
            seen[vm] += 1
        for k, t0 in sent.items():
            if k < first:
                continue
            t = got.get(k)
            if t is None:
                missing += 1
            else:
                lat.append((t - t0) * 1000)
    window = wall1 - wall0
    rtt = [(answered[k] - t0) * 1000 for k, t0 in sent.items() if k >= first and k in answered]
    return {
        "action_round_trip_ms": {"p50": round(percentile(rtt, 50), 2),
                                 "p99": round(percentile(rtt, 99), 2)},
        "subscribers": args.subscribers, "interval_ms": args.interval * 1000,
        "measured_seconds": round(window, 1),
        "changes_measured": sum(1 for k in sent if k >= first),
        "changes_scheduled": count - first,
        "deliveries": len(lat), "missing": missing,
        "latency_ms": {"p50": round(percentile(lat, 50), 2),
                       "p90": round(percentile(lat, 90), 2),
                       "p99": round(percentile(lat, 99), 2),
                       "max": round(max(lat), 2) if lat else None,
                       "mean": round(statistics.fmean(lat), 2) if lat else None},
        "server_cpu_percent": round(100 * (cpu1 - cpu0) / window, 1),
        "server_runqueue_wait_percent": round(100 * (wait1 - wait0) / window, 1),
        "client_cpu_percent": round(100 * (me1 - me0) / window, 1),
        "rss_kib": {"no_subscribers": rss0, "idle_subscribers": rss1},
        "rss_per_idle_subscriber_kib": round((rss1 - rss0) / args.subscribers, 1),
    }


async def in_process(args: argparse.Namespace) -> dict[str, Any]:
    """The server's own cost and latency, without sockets or a client process.

    The app runs in this process; each subscriber is an ASGI call whose ``send``
    notes when each frame left the app. Latency = that instant minus the moment
    the change was made; CPU = this process's CPU time over the window.
    """
    sys.path.insert(0, str(ROOT))
    from cockpit_api.app import create_app
    from cockpit_api.backends.sim import scenario
    from cockpit_api.backends.sim.backend import SimulatedBackend
    from cockpit_api.backends.sim.clock import VirtualClock
    from cockpit_api.config import Settings
    from cockpit_api.feed.changes import feed_of

    sim = SimulatedBackend(scenario.load("default"), VirtualClock(time.time(), speed=1.0))
    # One user holds every subscriber: past the stream caps (32 per user, 1,000 in all).
    app = create_app(Settings(jwt_secret=SECRET, max_streams_per_user=100_000,
                              max_streams=100_000), backend=sim)
    feed = feed_of(sim)
    token = sim and app.services.auth.login("admin", "admin", "bench").token
    arrivals: list[tuple[int, float]] = []
    disconnect = asyncio.Event()

    async def one() -> None:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": "/api/v1/events",
                 "raw_path": b"/api/v1/events", "query_string": b"types=vm", "root_path": "",
                 "headers": [(b"authorization", f"Bearer {token}".encode()),
                             (b"accept", b"text/event-stream")],
                 "client": ("127.0.0.1", 1), "server": ("bench", 80)}
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            body = message.get("body")
            if body:
                now = time.perf_counter()
                for a, b in _ID.findall(b"\n" + body):
                    arrivals.append((int(a or b), now))

        await app(scope, receive, send)

    tasks = [asyncio.ensure_future(one()) for _ in range(args.subscribers)]
    while feed.subscribers < args.subscribers:
        await asyncio.sleep(0.01)
    await asyncio.sleep(1)
    made: dict[int, float] = {}
    count = int((args.warmup + args.duration) / args.interval)
    first = int(args.warmup / args.interval)
    start = time.perf_counter()
    cpu0 = 0.0
    for k in range(count):
        if k == first:
            cpu0, wall0 = time.process_time(), time.perf_counter()
        # Behind schedule or not, let the subscribers run (a server's changes come from
        # requests, which wait their turn on the loop too).
        await asyncio.sleep(max(0.0, start + k * args.interval - time.perf_counter()))
        await sim.vm_action(VM, "suspend" if k % 2 == 0 else "resume", False)
        made[feed.seq - 1] = time.perf_counter()  # the change's vm event (then its host's)
    await asyncio.sleep(0.5)
    cpu1, wall1 = time.process_time(), time.perf_counter()
    disconnect.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    first_seq = min(seq for seq in made) + 2 * first
    lat = [(t - made[seq]) * 1000 for seq, t in arrivals if seq in made and seq >= first_seq]
    return {"subscribers": args.subscribers, "interval_ms": args.interval * 1000,
            "deliveries": len(lat),
            "expected": args.subscribers * (count - first),
            "latency_ms": {"p50": round(percentile(lat, 50), 2),
                           "p99": round(percentile(lat, 99), 2),
                           "max": round(max(lat), 2) if lat else None},
            "cpu_percent": round(100 * (cpu1 - cpu0) / (wall1 - wall0), 1)}


def client_main(args: argparse.Namespace, port: int, token: str, pid: int, out: Path) -> None:
    out.write_text(json.dumps(asyncio.run(run_clients(args, port, token, pid))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=0.01, help="seconds between changes")
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--results-dir", default=str(BENCH / "results"))
    ap.add_argument("--no-pin", action="store_true",
                    help="let the scheduler place the processes (a shared, busy machine)")
    ap.add_argument("--in-process", action="store_true",
                    help="the server's own CPU and latency: the app in this process, no sockets")
    ap.add_argument("--client", nargs=4, help=argparse.SUPPRESS)  # internal: port token pid out
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per subscriber
    if args.in_process:
        result = asyncio.run(in_process(args))
        result["when"] = datetime.now(UTC).isoformat(timespec="seconds")
        result["loadavg_after"] = os.getloadavg()
        text = json.dumps(result, indent=2) + "\n"
        Path(args.results_dir).mkdir(parents=True, exist_ok=True)
        name = f"feed-inprocess-{args.subscribers}-{args.interval * 1000:g}ms.json"
        (Path(args.results_dir) / name).write_text(text)
        print(text)
        return 0
    if args.client:
        port, token, pid, out = args.client
        client_main(args, int(port), token, int(pid), Path(out))
        return 0

    pin = Pinning.choose(not args.no_pin)
    server_pin, client_pin = pin.server, pin.client
    port = free_port()
    # One user holds every subscriber: past the stream caps (32 per user, 1,000 in all).
    env = dict(os.environ, COCKPIT_JWT_SECRET=SECRET, COCKPIT_MAX_STREAMS_PER_USER="100000",
               COCKPIT_MAX_STREAMS="100000")
    # A store of its own: the user's state directory may hold another version's schema.
    state = tempfile.TemporaryDirectory(prefix="cockpit-feed-state-")
    env["COCKPIT_STATE_DIR"] = state.name
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed below; a file, never a full pipe
    server = subprocess.Popen(
        [*server_pin, sys.executable, "-m", "cockpit_api.cli", "serve", "--port", str(port),
         "--log-level", "warning"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                http("GET", f"http://127.0.0.1:{port}/api/v1/openapi.json")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    print("the server did not start", file=sys.stderr)
                    return 2
                time.sleep(0.1)  # polling a starting process, bounded by the deadline
        _, _, pair = http("POST", f"http://127.0.0.1:{port}/api/v1/auth/login",
                          {"username": "admin", "password": "admin"})
        out = Path(tempfile.mkdtemp(prefix="cockpit-feed-")) / "client.json"
        subprocess.run([*client_pin, sys.executable, __file__, "--subscribers",
                        str(args.subscribers), "--interval", str(args.interval), "--duration",
                        str(args.duration), "--warmup", str(args.warmup),
                        "--client", str(port), pair["token"], str(server.pid), str(out)],
                       check=True, timeout=600)
        result = json.loads(out.read_text())
        out.unlink()
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        state.cleanup()
    result["when"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                         "loadavg_after": os.getloadavg(), "pinned": bool(server_pin)}
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    (results / "feed-latest.json").write_text(json.dumps(result, indent=2) + "\n")
    md = render(result)
    (results / "feed-latest.md").write_text(md)
    print(md)
    return 0


def render(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    return "\n".join([
        f"# Change feed: {r['subscribers']} SSE subscribers, one change every "
        f"{r['interval_ms']:g} ms ({r['when']})",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| delivery latency p50 / p90 / p99 / max (ms) | {lat['p50']} / {lat['p90']} / "
        f"{lat['p99']} / {lat['max']} |",
        f"| the driver's action round trip p50 / p99 (ms) | {r['action_round_trip_ms']['p50']} / "
        f"{r['action_round_trip_ms']['p99']} |",
        f"| changes made / scheduled in the window | {r['changes_measured']} / "
        f"{r['changes_scheduled']} |",
        f"| deliveries measured (missing) | {r['deliveries']:,} ({r['missing']}) |",
        f"| server CPU (% of one core) | {r['server_cpu_percent']} |",
        f"| server runnable but waiting for a CPU (% of the time) | "
        f"{r['server_runqueue_wait_percent']} |",
        f"| client CPU (% of one core) | {r['client_cpu_percent']} |",
        f"| server RSS: none / {r['subscribers']} idle subscribers (KiB) | "
        f"{r['rss_kib']['no_subscribers']:,} / {r['rss_kib']['idle_subscribers']:,} |",
        f"| memory per idle subscriber (KiB) | {r['rss_per_idle_subscriber_kib']} |",
        f"| machine: CPUs, load average after | {r['machine']['cpus']}, "
        f"{', '.join(f'{x:.1f}' for x in r['machine']['loadavg_after'])} |",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
