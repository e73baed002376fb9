"""Serve each spec as written: ``$ref`` and named components intact.

Connexion serves ``{base}/openapi.json`` (and ``.yaml``) from its *resolved*
specification, where every ``$ref`` is inlined: a client generated from that URL
got 4,800 lines of anonymous types instead of ``Vm``, ``Host``, ``Problem``. It
also re-copies and re-resolves the whole spec on every request for it. This
layer answers those two paths itself from the document as loaded from disk,
with only ``servers`` set to where it is mounted (which is what Connexion
changes too), serialised once per mount point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml
from starlette.types import ASGIApp, Receive, Scope, Send

from cockpit_api.state import MISSING_SANDBOX

# The package holds the specs (openapi.yaml: a symlink to the repository's in a checkout, a
# copy in the wheel), so an installed server finds them wherever it is started.
PACKAGE = Path(__file__).resolve().parent.parent
SPEC = PACKAGE / "openapi.yaml"
CONTROL_SPEC = PACKAGE / "control.yaml"
OPS_SPEC = PACKAGE / "ops.yaml"  # /healthz, /readyz, /metrics


class RawSpecs:
    """ASGI middleware: ``GET <mount><prefix>/openapi.{json,yaml}`` from the unresolved spec."""

    MAX_MOUNTS = 256  # distinct mount points cached (sandboxes); past it, built per request

    def __init__(self, app: ASGIApp, specs: dict[str, Path]) -> None:
        self.app = app
        # prefix (the spec's servers[0].url, e.g. /api/v1) -> the document as written
        self._docs: dict[str, dict[str, Any]] = {}
        for prefix, path in specs.items():
            self._docs[prefix.rstrip("/")] = yaml.safe_load(path.read_text(encoding="utf-8"))
        self._cache: dict[tuple[str, str, str], bytes] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Under /sandboxes/{id} with no such sandbox (unknown, expired, deleted), the spec is
        # not served: the request goes on to its 404 sandbox_not_found, like every other URL
        # of the gone sandbox.
        if (scope["type"] == "http" and scope["method"] in ("GET", "HEAD")
                and MISSING_SANDBOX not in scope):
            # ASGI: ``path`` includes ``root_path`` (a sandbox's /sandboxes/{id} is both);
            # an app mounted under a prefix by a server may send it without.
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if not path.startswith(root):
                path = root + path
            for suffix, media in (("/openapi.json", "application/json"),
                                  ("/openapi.yaml", "text/yaml")):
                if path.endswith(suffix):
                    body = self._body(path[: -len(suffix)], suffix)
                    if body is not None:
                        await self._send(send, body, media, scope["method"] == "HEAD")
                        return
        await self.app(scope, receive, send)

    def _body(self, base: str, suffix: str) -> bytes | None:
        prefix = next((p for p in self._docs if base.endswith(p)), None)
        if prefix is None:
            return None
        key = (prefix, base, suffix)
        body = self._cache.get(key)
        if body is None:
            doc = {**self._docs[prefix], "servers": [{"url": base}]}
            if suffix.endswith("json"):
                body = orjson.dumps(doc)
            else:
                body = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode()
            if len(self._cache) < self.MAX_MOUNTS:
                self._cache[key] = body
        return body

    @staticmethod
    async def _send(send: Send, body: bytes, media: str, head: bool) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", media.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": b"" if head else body})
