"""A real PostgreSQL for the tests: Debian's binaries, a temporary cluster, a unix socket.

``initdb`` and ``pg_ctl`` run as an unprivileged user (PostgreSQL refuses root;
CI runs as root: then as ``nobody``). The cluster listens on no TCP port, only on
a socket in its own temporary directory, and is stopped (by its postmaster's
PID, through ``pg_ctl stop``) and deleted at the end of the session.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from tests.serving import free_port

SUPERUSER = "cockpit"


def pg_bin() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, or Debian's versioned directory (newest)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parent.parent.name))
    return Path(candidates[-1]).parent if candidates else None


@dataclass
class Postgres:
    socket_dir: Path
    port: int
    _names: Iterator[int] = field(default_factory=itertools.count)

    def url(self, database: str = "postgres") -> str:
        return (f"postgresql+psycopg://{SUPERUSER}@/{database}"
                f"?host={self.socket_dir}&port={self.port}")

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE template0'))
        engine.dispose()
        return self.url(name)


@contextlib.contextmanager
def running_postgres() -> Iterator[Postgres]:
    bindir = pg_bin()
    if bindir is None:
        raise FileNotFoundError("initdb/pg_ctl not found (Debian package: postgresql)")
    base = Path(tempfile.mkdtemp(prefix="cockpit-pg-"))
    kwargs: dict[str, object] = {}
    if os.geteuid() == 0:
        # PostgreSQL will not run as root: hand the directory to nobody.
        nobody = pwd.getpwnam("nobody")
        os.chown(base, nobody.pw_uid, nobody.pw_gid)
        kwargs = {"user": nobody.pw_uid, "group": nobody.pw_gid}
    data = base / "data"
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}

    def run(*argv: str) -> None:
        subprocess.run(argv, check=True, cwd=base, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=120, **kwargs)  # type: ignore[call-overload]

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
            "-E", "UTF8", "--no-sync")
        options = (f"-k {base} -p {port} -c listen_addresses='' -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"),
            "-w", "-t", "60", "start")
        try:
            yield Postgres(base, port)
        finally:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)
