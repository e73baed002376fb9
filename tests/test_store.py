"""The store: one suite, run on SQLite and on a real PostgreSQL (the ``store_url`` fixture)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

from cockpit_api.store import (
    AuditEntry,
    JobConflict,
    JobRecord,
    Session,
    StoreError,
    StoreUnavailable,
    open_store,
)
from cockpit_api.store.sql import SqlStore
from cockpit_api.store.sql_engine import display_url
from tests.pg import Postgres

T = 1_800_000_000.0


@pytest.fixture
def store(store_url: str) -> Iterator[SqlStore]:
    s = open_store(store_url)
    assert isinstance(s, SqlStore)
    yield s
    s.close()


def _together(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run ``fn(i)`` for i < n on n threads released at once; results in order."""
    barrier = threading.Barrier(n)

    def go(i: int) -> Any:
        barrier.wait()
        try:
            return fn(i)
        except Exception as exc:  # compared by the caller
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(go, range(n)))


# ------------------------------------------------------------------ schema


def test_the_migrations_make_the_schema_the_code_expects(store: SqlStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from cockpit_api.store.schema import metadata

    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn)
        assert ctx.get_current_revision() == "0003"
        assert compare_metadata(ctx, metadata) == []


def test_head_names_the_newest_revision() -> None:
    from alembic.script import ScriptDirectory

    from cockpit_api.store.migrations import HEAD
    from cockpit_api.store.sql_engine import MIGRATIONS

    assert ScriptDirectory(str(MIGRATIONS)).get_current_head() == HEAD


def test_the_schema_goes_down_and_up_again(store_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from cockpit_api.store.sql_engine import MIGRATIONS

    store = open_store(store_url)
    assert isinstance(store, SqlStore)
    with store.engine.begin() as conn:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert sa.inspect(store.engine).get_table_names() == ["alembic_version"]
    store.close()
    again = open_store(store_url)  # upgrades to head on open
    again.kv_set("k", "v", T)
    assert again.kv_get("k") == "v"
    again.close()


def test_a_second_open_finds_the_same_data(store_url: str) -> None:
    a = open_store(store_url)
    a.kv_set("host.vapor-node-01", "019e0014-abcd-7057-b326-000000000001", T)
    b = open_store(store_url)
    assert b.kv_get("host.vapor-node-01") == "019e0014-abcd-7057-b326-000000000001"
    a.close()
    b.close()


def test_replicas_starting_together_migrate_once(store_url: str) -> None:
    stores = _together(4, lambda _i: open_store(store_url))
    assert all(isinstance(s, SqlStore) for s in stores), stores
    stores[0].kv_set("k", "v", T)
    assert {s.kv_get("k") for s in stores} == {"v"}
    for s in stores:
        s.close()


def test_bad_urls_are_one_line_errors_without_the_password() -> None:
    with pytest.raises(StoreError, match="neither sqlite") as info:
        open_store("mysql://u:hunter2@h/db")
    assert "hunter2" not in str(info.value)
    with pytest.raises(StoreError, match="cannot be opened") as info:
        open_store("postgresql://u:hunter2@127.0.0.1:1/db")
    assert "hunter2" not in str(info.value) and "\n" not in str(info.value)
    assert display_url("postgresql://u:hunter2@h/db") == "postgresql://u:***@h/db"
    # A driver that echoes a connection option equal to the password does not show it.
    with pytest.raises(StoreError) as info:
        open_store("postgresql://u:hunter2@127.0.0.1:1/db?sslmode=hunter2")
    driver_said = str(info.value).split("cannot be opened:")[1]
    assert "hunter2" not in driver_said and "***" in driver_said


# ------------------------------------------------------------- signing keys


def test_the_signing_key_is_made_once(store_url: str) -> None:
    a, b = open_store(store_url), open_store(store_url)
    keys = _together(8, lambda i: (a if i % 2 else b).current_signing_key(T))
    assert len({k.kid for k in keys}) == 1
    assert len(a.signing_keys()) == 1 and len(keys[0].secret) >= 32
    a.close()
    b.close()


def test_rotation_keeps_the_old_key_until_it_retires(store: SqlStore) -> None:
    old = store.current_signing_key(T)
    new = store.rotate_signing_key(T + 10, retire_after=T + 3610)
    assert new.kid != old.kid
    assert store.current_signing_key(T + 11).kid == new.kid
    keys = store.signing_keys()
    assert [k.kid for k in keys] == [new.kid, old.kid]
    assert keys[1].retire_after == T + 3610 and keys[0].retire_after is None
    # The next rotation after the old key's retirement drops it.
    newest = store.rotate_signing_key(T + 4000, retire_after=T + 7600)
    assert {k.kid for k in store.signing_keys()} == {newest.kid, new.kid}


# ----------------------------------------------------------------- sessions


def _session(family: str = "fam", sid: str = "sid", expires: float = T + 100) -> Session:
    return Session(family, sid, "admin", T, expires)


def test_refresh_rotates_once_and_reuse_revokes(store: SqlStore) -> None:
    store.create_session(_session(), "d0")
    r = store.rotate_refresh("fam", "d0", "d1", T + 1, T + 200)
    assert r.outcome == "rotated" and r.session is not None and r.session.generation == 1
    assert r.session.expires_at == T + 200
    r = store.rotate_refresh("fam", "d0", "d2", T + 2, T + 200)  # d0 again: a copy
    assert r.outcome == "reused" and r.session is not None and r.session.revoked_at == T + 2
    assert store.rotate_refresh("fam", "d1", "d3", T + 3, T + 200).outcome == "invalid"
    assert store.revocations_since(T) == [("sid", T + 2)]


def test_refresh_of_unknown_expired_or_revoked_sessions_is_invalid(store: SqlStore) -> None:
    assert store.rotate_refresh("nope", "d", "e", T, T + 1).outcome == "invalid"
    store.create_session(_session("old", "s1", expires=T + 10), "d0")
    assert store.rotate_refresh("old", "d0", "d1", T + 10, T + 20).outcome == "invalid"
    store.create_session(_session("gone", "s2"), "d0")
    revoked = store.revoke_session("gone", T + 1, "logout")
    assert revoked is not None and revoked.sid == "s2"
    assert store.revoke_session("gone", T + 2, "logout") is None  # once
    assert store.rotate_refresh("gone", "d0", "d1", T + 3, T + 20).outcome == "invalid"


def test_concurrent_refreshes_with_one_token_rotate_once(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(2)]  # two replicas
    stores[0].create_session(_session(), "d0")
    results = _together(10, lambda i: stores[i % 2].rotate_refresh(
        "fam", "d0", f"n{i}", T + 1, T + 200))
    outcomes = sorted(r.outcome for r in results)
    assert outcomes.count("rotated") == 1, outcomes
    assert set(outcomes) <= {"rotated", "reused", "invalid"} and "reused" in outcomes
    # The winner's new token is dead too: the family was revoked by the reuse.
    winner = next(i for i, r in enumerate(results) if r.outcome == "rotated")
    assert stores[1].rotate_refresh("fam", f"n{winner}", "x", T + 2, T + 200).outcome == "invalid"
    for s in stores:
        s.close()


def test_sessions_table_is_bounded(store: SqlStore) -> None:
    store.create_session(_session("live", "s1", expires=T + 9000), "d")
    for i in range(50):  # refreshing a lot keeps one row
        assert store.rotate_refresh("live", f"d{i - 1}" if i else "d", f"d{i}", T + i,
                                    T + 9000).outcome == "rotated"
    store.create_session(_session("expired", "s2", expires=T + 5), "d")
    store.create_session(_session("loggedout", "s3", expires=T + 1000), "d")
    store.revoke_session("loggedout", T + 6, "logout")
    # Revoked sessions are kept while their access tokens may live (keep_revoked).
    assert store.prune_sessions(T + 10, keep_revoked=3600) == 1
    assert store.get_session("loggedout") is not None
    assert store.prune_sessions(T + 3607, keep_revoked=3600) == 1
    assert store.get_session("live") is not None and store.get_session("loggedout") is None
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM sessions")).scalar() == 1


# --------------------------------------------------------------- throttling


def test_attempts_count_in_fixed_windows(store: SqlStore) -> None:
    assert [c.count for c in store.count_attempts(["a", "b"], T, 300)] == [1, 1]
    assert [c.count for c in store.count_attempts(["a"], T + 10, 300)] == [2]
    c = store.count_attempts(["a"], T + 300, 300)[0]  # the window is over: a new one
    assert (c.count, c.window_start) == (1, T + 300)
    store.forgive(clear=["a"], decrement=["b"])
    assert store.count_attempts(["a", "b"], T + 301, 300)[0].count == 1
    store.reset_throttling()
    assert store.count_attempts(["b"], T + 302, 300)[0].count == 1
    assert store.prune_throttling(T + 303) == 1


def test_concurrent_attempts_each_get_their_own_count(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(2)]
    counts = _together(40, lambda i: stores[i % 2].count_attempts(["u|a", "a"], T, 300))
    assert sorted(c[0].count for c in counts) == list(range(1, 41))
    assert sorted(c[1].count for c in counts) == list(range(1, 41))
    for s in stores:
        s.close()


# --------------------------------------------------------------------- jobs


def _job(job_id: str, vm: str = "vm-1") -> JobRecord:
    return JobRecord(id=job_id, vm_id=vm, owner="admin", request={"destination_host_id": "h2"},
                     status="initiated", created_at=T, source_host_id="h1")


def test_one_unfinished_job_per_vm(store: SqlStore) -> None:
    store.create_job(_job("j1"))
    with pytest.raises(JobConflict) as info:
        store.create_job(_job("j2"))
    assert info.value.job_id == "j1" and info.value.status == 409
    store.create_job(_job("j3", vm="vm-2"))  # another VM is free
    done = store.update_job("j1", T + 5, status="completed",
                            progress={"percent": 100})
    assert done is not None and done.finished_at == T + 5 and done.progress == {"percent": 100}
    store.create_job(_job("j2"))  # the VM is free again
    assert [j.id for j in store.list_jobs(unfinished=True)] == ["j2", "j3"]
    assert {j.id for j in store.list_jobs()} == {"j1", "j2", "j3"}
    assert store.prune_jobs(T + 6) == 1 and store.get_job("j1") is None


def test_concurrent_migrations_of_one_vm_admit_one(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(2)]
    results = _together(10, lambda i: stores[i % 2].create_job(_job(f"j{i}")))
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, JobConflict) for r in results if r is not None)
    for s in stores:
        s.close()


def test_a_job_record_round_trips(store: SqlStore) -> None:
    store.create_job(_job("j1"))
    store.update_job("j1", T + 1, status="running", started_at=T + 1,
                     progress={"data_total_bytes": 10, "percent": 5.5})
    job = store.get_job("j1")
    assert job is not None
    assert (job.status, job.started_at, job.updated_at, job.owner) == ("running", T + 1, T + 1,
                                                                       "admin")
    assert job.request == {"destination_host_id": "h2"} and job.progress["percent"] == 5.5
    failed = store.update_job("j1", T + 2, status="failed", error="destination ran out of memory")
    assert failed is not None and failed.error == "destination ran out of memory"
    assert store.update_job("nope", T, status="failed") is None
    with pytest.raises(TypeError):
        store.update_job("j1", T, colour="red")


def test_leases_are_held_renewed_and_adopted(store: SqlStore) -> None:
    store.create_job(_job("j1"))
    assert [j.id for j in store.adoptable_jobs(T)] == ["j1"]  # nobody drives it yet
    assert store.acquire_lease("j1", "replica-a", T, ttl=10)
    assert not store.acquire_lease("j1", "replica-b", T + 5, ttl=10)
    assert store.adoptable_jobs(T + 5) == []
    assert store.renew_leases("replica-a", T + 8, ttl=10) == 1
    assert not store.acquire_lease("j1", "replica-b", T + 15, ttl=10)
    # replica-a dies: its lease runs out and replica-b adopts the job.
    assert [j.id for j in store.adoptable_jobs(T + 18)] == ["j1"]
    assert store.acquire_lease("j1", "replica-b", T + 18, ttl=10)
    job = store.get_job("j1")
    assert job is not None and job.lease_owner == "replica-b"
    store.release_lease("j1", "replica-a")  # not a's to release any more
    assert store.get_job("j1").lease_owner == "replica-b"  # type: ignore[union-attr]
    store.release_lease("j1", "replica-b")
    assert store.acquire_lease("j1", "replica-a", T + 19, ttl=10)
    store.update_job("j1", T + 20, status="cancelled")
    assert not store.acquire_lease("j1", "replica-a", T + 21, ttl=10)  # finished
    assert store.renew_leases("replica-a", T + 21, ttl=10) == 0


# ---------------------------------------------------------------- key/value


def test_kv_first_writer_wins_and_prefixes_are_literal(store_url: str) -> None:
    a, b = open_store(store_url), open_store(store_url)
    won = _together(6, lambda i: (a, b)[i % 2].kv_setdefault("host.n1", f"id{i}", T))
    assert len(set(won)) == 1
    a.kv_set("host.n2", "x", T)
    a.kv_set("host%", "y", T)
    a.kv_set("hostile", "z", T)
    assert b.kv_items("host.") == {"host.n1": won[0], "host.n2": "x"}
    assert b.kv_items("host%") == {"host%": "y"}
    a.kv_set("host.n2", "changed", T + 1)
    assert b.kv_get("host.n2") == "changed" and b.kv_get("absent") is None
    a.close()
    b.close()


# -------------------------------------------------------------------- audit


def test_audit_pages_newest_first(store: SqlStore) -> None:
    ids = [store.audit_append(AuditEntry(at=T + i, operation="vm_action", method="POST",
                                         path=f"/api/v1/vms/{i}/action", status=200,
                                         actor="admin", role="admin", address="127.0.0.1",
                                         request_id=f"r{i}"))
           for i in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    page = store.audit_page(2)
    assert [e.id for e in page] == ids[:-3:-1]
    assert page[0].request_id == "r4" and page[0].actor == "admin"
    rest = store.audit_page(10, before=page[-1].id)
    assert [e.id for e in rest] == ids[2::-1]
    assert store.prune_audit(T + 2) == 2
    assert [e.id for e in store.audit_page(10)] == ids[:1:-1]


# ------------------------------------------------------- losing the database


def test_a_lost_database_is_store_unavailable(postgres: Postgres) -> None:
    url = postgres.new_database()
    store = open_store(url)
    store.kv_set("k", "v", T)
    name = url.split("/")[3].split("?")[0]
    admin = sa.create_engine(postgres.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()
    with pytest.raises(StoreUnavailable) as info:
        store.kv_set("k", "w", T)
    assert info.value.status == 503 and info.value.code == "store_unavailable"
    store.close()
