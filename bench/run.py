#!/usr/bin/env python3
"""Benchmarks: the mock side by side with Prism and the bare-ASGI ceiling, and its curves.

    .venv/bin/python bench/run.py              # the full run (~10 min), results in bench/results/
    .venv/bin/python bench/run.py --quick      # a short version (< 60 s), for smoke tests
    .venv/bin/python bench/run.py --quick --no-prism

What it does (bench/README.md explains each number):

1. Comparison. Serves, one process each on loopback free ports: our mock
   (``cockpit-api serve``, default settings), Prism (``prism mock`` on a copy of
   openapi.yaml with the /api/v1 prefix moved into the paths), and the ceiling
   (bench/ceiling.py: bare Starlette + uvicorn + the same pyjwt check, same
   bytes). Loads each with wrk at the same settings, warm-up first, then short
   rounds interleaved between servers, on GET /api/v1/vms?limit=100 with the
   bearer header.
2. Curves, same harness, our mock only: list and filtered lists at 20, 1,000,
   10,000 and 100,000 VMs (scenarios swapped through the control plane); login
   throughput; an action + GET round trip; start-up time (median of 5); RSS at
   100,000 VMs (a fresh process on a generated scenario file).

Servers are pinned to the first CPU and wrk to the next ones with taskset when
there are at least two. Every load run is bounded (wrk -d, plus a timeout on
the wrk process); every process started here is stopped here, by its PID.
Exit status: 0, or 3 when a load run saw errors (non-2xx, socket errors), which
makes its numbers meaningless; 2 when a server would not start.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# bench/harness.py: servers, ports, pinning, wrk, CPU, RSS; bench/report.py: the report
from harness import (
    BENCH,
    DEMO_USERS,
    LIST_100,
    PREFIX,
    Pinning,
    Server,
    ServerFailed,
    Target,
    Wrk,
    _loadavg,
    ceiling_token,
    cockpit_cmd,
    connexion_stack_config,
    cpu_seconds,
    free_port,
    get_json,
    hosts_for,
    http,
    interleaved,
    login,
    machine,
    prism_cmd,
    prism_spec,
    stop_all,
)
from report import all_ok, markdown, targets

# ---------------------------------------------------------------- settings


@dataclass
class Plan:
    quick: bool
    threads: int = 2
    connections: int = 32
    warmup: int = 3          # seconds of discarded load per server/endpoint
    duration: int = 10       # seconds per measured round (comparison)
    rounds: int = 3          # rounds, interleaved between servers
    curve_warmup: int = 2
    curve_duration: int = 5
    curve_rounds: int = 3
    sizes: tuple[int, ...] = (20, 1_000, 10_000, 100_000)
    login_duration: int = 10
    action_duration: int = 5
    action_rounds: int = 3
    startup_runs: int = 5

    @classmethod
    def make(cls, quick: bool, smoke: bool = False) -> Plan:
        if smoke:  # the test suite's: every phase once, as short as wrk allows
            return cls(quick=True, warmup=0, duration=1, rounds=1, curve_warmup=0,
                       curve_duration=1, curve_rounds=1, sizes=(20,), login_duration=1,
                       action_duration=1, action_rounds=1, startup_runs=1)
        if not quick:
            return cls(quick=False)
        return cls(quick=True, warmup=1, duration=2, rounds=1, curve_warmup=1, curve_duration=1,
                   curve_rounds=1, sizes=(20, 100_000), login_duration=2, action_duration=2,
                   action_rounds=1, startup_runs=3)


# ---------------------------------------------------------------- phases


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.plan = Plan.make(args.quick, args.smoke)
        if args.rounds:
            self.plan.rounds = self.plan.action_rounds = args.rounds
        self.pin = Pinning.choose(not args.no_pin)
        self.tmp = Path(tempfile.mkdtemp(prefix="cockpit-bench-"))
        self.wrk = Wrk(self.plan, self.pin, self.tmp)
        self.results: dict[str, Any] = {
            "mode": "quick" if args.quick else "full",
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(), "pinning": self.pin.describe(),
            "settings": {k: v for k, v in vars(self.plan).items()},
        }
        self.t0 = time.perf_counter()
        self.baseline: Server | None = None

    def say(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", flush=True)

    # -- 1. ours vs Prism vs the ceiling

    def comparison(self) -> Server:
        plan = self.plan
        self.say("comparison: GET /api/v1/vms?limit=100 (default scenario)")
        port = free_port()
        ours = Server("ours", cockpit_cmd(port, self.pin), port, self.tmp).start()
        ours.wait_ready(f"{PREFIX}/openapi.json")
        token = login(ours.base)
        status, body = http("GET", ours.base + LIST_100, token=token)
        assert status == 200, status
        body_file = self.tmp / "vms-limit-100.json"
        body_file.write_bytes(body)

        servers: dict[str, tuple[Server, str]] = {"ours": (ours, token)}
        if not self.args.no_baseline:
            port = free_port()
            base = Server("connexion-stack", cockpit_cmd(port, self.pin, config=(
                connexion_stack_config(self.tmp))), port, self.tmp).start()
            base.wait_ready(f"{PREFIX}/openapi.json")
            servers["ours, Connexion's stack"] = (base, login(base.base))
        secret = uuid.uuid4().hex + uuid.uuid4().hex
        port = free_port()
        ceiling = Server("ceiling", [*self.pin.server, sys.executable, str(BENCH / "ceiling.py"),
                                     "--port", str(port), "--body", str(body_file)],
                         port, self.tmp, env={"COCKPIT_BENCH_JWT_SECRET": secret}).start()
        servers["ceiling"] = (ceiling, ceiling_token(secret))
        if self.args.ceiling_cache:
            port = free_port()
            cached = Server("ceiling-cache", [*self.pin.server, sys.executable,
                                              str(BENCH / "ceiling.py"), "--port", str(port),
                                              "--body", str(body_file), "--cache"],
                            port, self.tmp, env={"COCKPIT_BENCH_JWT_SECRET": secret}).start()
            servers["ceiling+cache"] = (cached, servers["ceiling"][1])
        if not self.args.no_prism:
            port = free_port()
            cmd = prism_cmd(port, prism_spec(self.tmp, body), self.pin)
            if cmd is None:
                self.say("  prism is not installed (cd bench && npm install): skipping it")
                self.results["prism_skipped"] = "not installed"
            else:
                # Prism accepts any bearer token; it gets one like ours.
                servers["prism"] = (Server("prism", cmd, port, self.tmp).start(), token)
        for name, (server, tok) in servers.items():
            server.wait_ready(LIST_100, tok, timeout=120, interval=0.1)
            status, got = http("GET", server.base + LIST_100, token=tok)
            same = json.loads(got) == json.loads(body)
            self.say(f"  {name}: pid {server.pid} on {server.base}; same body as ours: {same}")
        targets = {name: Target(server.base + LIST_100, tok, server=server)
                   for name, (server, tok) in servers.items()}
        table = interleaved(self.wrk, targets, plan.warmup, plan.duration, plan.rounds, self.say)
        for name, (server, _) in servers.items():
            table[name]["rss_mib"] = round(server.rss_kib()["VmRSS"] / 1024, 1)
        self.results["comparison"] = table
        for name, (server, _) in servers.items():
            if name == "ours, Connexion's stack":
                self.baseline = server
            elif name != "ours":
                server.stop()
        return ours

    # -- 1b. single-resource reads and writes: ours vs the same server on Connexion's stack

    def operations(self, ours: Server) -> None:
        plan = self.plan
        servers = {"ours": ours}
        if self.baseline is not None:
            servers["ours, Connexion's stack"] = self.baseline
        rows: dict[str, dict[str, Any]] = {}
        for workload in ("GET /vms/{id}", "action + GET", "migrate + poll"):
            targets: dict[str, Target] = {}
            for name, server in servers.items():
                token = login(server.base)
                status, raw = http("POST", f"{server.base}/_sim/scenario", {"name": "default"},
                                   token)
                if status != 200:
                    raise ServerFailed(f"scenario swap: {status} {raw[:300]!r}")
                targets[name] = self._workload(workload, server, token)
            self.say(f"{workload}: {' vs '.join(servers)}")
            table = interleaved(self.wrk, targets, plan.curve_warmup, plan.action_duration,
                                plan.action_rounds, self.say)
            rows[workload] = table
        self.results["operations"] = rows

    def _workload(self, workload: str, server: Server, token: str) -> Target:
        hosts = get_json(f"{server.base}{PREFIX}/hosts", token)["hosts"]
        connected = [h["id"] for h in hosts if h["status"] == "connected"]
        running = [v for v in get_json(f"{server.base}{PREFIX}/vms?status=running",
                                       token)["vms"]
                   if v["host_id"] in connected and v["migration_id"] is None]
        if workload == "GET /vms/{id}":
            ids = [v["id"] for v in get_json(f"{server.base}{LIST_100}", token)["vms"]]
            return Target(server.base, token, "get_vm", {"BENCH_VM_IDS": ",".join(ids)},
                          server=server)
        if workload == "action + GET":
            vms = [v["id"] for v in running][:self.plan.threads]
            return Target(server.base, token, "action", {"BENCH_VM_IDS": ",".join(vms)},
                          server=server)
        pairs = []
        for v in running[:self.plan.threads]:
            other = next(h for h in connected if h != v["host_id"])
            pairs.append(f"{v['id']}:{v['host_id']}:{other}")
        return Target(server.base, token, "migrate", {"BENCH_MIGRATIONS": ",".join(pairs)},
                      server=server)

    # -- 2. curves

    def curves(self, ours: Server) -> None:
        plan = self.plan
        token = login(ours.base)
        rows: list[dict[str, Any]] = []
        for n in plan.sizes:
            h = hosts_for(n)
            self.say(f"curve: {n:,} VMs on {h} hosts (control plane swap)")
            data = {"name": f"bench-{n}", "seed": 1, "users": DEMO_USERS,
                    "generate": {"hosts": h, "vms": n}}
            t = time.perf_counter()
            status, raw = http("POST", f"{ours.base}/_sim/scenario", {"data": data}, token,
                               timeout=300)
            if status != 200:
                raise ServerFailed(f"scenario swap: {status} {raw[:300]!r}")
            swap_s = time.perf_counter() - t
            hosts = get_json(f"{ours.base}{PREFIX}/hosts?limit=20", token)["hosts"]
            host = next(x["id"] for x in hosts if x["status"] == "connected")
            endpoints = {
                "list limit=100": LIST_100,
                "status=running limit=100": f"{PREFIX}/vms?status=running&limit=100",
                "host_id+status=running": f"{PREFIX}/vms?host_id={host}&status=running",
            }
            if n >= 10_000:
                endpoints["list limit=100, page at n/2"] = (
                    f"{LIST_100}&cursor={self._cursor_at(ours.base, token, n // 2)}")
            targets = {k: Target(ours.base + v, token, server=ours) for k, v in endpoints.items()}
            table = interleaved(self.wrk, targets, plan.curve_warmup, plan.curve_duration,
                                plan.curve_rounds, self.say)
            rss = ours.rss_kib()
            for name, summary in table.items():
                rows.append({"vms": n, "hosts": h, "endpoint": name, "path": endpoints[name],
                             "swap_s": round(swap_s, 2),
                             "rss_mib": round(rss["VmRSS"] / 1024, 1), **summary})
        self.results["curves"] = rows

    def _cursor_at(self, base: str, token: str, index: int) -> str:
        cursor, seen = None, 0
        while seen < index:
            q = f"{PREFIX}/vms?limit=1000" + (f"&cursor={cursor}" if cursor else "")
            page = get_json(base + q, token)
            seen += len(page["vms"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        return str(cursor)

    def login_rate(self, ours: Server) -> None:
        plan = self.plan
        self.say("login throughput (POST /auth/login; scrypt n=2^14 by design)")
        self.results["login"] = interleaved(
            self.wrk, {"login": Target(ours.base, None, "login", timeout="30s", server=ours)},
            0, plan.login_duration, 1, self.say)["login"]

    # -- 3. start-up and memory

    def startup(self) -> None:
        plan = self.plan
        self.say(f"start-up, default scenario: process start to first 200 on "
                 f"/api/v1/openapi.json, {plan.startup_runs} runs")
        times, rss, cpu = [], [], []
        for _ in range(plan.startup_runs):
            port = free_port()
            s = Server("startup", cockpit_cmd(port, self.pin), port, self.tmp).start()
            try:
                times.append(s.wait_ready(f"{PREFIX}/openapi.json", timeout=60, interval=0.005))
                # The CPU the start-up took: what the wall time would be on an idle core.
                cpu.append(cpu_seconds(s))
                rss.append(s.rss_kib()["VmRSS"])
            finally:
                s.stop()
            time.sleep(0.2)
        self.results["startup"] = {
            "median_s": round(statistics.median(times), 3), "runs_s": [round(t, 3) for t in times],
            "cpu_s": round(statistics.median(cpu), 3),
            "rss_mib_default": round(statistics.median(rss) / 1024, 1)}
        runs = ", ".join(f"{t:.2f}" for t in times)
        self.say(f"  median {statistics.median(times):.3f} s ({runs}); CPU "
                 f"{statistics.median(cpu):.2f} s")

    def memory(self) -> None:
        n = max(self.plan.sizes)
        self.say(f"memory: a fresh server on a generated scenario file with {n:,} VMs")
        scenario = self.tmp / f"gen-{n}.yaml"
        scenario.write_text(json.dumps({"name": f"bench-{n}", "seed": 1, "users": DEMO_USERS,
                                        "generate": {"hosts": hosts_for(n), "vms": n}}))
        port = free_port()
        s = Server("memory", cockpit_cmd(port, self.pin, str(scenario)), port, self.tmp).start()
        try:
            ready = s.wait_ready(f"{PREFIX}/openapi.json", timeout=300, interval=0.02)
            idle = s.rss_kib()
            token = login(s.base)
            load = self.wrk.run(s.base + LIST_100, token, max(1 if self.args.smoke else 2,
                                                              self.plan.curve_duration))
            after = s.rss_kib()
        finally:
            s.stop()
        self.results["memory"] = {
            "vms": n, "hosts": hosts_for(n), "startup_s": round(ready, 3),
            "rss_mib_idle": round(idle["VmRSS"] / 1024, 1),
            "rss_mib_after_load": round(after["VmRSS"] / 1024, 1),
            "hwm_mib": round(after["VmHWM"] / 1024, 1), "load_rps": round(load.rps, 1)}
        self.say(f"  RSS {idle['VmRSS'] / 1024:.0f} MiB idle, {after['VmRSS'] / 1024:.0f} MiB "
                 f"after load (peak {after['VmHWM'] / 1024:.0f} MiB); ready in {ready:.2f} s")

    # -- the whole thing

    def run(self) -> int:
        self.say(f"bench ({self.results['mode']}): {self.pin.describe()}; "
                 f"wrk -t{self.plan.threads} -c{self.plan.connections}; tmp {self.tmp}")
        try:
            phases = set(self.args.phases.split(","))
            ours = self.comparison()
            if "operations" in phases:
                self.operations(ours)
            if self.baseline is not None:
                self.baseline.stop()
            if "curves" in phases:
                self.curves(ours)
            if "login" in phases:
                self.login_rate(ours)
            ours.stop()
            if "startup" in phases:
                self.startup()
            if "memory" in phases:
                self.memory()
        except ServerFailed as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        finally:
            stop_all()
        self.results["machine"]["loadavg_at_end"] = _loadavg()
        self.results["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        self.results["targets"] = targets(self.results)
        md = markdown(self.results)
        print("\n" + md)
        self.write(md)
        if not self.args.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return 0 if all_ok(self.results) else 3

    def write(self, md: str) -> None:
        out = Path(self.args.results_dir)
        out.mkdir(parents=True, exist_ok=True)
        mode = self.results["mode"]
        blob = json.dumps(self.results, indent=2) + "\n"
        names = [f"{mode}-latest"]
        if mode == "full":
            names.append(f"{mode}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}")
        for name in names:
            (out / f"{name}.json").write_text(blob)
            (out / f"{name}.md").write_text(md)
        self.say(f"results: {', '.join(str(out / n) + '.{json,md}' for n in names)}")


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short version (< 60 s)")
    parser.add_argument("--no-prism", action="store_true", help="skip Prism")
    parser.add_argument("--smoke", action="store_true",
                        help="with --quick: 1 s rounds, no warm-up, 20 VMs only (the "
                             "test suite's smoke test; numbers meaningless)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip our server on Connexion's own stack (compiled pipeline off)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin CPUs with taskset")
    parser.add_argument("--ceiling-cache", action="store_true",
                        help="also serve the ceiling with our verified-token cache (no HMAC "
                             "per request, like ours)")
    parser.add_argument("--results-dir", default=str(BENCH / "results"),
                        help="where the JSON and markdown land (default bench/results)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (server logs)")
    parser.add_argument("--phases", default="operations,curves,login,startup,memory",
                        help="after the comparison (always): any of operations, curves, "
                             "login, startup, memory (default: all)")
    parser.add_argument("--rounds", type=int, default=0,
                        help="rounds per comparison and per workload (default 3; 1 quick)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: Any) -> None:
        stop_all()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return Bench(args).run()


if __name__ == "__main__":
    raise SystemExit(main())
