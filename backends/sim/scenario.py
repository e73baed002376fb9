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

``host`` may name a host by hostname or id. Omitted ids are derived from the
seed, so the same file always gives the same cluster.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cockpit_api.backends.base import VM_STATUSES, Conflict, InvalidArgument, NotFound

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


@dataclass(slots=True)
class UserSpec:
    username: str
    password: str
    role: str = "viewer"


@dataclass(slots=True)
class Scenario:
    name: str
    seed: int
    hosts: list[HostSpec]
    vms: list[VmSpec]
    users: list[UserSpec]


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
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise InvalidArgument("a scenario is a mapping", code="bad_scenario")
    try:
        return _parse(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgument(f"bad scenario: {exc!r}", code="bad_scenario") from None


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
                guest=GuestSpec(
                    acpi=str(g.get("acpi", "obey")),
                    shutdown_seconds=float(g.get("shutdown_seconds", 4.0)),
                    load=float(g.get("load", rng.uniform(0.05, 0.6))),
                    disk_gib=int(g.get("disk_gib", 20)),
                ),
            )
        )
    if gen := data.get("generate"):
        _generate(rng, hosts, vms, int(gen.get("hosts", 0)), int(gen.get("vms", 0)),
                  int(gen.get("disconnected", 0)), str(gen.get("domain", "corp.awan.io")))
    users = [
        UserSpec(str(u["username"]), str(u["password"]), str(u.get("role", "viewer")))
        for u in data.get("users") or []
    ]
    scenario = Scenario(str(data.get("name", "unnamed")), seed, hosts, vms, users)
    _check(scenario)
    return scenario


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
    for u in s.users:
        if u.role not in ("admin", "viewer"):
            raise ValueError(f"user {u.username}: role is admin or viewer")
