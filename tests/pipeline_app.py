"""Handlers for tests/data/pipeline.yaml, and the small app tests/test_pipeline.py builds."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import connexion
from connexion import context
from starlette.responses import StreamingResponse

from cockpit_api.http import pipeline

SPEC = Path(__file__).resolve().parent / "data" / "pipeline.yaml"


def build(compiled: bool = True, validate_responses: bool = True) -> connexion.AsyncApp:
    app = connexion.AsyncApp(__name__, middlewares=pipeline.middlewares() if compiled else None)
    app.add_api(SPEC, strict_validation=True, validate_responses=validate_responses)
    return app


def token_info(token: str) -> dict[str, Any] | None:
    return {"sub": "tester", "scope": []} if token == "good" else None


def key_info(api_key: Any, required_scopes: Any = None) -> dict[str, Any] | None:
    # Connexion hands security functions the raw query value: a string, never a list.
    assert isinstance(api_key, str), api_key
    return {"sub": api_key} if api_key.startswith("k-") else None


async def keyed(user: str) -> dict[str, Any]:
    return {"user": user}


async def get_item(item_id: str, verbose: bool = False) -> dict[str, Any]:
    return {"item": item_id, "verbose": verbose}


async def special() -> dict[str, Any]:
    return {"special": True}


async def list_items(limit: int, tag: str | None = None) -> dict[str, Any]:
    return {"limit": limit, "tag": tag}


async def add_item(body: dict[str, Any], user: str) -> tuple[dict[str, Any], int]:
    return {"added": body, "by": user}, 201


async def number(n: int) -> dict[str, Any]:
    return {"n": n, "type": type(n).__name__}


def sync_handler() -> dict[str, Any]:
    # Connexion runs sync handlers in its thread pool: not on the event loop's thread.
    return {"thread": "main" if threading.current_thread() is threading.main_thread()
            else "worker"}


async def stream() -> StreamingResponse:
    gate: asyncio.Event = context.scope["test.gate"]

    async def chunks() -> AsyncIterator[bytes]:
        yield b"data: first\n\n"
        await gate.wait()  # set by the test only once it has received the first chunk
        yield b"data: second\n\n"

    return StreamingResponse(chunks(), media_type="text/event-stream")
