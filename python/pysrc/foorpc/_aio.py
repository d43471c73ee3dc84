"""asyncio support: `AsyncClient`."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Dict, Optional

from ._native import AsyncClient as _NativeAsyncClient
from ._native import CallFuture

__all__ = ["AsyncClient", "CallFuture"]


class AsyncClient(_NativeAsyncClient):
    """An asyncio client: ``await client.call("add", 1, 2)``.

    Calls never block the event loop. ``call`` returns a `CallFuture` of the
    running loop: await it, or pass it to ``asyncio.gather``, ``wait_for``,
    ``shield`` or ``create_task``. Any number of tasks may call at once (up
    to 16,777,216 calls in flight on one connection); the calls of one loop
    iteration leave in one write and are pipelined on one connection.
    Cancelling an awaiting task forgets its call (a late reply is
    ignored).

    Without handlers the client is driven by the event loop it is used from
    (``loop.add_reader``): replies wake their tasks with no thread hand-off.
    Use one client per event loop. With handlers (the server may call the
    client at any time), foorpc's I/O thread reads and hands replies to the
    loop. Handlers (``handlers=``, ``notification_handlers=``) must be plain
    callables: one that returns an awaitable (an ``async def``) answers the
    server with a ``TypeError`` error reply instead of being awaited.

    Create it with ``await AsyncClient.connect(address)`` (connects without
    blocking the loop) or ``AsyncClient(address)`` (connects right away,
    blocking for at most ``connect_timeout``). ``limits``: a dict overriding
    some of `foorpc.DEFAULT_LIMITS` by name, as for `Client`.
    """

    @classmethod
    async def connect(
        cls,
        address: str,
        *,
        connect_timeout: float = 10.0,
        timeout: Optional[float] = 30.0,
        handlers: Optional[Dict[str, Callable[..., Any]]] = None,
        notification_handlers: Optional[Dict[str, Callable[..., Any]]] = None,
        limits: Optional[Dict[str, int]] = None,
    ) -> "AsyncClient":
        """Connects in a worker thread, so the event loop keeps running."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None,
            lambda: cls(
                address,
                connect_timeout=connect_timeout,
                timeout=timeout,
                handlers=handlers,
                notification_handlers=notification_handlers,
                limits=limits,
            ),
        )

    def __getattr__(self, name: str) -> Callable[..., CallFuture]:
        if name.startswith("_"):
            raise AttributeError(name)
        call = self.call

        def stub(*params: Any, timeout: Optional[float] = None) -> CallFuture:
            return call(name, *params, timeout=timeout)

        stub.__name__ = stub.__qualname__ = name
        return stub

    async def close(self) -> None:
        """Closes the connection; pending calls fail with ConnectionLostError."""
        self._close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._close()

    def __repr__(self) -> str:
        return f"<foorpc.AsyncClient {self.address}>"
