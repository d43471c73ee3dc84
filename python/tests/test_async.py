"""The asyncio client."""

from __future__ import annotations

import asyncio
import time

import pytest

import foorpc


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_basic_calls(calc: str) -> None:
    async def main() -> None:
        c = await foorpc.AsyncClient.connect(calc)
        async with c:
            assert await c.call("add", 1, 2) == 3
            assert await c.add(2, 3) == 5
            assert await c.echo(foorpc.Float32(1.5)) == 1.5
            with pytest.raises(foorpc.RemoteError) as ei:
                await c.fail("bad")
            assert ei.value.error == [0, "bad"]
            c.notify("whatever", 1)
            with pytest.raises(AttributeError):
                c._nope  # noqa: B018
        assert c.closed

    run(main())


def test_constructor_and_errors(calc: str) -> None:
    async def main() -> None:
        c = foorpc.AsyncClient(calc, timeout=0.2)
        with pytest.raises(foorpc.RpcTimeoutError):
            await c.sleep_ms(1500)
        assert c.pending_calls == 0
        with pytest.raises(TypeError):
            await c.echo(object())
        await c.close()
        with pytest.raises(foorpc.ConnectionLostError):
            await c.add(1, 2)

    run(main())


def test_call_arguments(calc: str) -> None:
    async def main() -> None:
        async with await foorpc.AsyncClient.connect(calc) as c:
            assert await c.call("add", 2, 3) == 5
            assert await c.call("add", 2, 3, timeout=5) == 5
            assert await c.call("add", *range(2)) == 1
            assert await c.call(method="sleep_ms") == 0  # the method by keyword
            params = tuple(range(40))
            assert await c.call("echo", params) == list(params)
            with pytest.raises(TypeError, match="method"):
                c.call()  # type: ignore[call-arg]
            with pytest.raises(TypeError, match="method"):
                c.call(timeout=1)  # type: ignore[call-arg]
            with pytest.raises(TypeError):
                c.call(1, 2)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="'timeot'"):
                c.call("add", 1, 2, timeot=1)  # type: ignore[call-arg]
            with pytest.raises(TypeError, match="multiple values for argument 'method'"):
                c.call("add", method="add")  # type: ignore[misc]
            with pytest.raises(ValueError, match="timeout"):
                c.call("add", 1, 2, timeout=-1)
            with pytest.raises(TypeError):
                c.call("echo", object())
            # A failed call leaves nothing pending, and the client works on.
            assert c.pending_calls == 0
            assert await c.call("add", 4, 5) == 9

    run(main())


def test_many_concurrent_tasks(calc: str) -> None:
    async def main() -> None:
        c = await foorpc.AsyncClient.connect(calc)

        async def one(i: int) -> None:
            assert await c.echo([i, str(i)]) == [i, str(i)]
            assert await c.add(i, i) == 2 * i

        await asyncio.gather(*(one(i) for i in range(500)))
        assert c.pending_calls == 0
        await c.close()

    run(main())


def test_event_loop_not_blocked(calc: str) -> None:
    async def main() -> None:
        c = await foorpc.AsyncClient.connect(calc)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.ensure_future(ticker())
        t0 = time.monotonic()
        results = await asyncio.gather(*(c.sleep_ms(300) for _ in range(20)))
        assert results == [300] * 20
        assert time.monotonic() - t0 < 2  # concurrent, not one after the other
        assert ticks >= 10
        t.cancel()
        await c.close()

    run(main())


def test_cancellation_cleans_up(calc: str) -> None:
    async def main() -> None:
        c = await foorpc.AsyncClient.connect(calc)
        tasks = [asyncio.ensure_future(c.sleep_ms(1500)) for _ in range(200)]
        await asyncio.sleep(0.1)
        assert c.pending_calls == 200
        for t in tasks:
            t.cancel()
        res = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in res)
        assert c.pending_calls == 0
        # wait_for cancels on timeout too
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(c.sleep_ms(1500), 0.1)
        assert c.pending_calls == 0
        assert await c.add(1, 1) == 2
        await c.close()

    run(main())


def test_two_loops_in_threads(rust_calc: str) -> None:
    """One AsyncClient per thread, each with its own loop."""
    import threading

    errors: list[BaseException] = []

    def worker() -> None:
        async def main() -> None:
            c = await foorpc.AsyncClient.connect(rust_calc)
            assert await asyncio.gather(*(c.add(i, 1) for i in range(100))) == [i + 1 for i in range(100)]
            await c.close()

        try:
            asyncio.run(main())
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
