"""foorpc's Python clients under test, against the Rust bench server.

Usage: foorpc_client.py ADDRESS seq N | slices N | pipe N WINDOW | echo N BYTES
- seq, slices (see common.run_seq) and echo use the synchronous ``foorpc.Client``;
- pipe uses ``foorpc.AsyncClient`` under asyncio: WINDOW tasks each calling
  ``add(1, 2)`` in a loop keep WINDOW calls in flight on one connection.
"""

from __future__ import annotations

import asyncio
import inspect
import time

import foorpc

from common import args, print_bandwidth, print_rate, run_seq


async def open_async(address: str):
    """AsyncClient, however its constructor is spelled (awaitable connect or not)."""
    cls = foorpc.AsyncClient
    connect = getattr(cls, "connect", None)
    if connect is not None:
        client = connect(address)
    else:
        client = cls(address)
    if inspect.isawaitable(client):
        client = await client
    return client


async def close_async(client) -> None:
    close = getattr(client, "close", None)
    if close is not None:
        r = close()
        if inspect.isawaitable(r):
            await r


async def pipeline(address: str, n: int, window: int) -> None:
    client = await open_async(address)
    call = client.call

    async def worker(count: int) -> None:
        for _ in range(count):
            await call("add", 1, 2)

    async def run(total: int) -> None:
        per, rest = divmod(total, window)
        await asyncio.gather(*(worker(per + (i < rest)) for i in range(window)))

    await run(max(n // 10, window * 4))
    t = time.perf_counter_ns()
    await run(n)
    print_rate(n, time.perf_counter_ns() - t)
    await close_async(client)


def main() -> None:
    _, _, address, what, n, extra = args()
    if what == "pipe":
        asyncio.run(pipeline(address, n, extra or 64))
        return
    client = foorpc.Client(address)
    call = client.call
    if what in ("seq", "slices"):
        run_seq(what == "slices", n, lambda: call("add", 1, 2))
    elif what == "echo":
        payload = b"\xab" * extra
        for _ in range(max(n // 10, 3)):
            call("echo", payload)
        t = time.perf_counter_ns()
        for _ in range(n):
            assert len(call("echo", payload)) == extra
        print_bandwidth(n, extra, time.perf_counter_ns() - t)
    else:
        raise SystemExit(f"unknown benchmark {what}")
    client.close()


if __name__ == "__main__":
    main()
