"""Python types for MessagePack values that have no exact Python equivalent."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["ExtType", "Float32"]


class ExtType(NamedTuple):
    """A MessagePack ext value: a type ``code`` (-128..127) and raw ``data``.

    Received ext values (timestamps included) arrive as ``ExtType`` and are
    sent back unchanged.
    """

    code: int
    data: bytes


class Float32(float):
    """A float that travels as MessagePack float32.

    Received float32 values arrive as ``Float32`` (a ``float``), so echoing
    one sends float32 again; plain ``float`` is always sent as float64.
    Sending rounds to the nearest float32; a finite value beyond float32's
    range (±3.4028235e38) raises ``OverflowError``.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Float32({float.__repr__(self)})"
