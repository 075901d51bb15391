"""Run an ASGI app (the gateway) under uvicorn on a free loopback port, for tests.

    async with serving(topology.gateway) as base_url:
        client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused")

The lifespan runs (startup before the block, shutdown after it). A startup that fails
raises its error instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["serving"]


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """``http://127.0.0.1:PORT`` while ``app`` is being served there."""
    import uvicorn  # noqa: PLC0415 - only tests that serve over HTTP need it

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_level="warning")
    )
    task = asyncio.ensure_future(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # startup failed: say why
                raise RuntimeError("the server stopped before it started")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
