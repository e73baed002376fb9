"""uvicorn's httptools protocol, with the limits on request heads it does not have.

uvicorn 0.54 over httptools bounds nothing before a request reaches the app:
no limit on the size or number of header fields (a 1 MB header and 10,000
headers were accepted), no deadline for a request's head (a slowloris sending a
byte a second held its connection forever), and its keep-alive timeout is armed
only after a response (a connection that never sends a byte stayed open). h11
has a size limit, but not the rest, and httptools is faster. This subclass adds,
per connection:

- an idle timeout (``keepalive_timeout``) from the moment it opens, not only
  between requests: silent sockets are closed;
- a head deadline (``header_timeout``) from a request's first byte to its last
  header: a slow head gets 408 and is closed;
- ``max_header_bytes`` for the request line and headers together, and
  ``max_headers`` header fields: past either, 431 (414 for the URL alone), sent
  as soon as the limit is crossed, so the server holds at most the limit plus
  one read of the head in memory.

Every refusal is a problem+json answer with ``Connection: close``; other
connections are served meanwhile (all of it is a few timers on the event loop).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from cockpit_api.http.problems import PROBLEM_JSON, problem_body


@dataclass(frozen=True)
class HeadLimits:
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    keepalive_timeout: float = 5.0


class _HeadRefused(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus :class:`HeadLimits` (set on the subclass by :func:`protocol_with`)."""

    limits = HeadLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.limits.keepalive_timeout  # type: ignore[assignment]
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._header_count = 0
        self._in_head = False

    # -- connection lifetime

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn arms its keep-alive timer only after a response; a new connection
        # that never sends anything would stay open.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.limits.keepalive_timeout, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        was_in_head = self._in_head
        if was_in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except _HeadRefused as refused:
            self._refuse(refused)
            return
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadRefused):
                self._refuse(exc.__context__)
                return
            self._bad_request()
            return
        except httptools.HttpParserError:
            self._bad_request()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        # Headers still incomplete after this read: bound what is buffered so far (a head that
        # began in this read counts all of it: an upper bound).
        if self._in_head and not was_in_head:
            self._head_bytes += len(data)
        if self._in_head and self._head_bytes > self.limits.max_header_bytes:
            self._refuse(self._too_large())

    def _bad_request(self) -> None:
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)

    # -- parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._header_count = 0
        self._cancel_head_deadline()
        self._head_deadline = self.loop.call_later(self.limits.header_timeout, self._head_timeout)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_header_bytes:
            raise _HeadRefused(414, "uri_too_long",
                               f"the request target is longer than {self.limits.max_header_bytes}"
                               " bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            raise _HeadRefused(431, "headers_too_large",
                               f"the request has more than {self.limits.max_headers} header fields")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_deadline()
        if len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers) > \
                self.limits.max_header_bytes:
            raise self._too_large()
        super().on_headers_complete()

    # -- refusals

    def _too_large(self) -> _HeadRefused:
        return _HeadRefused(431, "headers_too_large",
                            f"the request line and headers are larger than "
                            f"{self.limits.max_header_bytes} bytes")

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timeout(self) -> None:
        self._head_deadline = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(_HeadRefused(
                408, "request_timeout",
                f"the request headers did not arrive within {self.limits.header_timeout:g} s"))

    def _refuse(self, refused: _HeadRefused) -> None:
        self._cancel_head_deadline()
        self._in_head = False
        if self.transport.is_closing():
            return
        body = orjson.dumps(problem_body(refused.status, refused.detail, code=refused.code))
        self.transport.write(b"".join([
            STATUS_LINE[refused.status],
            b"content-type: ", PROBLEM_JSON.encode(), b"\r\n",
            b"content-length: ", str(len(body)).encode(), b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]))
        self.transport.close()


def protocol_with(limits: HeadLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class for ``uvicorn.run(http=...)`` with these limits (uvicorn builds it)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})
