"""How the twin check compares the two worlds: one answer with the other (status, problem
code, the body's shape and what must agree in it), and each world's view of the canaries,
hosts and this run's jobs, as listed and as the change feed tells it (:class:`Side`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cockpit_api.twin.worlds import Answer, World

Json = dict[str, Any]
FINAL = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class Divergence:
    step: str
    what: str
    real: Any
    twin: Any



# --------------------------------------------------------------------------- comparing


def shape(value: Any) -> Any:
    """A body's structure: keys and value types (null apart), not the values."""
    if isinstance(value, dict):
        out = {k: shape(v) for k, v in sorted(value.items())}
        # also_defined_on's shape is a list, empty or not: its hosts are compared as a
        # value (vm_fields, the settled view). Not compared (docs/twin-known-differences.yaml):
        # whether a job cancelled at once had started (a race of milliseconds on libvirt,
        # the simulator's 0.5 s setup).
        if "also_defined_on" in out:
            out["also_defined_on"] = "list"
        if value.get("status") == "cancelled" and "started_at" in out:
            out["started_at"] = "time or null"
        return out
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


# Problem bodies carry text and ids that are each world's own.
_PROBLEM_OWN = ("detail", "instance", "request_id", "title", "type")


def vm_fields(v: Json) -> tuple[Any, ...]:
    return (v.get("name"), v.get("status"), v.get("host_id"), v.get("persistent"),
            v.get("migration_id") is not None, v.get("dry_run"),
            tuple(sorted(v.get("also_defined_on") or ())))


def job_fields(m: Json) -> tuple[Any, ...]:
    return (m.get("status"), m.get("vm_id"), m.get("source_host_id"),
            m.get("destination_host_id"), m.get("live"), m.get("persistent"),
            m.get("undefine_source"), m.get("copy_storage"), m.get("error") is not None)


def compare_answers(step: str, a: Answer, b: Answer) -> list[Divergence]:
    out = []
    if a.status != b.status:
        out.append(Divergence(step, "status", a.status, b.status))
        return out
    if a.code != b.code:
        out.append(Divergence(step, "problem code", a.code, b.code))
    sa, sb = shape(a.body), shape(b.body)
    if a.status >= 400 and isinstance(sa, dict) and isinstance(sb, dict):
        sa = {k: v for k, v in sa.items() if k not in _PROBLEM_OWN}
        sb = {k: v for k, v in sb.items() if k not in _PROBLEM_OWN}
    if sa != sb:
        out.append(Divergence(step, "response shape", sa, sb))
        return out
    if isinstance(a.body, dict) and a.status < 400:
        if "host_id" in a.body and "name" in a.body:
            if vm_fields(a.body) != vm_fields(b.body):
                out.append(Divergence(step, "answered VM", vm_fields(a.body), vm_fields(b.body)))
        elif "progress" in a.body:
            if job_fields(a.body) != job_fields(b.body):
                out.append(Divergence(step, "answered job", job_fields(a.body),
                                      job_fields(b.body)))
        else:
            ka = {k: v for k, v in a.body.items() if k != "migration_id"}
            kb = {k: v for k, v in b.body.items() if k != "migration_id"}
            if ka != kb:
                out.append(Divergence(step, "answer", ka, kb))
    return out


# --------------------------------------------------------------------------- one world's view


class Side:
    """What the machine knows of one world: its jobs of this run, its feed position."""

    def __init__(self, world: World, canaries: list[str]) -> None:
        self.world = world
        self.canaries = canaries
        self.jobs: list[str] = []  # this run's job ids, in the order the run made them
        self.final: dict[str, str] = {}
        self.position: str | None = None
        self.last: dict[str, Any] = {}  # feed: each resource's last view

    def view(self) -> dict[str, Any]:
        api = self.world.api
        vms, position = api.all("/vms", "vms")
        hosts, _ = api.all("/hosts", "hosts")
        by_id = {v["id"]: v for v in vms}
        out: dict[str, Any] = {}
        for vm in self.canaries:
            v = by_id.get(vm)
            out[f"vm {vm}"] = "absent" if v is None else (
                v["status"], v["host_id"], v["persistent"], v["migration_id"] is not None,
                tuple(sorted(v.get("also_defined_on") or ())))
        if self.position is None:
            # The feed from here on; what it says next is compared with what the list says.
            self.position = position
            # (The feed's view of a VM has no also_defined_on: the settled view compares it.)
            self.last = {k: v[:4] for k, v in out.items() if v != "absent"}
        for h in hosts:
            out[f"host {h['hostname']}"] = h["status"]
        for i, job in enumerate(self.jobs):
            status = self.final.get(job)
            if status is None:
                r = api.get(f"/migrations/{job}")
                status = r.body["status"] if r.status == 200 else f"HTTP {r.status}"
                if status in FINAL:
                    self.final[job] = status
            out[f"job #{i + 1}"] = status
        return out

    def feed(self) -> list[tuple[str, str, Any]] | None:
        """This step's events for the canaries and this run's jobs, coalesced; None: reset."""
        if self.position is None:
            return []
        events, self.position = self.world.api.events(self.position)
        index = {job: f"job #{i + 1}" for i, job in enumerate(self.jobs)}
        last: dict[str, tuple[str, str, Any]] = {}
        for e in events:
            d = e.get("data") or {}
            if e["type"] == "reset":
                return None
            if e["type"] in ("vm", "vm_removed") and d.get("id") in self.canaries:
                key = f"vm {d['id']}"
                view: Any = "removed" if e["type"] == "vm_removed" else (
                    d["status"], d["host_id"], d["persistent"], d["migration_id"] is not None)
            elif e["type"] == "migration" and d.get("id") in index:
                key, view = index[d["id"]], d["status"]
            else:
                continue
            last.pop(key, None)
            last[key] = (e["type"], key, view)
        out = []
        for key, item in last.items():
            if self.last.get(key) != item[2]:  # a repeat of what it already said: no change
                out.append(item)
            self.last[key] = item[2]
        return out
