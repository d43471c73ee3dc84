"""asyncio support: `AsyncClient` and the helpers the native module calls."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Dict, Optional

from ._native import Client as _NativeClient
from ._native import Completions as _Completions

__all__ = ["AsyncClient"]


def _set_result(fut: "asyncio.Future[Any]", value: Any) -> None:
    # Called on the future's loop (via call_soon_threadsafe) by foorpc's I/O thread.
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: "asyncio.Future[Any]", exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class AsyncClient:
    """An asyncio client: ``await client.call("add", 1, 2)``.

    Calls never block the event loop: the request is written and the reply
    delivered to the awaiting task by foorpc's I/O thread. Any number of
    tasks may call concurrently; the calls are pipelined on one connection.
    Cancelling an awaiting task forgets its call (a late reply is ignored).

    Create it with ``await AsyncClient.connect(address)`` (connects without
    blocking the loop) or ``AsyncClient(address)`` (connects right away,
    blocking for at most ``connect_timeout``).
    """

    __slots__ = ("_c", "_loop", "_completions", "_corked")

    def __init__(
        self,
        address: str,
        *,
        connect_timeout: float = 10.0,
        timeout: Optional[float] = 30.0,
        handlers: Optional[Dict[str, Callable[..., Any]]] = None,
        notification_handlers: Optional[Dict[str, Callable[..., Any]]] = None,
    ) -> None:
        self._c = _NativeClient(
            address,
            connect_timeout=connect_timeout,
            timeout=timeout,
            handlers=handlers,
            notification_handlers=notification_handlers,
        )
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._completions: Optional[_Completions] = None
        self._corked = False

    @classmethod
    async def connect(
        cls,
        address: str,
        *,
        connect_timeout: float = 10.0,
        timeout: Optional[float] = 30.0,
        handlers: Optional[Dict[str, Callable[..., Any]]] = None,
        notification_handlers: Optional[Dict[str, Callable[..., Any]]] = None,
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
            ),
        )

    async def call(self, method: str, *params: Any, timeout: Optional[float] = None) -> Any:
        """Calls ``method(*params)``; ``timeout`` as in `Client.call`."""
        loop = asyncio.get_running_loop()
        completions = self._completions
        if loop is not self._loop or completions is None:
            # Replies reach this loop's futures in batches through one Completions.
            completions = self._completions = _Completions(loop.call_soon_threadsafe)
            self._loop = loop
        fut = loop.create_future()
        if not self._corked:
            # The calls made until the loop comes round again leave in one write.
            self._c._cork()
            self._corked = True
            loop.call_soon(self._uncork)
        msgid = self._c._call_future(completions, fut, method, params, timeout)
        try:
            return await fut
        except asyncio.CancelledError:
            self._c._cancel(msgid)
            raise

    def _uncork(self) -> None:
        self._corked = False
        self._c._uncork()

    def notify(self, method: str, *params: Any) -> None:
        """Sends a notification (queued at once; does not wait)."""
        self._c.notify(method, *params)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        call = self.call

        async def stub(*params: Any, timeout: Optional[float] = None) -> Any:
            return await call(name, *params, timeout=timeout)

        stub.__name__ = stub.__qualname__ = name
        return stub

    async def close(self) -> None:
        """Closes the connection; pending calls fail with ConnectionLostError."""
        self._c.close()

    @property
    def closed(self) -> bool:
        return self._c.closed

    @property
    def pending_calls(self) -> int:
        """Calls waiting for their reply."""
        return self._c.pending_calls

    @property
    def address(self) -> str:
        return self._c.address

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._c.close()

    def __repr__(self) -> str:
        return f"<foorpc.AsyncClient {self._c.address}>"
