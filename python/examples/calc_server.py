#!/usr/bin/env python3
"""A small foorpc server in Python: add(a, b), echo(x), fail(msg), sleep_ms(n).

Usage: python calc_server.py ADDRESS   (e.g. tcp://127.0.0.1:0 or unix:///tmp/calc.sock)

Prints one line ``calc_server listening on ADDR`` once it listens and serves
until SIGINT or SIGTERM. The same methods as the Rust and C calc_server.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from typing import Any

import foorpc

# Shutdown waits at most 1 s for calls in flight (sleep_ms may run long).
server = foorpc.Server(drain_timeout=1.0)


@server.method
def add(a: int, b: int) -> int:
    return a + b


@server.method
def echo(*args: Any) -> Any:
    if len(args) != 1:
        raise foorpc.RemoteError([1, "echo takes one argument"])
    return args[0]  # exact types survive: Float32, ExtType, invalid UTF-8 str, ...


@server.method
def fail(msg: Any = "failed") -> None:
    raise foorpc.RemoteError([0, msg if isinstance(msg, str) else "failed"])


@server.method
async def sleep_ms(ms: int = 0) -> int:
    # An async handler: sleeping never holds up other calls.
    await asyncio.sleep(ms / 1000)
    return ms


def main() -> None:
    address = sys.argv[1] if len(sys.argv) > 1 else "tcp://127.0.0.1:5555"
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        real = server.bind(address)
    except (foorpc.RpcError, ValueError, OSError) as e:
        print(f"calc_server: {e}", file=sys.stderr)
        sys.exit(1)
    server.start()
    print(f"calc_server listening on {real}", flush=True)
    while not stop.wait(0.5):
        pass
    server.shutdown()


if __name__ == "__main__":
    main()
