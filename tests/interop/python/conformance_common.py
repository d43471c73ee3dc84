"""Shared pieces of the Python conformance server and client: argument parsing,
the values `echo_each_type` sends (the same list as tests/interop/rust/src/lib.rs)
and an exact, type-aware comparison of received values."""

from __future__ import annotations

import math
import sys
from typing import Any, List, NoReturn, Optional, Sequence, Tuple

from foorpc import ExtType, Float32

U32_MAX = 2**32 - 1
I64_MAX = 2**63 - 1
I64_MIN = -(2**63)
U64_MAX = 2**64 - 1
I32_MIN = -(2**31)


class Args:
    """``(--port N | --unix PATH) [--cases a,b,...] [--asyncio]``."""

    def __init__(self, address: str, cases: Optional[List[str]], use_asyncio: bool) -> None:
        self.address = address
        self.cases = cases
        self.use_asyncio = use_asyncio


def parse_args(program: str, argv: Sequence[str], *, client: bool) -> Args:
    """Parses the command line the way the Rust conformance programs do; exits 2 on error."""
    extra = " [--cases a,b,...] [--asyncio]" if client else ""

    def usage() -> NoReturn:
        print(f"usage: {program} (--port N | --unix PATH){extra}", file=sys.stderr)
        sys.exit(2)

    address: Optional[str] = None
    cases: Optional[List[str]] = None
    use_asyncio = False
    it = iter(argv)
    for flag in it:
        if client and flag == "--asyncio":
            use_asyncio = True
            continue
        value = next(it, None)
        if value is None:
            usage()
        if flag == "--port":
            address = f"tcp://127.0.0.1:{value}"
        elif flag == "--unix":
            address = f"unix://{value}"
        elif client and flag == "--cases":
            cases = [c for c in value.split(",") if c]
        else:
            usage()
    if address is None:
        usage()
    return Args(address, cases, use_asyncio)


def echo_values() -> List[Tuple[str, Any]]:
    """Every MessagePack type at its encoding boundaries, for `echo_each_type`."""
    v: List[Tuple[str, Any]] = [("nil", None), ("true", True), ("false", False)]
    uints = [0, 127, 128, 255, 256, 65535, 65536, U32_MAX, U32_MAX + 1, I64_MAX + 1, U64_MAX]
    v += [(f"uint {u}", u) for u in uints]
    ints = [-1, -32, -33, -128, -129, -32768, -32769, I32_MIN, I32_MIN - 1, I64_MIN + 1, I64_MIN]
    v += [(f"int {i}", i) for i in ints]
    for f in [1.5, -0.0, math.inf, -math.inf, math.nan]:
        v.append((f"float32 {f}", Float32(f)))
    for f in [0.1, -0.0, math.inf, math.nan]:
        v.append((f"float64 {f}", float(f)))
    invalid_utf8 = bytes([0xFF, 0xFE, ord("a"), ord("b")]).decode("utf-8", "surrogateescape")
    v += [
        ("str empty", ""),
        ("str ascii", "hello"),
        ("str non-BMP", "😀𝄞 ünï"),
        ("str 40 bytes", "x" * 40),
        ("str 300 bytes", "y" * 300),
        ("str invalid UTF-8", invalid_utf8),
        ("bin empty", b""),
        ("bin 1000", bytes(i & 0xFF for i in range(1000))),
        ("array empty", []),
        ("array nested", [1, [[], "a"]]),
        ("array 20", list(range(20))),
        ("map empty", {}),
        ("map nested", {"a": {"b": [None]}}),
        ("map non-string keys", {1: "one", b"\x01\x02": True, None: -1}),
        ("ext 5", ExtType(5, b"\x01\x02\x03")),
        ("ext -1 fixext4", ExtType(-1, b"\x00\x00\x00\x01")),
    ]
    return v


def _same_float(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def same(got: Any, want: Any) -> bool:
    """True when ``got`` is ``want`` with the exact same Python (hence
    MessagePack) types all the way down: bool vs int, Float32 vs float, str vs
    bytes, ExtType, list/tuple, dict with keys in the same order; nan equals
    nan and -0.0 differs from 0.0."""
    if type(got) is not type(want):
        return False
    if isinstance(want, float):
        return _same_float(got, want)
    if isinstance(want, ExtType):
        return bool(got.code == want.code) and same(got.data, want.data)
    if isinstance(want, (list, tuple)):
        return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want))
    if isinstance(want, dict):
        gi, wi = list(got.items()), list(want.items())
        return len(gi) == len(wi) and all(
            same(gk, wk) and same(gv, wv) for (gk, gv), (wk, wv) in zip(gi, wi)
        )
    return bool(got == want)


def show(v: Any) -> str:
    """A short repr that names the type (and is not megabytes long)."""
    r = f"{type(v).__name__} {v!r}"
    return r if len(r) <= 200 else r[:200] + "..."
