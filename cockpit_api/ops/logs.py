"""Log setup: plain lines, or one JSON object per line (``--log-format json``).

Every record carries the id of the request being answered when it was logged
(``request_id``), read from a context variable the request middleware sets:
a log line written deep in a handler or a backend still names its request
without the id being passed down. A context variable is per task, not shared
state: two app instances in one process never see each other's ids.

Access-log lines (``cockpit_api.http.access``: written by :class:`JsonAccessLog` or
:class:`TextAccessLog` for cockpit_api/http/access.py) add
``method``, ``path`` (never the query string: it can carry an event-feed
ticket), ``operation``, ``status``, ``duration_ms`` and ``user``. Nothing here
logs request bodies, query values, passwords or tokens.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

current_request_id: ContextVar[str | None] = ContextVar("cockpit_request_id", default=None)

# Attributes an access-log record carries (``extra=``), in the order they are written.
ACCESS_FIELDS = ("method", "path", "operation", "status", "duration_ms", "user")
FORMATS = ("text", "json")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
ACCESS_LOGGER = "cockpit_api.http.access"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "request_id"?, access fields?, "exc"?}``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        # Read when formatted, i.e. when a stream handler emits, in the request's context;
        # a handler that formats later (a queue) would need a filter stamping the record.
        rid = getattr(record, "request_id", None) or current_request_id.get()
        if rid:
            out["request_id"] = rid
        for key in ACCESS_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message``, with ``[request id]`` when logged during a request."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None) or current_request_id.get()
        return f"{line} [{rid}]" if rid and record.name != ACCESS_LOGGER else line





class JsonAccessLog:
    """Writes access lines in :class:`JsonFormatter`'s shape to stderr, a few at a time.

    Through the logging module a record costs ~50 us on this project's machine
    (caller lookup, LogRecord, handler locks, datetime formatting), and a write
    to stderr is a system call per line (~5 us here): together a fifth of a GET
    /vms. This builds the same object with one orjson call, formats the time's
    seconds once a second, and writes lines in batches: at 64 lines, or 0.1 s
    after the first one waiting, whichever comes first (``flush`` at shutdown),
    so a line may show up to 0.1 s late or out of order with other loggers'.
    Opt-in (``access_log``), so it does not follow ``--log-level``.
    """

    BATCH = 64
    DELAY = 0.1

    def __init__(self) -> None:
        self._second = -1
        self._stamp = ""
        self._pending: list[bytes] = []

    def __call__(self, method: str, path: str, operation: str, status: int, seconds: float,
                 user: str | None, request_id: str) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        if "eyJ" in path:  # a JWT pasted into a URL path: never written (cli.RedactSecrets)
            path = _JWT.sub("***", path)
        line = {"time": f"{self._stamp}.{int((now - second) * 1000):03d}Z", "level": "info",
                "logger": ACCESS_LOGGER, "message": f"{method} {path} {status}",
                "request_id": request_id, "method": method, "path": path,
                "operation": operation, "status": status,
                "duration_ms": round(seconds * 1000, 3)}
        if user is not None:
            line["user"] = user
        self._pending.append(orjson.dumps(line))
        if len(self._pending) >= self.BATCH:
            self.flush()
        elif len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_later(self.DELAY, self.flush)
            except RuntimeError:  # no loop (a direct call): no batching
                self.flush()

    def flush(self) -> None:
        if self._pending:
            lines, self._pending = self._pending, []
            # sys.stderr looked up each time, so that redirections (pytest's) apply.
            sys.stderr.write(b"\n".join(lines).decode() + "\n")
            sys.stderr.flush()


class TextAccessLog:
    """Access lines as records on logger ``cockpit_api.http.access`` (any handler, caplog)."""

    def __init__(self) -> None:
        self._log = logging.getLogger(ACCESS_LOGGER)

    def flush(self) -> None:
        pass  # records go out through the logging handlers

    def __call__(self, method: str, path: str, operation: str, status: int, seconds: float,
                 user: str | None, request_id: str) -> None:
        ms = round(seconds * 1000, 3)
        self._log.info("%s %s %d %.1fms op=%s user=%s rid=%s", method, path, status, ms,
                       operation, user or "-", request_id,
                       extra={"method": method, "path": path, "operation": operation,
                              "status": status, "duration_ms": ms, "user": user,
                              "request_id": request_id})


def access_writer(fmt: str) -> JsonAccessLog | TextAccessLog:
    return JsonAccessLog() if fmt == "json" else TextAccessLog()


def configure(fmt: str = "text", level: str | int = "INFO") -> None:
    """Route every logger (uvicorn's too) to stderr in one format."""
    if fmt not in FORMATS:
        raise ValueError(f"log format is one of {FORMATS}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    if isinstance(level, str):
        # uvicorn's "trace" (5) is registered only once uvicorn is imported, after this.
        level = 5 if level.lower() == "trace" else level.upper()
    root.setLevel(level)
    logging.captureWarnings(True)  # a warning is one more line in the same format
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn's own handlers are not installed (log_config=None): let them reach ours.
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
