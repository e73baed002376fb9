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

Both formats pass every line through :func:`clean`, whoever logged it (uvicorn's
trace log prints whole ASGI scopes): control characters are escaped
(``\\x0a``), so a ``%0a`` in a path or a newline in a username cannot start a
forged line, and tokens are blanked (:func:`redact`). In the text format a
traceback's lines are indented: only a record's first line starts at column 0.
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
# C0 and C1 controls, DEL, the Unicode line and paragraph separators, bidi overrides.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROLS_BUT_NEWLINE = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# A credential-like query value wherever a URL or a query string shows up (uvicorn's trace
# log prints `query_string: b'ticket=...'`), a bearer credential (the metrics token is no
# JWT), and an Authorization header in a printed ASGI scope.
_SECRET_QUERY = re.compile(
    r"((?<![A-Za-z0-9_])(?:ticket|token|access_token|refresh_token|password)=)[^&\s\"']*",
    re.IGNORECASE)
# 8+ token characters: "send a bearer token" in a message is no credential.
_BEARER = re.compile(r"(\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
_AUTH_HEADER = re.compile(r"(authorization['\"]?\s*[,:]\s*b?['\"])[^'\"]*", re.IGNORECASE)


def _escape_one(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control characters written as escapes (``\\x0a``, ``\\u2028``)."""
    pattern = _CONTROLS_BUT_NEWLINE if keep_newlines else _CONTROLS
    return pattern.sub(_escape_one, text) if pattern.search(text) else text


def redact(text: str) -> str:
    """``text`` with JWTs, credential-like query values and bearer credentials blanked."""
    if "eyJ" in text:
        text = _JWT.sub("***", text)
    lower = text.lower()
    if "=" in text and any(w in lower for w in ("ticket", "token", "password")):
        text = _SECRET_QUERY.sub(r"\1***", text)
    if "bearer" in lower:
        text = _BEARER.sub(r"\1***", text)
    if "authorization" in lower:
        text = _AUTH_HEADER.sub(r"\1***", text)
    return text


def _indented(traceback: str) -> str:
    """A traceback, cleaned, every line after its first indented: a line of it (which may
    quote input: an exception's message) never passes for a record of its own."""
    return "\n    ".join(clean(traceback, keep_newlines=True).splitlines())


def clean(text: str, *, keep_newlines: bool = False) -> str:
    """What a log line may carry of ``text``: redacted, control characters escaped."""
    return escape_controls(redact(text), keep_newlines=keep_newlines)


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "request_id"?, access fields?, "exc"?}``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": clean(record.getMessage()),
        }
        # Read when formatted, i.e. when a stream handler emits, in the request's context;
        # a handler that formats later (a queue) would need a filter stamping the record.
        rid = getattr(record, "request_id", None) or current_request_id.get()
        if rid:
            out["request_id"] = rid
        for key in ACCESS_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = clean(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exc"] = _indented(self.formatException(record.exc_info))
        return orjson.dumps(out).decode()


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message``, with ``[request id]`` when logged during a request."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname} {record.name}: {clean(record.getMessage())}"
        rid = getattr(record, "request_id", None) or current_request_id.get()
        if rid and record.name != ACCESS_LOGGER:
            line = f"{line} [{clean(str(rid))}]"
        extra = []
        if record.exc_info:
            extra.append(self.formatException(record.exc_info))
        if record.stack_info:
            extra.append(self.formatStack(record.stack_info))
        for text in extra:
            line += "\n    " + _indented(text)
        return line





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
        if "eyJ" in path:  # a JWT pasted into a URL path: never written
            path = _JWT.sub("***", path)
        path = escape_controls(path)  # a %0a in a path: an escape, not a forged line
        if user is not None:
            user = escape_controls(user)
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
