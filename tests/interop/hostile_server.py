#!/usr/bin/env python3
"""Cross-language hostile-server test of foorpc's conformance clients (tests/interop/README.md).

The reverse of hostile.py: a raw MessagePack-RPC server written here (threads,
127.0.0.1, port 0) answers the requests of each conformance client (rust, c,
python, python-async; `tests/interop/call LANG --port PORT --cases CASE`)
according to a scenario: malformed replies, replies of the wrong shape or
types, headers declaring 4 GiB, deep nesting, replies cut short (then closed,
or left open), closes and resets without a reply, an 8,000,000-nil result over
the decoded-size limit, error replies; and replies that are odd but valid
(unsolicited responses and notifications, requests from the server, 1-byte
writes, non-canonical encodings, duplicates, batched and straddling replies).

Each scenario expects the client's case to FAIL (the client prints
`FAIL case: why` with a reason, promptly) or to PASS. Every run, whatever the
scenario expects, must end by itself within its deadline, not die from a
signal, not exit with Rust's panic status 101, and not print a panic, a
traceback, a sanitizer report or a segfault.

Usage: tests/interop/hostile_server.py [--clients rust,c,python,python-async]
       [--scenarios substr,substr] [--repeat N] [--jobs N] [--list] [-v]

`--repeat N` runs each (client, scenario) N times (for races), `--jobs` sets
how many client processes run at once (8), `--list` shows the scenarios and
`-v` adds the server's notes, the bytes it wrote and the client's output.

Prints one `PASS client/scenario - detail` or `FAIL client/scenario: why` line
per run, then `N passed, N failed`; exit status 0 only when every run passed.
Only 127.0.0.1 is used; every socket operation has a timeout and every loop
is bounded.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))
CALL = os.path.join(HERE, "call")
CLIENTS = ["rust", "c", "python", "python-async"]

HOST = "127.0.0.1"
RUN_DEADLINE = 20.0  # a client process still running after this is killed and reported as a hang
CONN_LIFETIME = 25.0  # the server side of one connection gives up after this
POLL = 0.02  # the server's read poll (its idle hook runs this often)
SEND_TIMEOUT = 10.0  # one sendall
ACCEPT_POLL = 0.05
MAX_CLIENT_BUFFER = 16 * 1024 * 1024  # what a client may have sent us unparsed
MAX_MESSAGES = 20_000  # per connection
WORKERS = 8  # client runs at once

# foorpc's limits (core/src/limits.rs): the message array is nesting level 1.
MAX_DEPTH = 128
MAX_DECODED = 256 * 1024 * 1024
DECODED_VALUE_SIZE = 40

# Output that means a crash, a panic or an escaped exception, whatever the verdict.
BAD_OUTPUT = re.compile(r"panicked|Traceback|Segmentation fault|SIGSEGV|AddressSanitizer|Fatal Python error"
                        r"|LeakSanitizer|UndefinedBehaviorSanitizer|core dumped|double free|malloc\(\)")

# The clients say why when they die: Python's faulthandler prints the stacks
# on a fatal signal, Rust a backtrace on a panic, glibc its abort messages on
# stderr (not the terminal).
CLIENT_ENV = dict(os.environ, PYTHONFAULTHANDLER="1", RUST_BACKTRACE="1", LIBC_FATAL_STDERR_="1")

sys.setrecursionlimit(10_000)


# ---------------------------------------------------------------------------
# MessagePack bits: canonical packing (msgpack), a scanner that finds where an
# object ends without decoding it, and the raw spans of an array's elements.
# ---------------------------------------------------------------------------


class Incomplete(Exception):
    """The bytes end inside an object."""


class Malformed(Exception):
    """Bytes that are not MessagePack."""


def pk(v: Any) -> bytes:
    out: bytes = msgpack.packb(v, use_bin_type=True)
    return out


def _head(buf: "bytes | bytearray", pos: int) -> Tuple[int, int]:
    """(bytes of the header and the data after it, children) of the item at pos."""
    n = len(buf)
    if pos >= n:
        raise Incomplete()
    b = buf[pos]

    def uint(width: int) -> int:
        if pos + 1 + width > n:
            raise Incomplete()
        return int.from_bytes(buf[pos + 1:pos + 1 + width], "big")

    if b <= 0x7F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):
        return 1, 0
    if 0x80 <= b <= 0x8F:
        return 1, 2 * (b & 0x0F)
    if 0x90 <= b <= 0x9F:
        return 1, b & 0x0F
    if 0xA0 <= b <= 0xBF:
        return 1 + (b & 0x1F), 0
    if b == 0xC1:
        raise Malformed("reserved byte 0xc1")
    if 0xC4 <= b <= 0xC6:
        w = 1 << (b - 0xC4)
        return 1 + w + uint(w), 0
    if 0xC7 <= b <= 0xC9:
        w = 1 << (b - 0xC7)
        return 1 + w + 1 + uint(w), 0
    if b in (0xCA, 0xCB):
        return 5 if b == 0xCA else 9, 0
    if 0xCC <= b <= 0xCF:
        return 1 + (1 << (b - 0xCC)), 0
    if 0xD0 <= b <= 0xD3:
        return 1 + (1 << (b - 0xD0)), 0
    if 0xD4 <= b <= 0xD8:
        return 2 + (1 << (b - 0xD4)), 0
    if 0xD9 <= b <= 0xDB:
        w = 1 << (b - 0xD9)
        return 1 + w + uint(w), 0
    if b in (0xDC, 0xDD):
        w = 2 if b == 0xDC else 4
        return 1 + w, uint(w)
    w = 2 if b == 0xDE else 4  # 0xde, 0xdf
    return 1 + w, 2 * uint(w)


def obj_end(buf: "bytes | bytearray", pos: int = 0) -> int:
    """Where the object at buf[pos] ends; Incomplete if it does not end in buf."""
    owed = 1
    steps = 0
    while owed:
        size, children = _head(buf, pos)
        pos += size
        if pos > len(buf):
            raise Incomplete()
        owed += children - 1
        steps += 1
        if owed > len(buf) - pos + 1:  # every item takes a byte at least
            raise Incomplete()
        if steps > 50_000_000:
            raise Malformed("too many items")
    return pos


def array_spans(buf: bytes, pos: int = 0) -> List[Tuple[int, int]]:
    """The (start, end) of each element of the array at buf[pos]."""
    b = buf[pos]
    if 0x90 <= b <= 0x9F:
        n, pos = b & 0x0F, pos + 1
    elif b == 0xDC:
        n, pos = int.from_bytes(buf[pos + 1:pos + 3], "big"), pos + 3
    elif b == 0xDD:
        n, pos = int.from_bytes(buf[pos + 1:pos + 5], "big"), pos + 5
    else:
        raise Malformed(f"not an array: 0x{b:02x}")
    spans = []
    for _ in range(n):
        end = obj_end(buf, pos)
        spans.append((pos, end))
        pos = end
    return spans


def hexs(b: bytes, limit: int = 40) -> str:
    return b[:limit].hex(" ") + (f" ... ({len(b)} bytes)" if len(b) > limit else "")


# ---------------------------------------------------------------------------
# What the server reads from a client
# ---------------------------------------------------------------------------


@dataclass
class Msg:
    raw: bytes
    kind: int  # 0 request, 1 response, 2 notification
    msgid: Optional[int]
    method: str
    params: List[Any]
    params_raw: List[bytes]  # each param's own bytes, as the client encoded it
    error: Any = None
    result: Any = None


def parse_client_message(raw: bytes) -> Msg:
    v = msgpack.unpackb(raw, raw=False, strict_map_key=False, unicode_errors="surrogateescape")
    if not isinstance(v, list) or not v or not isinstance(v[0], int):
        raise Malformed(f"not a MessagePack-RPC message: {v!r:.100}")
    spans = array_spans(raw)
    if v[0] == 0 and len(v) == 4 and isinstance(v[1], int) and isinstance(v[2], str) and isinstance(v[3], list):
        ps, _ = spans[3]
        params_raw = [raw[a:b] for a, b in array_spans(raw, ps)]
        return Msg(raw, 0, v[1], v[2], v[3], params_raw)
    if v[0] == 1 and len(v) == 4 and isinstance(v[1], int):
        return Msg(raw, 1, v[1], "", [], [], v[2], v[3])
    if v[0] == 2 and len(v) == 3 and isinstance(v[1], str) and isinstance(v[2], list):
        return Msg(raw, 2, None, v[1], v[2], [])
    raise Malformed(f"not a MessagePack-RPC message: {v!r:.100}")


def right_answer(m: Msg) -> Tuple[bytes, bytes]:
    """(error, result) as the conformance servers would answer (tests/interop/README.md)."""
    if m.method == "add" and len(m.params) == 2 and all(type(p) is int for p in m.params):
        return b"\xc0", pk(m.params[0] + m.params[1])
    if m.method == "echo" and len(m.params_raw) == 1:
        return b"\xc0", m.params_raw[0]  # the client's own bytes: exact type and encoding
    if m.method == "sleep_ms" and len(m.params) == 1 and type(m.params[0]) is int:
        return b"\xc0", pk(m.params[0])
    if m.method == "get_notifications":
        return b"\xc0", b"\x90"
    return pk([1, f"hostile_server: no method {m.method!r}"]), b"\xc0"


def reply(msgid: int, result: bytes, error: bytes = b"\xc0") -> bytes:
    return b"\x94\x01" + pk(msgid) + error + result


def correct(m: Msg) -> bytes:
    assert m.msgid is not None
    err, res = right_answer(m)
    return reply(m.msgid, res, err)


# ---------------------------------------------------------------------------
# The server: one listening socket per run, a thread per connection
# ---------------------------------------------------------------------------


class Conn:
    """The server's side of one client connection."""

    def __init__(self, sock: socket.socket, server: "HostileServer", index: int) -> None:
        self.sock = sock
        self.server = server
        self.index = index
        self.buf = bytearray()
        self.eof = False
        self.closed = False
        self.n_requests = 0
        self.state: Dict[str, Any] = {}
        self.last_request_at = time.monotonic()
        self.send_lock = threading.Lock()  # for scenarios that also write from a second thread
        sock.settimeout(POLL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- writing --------------------------------------------------------------------------

    def send(self, data: bytes, what: str = "") -> bool:
        """Writes all of data; False when the client has gone (that is allowed)."""
        if self.closed or not data:
            return not self.closed
        if what:
            self.server.note_sent(self.index, data, what)
        try:
            with self.send_lock:
                self.sock.settimeout(SEND_TIMEOUT)
                self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            self.server.note(f"conn {self.index}: the client closed while we sent {len(data)} bytes")
            return False
        except socket.timeout:
            self.server.note(f"conn {self.index}: sending {len(data)} bytes timed out (the client reads no more)")
            return False
        except OSError as e:  # the socket was closed under us (a second sending thread)
            self.server.note(f"conn {self.index}: sending failed: {e}")
            return False
        finally:
            if not self.closed:
                self.sock.settimeout(POLL)

    def send_chunks(self, data: bytes, sizes: Callable[[], int], delay: float, what: str = "") -> bool:
        """Writes data in pieces, `delay` s apart (bounded: one piece per byte at most)."""
        self.server.note_sent(self.index, data, what + " (in pieces)")
        pos = 0
        while pos < len(data) and not self.closed:
            n = max(1, sizes())
            try:
                self.sock.settimeout(SEND_TIMEOUT)
                self.sock.sendall(data[pos:pos + n])
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                return False
            finally:
                if not self.closed:
                    self.sock.settimeout(POLL)
            pos += n
            if delay and pos < len(data):
                time.sleep(delay)
        return not self.closed

    def close(self) -> None:
        """FIN (after whatever was sent)."""
        if not self.closed:
            self.closed = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            self.server.note(f"conn {self.index}: closed by the server")

    def reset(self) -> None:
        """RST: close with SO_LINGER 0."""
        if not self.closed:
            self.closed = True
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
            self.server.note(f"conn {self.index}: reset by the server")

    def shutdown_write(self) -> None:
        """FIN on our side only; we go on reading."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.server.note(f"conn {self.index}: write side shut down by the server")

    # -- reading --------------------------------------------------------------------------

    def poll_message(self) -> Optional[Msg]:
        """The next complete message from the client, or None (nothing yet, or EOF: see .eof)."""
        for _ in range(2):
            if self.buf:
                try:
                    end = obj_end(self.buf)
                except Incomplete:
                    end = 0
                if end:
                    raw = bytes(self.buf[:end])
                    del self.buf[:end]
                    return parse_client_message(raw)
            if self.eof or self.closed:
                return None
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                return None
            except (ConnectionResetError, BrokenPipeError):
                self.eof = True
                return None
            if not data:
                self.eof = True
                return None
            self.buf += data
            if len(self.buf) > MAX_CLIENT_BUFFER:
                raise Malformed(f"the client sent {len(self.buf)} bytes that are not one message")
        return None


@dataclass
class Scenario:
    name: str
    case: str  # the conformance client's case that is run
    expect: str  # "pass" or "fail"
    what: str  # what the server does (for the report)
    on_request: Callable[[Conn, Msg], None]
    on_connect: Optional[Callable[[Conn], None]] = None
    on_idle: Optional[Callable[[Conn], None]] = None
    on_response: Optional[Callable[[Conn, Msg], None]] = None  # a response from the client to our request
    max_seconds: float = 5.0  # the client must be done by then (a failure must be prompt)
    reason: str = ""  # expected FAIL: a regex its reason must match (case-insensitive)
    reason_not: str = r"timed? ?out"  # expected FAIL: a regex it must not match
    check: Optional[Callable[["HostileServer"], Optional[str]]] = None  # afterwards, server side
    max_rss_mb: Optional[float] = None  # the client's peak RSS must stay under this


class HostileServer:
    def __init__(self, scenario: Scenario, label: str) -> None:
        self.scenario = scenario
        self.label = label
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((HOST, 0))
        self.lsock.listen(64)
        self.lsock.settimeout(ACCEPT_POLL)
        self.port: int = self.lsock.getsockname()[1]
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.threads: List[threading.Thread] = []
        self.conns: List[Conn] = []
        self.errors: List[str] = []  # the server's own failures, or a client that sent bad bytes
        self.notes: List[str] = []
        self.sent: List[Tuple[int, str, bytes]] = []  # (conn, what, first bytes) of the writes
        self.client_responses: Dict[int, Any] = {}  # msgid -> (error, result) the client answered us
        self.client_requests: List[Tuple[str, List[Any]]] = []
        self.acceptor = threading.Thread(target=self._accept_loop, name=f"accept-{label}", daemon=True)
        self.acceptor.start()

    def note(self, s: str) -> None:
        with self.lock:
            if len(self.notes) < 200:
                self.notes.append(s)

    def note_sent(self, conn: int, data: bytes, what: str) -> None:
        with self.lock:
            if len(self.sent) < 50:
                label = what if len(data) <= 64 else f"{what} [{len(data)} bytes]"
                self.sent.append((conn, label, bytes(data[:64])))

    def _accept_loop(self) -> None:
        deadline = time.monotonic() + RUN_DEADLINE + 10
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            try:
                sock, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            with self.lock:
                index = len(self.conns)
                if index >= 64:
                    sock.close()
                    self.errors.append("more than 64 connections")
                    continue
                conn = Conn(sock, self, index)
                self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), name=f"conn-{self.label}-{index}", daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: Conn) -> None:
        sc = self.scenario
        deadline = time.monotonic() + CONN_LIFETIME
        try:
            if sc.on_connect is not None:
                sc.on_connect(conn)
            count = 0
            while not conn.closed and not conn.eof and not self.stop_event.is_set() \
                    and time.monotonic() < deadline and count < MAX_MESSAGES:
                m = conn.poll_message()
                if m is None:
                    if sc.on_idle is not None and not conn.closed:
                        sc.on_idle(conn)
                    continue
                count += 1
                if m.kind == 0:
                    with self.lock:
                        self.client_requests.append((m.method, m.params))
                    conn.n_requests += 1
                    conn.last_request_at = time.monotonic()
                    sc.on_request(conn, m)
                elif m.kind == 1:
                    with self.lock:
                        self.client_responses[m.msgid or 0] = (m.error, m.result)
                    if sc.on_response is not None:
                        sc.on_response(conn, m)
                else:
                    self.note(f"conn {conn.index}: the client sent a notification {m.method}")
            if conn.eof and sc.on_idle is not None and not conn.closed:
                sc.on_idle(conn)
        except Malformed as e:
            with self.lock:
                self.errors.append(f"conn {conn.index}: the client sent bad bytes: {e}")
        except Exception as e:  # the test's own bug: reported as a failure
            tb = traceback.format_exc(limit=4).strip().splitlines()
            with self.lock:
                self.errors.append(f"conn {conn.index}: the hostile server raised {type(e).__name__}: {e} "
                                   f"({' | '.join(tb[-3:])})")
        finally:
            conn.closed = True
            try:
                conn.sock.close()
            except OSError:
                pass

    def stop(self) -> None:
        self.stop_event.set()
        self.acceptor.join(5)
        self.lsock.close()
        for t in list(self.threads):
            t.join(5)
            if t.is_alive():
                self.errors.append(f"{t.name} did not stop")


# ---------------------------------------------------------------------------
# Running one client
# ---------------------------------------------------------------------------


@dataclass
class Run:
    client: str
    scenario: Scenario
    ok: bool = False
    detail: str = ""
    seconds: float = 0.0
    output: str = ""
    status: str = ""
    sent: List[Tuple[int, str, bytes]] = field(default_factory=list)


def run_client(lang: str, sc: Scenario, verbose: bool) -> Run:
    run = Run(lang, sc)
    server = HostileServer(sc, f"{lang}-{sc.name}")
    out_file = tempfile.TemporaryFile()
    killed = False
    code: Optional[int] = None
    sig: Optional[int] = None
    rss_kb = 0
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen([CALL, lang, "--port", str(server.port), "--cases", sc.case],
                                stdin=subprocess.DEVNULL, stdout=out_file, stderr=subprocess.STDOUT,
                                cwd=os.path.dirname(os.path.dirname(HERE)), env=CLIENT_ENV)
        deadline = t0 + RUN_DEADLINE
        status = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                rss_kb = usage.ru_maxrss
                break
            if time.monotonic() > deadline:
                killed = True
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                rss_kb = usage.ru_maxrss
                break
            time.sleep(0.005)
        run.seconds = time.monotonic() - t0
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            proc.returncode = -sig
        else:
            code = os.WEXITSTATUS(status)
            proc.returncode = code
    finally:
        server.stop()
    out_file.seek(0)
    output = out_file.read().decode(errors="replace")
    out_file.close()
    run.output = output
    run.sent = server.sent
    run.status = f"killed after {RUN_DEADLINE:g} s" if killed else (f"signal {sig}" if sig else f"exit {code}")

    problems: List[str] = []
    if killed:
        problems.append(f"HANG: still running after {RUN_DEADLINE:g} s (killed)")
    elif sig is not None:
        problems.append(f"died from signal {sig} ({signal_name(sig)})")
    elif code == 101:
        problems.append("exit status 101 (a Rust panic)")
    bad = sorted({m.group(0) for m in BAD_OUTPUT.finditer(output)})
    if bad:
        problems.append(f"output contains {', '.join(repr(b) for b in bad)}")
    problems += [f"server side: {e}" for e in server.errors]

    lines = [l.rstrip() for l in output.splitlines()]
    pass_line = any(l == f"PASS {sc.case}" for l in lines)
    fail_lines = [l for l in lines if l.startswith(f"FAIL {sc.case}")]
    reason = ""
    if fail_lines:
        m = re.match(rf"FAIL {re.escape(sc.case)}: ?(.*)$", fail_lines[0])
        reason = m.group(1).strip() if m else ""
    summary = next((l for l in lines if re.fullmatch(r"\d+ passed, \d+ failed", l)), None)

    if not killed and sig is None:
        if sc.expect == "pass":
            if not (pass_line and code == 0):
                problems.append(f"expected PASS {sc.case} and exit 0, got {run.status}: "
                                f"{short(fail_lines[0] if fail_lines else output, 400)}")
            elif summary is None:
                problems.append("no `N passed, N failed` line")
        else:
            if pass_line:
                problems.append(f"ACCEPTED a wrong reply: printed PASS {sc.case} ({run.status})")
            elif not fail_lines:
                problems.append(f"no `FAIL {sc.case}: why` line ({run.status}): {short(output, 300)}")
            elif not reason:
                problems.append(f"FAIL line without a reason: {fail_lines[0]!r}")
            else:
                if sc.reason and not re.search(sc.reason, reason, re.IGNORECASE):
                    problems.append(f"the reason does not match /{sc.reason}/: {short(reason, 300)}")
                if sc.reason_not and re.search(sc.reason_not, reason, re.IGNORECASE):
                    problems.append(f"the reason matches /{sc.reason_not}/ (wrong kind of failure): "
                                    f"{short(reason, 300)}")
            if code != 1:
                problems.append(f"expected exit status 1, got {run.status}")
        if run.seconds > sc.max_seconds:
            problems.append(f"took {run.seconds:.2f} s, more than the {sc.max_seconds:g} s allowed")
    if sc.max_rss_mb is not None and rss_kb / 1024 > sc.max_rss_mb:
        problems.append(f"peak RSS {rss_kb / 1024:.0f} MB, more than {sc.max_rss_mb:g} MB")
    if sc.check is not None and not killed:
        why = sc.check(server)
        if why:
            problems.append(f"server side: {why}")

    timing = f"{run.seconds:.2f} s"
    if sc.max_rss_mb is not None:
        timing += f", peak RSS {rss_kb / 1024:.0f} MB"
    if problems:
        run.ok = False
        run.detail = "; ".join(problems) + f" [{run.status}, {timing}; sent {describe_sent(server.sent)}]"
        if not any(p.startswith(("expected PASS", "no `FAIL")) for p in problems) and (fail_lines or lines):
            run.detail += f" [client said: {short(fail_lines[0] if fail_lines else lines[0], 300)}]"
        if killed or sig is not None or code == 101 or bad:
            shown = output if len(output) <= 2400 else output[:1400] + "\n[...]\n" + output[-1000:]
            run.detail += "\n    --- client output ---\n    " + shown.rstrip().replace("\n", "\n    ") + "\n    ---"
    else:
        run.ok = True
        if sc.expect == "pass":
            run.detail = f"PASS {sc.case} ({timing})"
        else:
            run.detail = f"FAIL {sc.case}: {short(reason, 240)} ({timing})"
    if verbose:
        answers = callback_answers(server)
        if answers:
            run.detail += f"\n    the client's answers to the server's calls: {answers}"
        run.detail += f"\n    server notes: {' | '.join(server.notes[:8]) or '-'}" \
                      f"\n    sent: {describe_sent(server.sent, 6)}" \
                      f"\n    output: {short(output, 600)!r}"
    return run


def signal_name(sig: int) -> str:
    import signal as _signal
    try:
        return _signal.Signals(sig).name
    except ValueError:
        return "?"


def short(s: str, n: int) -> str:
    s = s.strip().replace("\n", " | ")
    return s if len(s) <= n else s[:n - 3] + "..."


def describe_sent(sent: List[Tuple[int, str, bytes]], limit: int = 3) -> str:
    if not sent:
        return "nothing"
    parts = [f"conn{c} {what + ': ' if what else ''}{hexs(b, 40)}" for c, what, b in sent[:limit]]
    return " / ".join(parts) + (f" / ... ({len(sent)} writes)" if len(sent) > limit else "")


# ---------------------------------------------------------------------------
# Scenario building blocks
# ---------------------------------------------------------------------------

Hostile = Callable[[Msg], bytes]


def first_reply(hostile: Hostile, after: str = "open", what: str = "hostile reply") -> Callable[[Conn, Msg], None]:
    """The first request of a connection gets `hostile(msg)`; then `after`:
    "open" (keep reading), "close" (FIN), "reset" (RST), "shutdown" (FIN, keep
    reading). Later requests get the right reply."""

    def on_request(conn: Conn, m: Msg) -> None:
        if conn.n_requests == 1:
            conn.send(hostile(m), what)
            if after == "close":
                conn.close()
            elif after == "reset":
                conn.reset()
            elif after == "shutdown":
                conn.shutdown_write()
        else:
            conn.send(correct(m), "right reply")

    return on_request


def every_reply(make: Callable[[Conn, Msg], bytes], what: str) -> Callable[[Conn, Msg], None]:
    def on_request(conn: Conn, m: Msg) -> None:
        conn.send(make(conn, m), what)

    return on_request


def head_of_reply(m: Msg) -> bytes:
    """`[1, msgid, nil,` of a reply: the result follows."""
    assert m.msgid is not None
    return b"\x94\x01" + pk(m.msgid) + b"\xc0"


def nested_arrays(levels: int) -> bytes:
    return b"\x91" * levels + b"\xc0"


def nested_maps(levels: int) -> bytes:
    return b"\x81\x00" * levels + b"\xc0"


def str_hex(s: str) -> str:
    return pk(s).hex()


def remote_reason(text: str) -> str:
    """The reason names the server's error: the text itself, or its bytes in
    hex (the C client shows error objects that are not [code, message] in hex)."""
    return rf"{re.escape(text)}|{str_hex(text)[:16]}"


# -- the individual hostile replies -----------------------------------------------------------


def garbage_after_first(conn: Conn, m: Msg) -> bytes:
    return correct(m) + (b"\xc1" if conn.n_requests == 1 else b"")


def server_request_first(conn: Conn, m: Msg) -> bytes:
    ident = 77 + conn.n_requests
    return pk([0, ident, "whoami", []]) + correct(m)


def server_requests_answered(server: HostileServer) -> Optional[str]:
    want = {77 + i for i in range(1, 4)}
    got = set(server.client_responses)
    missing = sorted(want - got)
    # The last one may still be in flight when the case ends and the client closes.
    if len(missing) > 1:
        return f"the client did not answer the server's requests {missing} (answered {sorted(got)})"
    for ident in sorted(got & want):
        err, res = server.client_responses[ident]
        if err is None:
            return f"the client answered whoami (a method it does not have) with a success: {res!r}"
    return None


def noncanonical_ints(conn: Conn, m: Msg) -> bytes:
    err, res = right_answer(m)
    assert m.msgid is not None
    v = msgpack.unpackb(res)
    body = b"\xcf" + struct.pack(">Q", v) if v >= 0 else b"\xd3" + struct.pack(">q", v)
    return b"\x94\x01" + b"\xce" + struct.pack(">I", m.msgid) + err + body


def noncanonical_envelope(conn: Conn, m: Msg) -> bytes:
    err, res = right_answer(m)
    assert m.msgid is not None
    v = msgpack.unpackb(res)
    body = b"\xd3" + struct.pack(">q", v)  # int64 even for small positive values
    return b"\xdc\x00\x04" + b"\xcc\x01" + b"\xd3" + struct.pack(">q", m.msgid) + err + body


def stray_responses_first(conn: Conn, m: Msg) -> bytes:
    assert m.msgid is not None
    return (pk([1, 0xFFFFFFF0, None, "stray reply to no call"])
            + pk([1, (m.msgid + 1000) & 0xFFFFFFFF, [1, "stray error to no call"], None])
            + correct(m))


def big_stray_first(conn: Conn, m: Msg) -> bytes:
    big = b"\xc6" + struct.pack(">I", 2 << 20) + bytes(i & 0xFF for i in range(256)) * (2 << 12)
    return (b"\x94\x01" + pk(4_000_000_000) + b"\xc0" + big if conn.n_requests == 1 else b"") + correct(m)


def many_strays_first(conn: Conn, m: Msg) -> bytes:
    parts = []
    for i in range(1000):
        parts.append(pk([2, "server_note", [i]]) if i % 2 else pk([1, 3_000_000_000 + i, None, i]))
    return b"".join(parts) + correct(m)


def notification_first(conn: Conn, m: Msg) -> bytes:
    return pk([2, "server_note", [1, "two", [3.5, None], {"k": b"\x00"}]]) + correct(m)


def duplicate_reply(conn: Conn, m: Msg) -> bytes:
    return correct(m) + correct(m)


def reply_then_partial_stray(conn: Conn, m: Msg) -> None:
    stray = pk([2, "server_note", ["a stray notification cut across writes", 12345]])
    rest = conn.state.get("rest", b"")
    conn.send(rest + correct(m) + stray[:7], "rest of the stray + reply + first 7 bytes of a stray")
    conn.state["rest"] = stray[7:]


def one_byte_writes(conn: Conn, m: Msg) -> None:
    conn.send_chunks(correct(m), lambda: 1, 0.002, "right reply, 1 byte a write, 2 ms apart")


# -- the timeout case -------------------------------------------------------------------------


def partial_then_late_completion(conn: Conn, m: Msg) -> None:
    """sleep_ms gets `[1, msgid` and no more; add first completes that stale
    reply (the call has timed out by then), then is answered."""
    full = correct(m)
    if m.method == "sleep_ms":
        conn.send(full[:3], "first 3 bytes of the sleep_ms reply, left open")
        conn.state["rest"] = full[3:]
    else:
        conn.send(conn.state.pop("rest", b"") + full, "rest of the stale sleep_ms reply + add's reply")


def late_reply_after_timeout(conn: Conn, m: Msg) -> None:
    if m.method == "sleep_ms":
        conn.state["late"] = correct(m)
    else:
        conn.send(conn.state.pop("late", b"") + correct(m), "sleep_ms's late reply + add's reply")


# -- concurrent_1000 and pipelined_out_of_order -----------------------------------------------


def batch_collect(conn: Conn, m: Msg) -> None:
    conn.state.setdefault("batch", []).append(m)
    if len(conn.state["batch"]) >= 1000:
        batch_flush(conn)


def batch_flush(conn: Conn) -> None:
    batch: List[Msg] = conn.state.get("batch", [])
    if not batch:
        return
    if len(batch) < 1000 and time.monotonic() - conn.last_request_at < 1.0 and not conn.eof:
        return  # more may come
    conn.state["batch"] = []
    conn.send(b"".join(correct(x) for x in reversed(batch)), f"{len(batch)} replies in reverse, one write")


def straddle_collect(conn: Conn, m: Msg) -> None:
    got: List[Msg] = conn.state.setdefault("got", [])
    got.append(m)
    if len(got) < 3:
        return
    # Replies in the order the case wants them (add, sleep_ms(10), sleep_ms(300)),
    # each write ending inside the next reply.
    order = sorted(got, key=lambda x: {("add",): 0}.get((x.method,), 1 if x.params == [10] else 2))
    data = b"".join(correct(x) for x in order)
    r0, r1 = len(correct(order[0])), len(correct(order[1]))
    cuts = [0, r0 + 2, r0 + r1 + 3, len(data)]
    conn.server.note_sent(conn.index, data, "three replies, writes cut inside the 2nd and 3rd")
    for a, b in zip(cuts, cuts[1:]):
        conn.send(data[a:b])
        time.sleep(0.03)


def straddle_idle(conn: Conn) -> None:
    got: List[Msg] = conn.state.get("got", [])
    if got and len(got) < 3 and time.monotonic() - conn.last_request_at > 3.0:
        for x in got:  # the case did not pipeline all three: answer what came
            conn.send(correct(x))
        conn.state["got"] = []


def random_chunks(seed: int) -> Callable[[Conn, Msg], None]:
    def on_request(conn: Conn, m: Msg) -> None:
        rng: random.Random = conn.state.setdefault("rng", random.Random(seed))
        conn.send_chunks(correct(m), lambda: rng.randint(1, 9), 0.0005, "right reply in 1-9 byte pieces")

    return on_request


# -- EOF and RST after a good reply ----------------------------------------------------------


def eof_after_first(conn: Conn, m: Msg) -> None:
    """The first request gets its reply and then our FIN (we read on); later ones get nothing."""
    if conn.n_requests == 1:
        conn.send(correct(m), "right reply, then FIN on our side (we read on)")
        conn.shutdown_write()


def reset_after_first(conn: Conn, m: Msg) -> None:
    if conn.n_requests == 1:
        conn.send(correct(m), "right reply, then RST 50 ms later")
        time.sleep(0.05)
        conn.reset()


# -- the message-size limit ------------------------------------------------------------------

MAX_MESSAGE = 64 * 1024 * 1024
STRAY_ID = 4_000_000_000
_big_cache: Dict[int, bytes] = {}
_big_lock = threading.Lock()


def stray_of_size(total: int) -> bytes:
    """An unsolicited response (msgid 4e9) with a str result, `total` bytes in all."""
    head = b"\x94\x01\xce" + struct.pack(">I", STRAY_ID) + b"\xc0\xdb"
    n = total - len(head) - 4
    with _big_lock:
        if total not in _big_cache:
            _big_cache[total] = head + struct.pack(">I", n) + b"s" * n
        return _big_cache[total]


def stray_at_limit(conn: Conn, m: Msg) -> None:
    if conn.n_requests == 1:
        conn.send(stray_of_size(MAX_MESSAGE), f"a stray response of exactly {MAX_MESSAGE} bytes")
    conn.send(correct(m), "right reply")


def stray_over_limit_header(m: Msg) -> bytes:
    n = MAX_MESSAGE + 1 - 13
    return b"\x94\x01\xce" + struct.pack(">I", STRAY_ID) + b"\xc0\xdb" + struct.pack(">I", n) + b"sss"


# -- a flood while a call waits to time out --------------------------------------------------

FLOOD_NOTE = pk([2, "flood", [b"x" * 4096]])
FLOOD_MAX = 3.0


def flood_during_timeout(conn: Conn, m: Msg) -> None:
    """sleep_ms is never answered: notifications flood in until add(1, 1) arrives."""
    if m.method == "sleep_ms":
        stop = threading.Event()

        def flood() -> None:
            end = time.monotonic() + FLOOD_MAX
            n = 0
            while not stop.is_set() and time.monotonic() < end and not conn.closed:
                if not conn.send(FLOOD_NOTE * 16, "" if n else "4 KiB notifications, non-stop"):
                    break
                n += 16
            conn.state["flooded"] = n

        t = threading.Thread(target=flood, name=f"flood-{conn.server.label}", daemon=True)
        conn.state["flood"] = (stop, t)
        t.start()
    else:
        if "flood" in conn.state:
            stop, t = conn.state.pop("flood")
            stop.set()
            t.join(SEND_TIMEOUT + 1)
            conn.server.note(f"flooded {conn.state.get('flooded', 0)} notifications")
        conn.send(correct(m), "add's reply after the flood")


def flood_idle(conn: Conn) -> None:
    if conn.eof and "flood" in conn.state:
        stop, t = conn.state.pop("flood")
        stop.set()
        t.join(SEND_TIMEOUT + 1)


def trickle_during_timeout(conn: Conn, m: Msg) -> None:
    """sleep_ms is never answered: a stray response declaring a 1 MiB str
    arrives one byte every 5 ms until add(1, 1) comes; then the rest of it at
    once, and add's reply."""
    if m.method == "sleep_ms":
        n = 1 << 20
        stray = b"\x94\x01\xce" + struct.pack(">I", STRAY_ID) + b"\xc0\xdb" + struct.pack(">I", n) + b"t" * n
        stop = threading.Event()
        sent = [0]

        def trickle() -> None:
            conn.send(stray[:13], "a stray response's header (1 MiB str), then its bytes one every 5 ms")
            sent[0] = 13
            end = time.monotonic() + FLOOD_MAX
            while not stop.is_set() and time.monotonic() < end and sent[0] < len(stray) - 1:
                if not conn.send(stray[sent[0]:sent[0] + 1]):
                    break
                sent[0] += 1
                stop.wait(0.005)

        t = threading.Thread(target=trickle, name=f"trickle-{conn.server.label}", daemon=True)
        conn.state["flood"] = (stop, t)
        conn.state["stray"] = (stray, sent)
        t.start()
    else:
        if "flood" in conn.state:
            stop, t = conn.state.pop("flood")
            stop.set()
            t.join(SEND_TIMEOUT + 1)
            stray, sent = conn.state.pop("stray")
            conn.server.note(f"trickled {sent[0]} bytes")
            conn.send(stray[sent[0]:], "the rest of the stray response")
        conn.send(correct(m), "add's reply")


# -- call_back: the server calls the client's mul -------------------------------------------


@dataclass
class HostileCall:
    label: str
    data: bytes  # a request or a notification
    msgid: Optional[int]  # None for a notification
    want: str  # "error", "any" or "value:<python repr>"


def raw_request(msgid: int, method_raw: bytes, params_raw: bytes) -> bytes:
    return b"\x94\x00" + pk(msgid) + method_raw + params_raw


def callback_hostile_calls() -> List[HostileCall]:
    deep = b"\x91" * 100 + b"\xc0"
    c = [
        HostileCall("mul('a', 'b')", pk([0, 5001, "mul", ["a", "b"]]), 5001, "error"),
        HostileCall("mul()", pk([0, 5002, "mul", []]), 5002, "error"),
        HostileCall("mul(1, 2, 3)", pk([0, 5003, "mul", [1, 2, 3]]), 5003, "error"),
        HostileCall("mul({}, 2)", pk([0, 5004, "mul", [{}, 2]]), 5004, "error"),
        HostileCall("mul(100 nested arrays, 'x')", raw_request(5005, pk("mul"), b"\x92" + deep + pk("x")),
                    5005, "error"),
        HostileCall("mul({{}: 1}, 2) (a map as a map key)", raw_request(5006, pk("mul"), b"\x92\x81\x80\x01\x02"),
                    5006, "error"),
        HostileCall("method name as bin b'mul', (2, 3)", raw_request(5007, b"\xc4\x03mul", pk([2, 3])), 5007, "any"),
        HostileCall("method name of invalid UTF-8", raw_request(5008, b"\xa3\xff\xfe\xfd", b"\x90"), 5008, "error"),
        HostileCall("method name of 10,000 bytes", pk([0, 5009, "m" * 10_000, []]), 5009, "error"),
        HostileCall("mul(2**64-1, 1)", pk([0, 5010, "mul", [2**64 - 1, 1]]), 5010, "any"),
        HostileCall("mul(ext 1, ext -1)", raw_request(5011, pk("mul"), b"\x92\xd5\x01ab\xc7\x00\xff"), 5011, "error"),
        HostileCall("msgid 0", pk([0, 0, "mul", [3, 4]]), 0, "value:12"),
        HostileCall("msgid 2**32-1", pk([0, 2**32 - 1, "mul", [5, 4]]), 2**32 - 1, "value:20"),
        HostileCall("notification mul(6, 7)", pk([2, "mul", [6, 7]]), None, "none"),
        HostileCall("notification mul('x')", pk([2, "mul", ["x"]]), None, "none"),
        HostileCall("notification mul({{}: 1})", b"\x93\x02" + pk("mul") + b"\x91\x81\x80\x01", None, "none"),
        HostileCall("notification nosuch()", pk([2, "nosuch", []]), None, "none"),
    ]
    return c


def callback_request(mode: str) -> Callable[[Conn, Msg], None]:
    """call_back(method, params) is forwarded to the client as a request and
    its answer relayed. Before the first one: `mode` "hostile" sends the
    hostile calls above; "flood" sends 2000 mul requests in one write;
    "collide" uses the client's own pending msgid for the forwarded request;
    "close" and "reset" send the forwarded request, then FIN or RST;
    "flood_close" the 2000 requests and the forwarded one, then FIN."""

    def on_request(conn: Conn, m: Msg) -> None:
        if m.method != "call_back" or len(m.params) != 2 or len(m.params_raw) != 2:
            conn.send(correct(m), "right reply")
            return
        st = conn.state
        fwd: Dict[int, int] = st.setdefault("fwd", {})
        expect: Dict[int, HostileCall] = st.setdefault("expect", {})
        first = not st.get("started")
        st["started"] = True
        extra = b""
        if first and mode == "hostile":
            for hc in callback_hostile_calls():
                extra += hc.data
                if hc.msgid is not None:
                    expect[hc.msgid] = hc
        elif first and mode in ("flood", "flood_close"):
            for i in range(2000):
                hc = HostileCall(f"mul({i}, 7)", pk([0, 10_000 + i, "mul", [i, 7]]), 10_000 + i, f"value:{7 * i}")
                expect[hc.msgid] = hc  # type: ignore[index]
                extra += hc.data
        st["expect_since"] = time.monotonic()
        ours = m.msgid if mode == "collide" else 1_000_000 + len(fwd) + conn.n_requests
        assert m.msgid is not None and ours is not None
        fwd[ours] = m.msgid
        conn.send(extra + raw_request(ours, m.params_raw[0], m.params_raw[1]),
                  f"{'hostile calls + ' if extra else ''}the forwarded {m.params[0]!r} request (msgid {ours})")
        if mode in ("close", "flood_close"):
            conn.close()
        elif mode == "reset":
            conn.reset()

    return on_request


def callback_response(conn: Conn, r: Msg) -> None:
    st = conn.state
    fwd: Dict[int, int] = st.setdefault("fwd", {})
    if r.msgid in fwd:
        st.setdefault("relay", []).append((fwd.pop(r.msgid), r))
    callback_relay(conn)


def callback_relay(conn: Conn) -> None:
    """Relays the client's answers once it has answered every hostile call (or 3 s passed)."""
    st = conn.state
    expect: Dict[int, HostileCall] = st.get("expect", {})
    pending = [i for i in expect if i not in conn.server.client_responses]
    if pending and time.monotonic() - st.get("expect_since", 0) < 3.0:
        return
    for client_id, r in st.pop("relay", []):
        spans = array_spans(r.raw)
        err, res = r.raw[spans[2][0]:spans[2][1]], r.raw[spans[3][0]:spans[3][1]]
        conn.send(reply(client_id, res, err), "the client's answer, relayed")


def callback_check(server: HostileServer) -> Optional[str]:
    """Every hostile request got an answer of the right kind."""
    problems = []
    expected: Dict[int, HostileCall] = {}
    for conn in server.conns:
        expected.update(conn.state.get("expect", {}))
    if not expected:
        return "the case made no call_back (nothing was checked)"
    for msgid, hc in sorted(expected.items()):
        if msgid not in server.client_responses:
            problems.append(f"{hc.label}: no answer")
            continue
        err, res = server.client_responses[msgid]
        if hc.want == "error" and err is None:
            problems.append(f"{hc.label}: answered with success {res!r:.60}, want an error")
        elif hc.want.startswith("value:") and (err is not None or repr(res) != hc.want[6:]):
            problems.append(f"{hc.label}: answered error={err!r:.80} result={res!r:.60}, want {hc.want[6:]}")
    if problems:
        return f"{len(problems)} of {len(expected)} server-to-client calls answered wrong: " + "; ".join(problems[:6])
    return None


def callback_answers(server: HostileServer) -> str:
    out: List[str] = []
    for conn in server.conns:
        for msgid, hc in sorted(conn.state.get("expect", {}).items()):
            if msgid in server.client_responses and len(out) < 20:
                err, res = server.client_responses[msgid]
                out.append(f"{hc.label} -> " + (f"error {err!r:.70}" if err is not None else f"{res!r:.40}"))
    return "; ".join(out)


# ---------------------------------------------------------------------------
# The scenarios
# ---------------------------------------------------------------------------

LOST = r"lost|closed|eof|reset|broken|connection"
PROTOCOL = r"protocol|malformed|invalid|lost|closed|connection"
LIMIT = r"limit|exceed|too large|too deep|deeper"


def fail_first(name: str, what: str, hostile: Hostile, after: str = "open", reason: str = PROTOCOL,
               max_seconds: float = 3.0, **kw: Any) -> Scenario:
    return Scenario(name, "add", "fail", what, first_reply(hostile, after, what),
                    max_seconds=max_seconds, reason=reason, **kw)


def scenarios() -> List[Scenario]:
    s: List[Scenario] = []
    h = head_of_reply

    # (a) Replies after which the call must fail with a clear error, promptly.
    s += [
        fail_first("garbage_c1", "the reply is the reserved byte 0xc1 (left open)", lambda m: b"\xc1"),
        fail_first("garbage_inside_reply", "[1, msgid, nil, 0xc1] (left open)", lambda m: h(m) + b"\xc1"),
        fail_first("not_an_array", "the reply is a map {'result': 3}", lambda m: pk({"result": 3})),
        fail_first("empty_array", "the reply is []", lambda m: b"\x90"),
        fail_first("array_of_2", "[1, msgid]", lambda m: b"\x92\x01" + pk(m.msgid)),
        fail_first("nil_error_result_missing", "[1, msgid, nil] (no result)",
                   lambda m: b"\x93\x01" + pk(m.msgid) + b"\xc0"),
        fail_first("array_of_5", "[1, msgid, nil, 3, nil]",
                   lambda m: b"\x95\x01" + pk(m.msgid) + b"\xc0\x03\xc0"),
        fail_first("type_tag_3", "[3, msgid, nil, 3]", lambda m: b"\x94\x03" + pk(m.msgid) + b"\xc0\x03"),
        fail_first("type_tag_str", "['1', msgid, nil, 3]", lambda m: b"\x94\xa11" + pk(m.msgid) + b"\xc0\x03"),
        fail_first("type_tag_true", "[true, msgid, nil, 3]", lambda m: b"\x94\xc3" + pk(m.msgid) + b"\xc0\x03"),
        fail_first("type_tag_0_bad_request", "[0, msgid, nil, 3]: a request whose method is nil",
                   lambda m: b"\x94\x00" + pk(m.msgid) + b"\xc0\x03"),
        fail_first("msgid_str", "[1, 'msgid', nil, 3]", lambda m: b"\x94\x01" + pk(str(m.msgid)) + b"\xc0\x03"),
        fail_first("msgid_negative", "[1, -1, nil, 3]", lambda m: b"\x94\x01\xff\xc0\x03"),
        fail_first("msgid_u64_alias", "[1, 2**32 + msgid, nil, 3] (equal to msgid mod 2**32)",
                   lambda m: b"\x94\x01\xcf" + struct.pack(">Q", (1 << 32) + (m.msgid or 0)) + b"\xc0\x03"),
        fail_first("msgid_float", "[1, float(msgid), nil, 3]",
                   lambda m: b"\x94\x01\xcb" + struct.pack(">d", float(m.msgid or 0)) + b"\xc0\x03"),
        fail_first("huge_str32_header", "[1, msgid, nil, str32 declaring 4 GiB] (then left open)",
                   lambda m: h(m) + b"\xdb\xff\xff\xff\xffabc", reason=LIMIT),
        fail_first("huge_bin32_header", "[1, msgid, nil, bin32 declaring 4 GiB] (then left open)",
                   lambda m: h(m) + b"\xc6\xff\xff\xff\xff\x00\x01", reason=LIMIT),
        fail_first("huge_array32_header", "[1, msgid, nil, array32 declaring 2**32-1 items] (then left open)",
                   lambda m: h(m) + b"\xdd\xff\xff\xff\xff\xc0\xc0", reason=LIMIT),
        fail_first("huge_map32_header", "[1, msgid, nil, map32 declaring 2**32-1 pairs] (then left open)",
                   lambda m: h(m) + b"\xdf\xff\xff\xff\xff\x00\xc0", reason=LIMIT),
        fail_first("huge_ext32_header", "[1, msgid, nil, ext32 declaring 4 GiB] (then left open)",
                   lambda m: h(m) + b"\xc9\xff\xff\xff\xff\x05\x00", reason=LIMIT),
        fail_first("huge_error_str32_header", "[1, msgid, str32 declaring 4 GiB as the error] (left open)",
                   lambda m: b"\x94\x01" + pk(m.msgid) + b"\xdb\xff\xff\xff\xff", reason=LIMIT),
        fail_first("nesting_129_levels", "a result of 128 nested arrays (129 levels with the message)",
                   lambda m: h(m) + nested_arrays(MAX_DEPTH), reason=LIMIT),
        fail_first("nesting_129_levels_maps", "a result of 128 nested maps {0: ...}",
                   lambda m: h(m) + nested_maps(MAX_DEPTH), reason=LIMIT),
        fail_first("nesting_100k_levels_open", "a result opening 100,000 nested arrays (left open)",
                   lambda m: h(m) + b"\x91" * 100_000, reason=LIMIT),
        fail_first("nesting_at_limit", "a result of 127 nested arrays (128 levels: legal, but not an int)",
                   lambda m: h(m) + nested_arrays(MAX_DEPTH - 1), reason=r"",
                   reason_not=r"deep|depth|nest|limit|protocol|timed? ?out"),
        fail_first("cut_then_close", "the first 3 bytes of the right reply, then FIN",
                   lambda m: correct(m)[:3], after="close", reason=LOST),
        fail_first("close_without_reply", "reads the request, then FIN", lambda m: b"", after="close",
                   reason=LOST),
        fail_first("reset_without_reply", "reads the request, then RST", lambda m: b"", after="reset",
                   reason=LOST),
        fail_first("shutdown_write_without_reply", "reads the request, then FIN on its side only (reads on)",
                   lambda m: b"", after="shutdown", reason=LOST),
        Scenario("close_on_accept", "add", "fail", "closes each connection as soon as it is accepted",
                 on_request=lambda c, m: None, on_connect=lambda c: c.close(), max_seconds=3.0, reason=LOST),
        fail_first("nils_8m_over_decoded_limit",
                   f"[1, msgid, nil, array32 of 8,000,000 nils] (8 MB; {8_000_000 * DECODED_VALUE_SIZE >> 20} MiB "
                   "decoded > the 256 MiB limit), then FIN",
                   lambda m: h(m) + b"\xdd" + struct.pack(">I", 8_000_000) + b"\xc0" * 8_000_000,
                   after="close", reason=LIMIT, max_seconds=8.0, max_rss_mb=150),
        fail_first("error_code_message", "[1, msgid, [7, 'hostile server says no'], nil]",
                   lambda m: b"\x94\x01" + pk(m.msgid) + pk([7, "hostile server says no"]) + b"\xc0",
                   reason=remote_reason("hostile server says no")),
        fail_first("error_plain_string", "[1, msgid, 'just a plain string error', nil]",
                   lambda m: b"\x94\x01" + pk(m.msgid) + pk("just a plain string error") + b"\xc0",
                   reason=remote_reason("just a plain string error")),
        fail_first("error_and_result_both_set", "[1, msgid, [7, 'error wins over result'], 3]",
                   lambda m: b"\x94\x01" + pk(m.msgid) + pk([7, "error wins over result"]) + b"\x03",
                   reason=remote_reason("error wins over result")),
        fail_first("error_false", "[1, msgid, false, 3]: a non-nil error", lambda m:
                   b"\x94\x01" + pk(m.msgid) + b"\xc2\x03", reason=r"remote|error|false|c2"),
        fail_first("result_str_not_int", "[1, msgid, nil, '3']", lambda m: h(m) + pk("3"), reason=r"",
                   reason_not=r"protocol|timed? ?out"),
        Scenario("garbage_after_first_reply", "add", "fail",
                 "the right reply to add(1, 2) followed by 0xc1 in the same write",
                 every_reply(garbage_after_first, "right reply (+ 0xc1 after the first)"), max_seconds=3.0,
                 reason=PROTOCOL),
        fail_first("malformed_server_request", "[0, 77, 5, []]: a request whose method is an int",
                   lambda m: pk([0, 77, 5, []])),
        fail_first("malformed_notification", "[2, 'x']: a notification of 2 elements", lambda m: pk([2, "x"])),
        Scenario("eof_after_first_reply", "add", "fail",
                 "answers add(1, 2), then FIN on its side (reads on): add(-5, 3) must fail, not wait",
                 eof_after_first, max_seconds=3.0, reason=LOST),
        Scenario("reset_after_first_reply", "add", "fail", "answers add(1, 2), then RST 50 ms later",
                 reset_after_first, max_seconds=3.0, reason=LOST),
        Scenario("callback_request_then_close", "server_to_client_call", "fail",
                 "on call_back the server sends the mul(6, 7) request, then FIN at once (the client's "
                 "handler answers into a closing connection)",
                 callback_request("close"), max_seconds=3.0, reason=LOST),
        Scenario("callback_2000_requests_then_close", "server_to_client_call", "fail",
                 "on call_back the server writes 2000 mul(i, 7) requests and the forwarded one, then FIN",
                 callback_request("flood_close"), max_seconds=4.0, reason=LOST),
        Scenario("callback_request_then_reset", "server_to_client_call", "fail",
                 "on call_back the server sends the mul(6, 7) request, then RST at once",
                 callback_request("reset"), max_seconds=3.0, reason=LOST),
        fail_first("server_request_then_close", "a request whoami() to the client (which has no handlers), then FIN",
                   lambda m: pk([0, 77, "whoami", []]), after="close", reason=LOST),
        fail_first("server_request_then_reset", "a request whoami() to the client (which has no handlers), then RST",
                   lambda m: pk([0, 77, "whoami", []]), after="reset", reason=LOST),
        fail_first("stray_one_over_message_limit",
                   f"a stray response whose str32 header makes it {MAX_MESSAGE + 1} bytes (left open)",
                   stray_over_limit_header, reason=LIMIT),
        fail_first("error_invalid_utf8_message", "[1, msgid, [7, str of bytes ff fe 'bad'], nil]",
                   lambda m: b"\x94\x01" + pk(m.msgid) + b"\x92\x07\xa5\xff\xfebad" + b"\xc0",
                   reason=r"remote|error reply"),
        fail_first("error_map_with_map_key", "[1, msgid, {{1: 2}: 3}, nil]: a map as a map key",
                   lambda m: b"\x94\x01" + pk(m.msgid) + b"\x81\x81\x01\x02\x03" + b"\xc0",
                   reason=r"remote|error"),
        fail_first("result_map_with_map_key", "[1, msgid, nil, {{}: 1}]",
                   lambda m: h(m) + b"\x81\x80\x01", reason=r"", reason_not=r"protocol|timed? ?out"),
        fail_first("result_map_duplicate_keys", "[1, msgid, nil, {1: 2, 1: 3}]",
                   lambda m: h(m) + b"\x82\x01\x02\x01\x03", reason=r"", reason_not=r"protocol|timed? ?out"),
        fail_first("result_bad_timestamp_ext", "[1, msgid, nil, ext(-1) of 12 bytes ff]",
                   lambda m: h(m) + b"\xc7\x0c\xff" + b"\xff" * 12, reason=r"",
                   reason_not=r"protocol|timed? ?out"),
    ]

    # The timeout case: sleep_ms(2000) with a 200 ms timeout, then add(1, 1).
    s += [
        Scenario("partial_reply_left_open", "timeout_on_sleeping_server", "pass",
                 "sleep_ms gets the first 3 bytes of its reply, left open (the call must time out at "
                 "200 ms); add(1, 1) then gets the stale reply's rest and its own reply",
                 partial_then_late_completion, max_seconds=5.0),
        Scenario("flood_during_timeout", "timeout_on_sleeping_server", "pass",
                 "sleep_ms is never answered: 4 KiB notifications flood in non-stop (up to 3 s) until "
                 "add(1, 1) arrives; the 200 ms timeout must still fire",
                 flood_during_timeout, on_idle=flood_idle, max_seconds=6.0),
        Scenario("trickle_during_timeout", "timeout_on_sleeping_server", "pass",
                 "sleep_ms is never answered: a stray response declaring a 1 MiB str trickles in a byte "
                 "every 5 ms; the 200 ms timeout must still fire; add(1, 1) then gets the rest and its reply",
                 trickle_during_timeout, on_idle=flood_idle, max_seconds=6.0),
        Scenario("late_reply_after_timeout", "timeout_on_sleeping_server", "pass",
                 "sleep_ms is answered only after it timed out, in front of add(1, 1)'s reply",
                 late_reply_after_timeout, max_seconds=5.0),
    ]

    # (b) Odd but valid replies: the case must pass.
    s += [
        Scenario("unsolicited_responses_first", "add", "pass",
                 "each reply follows a response to msgid 0xfffffff0 and an error response to msgid+1000",
                 every_reply(stray_responses_first, "2 stray responses + right reply")),
        Scenario("unsolicited_2mib_response_first", "add", "pass",
                 "the first reply follows a 2 MiB bin response to msgid 4,000,000,000",
                 every_reply(big_stray_first, "2 MiB stray response + right reply")),
        Scenario("many_strays_first", "add", "pass",
                 "each reply follows 500 notifications and 500 unknown-msgid responses, in one write",
                 every_reply(many_strays_first, "1000 strays + right reply")),
        Scenario("notification_first", "add", "pass", "each reply follows a notification from the server",
                 every_reply(notification_first, "notification + right reply")),
        Scenario("server_request_first", "add", "pass",
                 "each reply follows a request whoami() from the server (the client must answer it an "
                 "error, having no such method)",
                 every_reply(server_request_first, "request + right reply"), check=server_requests_answered),
        Scenario("one_byte_writes", "add", "pass", "each reply in 1-byte writes, 2 ms apart", one_byte_writes),
        Scenario("noncanonical_ints", "add", "pass",
                 "msgid as uint32 (0xce), results as uint64 (0xcf) / int64 (0xd3)",
                 every_reply(noncanonical_ints, "non-canonical ints")),
        Scenario("noncanonical_envelope", "add", "pass",
                 "array16 envelope (0xdc 00 04), type 1 as uint8 (0xcc 01), msgid and result as int64",
                 every_reply(noncanonical_envelope, "non-canonical envelope")),
        Scenario("duplicate_reply", "add", "pass", "each reply written twice",
                 every_reply(duplicate_reply, "right reply twice")),
        Scenario("reply_then_partial_stray", "add", "pass",
                 "each write is the rest of a stray notification, the reply, and the first 7 bytes of another",
                 reply_then_partial_stray),
        Scenario("stray_at_message_limit", "add", "pass",
                 f"the first reply follows a stray response of exactly {MAX_MESSAGE} bytes (the limit)",
                 stray_at_limit, max_seconds=10.0),
        Scenario("notification_unhashable_params", "add", "pass",
                 "each reply follows a notification whose param is {{}: 1} (a map as a map key)",
                 every_reply(lambda c, m: b"\x93\x02" + pk("note") + b"\x91\x81\x80\x01" + correct(m),
                             "odd notification + right reply")),
        Scenario("callback_hostile_calls", "server_to_client_call", "pass",
                 "before forwarding mul(6, 7) the server calls the client's mul with wrong arguments, odd "
                 "method names and msgids, and notifies it; each request must get an error or a right answer",
                 callback_request("hostile"), on_response=callback_response, on_idle=callback_relay,
                 check=callback_check, max_seconds=8.0),
        Scenario("callback_msgid_collision", "server_to_client_call", "pass",
                 "the forwarded request reuses the msgid of the client's own pending call_back",
                 callback_request("collide"), on_response=callback_response, on_idle=callback_relay,
                 max_seconds=5.0),
        Scenario("callback_2000_requests_one_write", "server_to_client_call", "pass",
                 "before forwarding mul(6, 7) the server writes 2000 mul(i, 7) requests at once",
                 callback_request("flood"), on_response=callback_response, on_idle=callback_relay,
                 check=callback_check, max_seconds=8.0),
        Scenario("concurrent_1000_batched_reverse", "concurrent_1000", "pass",
                 "waits for all 1000 add calls, then writes the 1000 replies in reverse order in one write",
                 batch_collect, on_idle=batch_flush, max_seconds=10.0),
        Scenario("pipelined_straddling_writes", "pipelined_out_of_order", "pass",
                 "the three replies in the order the case wants, each write ending inside the next reply",
                 straddle_collect, on_idle=straddle_idle, max_seconds=6.0),
        Scenario("echo_each_type_random_pieces", "echo_each_type", "pass",
                 "echoes the client's own bytes back, each reply in random 1-9 byte writes",
                 random_chunks(20240611), max_seconds=10.0),
    ]
    return s


# ---------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default=",".join(CLIENTS))
    ap.add_argument("--scenarios", default="", help="comma-separated substrings of scenario names")
    ap.add_argument("--jobs", type=int, default=WORKERS, help="client runs at once")
    ap.add_argument("--repeat", type=int, default=1, help="run each (client, scenario) this many times")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--verbose", "-v", action="store_true")
    args = ap.parse_args()
    langs = [c for c in args.clients.split(",") if c]
    for lang in langs:
        if lang not in CLIENTS:
            print(f"unknown client {lang!r} (known: {', '.join(CLIENTS)})", file=sys.stderr)
            return 2
    all_sc = scenarios()
    names = [x.name for x in all_sc]
    assert len(set(names)) == len(names), "duplicate scenario names"
    chosen = all_sc
    if args.scenarios:
        wanted = [w for w in args.scenarios.split(",") if w]
        chosen = [x for x in all_sc if any(w in x.name for w in wanted)]
    if args.list:
        for x in chosen:
            print(f"{x.name:36} {x.case:28} expect {x.expect.upper():4}  {x.what}")
        return 0
    if not chosen:
        print("no scenario matches", file=sys.stderr)
        return 2
    missing = [p for p in (os.path.join(os.path.dirname(os.path.dirname(HERE)), "target/release/conformance_client"),
                           os.path.join(HERE, "c/conformance_client")) if not os.path.exists(p)]
    if missing:
        print(f"missing binaries {missing}: run `make build-interop` first", file=sys.stderr)
        return 2

    started = time.monotonic()
    passed = failed = 0
    jobs: List[Tuple[str, Scenario, "Future[Run]"]] = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for sc in chosen:
            for lang in langs:
                for _ in range(max(1, args.repeat)):
                    jobs.append((lang, sc, pool.submit(run_client, lang, sc, args.verbose)))
        for lang, sc, fut in jobs:
            try:
                run = fut.result()
                ok, detail = run.ok, run.detail
            except Exception as e:
                ok, detail = False, f"the test itself raised {type(e).__name__}: {e}"
            if ok:
                passed += 1
                print(f"PASS {lang}/{sc.name} - {detail}", flush=True)
            else:
                failed += 1
                print(f"FAIL {lang}/{sc.name}: {detail}", flush=True)
    print(f"\nhostile-server test: {len(chosen)} scenarios x {len(langs)} clients"
          f"{f' x {args.repeat} runs' if args.repeat > 1 else ''} "
          f"in {time.monotonic() - started:.1f} s")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
