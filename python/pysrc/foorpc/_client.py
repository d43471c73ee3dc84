"""The blocking client."""

from __future__ import annotations

from typing import Any, Callable, Optional

from . import _native

__all__ = ["Client"]


class Client(_native.Client):
    """A connection to a MessagePack-RPC server.

    ``Client("tcp://127.0.0.1:5555")`` or ``Client("unix:///tmp/app.sock")``;
    keyword-only ``connect_timeout`` (seconds, default 10) and ``timeout``
    (the default call timeout, default 30 s; ``None``: calls wait for ever).

    ``client.call("add", 1, 2)`` or the attribute stub ``client.add(1, 2)``
    (names starting with ``_`` are never stubs). ``call(..., timeout=None)``
    uses the client's default timeout, ``timeout=math.inf`` waits for ever.
    The GIL is released while a call waits and Ctrl-C interrupts it (the call
    is then forgotten). One client can be shared by any number of threads:
    calls are pipelined on the one connection.

    ``handlers`` / ``notification_handlers`` (dicts name -> callable) answer
    requests and notifications that the server sends to this client.
    ``limits``: a dict overriding some of `foorpc.DEFAULT_LIMITS` by name, the
    limits it applies to what the server sends.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        call = self.call

        def stub(*params: Any, timeout: Optional[float] = None) -> Any:
            return call(name, *params, timeout=timeout)

        stub.__name__ = stub.__qualname__ = name
        return stub

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
