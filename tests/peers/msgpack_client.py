#!/usr/bin/env python3
"""An independent MessagePack-RPC conformance client (not written with foorpc).

Written from the public MessagePack-RPC spec: request ``[0, msgid, method, params]``,
response ``[1, msgid, error, result]``, notification ``[2, method, params]``, messages
concatenated on a stream socket without any length prefix.

Usage::

    python3 tests/peers/msgpack_client.py (--port N [--host 127.0.0.1] | --unix PATH)
        [--cases a,b,...] [--timeout SECONDS]

Runs conformance cases against a server offering add, echo, fail, sleep_ms,
get_notifications, call_back and disconnect (see tests/peers/msgpack_server.py). Prints
``PASS name`` or ``FAIL name: reason`` per case, then ``N passed, N failed``; exit status 0
only when every case passed, 2 on an unknown case name.

Echo results are checked byte for byte: the raw bytes of the result are sliced out of the
response with a small skip scanner and compared with the bytes that were sent, so the exact
MessagePack type and encoding must survive (float32, str holding invalid UTF-8, ext, ...).
"""

from __future__ import annotations

import argparse
import collections
import math
import socket
import struct
import sys
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import msgpack

MAX_BUFFER = 64 * 1024 * 1024

# ---------------------------------------------------------------------------------------------
# Encoding with exact control over float32 and raw str bytes


class F32(float):
    """A float that must be sent as MessagePack float32 (0xca)."""


class RawStr(bytes):
    """A MessagePack str whose payload bytes are given raw (may be invalid UTF-8)."""


class Raw(bytes):
    """An already encoded MessagePack value, sent verbatim."""


def _sized_header(n: int, fix_base: int, fix_max: int, codes: Tuple[int, ...],
                  widths: Tuple[int, ...]) -> bytes:
    if n <= fix_max:
        return bytes([fix_base | n])
    for code, width in zip(codes, widths):
        if n < 1 << (8 * width):
            return bytes([code]) + n.to_bytes(width, "big")
    raise OverflowError("too long")


def str_header(n: int) -> bytes:
    return _sized_header(n, 0xA0, 31, (0xD9, 0xDA, 0xDB), (1, 2, 4))


def array_header(n: int) -> bytes:
    return _sized_header(n, 0x90, 15, (0xDC, 0xDD), (2, 4))


def map_header(n: int) -> bytes:
    return _sized_header(n, 0x80, 15, (0xDE, 0xDF), (2, 4))


def pack(value: Any) -> bytes:
    """Encode a plain value with msgpack-python."""
    return msgpack.packb(value, use_bin_type=True, unicode_errors="surrogateescape")


def pack_value(value: Any) -> bytes:
    """Encode ``value``, honouring F32 and RawStr markers anywhere inside arrays and maps."""
    out = bytearray()
    _pack_into(out, value)
    return bytes(out)


def _pack_into(out: bytearray, v: Any) -> None:
    if isinstance(v, F32):
        out += b"\xca" + struct.pack(">f", v)
    elif isinstance(v, RawStr):
        out += str_header(len(v)) + bytes(v)
    elif isinstance(v, Raw):
        out += bytes(v)
    elif isinstance(v, msgpack.ExtType):  # a namedtuple: test before tuple
        out += pack(v)
    elif isinstance(v, (list, tuple)):
        out += array_header(len(v))
        for item in v:
            _pack_into(out, item)
    elif isinstance(v, dict):
        out += map_header(len(v))
        for key, item in v.items():
            _pack_into(out, key)
            _pack_into(out, item)
    else:
        out += pack(v)


# ---------------------------------------------------------------------------------------------
# Raw MessagePack scanning (find the byte range of a value without decoding it)

_FIXED = {0xCA: 5, 0xCB: 9, 0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9, 0xD0: 2, 0xD1: 3, 0xD2: 5,
          0xD3: 9, 0xD4: 3, 0xD5: 4, 0xD6: 6, 0xD7: 10, 0xD8: 18}
_SIZED = {0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1),
          0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0)}
_CONTAINERS = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}


def _read_len(buf: bytes, pos: int, size: int) -> int:
    if pos + size > len(buf):
        raise ValueError("truncated length field")
    return int.from_bytes(buf[pos:pos + size], "big")


def skip(buf: bytes, pos: int) -> int:
    """Return the offset just past the single MessagePack value that starts at ``pos``."""
    todo = 1
    while todo:
        todo -= 1
        if pos >= len(buf):
            raise ValueError("truncated value")
        b = buf[pos]
        if b <= 0x7F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):
            pos += 1
        elif b <= 0x8F:
            pos += 1
            todo += 2 * (b & 0x0F)
        elif b <= 0x9F:
            pos += 1
            todo += b & 0x0F
        elif b <= 0xBF:
            pos += 1 + (b & 0x1F)
        elif b in _FIXED:
            pos += _FIXED[b]
        elif b in _SIZED:
            size, extra = _SIZED[b]
            pos += 1 + size + extra + _read_len(buf, pos + 1, size)
        elif b in _CONTAINERS:
            size, per = _CONTAINERS[b]
            todo += per * _read_len(buf, pos + 1, size)
            pos += 1 + size
        else:
            raise ValueError("invalid byte 0x%02x" % b)
    if pos > len(buf):
        raise ValueError("truncated value")
    return pos


def array_items(buf: bytes, pos: int = 0) -> List[Tuple[int, int]]:
    """Byte ranges ``(start, end)`` of the items of the array that starts at ``pos``."""
    b = buf[pos]
    if 0x90 <= b <= 0x9F:
        count, pos = b & 0x0F, pos + 1
    elif b in (0xDC, 0xDD):
        size = 2 if b == 0xDC else 4
        count, pos = _read_len(buf, pos + 1, size), pos + 1 + size
    else:
        raise ValueError("not an array")
    items = []
    for _ in range(count):
        end = skip(buf, pos)
        items.append((pos, end))
        pos = end
    return items


# ---------------------------------------------------------------------------------------------
# Connection


class Failure(Exception):
    """A conformance case failed."""


class CallTimeout(Exception):
    """No answer before the deadline."""


class Message:
    """A decoded message together with its exact bytes."""

    def __init__(self, obj: Any, raw: bytes) -> None:
        self.obj = obj
        self.raw = raw

    def raw_item(self, index: int) -> bytes:
        start, end = array_items(self.raw)[index]
        return self.raw[start:end]

    @property
    def error(self) -> Any:
        return self.obj[2]

    @property
    def result(self) -> Any:
        return self.obj[3]


class Conn:
    """A client connection; answers the server's requests ("mul") while waiting."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.timeout: float = args.timeout
        if args.unix:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(self.timeout)
            self.sock.connect(args.unix)
        else:
            self.sock = socket.create_connection((args.host, args.port), timeout=self.timeout)
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False,
                                         unicode_errors="surrogateescape",
                                         max_buffer_size=MAX_BUFFER)
        self.raw = bytearray()
        self.base = 0  # stream offset of self.raw[0]
        self.ready: Deque[Message] = collections.deque()
        self.replies: Dict[int, Message] = {}
        self.next_id = 0
        self.eof = False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Conn":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def new_id(self) -> int:
        msgid = self.next_id
        self.next_id = (self.next_id + 1) & 0xFFFFFFFF
        return msgid

    def encode_request(self, method: str, params: List[Any]) -> Tuple[int, bytes]:
        msgid = self.new_id()
        return msgid, pack_value([0, msgid, method, params])

    def request(self, method: str, params: List[Any]) -> int:
        """Send a request, return its msgid."""
        msgid, data = self.encode_request(method, params)
        self.sock.sendall(data)
        return msgid

    def notify(self, method: str, params: List[Any]) -> None:
        self.sock.sendall(pack_value([2, method, params]))

    def read_message(self, deadline: float) -> Optional[Message]:
        """Next message from the stream, None at EOF; CallTimeout after ``deadline``."""
        while not self.ready:
            if self.eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CallTimeout()
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(1 << 16)
            except socket.timeout:
                raise CallTimeout() from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
                return None
            self.raw += chunk
            self.unpacker.feed(chunk)
            start = self.base
            for obj in self.unpacker:
                end = self.unpacker.tell()
                self.ready.append(Message(obj, bytes(self.raw[start - self.base:end - self.base])))
                start = end
            del self.raw[:start - self.base]
            self.base = start
        return self.ready.popleft()

    def handle(self, msg: Message) -> None:
        """Route one incoming message: store replies, answer server requests."""
        obj = msg.obj
        if not isinstance(obj, list) or not obj:
            raise Failure("received a non-array message: %r" % (obj,))
        if obj[0] == 1 and len(obj) == 4:
            self.replies[obj[1]] = msg
        elif obj[0] == 0 and len(obj) == 4:
            msgid, method, params = obj[1], obj[2], obj[3]
            if (method == "mul" and isinstance(params, list) and len(params) == 2
                    and all(isinstance(p, (int, float)) for p in params)):
                self.sock.sendall(pack_value([1, msgid, None, params[0] * params[1]]))
            else:
                self.sock.sendall(pack_value([1, msgid, [1, "unknown method: %s" % method],
                                              None]))
        elif obj[0] == 2 and len(obj) == 3:
            pass  # notifications from the server are accepted and ignored
        else:
            raise Failure("received a malformed message: %r" % (obj,))

    def wait_reply(self, msgid: int, timeout: Optional[float] = None) -> Message:
        """Wait for the response to ``msgid``, handling everything else that arrives."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while msgid not in self.replies:
            msg = self.read_message(deadline)
            if msg is None:
                raise Failure("connection closed while waiting for reply %d" % msgid)
            self.handle(msg)
        return self.replies.pop(msgid)

    def call(self, method: str, params: List[Any], timeout: Optional[float] = None) -> Message:
        return self.wait_reply(self.request(method, params), timeout)

    def call_ok(self, method: str, params: List[Any]) -> Any:
        """Call and return the result, failing on an error reply."""
        msg = self.call(method, params)
        if msg.error is not None:
            raise Failure("%s%r answered error %r" % (method, tuple(params), msg.error))
        return msg.result


def expect(cond: bool, why: str) -> None:
    if not cond:
        raise Failure(why)


# ---------------------------------------------------------------------------------------------
# Cases

Case = Callable[[argparse.Namespace], None]


def case_empty_call(args: argparse.Namespace) -> None:
    with Conn(args) as c:
        msg = c.call("get_notifications", [])
        expect(msg.error is None, "error %r" % (msg.error,))
        expect(msg.raw_item(3) == b"\x90", "result %r is not an empty array" % (msg.result,))


def case_add(args: argparse.Namespace) -> None:
    with Conn(args) as c:
        for a, b in ((1, 2), (-5, 3), (2 ** 40, 1)):
            got = c.call_ok("add", [a, b])
            expect(got == a + b and type(got) is int, "add(%d, %d) = %r" % (a, b, got))


def echo_values() -> List[Tuple[str, Any]]:
    """Labelled values covering every MessagePack type and encoding boundary."""
    ints = [0, 1, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, 2 ** 63 - 1, 2 ** 63,
            2 ** 64 - 1, -1, -32, -33, -128, -129, -32768, -32769, -2 ** 31, -2 ** 31 - 1,
            -2 ** 63]
    vals: List[Tuple[str, Any]] = [("nil", None), ("true", True), ("false", False)]
    vals += [("int %d" % i, i) for i in ints]
    for x in (1.5, -0.0, math.inf, -math.inf, math.nan):
        vals += [("float32 %r" % x, F32(x)), ("float64 %r" % x, x)]
    vals += [("str empty", ""), ("str ascii", "hello"), ("str non-BMP", "\U0001F600\U0001D11E"),
             ("str mixed", "h\u00e9llo \u4e16\u754c \U0001F600"),
             ("str invalid utf-8", RawStr(b"\xff\xfeab")),
             ("str lone surrogate bytes", RawStr(b"\xed\xa0\x80")),
             ("str 31", "a" * 31), ("str 32", "b" * 32), ("str 255", "c" * 255),
             ("str 256", "d" * 256), ("str 65535", "e" * 65535), ("str 65536", "f" * 65536)]
    vals += [("bin empty", b""), ("bin 1000", bytes(range(256)) * 3 + bytes(232)),
             ("bin 256", b"\x01" * 256), ("bin 65536", b"\x02" * 65536)]
    vals += [("array empty", []), ("array nested", [1, [2, [3, [], [b"x"]]], "s"]),
             ("array 15", list(range(15))), ("array 16", list(range(16))),
             ("array 65536", [0] * 65536),
             ("map empty", {}), ("map nested", {"a": {"b": {"c": [1, {}]}}, "d": None}),
             ("map 16", {str(i): i for i in range(16)}),
             ("map int keys", {1: "one", -2: "minus two", 2 ** 40: None}),
             ("map bin key", {b"\x00key": 1, "key": 2}),
             ("map mixed keys", {None: 1, True: 2, 1.5: 3}),
             ("mixed markers", [F32(2.5), RawStr(b"\xc3"), {RawStr(b"k\xff"): F32(-1.0)}])]
    vals += [("ext 5 len 3", msgpack.ExtType(5, b"abc")),
             ("ext fixext 1/2/4/8/16", [msgpack.ExtType(1, b"x" * n) for n in (1, 2, 4, 8, 16)]),
             ("ext -1 timestamp32", Raw(b"\xd6\xff" + bytes(4))),
             ("ext -1 timestamp96", Raw(b"\xc7\x0c\xff" + bytes(12))),
             ("ext 7 len 300", msgpack.ExtType(7, bytes(300)))]
    return vals


def check_echo(c: Conn, label: str, value: Any, timeout: Optional[float] = None) -> Optional[str]:
    """Echo ``value``; return None when the result bytes equal the sent bytes, else why not."""
    sent = pack_value(value)
    msg = c.call("echo", [value], timeout)
    if msg.error is not None:
        return "%s: error %r" % (label, msg.error)
    got = msg.raw_item(3)
    if got != sent:
        return "%s: sent %s got %s" % (label, sent[:24].hex(), got[:24].hex())
    return None


def case_echo_each_type(args: argparse.Namespace) -> None:
    with Conn(args) as c:
        problems = [p for p in (check_echo(c, label, v) for label, v in echo_values()) if p]
        expect(not problems, "; ".join(problems))


def case_large_echo(args: argparse.Namespace) -> None:
    with Conn(args) as c:
        data = bytes(range(251)) * (4 * 1024 * 1024 // 251) + bytes(4 * 1024 * 1024 % 251)
        problem = check_echo(c, "4 MiB bin", data, max(args.timeout, 30.0))
        expect(problem is None, str(problem))


def case_unknown_method(args: argparse.Namespace) -> None:
    with Conn(args) as c:
        msg = c.call("no_such_method", [1])
        expect(msg.error is not None, "no error for an unknown method")
        expect(msg.result is None, "result %r next to the error" % (msg.result,))


def case_fail_error_shape(args: argparse.Namespace) -> None:
    with Conn(args) as c:
        msg = c.call("fail", ["boom"])
        err = msg.error
        expect(isinstance(err, list) and len(err) == 2, "error %r is not [code, message]" % (err,))
        expect(isinstance(err[0], int) and not isinstance(err[0], bool),
               "error code %r is not an int" % (err[0],))
        expect(isinstance(err[1], str) and "boom" in err[1], "message %r lacks boom" % (err[1],))
        expect(msg.result is None, "result %r next to the error" % (msg.result,))


def case_notification_order(args: argparse.Namespace) -> None:
    with Conn(args) as c:
        for i in range(1, 6):
            c.notify("note", [i])
        got = c.call_ok("get_notifications", [])
        want = [["note", [i]] for i in range(1, 6)]
        expect(got == want, "got %r, want %r" % (got, want))


def case_pipelined_out_of_order(args: argparse.Namespace) -> None:
    with Conn(args) as c:
        slow, slow_data = c.encode_request("sleep_ms", [300])
        fast, fast_data = c.encode_request("sleep_ms", [10])
        add, add_data = c.encode_request("add", [1, 2])
        c.sock.sendall(slow_data + fast_data + add_data)
        order: List[int] = []
        deadline = time.monotonic() + c.timeout
        while len(order) < 3:
            msg = c.read_message(deadline)
            if msg is None:
                raise Failure("connection closed after %d replies" % len(order))
            c.handle(msg)
            if msg.obj[0] == 1 and msg.obj[1] not in order:
                order.append(msg.obj[1])
        expect(order[-1] == slow, "sleep_ms(300) reply was not last: order %r" % (order,))
        want = {slow: 300, fast: 10, add: 3}
        for msgid, value in want.items():
            reply = c.replies.pop(msgid)
            expect(reply.error is None and reply.result == value,
                   "reply %d: error %r result %r, want %r" % (msgid, reply.error,
                                                               reply.result, value))


def case_concurrent_1000(args: argparse.Namespace) -> None:
    with Conn(args) as c:
        ids = {}
        data = bytearray()
        for i in range(1000):
            msgid, req = c.encode_request("add", [i, i])
            ids[msgid] = i
            data += req
        c.sock.sendall(data)
        for msgid, i in ids.items():
            msg = c.wait_reply(msgid)
            expect(msg.error is None and msg.result == 2 * i,
                   "add(%d, %d): error %r result %r" % (i, i, msg.error, msg.result))


def case_timeout_on_sleeping_server(args: argparse.Namespace) -> None:
    with Conn(args) as c:
        start = time.monotonic()
        try:
            c.call("sleep_ms", [2000], timeout=0.2)
            raise Failure("sleep_ms(2000) answered within 0.2 s")
        except CallTimeout:
            elapsed = time.monotonic() - start
        expect(0.15 <= elapsed <= 1.0, "gave up after %.3f s" % elapsed)
        got = c.call_ok("add", [1, 1])
        expect(got == 2, "add(1, 1) = %r after the timeout" % (got,))


def case_server_to_client_call(args: argparse.Namespace) -> None:
    with Conn(args) as c:
        got = c.call_ok("call_back", ["mul", [6, 7]])
        expect(got == 42, "call_back mul(6, 7) = %r" % (got,))
        msg = c.call("call_back", ["no_such_client_method", [1]])
        expect(msg.error is not None,
               "our error answer was not forwarded: result %r" % (msg.result,))


def case_disconnect_mid_call(args: argparse.Namespace) -> None:
    with Conn(args) as c:
        msgid = c.request("disconnect", [])
        deadline = time.monotonic() + 2.0
        try:
            while True:
                msg = c.read_message(deadline)
                if msg is None:
                    return  # EOF: pass
                c.handle(msg)
                expect(msgid not in c.replies, "disconnect() was answered: %r" % (msg.obj,))
        except CallTimeout:
            raise Failure("no EOF within 2 s after disconnect()") from None


CASES: Dict[str, Case] = {
    "empty_call": case_empty_call,
    "add": case_add,
    "echo_each_type": case_echo_each_type,
    "large_echo": case_large_echo,
    "unknown_method": case_unknown_method,
    "fail_error_shape": case_fail_error_shape,
    "notification_order": case_notification_order,
    "pipelined_out_of_order": case_pipelined_out_of_order,
    "concurrent_1000": case_concurrent_1000,
    "timeout_on_sleeping_server": case_timeout_on_sleeping_server,
    "server_to_client_call": case_server_to_client_call,
    "disconnect_mid_call": case_disconnect_mid_call,
}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="independent MessagePack-RPC conformance client")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int)
    where.add_argument("--unix")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--cases", help="comma separated case names (default: all): "
                    + ",".join(CASES))
    ap.add_argument("--timeout", type=float, default=10.0,
                    help="per-call timeout in seconds (default 10)")
    args = ap.parse_args(argv)
    names = list(CASES)
    if args.cases:
        names = [n.strip() for n in args.cases.split(",") if n.strip()]
        unknown = [n for n in names if n not in CASES]
        if unknown:
            print("unknown case(s): %s; known: %s" % (", ".join(unknown), ", ".join(CASES)),
                  file=sys.stderr)
            return 2
    passed = failed = 0
    for name in names:
        try:
            CASES[name](args)
        except Failure as exc:
            print("FAIL %s: %s" % (name, exc), flush=True)
            failed += 1
        except CallTimeout:
            print("FAIL %s: timed out after %.1f s" % (name, args.timeout), flush=True)
            failed += 1
        except Exception as exc:  # noqa: BLE001 - report any crash as a failure
            print("FAIL %s: %s: %s" % (name, type(exc).__name__, exc), flush=True)
            failed += 1
        else:
            print("PASS %s" % name, flush=True)
            passed += 1
    print("%d passed, %d failed" % (passed, failed), flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
