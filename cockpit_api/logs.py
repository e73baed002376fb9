"""Log setup: plain lines, or one JSON object per line (``--log-format json``).

Every record carries the id of the request being answered when it was logged
(``request_id``), read from a context variable the request middleware sets:
a log line written deep in a handler or a backend still names its request
without the id being passed down. A context variable is per task, not shared
state: two app instances in one process never see each other's ids.

Access-log records (logger ``cockpit_api.access``, cockpit_api/access.py) add
``method``, ``path`` (never the query string: it can carry an event-feed
ticket), ``operation``, ``status``, ``duration_ms`` and ``user``. Nothing here
logs request bodies, query values, passwords or tokens.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

current_request_id: ContextVar[str | None] = ContextVar("cockpit_request_id", default=None)

# Attributes an access-log record carries (``extra=``), in the order they are written.
ACCESS_FIELDS = ("method", "path", "operation", "status", "duration_ms", "user")
FORMATS = ("text", "json")


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
        return f"{line} [{rid}]" if rid and record.name != "cockpit_api.access" else line


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
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)  # a warning is one more line in the same format
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn's own handlers are not installed (log_config=None): let them reach ours.
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
