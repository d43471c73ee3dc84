#!/usr/bin/env python3
"""Cross-language hostile-peer test of the conformance servers (tests/interop/README.md).

For each server (rust, c, python; `tests/interop/serve LANG --port 0`), while a
well-behaved client keeps calling `add` and `echo` and checking every answer,
sends hostile inputs, each on its own connection, and checks what comes back.
For every hostile input the acceptable outcomes are: a well-formed
MessagePack-RPC error reply for that msgid, a correct reply, or the server
closing the connection, all within a few seconds. A hang, a malformed reply, a
reply nobody asked for or a success reply with a wrong value is a failure.
Afterwards the server must still be alive, answer a fresh client, and stop
cleanly on SIGTERM; the well-behaved client must have seen no wrong answer and
no error.

Usage: tests/interop/hostile.py [--servers rust,c,python] [--seed N] [--verbose]

Prints one `PASS server/case - what happened` or `FAIL server/case: why` line
per (server, case), then NOTE lines where the servers behaved differently on
the same input, and last `N passed, N failed`. Exit status 0 only when every
case passed. Only 127.0.0.1 is used; every wait is bounded.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))
SERVERS = ["rust", "c", "python"]

HOST = "127.0.0.1"
START_TIMEOUT = 20.0  # the server prints its address
CASE_TIMEOUT = 3.0  # one hostile exchange: a reply or a close must come by then
FRESH_TIMEOUT = 3.0  # a fresh client's call
GOOD_TIMEOUT = 5.0  # the well-behaved client's call
GOOD_PAUSE = 0.003  # between the well-behaved client's calls
GOOD_MAX_CALLS = 200_000  # bounds its loop
STOP_TIMEOUT = 10.0  # SIGTERM to exit
SERVER_BUDGET = 20.0  # past this, a server's remaining cases are skipped (failed): bounds a broken run
DEFAULT_SEED = 20240611
FUZZ_COUNT = 200
SETTLE = 0.2  # before a half-close case sends (they run in parallel: costs nothing)

# Limits of the servers (core/src/limits.rs): the message array is nesting
# level 1, so a request's params array is level 2 and params[0] level 3.
MAX_DEPTH = 128
MAX_MESSAGE_SIZE = 64 * 1024 * 1024

U32_MAX = 2**32 - 1
I64_MAX = 2**63 - 1
I64_MIN = -(2**63)
U64_MAX = 2**64 - 1

MSG_MORE = getattr(socket, "MSG_MORE", 0)  # Linux: hold the segment back (FIN rides with the data)

PROBE_ID = 424242  # msgid of the valid request appended after a hostile one
FUZZ_PROBE_ID = 3_000_000_007

sys.setrecursionlimit(10_000)

# ---------------------------------------------------------------------------
# MessagePack values as comparable nodes, an encoder and a strict decoder.
#
# A node is a tuple: ("nil",), ("bool", b), ("int", n), ("f32", bits|"nan"),
# ("f64", bits|"nan"), ("str", bytes), ("bin", bytes), ("arr", (nodes)),
# ("map", ((k, v), ...)), ("ext", code, bytes). Maps keep order and duplicate
# keys, str and bin stay apart, float32 and float64 stay apart: two nodes are
# equal exactly when they are the same MessagePack value (encodings aside).
# ---------------------------------------------------------------------------

Node = Tuple[Any, ...]

NIL: Node = ("nil",)
TRUE: Node = ("bool", True)
FALSE: Node = ("bool", False)


def I(n: int) -> Node:
    return ("int", n)


def S(s: "str | bytes") -> Node:
    return ("str", s.encode() if isinstance(s, str) else bytes(s))


def B(b: bytes) -> Node:
    return ("bin", bytes(b))


def A(*items: Node) -> Node:
    return ("arr", tuple(items))


def M(*pairs: Tuple[Node, Node]) -> Node:
    return ("map", tuple(pairs))


def X(code: int, data: bytes) -> Node:
    return ("ext", code, bytes(data))


def F32(x: float) -> Node:
    if math.isnan(x):
        return ("f32", "nan")
    return ("f32", struct.unpack(">I", struct.pack(">f", x))[0])


def F64(x: float) -> Node:
    if math.isnan(x):
        return ("f64", "nan")
    return ("f64", struct.unpack(">Q", struct.pack(">d", x))[0])


def float_of(n: Node) -> float:
    if n[1] == "nan":
        return math.nan
    if n[0] == "f32":
        return float(struct.unpack(">f", struct.pack(">I", n[1]))[0])
    return float(struct.unpack(">d", struct.pack(">Q", n[1]))[0])


def enc_int(n: int) -> bytes:
    if n >= 0:
        if n < 128:
            return bytes([n])
        if n <= 0xFF:
            return b"\xcc" + bytes([n])
        if n <= 0xFFFF:
            return b"\xcd" + struct.pack(">H", n)
        if n <= U32_MAX:
            return b"\xce" + struct.pack(">I", n)
        return b"\xcf" + struct.pack(">Q", n)
    if n >= -32:
        return struct.pack(">b", n)
    if n >= -128:
        return b"\xd0" + struct.pack(">b", n)
    if n >= -32768:
        return b"\xd1" + struct.pack(">h", n)
    if n >= -(2**31):
        return b"\xd2" + struct.pack(">i", n)
    return b"\xd3" + struct.pack(">q", n)


def _len_head(n: int, fix: Optional[Tuple[int, int]], markers: Tuple[Optional[int], int, int]) -> bytes:
    if fix is not None and n < fix[1]:
        return bytes([fix[0] | n])
    if markers[0] is not None and n <= 0xFF:
        return bytes([markers[0], n])
    if n <= 0xFFFF:
        return bytes([markers[1]]) + struct.pack(">H", n)
    return bytes([markers[2]]) + struct.pack(">I", n)


def enc(n: Node) -> bytes:
    """The smallest encoding of a node (as every server here writes it)."""
    t = n[0]
    if t == "nil":
        return b"\xc0"
    if t == "bool":
        return b"\xc3" if n[1] else b"\xc2"
    if t == "int":
        return enc_int(n[1])
    if t == "f32":
        return b"\xca" + (struct.pack(">I", 0x7FC00000) if n[1] == "nan" else struct.pack(">I", n[1]))
    if t == "f64":
        return b"\xcb" + (struct.pack(">Q", 0x7FF8000000000000) if n[1] == "nan" else struct.pack(">Q", n[1]))
    if t == "str":
        return _len_head(len(n[1]), (0xA0, 32), (0xD9, 0xDA, 0xDB)) + bytes(n[1])
    if t == "bin":
        return _len_head(len(n[1]), None, (0xC4, 0xC5, 0xC6)) + bytes(n[1])
    if t == "arr":
        return _len_head(len(n[1]), (0x90, 16), (None, 0xDC, 0xDD)) + b"".join(enc(x) for x in n[1])
    if t == "map":
        head = _len_head(len(n[1]), (0x80, 16), (None, 0xDE, 0xDF))
        return head + b"".join(enc(k) + enc(v) for k, v in n[1])
    if t == "ext":
        code, data = n[1], n[2]
        fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}.get(len(data))
        head = bytes([fixed]) if fixed else _len_head(len(data), None, (0xC7, 0xC8, 0xC9))
        return head + struct.pack(">b", code) + bytes(data)
    raise ValueError(f"not a node: {n!r}")


class Incomplete(Exception):
    """The bytes end inside a MessagePack object."""


class Malformed(Exception):
    """Bytes that are not MessagePack."""


DECODE_DEPTH = 1000


def decode(buf: "bytes | bytearray", pos: int = 0, depth: int = 0) -> Tuple[Node, int]:
    """Decodes one object at buf[pos]; returns it and where it ends."""
    if depth > DECODE_DEPTH:
        raise Malformed("nested more than 1000 levels deep")
    end = len(buf)

    def need(n: int) -> None:
        if pos + n > end:
            raise Incomplete()

    def uint(width: int) -> int:
        need(width)
        return int.from_bytes(buf[pos:pos + width], "big")

    need(1)
    b = buf[pos]
    pos += 1
    if b <= 0x7F:
        return ("int", b), pos
    if b >= 0xE0:
        return ("int", b - 256), pos
    if 0x80 <= b <= 0x8F:
        return _decode_map(buf, pos, b & 0x0F, depth)
    if 0x90 <= b <= 0x9F:
        return _decode_arr(buf, pos, b & 0x0F, depth)
    if 0xA0 <= b <= 0xBF:
        n = b & 0x1F
        need(n)
        return ("str", bytes(buf[pos:pos + n])), pos + n
    if b == 0xC0:
        return NIL, pos
    if b == 0xC1:
        raise Malformed(f"reserved byte 0xc1 at offset {pos - 1}")
    if b in (0xC2, 0xC3):
        return ("bool", b == 0xC3), pos
    if 0xC4 <= b <= 0xC6 or 0xD9 <= b <= 0xDB:
        width = 1 << ((b - 0xC4) if b <= 0xC6 else (b - 0xD9))
        n = uint(width)
        pos += width
        need(n)
        return ("bin" if b <= 0xC6 else "str", bytes(buf[pos:pos + n])), pos + n
    if 0xC7 <= b <= 0xC9:
        width = 1 << (b - 0xC7)
        n = uint(width)
        pos += width
        need(1 + n)
        code = struct.unpack(">b", bytes(buf[pos:pos + 1]))[0]
        return ("ext", code, bytes(buf[pos + 1:pos + 1 + n])), pos + 1 + n
    if b == 0xCA:
        bits = uint(4)
        f = struct.unpack(">f", struct.pack(">I", bits))[0]
        return ("f32", "nan" if math.isnan(f) else bits), pos + 4
    if b == 0xCB:
        bits = uint(8)
        f = struct.unpack(">d", struct.pack(">Q", bits))[0]
        return ("f64", "nan" if math.isnan(f) else bits), pos + 8
    if 0xCC <= b <= 0xCF:
        width = 1 << (b - 0xCC)
        return ("int", uint(width)), pos + width
    if 0xD0 <= b <= 0xD3:
        width = 1 << (b - 0xD0)
        need(width)
        return ("int", int.from_bytes(buf[pos:pos + width], "big", signed=True)), pos + width
    if 0xD4 <= b <= 0xD8:
        n = 1 << (b - 0xD4)
        need(1 + n)
        code = struct.unpack(">b", bytes(buf[pos:pos + 1]))[0]
        return ("ext", code, bytes(buf[pos + 1:pos + 1 + n])), pos + 1 + n
    if b in (0xDC, 0xDD):
        width = 2 if b == 0xDC else 4
        n = uint(width)
        return _decode_arr(buf, pos + width, n, depth)
    # 0xde, 0xdf
    width = 2 if b == 0xDE else 4
    n = uint(width)
    return _decode_map(buf, pos + width, n, depth)


def _decode_arr(buf: "bytes | bytearray", pos: int, n: int, depth: int) -> Tuple[Node, int]:
    if n > len(buf) - pos:  # every element takes a byte at least
        raise Incomplete()
    items = []
    for _ in range(n):
        item, pos = decode(buf, pos, depth + 1)
        items.append(item)
    return ("arr", tuple(items)), pos


def _decode_map(buf: "bytes | bytearray", pos: int, n: int, depth: int) -> Tuple[Node, int]:
    if 2 * n > len(buf) - pos:
        raise Incomplete()
    pairs = []
    for _ in range(n):
        k, pos = decode(buf, pos, depth + 1)
        v, pos = decode(buf, pos, depth + 1)
        pairs.append((k, v))
    return ("map", tuple(pairs)), pos


def show(n: Node, budget: int = 70) -> str:
    """A short human-readable form of a node."""
    out = _show(n)
    return out if len(out) <= budget else out[: budget - 3] + "..."


def _show(n: Node) -> str:
    t = n[0]
    if t == "nil":
        return "nil"
    if t == "bool":
        return "true" if n[1] else "false"
    if t == "int":
        return str(n[1])
    if t in ("f32", "f64"):
        return f"{t}({float_of(n)!r})"
    if t == "str":
        return repr(n[1].decode("utf-8", "backslashreplace")) if len(n[1]) <= 80 else f"str({len(n[1])} bytes)"
    if t == "bin":
        return f"bin({n[1][:8].hex()}{'...' if len(n[1]) > 8 else ''}, {len(n[1])} bytes)"
    if t == "arr":
        if len(n[1]) > 8:
            return f"[{', '.join(_show(x) for x in n[1][:8])}, ... {len(n[1])} items]"
        return "[" + ", ".join(_show(x) for x in n[1]) + "]"
    if t == "map":
        return "{" + ", ".join(f"{_show(k)}: {_show(v)}" for k, v in n[1][:8]) + ("..." if len(n[1]) > 8 else "") + "}"
    return f"ext({n[1]}, {len(n[2])} bytes)"


def hexs(b: bytes, limit: int = 48) -> str:
    return b[:limit].hex() + (f"...({len(b)} bytes)" if len(b) > limit else "")


def nested(levels: int, kind: str = "arr") -> Node:
    """`levels` arrays (or single-entry maps with key 0) around nil."""
    v: Node = NIL
    for _ in range(levels):
        v = A(v) if kind == "arr" else M((I(0), v))
    return v


def request(msgid: int, method: "str | bytes", params: Sequence[Node]) -> bytes:
    return enc(A(I(0), I(msgid), S(method), A(*params)))


def raw_request(msgid: bytes, method: bytes, params: bytes, head: bytes = b"\x94\x00") -> bytes:
    """A request from pre-encoded parts (for encodings `enc` cannot make)."""
    return head + msgid + method + params


def fixstr(s: "str | bytes") -> bytes:
    return enc(S(s))


PROBE = request(PROBE_ID, "add", [I(20), I(22)])

# ---------------------------------------------------------------------------
# Expectations: what a reply to a msgid may be.
# ---------------------------------------------------------------------------

Check = Optional[Callable[[Node], Optional[str]]]  # None: a success reply is wrong


@dataclass
class Expect:
    label: str
    msgid: int
    check: Check  # for a success reply: None if right, else why it is wrong
    want: str = ""  # the right success value, for messages

    def __post_init__(self) -> None:
        if not self.want:
            self.want = "an error reply or a close (no success reply is right)" if self.check is None \
                else "the right value"


def value_is(want: Node) -> Check:
    def check(got: Node) -> Optional[str]:
        return None if got == want else f"answered {show(got)}, expected {show(want)}"

    return check


def any_value(_: Node) -> Optional[str]:
    return None


def sum_check(a: int, b: int) -> Check:
    """add(a, b) with integers: the exact sum, when MessagePack can hold it."""
    s = a + b
    if I64_MIN <= s <= U64_MAX:
        return value_is(I(s))
    return None  # no success reply can be right


def numeric(n: Node) -> Optional[float]:
    if n[0] in ("int", "bool"):
        return float(n[1])
    if n[0] in ("f32", "f64"):
        return float_of(n)
    return None


def dynamic_add_check(a: Node, b: Node) -> Check:
    """add(a, b) for any params: integers add exactly; other values are right
    only where `a + b` means something (a dynamic server may answer it): numbers
    add (booleans as 0 and 1), str/bin/array concatenate. Anything else must be
    an error."""
    if a[0] in ("int", "bool") and b[0] in ("int", "bool"):
        return sum_check(int(a[1]), int(b[1]))  # a dynamic server's true + 1 is 2
    if a[0] in ("int", "bool", "f32", "f64") and b[0] in ("int", "bool", "f32", "f64"):
        want = (numeric(a) or 0.0) + (numeric(b) or 0.0)

        def check(got: Node) -> Optional[str]:
            g = numeric(got)
            if g is None or got[0] == "int" and not float(want).is_integer():
                return f"answered {show(got)}, expected {want!r}"
            if (math.isnan(g) and math.isnan(want)) or g == want:
                return None
            return f"answered {show(got)}, expected {want!r}"

        return check
    if a[0] == b[0] and a[0] in ("str", "bin"):
        return value_is((a[0], a[1] + b[1]))
    if a[0] == b[0] == "arr":
        return value_is(("arr", a[1] + b[1]))
    return None


# The contract's methods (tests/interop/README.md).
CONTRACT_METHODS = {"add", "echo", "fail", "sleep_ms", "get_notifications", "call_back", "disconnect"}


def expect_for_request(label: str, msgid: int, method: bytes, params: Tuple[Node, ...]) -> Expect:
    """What a correct reply to a well-formed request may be."""
    name = method.decode("utf-8", "replace")
    if name == "add":
        check = dynamic_add_check(params[0], params[1]) if len(params) == 2 else None
        return Expect(label, msgid, check, "a + b")
    if name == "echo":
        return Expect(label, msgid, value_is(params[0]) if len(params) == 1 else None, "x")
    if name == "fail":
        return Expect(label, msgid, None, "an error")
    if name in CONTRACT_METHODS:
        return Expect(label, msgid, any_value, "anything")
    return Expect(label, msgid, None, "an error (unknown method)")


def expects_of_stream(stream: bytes, label: str) -> Tuple[List[Expect], bool]:
    """Reads `stream` the way a server does and lists the replies it may send:
    every message that is a request, or says it is one and has a readable
    msgid, gets one. The flag is False when the stream ends inside an object
    (the server then waits for more bytes)."""
    pos, n = 0, 0
    out: List[Expect] = []
    while pos < len(stream):
        try:
            node, pos = decode(stream, pos)
        except Incomplete:
            return out, False
        except Malformed:
            return out, True  # the server closes here
        n += 1
        if node[0] != "arr" or len(node[1]) < 2 or node[1][0] != I(0):
            continue
        items = node[1]
        mid = items[1]
        if mid[0] != "int" or not 0 <= mid[1] <= U32_MAX:
            continue
        lab = f"{label}{n}"
        if len(items) == 4 and items[2][0] in ("str", "bin") and items[3][0] == "arr":
            out.append(expect_for_request(lab, mid[1], items[2][1], items[3][1]))
        else:
            out.append(Expect(lab, mid[1], None, "an error (invalid request)"))
    return out, True


# ---------------------------------------------------------------------------
# A raw connection to a server.
# ---------------------------------------------------------------------------


class Raw:
    """A TCP connection that reads whole MessagePack objects with a deadline."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=CASE_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False
        self.reset = False
        self.send_failed = False

    def send(self, data: bytes, timeout: float = CASE_TIMEOUT, more: bool = False) -> bool:
        """Sends all of data; False if the server closed first or stopped reading.
        With `more`, the kernel holds the last segment back, so that a shut()
        right after sends the FIN in the same segment as the data."""
        if not data:
            return True
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(data, MSG_MORE if more else 0)
            return True
        except socket.timeout:
            self.send_failed = True
            return False
        except OSError:  # EPIPE, ECONNRESET: the server closed
            self.send_failed = True
            return False

    def shut(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def event(self, deadline: float) -> Tuple[str, Any]:
        """("msg", node), ("closed", partial_bytes), ("malformed", why) or ("timeout", None)."""
        while True:
            if self.buf:
                try:
                    node, end = decode(self.buf)
                except Incomplete:
                    pass
                except Malformed as e:
                    return "malformed", f"{e} in {hexs(bytes(self.buf))}"
                else:
                    del self.buf[:end]
                    return "msg", node
            if self.eof:
                return "closed", bytes(self.buf)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout", None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                return "timeout", None
            except OSError:
                self.eof = self.reset = True
                continue
            if not data:
                self.eof = True
            self.buf += data

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------
# Outcomes
# ---------------------------------------------------------------------------


@dataclass
class Outcome:
    ok: bool
    what: str  # what the server did, for people
    sig: str  # the same, comparable between servers (no message texts)
    sub: Dict[str, str] = field(default_factory=dict)  # per-input signatures (fuzz)


def error_shape(err: Node, result: Node) -> Tuple[Optional[str], str, str]:
    """(problem, short form, signature form) of an error reply."""
    items: Tuple[Node, ...] = err[1] if err[0] == "arr" else ()
    if err[0] != "arr" or len(items) != 2 or items[0][0] != "int" or items[1][0] != "str":
        return f"error object is not [code, message]: {show(err)}", f"error {show(err)}", "err?"
    problem = None if result == NIL else f"error reply with a non-nil result {show(result)}"
    msg = items[1][1].decode("utf-8", "replace")
    return problem, f"error [{items[0][1]}, {msg[:60]!r}]", "err"


def parse_reply(node: Node) -> Tuple[Optional[str], Optional[Tuple[int, Node, Node]]]:
    """(problem, (msgid, error, result)) of a message from the server."""
    if node[0] != "arr":
        return f"the server sent a non-array message {show(node)}", None
    items = node[1]
    if items and items[0] == I(0):
        return f"the server sent a request {show(node)}", None
    if items and items[0] == I(2):
        return f"the server sent a notification {show(node)}", None
    if len(items) != 4 or items[0] != I(1):
        return f"malformed reply {show(node)}", None
    if items[1][0] != "int" or not 0 <= items[1][1] <= U32_MAX:
        return f"reply with a bad msgid {show(node)}", None
    return None, (items[1][1], items[2], items[3])


class Tracker:
    """Matches the replies read on one connection against what may come."""

    def __init__(self, expects: Sequence[Expect]) -> None:
        self.pending: List[Expect] = list(expects)
        self.results: Dict[str, Tuple[str, str]] = {}  # label -> (what, sig)
        self.problems: List[str] = []

    def take(self, node: Node) -> None:
        problem, reply = parse_reply(node)
        if reply is None:
            self.problems.append(problem or "bad reply")
            return
        msgid, err, result = reply
        candidates = [e for e in self.pending if e.msgid == msgid]
        if not candidates:
            self.problems.append(f"reply to msgid {msgid}, which no request had: {show(node)}")
            return
        if err == NIL:
            chosen = next((e for e in candidates if e.check is not None and e.check(result) is None), None)
            if chosen is None:
                chosen = candidates[0]
                why = chosen.check(result) if chosen.check else f"answered {show(result)}, expected {chosen.want}"
                self.problems.append(f"{chosen.label}: wrong success reply: {why}")
            # A value the expectation leaves open is part of what is compared.
            pinned = chosen.check is not any_value
            self.results[chosen.label] = (f"ok {show(result, 40)}", "ok" if pinned else f"ok:{show(result, 60)}")
        else:
            chosen = candidates[0]
            problem, short, sig = error_shape(err, result)
            if problem:
                self.problems.append(f"{chosen.label}: {problem}")
            self.results[chosen.label] = (short, sig)
        self.pending.remove(chosen)

    def summary(self, labels: Sequence[str], state: str) -> Tuple[str, str]:
        what = "; ".join(f"{l}: {self.results.get(l, ('-', ''))[0]}" for l in labels)
        sig = " ".join(f"{l}={self.results.get(l, ('', '-'))[1]}" for l in labels)
        return f"{what}; {state}" if what else state, f"{sig} {state}".strip()


def exchange(
    port: int,
    chunks: Sequence[bytes],
    expects: Sequence[Expect],
    *,
    gap: float = 0.0,
    shut: bool = False,
    want_close: bool = False,
    leave: bool = False,
    timeout: float = CASE_TIMEOUT,
) -> Outcome:
    """Sends `chunks` on a new connection and reads until every expected reply
    came (and, with `want_close` or when nothing is expected, until the server
    closed), the server closed, or the deadline passed (a failure: the server
    hangs). With `shut`, half-closes after the last chunk, the FIN riding in
    the same segment as the last bytes. With `leave`, nothing expected means
    nothing to wait for: close at once."""
    labels = [e.label for e in expects]
    tr = Tracker(expects)
    try:
        raw = Raw(port)
    except OSError as e:
        return Outcome(False, f"cannot connect: {e}", "no-connect")
    try:
        if leave and not expects:
            raw.send(b"".join(chunks))
            return Outcome(True, "sent, nothing to wait for", "sent")
        if shut:
            time.sleep(SETTLE)  # the server takes the connection in before the bytes come
        for i, chunk in enumerate(chunks):
            if not raw.send(chunk, more=shut and i + 1 == len(chunks)):
                break
            if gap and i + 1 < len(chunks):
                time.sleep(gap)
        if shut:
            raw.shut()
        deadline = time.monotonic() + timeout
        state = ""
        while True:
            if not tr.pending and expects and not want_close:
                state = "open"
                break
            kind, data = raw.event(deadline)
            if kind == "msg":
                tr.take(data)
            elif kind == "closed":
                state = "closed"
                if data:
                    tr.problems.append(f"the server closed in the middle of a reply: {hexs(data)}")
                break
            elif kind == "malformed":
                tr.problems.append(f"malformed reply: {data}")
                state = "malformed"
                break
            else:
                waiting = ", ".join(e.label for e in tr.pending) or "the close"
                tr.problems.append(f"hang: no reply and no close within {timeout:g} s (waiting for {waiting})")
                state = "hang"
                break
        what, sig = tr.summary(labels, state)
        if raw.send_failed and state == "closed":
            what += " (before all was sent)"
        if tr.problems:
            return Outcome(False, "; ".join(tr.problems) + f" [{what}]", sig)
        return Outcome(True, what, sig)
    finally:
        raw.close()


def fresh_call(port: int, timeout: float = FRESH_TIMEOUT) -> Optional[str]:
    """A new connection's add and echo; None if both are answered right."""
    try:
        raw = Raw(port)
    except OSError as e:
        return f"cannot connect: {e}"
    try:
        value = M((S("k"), A(I(1), B(b"\x00\xff"), F64(0.25))))
        raw.send(request(1, "add", [I(1000), I(-1)]) + request(2, "echo", [value]))
        tr = Tracker([Expect("add", 1, value_is(I(999))), Expect("echo", 2, value_is(value))])
        deadline = time.monotonic() + timeout
        while tr.pending:
            kind, data = raw.event(deadline)
            if kind != "msg":
                return f"a fresh client got {kind} instead of its replies"
            tr.take(data)
        if tr.problems:
            return "a fresh client: " + "; ".join(tr.problems)
        if any(sig != "ok" for _, sig in tr.results.values()):
            return f"a fresh client got errors: {tr.results}"
        return None
    finally:
        raw.close()


# ---------------------------------------------------------------------------
# The well-behaved client
# ---------------------------------------------------------------------------

GOOD_VALUES: List[Any] = [
    None, True, False, 0, -1, 127, 128, -33, 2**31, -(2**31) - 1, I64_MAX, I64_MIN, U64_MAX,
    0.5, -1e300, math.inf, "", "héllo 😀", "x" * 300, b"", bytes(range(256)), [],
    [1, [2, [3, []]]], {"a": 1, "b": [None, "z"]}, {1: "int key", 2: b"bin"},
    msgpack.ExtType(7, b"abc"), msgpack.ExtType(100, b"x" * 20), b"\xab" * 70000,
]


class GoodClient(threading.Thread):
    """Calls add and echo over one blocking socket and checks every answer."""

    def __init__(self, port: int) -> None:
        super().__init__(name="good-client", daemon=True)
        self.port = port
        self.stop_event = threading.Event()
        self.calls = 0
        self.wrong = 0
        self.errors = 0
        self.problems: List[str] = []
        self.max_latency = 0.0
        self.last_right = 0.0  # time.monotonic() of the last right answer

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # never die silently
            self.errors += 1
            self.problems.append(f"the client crashed: {e!r}")

    def _problem(self, text: str) -> None:
        if len(self.problems) < 10:
            self.problems.append(text)

    def _run(self) -> None:
        sock: Optional[socket.socket] = None
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        for i in range(1, GOOD_MAX_CALLS + 1):
            if self.stop_event.is_set():
                break
            if sock is None:
                try:
                    sock = socket.create_connection((HOST, self.port), timeout=GOOD_TIMEOUT)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
                except OSError as e:
                    self.errors += 1
                    self._problem(f"call {i}: cannot connect: {e}")
                    self.stop_event.wait(0.2)
                    continue
            if i % 2:
                a, b = (i * 7919) % 1_000_003 - 500_000, (i * 104729) % (2**40) - 2**39
                method, params, want = "add", [a, b], a + b
            else:
                v = GOOD_VALUES[(i // 2) % len(GOOD_VALUES)]
                method, params, want = "echo", [v], v
            started = time.monotonic()
            try:
                sock.sendall(msgpack.packb([0, i, method, params], use_bin_type=True))
                reply = self._read(sock, unpacker, started + GOOD_TIMEOUT)
            except Exception as e:  # timeouts, resets, undecodable bytes
                self.errors += 1
                self._problem(f"call {i} {method}: {type(e).__name__}: {e}")
                sock.close()
                sock = None
                continue
            self.max_latency = max(self.max_latency, time.monotonic() - started)
            self.calls += 1
            if not (isinstance(reply, list) and len(reply) == 4 and reply[0] == 1 and reply[1] == i):
                self.wrong += 1
                self._problem(f"call {i} {method}: malformed reply {reply!r:.100}")
                sock.close()
                sock = None
                continue
            if reply[2] is not None:
                self.errors += 1
                self._problem(f"call {i} {method}{params!r:.60}: error reply {reply[2]!r:.100}")
            elif msgpack.packb(reply[3], use_bin_type=True) != msgpack.packb(want, use_bin_type=True):
                self.wrong += 1
                self._problem(f"call {i} {method}{params!r:.60}: answered {reply[3]!r:.60}")
            else:
                self.last_right = time.monotonic()
            self.stop_event.wait(GOOD_PAUSE)
        if sock is not None:
            sock.close()

    @staticmethod
    def _read(sock: socket.socket, unpacker: "msgpack.Unpacker", deadline: float) -> Any:
        while True:
            try:
                return next(unpacker)
            except StopIteration:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no reply in time")
            sock.settimeout(remaining)
            data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError("the server closed the connection")
            unpacker.feed(data)


# ---------------------------------------------------------------------------
# The hostile cases
# ---------------------------------------------------------------------------


@dataclass
class Ctx:
    lang: str
    port: int
    pid: int
    verbose: bool
    seed: int


@dataclass
class Case:
    name: str
    run: Callable[[Ctx], Outcome]
    # Runs at the same time as the cases next to it that have the flag too
    # (cases that may have to wait out the timeout: they must not add up).
    parallel: bool = False


def probe_expect() -> Expect:
    return Expect("probe", PROBE_ID, value_is(I(42)), "42")


def simple(name: str, payload: bytes, expects: Sequence[Expect] = (), *, probe: bool = True,
           shut: bool = False, want_close: bool = False) -> Case:
    """One input on its own connection. With `probe`, a valid add(20, 22) follows
    it in the same write: answered, it shows the server carried on."""
    exps = list(expects) + ([probe_expect()] if probe else [])
    data = payload + (PROBE if probe else b"")
    return Case(name, lambda ctx: exchange(ctx.port, [data], exps, shut=shut, want_close=want_close),
                parallel=shut)


def E(msgid: int, check: Check, label: str = "req", want: str = "") -> Expect:
    return Expect(label, msgid, check, want)


def req_case(name: str, msgid: int, method: "str | bytes", params: Sequence[Node], check: Check) -> Case:
    return simple(name, request(msgid, method, params), [E(msgid, check)])


def echo_case(name: str, x: Node) -> Case:
    return req_case(name, 1, "echo", [x], value_is(x))


def echo_raw_case(name: str, x_bytes: bytes) -> Case:
    """echo(x) with x given as bytes (any encoding); the answer must be the same value."""
    x, end = decode(x_bytes)
    assert end == len(x_bytes)
    return simple(name, raw_request(b"\x01", fixstr("echo"), b"\x91" + x_bytes), [E(1, value_is(x))])


ECHO_HEAD = b"\x94\x00\x01" + fixstr("echo")  # [0, 1, "echo", ...


def framing_cases() -> List[Case]:
    add12 = request(1, "add", [I(1), I(2)])
    return [
        simple("reserved_byte_c1", b"\xc1"),
        simple("c1_after_valid_request", add12 + b"\xc1", [E(1, value_is(I(3)))]),
        simple("c1_inside_params", ECHO_HEAD + b"\x91\xc1", [E(1, None)]),
        simple("c1_as_msgid", b"\x94\x00\xc1" + fixstr("add") + b"\x90"),
        simple("garbage_ff_fe_fd", bytes([0xFF, 0xFE, 0xFD, 0x00, 0x01])),
        simple("top_int", b"\x01"),
        simple("top_negative_int", b"\xff"),
        simple("top_str", fixstr("abc")),
        simple("top_nil", b"\xc0"),
        simple("top_bool", b"\xc3"),
        simple("top_float", enc(F64(1.5))),
        simple("top_bin", enc(B(b"\x94\x00\x01"))),
        simple("top_ext", enc(X(1, b"\x94\x00\x01\xa3"))),
        simple("top_map_empty", b"\x80"),
        simple("top_map_request_like", enc(M((I(0), I(0)), (I(1), I(1)), (I(2), S("add")), (I(3), A())))),
        simple("array_empty", b"\x90"),
        simple("request_len1", enc(A(I(0)))),
        simple("request_len2", enc(A(I(0), I(1))), [E(1, None)]),
        simple("request_len3", enc(A(I(0), I(1), S("add"))), [E(1, None)]),
        simple("request_len5", enc(A(I(0), I(1), S("add"), A(I(1), I(2)), NIL)), [E(1, None)]),
        simple("request_len15", enc(A(I(0), I(1), *([NIL] * 13))), [E(1, None)]),
        simple("request_in_array16", b"\xdc\x00\x04\x00\x01" + fixstr("add") + b"\x92\x01\x02",
               [E(1, value_is(I(3)))]),
        simple("request_in_array32", b"\xdd\x00\x00\x00\x04\x00\x01" + fixstr("add") + b"\x92\x01\x02",
               [E(1, value_is(I(3)))]),
        simple("response_len3", enc(A(I(1), I(1), NIL))),
        simple("response_len5", enc(A(I(1), I(1), NIL, NIL, NIL))),
        simple("notification_len2", enc(A(I(2), S("note")))),
        simple("notification_len4", enc(A(I(2), S("note"), A(), NIL))),
        simple("type_tag_3", enc(A(I(3), I(1), S("add"), A(I(1), I(2))))),
        simple("type_tag_255", enc(A(I(255), I(1), S("add"), A(I(1), I(2))))),
        simple("type_tag_negative", enc(A(I(-1), I(1), S("add"), A(I(1), I(2))))),
        simple("type_tag_str", enc(A(S("0"), I(1), S("add"), A(I(1), I(2))))),
        simple("type_tag_nil", enc(A(NIL, I(1), S("add"), A(I(1), I(2))))),
        simple("type_tag_float", enc(A(F64(0.0), I(1), S("add"), A(I(1), I(2))))),
        simple("type_tag_as_uint64", b"\x94\xcf" + bytes(8) + b"\x01" + fixstr("add") + b"\x92\x01\x02",
               [E(1, value_is(I(3)))]),
    ]


def type_cases() -> List[Case]:
    add_params = enc(A(I(1), I(2)))
    add_name = fixstr("add")
    three = value_is(I(3))

    def msgid_case(name: str, msgid: bytes, expects: Sequence[Expect] = ()) -> Case:
        return simple(name, raw_request(msgid, add_name, add_params), expects)

    def method_case(name: str, method: bytes, check: Check = None) -> Case:
        return simple(name, raw_request(b"\x05", method, add_params), [E(5, check)])

    def params_case(name: str, params: bytes) -> Case:
        return simple(name, raw_request(b"\x06", add_name, params), [E(6, None)])

    long_name = b"\xda\xea\x60" + b"m" * 60000
    return [
        msgid_case("msgid_str", fixstr("1")),
        msgid_case("msgid_negative", enc(I(-1))),
        msgid_case("msgid_negative_int64", enc(I(I64_MIN))),
        msgid_case("msgid_2pow32", enc(I(2**32))),
        msgid_case("msgid_u64_max", enc(I(U64_MAX))),
        msgid_case("msgid_float", enc(F64(1.0))),
        msgid_case("msgid_nil", b"\xc0"),
        msgid_case("msgid_bin", enc(B(b"\x01"))),
        msgid_case("msgid_array", b"\x91\x01"),
        msgid_case("msgid_u32_max", enc(I(U32_MAX)), [E(U32_MAX, three)]),
        msgid_case("msgid_0", b"\x00", [E(0, three)]),
        msgid_case("msgid_as_uint64", b"\xcf" + (5).to_bytes(8, "big"), [E(5, three)]),
        msgid_case("msgid_as_int8", b"\xd0\x05", [E(5, three)]),
        msgid_case("msgid_as_int64", b"\xd3" + (7).to_bytes(8, "big"), [E(7, three)]),
        method_case("method_int", b"\x05"),
        method_case("method_nil", b"\xc0"),
        method_case("method_bool", b"\xc3"),
        method_case("method_float", enc(F64(1.0))),
        method_case("method_array", enc(A(S("add")))),
        method_case("method_map", enc(M((S("add"), NIL)))),
        method_case("method_ext", enc(X(1, b"add"))),
        method_case("method_bin", enc(B(b"add")), three),
        method_case("method_str8", b"\xd9\x03add", three),
        method_case("method_str32", b"\xdb\x00\x00\x00\x03add", three),
        method_case("method_empty", b"\xa0"),
        method_case("method_with_nul", fixstr(b"add\x00")),
        method_case("method_with_nul_inside", fixstr(b"ad\x00d")),
        method_case("method_trailing_space", fixstr(b"add ")),
        method_case("method_60000_bytes", long_name),
        method_case("method_utf8_ff_fe", fixstr(b"\xff\xfe")),
        method_case("method_utf8_add_ff", fixstr(b"add\xff")),
        method_case("method_utf8_overlong_nul", fixstr(b"add\xc0\x80")),
        method_case("method_utf8_surrogate", fixstr(b"\xed\xa0\x80")),
        method_case("method_utf8_cut_sequence", fixstr(b"ad\xe2\x82")),
        method_case("method_utf8_lone_continuation", fixstr(b"\x80add")),
        method_case("method_bin_invalid_utf8", enc(B(b"\xff\xfeadd"))),
        params_case("params_int", b"\x05"),
        params_case("params_nil", b"\xc0"),
        params_case("params_str", fixstr("12")),
        params_case("params_bin", enc(B(b"\x92\x01\x02"))),
        params_case("params_map", enc(M((I(0), I(1)), (I(1), I(2))))),
        params_case("params_ext", enc(X(0, b"\x92\x01\x02"))),
    ]


def unsolicited_cases() -> List[Case]:
    odd_params = A(M((A(I(1), I(2)), I(3))), M((M((I(1), I(2))), I(3))), M((I(1), S("a")), (F64(1.0), S("b"))))
    notes = (enc(A(I(2), S("weird"), odd_params))
             + enc(A(I(2), S(b"bad\xff\xfename"), A(I(1))))
             + enc(A(I(2), B(b"bin-named"), A())))
    return [
        simple("stray_response_ok", enc(A(I(1), I(12345), NIL, I(1)))),
        simple("stray_response_error", enc(A(I(1), I(7), A(I(1), S("boom")), NIL))),
        simple("stray_response_msgid_0", enc(A(I(1), I(0), NIL, NIL))),
        simple("stray_response_msgid_u32_max", enc(A(I(1), I(U32_MAX), NIL, A(I(1))))),
        simple("stray_response_msgid_2pow32", enc(A(I(1), I(2**32), NIL, NIL))),
        simple("stray_response_msgid_str", enc(A(I(1), S("x"), NIL, NIL))),
        simple("stray_response_odd_map_result", enc(A(I(1), I(99), NIL, M((M((I(1), I(2))), I(3)))))),
        simple("stray_response_for_probe_msgid", enc(A(I(1), I(PROBE_ID), NIL, I(41)))),
        simple("notification_unknown", enc(A(I(2), S("nobody_listens"), A(I(1))))),
        simple("notification_named_add", enc(A(I(2), S("add"), A(I(1), I(2))))),
        simple("notification_named_disconnect", enc(A(I(2), S("disconnect"), A()))),
        simple("notification_params_not_array", enc(A(I(2), S("note"), I(5)))),
        simple("notification_method_int", enc(A(I(2), I(5), A()))),
        simple("notification_invalid_utf8_name", enc(A(I(2), S(b"\xff\xfe"), A(I(1))))),
        simple("notification_odd_map_keys", enc(A(I(2), S("weird"), odd_params))),
        # The odd notifications, then what the server recorded of them.
        simple("get_notifications_after_odd_ones", notes + request(3, "get_notifications", []),
               [E(3, any_value)]),
    ]


def map_key_cases() -> List[Case]:
    return [
        echo_case("map_key_array", M((A(I(1), I(2)), I(3)))),
        echo_case("map_key_map", M((M((I(1), I(2))), I(3)))),
        echo_case("map_key_empty_map", M((M(), I(3)))),
        echo_case("map_key_nested_array", M((A(A(I(1), A(I(2)))), S("v")))),
        echo_case("map_key_array_holding_map", M((A(M((I(1), I(2)))), I(1)))),
        echo_case("map_key_float64", M((F64(1.5), I(1)))),
        echo_case("map_key_float32", M((F32(2.5), I(1)))),
        echo_case("map_key_nan", M((F64(math.nan), I(1)))),
        echo_case("map_key_nil", M((NIL, I(1)))),
        echo_case("map_key_bool", M((TRUE, I(1)), (FALSE, I(0)))),
        echo_case("map_key_bin", M((B(b"\x00\xff"), I(1)))),
        echo_case("map_key_ext", M((X(5, b"abcd"), I(1)))),
        echo_case("map_key_invalid_utf8_str", M((S(b"\xff\xfe"), I(1)))),
        echo_case("map_keys_of_every_kind", M((NIL, I(0)), (TRUE, I(1)), (I(-7), I(2)), (F64(0.5), I(3)),
                                              (S("s"), I(4)), (B(b"b"), I(5)), (A(I(1)), I(6)),
                                              (X(1, b"e"), I(7)))),
        echo_case("map_keys_int_and_float_equal", M((I(1), S("int")), (F64(1.0), S("float")))),
        echo_case("map_keys_int_and_true", M((I(1), S("int")), (TRUE, S("bool")))),
        echo_case("map_keys_zero_and_minus_zero", M((F64(0.0), S("+0")), (F64(-0.0), S("-0")))),
        echo_case("map_keys_duplicate", M((I(1), S("first")), (I(1), S("second")))),
        req_case("add_with_map_params", 1, "add", [M((A(I(1)), I(1))), I(2)], None),
    ]


def huge_cases() -> List[Case]:
    """Lengths that break max_message_size (64 MiB) from the header alone:
    the server must close at once, not wait for (or allocate) the data. No
    half-close: the server has to act on the header by itself."""
    ff = b"\xff\xff\xff\xff"
    cases = []
    for name, header in [("str32", b"\xdb" + ff), ("bin32", b"\xc6" + ff), ("array32", b"\xdd" + ff),
                         ("map32", b"\xdf" + ff), ("ext32", b"\xc9" + ff + b"\x01")]:
        payload = ECHO_HEAD + b"\x91" + header + bytes(16)
        cases.append(simple(f"huge_{name}_in_params", payload, [E(1, None)], probe=False, want_close=True))
    for name, header in [("bin32", b"\xc6" + ff), ("str32", b"\xdb" + ff), ("array32", b"\xdd" + ff),
                         ("map32", b"\xdf" + ff)]:
        cases.append(simple(f"huge_top_{name}", header + bytes(16), probe=False, want_close=True))
    over = (MAX_MESSAGE_SIZE).to_bytes(4, "big")
    cases += [
        simple("huge_params_array32", b"\x94\x00\x01" + fixstr("echo") + b"\xdd" + ff + bytes(8),
               [E(1, None)], probe=False, want_close=True),
        simple("huge_method_str32", b"\x94\x00\x01\xdb" + ff + b"echo", [E(1, None)], probe=False,
               want_close=True),
        simple("bin32_one_byte_over_limit", ECHO_HEAD + b"\x91\xc6" + over + bytes(16), [E(1, None)],
               probe=False, want_close=True),
    ]
    return cases


def depth_cases() -> List[Case]:
    # params[0] is nesting level 3: k arrays in it reach level 2 + k.
    at = MAX_DEPTH - 2
    cases = [
        echo_case(f"nest_arrays_{at - 1}_under_limit", nested(at - 1)),
        echo_case(f"nest_arrays_{at}_at_limit", nested(at)),
        echo_case(f"nest_maps_{at}_at_limit", nested(at, "map")),
        echo_case(f"nest_in_map_key_{at - 1}_at_limit", M((nested(at - 1), I(1)))),
    ]
    for name, x in [(f"nest_arrays_{at + 1}_over_limit", nested(at + 1)),
                    (f"nest_maps_{at + 1}_over_limit", nested(at + 1, "map")),
                    (f"nest_in_map_key_{at}_over_limit", M((nested(at), I(1))))]:
        cases.append(req_case(name, 1, "echo", [x], value_is(x)))
    deep = ECHO_HEAD + b"\x91" * 100_000 + b"\xc0"
    cases += [
        simple("nest_100000_levels", deep, [E(1, None)]),
        simple("nest_notification_over_limit", enc(A(I(2), S("note"), A(nested(at + 1))))),
        simple("nest_stray_response_over_limit", enc(A(I(1), I(5), NIL, nested(at + 2)))),
    ]
    return cases


def ext_cases() -> List[Case]:
    cases = [echo_case(f"ext_fixext{n}", X(n % 100, bytes(range(n)))) for n in (1, 2, 4, 8, 16)]
    cases += [
        echo_raw_case("ext8_len0", b"\xc7\x00\x03"),
        echo_raw_case("ext8_len1_not_fixext", b"\xc7\x01\x04z"),
        echo_raw_case("ext8_len3", b"\xc7\x03\x05abc"),
        echo_raw_case("ext8_len255", b"\xc7\xff\x06" + bytes(255)),
        echo_raw_case("ext16_len256", b"\xc8\x01\x00\x07" + bytes(range(256))),
        echo_raw_case("ext16_len0", b"\xc8\x00\x00\x08"),
        echo_raw_case("ext32_len5", b"\xc9\x00\x00\x00\x05\x09hello"),
        echo_raw_case("ext32_len70000", b"\xc9\x00\x01\x11\x70\x0a" + b"e" * 70000),
        echo_case("ext_type_minus128", X(-128, b"\x01")),
        echo_case("ext_type_127", X(127, b"\x01\x02")),
        echo_case("ext_timestamp32", X(-1, b"\x00\x00\x00\x01")),
        echo_case("ext_timestamp96", X(-1, bytes(12))),
        echo_case("ext_timestamp_bad_length", X(-1, b"abc")),
        echo_case("ext_array_of_each_size", A(*(X(i, b"x" * n) for i, n in enumerate((0, 1, 2, 3, 4, 8, 16, 17))))),
        req_case("ext_through_add", 1, "add", [X(1, b"\x01"), I(1)], None),
    ]
    return cases


def int_cases() -> List[Case]:
    def add(name: str, a: int, b: int) -> Case:
        return req_case(name, 1, "add", [I(a), I(b)], sum_check(a, b))

    return [
        add("add_u64_max_plus_0", U64_MAX, 0),
        add("add_i64_min_plus_0", I64_MIN, 0),
        add("add_i64_max_plus_0", I64_MAX, 0),
        add("add_2pow63_minus_1", 2**63, -1),
        add("add_i64_max_plus_1", I64_MAX, 1),
        add("add_i64_min_minus_1", I64_MIN, -1),
        add("add_i64_min_plus_i64_min", I64_MIN, I64_MIN),
        add("add_i64_max_plus_i64_max", I64_MAX, I64_MAX),
        add("add_u64_max_plus_1", U64_MAX, 1),
        add("add_u64_max_plus_u64_max", U64_MAX, U64_MAX),
        add("add_u64_max_plus_i64_min", U64_MAX, I64_MIN),
        simple("add_non_minimal_int_encodings",
               raw_request(b"\x01", fixstr("add"), b"\x92\xd3" + (40).to_bytes(8, "big") + b"\xcf" + (2).to_bytes(8, "big")),
               [E(1, value_is(I(42)))]),
        echo_case("echo_u64_max", I(U64_MAX)),
        echo_case("echo_i64_min", I(I64_MIN)),
    ]


def handler_cases() -> List[Case]:
    return [
        req_case("add_str_and_array", 1, "add", [S("a"), A()], None),
        req_case("add_no_args", 1, "add", [], None),
        req_case("add_one_arg", 1, "add", [I(1)], None),
        req_case("add_three_args", 1, "add", [I(1), I(2), I(3)], None),
        req_case("add_nil_nil", 1, "add", [NIL, NIL], None),
        req_case("add_bin_and_int", 1, "add", [B(b"\x01"), I(1)], None),
        req_case("add_float_and_int", 1, "add", [F64(1.5), I(2)], dynamic_add_check(F64(1.5), I(2))),
        req_case("echo_no_args", 1, "echo", [], None),
        req_case("echo_two_args", 1, "echo", [I(1), I(2)], None),
        req_case("fail_no_args", 1, "fail", [], None),
        req_case("fail_int_arg", 1, "fail", [I(5)], None),
        req_case("fail_map_arg", 1, "fail", [M((M(), NIL))], None),
        req_case("sleep_ms_str", 1, "sleep_ms", [S("x")], value_is(S("x"))),
        req_case("sleep_ms_negative", 1, "sleep_ms", [I(-1)], value_is(I(-1))),
        req_case("sleep_ms_float", 1, "sleep_ms", [F64(1.5)], value_is(F64(1.5))),
        req_case("get_notifications_extra_args", 1, "get_notifications", [I(1), I(2)], value_is(A())),
        req_case("call_back_bad_args", 1, "call_back", [I(1), I(2)], None),
        req_case("call_back_params_not_array", 1, "call_back", [S("mul"), I(5)], None),
        req_case("call_back_one_arg", 1, "call_back", [S("mul")], None),
        # disconnect() with arguments: a close, or an error reply.
        simple("disconnect_with_args", request(1, "disconnect", [I(1), M((A(), NIL))]), [E(1, None)]),
    ]


# ---- callbacks: the server calls the hostile peer back ---------------------


def callback_case(name: str, answer: Callable[[int], Optional[bytes]], want: Check) -> Case:
    """call_back("mul", [6, 7]): the server calls mul(6, 7) on this connection;
    `answer(server_msgid)` gives the bytes sent back (None: close instead)."""

    def run(ctx: Ctx) -> Outcome:
        try:
            raw = Raw(ctx.port)
        except OSError as e:
            return Outcome(False, f"cannot connect: {e}", "no-connect")
        steps: List[str] = []
        try:
            raw.send(request(1, "call_back", [S("mul"), A(I(6), I(7))]))
            deadline = time.monotonic() + CASE_TIMEOUT
            tr = Tracker([E(1, want)])
            answered = False
            while True:
                kind, data = raw.event(deadline)
                if kind == "timeout":
                    return Outcome(False, f"hang: nothing within {CASE_TIMEOUT:g} s after {steps}", "hang")
                if kind == "malformed":
                    return Outcome(False, f"malformed message: {data}", "malformed")
                if kind == "closed":
                    steps.append("closed")
                    break
                node = data
                items: Tuple[Node, ...] = node[1] if node[0] == "arr" else ()
                if not answered and len(items) == 4 and items[0] == I(0):
                    if items[2] != S("mul") or items[3] != A(I(6), I(7)) or items[1][0] != "int":
                        return Outcome(False, f"the server called {show(node)}, expected mul(6, 7)", "bad-call")
                    steps.append("server called mul")
                    answered = True
                    reply = answer(items[1][1])
                    if reply is None:
                        steps.append("we closed")
                        return Outcome(True, ", ".join(steps), " / ".join(steps))
                    raw.send(reply)
                    continue
                tr.take(node)
                if tr.problems:
                    return Outcome(False, "; ".join(tr.problems) + f" after {steps}", "bad")
                steps.append(tr.results["req"][0])
                if not tr.pending:
                    break
            sig_steps = [s if not s.startswith("error") else "error" for s in steps]
            return Outcome(True, ", ".join(steps), " / ".join(sig_steps))
        finally:
            raw.close()

    return Case(name, run)


def callback_cases() -> List[Case]:
    odd = M((M((I(1), I(2))), I(3)))
    return [
        callback_case("call_back_peer_vanishes", lambda sid: None, None),
        callback_case("call_back_answered_ok", lambda sid: enc(A(I(1), I(sid), NIL, I(42))), value_is(I(42))),
        callback_case("call_back_answered_with_map_key_map", lambda sid: enc(A(I(1), I(sid), NIL, odd)),
                      value_is(odd)),
        callback_case("call_back_answered_with_error", lambda sid: enc(A(I(1), I(sid), A(I(5), S("nope")), NIL)),
                      None),
        callback_case("call_back_answered_malformed", lambda sid: b"\x94\x01" + enc_int(sid) + b"\xc0\xc1", None),
        callback_case("call_back_answered_not_array",
                      lambda sid: enc(M((I(1), I(sid)))), None),
        callback_case("call_back_answered_twice",
                      lambda sid: enc(A(I(1), I(sid), NIL, I(42))) + enc(A(I(1), I(sid), NIL, I(43))),
                      value_is(I(42))),
    ]


def callback_wrong_msgid_case() -> Case:
    """The server's call is answered with another msgid, then the peer leaves:
    nothing may come but the server's call (and possibly an error reply)."""

    def run(ctx: Ctx) -> Outcome:
        raw = Raw(ctx.port)
        try:
            raw.send(request(1, "call_back", [S("mul"), A(I(6), I(7))]))
            kind, node = raw.event(time.monotonic() + CASE_TIMEOUT)
            if kind == "closed":
                return Outcome(True, "closed", "closed")
            if kind != "msg":
                return Outcome(False, f"{kind} instead of the server's call", kind)
            items: Tuple[Node, ...] = node[1] if node[0] == "arr" else ()
            if not (len(items) == 4 and items[0] == I(0) and items[1][0] == "int"):
                tr = Tracker([E(1, None)])
                tr.take(node)
                return Outcome(not tr.problems, "; ".join(tr.problems) or "error reply", "err")
            raw.send(enc(A(I(1), I((items[1][1] + 1) & U32_MAX), NIL, I(42))))
            kind, node = raw.event(time.monotonic() + 0.2)
            if kind == "msg":
                tr = Tracker([E(1, None)])
                tr.take(node)
                if tr.problems:
                    return Outcome(False, "; ".join(tr.problems), "bad")
                return Outcome(True, "server called mul; error reply after the wrong msgid", "err")
            if kind == "malformed":
                return Outcome(False, f"malformed: {node}", "malformed")
            return Outcome(True, f"server called mul; then {'closed' if kind == 'closed' else 'silent'}; we closed",
                           f"called {kind}")
        finally:
            raw.close()

    return Case("call_back_answered_wrong_msgid_then_close", run)


# ---- truncation, slow peers, pipelining ------------------------------------

TRUNCATION_BASES: List[Tuple[str, bytes]] = [
    ("add", request(1, "add", [I(1), I(2)])),
    ("echo_str40", request(1, "echo", [S("s" * 40)])),
    ("echo_bin300", request(1, "echo", [B(bytes(300))])),
    ("echo_nested", request(1, "echo", [A(A(I(1)), M((S("a"), A(I(2), F64(0.5)))))])),
    ("echo_ext16", request(1, "echo", [X(3, bytes(range(16)))])),
]


def eof_cases() -> List[Case]:
    """The peer half-closes (its FIN in the same TCP segment as its last bytes,
    as `printf ... | nc -q0` or a crashing client can do): the server must
    answer what was complete and close. Each message cut short: no success
    reply may come (an error reply to msgid 1 is acceptable)."""
    cases = []
    for base, full in TRUNCATION_BASES:
        for cut in sorted({1, 3, len(full) // 2, len(full) - 1}):
            cases.append(simple(f"truncated_{base}_at_{cut}_of_{len(full)}_then_eof", full[:cut],
                                [E(1, None)], probe=False, shut=True, want_close=True))
    three = value_is(I(3))
    cases += [
        # Within the limit the server may wait for the body: at EOF it must give up.
        simple("bin32_1mib_announced_then_eof", ECHO_HEAD + b"\x91\xc6\x00\x10\x00\x00" + bytes(100),
               [E(1, None)], probe=False, shut=True, want_close=True),
        simple("array16_ffff_announced_then_eof", ECHO_HEAD + b"\x91\xdc\xff\xff\x01\x02",
               [E(1, None)], probe=False, shut=True, want_close=True),
        simple("nest_100000_open_arrays_then_eof", ECHO_HEAD + b"\x91" * 100_000, [E(1, None)], probe=False,
               shut=True, want_close=True),
        simple("empty_then_eof", b"", probe=False, shut=True, want_close=True),
        # Complete requests, then EOF: answered (or not), then closed.
        simple("request_then_eof", request(1, "add", [I(1), I(2)]), [E(1, three)], probe=False, shut=True,
               want_close=True),
        simple("two_requests_then_eof", request(1, "add", [I(1), I(2)]) + request(2, "echo", [S("e")]),
               [E(1, three), E(2, value_is(S("e")), "req2")], probe=False, shut=True, want_close=True),
        simple("notification_then_eof", enc(A(I(2), S("note"), A(I(1)))), probe=False, shut=True,
               want_close=True),
    ]
    return cases


def fd_count(pid: int) -> Optional[int]:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def connections_released(ctx: Ctx) -> Outcome:
    """Ten clients each send add(1, 2) with their FIN in the same segment, read
    the reply and close: the server must let go of the ten sockets."""
    before = fd_count(ctx.pid)
    if before is None:
        return Outcome(True, "cannot count the server's fds here; skipped", "skipped")
    replies = 0
    for _ in range(10):
        try:
            raw = Raw(ctx.port)
        except OSError as e:
            return Outcome(False, f"cannot connect: {e}", "no-connect")
        try:
            time.sleep(0.01)  # let the server take the connection in first
            raw.send(request(1, "add", [I(1), I(2)]), more=True)
            raw.shut()
            kind, _ = raw.event(time.monotonic() + CASE_TIMEOUT)
            replies += kind == "msg"
        finally:
            raw.close()
    deadline = time.monotonic() + 1.5
    now = fd_count(ctx.pid) or 0
    while now > before and time.monotonic() < deadline:
        time.sleep(0.05)
        now = fd_count(ctx.pid) or 0
    what = f"{replies}/10 answered; server fds {before} before, {now} 1.5 s after the clients closed"
    if now >= before + 5:
        return Outcome(False, f"the server still holds {now - before} of the 10 closed connections [{what}]",
                       "leaks")
    return Outcome(True, what, "released")


def truncated_left_open(ctx: Ctx) -> Outcome:
    """Five connections stop in the middle of a message and stay open (and 60
    more, idle or holding 2 bytes): other clients are served meanwhile, the
    partial messages are not answered, and completing two of them later gets
    them answered."""
    add = request(1, "add", [I(40), I(2)])
    echo = request(1, "echo", [S("y" * 300)])
    starts = [b"", b"\x94", add[:-1], ECHO_HEAD + b"\x91\xc6\x00\x10\x00\x00" + bytes(100), echo[: len(echo) // 2]]
    conns: List[Raw] = []
    idle: List[Raw] = []
    try:
        for s in starts:
            r = Raw(ctx.port)
            r.send(s)
            conns.append(r)
        for i in range(60):
            r = Raw(ctx.port)
            idle.append(r)
            r.send(b"\x94\x00" if i % 2 else b"")
        problems, steps = [], []
        t0 = time.monotonic()
        bad = fresh_call(ctx.port)
        if bad:
            problems.append(f"with 5 partial messages open: {bad}")
        else:
            steps.append(f"fresh client served in {1000 * (time.monotonic() - t0):.0f} ms")
        states = []
        for i, r in enumerate(conns):
            kind, data = r.event(time.monotonic() + 0.15)
            states.append("silent" if kind == "timeout" else kind)
            if kind == "msg":
                problems.append(f"partial message {i} was answered: {show(data)}")
            elif kind == "malformed":
                problems.append(f"partial message {i}: malformed bytes {data}")
        steps.append("partial: " + ",".join(states))
        # Complete add (conn 2) and echo (conn 4).
        for i, rest, want in [(2, add[-1:], I(42)), (4, echo[len(echo) // 2:], S("y" * 300))]:
            if states[i] != "silent":
                continue
            conns[i].send(rest)
            tr = Tracker([E(1, value_is(want))])
            kind, data = conns[i].event(time.monotonic() + CASE_TIMEOUT)
            if kind == "msg":
                tr.take(data)
                problems += tr.problems
                steps.append(f"completed {i}: {tr.results.get('req', ('?', '?'))[0]}")
            elif kind == "closed":
                steps.append(f"completed {i}: closed")
            else:
                problems.append(f"completed message {i}: {kind} {data or ''}")
        for i, r in enumerate(idle):
            kind, data = r.event(time.monotonic() + 0.01)
            if kind in ("msg", "malformed"):
                problems.append(f"idle connection {i} got {show(data) if kind == 'msg' else data}")
        what = "; ".join(steps)
        sig = " ".join(s.split(" in ")[0] for s in steps)
        return Outcome(not problems, "; ".join(problems) + (f" [{what}]" if problems else what), sig)
    finally:
        for r in conns + idle:
            r.close()


def byte_by_byte(ctx: Ctx) -> Outcome:
    x = M((S("a"), A(I(1), F64(2.5), S("x"), B(b"\x00"))), (I(-9), X(2, b"zz")))
    data = request(1, "echo", [x]) + PROBE
    return exchange(ctx.port, [data[i:i + 1] for i in range(len(data))],
                    [E(1, value_is(x)), probe_expect()], gap=0.002, timeout=CASE_TIMEOUT + 1)


def pipelined_then_close(ctx: Ctx) -> Outcome:
    """1000 add and 300 echo(2 KiB) in one write, then close without reading."""
    data = b"".join(request(i, "add", [I(i), I(i)]) for i in range(1, 1001))
    data += b"".join(request(i, "echo", [B(bytes(2048))]) for i in range(1001, 1301))
    try:
        raw = Raw(ctx.port)
    except OSError as e:
        return Outcome(False, f"cannot connect: {e}", "no-connect")
    sent = raw.send(data)
    raw.close()
    bad = fresh_call(ctx.port)
    if bad:
        return Outcome(False, f"after the pipelined connection closed: {bad}", "bad")
    return Outcome(True, f"sent {len(data)} bytes{'' if sent else ' (partly)'}, closed; fresh client served",
                   "served")


def pipelined_read_all(ctx: Ctx) -> Outcome:
    """5000 add in one write (more than max_in_flight = 4096): every reply is the
    sum or an error (in-flight limit)."""
    n = 5000
    data = b"".join(request(i, "add", [I(i), I(2 * i)]) for i in range(1, n + 1))
    exps = [Expect(f"r{i}", i, value_is(I(3 * i))) for i in range(1, n + 1)]
    out = exchange(ctx.port, [data], exps, timeout=15.0)
    if not out.ok:
        return Outcome(False, out.what[:400], out.sig[:100])
    oks = out.sig.count("=ok")
    errs = out.sig.count("=err")
    state = out.sig.split()[-1]
    return Outcome(True, f"{oks} sums, {errs} error replies, {n - oks - errs} unanswered; {state}",
                   f"{'all-ok' if oks == n else 'some-errors'} {state}")


def status_kib(pid: int, field: str) -> Optional[int]:
    """A KiB figure from /proc/PID/status ("VmRSS", "VmHWM"); None if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_kib(pid: int) -> Optional[int]:
    return status_kib(pid, "VmRSS")


# One array of nils: 1 byte each on the wire, a 40-byte value each decoded.
AMPLIFYING_NILS = 8_000_000
AMPLIFYING_GROWTH_LIMIT_MIB = 64


def amplifying_nils(ctx: Ctx) -> Outcome:
    """echo([nil x 8,000,000]): 8 MB on the wire, well within max_message_size,
    but 320 MB once decoded, over Limits::max_decoded_size (256 MiB). The server
    must refuse it from the array's header (the connection closes) without its
    peak memory growing by the decoded size, and keep serving others."""
    before = status_kib(ctx.pid, "VmHWM")
    data = ECHO_HEAD + b"\x91\xdd" + AMPLIFYING_NILS.to_bytes(4, "big") + b"\xc0" * AMPLIFYING_NILS
    out = exchange(ctx.port, [data], [E(1, None)], want_close=True)
    after = status_kib(ctx.pid, "VmHWM")
    bad = fresh_call(ctx.port)
    growth = (after - before) / 1024 if before and after else float("nan")
    what = f"{out.what[:200]}; server peak RSS grew {growth:.0f} MiB"
    if not out.ok:
        return Outcome(False, what, out.sig[:100])
    if bad:
        return Outcome(False, f"{bad} [{what}]", "bad")
    if not growth < AMPLIFYING_GROWTH_LIMIT_MIB:
        return Outcome(False, f"peak memory grew {growth:.0f} MiB, over {AMPLIFYING_GROWTH_LIMIT_MIB} [{what}]",
                       "grew")
    return Outcome(True, what + "; fresh client served", "refused " + out.sig.split()[-1])


def unread_replies(ctx: Ctx) -> Outcome:
    """48 echo(1 MiB) requests, replies never read, connection kept open: the
    server stops reading them once its replies back up (Limits::
    max_write_backlog), so the client cannot send all 48 MiB, and it keeps
    serving others. Its memory growth is reported."""
    before = rss_kib(ctx.pid)
    payload = bytes(range(256)) * 4096
    data = b"".join(request(i, "echo", [B(payload)]) for i in range(1, 49))
    try:
        raw = Raw(ctx.port)
    except OSError as e:
        return Outcome(False, f"cannot connect: {e}", "no-connect")
    try:
        sent = raw.send(data, timeout=2.0)
        peak = before or 0
        deadline = time.monotonic() + 1.5
        last = -1
        while time.monotonic() < deadline:
            now = rss_kib(ctx.pid) or 0
            peak = max(peak, now)
            if now == last:
                break
            last = now
            time.sleep(0.15)
        bad = fresh_call(ctx.port)
    finally:
        raw.close()
    growth = (peak - before) / 1024 if before else float("nan")
    what = (f"sent {len(data) >> 20} MiB{'' if sent else ' (the server stopped reading: backpressure)'}; "
            f"server RSS grew {growth:.0f} MiB")
    if bad:
        return Outcome(False, f"{bad} [{what}]", "bad")
    if sent:
        return Outcome(False, f"the server read every request while no reply was read [{what}]", "no-backpressure")
    return Outcome(True, what + "; fresh client served", "served backpressure")


# ---- random mutations --------------------------------------------------------

FUZZ_BASES: List[bytes] = [
    request(1, "add", [I(1), I(2)]),
    request(2, "add", [I(-5), I(300)]),
    request(3, "add", [I(2**40), I(-7)]),
    request(4, "echo", [S("hello")]),
    request(5, "echo", [B(b"\x00\x01\x02")]),
    request(6, "echo", [A(I(1), A(I(2), I(3)), M((S("a"), I(1))))]),
    request(7, "echo", [M((S("k"), A(TRUE, NIL)), (I(1), F64(0.5)))]),
    request(8, "echo", [F32(1.5)]),
    request(9, "echo", [X(5, b"abcd")]),
    request(10, "echo", [S("s" * 40)]),
    request(11, "echo", [B(bytes(300))]),
    request(12, "echo", [A(*(I(i) for i in range(20)))]),
    request(13, "echo", [M(*((I(i), S(str(i))) for i in range(20)))]),
    request(14, "add", [I(7), I(8)]) + request(15, "echo", [S("pair")]),
    enc(A(I(2), S("note"), A(I(1)))) + request(16, "add", [I(1), I(1)]),
]

INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xC4, 0xC6, 0xC7, 0xC9,
               0xCA, 0xCB, 0xCC, 0xCF, 0xD0, 0xD3, 0xD4, 0xD8, 0xD9, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xE0, 0xFF]


def mutations(seed: int, count: int) -> List[bytes]:
    """`count` mutated copies of the valid requests above (reproducible from `seed`)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        data = bytearray(rng.choice(FUZZ_BASES))
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            if not data:
                data = bytearray(rng.choice(FUZZ_BASES))
            op = rng.randrange(8)
            pos = rng.randrange(len(data))
            if op == 0:
                data[pos] = rng.randrange(256)
            elif op == 1:
                data[pos] = rng.choice(INTERESTING)
            elif op == 2:
                data[pos] ^= 1 << rng.randrange(8)
            elif op == 3:
                data.insert(pos, rng.choice((rng.randrange(256), rng.choice(INTERESTING))))
            elif op == 4:
                del data[pos]
            elif op == 5:
                del data[pos:]
            elif op == 6:
                end = min(len(data), pos + rng.randrange(1, 8))
                data[pos:pos] = data[pos:end]
            else:
                other = rng.randrange(len(data))
                data[pos], data[other] = data[other], data[pos]
        out.append(bytes(data))
    return out


def fuzz_case(count: int) -> Case:
    def run(ctx: Ctx) -> Outcome:
        inputs = mutations(ctx.seed, count)
        probe = request(FUZZ_PROBE_ID, "add", [I(20), I(22)])
        failures: List[str] = []
        sigs: Dict[str, str] = {}
        tally: Dict[str, int] = {}
        for i, data in enumerate(inputs):
            stream = data + probe
            exps, complete = expects_of_stream(stream, "m")
            for e in exps:
                if e.msgid == FUZZ_PROBE_ID:
                    e.label = "probe"
            # Ending inside an object, the stream leaves the server waiting for
            # more: only the replies to the complete messages before are waited
            # for (EOF handling has cases of its own).
            out = exchange(ctx.port, [stream], exps, want_close=not exps, leave=not complete)
            sigs[f"#{i}"] = out.sig
            end = out.sig.split()[-1] if out.sig else "?"
            tally[end] = tally.get(end, 0) + 1
            if not out.ok:
                failures.append(f"#{i} {hexs(data, 64)}: {out.what[:300]}")
            elif ctx.verbose:
                print(f"    {ctx.lang} fuzz #{i} {hexs(data, 40)}: {out.what[:160]}", flush=True)
        what = f"{count} inputs (seed {ctx.seed}): " + ", ".join(f"{v} {k}" for k, v in sorted(tally.items()))
        if failures:
            return Outcome(False, f"{len(failures)} of {count} failed: " + " | ".join(failures[:5]) + f" [{what}]",
                           "failed", sigs)
        return Outcome(True, what, "ok", sigs)

    return Case(f"random_mutations_{count}", run)


def all_cases() -> List[Case]:
    return (framing_cases() + type_cases() + unsolicited_cases() + map_key_cases() + huge_cases()
            + depth_cases() + ext_cases() + int_cases() + handler_cases() + callback_cases()
            + [callback_wrong_msgid_case()] + eof_cases()
            + [Case("connections_released_after_eof", connections_released),
               Case("truncated_left_open_then_completed", truncated_left_open),
               Case("byte_by_byte", byte_by_byte),
               Case("pipelined_1300_then_close", pipelined_then_close),
               Case("pipelined_5000_read_all", pipelined_read_all),
               Case("unread_replies_48_mib", unread_replies),
               Case("amplifying_8m_nils", amplifying_nils),
               echo_case("nils_100k_within_decoded_limit", A(*(NIL for _ in range(100_000)))),
               fuzz_case(FUZZ_COUNT)])


# ---------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------


class ServerProc:
    def __init__(self, lang: str, stderr_path: str) -> None:
        self.lang = lang
        self.stderr_path = stderr_path
        self.stderr_file = open(stderr_path, "wb")
        self.proc = subprocess.Popen([os.path.join(HERE, "serve"), lang, "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=self.stderr_file, stdin=subprocess.DEVNULL)
        self.port = 0

    def wait_listening(self) -> str:
        """The server's listening line; raises if it does not come in time."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        if not ready:
            raise RuntimeError(f"no listening line within {START_TIMEOUT:g} s")
        line = self.proc.stdout.readline().decode(errors="replace").strip()
        m = re.search(r":(\d+)$", line)
        if m is None:
            raise RuntimeError(f"no port in {line!r} (exit {self.proc.poll()}); stderr: {self.stderr_tail()}")
        self.port = int(m.group(1))
        return line

    def stderr_text(self) -> str:
        self.stderr_file.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stderr_tail(self, n: int = 400) -> str:
        return self.stderr_text()[-n:].strip()

    def stop(self) -> Tuple[Optional[int], float]:
        """SIGTERM, then the exit status and how long it took (None: killed)."""
        if self.proc.poll() is not None:
            return self.proc.returncode, 0.0
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: Optional[int] = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        return code, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.stderr_file.close()


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.sigs: Dict[str, Dict[str, str]] = {}  # case -> lang -> signature
        self.subsigs: Dict[str, Dict[str, Dict[str, str]]] = {}  # case -> lang -> input -> signature
        self.codes: Dict[str, Dict[str, List[int]]] = {}  # lang -> case -> error codes seen

    def record(self, lang: str, name: str, out: Outcome) -> None:
        if out.ok:
            self.passed += 1
            print(f"PASS {lang}/{name} - {out.what}", flush=True)
        else:
            self.failed += 1
            print(f"FAIL {lang}/{name}: {out.what}", flush=True)
        self.sigs.setdefault(name, {})[lang] = out.sig
        if out.sub:
            self.subsigs.setdefault(name, {})[lang] = out.sub
        codes = [int(c) for c in re.findall(r"error \[(-?\d+), ", out.what)]
        if codes:
            self.codes.setdefault(lang, {})[name] = codes


# Lines of a server's stderr that mean an exception or panic escaped.
LEAK = re.compile(r"panicked|Traceback|Exception ignored|Error:|SIGSEGV|Segmentation|core dumped|abort",
                  re.IGNORECASE)


class StderrWatch:
    """Attributes what the server writes on stderr to the cases running then."""

    def __init__(self, server: "ServerProc") -> None:
        self.server = server
        self.seen = 0
        self.unattributed: List[str] = []

    def new_text(self) -> str:
        text = self.server.stderr_text()
        new, self.seen = text[self.seen:], len(text)
        return new

    def attribute(self, out: Outcome, text: str) -> Outcome:
        """The outcome, failed if the server leaked an exception or a panic."""
        if not text.strip():
            return out
        lines = [l.strip() for l in text.splitlines() if l.strip()]
        shown = " | ".join(l[:160] for l in lines[:4]) + (f" | ... ({len(lines)} lines)" if len(lines) > 4 else "")
        if any(LEAK.search(l) for l in lines):
            return Outcome(False, f"the server leaked an exception/panic on stderr: {shown} [{out.what}]",
                           out.sig + " +stderr", out.sub)
        return Outcome(out.ok, f"{out.what} [server stderr: {shown}]", out.sig, out.sub)


def run_one(case: Case, ctx: Ctx) -> Tuple[Outcome, float]:
    t0 = time.monotonic()
    try:
        out = case.run(ctx)
    except Exception as e:
        tb = traceback.format_exc(limit=3).strip().splitlines()
        out = Outcome(False, f"the test itself raised {type(e).__name__}: {e} ({' | '.join(tb[-3:])})",
                      "test-error")
    return out, time.monotonic() - t0


def with_time(out: Outcome, took: float) -> Outcome:
    if took >= 0.5:
        out.what += f" ({took:.1f} s)"
    return out


def run_cases(cases: Sequence[Case], ctx: Ctx, server: "ServerProc", report: Report, t0: float,
              watch: StderrWatch) -> None:
    """Runs the cases in order; consecutive parallel ones at the same time."""
    i = 0
    while i < len(cases):
        batch = [cases[i]]
        if cases[i].parallel:
            while i + len(batch) < len(cases) and cases[i + len(batch)].parallel:
                batch.append(cases[i + len(batch)])
        i += len(batch)
        if time.monotonic() - t0 > SERVER_BUDGET:
            for c in batch:
                report.record(ctx.lang, c.name, Outcome(False, f"skipped: the server's {SERVER_BUDGET:g} s "
                                                        "budget is spent", "skipped"))
            continue
        if server.proc.poll() is not None:
            for c in batch:
                report.record(ctx.lang, c.name, Outcome(False, f"skipped: the server exited "
                                                        f"({server.proc.returncode}); stderr: "
                                                        f"{server.stderr_tail(300)}", "dead"))
            continue
        if len(batch) == 1:
            out, took = run_one(batch[0], ctx)
            report.record(ctx.lang, batch[0].name, with_time(watch.attribute(out, watch.new_text()), took))
            continue
        with ThreadPoolExecutor(max_workers=min(32, len(batch))) as pool:
            results = list(pool.map(lambda c: run_one(c, ctx), batch))
        text = watch.new_text()
        if text.strip():
            watch.unattributed.append(text)
        for c, (out, took) in zip(batch, results):
            report.record(ctx.lang, c.name, with_time(out, took))


def run_server(lang: str, cases: Sequence[Case], report: Report, args: argparse.Namespace, tmp: str) -> None:
    t0 = time.monotonic()
    server = ServerProc(lang, os.path.join(tmp, f"{lang}.stderr"))
    good: Optional[GoodClient] = None
    try:
        try:
            line = server.wait_listening()
        except Exception as e:
            report.record(lang, "start", Outcome(False, f"the server did not start: {e}", "no-start"))
            return
        report.record(lang, "start", Outcome(True, line, "started"))
        watch = StderrWatch(server)
        good = GoodClient(server.port)
        good.start()
        deadline = time.monotonic() + 5
        while good.calls < 5 and time.monotonic() < deadline and good.is_alive():
            time.sleep(0.01)
        watch.unattributed.append(watch.new_text())
        ctx = Ctx(lang, server.port, server.proc.pid, args.verbose, args.seed)
        run_cases(cases, ctx, server, report, t0, watch)

        # The end: alive, still serving, the well-behaved client saw only right answers.
        alive = server.proc.poll() is None
        report.record(lang, "alive_after_hostile_phase",
                      Outcome(alive, "running" if alive else f"exited with {server.proc.returncode}; stderr: "
                              f"{server.stderr_tail()}", "alive" if alive else "dead"))
        hostile_end = time.monotonic()
        bad = fresh_call(server.port) if alive else "the server is gone"
        report.record(lang, "fresh_client_after_hostile_phase",
                      Outcome(bad is None, bad or "add and echo answered right", "ok" if bad is None else "bad"))
        # Let it make a call or two more, so that it has been checked up to the end.
        while good.last_right < hostile_end and time.monotonic() < hostile_end + GOOD_TIMEOUT and good.is_alive():
            time.sleep(0.01)
        good.stop_event.set()
        good.join(GOOD_TIMEOUT + 2)
        to_the_end = good.last_right >= hostile_end
        ok = not good.is_alive() and to_the_end and good.wrong == 0 and good.errors == 0
        what = (f"{good.calls} calls, {good.wrong} wrong, {good.errors} errors, "
                f"slowest {1000 * good.max_latency:.0f} ms")
        if not to_the_end:
            what += "; no right answer after the hostile phase"
        if good.is_alive():
            what += "; the client did not stop"
        if good.problems:
            what += "; " + " | ".join(good.problems[:5])
        report.record(lang, "well_behaved_client", Outcome(ok, what, "ok" if ok else "bad"))

        code, took = server.stop()
        ok = code == 0
        report.record(lang, "sigterm_exit",
                      Outcome(ok, f"exit status {code} after {took:.2f} s" if code is not None
                              else f"still running {STOP_TIMEOUT:g} s after SIGTERM (killed)",
                              f"exit {code}"))
        # Whatever stderr no single case explains (startup, parallel cases, shutdown).
        text = "".join(watch.unattributed) + watch.new_text()
        out = watch.attribute(Outcome(True, "nothing suspicious", "clean"), text)
        report.record(lang, "stderr_outside_single_cases", out)
        if text.strip() and args.verbose:
            print(f"--- {lang} server stderr (last 1500 chars) ---\n{text[-1500:].rstrip()}\n---", flush=True)
    finally:
        if good is not None:
            good.stop_event.set()
        server.kill()
        print(f"# {lang}: {time.monotonic() - t0:.1f} s", flush=True)


def compare(report: Report, langs: Sequence[str], seed: int) -> None:
    """NOTE lines where the servers answered the same input differently."""
    fuzz_inputs = mutations(seed, FUZZ_COUNT)
    if len(langs) < 2:
        return
    lines = []
    for name, by_lang in report.sigs.items():
        if name in report.subsigs:
            continue
        if len(by_lang) == len(langs) and len(set(by_lang.values())) > 1:
            lines.append(f"NOTE {name}: " + "; ".join(f"{l}: {by_lang[l]}" for l in langs))
    for name, by_input in report.subsigs.items():
        if len(by_input) != len(langs):
            continue
        keys = list(by_input[langs[0]].keys())
        differ = [k for k in keys if len({by_input[l].get(k) for l in langs}) > 1]
        if differ:
            lines.append(f"NOTE {name}: {len(differ)} of {len(keys)} inputs answered differently, e.g. "
                         + " | ".join(f"{k} ({hexs(fuzz_inputs[int(k[1:])], 20)}): "
                                      + "; ".join(f"{l}: {by_input[l].get(k)}" for l in langs)
                                      for k in differ[:4]))
    # Error codes, summed up over the cases where every server sent error
    # replies but with different codes.
    both = [n for n in report.sigs if all(n in report.codes.get(l, {}) for l in langs)]
    differ_codes = [n for n in both if len({tuple(report.codes[l][n]) for l in langs}) > 1]
    if differ_codes:
        use = {l: sorted({c for n in differ_codes for c in report.codes[l][n]}) for l in langs}
        lines.append(f"NOTE error codes: in {len(differ_codes)} cases the error replies carry different codes ("
                     + ", ".join(f"{l} {use[l]}" for l in langs) + "): " + ", ".join(differ_codes))
    if lines:
        print(f"\n{len(lines)} differences between servers (not failures by themselves):")
        for line in lines:
            print(line)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--cases", default="", help="comma-separated substrings of case names to run")
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args()
    langs = [s for s in args.servers.split(",") if s]
    cases = all_cases()
    if args.cases:
        wanted = [w for w in args.cases.split(",") if w]
        cases = [c for c in cases if any(w in c.name for w in wanted)]
    report = Report()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="foorpc-hostile-") as tmp:
        for lang in langs:
            run_server(lang, cases, report, args, tmp)
    compare(report, langs, args.seed)
    print(f"\nhostile-peer test: {len(cases)} cases x {len(langs)} servers in {time.monotonic() - started:.1f} s")
    print(f"{report.passed} passed, {report.failed} failed")
    return 0 if report.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
