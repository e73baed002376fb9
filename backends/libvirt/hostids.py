"""Stable host ids: a JSON file maps each configured host name to the id given it once.

libvirt's own host identity (the host UUID) is not reliable: clones share it,
and a reinstall changes it. So the backend assigns each configured host a
UUIDv7 (time-ordered, version nibble 7) the first time it sees the name and
keeps it in ``state_file``::

    {"version": 1, "hosts": {"vapor-node-01": "019e0014-abcd-7057-b326-000000000001"}}

Names that leave the configuration keep their entry, so a host that comes
back gets its old id. The file is rewritten atomically, and only when a new
name appears.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

_VERSION = 1


class HostIdError(ValueError):
    """The state file cannot be read or written; the message says which and why."""


def uuid7(unix_ms: int | None = None) -> str:
    """A UUIDv7: 48 bits of Unix milliseconds, version 7, RFC 4122 variant, 74 random bits."""
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    value = (ms & ((1 << 48) - 1)) << 80 | secrets.randbits(80)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # variant 10xx
    return str(uuid.UUID(int=value))


def load_host_ids(path: str | Path, names: Sequence[str]) -> dict[str, str]:
    """The id of every name in ``names``, assigning (and saving) ids to new names."""
    p = Path(path)
    known = _read(p)
    added = False
    for name in names:
        if name not in known:
            known[name] = uuid7()
            added = True
    if len(set(known.values())) != len(known):
        raise HostIdError(f"state file {p}: two host names share one id; fix or delete the file")
    if added:
        _write(p, known)
    return {name: known[name] for name in names}


def _read(p: Path) -> dict[str, str]:
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise HostIdError(f"state file {p} cannot be read: {exc}") from None
    try:
        data = json.loads(text)
        hosts = data["hosts"]
        if not isinstance(hosts, dict):
            raise TypeError("hosts is not a mapping")
        out: dict[str, str] = {}
        for name, host_id in hosts.items():
            out[str(name)] = str(uuid.UUID(str(host_id)))
        return out
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise HostIdError(
            f"state file {p} is not a host id map ({exc!r}); it must look like "
            '{"version": 1, "hosts": {"<name>": "<uuid>"}}') from None


def _write(p: Path, hosts: dict[str, str]) -> None:
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"version": _VERSION, "hosts": hosts}, indent=2, sort_keys=True)
                       + "\n", encoding="utf-8")
        os.replace(tmp, p)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise HostIdError(f"state file {p} cannot be written: {exc}") from None
