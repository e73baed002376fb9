"""The indexed inventory both backends answer reads from.

The simulator keeps its whole truth here; the libvirt backend keeps here what
events and resyncs told it, so that GET /hosts and GET /vms never wait on a
libvirt round trip. Lists stay sorted by a stable key so that a page of 100 at
100,000 VMs is a bisect and a short scan, not a sort.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from cockpit_api.backends.base import (
    FINAL_MIGRATION_STATUSES,
    CursorKind,
    Host,
    Migration,
    MigrationFilter,
    NotFound,
    Page,
    PageRequest,
    Vm,
    VmFilter,
    encode_cursor,
    host_sort_key,
    vm_sort_key,
)

T = TypeVar("T")


class SortedKeys:
    """A sorted list of unique string keys."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._keys = sorted(set(keys))

    def add(self, key: str) -> None:
        i = bisect.bisect_left(self._keys, key)
        if i == len(self._keys) or self._keys[i] != key:
            self._keys.insert(i, key)

    def discard(self, key: str) -> None:
        i = bisect.bisect_left(self._keys, key)
        if i < len(self._keys) and self._keys[i] == key:
            del self._keys[i]

    def __len__(self) -> int:
        return len(self._keys)

    def after(self, key: str | None) -> Iterator[str]:
        """Keys after ``key``, lazily: slicing would copy up to 100,000 keys for one page."""
        start = 0 if key is None else bisect.bisect_right(self._keys, key)
        keys = self._keys
        return (keys[i] for i in range(start, len(keys)))


def paginate(
    keys: Iterator[str],
    page: PageRequest,
    lookup: Callable[[str], T],
    keep: Callable[[T], bool] | None = None,
    *,
    kind: CursorKind,
) -> Page[T]:
    items: list[T] = []
    last_key: str | None = None
    for key in keys:
        item = lookup(key)
        if keep is not None and not keep(item):
            continue
        if len(items) == page.limit:
            # One more match exists past this page.
            return Page(items, encode_cursor(kind, last_key) if last_key is not None else None)
        items.append(item)
        last_key = key
    return Page(items, None)


class InventoryObserver(Protocol):
    """Told of every change, after it is made (the change feed, cockpit_api/feed/changes.py).

    Called synchronously from inside the backend's own update, so it must only
    record what it is told: never call back into the backend.
    """

    def host_changed(self, host: Host) -> None: ...

    def vm_changed(self, old: Vm | None, vm: Vm) -> None: ...

    def vm_removed(self, vm: Vm) -> None: ...


@runtime_checkable
class ResetObserver(Protocol):
    """An observer that can be told the whole state was replaced (a simulator reset)."""

    def state_replaced(self) -> None: ...


class Inventory:
    """Hosts and VMs, indexed by sort key, host and status; owns sync cursors.

    ``observer`` (one, or None) hears of every change made through the methods
    below, once per call and with the final records: a VM change first, then
    each host whose ``sync_cursor`` or ``vm_count`` it moved.
    """

    def __init__(self) -> None:
        self.observer: InventoryObserver | None = None
        self.hosts: dict[str, Host] = {}
        self.vms: dict[str, Vm] = {}
        self._host_keys = SortedKeys()
        self._host_by_key: dict[str, str] = {}
        self._vm_keys = SortedKeys()
        self._vm_by_key: dict[str, str] = {}
        self._by_host: dict[str, SortedKeys] = {}
        self._by_status: dict[str, SortedKeys] = {}

    # ----------------------------------------------------------------- hosts

    def put_host(self, host: Host) -> None:
        old = self.hosts.get(host.id)
        if old is None:
            key = host_sort_key(host.hostname, host.id)
            self._host_keys.add(key)
            self._host_by_key[key] = host.id
            self._by_host.setdefault(host.id, SortedKeys())
        self.hosts[host.id] = host
        if old != host:
            self._hosts_changed(host.id)

    def get_host(self, host_id: str) -> Host:
        host = self.hosts.get(host_id)
        if host is None:
            raise NotFound(f"no host with id {host_id}", code="host_not_found")
        return replace(host, vm_count=len(self._by_host[host_id]))

    def page_hosts(self, page: PageRequest) -> Page[Host]:
        return paginate(
            self._host_keys.after(page.after("hosts")),
            page,
            lambda key: self.get_host(self._host_by_key[key]),
            kind="hosts",
        )

    def set_host_status(self, host_id: str, status: str, t: float) -> None:
        host = self.hosts[host_id]
        if host.status != status:
            self.hosts[host_id] = replace(host, status=status)  # type: ignore[arg-type]
            self._bump(host_id, t)
            self._hosts_changed(host_id)

    def bump(self, host_id: str, t: float) -> None:
        """Advance a host's sync cursor: at least +1, and at least the change's Unix second."""
        self._bump(host_id, t)
        self._hosts_changed(host_id)

    def _bump(self, host_id: str, t: float) -> None:
        host = self.hosts.get(host_id)
        if host is not None:
            cursor = max(host.sync_cursor + 1, int(t))
            self.hosts[host_id] = replace(host, sync_cursor=cursor)

    def _hosts_changed(self, *host_ids: str) -> None:
        if self.observer is None:
            return
        for host_id in dict.fromkeys(host_ids):  # each once, in order
            if host_id in self.hosts:
                self.observer.host_changed(self.get_host(host_id))

    # ------------------------------------------------------------------- VMs

    def get_vm(self, vm_id: str) -> Vm:
        vm = self.vms.get(vm_id)
        if vm is None:
            raise NotFound(f"no VM with id {vm_id}", code="vm_not_found")
        return vm

    def bulk_index(self) -> None:
        """Index every VM placed straight into ``vms`` (a scenario load): one sort, no bumps."""
        by_host: dict[str, list[str]] = {h: [] for h in self.hosts}
        by_status: dict[str, list[str]] = {}
        self._vm_by_key = {}
        for vm in self.vms.values():
            key = vm_sort_key(vm.name, vm.id)
            self._vm_by_key[key] = vm.id
            by_host.setdefault(vm.host_id, []).append(key)
            by_status.setdefault(vm.status, []).append(key)
        self._vm_keys = SortedKeys(self._vm_by_key)
        self._by_host = {h: SortedKeys(keys) for h, keys in by_host.items()}
        self._by_status = {s: SortedKeys(keys) for s, keys in by_status.items()}

    def put_vm(self, vm: Vm, t: float) -> None:
        old = self.vms.get(vm.id)
        key = vm_sort_key(vm.name, vm.id)
        if old is not None:
            if old == vm:
                return
            self._unindex(old)
            self._bump(old.host_id, t)
            old_key = vm_sort_key(old.name, old.id)
            if old_key != key:  # renamed: its place in the ordering moves
                self._vm_keys.discard(old_key)
                del self._vm_by_key[old_key]
                self._vm_keys.add(key)
                self._vm_by_key[key] = vm.id
        else:
            self._vm_keys.add(key)
            self._vm_by_key[key] = vm.id
        self.vms[vm.id] = vm
        self._by_host.setdefault(vm.host_id, SortedKeys()).add(key)
        self._by_status.setdefault(vm.status, SortedKeys()).add(key)
        self._bump(vm.host_id, t)
        if self.observer is not None:
            self.observer.vm_changed(old, vm)
            self._hosts_changed(*((old.host_id,) if old else ()), vm.host_id)

    def remove_vm(self, vm_id: str, t: float) -> None:
        vm = self.vms.pop(vm_id, None)
        if vm is None:
            return
        self._unindex(vm)
        key = vm_sort_key(vm.name, vm.id)
        self._vm_keys.discard(key)
        del self._vm_by_key[key]
        self._bump(vm.host_id, t)
        if self.observer is not None:
            self.observer.vm_removed(vm)
            self._hosts_changed(vm.host_id)

    def _unindex(self, vm: Vm) -> None:
        key = vm_sort_key(vm.name, vm.id)
        self._by_host[vm.host_id].discard(key)
        self._by_status[vm.status].discard(key)

    def page_vms(self, page: PageRequest, flt: VmFilter) -> Page[Vm]:
        after = page.after("vms")
        keep: Callable[[Vm], bool] | None = None
        if flt.host_id is not None:
            if flt.host_id not in self.hosts:
                raise NotFound(f"no host with id {flt.host_id}", code="host_not_found")
            keys = self._by_host[flt.host_id]
            if flt.status is not None:
                by_status = self._by_status.get(flt.status, SortedKeys())
                # Walk the shorter index, filter by the other.
                if len(by_status) < len(keys):
                    keys = by_status
                    host_id = flt.host_id
                    keep = lambda vm: vm.host_id == host_id  # noqa: E731
                else:
                    status = flt.status
                    keep = lambda vm: vm.status == status  # noqa: E731
        elif flt.status is not None:
            keys = self._by_status.get(flt.status, SortedKeys())
        else:
            keys = self._vm_keys
        return paginate(keys.after(after), page, lambda k: self.vms[self._vm_by_key[k]], keep,
                        kind="vms")


class _JobLike(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def status(self) -> str: ...


J = TypeVar("J", bound=_JobLike)


class JobObserver(Protocol):
    def job_changed(self, job: Migration) -> None: ...


def _own_snapshot(job: Any) -> Migration:
    snapshot: Migration = job.snapshot()
    return snapshot


class JobTable(Generic[J]):
    """Migration jobs by id, listed oldest first; finished ones are forgotten past a bound.

    Jobs are the backends' own mutable records; ``snapshot`` turns one into the
    API's :class:`Migration` (by default ``job.snapshot()``). ``observer`` hears
    of a job when it is added and whenever a backend calls :meth:`changed`;
    :meth:`active` lets it watch the progress of the jobs still running.
    """

    def __init__(self, retention: int = 10_000,
                 snapshot: Callable[[J], Migration] = _own_snapshot) -> None:
        self.retention = retention
        self.snapshot = snapshot
        self.observer: JobObserver | None = None
        self._jobs: dict[str, J] = {}
        self._keys = SortedKeys()
        self._by_key: dict[str, str] = {}
        self._active: dict[str, J] = {}

    def add(self, job: J, seq: int) -> None:
        key = f"{seq:012d}"
        self._jobs[job.id] = job
        self._keys.add(key)
        self._by_key[key] = job.id
        self._active[job.id] = job
        self._trim()
        self.changed(job)

    def changed(self, job: J) -> None:
        """A backend says a job moved (status, progress): tell the observer."""
        if job.status in FINAL_MIGRATION_STATUSES:
            self._active.pop(job.id, None)
        if self.observer is not None:
            self.observer.job_changed(self.snapshot(job))

    def touch(self, job_id: str) -> None:
        """:meth:`changed` by id (a VM's ``migration_id`` let go of it: it probably ended)."""
        job = self._jobs.get(job_id)
        if job is not None:
            self.changed(job)

    def active(self) -> list[Migration]:
        """Snapshots of the jobs not known to be finished (finished ones drop out here)."""
        out = []
        for job in list(self._active.values()):
            if job.status in FINAL_MIGRATION_STATUSES:
                del self._active[job.id]
            out.append(self.snapshot(job))
        return out

    def get(self, job_id: str) -> J:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no migration with id {job_id}", code="migration_not_found")
        return job

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def values(self) -> list[J]:
        return list(self._jobs.values())

    def remove(self, job_id: str, seq: int) -> None:
        """Forget a job (one whose record the store refused)."""
        key = f"{seq:012d}"
        if self._jobs.pop(job_id, None) is not None:
            self._by_key.pop(key, None)
            self._keys.discard(key)

    def page(self, page: PageRequest, flt: MigrationFilter,
             snapshot: Callable[[J], Migration]) -> Page[Migration]:
        def keep(m: Migration) -> bool:
            return (flt.vm_id is None or m.vm_id == flt.vm_id) and (
                flt.status is None or m.status == flt.status)

        return paginate(self._keys.after(page.after("migrations")), page,
                        lambda k: snapshot(self._jobs[self._by_key[k]]), keep, kind="migrations")

    def _trim(self) -> None:
        if len(self._jobs) <= self.retention:
            return
        for key in list(self._keys.after(None)):
            job = self._jobs[self._by_key[key]]
            if job.status in FINAL_MIGRATION_STATUSES:
                del self._jobs[job.id], self._by_key[key]
                self._keys.discard(key)
                if len(self._jobs) <= self.retention:
                    return
