"""The state directory: private (its store holds the signing keys), and one server's.

``check_private(path)``: the directory must not be readable or writable by group or
others: anyone who reads ``store.db`` can sign an admin token with its key, anyone who
writes it can swap the key. It is created 0700; an existing one that is more open is
refused (one line, exit 2), not silently chmodded: someone chose that mode.

``lock(path)``: an exclusive ``flock`` on ``serve.lock`` in the directory, held for the
process's life. Two servers on one directory would each simulate their own world over
one store (diverging state, shared sessions); the second is refused. The lock is the
kernel's, so a crashed server leaves nothing to clean up.

``private_file(path)``: create a file 0600 (or narrow an existing one) before SQLite
opens it; SQLite gives its -wal and -shm files the database file's mode.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from pathlib import Path
from typing import IO

from cockpit_api.store.base import StoreError

LOCK_NAME = "serve.lock"


def check_private(path: Path) -> None:
    try:
        st = path.stat()
    except OSError as exc:
        raise StoreError(f"state directory {path}: {exc.strerror}") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise StoreError(
            f"state directory {path} is open to other users (mode {mode:04o}): its store "
            f"holds the token signing keys; chmod 700 {path}, or pick another --state-dir")


def private_file(path: Path) -> None:
    """``path`` exists and is 0600 (its -wal/-shm companions too, when they exist)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        with contextlib.suppress(FileNotFoundError):
            if stat.S_IMODE(name.stat().st_mode) & 0o077:
                os.chmod(name, 0o600)


def lock(path: Path) -> IO[str]:
    """Hold ``path``'s lock while the returned file stays open; StoreError if another holds it."""
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    f = os.fdopen(fd, "r+", encoding="utf-8")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = f.read().strip()[:20]
        f.close()
        who = f" (pid {holder})" if holder.isascii() and holder.isdigit() else ""
        raise StoreError(f"state directory {path} is in use by another cockpit-api serve{who}:"
                         " give each server its own --state-dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f
