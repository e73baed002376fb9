"""Start a server as a real process on a loopback port, for tests over real HTTP."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def receive(s: socket.socket, timeout: float, *, until: Callable[[bytes], bool] = lambda _: False,
            size: int = 65536, errors: tuple[type[OSError], ...] = (OSError,)) -> bytes:
    """What the server sends on a raw socket until ``until(data)`` holds, it closes, a
    receive raises one of ``errors``, or ``timeout`` seconds pass: b'' if nothing came."""
    data = b""
    deadline = time.monotonic() + timeout
    while not until(data) and time.monotonic() < deadline:
        ready, _, _ = select.select([s], [], [], deadline - time.monotonic())
        if not ready:
            break
        try:
            chunk = s.recv(size)
        except errors:
            break
        if not chunk:
            break
        data += chunk
    return data


def login(client: Any, username: str, password: str) -> dict[str, str]:
    """The bearer header of a fresh login (``client``: a TestClient, an httpx.Client or
    anything with ``post``); every test logs in through this."""
    r = client.post("/api/v1/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


BROWSER_ORIGIN = "http://localhost:5173"  # a dev server's, as a browser app sends it


def cors_allows(client: Any, path: str, headers: str,
                read_path: str | None = None) -> tuple[str, str]:
    """A browser's preflight for ``GET path`` with request ``headers``, then a GET of
    ``read_path`` (default ``path``) from the same origin: (the allowed request headers,
    the exposed response headers), lower-cased."""
    r = client.options(path, headers={"Origin": BROWSER_ORIGIN,
                                      "Access-Control-Request-Method": "GET",
                                      "Access-Control-Request-Headers": headers})
    assert r.status_code == 200, r.text
    allowed = r.headers["access-control-allow-headers"].lower()
    r = client.get(read_path or path, headers={"Origin": BROWSER_ORIGIN})
    assert r.headers["access-control-allow-origin"] == "*"
    return allowed, r.headers["access-control-expose-headers"].lower()


@dataclass
class Server:
    base: str
    pid: int
    _log: IO[str]
    proc: subprocess.Popen[str] | None = None  # to signal it and wait for its exit

    def log(self) -> str:
        """Everything the server printed so far."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()


@contextlib.contextmanager
def serve_process(argv: list[str], port: int, timeout: float = 30.0, *, scheme: str = "http",
                  verify: Any = True,
                  env: dict[str, str | None] | None = None,
                  cwd: Path = ROOT) -> Iterator[Server]:
    """Run ``argv`` (in ``cwd``) until it serves. ``env`` adds (or, with None, removes)
    variables.

    ``verify``: what httpx checks the server's certificate with (an SSLContext for TLS).
    Unless ``env`` names one, the process keeps its state in a temporary
    directory of its own (``COCKPIT_STATE_DIR``): tests never write to $HOME.
    """
    full = dict(os.environ, COCKPIT_JWT_SECRET="served-test-secret-of-at-least-32-bytes!")
    state = tempfile.TemporaryDirectory(prefix="cockpit-state-")
    full["COCKPIT_STATE_DIR"] = state.name
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    # A file, not a pipe: a server that logs a lot must never block on a full pipe.
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(argv, cwd=cwd, env=full, stdout=log, stderr=subprocess.STDOUT,
                            text=True)
    server = Server(f"{scheme}://127.0.0.1:{port}", proc.pid, log, proc)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
            with contextlib.suppress(httpx.HTTPError):
                probe = httpx.get(f"{server.base}/api/v1/openapi.json", timeout=1, verify=verify)
                if probe.status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer within {timeout} s:\n{server.log()}")
            time.sleep(0.05)  # polling a real process's readiness, bounded by the deadline
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        state.cleanup()


@contextlib.contextmanager
def served(*args: str, timeout: float = 30.0,
           env: dict[str, str | None] | None = None) -> Iterator[str]:
    """Yield the base URL (``http://127.0.0.1:PORT``) of a fresh `cockpit-api serve`."""
    port = free_port()
    argv = [sys.executable, "-m", "cockpit_api.cli", "serve", "--port", str(port),
            "--log-level", "warning", *args]
    with serve_process(argv, port, timeout, env=env) as server:
        yield server.base
