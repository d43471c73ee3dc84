"""limits={...} on Server, Client and AsyncClient: the core's limits, by name."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Dict, Iterator, List, Optional

import pytest

import foorpc


def test_default_limits_are_the_documented_ones() -> None:
    assert foorpc.DEFAULT_LIMITS == {
        "max_message_size": 64 << 20,
        "max_decoded_size": 256 << 20,
        "max_depth": 128,
        "max_in_flight": 4096,
        "max_connections": 4096,
        "max_write_backlog": 8 << 20,
        "max_request_backlog": 16 << 20,
    }


def test_default_limits_cannot_be_changed_by_mistake() -> None:
    with pytest.raises(TypeError):
        foorpc.DEFAULT_LIMITS["max_depth"] = 1  # type: ignore[index]
    assert foorpc.DEFAULT_LIMITS["max_depth"] == 128


@pytest.mark.parametrize(
    "limits, error, message",
    [
        ({"max_mesage_size": 10}, ValueError, "unknown limit"),
        ({"max_depth": 0}, ValueError, ">= 1, got 0"),
        ({"max_depth": -1}, ValueError, ">= 1, got -1"),
        ({"max_depth": -(2**70)}, ValueError, ">= 1"),
        ({"max_depth": 2.5}, TypeError, "expected an int, got float"),
        ({"max_depth": "8"}, TypeError, "expected an int, got str"),
        ({"max_depth": True}, TypeError, "expected an int, got bool"),
        ({"max_depth": None}, TypeError, "expected an int, got NoneType"),
        ({1: 8}, TypeError, "keys must be str"),
    ],
)
def test_bad_limits_raise(limits: Dict[Any, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        foorpc.Server(limits=limits)
    with pytest.raises(error, match=message):
        foorpc.Client("tcp://127.0.0.1:1", connect_timeout=0.1, limits=limits)
    with pytest.raises(error, match=message):
        foorpc.AsyncClient("tcp://127.0.0.1:1", connect_timeout=0.1, limits=limits)


def test_a_huge_limit_means_no_limit() -> None:
    foorpc.Server(limits={"max_message_size": 2**100}).shutdown()


def serve(limits: Optional[Dict[str, int]] = None) -> "tuple[foorpc.Server, str]":
    server = foorpc.Server(limits=limits)
    gate, entered = threading.Event(), threading.Event()

    @server.method
    def nils(n: int) -> List[None]:
        return [None] * n

    @server.method
    def size(b: bytes) -> int:
        return len(b)

    @server.method
    def wait() -> bool:
        entered.set()
        return gate.wait(10)

    server.gate = gate  # type: ignore[attr-defined]
    server.entered = entered  # type: ignore[attr-defined]
    address = server.bind("tcp://127.0.0.1:0")
    server.start()
    return server, address


def test_server_limits_apply_to_its_clients() -> None:
    server, address = serve({"max_message_size": 256, "max_in_flight": 1})
    try:
        with foorpc.Client(address) as c:
            assert c.size(b"x" * 100) == 100
            # Over the server's 256-byte message limit: that connection closes.
            with pytest.raises(foorpc.ConnectionLostError):
                c.size(b"x" * 1000)
        # max_in_flight=1: a second request while one is handled gets an error.
        with foorpc.Client(address) as c:
            waited: List[bool] = []
            first = threading.Thread(target=lambda: waited.append(c.wait()))
            first.start()
            try:
                assert server.entered.wait(10)  # type: ignore[attr-defined]
                with pytest.raises(foorpc.RemoteError, match="limit exceeded"):
                    c.size(b"")
            finally:
                server.gate.set()  # type: ignore[attr-defined]
                first.join(10)
            assert waited == [True]
        with foorpc.Client(address) as other:
            assert other.size(b"ok") == 2
    finally:
        server.gate.set()  # type: ignore[attr-defined]
        server.shutdown()


@pytest.fixture
def address() -> Iterator[str]:
    server, address = serve()
    yield address
    server.shutdown()


def test_client_limits_apply_to_what_the_server_sends(address: str) -> None:
    # 100 nils cost 4,160 bytes decoded (40 per value), 200 cost 8,160.
    with foorpc.Client(address, limits={"max_decoded_size": 6000}) as c:
        assert c.nils(100) == [None] * 100
        with pytest.raises(foorpc.ConnectionLostError, match="decoded"):
            c.nils(200)


def test_async_client_limits_apply_to_what_the_server_sends(address: str) -> None:
    async def main() -> None:
        c = await foorpc.AsyncClient.connect(address, limits={"max_decoded_size": 6000})
        try:
            assert await c.nils(100) == [None] * 100
            with pytest.raises(foorpc.ConnectionLostError, match="decoded"):
                await c.nils(200)
        finally:
            await c.close()

    asyncio.run(main())
