"""The benchmarks' shared harness: machine facts, ports, pinning, servers, wrk, CPU and RSS.

bench/run.py (phases and report), feed.py, sandboxes.py, profile.py, variants.py and
ops_overhead.py all start and measure their processes through this module. Every process
started here is stopped here, by its PID (``stop_all``).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SPEC = ROOT / "openapi.yaml"
PREFIX = "/api/v1"
LIST_100 = f"{PREFIX}/vms?limit=100"
DEMO_USERS = [{"username": "admin", "password": "admin", "role": "admin"},
              {"username": "viewer", "password": "viewer", "role": "viewer"}]


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


def stop_group(proc: subprocess.Popen[Any], timeout: float) -> None:
    """End a server we started in its own session (``start_new_session``): SIGTERM its
    process group if it still runs, wait ``timeout`` seconds, then SIGKILL it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


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
    pipeline): the path every request took before cockpit_api/http/pipeline.py."""
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


class LoadShape(Protocol):
    threads: int
    connections: int


class Wrk:
    def __init__(self, plan: LoadShape, pin: Pinning, tmp: Path) -> None:
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
    return process_cpu_seconds(server.pid)


def process_cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU seconds of ``pid`` (all threads), and of its children."""
    total = 0
    for p in [pid, *(_children(pid) if children else [])]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def runqueue_seconds(pid: int) -> float:
    """Time the process's main thread spent runnable but waiting for a CPU (a busy machine)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


def rss_kib(pid: int) -> int:
    """VmRSS of one process (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


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


def hosts_for(n_vms: int) -> int:
    """Hosts per generated scenario: 100 VMs a host, like `large` (4 hosts at 20 VMs)."""
    return max(4, min(1000, n_vms // 100))


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


def ceiling_token(secret: str) -> str:
    """A token shaped like ours (cockpit_api.auth.service.AuthService._issue), for the ceiling."""
    import jwt

    now = int(time.time())
    return jwt.encode({"sub": "admin", "role": "admin", "iat": now, "exp": now + 3600,
                       "jti": uuid.uuid4().hex, "iss": "cockpit-api", "aud": "cockpit-api",
                       "typ": "access"}, secret, algorithm="HS256")


def write_results(results_dir: Path, name: str, result: Any, md: str, indent: int = 1) -> None:
    """``NAME.json`` and ``NAME.md`` in the results folder (made if missing)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{name}.json").write_text(json.dumps(result, indent=indent) + "\n")
    (results_dir / f"{name}.md").write_text(md)
