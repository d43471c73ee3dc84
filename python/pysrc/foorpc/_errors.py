"""Exceptions raised by foorpc (defined in Python, raised from Rust)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
from typing import Any, Optional

__all__ = ["RpcError", "RemoteError", "RpcTimeoutError", "ConnectionLostError"]


class RpcError(Exception):
    """Base class of every error foorpc raises about a call or a connection."""


class RemoteError(RpcError):
    """The peer answered a call with an error.

    ``error`` is the peer's error object exactly as it was sent (foorpc peers
    send ``[code, message]``; other peers may send a string, a map, ...).
    ``code`` and ``message`` are set when the object has the ``[int, str]``
    shape, else they are ``None``. An error object that cannot become a
    Python value (a map used as a map key, or keys that are equal in Python)
    gives ``error`` None, ``code`` None, and in ``message`` why and the object
    as text; the conversion error is the ``__cause__``.

    A server handler may raise ``RemoteError(obj)`` to answer with the error
    object ``obj`` unchanged; a falsy ``obj`` (None, False, 0, "", [], {}),
    which peers would read as success, is sent as
    ``[0, "RemoteError: <repr(obj)>"]``.
    """

    error: Any
    code: Optional[int]
    message: Optional[str]

    def __init__(self, error: Any) -> None:
        super().__init__(error)
        self.error = error
        if (
            isinstance(error, (list, tuple))
            and len(error) == 2
            and isinstance(error[0], int)
            and not isinstance(error[0], bool)
            and isinstance(error[1], str)
        ):
            self.code, self.message = error[0], error[1]
        else:
            self.code, self.message = None, None

    def __str__(self) -> str:
        if self.code is not None:
            return f"remote error {self.code}: {self.message}"
        if self.message is not None:
            return f"remote error: {self.message}"
        return f"remote error: {self.error!r}"


if sys.version_info >= (3, 11):

    class RpcTimeoutError(RpcError, TimeoutError):
        """No reply arrived within the call's timeout."""

else:
    # Before 3.11, asyncio's and concurrent.futures' TimeoutError are classes
    # of their own: `except asyncio.TimeoutError` must catch a call's timeout
    # on every supported version.
    class RpcTimeoutError(
        RpcError, TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError
    ):
        """No reply arrived within the call's timeout."""


class ConnectionLostError(RpcError, ConnectionError):
    """The connection could not be made, was lost, or was closed.

    When the OS reported the failure (a refused connect, a missing socket
    file, a reset connection) ``errno`` and ``strerror`` are set, as on any
    `OSError`; otherwise they are ``None``."""
