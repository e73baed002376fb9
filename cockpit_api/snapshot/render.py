"""A snapshot's file: the scenario text (a header comment, one sorted line per item), written
atomically; and the drift between a snapshot file and a deployment's state (``--diff``)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from cockpit_api.snapshot.read import DEFAULT_WINDOW, SnapshotError, api_root, one_line, public_url

_FLOW_SEP = (", ", ": ")


# ---------------------------------------------------------------- the file


def render(data: dict[str, Any], *, source_url: str, window: int = DEFAULT_WINDOW,
           anonymized: bool = False) -> str:
    """The scenario file's text: a header comment, then one sorted line per item."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        tool = version("cockpit-api")
    except PackageNotFoundError:
        tool = "unknown"
    body = _body(data)
    digest = hashlib.sha256(body.encode()).hexdigest()
    fitted = sum(1 for v in data["vms"] if "guest" in v)
    header = [
        f"# cockpit-api snapshot of {public_url(api_root(source_url))}",
        f"# tool cockpit-api {tool}; metrics window {window} s; "
        f"{'anonymized (names and ids re-derived from a salt)' if anonymized else 'ids kept'}",
        f"# sha256 of the body below: {digest}",
        f"# {len(data['hosts'])} hosts, {len(data['vms'])} VMs ({fitted} with a chart fitted "
        f"from their metrics), {len(data['links'])} host pairs with a fitted migration speed, "
        f"{len(data['migrations'])} finished migrations",
        "# Not shown by the API, so the simulator's defaults: every guest's acpi (obey),",
        "# shutdown_seconds (4) and disk_gib (20); a VM without `guest` draws its chart from the",
        "# seed (it was not running, or beyond --metrics-vms); a host pair without a link migrates",
        "# at 512 MiB/s after 0.5 s. Users: the demo users unless --users named others.",
        "# Serve it: cockpit-api serve --scenario THIS_FILE",
    ]
    return "\n".join(header) + "\n" + body


def _body(data: dict[str, Any]) -> str:
    out = [f"name: {json.dumps(data['name'])}", f"seed: {int(data['seed'])}"]
    for key in ("users", "hosts", "vms", "links", "migrations"):
        items = data.get(key) or []
        if not items:
            out.append(f"{key}: []")
            continue
        out.append(f"{key}:")
        out.extend(f"  - {json.dumps(it, separators=_FLOW_SEP)}" for it in items)
    return "\n".join(out) + "\n"


def write_atomically(text: str, target: Path) -> None:
    """Write ``text`` to ``target`` through a temporary file in its directory, then rename."""
    target = target.resolve()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- drift


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed from snapshot ``old`` to state ``new`` (scenario data), one line each."""
    lines: list[str] = []
    oh = {h["id"]: h for h in old.get("hosts") or []}
    nh = {h["id"]: h for h in new.get("hosts") or []}
    names = {i: h["hostname"] for i, h in {**oh, **nh}.items()}
    for i in sorted(set(oh) | set(nh), key=lambda i: names[i]):
        a, b = oh.get(i), nh.get(i)
        if a is None:
            lines.append(f"host added: {names[i]} ({i})")
        elif b is None:
            lines.append(f"host removed: {names[i]} ({i})")
        else:
            changes = [f"{k} {a.get(k)} -> {b.get(k)}"
                       for k in ("hostname", "status", "cpus", "memory_mib")
                       if a.get(k) != b.get(k)]
            if changes:
                lines.append(f"host changed: {names[i]}: {', '.join(changes)}")
    ov = {v["id"]: v for v in old.get("vms") or []}
    nv = {v["id"]: v for v in new.get("vms") or []}
    vname = {i: v["name"] for i, v in {**ov, **nv}.items()}
    for i in sorted(set(ov) | set(nv), key=lambda i: (vname[i], i)):
        a, b = ov.get(i), nv.get(i)
        if a is None:
            lines.append(f"VM added: {vname[i]} ({i}) on {names.get(b['host'], b['host'])}")  # type: ignore[index]
            continue
        if b is None:
            lines.append(f"VM removed: {vname[i]} ({i})")
            continue
        if a["host"] != b["host"]:
            lines.append(f"VM moved: {vname[i]}: {names.get(a['host'], a['host'])} -> "
                         f"{names.get(b['host'], b['host'])}")
        if a.get("status") != b.get("status"):
            lines.append(f"VM state changed: {vname[i]}: {a.get('status')} -> {b.get('status')}")
        changes = [f"{k} {a.get(k)} -> {b.get(k)}" for k in ("name", "vcpus", "memory_mib",
                                                              "persistent")
                   if a.get(k) != b.get(k)]
        if changes:
            lines.append(f"VM changed: {vname[i]}: {', '.join(changes)}")
    return lines


def load_snapshot(path: Path) -> dict[str, Any]:
    """A scenario file (a snapshot or any other) as the data :func:`diff` compares."""
    from cockpit_api.backends.base import BackendError
    from cockpit_api.backends.sim import scenario as scenarios

    if not path.is_file():
        raise SnapshotError(f"no scenario file {path}")
    try:
        sc = scenarios.load(path)
    except BackendError as exc:
        raise SnapshotError(f"{path} is not a scenario: {one_line(exc)}") from None
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise SnapshotError(f"cannot read {path}: {one_line(exc)[:160]}") from None
    return {
        "hosts": [{"id": h.id, "hostname": h.hostname, "status": h.status, "cpus": h.cpus,
                   "memory_mib": h.memory_mib} for h in sc.hosts],
        "vms": [{"id": v.id, "name": v.name, "host": v.host_id, "status": v.status,
                 "vcpus": v.vcpus, "memory_mib": v.memory_mib, "persistent": v.persistent}
                for v in sc.vms],
    }

