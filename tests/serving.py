"""A uvicorn server run on the test's own event loop, for as long as a block runs: the gateway
under test, and the web servers the fakes play (an MCP server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn

from gateway.server import bound_port


@asynccontextmanager
async def served(server: uvicorn.Server) -> AsyncIterator[int]:
    """Serve until the block exits, then shut down gracefully; the port it bound (port 0
    asks for a free one). A server that fails to start raises here."""
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    try:
        yield bound_port(server)
    finally:
        server.should_exit = True
        await task
