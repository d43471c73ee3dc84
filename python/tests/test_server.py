"""foorpc.Server: decorators, sync and async handlers, errors, callbacks,
notifications, lifecycle."""

from __future__ import annotations

import asyncio
import errno
import functools
import gc
import logging
import os
import socket
import threading
import textwrap
import time
import warnings
import weakref
from pathlib import Path
from typing import Any, Iterator

import pytest
from child_scripts import assert_no_crash, run_python, seconds_after, server_with_a_handler_called

import foorpc


@pytest.fixture
def server() -> Iterator[foorpc.Server]:
    s = foorpc.Server()
    yield s
    s.shutdown()


def serve(s: foorpc.Server) -> str:
    addr = s.bind("tcp://127.0.0.1:0")
    s.start()
    return addr


def test_decorator_forms(server: foorpc.Server) -> None:
    @server.method
    def add(a: int, b: int) -> int:
        return a + b

    @server.method("mul")
    def multiply(a: int, b: int) -> int:
        return a * b

    @server.method()
    def kw(a: int, b: int = 10) -> int:
        return a + b

    assert add(1, 2) == 3  # the decorator returns the function unchanged
    addr = serve(server)
    assert addr.startswith("tcp://127.0.0.1:") and not addr.endswith(":0")
    assert server.address == addr and server.addresses == [addr]
    with foorpc.Client(addr) as c:
        assert c.add(1, 2) == 3
        assert c.mul(6, 7) == 42
        assert c.kw(1) == 11
        with pytest.raises(foorpc.RemoteError) as ei:
            c.multiply(1, 2)
        assert ei.value.code == 1


def test_values_reach_handler_with_python_types(server: foorpc.Server) -> None:
    seen: list[Any] = []

    @server.method
    def take(*args: Any) -> Any:
        seen.append(args)
        return [type(a).__name__ for a in args]

    addr = serve(server)
    with foorpc.Client(addr) as c:
        got = c.take(None, True, 1, 2**64 - 1, 1.5, foorpc.Float32(1.0), "s", b"b", bytearray(b"x"),
                     (1,), {"k": 1}, foorpc.ExtType(1, b"e"))
    assert got == ["NoneType", "bool", "int", "int", "float", "Float32", "str", "bytes", "bytes",
                   "list", "dict", "ExtType"]


def test_exception_becomes_error_reply(server: foorpc.Server) -> None:
    @server.method
    def boom() -> None:
        raise ValueError("bad value")

    @server.method
    def custom() -> None:
        raise foorpc.RemoteError({"why": "custom", "n": [1, 2]})

    @server.method
    def bad_result() -> Any:
        return object()

    @server.method
    def typeerr(a: int) -> int:
        return a

    addr = serve(server)
    with foorpc.Client(addr) as c:
        with pytest.raises(foorpc.RemoteError) as ei:
            c.boom()
        assert ei.value.error == [0, "ValueError: bad value"]
        assert ei.value.code == 0 and ei.value.message == "ValueError: bad value"
        with pytest.raises(foorpc.RemoteError) as ei:
            c.custom()
        assert ei.value.error == {"why": "custom", "n": [1, 2]} and ei.value.code is None
        with pytest.raises(foorpc.RemoteError, match="TypeError: cannot send a value of type object"):
            c.bad_result()
        with pytest.raises(foorpc.RemoteError, match="TypeError"):
            c.typeerr(1, 2, 3)


def test_error_reply_on_the_wire(server: foorpc.Server) -> None:
    """The exact bytes: [1, msgid, [0, "TypeName: message"], nil]."""
    import socket

    import msgpack

    @server.method
    def boom() -> None:
        raise KeyError("k")

    addr = serve(server)
    host, port = addr[len("tcp://"):].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(msgpack.packb([0, 7, "boom", []]))
        u = msgpack.Unpacker()
        while True:
            u.feed(s.recv(4096))
            for msg in u:
                assert msg == [1, 7, [0, "KeyError: 'k'"], None]
                return


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_falsy_remote_error_object_is_not_sent(server: foorpc.Server, kind: str) -> None:
    """RemoteError(obj) with a falsy obj would read as success to a peer that
    tests `if error:`; it goes out as [0, "RemoteError: <repr>"]."""
    import socket

    import msgpack

    falsy: list[Any] = [None, False, 0, 0.0, "", b"", [], {}]
    for i, obj in enumerate(falsy):
        def raiser(obj: Any = obj) -> None:
            raise foorpc.RemoteError(obj)

        async def araiser(obj: Any = obj) -> None:
            raise foorpc.RemoteError(obj)

        server.add_method(f"f{i}", raiser if kind == "sync" else araiser)

    addr = serve(server)
    host, port = addr[len("tcp://"):].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        for i in range(len(falsy)):
            s.sendall(msgpack.packb([0, i, f"f{i}", []]))
        u = msgpack.Unpacker(strict_map_key=False)
        replies: dict[int, Any] = {}
        while len(replies) < len(falsy):
            data = s.recv(4096)
            assert data, "connection closed"
            u.feed(data)
            for msg in u:
                replies[msg[1]] = msg
    for i, obj in enumerate(falsy):
        assert replies[i] == [1, i, [0, f"RemoteError: {obj!r}"], None]


def test_sync_handlers_run_concurrently(server: foorpc.Server) -> None:
    @server.method
    def slow(x: int) -> int:
        time.sleep(0.3)
        return x

    @server.method
    def fast(x: int) -> int:
        return x

    addr = serve(server)
    with foorpc.Client(addr) as c:
        results: list[int] = []
        ts = [threading.Thread(target=lambda i=i: results.append(c.slow(i))) for i in range(10)]
        t0 = time.monotonic()
        for t in ts:
            t.start()
        time.sleep(0.05)
        assert c.fast(1) == 1
        assert time.monotonic() - t0 < 0.25  # not held up by the slow ones
        for t in ts:
            t.join()
        assert sorted(results) == list(range(10))
        assert time.monotonic() - t0 < 2


def test_async_handlers(server: foorpc.Server) -> None:
    @server.method
    async def asleep(ms: int) -> int:
        await asyncio.sleep(ms / 1000)
        return ms

    @server.method
    async def araise() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("async failure")

    addr = serve(server)
    with foorpc.Client(addr) as c:
        results: list[int] = []
        ts = [threading.Thread(target=lambda: results.append(c.asleep(200))) for _ in range(50)]
        t0 = time.monotonic()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert results == [200] * 50
        assert time.monotonic() - t0 < 2
        with pytest.raises(foorpc.RemoteError) as ei:
            c.araise()
        assert ei.value.error == [0, "RuntimeError: async failure"]


def test_async_handlers_on_user_loop() -> None:
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    try:
        server = foorpc.Server(loop=loop)
        ran_on: list[Any] = []

        @server.method
        async def where() -> str:
            ran_on.append(asyncio.get_running_loop())
            return "ok"

        addr = serve(server)
        with foorpc.Client(addr) as c:
            assert c.where() == "ok"
        assert ran_on == [loop]
        server.shutdown()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
        loop.close()


def test_callback_into_client(server: foorpc.Server) -> None:
    """A handler with a first parameter named `peer` calls back into its client."""

    @server.method
    def ask(peer: foorpc.Peer, x: int) -> Any:
        assert isinstance(peer, foorpc.Peer)
        return peer.call("double", x) + 1

    @server.method
    async def aask(peer, x):  # type: ignore[no-untyped-def]
        return await peer.acall("double", x)

    @server.method
    def tell(peer: foorpc.Peer, msg: str) -> None:
        peer.notify("told", msg)

    addr = serve(server)
    told: list[str] = []
    got = threading.Event()

    def on_told(msg: str) -> None:
        told.append(msg)
        got.set()

    with foorpc.Client(addr, handlers={"double": lambda x: 2 * x},
                       notification_handlers={"told": on_told}) as c:
        assert c.ask(20) == 41
        assert c.aask(21) == 42
        assert c.tell("hi") is None
        assert got.wait(5) and told == ["hi"]
        with pytest.raises(foorpc.RemoteError, match="unknown method"):
            c.call("aask_missing")


def _logged(func: Any) -> Any:
    """An ordinary decorator: the wrapper is not `async def`."""

    @functools.wraps(func)
    def wrapper(*args: Any) -> Any:
        return func(*args)

    return wrapper


def test_plain_handler_returning_a_coroutine_is_a_clear_type_error(
    server: foorpc.Server, caplog: pytest.LogCaptureFixture
) -> None:
    """An `async def` behind a plain decorator runs as a plain handler: the
    coroutine it returns is refused with a TypeError that names the handler
    and says to declare it `async def`, and it is closed (no "never
    awaited" warning). A client's handlers must be plain callables."""

    @server.method
    @_logged
    async def add(a: int, b: int) -> int:
        return a + b

    @server.notification
    @_logged
    async def note() -> None:
        pass

    @server.method
    def ask(peer: foorpc.Peer, x: int) -> Any:
        return peer.call("double", x)

    async def double(x: int) -> int:
        return 2 * x

    addr = serve(server)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with foorpc.Client(addr, timeout=10, handlers={"double": double}) as c:
            with pytest.raises(foorpc.RemoteError) as ei:
                c.add(1, 2)
            assert ei.value.code == 0 and ei.value.message is not None
            assert ei.value.message.startswith("TypeError: handler ")
            assert "add" in ei.value.message and "coroutine" in ei.value.message
            assert "declare the handler `async def`" in ei.value.message
            with pytest.raises(foorpc.RemoteError) as ei:
                c.ask(2)
            assert ei.value.message is not None
            assert ei.value.message.startswith("TypeError: handler ")
            assert "double" in ei.value.message
            assert "a client's handlers must be plain callables" in ei.value.message
            with caplog.at_level(logging.ERROR, logger="foorpc"):
                c.notify("note")
                deadline = time.monotonic() + 5
                while "declare the handler `async def`" not in caplog.text and time.monotonic() < deadline:
                    time.sleep(0.01)
            assert "notification handler 'note' returned a coroutine" in caplog.text
        gc.collect()
    assert [w for w in caught if "never awaited" in str(w.message)] == []


def test_notifications_in_order(server: foorpc.Server) -> None:
    seen: list[int] = []
    done = threading.Event()

    @server.notification
    def tick(i: int) -> None:
        seen.append(i)
        if i == 999:
            done.set()

    @server.notification("raises")
    def raises() -> None:
        raise RuntimeError("ignored (logged)")

    addr = serve(server)
    with foorpc.Client(addr) as c:
        c.notify("raises")
        c.notify("nobody_listens", 1)
        for i in range(1000):
            c.notify("tick", i)
        assert done.wait(10)
    assert seen == list(range(1000))


def test_a_slow_notification_handler_holds_up_only_its_own_connection(server: foorpc.Server) -> None:
    """Plain notification handlers run off the I/O thread, one at a time per
    connection: while one waits, that connection's later notifications and
    plain calls wait in order behind it (a call made after notifications
    finds them handled), and other connections go on."""
    seen: list[int] = []
    release = threading.Event()

    @server.notification
    def note(i: int) -> None:
        if i == 0:
            assert release.wait(10)
        seen.append(i)

    @server.method
    def seen_so_far() -> list[int]:
        return list(seen)

    addr = serve(server)
    with foorpc.Client(addr) as a, foorpc.Client(addr) as b:
        for i in range(50):
            a.notify("note", i)
        got: list[Any] = []
        asking = threading.Thread(target=lambda: got.append(a.seen_so_far(timeout=10)))
        asking.start()
        for i in range(100, 110):
            b.notify("note", i)
        assert b.seen_so_far(timeout=5) == list(range(100, 110)), "b was held up by a's notifications"
        asking.join(0.2)
        assert not got, "a plain call ran before the notifications before it"
        release.set()
        asking.join(10)
        assert got and got[0] == list(range(100, 110)) + list(range(50)), got


def test_shutdown_waits_for_plain_notification_handlers() -> None:
    """shutdown() returns once the handlers of notifications already read
    have run, as it does for calls in flight."""
    server = foorpc.Server()
    handled: list[int] = []

    @server.notification
    def note(i: int) -> None:
        time.sleep(0.02)
        handled.append(i)

    @server.method
    async def ping() -> str:  # started at once, ahead of the notifications
        return "pong"

    addr = serve(server)
    with foorpc.Client(addr) as c:
        for i in range(10):
            c.notify("note", i)
        assert c.ping() == "pong"  # read after them: they were read too
        server.shutdown()
        assert handled == list(range(10))


def test_notification_whose_params_cannot_become_python_values_is_logged(
    server: foorpc.Server, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A map key that is a map has no Python form: the notification is
    dropped with a warning on the ``foorpc`` logger (not an unraisable
    exception), and the next one is delivered."""
    import socket

    import msgpack

    unraisable: list[object] = []
    monkeypatch.setattr("sys.unraisablehook", unraisable.append)
    seen: list[object] = []
    done = threading.Event()

    @server.notification
    def note(x: object) -> None:
        seen.append(x)
        done.set()

    addr = serve(server)
    host, port = addr[len("tcp://"):].rsplit(":", 1)
    with caplog.at_level("WARNING", logger="foorpc"):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(bytes.fromhex("9302a46e6f7465918181010203"))  # [2, "note", [{{1: 2}: 3}]]
            s.sendall(msgpack.packb([2, "note", [7]]))
            assert done.wait(10)
    assert seen == [7]
    assert unraisable == []
    dropped = [r for r in caplog.records if r.name == "foorpc" and "'note' dropped" in r.getMessage()]
    assert len(dropped) == 1, caplog.records
    assert "unhashable" in dropped[0].getMessage()


def test_notification_fallback_takes_every_other_name(server: foorpc.Server) -> None:
    seen: list[tuple[str, tuple[object, ...]]] = []
    done = threading.Event()

    @server.notification
    def named(x: int) -> None:
        seen.append(("named", (x,)))

    @server.notification_fallback
    def anything(method: str, *params: object) -> None:
        seen.append((method, params))
        if method == "last":
            done.set()

    addr = serve(server)
    with foorpc.Client(addr) as c:
        c.notify("first", 1, b"x")
        c.notify("named", 2)
        c.notify("last")
        assert done.wait(10)
    assert seen == [("first", (1, b"x")), ("named", (2,)), ("last", ())]


def test_async_notifications(server: foorpc.Server) -> None:
    seen: list[int] = []
    done = threading.Event()

    @server.notification
    async def atick(i: int) -> None:
        seen.append(i)
        if i == 99:
            done.set()

    addr = serve(server)
    with foorpc.Client(addr) as c:
        for i in range(100):
            c.notify("atick", i)
        assert done.wait(10)
    assert seen == list(range(100))


@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt])
def test_async_handler_raising_base_exception_is_answered(
    server: foorpc.Server, exc: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    """SystemExit/KeyboardInterrupt from an async handler become the error
    reply, as from a plain one, and the server's loop keeps running."""
    noted = threading.Event()

    @server.method
    async def boom() -> None:
        raise exc("from handler")

    @server.method
    async def ok() -> str:
        return "ok"

    @server.notification
    async def note_boom() -> None:
        noted.set()
        raise exc("from notification")

    addr = serve(server)
    with foorpc.Client(addr, timeout=10) as c:
        with pytest.raises(foorpc.RemoteError) as ei:
            c.boom()
        assert ei.value.error == [0, f"{exc.__name__}: from handler"]
        assert c.ok() == "ok"
        c.notify("note_boom")
        assert noted.wait(10)
        assert c.ok() == "ok"  # the notification's exception did not end the loop
    assert any(r.exc_info and r.exc_info[0] is exc for r in caplog.records)
    server.shutdown()
    assert not server.running


def test_shutdown_after_the_servers_loop_closed() -> None:
    """shutdown() still completes (and serve_forever returns) when the
    server's own asyncio loop has already stopped and closed."""
    server = foorpc.Server()

    @server.method
    async def ok() -> str:
        return "ok"

    server.bind("tcp://127.0.0.1:0")
    th = threading.Thread(target=server.serve_forever)
    th.start()
    deadline = time.monotonic() + 5
    while not server.running and time.monotonic() < deadline:
        time.sleep(0.01)
    loop, loop_thread = server._own_loop, server._loop_thread
    assert loop is not None and loop_thread is not None
    loop.call_soon_threadsafe(loop.stop)
    loop_thread.join(5)
    assert loop.is_closed()
    server.shutdown()
    th.join(5)
    assert not th.is_alive() and not server.running


def test_serve_forever_and_shutdown() -> None:
    server = foorpc.Server()
    server.add_method("ping", lambda: "pong")
    addr = server.bind("tcp://127.0.0.1:0")
    th = threading.Thread(target=server.serve_forever)
    th.start()
    deadline = time.monotonic() + 5
    while not server.running and time.monotonic() < deadline:
        time.sleep(0.01)
    with foorpc.Client(addr) as c:
        assert c.ping() == "pong"
        server.shutdown()
        th.join(5)
        assert not th.is_alive()
        with pytest.raises(foorpc.ConnectionLostError):
            c.ping()
    server.shutdown()  # idempotent


@pytest.mark.parametrize("kind", ["plain", "async", "notification"])
def test_shutdown_from_a_handler_returns_and_the_reply_is_sent(kind: str) -> None:
    """shutdown() in one of the server's own handlers only starts the
    shutdown: the drain would otherwise wait for that very handler (for all
    of drain_timeout) and its reply would be lost. serve_forever() still
    returns once the shutdown is done."""
    server = foorpc.Server(drain_timeout=30)
    returned = threading.Event()

    def stop() -> str:
        server.shutdown()
        returned.set()
        return "stopping"

    if kind == "plain":
        server.add_method("stop", stop)
    elif kind == "async":

        async def astop() -> str:
            return stop()

        server.add_method("stop", astop)
    else:
        server.add_notification("stop", stop)
    addr = server.bind("tcp://127.0.0.1:0")
    th = threading.Thread(target=server.serve_forever)
    th.start()
    try:
        with foorpc.Client(addr, timeout=10) as c:
            start = time.monotonic()
            if kind == "notification":
                c.notify("stop")
                assert returned.wait(10)
            else:
                assert c.call("stop") == "stopping"
            assert returned.is_set()
            assert time.monotonic() - start < 5  # well under drain_timeout
        th.join(10)
        assert not th.is_alive()
        assert not server.running
    finally:
        server.shutdown()
        th.join(10)


def test_graceful_shutdown_finishes_calls_in_flight() -> None:
    server = foorpc.Server()

    @server.method
    def slow() -> str:
        time.sleep(0.3)
        return "done"

    addr = serve(server)
    with foorpc.Client(addr) as c:
        out: list[Any] = []
        t = threading.Thread(target=lambda: out.append(c.slow()))
        t.start()
        time.sleep(0.1)
        server.shutdown()
        t.join(5)
        assert out == ["done"]


def test_dropping_a_running_server_finishes_calls_in_flight() -> None:
    """A running server freed without shutdown() shuts down without holding
    the GIL: its handler in flight still runs, its reply is sent, and the
    thread that freed it is not held up for the drain."""

    server = foorpc.Server(drain_timeout=5)
    started = threading.Event()

    @server.method
    def slow() -> str:
        started.set()
        time.sleep(0.3)
        return "done"

    addr = serve(server)
    with foorpc.Client(addr, timeout=10) as c:
        out: list[Any] = []

        def call() -> None:
            try:
                out.append(c.slow())
            except foorpc.RpcError as e:
                out.append(e)

        t = threading.Thread(target=call)
        t.start()
        assert started.wait(5)
        t0 = time.monotonic()
        del server
        gc.collect()
        freed_in = time.monotonic() - t0
        t.join(10)
    assert out == ["done"]
    assert freed_in < 2.5  # not the 5 s drain


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _server_referred_to_by_its_handler(kind: str) -> "weakref.ref[foorpc.Server]":
    """Starts, uses and shuts down a server whose handler refers to it (a
    sync handler naming it, or any async handler, which the server wraps in
    a closure over itself); returns a weak reference to it."""
    server = foorpc.Server()
    if kind == "sync":

        @server.method
        def ping() -> Any:
            return server.running

    else:

        @server.method
        async def ping() -> Any:
            return True

    addr = serve(server)
    with foorpc.Client(addr, timeout=10) as c:
        assert c.ping() is True
    server.shutdown()
    return weakref.ref(server)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_server_referred_to_by_its_handlers_is_freed(kind: str) -> None:
    """The cycle server -> handler -> server is collected, and the server's
    descriptors are released."""
    _server_referred_to_by_its_handler(kind)  # the first one's lazy setup
    gc.collect()
    before = _open_fds()
    refs = [_server_referred_to_by_its_handler(kind) for _ in range(5)]
    deadline = time.monotonic() + 10
    while any(r() is not None for r in refs) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.02)
    assert all(r() is None for r in refs)
    while _open_fds() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _open_fds() <= before


def test_bind_errors_are_plain_os_errors(tmp_path: Path) -> None:
    """A bind the OS refuses raises OSError(errno, strerror), as socket.bind
    does (the subclass Python picks for the errno), not ConnectionLostError."""
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as ei:
            foorpc.Server().bind(f"tcp://127.0.0.1:{port}")
        assert type(ei.value) is OSError
        assert ei.value.errno == errno.EADDRINUSE
        assert ei.value.strerror == os.strerror(errno.EADDRINUSE)
    finally:
        taken.close()
    with pytest.raises(FileNotFoundError) as ei:
        foorpc.Server().bind(f"unix://{tmp_path}/no/such/dir.sock")
    assert ei.value.errno == errno.ENOENT
    assert not isinstance(ei.value, foorpc.RpcError)
    with pytest.raises(ValueError, match="invalid address"):
        foorpc.Server().bind("tcp://127.0.0.1:99999")


def test_context_manager_and_registration_rules() -> None:
    with foorpc.Server() as server:
        server.add_method("x", lambda: 1)
        with pytest.raises(RuntimeError, match="bind"):
            server.start()
        server.bind("tcp://127.0.0.1:0")
        server.start()
        with pytest.raises(RuntimeError, match="already started"):
            server.add_method("y", lambda: 2)
        with pytest.raises(ValueError):
            foorpc.Server().bind("nope://x")
    assert not server.running


def test_serve_forever_stops_on_ctrl_c() -> None:
    import _thread

    server = foorpc.Server()
    server.add_method("ping", lambda: "pong")
    server.bind("tcp://127.0.0.1:0")
    threading.Timer(0.3, _thread.interrupt_main).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        server.serve_forever()
    assert time.monotonic() - t0 < 3
    assert not server.running


SERVE_THEN_CTRL_C_TWICE = server_with_a_handler_called(
    "slow", "time.sleep(5)", server_args="drain_timeout=60"
) + textwrap.dedent(
    """
    def press_ctrl_c_twice() -> None:
        assert entered.wait(10)
        time.sleep(0.5)  # the main thread is in serve_forever by then
        os.kill(os.getpid(), signal.SIGINT)  # serve_forever shuts down, waiting for slow()
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGINT)  # and this one ends that wait

    threading.Thread(target=press_ctrl_c_twice, daemon=True).start()
    started = time.monotonic()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print(f"serve_forever raised after {time.monotonic() - started:.2f} s", flush=True)
    """
)


def test_a_second_ctrl_c_ends_serve_forevers_wait_for_the_drain() -> None:
    # The first Ctrl-C shuts down gracefully, waiting up to drain_timeout for
    # the 5 s handler; before, a second Ctrl-C was ignored until the drain
    # was done.
    done = run_python(SERVE_THEN_CTRL_C_TWICE)
    assert "serve_forever raised after" in done.stdout, done.stdout + done.stderr
    assert seconds_after(done.stdout, "raised after ") < 3.5, done.stdout  # the handler alone takes 5 s
    assert_no_crash(done.stderr)
