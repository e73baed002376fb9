"""Anonymizing a snapshot: host and VM names and ids re-derived from a salt (HMAC-SHA256),
the same pseudonyms for the same input and salt."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from typing import Any

from cockpit_api.snapshot.read import SnapshotError


class _Pseudonyms:
    """Stable pseudonyms and ids from a salt (HMAC-SHA256): same input and salt, same output."""

    def __init__(self, salt: str) -> None:
        self._key = salt.encode()
        self._ids: dict[str, str] = {}

    def digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self._key, f"{kind}\0{value}".encode(), hashlib.sha256).digest()

    def uuid(self, kind: str, value: str) -> str:
        if value not in self._ids:
            self._ids[value] = str(uuid.UUID(bytes=self.digest(kind, value)[:16], version=4))
        return self._ids[value]

    def name(self, kind: str, value: str, prefix: str, width: int = 10) -> str:
        return f"{prefix}-{self.digest(kind, value).hex()[:width]}"


def pseudonymize(data: dict[str, Any], salt: str) -> dict[str, Any]:
    p = _Pseudonyms(salt)
    hid = {h["id"]: p.uuid("host", h["id"]) for h in data["hosts"]}
    hosts = [dict(h, id=hid[h["id"]], hostname=p.name("hostname", h["hostname"], "host") +
                  ".example.invalid") for h in data["hosts"]]
    vms = []
    for v in data["vms"]:
        vm = dict(v, id=p.uuid("vm", v["id"]), name=p.name("vm-name", v["name"], "vm"),
                  host=hid[v["host"]])
        if "also_defined_on" in v:
            vm["also_defined_on"] = sorted(hid[h] for h in v["also_defined_on"] if h in hid)
        vms.append(vm)
    _unique(hosts, "hostname")
    _unique(vms, "name")
    links = [dict(ln, source=hid[ln["source"]], destination=hid[ln["destination"]])
             for ln in data["links"]]
    jobs = [dict(j, id=p.digest("job", j["id"]).hex()[:12], vm=p.uuid("vm", j["vm"]),
                 source=hid[j["source"]], destination=hid[j["destination"]],
                 # An error's text may name hosts, URIs or paths: keep only what happened.
                 error=None if j["error"] is None else f"migration {j['status']}")
            for j in data["migrations"]]
    hosts.sort(key=lambda h: (h["hostname"], h["id"]))
    vms.sort(key=lambda v: (v["name"], v["id"]))
    links.sort(key=lambda ln: (ln["source"], ln["destination"]))
    return dict(data, hosts=hosts, vms=vms, links=links, migrations=jobs)


def _unique(items: list[dict[str, Any]], key: str) -> None:
    # Pseudonyms are 40 bits of HMAC: a collision is unlikely, never silent.
    seen: set[str] = set()
    for it in items:
        if it[key] in seen:
            raise SnapshotError(f"two pseudonyms collide ({it[key]}): try another --salt")
        seen.add(it[key])

