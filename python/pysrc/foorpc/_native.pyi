"""Type stubs of the native module foorpc._native (checked with mypy.stubtest)."""

from typing import Any, Awaitable, Callable, Dict, List, Optional, final

from typing_extensions import disjoint_base

__all__ = ["CancelOnDone", "Client", "Completions", "Peer", "Responder", "ServerCore", "MAX_DEPTH", "__version__"]

__version__: str
MAX_DEPTH: int

@disjoint_base
class Client:
    """A connection to a MessagePack-RPC server (public class: foorpc.Client)."""

    def __new__(
        cls,
        address: str,
        *,
        connect_timeout: float = 10.0,
        timeout: Optional[float] = 30.0,
        handlers: Optional[Dict[str, Callable[..., Any]]] = None,
        notification_handlers: Optional[Dict[str, Callable[..., Any]]] = None,
    ) -> "Client": ...
    def call(self, method: str, *params: Any, timeout: Optional[float] = None) -> Any:
        """Calls ``method(*params)``; timeout None: the client's default, math.inf: for ever."""
    def notify(self, method: str, *params: Any) -> None:
        """Sends a notification."""
    def close(self) -> None:
        """Closes the connection."""
    @property
    def closed(self) -> bool: ...
    @property
    def pending_calls(self) -> int: ...
    @property
    def address(self) -> str: ...
    @property
    def timeout(self) -> Optional[float]: ...
    def _call_future(
        self,
        completions: "Completions",
        future: Any,
        method: str,
        params: tuple[Any, ...],
        timeout: Optional[float] = None,
    ) -> int: ...
    def _cancel(self, msgid: int) -> None: ...

@final
class Peer:
    """The other side of a connection, given to handlers."""

    def call(self, method: str, *params: Any, timeout: Optional[float] = None) -> Any: ...
    def acall(self, method: str, *params: Any, timeout: Optional[float] = None) -> Awaitable[Any]: ...
    def notify(self, method: str, *params: Any) -> None: ...
    def close(self) -> None: ...
    @property
    def id(self) -> int: ...
    @property
    def pending_calls(self) -> int: ...
    @property
    def closed(self) -> bool: ...

@final
class Completions:
    """Delivers replies to the asyncio futures of one event loop, in batches."""

    def __new__(cls, call_soon_threadsafe: Callable[..., Any]) -> "Completions": ...
    def __call__(self, *args: Any, **kwargs: Any) -> None: ...
    @property
    def queued(self) -> int: ...

@final
class CancelOnDone:
    def __call__(self, future: Any) -> None: ...

@final
class Responder:
    """Answers one request, once."""

    def ok(self, result: Any) -> bool: ...
    def error(self, error: Any) -> bool: ...
    def exception(self, exc: BaseException) -> bool: ...
    @property
    def done(self) -> bool: ...

@final
class ServerCore:
    """The native half of foorpc.Server."""

    def __new__(cls, *, timeout: Optional[float] = 30.0, drain_timeout: float = 10.0) -> "ServerCore": ...
    def add_method(
        self, name: str, func: Callable[..., Any], *, pass_peer: bool = False, deferred: bool = False
    ) -> None: ...
    def add_notification(self, name: str, func: Callable[..., Any], *, pass_peer: bool = False) -> None: ...
    def bind(self, address: str) -> str: ...
    def start(self) -> None: ...
    def shutdown(self) -> None: ...
    @property
    def addresses(self) -> List[str]: ...
    @property
    def running(self) -> bool: ...
    @property
    def connection_count(self) -> int: ...
