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
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SPEC = ROOT / "openapi.yaml"
PREFIX = "/api/v1"
LIST_100 = f"{PREFIX}/vms?limit=100"
DEMO_USERS = [{"username": "admin", "password": "admin", "role": "admin"},
              {"username": "viewer", "password": "viewer", "role": "viewer"}]


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


def hosts_for(n_vms: int) -> int:
    """Hosts per generated scenario: 100 VMs a host, like `large` (4 hosts at 20 VMs)."""
    return max(4, min(1000, n_vms // 100))


# ---------------------------------------------------------------- machine


def cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))


@dataclass
class Pinning:
    server: list[str]
    client: list[str]

    @classmethod
    def choose(cls, enabled: bool) -> Pinning:
        mine = cpus()
        if not enabled or len(mine) < 2 or shutil.which("taskset") is None:
            return cls([], [])
        server, client = mine[:1], mine[1:3]
        return cls(["taskset", "-c", ",".join(map(str, server))],
                   ["taskset", "-c", ",".join(map(str, client))])

    def describe(self) -> str:
        if not self.server:
            return "not pinned"
        return f"server on cpu {self.server[-1]}, wrk on cpu {self.client[-1]}"


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(), "cpus_usable": len(cpus()), "cpu_model": model,
        "mem_total_mib": mem_kib // 1024 if mem_kib else None,
        "python": platform.python_version(), "implementation": platform.python_implementation(),
        "kernel": platform.release(), "os": _os_name(), "loadavg_at_start": _loadavg(),
        "versions": _versions(), "commit": _commit(),
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def _loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist in ("connexion", "starlette", "uvicorn", "uvloop", "httptools", "PyJWT",
                 "jsonschema"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["wrk"] = _first_line(["wrk", "-v"])
    prism = BENCH / "node_modules" / "@stoplight" / "prism-cli" / "package.json"
    try:
        out["prism"] = json.loads(prism.read_text())["version"]
    except (OSError, ValueError, KeyError):
        out["prism"] = None
    out["node"] = _first_line(["node", "--version"])
    return out


def _first_line(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (r.stdout or r.stderr).strip()
    return text.splitlines()[0] if text else None


def _commit() -> str | None:
    """The checked-out commit: ``git rev-parse``, else read from .git."""
    out = _first_line(["git", "-C", str(ROOT), "rev-parse", "HEAD"])
    if out and len(out) == 40:
        return out
    git = ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        loose = git / ref
        if loose.exists():
            return loose.read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        pass
    return None


# ---------------------------------------------------------------- HTTP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http(method: str, url: str, body: Any = None, token: str | None = None,
         timeout: float = 30) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get_json(url: str, token: str, timeout: float = 30) -> Any:
    status, raw = http("GET", url, token=token, timeout=timeout)
    if status != 200:
        raise RuntimeError(f"GET {url}: {status} {raw[:300]!r}")
    return json.loads(raw)


# ---------------------------------------------------------------- processes


class ServerFailed(RuntimeError):
    pass


class Server:
    """One server process we started; stopped by its PID (its own session)."""

    def __init__(self, name: str, cmd: list[str], port: int, logdir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.cmd, self.port = name, cmd, port
        self.base = f"http://127.0.0.1:{port}"
        self.log = logdir / f"{name}-{port}.log"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> Server:
        env = dict(os.environ, **(self.env or {}))
        # Each server keeps its store in the run's temporary folder, never in $HOME.
        env.setdefault("COCKPIT_STATE_DIR", str(self.log.with_suffix(".state")))
        # The login phase sends 32 concurrent correct logins for one user from one address;
        # attempts count toward throttling while in flight (by design), so raise the limits.
        env.setdefault("COCKPIT_MAX_FAILURES_PER_USER", "1000000")
        env.setdefault("COCKPIT_MAX_FAILURES_PER_ADDRESS", "1000000")
        with open(self.log, "wb") as log:
            self.started_at = time.perf_counter()
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=ROOT, env=env,
                                         start_new_session=True)
        _STARTED.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, path: str, token: str | None = None, timeout: float = 60,
                   interval: float = 0.01) -> float:
        """Seconds from process start to the first 200 on ``path``."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise ServerFailed(f"{self.name} exited: see {self.log}:\n{self.tail()}")
            try:
                status, _ = http("GET", self.base + path, token=token, timeout=2)
                if status == 200:
                    return time.perf_counter() - self.started_at
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(interval)
        raise ServerFailed(f"{self.name} not ready after {timeout} s: see {self.log}")

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def rss_kib(self) -> dict[str, int]:
        """VmRSS and VmHWM of the process (and of its children, for Prism)."""
        out = {"VmRSS": 0, "VmHWM": 0}
        for pid in [self.pid, *_children(self.pid)]:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    key = line.split(":", 1)[0]
                    if key in out:
                        out[key] += int(line.split()[1])
            except OSError:
                continue
        return out

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        # Our own process group (start_new_session): its id is the PID we started.
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


_STARTED: list[Server] = []


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    kids = [int(x) for x in text.split()]
    return kids + [g for k in kids for g in _children(k)]


def stop_all() -> None:
    for server in reversed(_STARTED):
        server.stop()


def cockpit_cmd(port: int, pin: Pinning, scenario: str | None = None,
                config: Path | None = None) -> list[str]:
    # `-m` from the checkout's root (the servers' cwd): this tree's code, whatever the
    # venv's `cockpit-api` script was installed from.
    cmd = [*pin.server, sys.executable, "-m", "cockpit_api.cli", "serve", "--port", str(port)]
    if scenario:
        cmd += ["--scenario", scenario]
    if config:
        cmd += ["--config", str(config)]
    return cmd


def connexion_stack_config(tmp: Path) -> Path:
    """A config that serves through Connexion's own per-request stack (no compiled
    pipeline): the path every request took before cockpit_api/pipeline.py."""
    path = tmp / "connexion-stack.toml"
    path.write_text("[server]\ncompiled_pipeline = false\n")
    return path


def login(base: str) -> str:
    status, raw = http("POST", f"{base}{PREFIX}/auth/login",
                       {"username": "admin", "password": "admin"})
    if status != 200:
        raise ServerFailed(f"login failed: {status} {raw[:200]!r}")
    token: str = json.loads(raw)["token"]
    return token


# ---------------------------------------------------------------- wrk


@dataclass
class Load:
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    requests: int
    bytes_per_request: float
    errors: dict[str, int]
    server_cpu_pct: float | None = None   # the server's CPU time / wall time during the run
    req_per_cpu_s: float | None = None    # requests per CPU-second of the server

    @property
    def ok(self) -> bool:
        return not any(self.errors.values())


class Wrk:
    def __init__(self, plan: Plan, pin: Pinning, tmp: Path) -> None:
        self.plan, self.pin = plan, pin
        self.scripts: dict[str, Path] = {}
        report = (BENCH / "lua" / "report.lua").read_text()
        for name in ("get", "login", "action", "get_vm", "migrate"):
            path = tmp / f"{name}.lua"
            path.write_text((BENCH / "lua" / f"{name}.lua").read_text() + "\n" + report)
            self.scripts[name] = path

    def run(self, url: str, token: str | None, duration: int, script: str = "get",
            env: dict[str, str] | None = None, timeout: str = "5s") -> Load:
        p = self.plan
        cmd = [*self.pin.client, "wrk", f"-t{p.threads}", f"-c{p.connections}",
               f"-d{duration}s", f"--timeout={timeout}", "-s", str(self.scripts[script])]
        if token:
            cmd += ["-H", f"Authorization: Bearer {token}"]
        cmd.append(url)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60,
                           env=dict(os.environ, **(env or {})), check=False)
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if r.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({r.returncode}): {r.stdout}\n{r.stderr}")
        d = json.loads(line[len("BENCH_JSON "):])
        secs = d["duration_us"] / 1e6
        n = d["requests"]
        return Load(
            rps=n / secs if secs else 0.0, p50_ms=d["p50_us"] / 1000, p90_ms=d["p90_us"] / 1000,
            p99_ms=d["p99_us"] / 1000, p999_ms=d["p999_us"] / 1000, max_ms=d["max_us"] / 1000,
            requests=n, bytes_per_request=d["bytes"] / n if n else 0.0,
            errors={k: d[k] for k in ("connect_errors", "read_errors", "write_errors",
                                      "status_errors", "timeouts")},
        )


def summarize(loads: Sequence[Load]) -> dict[str, Any]:
    """Medians over rounds (and each round, for the record)."""
    med = statistics.median
    return {
        "rps": round(med(x.rps for x in loads), 1),
        "p50_ms": round(med(x.p50_ms for x in loads), 3),
        "p90_ms": round(med(x.p90_ms for x in loads), 3),
        "p99_ms": round(med(x.p99_ms for x in loads), 3),
        "p999_ms": round(med(x.p999_ms for x in loads), 3),
        "max_ms": round(max(x.max_ms for x in loads), 3),
        "rps_min": round(min(x.rps for x in loads), 1),
        "rps_max": round(max(x.rps for x in loads), 1),
        "bytes_per_request": round(med(x.bytes_per_request for x in loads), 1),
        "requests": sum(x.requests for x in loads),
        "errors": {k: sum(x.errors[k] for x in loads) for k in loads[0].errors},
        "ok": all(x.ok for x in loads),
        "server_cpu_pct": _med_or_none([x.server_cpu_pct for x in loads], 1),
        "req_per_cpu_s": _med_or_none([x.req_per_cpu_s for x in loads], 1),
        "rounds": [{"rps": round(x.rps, 1), "p50_ms": round(x.p50_ms, 3),
                    "p99_ms": round(x.p99_ms, 3), "server_cpu_pct": x.server_cpu_pct}
                   for x in loads],
    }


def _med_or_none(xs: list[float | None], digits: int) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(statistics.median(vals), digits) if vals else None


@dataclass
class Target:
    url: str
    token: str | None
    script: str = "get"
    env: dict[str, str] = field(default_factory=dict)
    timeout: str = "5s"
    server: Server | None = None  # whose CPU time to account


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(server: Server | None) -> float:
    """User + system CPU seconds of the server process (all threads) and its children."""
    if server is None or server.proc is None:
        return 0.0
    total = 0
    for pid in [server.pid, *_children(server.pid)]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def interleaved(wrk: Wrk, targets: dict[str, Target], warmup: int, duration: int,
                rounds: int, say: Any) -> dict[str, dict[str, Any]]:
    """Warm each target up, then ``rounds`` measured rounds, round-robin between targets."""
    for name, t in targets.items():
        if warmup:
            say(f"    warm-up {name} ({warmup} s)")
            wrk.run(t.url, t.token, warmup, t.script, t.env, t.timeout)
    loads: dict[str, list[Load]] = {name: [] for name in targets}
    for i in range(rounds):
        for name, t in targets.items():
            cpu0, wall0 = cpu_seconds(t.server), time.perf_counter()
            load = wrk.run(t.url, t.token, duration, t.script, t.env, t.timeout)
            cpu, wall = cpu_seconds(t.server) - cpu0, time.perf_counter() - wall0
            if t.server is not None and cpu > 0:
                load.server_cpu_pct = 100 * cpu / wall
                load.req_per_cpu_s = load.requests / cpu
            loads[name].append(load)
            flag = "" if load.ok else f"  ERRORS {load.errors}"
            cpu_note = (f", server CPU {load.server_cpu_pct:.0f}%, "
                        f"{load.req_per_cpu_s:,.0f} req/CPU-s" if load.req_per_cpu_s else "")
            say(f"    round {i + 1}/{rounds} {name}: {load.rps:,.0f} req/s, "
                f"p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms{cpu_note}{flag}")
    return {name: summarize(ls) for name, ls in loads.items()}


# ---------------------------------------------------------------- Prism


def prism_spec(tmp: Path, list_body: bytes | None) -> Path:
    """A copy of openapi.yaml for Prism: the server's base path moved into the paths.

    Prism ignores ``servers`` when routing. When ``list_body`` is given it becomes
    the example of GET /vms, so Prism answers the same bytes as the others.
    """
    import yaml

    spec = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    base = (spec.pop("servers", None) or [{"url": ""}])[0]["url"].rstrip("/")
    spec["paths"] = {base + path: item for path, item in spec["paths"].items()}
    if list_body is not None:
        media = spec["paths"][f"{base}/vms"]["get"]["responses"]["200"]["content"]
        media["application/json"].pop("examples", None)
        media["application/json"]["example"] = json.loads(list_body)
    out = tmp / "openapi-prism.json"
    out.write_text(json.dumps(spec, default=str, indent=1))
    return out


def prism_cmd(port: int, spec: Path, pin: Pinning) -> list[str] | None:
    exe = BENCH / "node_modules" / ".bin" / "prism"
    if not exe.exists():
        return None
    return [*pin.server, str(exe), "mock", "-h", "127.0.0.1", "-p", str(port),
            "-v", "silent", str(spec)]


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


def ceiling_token(secret: str) -> str:
    """A token shaped like ours (cockpit_api.auth.service.AuthService._issue), for the ceiling."""
    import jwt

    now = int(time.time())
    return jwt.encode({"sub": "admin", "role": "admin", "iat": now, "exp": now + 3600,
                       "jti": uuid.uuid4().hex, "iss": "cockpit-api", "aud": "cockpit-api",
                       "typ": "access"}, secret, algorithm="HS256")


# ---------------------------------------------------------------- report


def all_ok(results: dict[str, Any]) -> bool:
    sections: list[dict[str, Any]] = list(results.get("comparison", {}).values())
    sections += results.get("curves", [])
    sections += [results[k] for k in ("login",) if k in results]
    sections += [x for table in results.get("operations", {}).values() for x in table.values()]
    return all(s.get("ok", True) for s in sections)


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cmp_ = r.get("comparison", {})
    ours = cmp_.get("ours")
    prism = cmp_.get("prism")
    ceiling = cmp_.get("ceiling")

    def add(name: str, value: float | None, goal: str, met: bool | None, detail: str) -> None:
        out.append({"target": name, "value": None if value is None else round(value, 3),
                    "goal": goal, "met": met, "detail": detail})

    if ours and prism:
        ratio = ours["rps"] / prism["rps"]
        add("GET /vms req/s vs Prism", ratio, ">= 2.0x", ratio >= 2.0,
            f"{ours['rps']:,.0f} vs {prism['rps']:,.0f} req/s")
        if ours.get("req_per_cpu_s") and prism.get("req_per_cpu_s"):
            ratio = ours["req_per_cpu_s"] / prism["req_per_cpu_s"]
            add("GET /vms per core (req/CPU-s) vs Prism", ratio, ">= 2.0x", ratio >= 2.0,
                f"{ours['req_per_cpu_s']:,.0f} vs {prism['req_per_cpu_s']:,.0f} req/CPU-s")
        ratio = ours["p99_ms"] / prism["p99_ms"]
        add("GET /vms p99 vs Prism", ratio, "< 1.0x", ratio < 1.0,
            f"{ours['p99_ms']:.2f} vs {prism['p99_ms']:.2f} ms")
    else:
        add("GET /vms req/s vs Prism", None, ">= 2.0x", None, "Prism not run")
        add("GET /vms p99 vs Prism", None, "< 1.0x", None, "Prism not run")
    if ours and ceiling:
        ratio = ours["rps"] / ceiling["rps"]
        add("(info) GET /vms req/s vs the ceiling", ratio, "", None,
            f"{ours['rps']:,.0f} vs {ceiling['rps']:,.0f} req/s")
    stack = cmp_.get("ours, Connexion's stack")
    if ours and stack:
        ratio = ours["rps"] / stack["rps"]
        add("GET /vms req/s vs Connexion's stack", ratio, "> 1.0x", ratio > 1.0,
            f"{ours['rps']:,.0f} vs {stack['rps']:,.0f} req/s")
    for workload, table in r.get("operations", {}).items():
        a, b = table.get("ours"), table.get("ours, Connexion's stack")
        if a and b:
            ratio = a["rps"] / b["rps"]
            add(f"{workload} req/s vs Connexion's stack", ratio, "> 1.0x", ratio > 1.0,
                f"{a['rps']:,.0f} vs {b['rps']:,.0f} req/s; p99 {a['p99_ms']:.2f} vs "
                f"{b['p99_ms']:.2f} ms")
    curve = {(c["vms"], c["endpoint"]): c for c in r.get("curves", [])}
    small, big = min(r["settings"]["sizes"]), max(r["settings"]["sizes"])
    a, b = curve.get((small, "list limit=100")), curve.get((big, "list limit=100"))
    if a and b:
        ratio = a["rps"] / b["rps"]
        add(f"page of 100 at {big:,} VMs vs {small} VMs", ratio, "<= 1.5x", ratio <= 1.5,
            f"{b['rps']:,.0f} vs {a['rps']:,.0f} req/s; p50 {b['p50_ms']:.2f} vs "
            f"{a['p50_ms']:.2f} ms")
        if a.get("req_per_cpu_s") and b.get("req_per_cpu_s"):
            ratio = a["req_per_cpu_s"] / b["req_per_cpu_s"]
            add("(same, per CPU-second: sizes are measured minutes apart, not interleaved)",
                ratio, "<= 1.5x", ratio <= 1.5,
                f"{b['req_per_cpu_s']:,.0f} vs {a['req_per_cpu_s']:,.0f} req/CPU-s")
    mid = curve.get((1_000, "list limit=100"))
    if mid and b and big != 1_000:
        ratio = mid["rps"] / b["rps"]
        add(f"(info) page of 100 at {big:,} VMs vs 1,000 VMs: same page size, cluster size only",
            ratio, "<= 1.5x", ratio <= 1.5, f"{b['rps']:,.0f} vs {mid['rps']:,.0f} req/s")
        if mid.get("req_per_cpu_s") and b.get("req_per_cpu_s"):
            ratio = mid["req_per_cpu_s"] / b["req_per_cpu_s"]
            add("(info, same, per CPU-second)", ratio, "<= 1.5x", ratio <= 1.5,
                f"{b['req_per_cpu_s']:,.0f} vs {mid['req_per_cpu_s']:,.0f} req/CPU-s")
    st = r.get("startup")
    if st:
        add("start-up, default scenario", st["median_s"], "< 2 s", st["median_s"] < 2.0,
            f"median of {len(st['runs_s'])}, wall time")
        if "cpu_s" in st:
            add("start-up, CPU time of it (what an idle core would take)", st["cpu_s"],
                "< 2 s", st["cpu_s"] < 2.0, "user + system seconds at the first 200")
    return out


def _opt(x: float | None, fmt: str = ".0f") -> str:
    return "" if x is None else format(x, fmt)


def _fmt_rps(x: float) -> str:
    return f"{x:,.0f}"


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    v = m["versions"]
    lines = [
        f"## Benchmark results ({r['mode']}, {r['started']})",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_total_mib']} MiB, "
        f"{m['os']}, kernel {m['kernel']}; Python {m['python']}; load average at start "
        f"{m['loadavg_at_start']}, at end {m.get('loadavg_at_end')}. {r['pinning']}. "
        f"wrk -t{r['settings']['threads']} -c{r['settings']['connections']}. "
        f"connexion {v.get('connexion')}, starlette {v.get('starlette')}, uvicorn "
        f"{v.get('uvicorn')}, uvloop {v.get('uvloop')}, httptools {v.get('httptools')}, "
        f"Prism {v.get('prism')} on node {v.get('node')}. Commit {str(m.get('commit'))[:12]}.",
        "",
    ]
    cmp_ = r.get("comparison")
    if cmp_:
        s = r["settings"]
        ours = cmp_["ours"]
        lines += [
            f"### GET /api/v1/vms?limit=100 with a bearer token (default scenario, "
            f"{s['rounds']} x {s['duration']} s interleaved after {s['warmup']} s warm-up; "
            f"medians)",
            "",
            "| server | req/s (min-max) | p50 ms | p99 ms | server CPU % | req/CPU-s | "
            "bytes/resp | RSS MiB | ours/this req/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, x in cmp_.items():
            ratio = ours["rps"] / x["rps"] if x["rps"] else float("nan")
            bad = "" if x["ok"] else f" **errors {x['errors']}**"
            lines.append(
                f"| {name} | {_fmt_rps(x['rps'])} ({_fmt_rps(x['rps_min'])}-"
                f"{_fmt_rps(x['rps_max'])}){bad} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | "
                f"{_opt(x['server_cpu_pct'])} | {_opt(x['req_per_cpu_s'], ',.0f')} | "
                f"{x['bytes_per_request']:,.0f} | {x.get('rss_mib', '')} | {ratio:.2f} |")
        lines.append("")
    if r.get("curves"):
        s = r["settings"]
        lines += [
            f"### Our mock as the cluster grows ({s['curve_rounds']} x {s['curve_duration']} s "
            f"per endpoint, interleaved; scenarios swapped through POST /_sim/scenario)",
            "",
            "| VMs | hosts | request | req/s | p50 ms | p99 ms | server CPU % | req/CPU-s | "
            "bytes/resp | RSS MiB |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for c in r["curves"]:
            bad = "" if c["ok"] else f" **errors {c['errors']}**"
            lines.append(
                f"| {c['vms']:,} | {c['hosts']} | {c['endpoint']} | {_fmt_rps(c['rps'])}{bad} | "
                f"{c['p50_ms']:.2f} | {c['p99_ms']:.2f} | {_opt(c['server_cpu_pct'])} | "
                f"{_opt(c['req_per_cpu_s'], ',.0f')} | {c['bytes_per_request']:,.0f} | "
                f"{c['rss_mib']} |")
        lines.append("")
    if r.get("operations"):
        s = r["settings"]
        lines += [
            f"### One resource at a time: ours vs the same server on Connexion's own stack "
            f"({s['action_rounds']} x {s['action_duration']} s interleaved, default scenario)",
            "",
            "| workload | server | req/s | p50 ms | p99 ms | server CPU % | req/CPU-s | "
            "compiled/stack req/s |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for workload, table in r["operations"].items():
            base = table.get("ours, Connexion's stack")
            for name, x in table.items():
                ratio = (f"{x['rps'] / base['rps']:.2f}" if base and name == "ours"
                         and base["rps"] else "")
                bad = "" if x["ok"] else f" **errors {x['errors']}**"
                lines.append(
                    f"| {workload} | {name} | {_fmt_rps(x['rps'])}{bad} | {x['p50_ms']:.2f} | "
                    f"{x['p99_ms']:.2f} | {_opt(x['server_cpu_pct'])} | "
                    f"{_opt(x['req_per_cpu_s'], ',.0f')} | {ratio} |")
        lines += ["", "GET /vms/{id} cycles over the 14 VMs; action + GET is suspend, GET, "
                  "resume, GET on two running VMs; migrate + poll starts a migration per wrk "
                  "thread, polls it until it ends, then migrates the VM back (connections "
                  "waiting for the POST read the VM).", ""]
    other = []
    if "login" in r:
        a = r["login"]
        other.append(f"| POST /auth/login (scrypt n=2^14 per login, by design) | "
                     f"{a['rps']:,.1f} req/s; p50 {a['p50_ms']:.0f} ms, p99 {a['p99_ms']:.0f} ms |")
    if "startup" in r:
        a = r["startup"]
        other.append(f"| start-up, default scenario (process start to first 200 on "
                     f"/api/v1/openapi.json) | median {a['median_s']:.2f} s of "
                     f"{len(a['runs_s'])} ({', '.join(f'{t:.2f}' for t in a['runs_s'])}), "
                     f"of which CPU {a.get('cpu_s', 0):.2f} s; RSS {a['rss_mib_default']} MiB |")
    if "memory" in r:
        a = r["memory"]
        other.append(f"| memory at {a['vms']:,} VMs / {a['hosts']} hosts (fresh process) | "
                     f"RSS {a['rss_mib_idle']} MiB ready, {a['rss_mib_after_load']} MiB after "
                     f"load, peak {a['hwm_mib']} MiB; ready in {a['startup_s']:.2f} s |")
    if other:
        lines += ["### Other measurements", "", "| what | result |", "|---|---|", *other, ""]
    if r.get("targets"):
        lines += ["### Targets", "", "| target | goal | measured | met | detail |",
                  "|---|---|---:|---|---|"]
        for t in r["targets"]:
            met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
            val = "" if t["value"] is None else f"{t['value']:.2f}"
            lines.append(f"| {t['target']} | {t['goal']} | {val} | {met} | {t['detail']} |")
        lines.append("")
    if r["mode"] == "quick":
        lines.append("_Quick mode: one short round each; indicative only._\n")
    return "\n".join(lines)


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
