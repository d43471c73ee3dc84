"""foorpc: a MessagePack-RPC client and server, backed by a Rust runtime.

Blocking client::

    with foorpc.Client("tcp://127.0.0.1:5555") as c:
        c.call("add", 1, 2)      # or c.add(1, 2)

asyncio client::

    client = await foorpc.AsyncClient.connect("tcp://127.0.0.1:5555")
    await client.call("add", 1, 2)   # a CallFuture: gather, wait_for, create_task...

Server::

    server = foorpc.Server()

    @server.method
    def add(a, b):
        return a + b

    print(server.bind("tcp://127.0.0.1:0"))
    server.serve_forever()

Values: None, bool, int (int64/uint64 range), float (float64), str, bytes /
bytearray / memoryview (bin), list / tuple (array), dict (map), `Float32`
(float32) and `ExtType` (ext). Received values come back as None, bool, int,
float, `Float32`, str, bytes, list, dict, `ExtType`. A received str that is
not valid UTF-8 is decoded with ``surrogateescape`` and strs are encoded with
``surrogateescape``, so such a str is sent back as the same bytes.
"""

from ._errors import ConnectionLostError, RemoteError, RpcError, RpcTimeoutError
from ._types import ExtType, Float32
from ._native import DEFAULT_LIMITS, MAX_DEPTH, Peer, Responder, __version__
from ._client import Client
from ._aio import AsyncClient, CallFuture
from ._server import Server

__all__ = [
    "AsyncClient",
    "CallFuture",
    "Client",
    "ConnectionLostError",
    "DEFAULT_LIMITS",
    "ExtType",
    "Float32",
    "MAX_DEPTH",
    "Peer",
    "RemoteError",
    "Responder",
    "RpcError",
    "RpcTimeoutError",
    "Server",
    "__version__",
]
