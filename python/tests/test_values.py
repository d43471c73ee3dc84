"""Values of every type round-trip through echo, against the Rust and the Python server."""

from __future__ import annotations

import math

import pytest

import foorpc

ROUND_TRIP = [
    None,
    True,
    False,
    0,
    1,
    -1,
    127,
    128,
    255,
    -33,
    2**31,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -(2**63),
    1.5,
    -0.0,
    math.inf,
    "",
    "héllo wörld 世界 \U0001f600",
    "x" * 70000,
    b"",
    b"\x00\xff" * 1000,
    [],
    [1, [2, [3, []]], "s"],
    {},
    {"a": {"b": [1, {}]}, "d": None},
    {1: "one", -2: "two", b"k": 3, None: 4, 1.5: 5},
]


@pytest.mark.parametrize("value", ROUND_TRIP, ids=lambda v: repr(v)[:30])
def test_echo_round_trip(calc: str, value: object) -> None:
    with foorpc.Client(calc) as c:
        got = c.echo(value)
        assert got == value
        assert type(got) is type(value)


def test_nan(calc: str) -> None:
    with foorpc.Client(calc) as c:
        assert math.isnan(c.echo(math.nan))


def test_float32_kept(calc: str) -> None:
    with foorpc.Client(calc) as c:
        got = c.echo(foorpc.Float32(2.5))
        assert type(got) is foorpc.Float32 and got == 2.5
        assert isinstance(got, float)
        # float32 precision: a float64 value is rounded when sent as float32
        assert c.echo(foorpc.Float32(0.1)) == pytest.approx(0.1, rel=1e-6)
        assert type(c.echo(0.1)) is float and c.echo(0.1) == 0.1


def test_ext_round_trip(calc: str) -> None:
    with foorpc.Client(calc) as c:
        for ext in (foorpc.ExtType(5, b"abc"), foorpc.ExtType(-1, bytes(12)), foorpc.ExtType(127, b"")):
            got = c.echo(ext)
            assert type(got) is foorpc.ExtType and got == ext
        with pytest.raises(OverflowError, match="ExtType code"):
            c.echo(foorpc.ExtType(200, b""))


def test_sequences_and_buffers(calc: str) -> None:
    with foorpc.Client(calc) as c:
        assert c.echo((1, 2, (3,))) == [1, 2, [3]]
        assert c.echo(bytearray(b"ab")) == b"ab"
        assert c.echo(memoryview(b"abcdef")[1:3]) == b"bc"
        assert type(c.echo(bytearray(b"ab"))) is bytes
        # an array used as a map key comes back as a tuple (lists are unhashable)
        assert c.echo({(1, 2): "x"}) == {(1, 2): "x"}


def test_subclasses(calc: str) -> None:
    import enum

    class Color(enum.IntEnum):
        RED = 1

    class S(str):
        pass

    with foorpc.Client(calc) as c:
        assert c.echo(Color.RED) == 1 and type(c.echo(Color.RED)) is int
        assert c.echo(S("s")) == "s"
        assert c.echo({"k": [True, False]}) == {"k": [True, False]}


def test_surrogateescape_round_trip(calc: str) -> None:
    """A str holding invalid UTF-8 arrives decoded with surrogateescape and
    is sent back as the same bytes."""
    import msgpack

    bad = b"\xff\xfeab".decode("utf-8", "surrogateescape")
    with foorpc.Client(calc) as c:
        got = c.echo(bad)
        assert got == bad and got.encode("utf-8", "surrogateescape") == b"\xff\xfeab"
        # a lone surrogate that does not stand for a byte cannot be sent
        with pytest.raises(UnicodeEncodeError):
            c.echo("\ud800")
    # what the bytes on the wire look like: a str (not bin) with the raw bytes
    assert msgpack.unpackb(msgpack.packb(bad, unicode_errors="surrogateescape"), raw=True) == b"\xff\xfeab"


def test_int_out_of_range(calc: str) -> None:
    with foorpc.Client(calc) as c:
        with pytest.raises(OverflowError, match="int64 or uint64"):
            c.echo(2**64)
        with pytest.raises(OverflowError):
            c.echo([1, -(2**63) - 1])
        assert c.pending_calls == 0


def test_unsupported_type(calc: str) -> None:
    with foorpc.Client(calc) as c:
        with pytest.raises(TypeError, match="set"):
            c.echo({1, 2})
        with pytest.raises(TypeError, match="object"):
            c.echo([object()])
        with pytest.raises(TypeError, match="complex"):
            c.echo(1j)


def test_depth_limit(rust_calc: str) -> None:
    deep: list = []
    for _ in range(foorpc.MAX_DEPTH + 5):
        deep = [deep]
    with foorpc.Client(rust_calc) as c:
        with pytest.raises(ValueError, match="nested more than 128"):
            c.echo(deep)
        ok: list = []
        for _ in range(100):
            ok = [ok]
        assert c.echo(ok) == ok


def test_many_values_in_one_call(calc: str) -> None:
    with foorpc.Client(calc) as c:
        big = [{"i": i, "s": str(i), "b": bytes([i % 256])} for i in range(20000)]
        assert c.echo(big) == big
