"""The store's signing keys, sessions (refresh families) and login throttling, over SQL."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cockpit_api.store.base import (
    KEYS_CHANGED,
    Counter,
    Rotation,
    Session,
    SigningKey,
)
from cockpit_api.store.schema import (
    kv,
    login_throttle,
    sessions,
    signing_keys,
)
from cockpit_api.store.sql_engine import SqlEngine, unavailable

_CURRENT_KID = "jwt.current_kid"

class SqlKeys(SqlEngine):
    """Signing keys, sessions and throttling counters (a part of :class:`SqlStore`)."""

    # ------------------------------------------------------------- signing keys

    @unavailable
    def signing_keys(self) -> list[SigningKey]:
        with self._tx() as conn:
            current = conn.execute(sa.select(kv.c.value).where(kv.c.key == _CURRENT_KID)).scalar()
            rows = conn.execute(sa.select(signing_keys).order_by(
                signing_keys.c.created_at.desc())).all()
        keys = [SigningKey(r.kid, r.secret, r.created_at, r.retire_after) for r in rows]
        keys.sort(key=lambda k: k.kid != current)
        return keys

    @unavailable
    def current_signing_key(self, now: float) -> SigningKey:
        with self._tx() as conn:
            kid = conn.execute(sa.select(kv.c.value).where(kv.c.key == _CURRENT_KID)).scalar()
            if kid is None:
                kid = self._new_key(conn, now, replace=False)
            row = conn.execute(sa.select(signing_keys).where(signing_keys.c.kid == kid)).one()
        return SigningKey(row.kid, row.secret, row.created_at, row.retire_after)

    def _new_key(self, conn: Connection, now: float, *, replace: bool) -> str:
        kid = secrets.token_hex(8)
        conn.execute(signing_keys.insert().values(
            kid=kid, secret=secrets.token_urlsafe(48), created_at=now))
        stmt = self._upsert(kv).values(key=_CURRENT_KID, value=kid, updated_at=now)
        if replace:
            stmt = stmt.on_conflict_do_update(index_elements=[kv.c.key],
                                              set_={"value": kid, "updated_at": now})
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=[kv.c.key])
        conn.execute(stmt)
        winner: str = conn.execute(
            sa.select(kv.c.value).where(kv.c.key == _CURRENT_KID)).scalar_one()
        if winner != kid:  # another replica made the first key meanwhile
            conn.execute(signing_keys.delete().where(signing_keys.c.kid == kid))
        return winner

    @unavailable
    def rotate_signing_key(self, now: float, retire_after: float) -> SigningKey:
        with self._tx() as conn:
            conn.execute(signing_keys.update().where(signing_keys.c.retire_after.is_(None))
                         .values(retire_after=retire_after))
            kid = self._new_key(conn, now, replace=True)
            conn.execute(signing_keys.delete().where(signing_keys.c.retire_after < now))
            row = conn.execute(sa.select(signing_keys).where(signing_keys.c.kid == kid)).one()
        return SigningKey(row.kid, row.secret, row.created_at, row.retire_after)

    @unavailable
    def revoke_signing_key(self, kid: str, now: float) -> bool:
        with self._tx() as conn:
            if conn.execute(sa.select(signing_keys.c.kid)
                            .where(signing_keys.c.kid == kid)).first() is None:
                return False
            current = conn.execute(sa.select(kv.c.value).where(kv.c.key == _CURRENT_KID)).scalar()
            if current == kid:
                self._new_key(conn, now, replace=True)
            conn.execute(signing_keys.delete().where(signing_keys.c.kid == kid))
            stmt = self._upsert(kv).values(key=KEYS_CHANGED, value=f"{now:.6f}", updated_at=now)
            conn.execute(stmt.on_conflict_do_update(
                index_elements=[kv.c.key], set_={"value": f"{now:.6f}", "updated_at": now}))
        return True

    # ----------------------------------------------------------------- sessions

    @staticmethod
    def _session(row: Any) -> Session:
        return Session(row.family, row.sid, row.username, row.created_at, row.expires_at,
                       row.generation, row.revoked_at, row.revoked_reason)

    @unavailable
    def create_session(self, session: Session, digest: str) -> None:
        s = session
        with self._tx() as conn:
            conn.execute(sessions.insert().values(
                family=s.family, sid=s.sid, username=s.username, created_at=s.created_at,
                expires_at=s.expires_at, current_digest=digest, generation=0))

    @unavailable
    def rotate_refresh(self, family: str, digest: str, new_digest: str, now: float,
                       expires_at: float, grace: float = 0.0) -> Rotation:
        c = sessions.c
        live = (c.family == family, c.revoked_at.is_(None), c.expires_at > now)
        with self._tx() as conn:
            # One conditional UPDATE: of two concurrent refreshes with one token,
            # exactly one matches; the other then sees reuse (or, in the grace, a retry).
            row = conn.execute(
                sessions.update()
                .where(*live, c.current_digest == digest)
                .values(current_digest=new_digest, generation=c.generation + 1,
                        expires_at=expires_at, previous_digest=digest, rotated_at=now)
                .returning(*sessions.c)).first()
            if row is not None:
                return Rotation("rotated", self._session(row))
            if grace > 0:
                # The token the last rotation replaced, again and soon: the client never got
                # that answer (a crash, a lost connection) and retries. Once: the grace is
                # used up (previous_digest cleared), and the successor it missed is spent.
                row = conn.execute(
                    sessions.update()
                    .where(*live, c.previous_digest == digest, c.rotated_at >= now - grace)
                    .values(current_digest=new_digest, generation=c.generation + 1,
                            expires_at=expires_at, previous_digest=None, rotated_at=now)
                    .returning(*sessions.c)).first()
                if row is not None:
                    return Rotation("retried", self._session(row))
            row = conn.execute(sa.select(sessions).where(c.family == family)).first()
            if row is None or row.revoked_at is not None or row.expires_at <= now:
                return Rotation("invalid", None if row is None else self._session(row))
            row = conn.execute(
                sessions.update().where(c.family == family, c.revoked_at.is_(None))
                .values(revoked_at=now, revoked_reason="reuse").returning(*sessions.c)).first()
        return Rotation("reused", None if row is None else self._session(row))

    @unavailable
    def revoke_session(self, family: str, now: float, reason: str) -> Session | None:
        c = sessions.c
        with self._tx() as conn:
            row = conn.execute(
                sessions.update().where(c.family == family, c.revoked_at.is_(None))
                .values(revoked_at=now, revoked_reason=reason).returning(*sessions.c)).first()
        return None if row is None else self._session(row)

    @unavailable
    def get_session(self, family: str) -> Session | None:
        with self._tx() as conn:
            row = conn.execute(sa.select(sessions).where(sessions.c.family == family)).first()
        return None if row is None else self._session(row)

    @unavailable
    def revocations_since(self, since: float) -> list[tuple[str, float]]:
        c = sessions.c
        with self._tx() as conn:
            rows = conn.execute(sa.select(c.sid, c.revoked_at).where(c.revoked_at >= since)).all()
        return [(r.sid, r.revoked_at) for r in rows]

    @unavailable
    def prune_sessions(self, now: float, keep_revoked: float) -> int:
        c = sessions.c
        with self._tx() as conn:
            gone = conn.execute(sessions.delete().where(
                sa.or_(sa.and_(c.revoked_at.is_(None), c.expires_at <= now),
                       c.revoked_at < now - keep_revoked,
                       c.expires_at <= now - keep_revoked)))
        return gone.rowcount

    # --------------------------------------------------------------- throttling

    @unavailable
    def count_attempts(self, keys: Sequence[str], now: float, window: float) -> list[Counter]:
        t = login_throttle.c
        out: list[Counter] = []
        with self._tx() as conn:
            for key in keys:
                stale = t.window_start <= now - window
                stmt = self._upsert(login_throttle).values(key=key, window_start=now, count=1)
                stmt = stmt.on_conflict_do_update(
                    index_elements=[t.key],
                    set_={"count": sa.case((stale, 1), else_=t.count + 1),
                          "window_start": sa.case((stale, now), else_=t.window_start)},
                ).returning(t.count, t.window_start)
                count, start = conn.execute(stmt).one()  # (a Row's .count is tuple.count)
                out.append(Counter(key, int(count), float(start)))
        return out

    @unavailable
    def forgive(self, clear: Sequence[str], decrement: Sequence[str]) -> None:
        t = login_throttle.c
        with self._tx() as conn:
            if clear:
                conn.execute(login_throttle.delete().where(t.key.in_(list(clear))))
            if decrement:
                conn.execute(login_throttle.update()
                             .where(t.key.in_(list(decrement)), t.count > 0)
                             .values(count=t.count - 1))

    @unavailable
    def reset_throttling(self, keep_prefix: str | None = None) -> None:
        stmt = login_throttle.delete()
        if keep_prefix:
            stmt = stmt.where(~login_throttle.c.key.startswith(keep_prefix, autoescape=True))
        with self._tx() as conn:
            conn.execute(stmt)

    @unavailable
    def prune_throttling(self, before: float) -> int:
        with self._tx() as conn:
            return conn.execute(login_throttle.delete().where(
                login_throttle.c.window_start < before)).rowcount
