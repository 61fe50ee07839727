"""A private event loop on a daemon thread, shared by the engine backends.

An engine's async resources (vLLM's ``AsyncLLM``, an ``httpx.AsyncClient``) are
bound to the loop that created them, while callers come from everywhere: worker
threads of LangChain's sync path, a new loop per pytest test, repeated
``asyncio.run``. So each engine owns one loop and every call is marshalled
there; cancelling the caller's await cancels the task on the engine loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """An event loop running forever on its own daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` on this loop from any other loop."""
        return await asyncio.wrap_future(self.submit(coro))

    def stop(self, join_s: float = 10.0) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=join_s)
