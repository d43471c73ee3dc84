#!/usr/bin/env python3
"""foorpc's Python conformance server (tests/interop/README.md has the contract).

``conformance_server.py (--port N | --unix PATH)`` prints one line once it
listens and serves until SIGTERM or SIGINT (graceful shutdown, exit status 0).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from typing import Any, Dict, List

import foorpc
from conformance_common import parse_args


class Notifications:
    """Notifications received, per connection (keyed by `Peer.id`), in arrival order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: Dict[int, List[List[Any]]] = {}

    def record(self, peer: foorpc.Peer, method: str, params: List[Any]) -> None:
        with self._lock:
            self._seen.setdefault(peer.id, []).append([method, params])

    def of(self, peer: foorpc.Peer) -> List[List[Any]]:
        with self._lock:
            return list(self._seen.get(peer.id, []))


def build_server() -> foorpc.Server:
    server = foorpc.Server(drain_timeout=5.0)
    seen = Notifications()

    @server.method
    def add(a: int, b: int) -> int:
        return a + b

    @server.method
    def echo(x: Any) -> Any:
        return x

    @server.method
    def fail(*params: Any) -> None:
        msg = params[0] if params and isinstance(params[0], str) else "fail"
        raise foorpc.RemoteError([0, msg])

    @server.method
    async def sleep_ms(ms: int) -> int:
        await asyncio.sleep(ms / 1000)
        return ms

    @server.method
    def get_notifications(peer: foorpc.Peer) -> List[List[Any]]:
        return seen.of(peer)

    @server.method
    def call_back(peer: foorpc.Peer, method: str, params: List[Any]) -> Any:
        # Runs on the worker pool: it blocks while the client answers.
        try:
            return peer.call(method, *params)
        except foorpc.RemoteError as e:
            raise foorpc.RemoteError(e.error) from None  # relayed unchanged

    @server.method
    def disconnect(peer: foorpc.Peer) -> None:
        peer.close()  # the connection is closed: the reply goes nowhere

    @server.notification_fallback
    def record(peer: foorpc.Peer, method: str, *params: Any) -> None:
        seen.record(peer, method, list(params))  # any method name is accepted

    return server


def main() -> int:
    args = parse_args("conformance_server.py", sys.argv[1:], client=False)
    # Block the termination signals before any thread exists (foorpc's threads
    # inherit the mask), then wait for them with sigwait.
    signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    server = build_server()
    try:
        address = server.bind(args.address)
        server.start()
    except Exception as e:
        print(f"conformance_server.py: {e}", file=sys.stderr)
        return 1
    print(f"python conformance server listening on {address}", flush=True)
    signal.sigwait(signals)
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
