"""Values of every type round-trip through echo, against the Rust and the Python server."""

from __future__ import annotations

import math
import socket
import threading
from typing import Any

import msgpack
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


def test_float32_out_of_range_raises_overflow_error(calc: str) -> None:
    """A finite value beyond float32's range is refused, as out-of-range
    ints are; the largest float32 and infinities still go out."""
    big = 3.4028234663852886e38  # the largest float32
    with foorpc.Client(calc) as c:
        for v in (1e300, -1e300, 3.5e38, -3.5e38):
            with pytest.raises(OverflowError, match="float32 range"):
                c.echo(foorpc.Float32(v))
        assert c.echo(foorpc.Float32(big)) == big
        assert c.echo(foorpc.Float32(-big)) == -big
        assert c.echo(foorpc.Float32(math.inf)) == math.inf
        assert c.echo(foorpc.Float32(-math.inf)) == -math.inf
        assert math.isnan(c.echo(foorpc.Float32(math.nan)))
        assert c.echo("still usable") == "still usable"


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


# Maps whose keys are distinct in MessagePack but equal in Python: a repeated
# key, 1 / 1.0 / True, 0.0 / -0.0. Written by hand (msgpack.packb takes a dict).
EQUAL_KEY_MAPS = [
    bytes.fromhex("8201a161") + bytes.fromhex("01a162"),  # {1: "a", 1: "b"}
    bytes.fromhex("8201a161") + bytes.fromhex("c3a162"),  # {1: "a", True: "b"}
    bytes.fromhex("8201a161") + bytes.fromhex("cb3ff0000000000000a162"),  # {1: "a", 1.0: "b"}
    bytes.fromhex("82cb0000000000000000a161") + bytes.fromhex("cb8000000000000000a162"),  # 0.0, -0.0
]


def _raw_reply_server(results: list[bytes]) -> tuple[str, threading.Thread]:
    """A one-connection server answering its requests in turn with `results`
    (each the raw MessagePack bytes of a result)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def run() -> None:
        with listener, listener.accept()[0] as conn:
            conn.settimeout(10)
            unpacker = msgpack.Unpacker()
            pending = list(results)
            while pending:
                data = conn.recv(65536)
                if not data:
                    return
                unpacker.feed(data)
                for _, msgid, _, _ in unpacker:
                    conn.sendall(bytes([0x94, 0x01]) + msgpack.packb(msgid) + b"\xc0" + pending.pop(0))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return f"tcp://127.0.0.1:{listener.getsockname()[1]}", t


@pytest.mark.parametrize("raw_map", EQUAL_KEY_MAPS, ids=["repeated", "1-true", "1-1.0", "zeros"])
def test_reply_map_with_keys_equal_in_python_is_an_error(raw_map: bytes) -> None:
    """A dict would keep one entry and drop the others silently: the call
    fails instead, and the connection serves the next call."""
    address, t = _raw_reply_server([raw_map, msgpack.packb({1: "a"})])
    with foorpc.Client(address) as c:
        with pytest.raises(ValueError, match="keys that are equal in Python"):
            c.call("any")
        assert c.call("any") == {1: "a"}
    t.join(10)


@pytest.mark.parametrize("raw_map", EQUAL_KEY_MAPS, ids=["repeated", "1-true", "1-1.0", "zeros"])
def test_params_map_with_keys_equal_in_python_get_an_error_reply(raw_map: bytes) -> None:
    """The Python server answers such params with an error, calls no handler,
    and keeps the connection."""
    called = []
    server = foorpc.Server()
    try:

        @server.method
        def echo(x: Any) -> Any:
            called.append(x)
            return x

        address = server.bind("tcp://127.0.0.1:0")
        server.start()
        host, port = address[len("tcp://"):].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(bytes.fromhex("940001a46563686f91") + raw_map)  # [0, 1, "echo", [map]]
            s.sendall(msgpack.packb([0, 2, "echo", [{1: "a"}]]))
            unpacker = msgpack.Unpacker(strict_map_key=False)
            replies: list[Any] = []
            while len(replies) < 2:
                data = s.recv(65536)
                assert data, "the server closed the connection"
                unpacker.feed(data)
                replies.extend(unpacker)
    finally:
        server.shutdown()
    replies.sort(key=lambda r: r[1])
    assert replies[0][3] is None and "keys that are equal in Python" in replies[0][2][1]
    assert replies[1] == [1, 2, None, {1: "a"}]
    assert called == [{1: "a"}]
