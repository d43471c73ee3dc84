"""AsyncClient driven by its event loop: the CallFuture protocol (create_task,
gather, shield, wait_for, contextvars, callbacks), timeouts, a peer that goes
away, writes larger than the socket buffer, and moving between loops."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import Any, List

import pytest

import foorpc


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_call_future_works_with_asyncio_helpers(calc: str) -> None:
    async def main() -> None:
        async with await foorpc.AsyncClient.connect(calc) as c:
            fut = c.call("add", 1, 2)
            assert isinstance(fut, foorpc.CallFuture)
            assert asyncio.isfuture(fut) and not fut.done()
            assert fut.get_loop() is asyncio.get_running_loop()
            assert await fut == 3
            assert fut.done() and fut.result() == 3 and fut.exception() is None
            # A finished future can be awaited again.
            assert await fut == 3

            task = asyncio.create_task(c.add(2, 2))
            assert await task == 4
            assert await asyncio.shield(c.add(3, 3)) == 6
            assert await asyncio.wait_for(c.add(4, 4), 5) == 8
            # Like a coroutine, it can be wrapped in a task (asyncio.wait takes tasks).
            done, _ = await asyncio.wait([asyncio.create_task(c.add(5, 5)), asyncio.create_task(c.add(6, 6))])
            assert sorted(f.result() for f in done) == [10, 12]

            res = await asyncio.gather(c.add(1, 1), c.fail("x"), return_exceptions=True)
            assert res[0] == 2 and isinstance(res[1], foorpc.RemoteError)

            failing = c.fail("boom")
            with pytest.raises(foorpc.RemoteError):
                await failing
            assert isinstance(failing.exception(), foorpc.RemoteError)

    run(main())


def test_pending_future_state_and_cancel_message(calc: str) -> None:
    async def main() -> None:
        async with await foorpc.AsyncClient.connect(calc) as c:
            fut = c.sleep_ms(2000)
            with pytest.raises(asyncio.InvalidStateError):
                fut.result()
            with pytest.raises(asyncio.InvalidStateError):
                fut.exception()
            assert c.pending_calls == 1
            assert fut.cancel("changed my mind")
            assert fut.cancelled() and not fut.cancel()
            assert c.pending_calls == 0
            with pytest.raises(asyncio.CancelledError, match="changed my mind"):
                await fut
            # gather reports a cancelled child with its message.
            other = c.sleep_ms(2000)
            other.cancel("stop")
            with pytest.raises(asyncio.CancelledError):
                await asyncio.gather(other)

    run(main())


def test_task_context_is_kept_across_calls(calc: str) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def main() -> None:
        async with await foorpc.AsyncClient.connect(calc) as c:

            async def worker(name: str) -> List[str]:
                var.set(name)
                seen = []
                for i in range(20):
                    assert await c.add(i, 1) == i + 1
                    seen.append(var.get())
                return seen

            names = [f"task{i}" for i in range(16)]
            results = await asyncio.gather(*(worker(n) for n in names))
            for name, seen in zip(names, results):
                assert seen == [name] * 20
            assert var.get() == "unset"

    run(main())


def test_done_callbacks_run_and_errors_reach_the_loop(calc: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: List[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        async with await foorpc.AsyncClient.connect(calc) as c:
            seen: List[Any] = []

            def bad(_f: Any) -> None:
                raise ValueError("callback failed")

            fut = c.add(1, 1)
            fut.add_done_callback(bad)
            fut.add_done_callback(lambda f: seen.append(f.result()))
            removed = c.add(2, 2)
            cb = seen.append
            removed.add_done_callback(cb)
            assert removed.remove_done_callback(cb) == 1
            assert await fut == 2 and await removed == 4
            await asyncio.sleep(0)
            assert seen == [2]
            assert [type(r.get("exception")) for r in reported] == [ValueError]
            # Registered after completion: scheduled on the loop, as asyncio does.
            fut.add_done_callback(lambda f: seen.append("late"))
            await asyncio.sleep(0)
            assert seen == [2, "late"]

    run(main())


def test_done_callbacks_keep_their_order_through_removal(calc: str) -> None:
    """Several callbacks run in registration order; removing one keeps the
    others in order, and a comparison that raises removes nothing."""

    class Unequal:
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("cannot compare")

        __hash__ = object.__hash__

    async def main() -> None:
        async with await foorpc.AsyncClient.connect(calc) as c:
            order: List[str] = []
            fut = c.add(1, 1)
            for name in ("a", "b", "c", "d"):
                fut.add_done_callback(lambda _f, name=name: order.append(name))
            drop = order.append
            fut.add_done_callback(drop)
            assert fut.remove_done_callback(drop) == 1
            assert fut.remove_done_callback(drop) == 0
            with pytest.raises(RuntimeError, match="cannot compare"):
                fut.remove_done_callback(Unequal())
            assert await fut == 2
            await asyncio.sleep(0)
            assert order == ["a", "b", "c", "d"]

    run(main())


def test_remove_done_callback_while_the_future_completes(calc: str) -> None:
    """A comparison that cancels the future: its callbacks still run, once."""

    async def main() -> None:
        async with await foorpc.AsyncClient.connect(calc) as c:
            fut = c.sleep_ms(2000)
            ran: List[str] = []
            fut.add_done_callback(lambda _f: ran.append("a"))

            class CancelsOnCompare:
                def __eq__(self, other: object) -> bool:
                    fut.cancel()
                    return False

                __hash__ = object.__hash__

            assert fut.remove_done_callback(CancelsOnCompare()) == 0
            assert fut.cancelled()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert ran == ["a"]

    run(main())


def test_per_call_timeout_earlier_than_the_armed_one(calc: str) -> None:
    async def main() -> None:
        async with await foorpc.AsyncClient.connect(calc, timeout=30) as c:
            slow = c.sleep_ms(3000)  # arms the timer for 30 s
            t0 = time.monotonic()
            with pytest.raises(foorpc.RpcTimeoutError):
                await c.sleep_ms(3000, timeout=0.2)
            assert time.monotonic() - t0 < 2
            assert not slow.done()
            slow.cancel()
            assert await c.add(1, 2) == 3

    run(main())


def test_peer_that_goes_away_fails_pending_calls() -> None:
    async def main() -> None:
        got_request = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)
            got_request.set()
            await asyncio.sleep(0.05)
            writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        c = await foorpc.AsyncClient.connect(f"tcp://127.0.0.1:{port}")
        calls = [c.call("anything", i) for i in range(10)]
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
        assert got_request.is_set()
        assert all(isinstance(r, foorpc.ConnectionLostError) for r in results)
        assert c.closed and c.pending_calls == 0
        with pytest.raises(foorpc.ConnectionLostError):
            await c.call("again")
        # The loop is not left spinning on the dead socket.
        t0 = time.process_time()
        await asyncio.sleep(0.2)
        assert time.process_time() - t0 < 0.15
        srv.close()
        await srv.wait_closed()

    run(main())


def test_requests_larger_than_the_socket_buffer(calc: str) -> None:
    """Writes that the socket cannot take at once finish when it has room."""

    async def main() -> None:
        async with await foorpc.AsyncClient.connect(calc) as c:
            blobs = [bytes([i]) * (3 << 20) for i in range(4)]
            results = await asyncio.gather(*(c.echo(b) for b in blobs))
            assert results == blobs
            assert await c.add(1, 2) == 3

    run(main())


def test_one_client_in_successive_loops(calc: str) -> None:
    c = foorpc.AsyncClient(calc)

    async def use(i: int) -> int:
        return int(await c.add(i, 1))

    assert [asyncio.run(use(i)) for i in range(3)] == [1, 2, 3]
    c._close()


def test_a_client_belongs_to_one_running_loop(calc: str) -> None:
    c = foorpc.AsyncClient(calc)
    started = threading.Event()
    release = threading.Event()

    async def hold() -> None:
        assert await c.add(1, 1) == 2
        started.set()
        while not release.is_set():
            await asyncio.sleep(0.01)

    t = threading.Thread(target=asyncio.run, args=(hold(),))
    t.start()
    try:
        assert started.wait(5)

        async def other() -> None:
            with pytest.raises(RuntimeError, match="one client per event loop"):
                c.call("add", 1, 1)

        asyncio.run(other())
    finally:
        release.set()
        t.join(5)
    c._close()


def test_client_with_handlers_keeps_the_io_thread() -> None:
    """With handlers, the server may call the client while it waits."""
    server = foorpc.Server()

    @server.method
    def ask(peer: foorpc.Peer, x: int) -> Any:
        return peer.call("double", x) + 1

    @server.method
    def slow() -> None:
        time.sleep(1)

    addr = server.bind("tcp://127.0.0.1:0")
    server.start()
    try:

        async def main() -> None:
            c = await foorpc.AsyncClient.connect(addr, handlers={"double": lambda x: 2 * x}, timeout=5)
            async with c:
                assert await asyncio.gather(*(c.ask(i) for i in range(50))) == [2 * i + 1 for i in range(50)]
                with pytest.raises(foorpc.RpcTimeoutError):
                    await c.call("slow", timeout=0.1)

        run(main())
    finally:
        server.shutdown()



def test_loop_driven_client_starts_no_thread(calc: str) -> None:
    """Without handlers, the loop reads the socket: no I/O thread appears.

    Run in a fresh interpreter: foorpc's I/O thread, once started by another
    test, would hide a new one here."""
    import subprocess
    import sys

    script = """
import asyncio, os, sys, foorpc

def threads():
    return len(os.listdir("/proc/self/task"))

async def main():
    before = threads()
    c = foorpc.AsyncClient(sys.argv[1])
    assert await asyncio.gather(*(c.add(i, 1) for i in range(200))) == [i + 1 for i in range(200)]
    try:
        await c.call("sleep_ms", 500, timeout=0.05)
    except foorpc.RpcTimeoutError:
        pass
    else:
        raise AssertionError("no timeout")
    print(before, threads())
    await c.close()

asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", script, calc], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.split()
    assert before == after


def test_loop_without_add_reader_uses_the_io_thread(calc: str) -> None:
    """A loop that cannot watch sockets (like Windows' proactor) still works."""

    class NoReaderLoop(asyncio.SelectorEventLoop):
        def add_reader(self, fd: Any, callback: Any, *args: Any) -> None:
            raise NotImplementedError

    async def main() -> None:
        c = foorpc.AsyncClient(calc, timeout=5)
        assert await asyncio.gather(*(c.add(i, 1) for i in range(50))) == [i + 1 for i in range(50)]
        with pytest.raises(foorpc.RpcTimeoutError):
            await c.call("sleep_ms", 1000, timeout=0.1)
        await c.close()

    loop = NoReaderLoop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_await_iterator_protocol(calc: str) -> None:
    """What `await` drives: yields the future while pending, then returns."""

    async def main() -> None:
        async with await foorpc.AsyncClient.connect(calc) as c:
            fut = c.add(1, 2)
            it = fut.__await__()
            assert iter(it) is it
            assert next(it) is fut  # pending: the awaiting task would wait on it
            assert await fut == 3
            with pytest.raises(StopIteration) as stop:
                next(fut.__await__())
            assert stop.value.value == 3 and stop.value.args == (3,)
            for value in ([1, [2]], None, {"k": [1, 2]}):  # lists and None are StopIteration args too
                echoed = c.echo(value)
                assert await echoed == value
                with pytest.raises(StopIteration) as stop:
                    next(echoed.__await__())
                assert stop.value.value == value
            failing = c.fail("no")
            with pytest.raises(foorpc.RemoteError):
                await failing
            with pytest.raises(foorpc.RemoteError):
                next(failing.__await__())

    run(main())


def test_a_callback_raising_cancelled_error_stops_nothing(calc: str) -> None:
    """Like asyncio's handles: only SystemExit and KeyboardInterrupt leave;
    other callbacks and other futures of the batch are still delivered."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: List[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        async with await foorpc.AsyncClient.connect(calc) as c:
            assert await c.add(0, 0) == 0
            f1, f2 = c.add(1, 1), c.add(2, 2)  # one write; replies in one read

            def bad(_f: Any) -> None:
                raise asyncio.CancelledError("from a callback")

            f1.add_done_callback(bad)
            assert await asyncio.wait_for(asyncio.shield(f1), 5) == 2
            assert await asyncio.wait_for(f2, 5) == 4
            assert c.pending_calls == 0
        assert [type(r.get("exception")) for r in reported] == [asyncio.CancelledError]

    run(main())


def test_done_callbacks_run_in_the_context_they_were_added_in(calc: str) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="none")

    async def main() -> None:
        async with await foorpc.AsyncClient.connect(calc) as c:
            assert await c.add(1, 1) == 2  # the reader is registered in this context
            var.set("req-42")
            seen: List[str] = []
            fut = c.add(1, 2)
            fut.add_done_callback(lambda _f: seen.append(var.get()))
            assert await fut == 3
            await asyncio.sleep(0)
            assert seen == ["req-42"]

    run(main())


def test_add_done_callback_arguments_as_asyncio_future_takes_them(calc: str) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="none")

    async def main() -> None:
        async with await foorpc.AsyncClient.connect(calc) as c:
            fut = c.sleep_ms(50)
            with pytest.raises(TypeError, match="one positional argument"):
                fut.add_done_callback()  # type: ignore[call-arg]
            with pytest.raises(TypeError, match="one positional argument"):
                fut.add_done_callback(print, print)  # type: ignore[call-arg]
            with pytest.raises(TypeError, match="one positional argument"):
                fut.add_done_callback(callback=print)  # type: ignore[call-arg]
            with pytest.raises(TypeError, match="ctx"):
                fut.add_done_callback(print, ctx=None)  # type: ignore[call-arg]
            with pytest.raises(TypeError, match="context"):
                fut.add_done_callback(print, context=None, other=1)  # type: ignore[call-arg]

            seen: List[str] = []
            other = contextvars.copy_context()
            other.run(var.set, "other")
            var.set("current")
            fut.add_done_callback(lambda _f: seen.append("given " + var.get()), context=other)
            fut.add_done_callback(lambda _f: seen.append("none " + var.get()), context=None)
            fut.add_done_callback(lambda _f: seen.append("omitted " + var.get()))
            # The keyword names arrive in a tuple object of their own here.
            kwargs = {"context": other}
            fut.add_done_callback(lambda _f: seen.append("dict " + var.get()), **kwargs)
            var.set("later")
            assert await fut == 50
            await asyncio.sleep(0)
            assert seen == ["given other", "none current", "omitted current", "dict other"]

    run(main())


def test_asyncio_future_blocking_is_a_bool_attribute(calc: str) -> None:
    async def main() -> None:
        async with await foorpc.AsyncClient.connect(calc) as c:
            fut = c.add(1, 2)
            assert fut._asyncio_future_blocking is False
            fut._asyncio_future_blocking = True
            assert fut._asyncio_future_blocking is True
            fut._asyncio_future_blocking = False
            assert fut._asyncio_future_blocking is False
            with pytest.raises(TypeError):
                fut._asyncio_future_blocking = 1  # type: ignore[assignment]
            with pytest.raises(TypeError):
                del fut._asyncio_future_blocking
            # The awaiting coroutine sets it when it yields the future; the
            # Task that gets the future clears it.
            assert next(iter(fut.__await__())) is fut
            assert fut._asyncio_future_blocking is True
            fut._asyncio_future_blocking = False
            assert await fut == 3
            assert foorpc.CallFuture.get_loop(fut) is asyncio.get_running_loop()
            with pytest.raises(TypeError):
                foorpc.CallFuture.get_loop(object())  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                foorpc.CallFuture.add_done_callback(object(), print)  # type: ignore[arg-type]

    run(main())


def test_raising_a_stored_error_again_keeps_its_traceback_short(calc: str) -> None:
    async def main() -> None:
        async with await foorpc.AsyncClient.connect(calc) as c:
            failing = c.fail("x")
            depths = []
            for _ in range(3):
                try:
                    await failing
                except foorpc.RemoteError as e:
                    tb, n = e.__traceback__, 0
                    while tb is not None:
                        n, tb = n + 1, tb.tb_next
                    depths.append(n)
            assert depths[0] == depths[1] == depths[2]

    run(main())


def test_a_loop_that_stops_before_its_flush_does_not_cork_the_client(calc: str) -> None:
    c = foorpc.AsyncClient(calc)
    first = asyncio.new_event_loop()

    def call_then_stop() -> None:
        c.call("add", 1, 1)  # held back for this iteration's write...
        first.stop()  # ...which this loop never runs

    first.call_soon(call_then_stop)
    first.run_forever()
    first.close()

    async def main() -> None:
        assert await asyncio.wait_for(c.call("add", 1, 2), 5) == 3

    run(main())
    c._close()


def test_garbage_with_pending_calls_is_collected(calc: str) -> None:
    """A client dropped without close, and a task left waiting on a call when
    its loop closed, do not keep the loop, the task or the socket alive."""
    import gc
    import os
    import weakref

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = fds()
    loop = asyncio.new_event_loop()
    c = foorpc.AsyncClient(calc, timeout=30)  # an armed timeout timer

    async def waiter() -> Any:
        return await c.call("sleep_ms", 3000)

    async def start() -> "weakref.ref[asyncio.Task[Any]]":
        assert await c.add(1, 1) == 2
        task = loop.create_task(waiter())
        await asyncio.sleep(0.05)
        return weakref.ref(task)

    task_ref = loop.run_until_complete(start())
    loop_ref = weakref.ref(loop)
    loop.close()
    del c, loop
    for _ in range(3):
        gc.collect()
    assert task_ref() is None
    assert loop_ref() is None
    assert fds() <= before
