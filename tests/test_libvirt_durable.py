"""The libvirt backend's durable state through the store, on libvirt's test driver.

Host ids from the store (first writer wins, a state file taken over once, never
written), job records written through, a dead owner's job adopted and
reconciled with libvirt, a live replica's job mirrored (its VM refused, its end
followed). The store is the real one (SQLite in tmp_path); the lab proves the
same across a real restart mid-migration (tests/test_libvirt_faults.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("libvirt", reason="libvirt-python is not installed: run "
                    "lab/install-deps.sh (or pip install -e '.[libvirt]')")

from cockpit_api.backends.base import Conflict, MigrationRequest
from cockpit_api.backends.libvirt import LibvirtBackend
from cockpit_api.store import JobRecord, Store, open_store
from tests.libvirt_support import HOST_IDS, eventually, host_configs, make_backend

pytestmark = pytest.mark.libvirt

A, B = HOST_IDS["node-a"], HOST_IDS["node-b"]
WEB01 = "5e1f0000-0000-4000-8000-000000000001"  # web-01, running on node-a


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        yield s
    finally:
        s.close()


def _web01(backend: LibvirtBackend) -> str:
    return next(v.id for v in backend._inv.vms.values() if v.name == "web-01")


def test_host_ids_come_from_the_store_and_a_state_file_is_taken_over(
        tmp_path: Path, store: Store) -> None:
    state = tmp_path / "hosts.json"
    state.write_text(json.dumps({"version": 1, "hosts": {"node-a": HOST_IDS["node-a"]}}))
    hosts = host_configs(tmp_path)
    first = LibvirtBackend(hosts, state_file=str(state), store=store)
    assert first.host_id("node-a") == HOST_IDS["node-a"]  # the file's id, kept
    again = LibvirtBackend(list(reversed(hosts)), state_file=str(tmp_path / "none.json"),
                           store=store)
    assert [again.host_id(n) for n in ("node-a", "node-b", "node-c")] == [
        first.host_id(n) for n in ("node-a", "node-b", "node-c")]
    assert not (tmp_path / "none.json").exists()  # with a store, nothing is written
    assert json.loads(state.read_text())["hosts"] == {"node-a": HOST_IDS["node-a"]}
    assert store.kv_items("libvirt.host.")["libvirt.host.node-b"] == first.host_id("node-b")


def _record(job_id: str, vm_id: str, owner: str | None, lease_until: float | None) -> JobRecord:
    return JobRecord(id=job_id, vm_id=vm_id, owner="someone", status="running",
                     request={"destination_host_id": B, "live": True, "persistent": True,
                              "undefine_source": True, "copy_storage": "none"},
                     created_at=time.time() - 5, started_at=time.time() - 5,
                     source_host_id=A, lease_owner=owner, lease_expires_at=lease_until)


def test_a_migration_is_a_record_first_and_its_end_is_written_back(
        tmp_path: Path, store: Store) -> None:
    backend = make_backend(tmp_path, store=store)

    async def scenario() -> None:
        await backend.start()
        try:
            vm_id = _web01(backend)
            # Another replica's unfinished job for the same VM: the store refuses this one.
            store.create_job(_record("elsewhere0001", vm_id, "other", time.time() + 60))
            with pytest.raises(Conflict) as err:
                await backend.migrate(vm_id, MigrationRequest(B))
            assert err.value.code == "vm_migrating"
            store.update_job("elsewhere0001", time.time(), status="failed")
            job = await backend.migrate(vm_id, MigrationRequest(B))
            rec = store.get_job(job.id)
            assert rec is not None and rec.finished_at is None and rec.lease_owner
            # The test driver cannot migrate: the job fails, and so does its record.
            await eventually(lambda: (r := store.get_job(job.id)) is not None
                             and r.status == "failed" and r.finished_at is not None, timeout=10)
            rec = store.get_job(job.id)
            assert rec is not None and rec.error and rec.lease_owner is None
        finally:
            await backend.close()

    asyncio.run(scenario())


def test_a_dead_owners_job_is_adopted_and_reconciled_with_libvirt(
        tmp_path: Path, store: Store) -> None:
    """A record left running by a process that died: its lease runs out, this replica takes
    it, asks libvirt (no migration job, the guest runs on its source) and ends it failed,
    under the same id."""
    store.create_job(_record("deadowner001", WEB01, "gone", time.time() - 1))
    backend = make_backend(tmp_path, store=store)

    async def scenario() -> None:
        await backend.start()
        try:
            vm_id = _web01(backend)
            assert vm_id == WEB01
            await eventually(lambda: (r := store.get_job("deadowner001")) is not None
                             and r.status == "failed", timeout=15)
            job = await backend.get_migration("deadowner001")
            assert job.status == "failed" and "reconciled with libvirt" in (job.error or "")
            assert (await backend.get_vm(vm_id)).migration_id is None
        finally:
            await backend.close()

    asyncio.run(scenario())


def test_a_live_replicas_job_is_mirrored_and_followed_to_its_end(
        tmp_path: Path, store: Store) -> None:
    store.create_job(_record("otherlive001", WEB01, "other", time.time() + 60))
    backend = make_backend(tmp_path, store=store)

    async def scenario() -> None:
        await backend.start()
        try:
            vm = await backend.get_vm(WEB01)
            assert vm.migration_id == "otherlive001"
            assert (await backend.get_migration("otherlive001")).status == "running"
            with pytest.raises(Conflict) as err:
                await backend.vm_action(WEB01, "stop", True)
            assert err.value.code == "vm_migrating"
            store.update_job("otherlive001", time.time(), status="running",
                             progress={"total": 100, "processed": 40, "remaining": 60,
                                       "percent": 40.0})
            await eventually(lambda: backend.migrations.get("otherlive001").percent == 40.0,
                             timeout=5)
            store.update_job("otherlive001", time.time(), status="cancelled", error="by B")
            await eventually(lambda: backend._inv.vms[WEB01].migration_id is None, timeout=5)
            assert (await backend.get_migration("otherlive001")).status == "cancelled"
        finally:
            await backend.close()

    asyncio.run(scenario())
