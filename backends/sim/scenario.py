"""Scenarios: the simulated cluster's starting state, as data.

A scenario is a YAML (or JSON) mapping::

    name: default
    seed: 42                      # drives ids, metrics noise, generated parts
    users: [{username: admin, password: admin, role: admin}]
    hosts:
      - {id: ..., hostname: vapor-node-01.corp.awan.io, status: connected,
         cpus: 32, memory_mib: 131072, sync_cursor: 1716999901}
    vms:
      - {id: ..., name: web-01, host: vapor-node-01.corp.awan.io,
         status: running, vcpus: 2, memory_mib: 4096, persistent: true,
         guest: {acpi: obey, shutdown_seconds: 4, load: 0.3, disk_gib: 20}}
    generate: {hosts: 1000, vms: 100000, disconnected: 10}   # optional, appended
    links:                        # optional: migration speed per host pair
      - {source: <host>, destination: <host>, bandwidth_bytes_per_s: 5.4e8, setup_seconds: 0.5}
    migrations:                   # optional: finished jobs, listed by GET /migrations
      - {id: abc123def456, vm: <vm id>, source: <host>, destination: <host>, live: true,
         persistent: true, undefine_source: true, copy_storage: none, status: completed,
         data_total_bytes: 4724464025, data_processed_bytes: 4724464025,
         setup_seconds: 0.5, copy_seconds: 8.8, error: null}

``host`` may name a host by hostname or id. Omitted ids are derived from the
seed, so the same file always gives the same cluster.

A guest may carry a fitted chart (``cockpit-api snapshot`` writes them):
``cpu`` (mean percent while running), ``amplitude``, ``peak_hour``, ``noise``,
``memory_share``, ``disk_read_bps``, ``disk_write_bps``, ``net_rx_bps``,
``net_tx_bps`` (see backends/sim/metrics.py). Without ``cpu`` the VM's chart
is the simulator's own, drawn from ``load``.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cockpit_api.backends.base import VM_STATUSES, Conflict, InvalidArgument, NotFound
from cockpit_api.backends.sim.metrics import Behaviour

SCENARIO_DIR = Path(__file__).resolve().parents[2] / "scenarios"

_ROLES = ("web", "db", "cache", "queue", "api", "worker", "build", "search", "mail", "vpn")
_TIERS = ("frontend", "backend", "primary", "replica", "batch", "edge", "internal")


@dataclass(slots=True)
class GuestSpec:
    """How the simulated guest OS behaves; invisible in the API."""

    acpi: str = "obey"  # "obey": a graceful stop powers off; "ignore": it never does
    shutdown_seconds: float = 4.0
    load: float = 0.3  # mean CPU load, 0..1, shapes the metrics
    disk_gib: int = 20
    behaviour: Behaviour | None = None  # a fitted chart, in place of the one `load` draws


@dataclass(slots=True)
class HostSpec:
    id: str
    hostname: str
    status: str = "connected"
    cpus: int = 32
    memory_mib: int = 131072
    sync_cursor: int | None = None


@dataclass(slots=True)
class VmSpec:
    id: str
    name: str
    host_id: str
    status: str = "shutoff"
    vcpus: int = 2
    memory_mib: int = 2048
    persistent: bool = True
    guest: GuestSpec = field(default_factory=GuestSpec)
    also_defined_on: tuple[str, ...] = ()


@dataclass(slots=True)
class UserSpec:
    username: str
    password: str
    role: str = "viewer"


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """How fast migrations go from one host to another (the simulator's defaults otherwise)."""

    source: str  # host ids
    destination: str
    bandwidth_bytes_per_s: float | None = None
    setup_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A finished migration job the simulated cluster remembers (GET /migrations lists it)."""

    id: str
    vm_id: str
    source: str
    destination: str
    live: bool
    persistent: bool
    undefine_source: bool
    copy_storage: str
    status: str  # completed | failed | cancelled
    data_total_bytes: int
    data_processed_bytes: int
    setup_seconds: float
    copy_seconds: float
    error: str | None = None


@dataclass(slots=True)
class Scenario:
    name: str
    seed: int
    hosts: list[HostSpec]
    vms: list[VmSpec]
    users: list[UserSpec]
    links: list[LinkSpec] = field(default_factory=list)
    migrations: list[JobSpec] = field(default_factory=list)


def host_uuid(n: int, tag: int | None = None) -> str:
    """UUIDv7-shaped host ids like the reference's ``019e0014-abcd-7057-b326-000000000001``."""
    mid = tag if tag is not None else (n * 0x9E37) & 0xFFFF
    return f"019e0014-{mid:04x}-7057-b326-{n:012x}"


def _vm_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def load(source: str | Path | dict[str, Any] | list[Any]) -> Scenario:
    """Load a scenario from a file path, a bare name in scenarios/, or parsed data."""
    data: Any
    if isinstance(source, (dict, list)):
        data = source
    else:
        path = Path(source)
        if not path.exists() and not path.suffix:
            path = SCENARIO_DIR / f"{source}.yaml"
        if not path.exists():
            raise InvalidArgument(f"no scenario file {source}", code="scenario_not_found")
        data = read_data(path)
    if not isinstance(data, dict):
        raise InvalidArgument("a scenario is a mapping", code="bad_scenario")
    try:
        return _parse(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # Not the exception's text: it quotes the client's data (a key, a value).
        raise InvalidArgument(f"bad scenario: a required key is missing or a value has the "
                              f"wrong type ({type(exc).__name__})", code="bad_scenario") from None


def read_data(path: Path) -> Any:
    """A scenario file's data, unchecked: JSON, a snapshot's JSON lines, or YAML."""
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else _json_lines(text)
    if data is None:
        # libyaml when there is one: several times faster than PyYAML's own parser.
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return data


_TOP = re.compile(r"([a-z_]+):(?: (.*))?")


def _json_lines(text: str) -> dict[str, Any] | None:
    """A file as ``cockpit-api snapshot`` writes it (``key: JSON`` and ``  - {JSON}`` lines
    after comments), read as JSON: 20 times faster than YAML for 100,000 VMs. Anything
    else is None, and read as YAML (JSON lines are YAML, so both read the same data).
    """
    data: dict[str, Any] = {}
    items: list[Any] | None = None
    try:
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            if line.startswith("  - {"):
                if items is None:
                    return None
                items.append(json.loads(line[4:]))
                continue
            m = _TOP.fullmatch(line)
            if m is None:
                return None
            if m[2] is None:
                items = data[m[1]] = []
            else:
                data[m[1]], items = json.loads(m[2]), None
    except ValueError:
        return None
    return data


def _parse(data: dict[str, Any]) -> Scenario:
    seed = int(data.get("seed", 0))
    rng = random.Random(seed)
    hosts: list[HostSpec] = []
    for i, h in enumerate(data.get("hosts") or [], start=1):
        hosts.append(
            HostSpec(
                id=str(h.get("id") or host_uuid(i)),
                hostname=str(h["hostname"]),
                status=str(h.get("status", "connected")),
                cpus=int(h.get("cpus", 32)),
                memory_mib=int(h.get("memory_mib", 131072)),
                sync_cursor=int(h["sync_cursor"]) if "sync_cursor" in h else None,
            )
        )
    by_name = {h.hostname: h.id for h in hosts} | {h.id: h.id for h in hosts}
    vms: list[VmSpec] = []
    for v in data.get("vms") or []:
        g = v.get("guest") or {}
        host_id = by_name.get(str(v["host"]))
        if host_id is None:
            # VMs are placed before `generate` runs: only listed hosts can be named.
            raise NotFound(f"VM {v['name']} names host {v['host']}, which the scenario does "
                           "not list", code="host_not_found")
        vms.append(
            VmSpec(
                id=str(v.get("id") or _vm_uuid(rng)),
                name=str(v["name"]),
                host_id=host_id,
                status=str(v.get("status", "shutoff")),
                vcpus=int(v.get("vcpus", 2)),
                memory_mib=int(v.get("memory_mib", 2048)),
                persistent=bool(v.get("persistent", True)),
                guest=_guest(g, rng),
                also_defined_on=tuple(_listed(by_name, h, "a VM's also_defined_on")
                                      for h in v.get("also_defined_on") or ()),
            )
        )
    if gen := data.get("generate"):
        _generate(rng, hosts, vms, int(gen.get("hosts", 0)), int(gen.get("vms", 0)),
                  int(gen.get("disconnected", 0)), str(gen.get("domain", "corp.awan.io")))
    users = [
        UserSpec(str(u["username"]), str(u["password"]), str(u.get("role", "viewer")))
        for u in data.get("users") or []
    ]
    links = [LinkSpec(_listed(by_name, ln["source"], "a link"),
                      _listed(by_name, ln["destination"], "a link"),
                      _opt_float(ln.get("bandwidth_bytes_per_s")),
                      _opt_float(ln.get("setup_seconds")))
             for ln in data.get("links") or []]
    jobs = [_job(j, by_name) for j in data.get("migrations") or []]
    scenario = Scenario(str(data.get("name", "unnamed")), seed, hosts, vms, users, links, jobs)
    _check(scenario)
    return scenario


_FITTED = ("cpu", "amplitude", "peak_hour", "noise", "memory_share", "disk_read_bps",
           "disk_write_bps", "net_rx_bps", "net_tx_bps")


def _guest(g: dict[str, Any], rng: random.Random) -> GuestSpec:
    behaviour = None
    if g.get("cpu") is not None:
        defaults = Behaviour(0.0)
        behaviour = Behaviour(**{k: float(g[k]) if g.get(k) is not None else getattr(defaults, k)
                                 for k in _FITTED})
    if "load" in g:
        load = float(g["load"])
    elif behaviour is not None:
        load = min(1.0, behaviour.cpu / 100.0)  # no draw: the chart is the fitted one
    else:
        load = rng.uniform(0.05, 0.6)
    return GuestSpec(acpi=str(g.get("acpi", "obey")),
                     shutdown_seconds=float(g.get("shutdown_seconds", 4.0)),
                     load=load, disk_gib=int(g.get("disk_gib", 20)), behaviour=behaviour)


def _listed(by_name: dict[str, str], host: Any, what: str) -> str:
    """The id of a host the scenario lists (by hostname or id); else 404 ``host_not_found``,
    as for a VM's host (the name itself is the client's text: not quoted)."""
    host_id = by_name.get(str(host))
    if host_id is None:
        raise NotFound(f"{what} names a host the scenario does not list", code="host_not_found")
    return host_id


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)


def _job(j: dict[str, Any], by_name: dict[str, str]) -> JobSpec:
    return JobSpec(
        id=str(j["id"]), vm_id=str(j["vm"]), source=_listed(by_name, j["source"], "a migration"),
        destination=_listed(by_name, j["destination"], "a migration"),
        live=bool(j.get("live", True)),
        persistent=bool(j.get("persistent", True)),
        undefine_source=bool(j.get("undefine_source", True)),
        copy_storage=str(j.get("copy_storage", "none")), status=str(j.get("status", "completed")),
        data_total_bytes=int(j["data_total_bytes"]),
        data_processed_bytes=int(j.get("data_processed_bytes", j["data_total_bytes"])),
        setup_seconds=float(j.get("setup_seconds", 0.0)),
        copy_seconds=float(j.get("copy_seconds", 0.0)),
        error=None if j.get("error") is None else str(j["error"]))


def _generate(rng: random.Random, hosts: list[HostSpec], vms: list[VmSpec], n_hosts: int,
              n_vms: int, n_disconnected: int, domain: str) -> None:
    first = len(hosts) + 1
    for i in range(first, first + n_hosts):
        hosts.append(
            HostSpec(
                id=host_uuid(i),
                hostname=f"vapor-node-{i:04d}.{domain}",
                status="disconnected" if i - first < n_disconnected else "connected",
                cpus=rng.choice((32, 48, 64, 96)),
                memory_mib=rng.choice((131072, 262144, 524288)),
            )
        )
    if not hosts:
        return
    # Mostly running, some off, a few paused: like a real fleet.
    statuses = ["running"] * 14 + ["shutoff"] * 5 + ["paused"]
    for n in range(1, n_vms + 1):
        role, tier = rng.choice(_ROLES), rng.choice(_TIERS)
        vms.append(
            VmSpec(
                id=_vm_uuid(rng),
                name=f"{role}-{tier}-{n:06d}",
                host_id=hosts[rng.randrange(len(hosts))].id,
                status=rng.choice(statuses),
                vcpus=rng.choice((1, 2, 2, 4, 8)),
                memory_mib=rng.choice((512, 1024, 2048, 4096, 8192)),
                guest=GuestSpec(load=rng.uniform(0.02, 0.7)),
            )
        )


def _check(s: Scenario) -> None:
    # Rules across several fields: a well-formed document that breaks them is a
    # conflict (409), not a malformed request.
    ids = [h.id for h in s.hosts]
    if len(set(ids)) != len(ids):
        raise Conflict("two hosts of the scenario have the same id", code="duplicate_id")
    vm_ids = [v.id for v in s.vms]
    if len(set(vm_ids)) != len(vm_ids):
        raise Conflict("two VMs of the scenario have the same id", code="duplicate_id")
    for h in s.hosts:
        if h.status not in ("connected", "disconnected"):
            raise ValueError(f"host {h.hostname}: bad status {h.status}")
    for v in s.vms:
        if v.status not in VM_STATUSES:
            raise ValueError(f"VM {v.name}: bad status {v.status}")
        if v.guest.acpi not in ("obey", "ignore"):
            raise ValueError(f"VM {v.name}: guest.acpi is obey or ignore")
    for v in s.vms:
        b = v.guest.behaviour
        if b is not None and not (0 <= b.cpu <= 100 and 0 <= b.amplitude <= 1 and b.noise >= 0
                                  and 0 <= b.memory_share <= 1 and 0 <= b.peak_hour <= 24
                                  and all(r >= 0 for r in b.rates())):
            raise ValueError(f"VM {v.name}: guest cpu is 0..100, amplitude, memory_share 0..1, "
                             "peak_hour 0..24, noise and rates >= 0")
    job_ids = [j.id for j in s.migrations]
    if len(set(job_ids)) != len(job_ids):
        raise Conflict("two migrations of the scenario have the same id", code="duplicate_id")
    for j in s.migrations:
        if j.status not in ("completed", "failed", "cancelled"):
            raise ValueError(f"migration {j.id}: status is completed, failed or cancelled")
        if j.copy_storage not in ("none", "all", "inc"):
            raise ValueError(f"migration {j.id}: copy_storage is none, all or inc")
        if j.setup_seconds < 0 or j.copy_seconds < 0 or j.data_total_bytes < 0:
            raise ValueError(f"migration {j.id}: times and sizes are >= 0")
    for ln in s.links:
        if (ln.bandwidth_bytes_per_s is not None and ln.bandwidth_bytes_per_s <= 0) \
                or (ln.setup_seconds is not None and ln.setup_seconds < 0):
            raise ValueError("a link's bandwidth is > 0 and its setup_seconds >= 0")
    for u in s.users:
        if u.role not in ("admin", "viewer"):
            raise ValueError(f"user {u.username}: role is admin or viewer")
