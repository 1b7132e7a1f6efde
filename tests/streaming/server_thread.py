"""A test server on its own thread and event loop, for code under test that runs its own (asyncio.run)."""

from __future__ import annotations

import asyncio
import contextlib
import threading


@contextlib.contextmanager
def server_thread(serving, prepare=None):
    """Enter `serving` (an async context manager yielding (server, address)) on a new thread and loop and
    yield the address until the block ends; `prepare(server)` runs before it is yielded."""
    ready, stop, address = threading.Event(), None, []

    async def serve():
        nonlocal stop
        stop = asyncio.Event()
        async with serving as (server, where):
            if prepare is not None:
                prepare(server)
            address.append(where)
            ready.set()
            await stop.wait()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        yield address[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
