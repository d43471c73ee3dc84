"""The server: handlers registered with decorators, served by the Rust core."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set, Tuple, TypeVar, Union, overload

from . import _native
from ._native import Peer, Responder

__all__ = ["Server"]

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("foorpc")


def _wants_peer(func: Callable[..., Any]) -> bool:
    """True if the first parameter is named ``peer`` or annotated ``Peer``."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return False
    if not params or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        return False
    p = params[0]
    return p.name == "peer" or p.annotation in (Peer, "Peer", "foorpc.Peer")


def _is_async(func: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)
    )


class Server:
    """A MessagePack-RPC server.

    ::

        server = foorpc.Server()

        @server.method
        def add(a, b):
            return a + b

        @server.method("sleep")
        async def sleep(seconds):
            await asyncio.sleep(seconds)

        server.bind("tcp://127.0.0.1:0")   # returns the real address
        server.serve_forever()             # or server.start() ... server.shutdown()

    Plain functions run on foorpc's worker pool (each takes the GIL while it
    runs), so a slow handler never holds up I/O or other calls. ``async def``
    handlers run on an asyncio loop: ``loop`` if given (you run it), else one
    the server runs in a background thread. A handler that declares a first
    parameter named ``peer`` (or annotated ``foorpc.Peer``) gets the calling
    connection as a `Peer` and can call back into the client.

    A handler's exception becomes the error reply ``[0, "TypeName: message"]``;
    raising ``foorpc.RemoteError(obj)`` sends ``obj`` unchanged (a falsy
    ``obj``, which peers would read as success, sends
    ``[0, "RemoteError: <repr(obj)>"]``).

    ``timeout``: default timeout of handlers' calls back to clients;
    ``drain_timeout``: how long `shutdown` waits for calls in flight;
    ``limits``: a dict overriding some of `foorpc.DEFAULT_LIMITS` by name
    (``{"max_message_size": 1 << 20}``), the limits it applies to clients.
    """

    def __init__(
        self,
        *,
        timeout: Optional[float] = 30.0,
        drain_timeout: float = 10.0,
        loop: Optional[asyncio.AbstractEventLoop] = None,
        limits: Optional[Dict[str, int]] = None,
    ) -> None:
        self._core = _native.ServerCore(timeout=timeout, drain_timeout=drain_timeout, limits=limits)
        self._loop = loop
        self._own_loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_thread: Optional[threading.Thread] = None
        self._has_async = False
        self._tasks: Set["asyncio.Task[Any]"] = set()
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    # ---- registration -------------------------------------------------

    @overload
    def method(self, name: F) -> F: ...
    @overload
    def method(self, name: Optional[str] = None) -> Callable[[F], F]: ...

    def method(self, name: Union[str, F, None] = None) -> Union[F, Callable[[F], F]]:
        """Decorator registering a method handler: ``@server.method`` (the
        function's name) or ``@server.method("name")``."""
        if callable(name):
            return self.add_method(name.__name__, name)

        def deco(func: F) -> F:
            return self.add_method(name or func.__name__, func)

        return deco

    def add_method(self, name: str, func: F) -> F:
        """Registers ``func`` as the handler of method ``name``.

        An ``async def`` function (or an object whose ``__call__`` is one) is
        awaited on the server's loop; any other callable runs on the worker
        pool, and if it returns an awaitable (an ``async def`` behind a
        decorator that is not itself ``async def``) the caller gets a
        ``TypeError`` error reply saying to declare it ``async def``."""
        pass_peer = _wants_peer(func)
        if _is_async(func):
            self._has_async = True
            self._core.add_method(name, self._deferred(func), pass_peer=pass_peer, deferred=True)
        else:
            self._core.add_method(name, func, pass_peer=pass_peer)
        return func

    @overload
    def notification(self, name: F) -> F: ...
    @overload
    def notification(self, name: Optional[str] = None) -> Callable[[F], F]: ...

    def notification(self, name: Union[str, F, None] = None) -> Union[F, Callable[[F], F]]:
        """Decorator registering a notification handler. Plain functions run on
        the worker pool, one at a time per connection in arrival order; a
        plain method handler called after them starts once they have run (a
        slow one holds up only its own connection's later notifications and
        plain calls). ``async def`` ones are started on the loop in arrival
        order."""
        if callable(name):
            return self.add_notification(name.__name__, name)

        def deco(func: F) -> F:
            return self.add_notification(name or func.__name__, func)

        return deco

    def add_notification(self, name: str, func: F) -> F:
        """Registers ``func`` as the handler of notification ``name``."""
        self._core.add_notification(
            name, self._notification_entry(name, func), pass_peer=_wants_peer(func), deferred=_is_async(func)
        )
        return func

    def notification_fallback(self, func: F) -> F:
        """Decorator registering the handler of every notification that has no
        handler of its own: ``def f(method, *params)`` (``peer`` first if asked)."""
        self._core.add_notification_fallback(
            self._notification_entry("*", func), pass_peer=_wants_peer(func), deferred=_is_async(func)
        )
        return func

    def _notification_entry(self, name: str, func: Callable[..., Any]) -> Callable[..., None]:
        """What foorpc calls for a notification handler: async ones are
        started on the loop (from the I/O thread), plain ones run on the
        worker pool, in arrival order, with their exceptions logged."""
        if _is_async(func):
            self._has_async = True
            afunc: Callable[..., Awaitable[Any]] = func

            def entry(*args: Any) -> None:
                self._handler_loop().call_soon_threadsafe(self._spawn, self._notify_task(afunc, args))

            return entry

        def guarded(*args: Any) -> None:
            try:
                out = func(*args)
            except Exception:
                log.exception("foorpc: notification handler %r raised", name)
                return
            if inspect.isawaitable(out):
                # Not awaited: an async function behind a plain decorator.
                close = getattr(out, "close", None)
                if close is not None:
                    close()
                log.error(
                    "foorpc: notification handler %r returned a %s, which foorpc does not await: "
                    "declare the handler `async def`",
                    name,
                    type(out).__name__,
                )

        return guarded

    # ---- async handlers -------------------------------------------------

    def _handler_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop or self._own_loop
        if loop is None:
            raise RuntimeError("the server's event loop is not running")
        return loop

    def _deferred(self, func: Callable[..., Awaitable[Any]]) -> Callable[[Responder, Tuple[Any, ...]], None]:
        def entry(responder: Responder, args: Tuple[Any, ...]) -> None:
            # Runs on foorpc's I/O thread: hand the call over to the loop.
            self._handler_loop().call_soon_threadsafe(self._spawn, self._answer(func, args, responder))

        return entry

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _answer(func: Callable[..., Awaitable[Any]], args: Tuple[Any, ...], responder: Responder) -> None:
        try:
            result = await func(*args)
        except BaseException as e:
            # Every exception, CancelledError, SystemExit and KeyboardInterrupt
            # included, becomes the error reply, as in a plain handler: none
            # escapes the task, where asyncio would end the server's loop.
            responder.exception(e)
            return
        responder.ok(result)

    @staticmethod
    async def _notify_task(func: Callable[..., Awaitable[Any]], args: Tuple[Any, ...]) -> None:
        try:
            await func(*args)
        except asyncio.CancelledError:
            raise
        except BaseException:
            # SystemExit and KeyboardInterrupt too: they would end the loop.
            log.exception("foorpc: notification handler %r raised", func)

    def _start_loop(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                tasks = asyncio.all_tasks(loop)
                for t in tasks:
                    t.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        t = threading.Thread(target=run, name="foorpc-server-asyncio", daemon=True)
        t.start()
        ready.wait()
        self._own_loop, self._loop_thread = loop, t

    # ---- serving --------------------------------------------------------

    def bind(self, address: str) -> str:
        """Binds ``tcp://HOST:PORT`` (port 0: a free port) or ``unix:///PATH``
        now and returns the bound address with its real port. May be called
        more than once, before `start`. An address the OS refuses raises
        ``OSError(errno, strerror)`` as `socket.socket.bind` does (errno
        ``EADDRINUSE`` for a port in use, `FileNotFoundError`, ...); an
        invalid one `ValueError`."""
        return self._core.bind(address)

    @property
    def addresses(self) -> List[str]:
        """The bound addresses, with real ports."""
        return self._core.addresses

    @property
    def address(self) -> str:
        """The first bound address."""
        addrs = self._core.addresses
        if not addrs:
            raise RuntimeError("no address bound yet")
        return addrs[0]

    @property
    def running(self) -> bool:
        return self._core.running

    @property
    def connection_count(self) -> int:
        return self._core.connection_count

    def start(self) -> None:
        """Starts serving in the background and returns."""
        with self._lock:
            if self._has_async and self._loop is None and self._own_loop is None:
                self._start_loop()
            self._core.start()

    def serve_forever(self) -> None:
        """Serves in the foreground until `shutdown` (called from another
        thread or a handler) has finished, or Ctrl-C (then shuts down and
        re-raises KeyboardInterrupt; a second Ctrl-C stops waiting for the
        drain, which goes on by itself within ``drain_timeout``)."""
        if not self._core.running:
            self.start()
        try:
            while not self._stopped.wait(0.2):
                pass
        except KeyboardInterrupt:
            self.shutdown()
            raise

    def shutdown(self) -> None:
        """Graceful shutdown: stop accepting, let calls in flight and plain
        notification handlers of notifications already read finish (up to
        ``drain_timeout``), close connections, stop the server's own loop.
        Blocks until done. Called from one of this server's own handlers
        (plain or ``async def``), it only starts the shutdown, which goes on
        on a thread of its own, and returns at once, so that the handler's
        reply is still sent; `serve_forever` returns once it is done.
        Safe to call more than once and from any thread."""
        if self._in_own_handler():
            threading.Thread(target=self._shutdown, name="foorpc-server-shutdown").start()
            return
        self._shutdown()

    def _in_own_handler(self) -> bool:
        """True on a thread where waiting for the drain would wait for the
        caller itself: one running a handler of this server (worker pool or
        I/O thread), or the thread of this server's asyncio loop."""
        if self._core.in_handler():
            return True
        loop = self._loop or self._own_loop
        if loop is None:
            return False
        try:
            return asyncio.get_running_loop() is loop
        except RuntimeError:
            return False

    def _shutdown(self) -> None:
        try:
            self._core.shutdown()
            with self._lock:
                loop, thread = self._own_loop, self._loop_thread
                self._own_loop = self._loop_thread = None
            if loop is not None and thread is not None:
                try:
                    loop.call_soon_threadsafe(loop.stop)
                except RuntimeError:
                    pass  # the loop has already stopped and closed
                if thread is not threading.current_thread():
                    thread.join(10)
        finally:
            self._stopped.set()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
