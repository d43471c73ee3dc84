#!/usr/bin/env python3
"""An independent MessagePack-RPC test server (not written with foorpc).

Written from the public MessagePack-RPC spec: request ``[0, msgid, method, params]``,
response ``[1, msgid, error, result]``, notification ``[2, method, params]``, messages
concatenated on a stream socket without any length prefix.

Usage::

    python3 tests/peers/msgpack_server.py (--port N [--host 127.0.0.1] | --unix PATH)

Prints one line ``listening on tcp://HOST:PORT`` or ``listening on unix:///PATH`` once
listening, then serves until SIGTERM/SIGINT (exit status 0, the unix socket file is removed).

Methods: add(a, b), echo(x) (answers the exact bytes of x), fail([msg]) (error
``[0, "fail: msg"]``), sleep_ms(n) (in a thread, returns n), get_notifications() (the
``[method, params]`` notifications received on this connection, in order), call_back(method,
params) (calls the client back on the same connection and forwards its answer),
disconnect() (closes the connection without answering); anything else answers the error
``[1, "unknown method: NAME"]``. Notifications for any method are accepted.

Values are never re-encoded when they pass through (echo, call_back, get_notifications): their
raw bytes are sliced out of the received message with a small skip scanner and spliced into
the outgoing message, so float32, invalid UTF-8 in str, ext types and bin survive exactly.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Dict, List, NoReturn, Optional, Tuple

import msgpack

MAX_BUFFER = 64 * 1024 * 1024
NIL = b"\xc0"

# ---------------------------------------------------------------------------------------------
# Raw MessagePack scanning (find the byte range of a value without decoding it)

# first byte -> total size of a fixed-size value
_FIXED = {0xCA: 5, 0xCB: 9, 0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9, 0xD0: 2, 0xD1: 3, 0xD2: 5,
          0xD3: 9, 0xD4: 3, 0xD5: 4, 0xD6: 6, 0xD7: 10, 0xD8: 18}
# first byte -> (size of the length field, extra bytes before the payload (ext type))
_SIZED = {0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1),
          0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0)}
# first byte -> (size of the count field, items per entry)
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


def array_items(buf: bytes, pos: int) -> List[Tuple[int, int]]:
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


def array_header(n: int) -> bytes:
    """Encode a MessagePack array header for ``n`` items."""
    if n < 16:
        return bytes([0x90 | n])
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def pack(value: Any) -> bytes:
    """Encode a plain value (thread safe: one Packer per call)."""
    return msgpack.packb(value, use_bin_type=True, unicode_errors="surrogateescape")


# ---------------------------------------------------------------------------------------------
# Connections


class ConnectionClosed(Exception):
    """The peer or this side closed the connection."""


class Pending:
    """An outgoing request (from call_back) waiting for the client's response."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.raw: Optional[bytes] = None  # the whole response message, None when closed


class Connection:
    """One client connection: a reader thread, a write lock, per-connection state."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.wlock = threading.Lock()
        self.state_lock = threading.Lock()
        self.closed = False
        self.notifications: List[bytes] = []  # raw [method, params] pairs
        self.pending: Dict[int, Pending] = {}
        self.next_id = 0
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=False,
                                         unicode_errors="surrogateescape",
                                         max_buffer_size=MAX_BUFFER)

    # -- writing ----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write one whole message; silently dropped once the connection is closed."""
        with self.wlock:
            if self.closed:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                pass

    def reply(self, msgid: int, error: bytes, result: bytes) -> None:
        """Send ``[1, msgid, error, result]`` where error and result are encoded values."""
        self.send(b"\x94\x01" + pack(msgid) + error + result)

    def reply_error(self, msgid: int, code: int, message: str) -> None:
        self.reply(msgid, pack([code, message]), NIL)

    def close(self) -> None:
        """Close the socket and wake every pending call_back."""
        with self.wlock:
            if not self.closed:
                self.closed = True
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self.sock.close()
        with self.state_lock:
            pending, self.pending = self.pending, {}
        for p in pending.values():
            p.done.set()

    # -- reading ----------------------------------------------------------------------------

    def run(self) -> None:
        """Reader loop: frame messages, keep their raw bytes, dispatch them in order."""
        raw = bytearray()
        base = 0  # stream offset of raw[0]
        try:
            while not self.closed:
                try:
                    chunk = self.sock.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                raw += chunk
                self.unpacker.feed(chunk)
                start = base
                while not self.closed:
                    try:
                        obj = self.unpacker.unpack()
                    except msgpack.OutOfData:
                        break
                    end = self.unpacker.tell()
                    message = bytes(raw[start - base:end - base])
                    start = end
                    self.dispatch(obj, message)
                del raw[:start - base]
                base = start
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            log("%s: undecodable input (%s), closing" % (self.name, exc))
        except ConnectionClosed:
            pass
        finally:
            self.close()

    def dispatch(self, obj: Any, message: bytes) -> None:
        """Handle one decoded message (``message`` holds its exact bytes)."""
        if not isinstance(obj, tuple) or not obj or not isinstance(obj[0], int):
            self.violation(None, "message is not an array starting with a type")
        kind = obj[0]
        msgid = obj[1] if len(obj) > 1 and _is_msgid(obj[1]) else None
        if kind == 0:
            if len(obj) != 4 or msgid is None:
                self.violation(msgid, "request must be [0, msgid, method, params]")
            if not isinstance(obj[2], (str, bytes)):
                self.violation(msgid, "method must be a str")
            if not isinstance(obj[3], tuple):
                self.violation(msgid, "params must be an array")
            method = obj[2] if isinstance(obj[2], str) else obj[2].decode("utf-8",
                                                                           "surrogateescape")
            self.request(msgid, method, obj[3], message)
        elif kind == 1:
            if len(obj) != 4 or msgid is None:
                self.violation(None, "response must be [1, msgid, error, result]")
            with self.state_lock:
                p = self.pending.pop(msgid, None)
            if p is not None:  # unknown ids are ignored
                p.raw = message
                p.done.set()
        elif kind == 2:
            if len(obj) != 3 or not isinstance(obj[1], (str, bytes)):
                self.violation(None, "notification must be [2, method, params]")
            if not isinstance(obj[2], tuple):
                self.violation(None, "notification params must be an array")
            items = array_items(message, 0)
            pair = b"\x92" + message[items[1][0]:items[2][1]]
            with self.state_lock:
                self.notifications.append(pair)
        else:
            self.violation(msgid, "unknown message type %r" % (kind,))

    def violation(self, msgid: Optional[int], why: str) -> NoReturn:
        """Protocol violation: answer an error when a msgid is known, then close."""
        if msgid is not None:
            self.reply_error(msgid, 1, "protocol violation: " + why)
        raise ConnectionClosed(why)

    # -- methods ----------------------------------------------------------------------------

    def request(self, msgid: int, method: str, params: Tuple[Any, ...], message: bytes) -> None:
        """Run one request; slow methods run in their own thread."""
        items = array_items(message, 0)
        params_at = items[3][0]
        try:
            if method == "add":
                if len(params) != 2 or not all(_is_number(p) for p in params):
                    return self.reply_error(msgid, 1, "add expects two numbers")
                self.reply(msgid, NIL, pack(params[0] + params[1]))
            elif method == "echo":
                if len(params) != 1:
                    return self.reply_error(msgid, 1, "echo expects one argument")
                start, end = array_items(message, params_at)[0]
                self.reply(msgid, NIL, message[start:end])
            elif method == "fail":
                text = " ".join(_text(p) for p in params) if params else "failed"
                self.reply_error(msgid, 0, "fail: " + text)
            elif method == "sleep_ms":
                if len(params) != 1 or not isinstance(params[0], int) or params[0] < 0:
                    return self.reply_error(msgid, 1, "sleep_ms expects one uint")
                spawn(self.sleep_ms, msgid, params[0])
            elif method == "get_notifications":
                with self.state_lock:
                    notes = list(self.notifications)
                self.reply(msgid, NIL, array_header(len(notes)) + b"".join(notes))
            elif method == "call_back":
                if (len(params) != 2 or not isinstance(params[0], (str, bytes))
                        or not isinstance(params[1], tuple)):
                    return self.reply_error(msgid, 1, "call_back expects (method, params)")
                (m0, _), (_, p1) = array_items(message, params_at)
                spawn(self.call_back, msgid, message[m0:p1])
            elif method == "disconnect":
                raise ConnectionClosed("disconnect requested")
            else:
                self.reply_error(msgid, 1, "unknown method: " + method)
        except (OverflowError, ValueError, TypeError) as exc:
            self.reply_error(msgid, 0, "%s: %s" % (type(exc).__name__, exc))

    def sleep_ms(self, msgid: int, n: int) -> None:
        time.sleep(n / 1000.0)
        self.reply(msgid, NIL, pack(n))

    def call_back(self, msgid: int, method_and_params: bytes) -> None:
        """Send ``[0, id, method, params]`` to the client, forward its answer to ``msgid``."""
        pending = Pending()
        with self.state_lock:
            if self.closed:
                return
            while self.next_id in self.pending:
                self.next_id = (self.next_id + 1) & 0xFFFFFFFF
            out_id = self.next_id
            self.next_id = (self.next_id + 1) & 0xFFFFFFFF
            self.pending[out_id] = pending
        self.send(b"\x94\x00" + pack(out_id) + method_and_params)
        pending.done.wait()
        if pending.raw is None:
            return  # connection closed before the client answered
        items = array_items(pending.raw, 0)
        error = pending.raw[items[2][0]:items[2][1]]
        result = pending.raw[items[3][0]:items[3][1]]
        if error != NIL:
            self.reply(msgid, error, NIL)
        else:
            self.reply(msgid, NIL, result)


def _is_msgid(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFFFFFF


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "surrogateescape")
    return v if isinstance(v, str) else repr(v)


def spawn(fn: Any, *args: Any) -> None:
    threading.Thread(target=fn, args=args, daemon=True).start()


def log(text: str) -> None:
    print("msgpack_server: " + text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Main


def serve(listener: socket.socket) -> None:
    """Accept connections until the listener is closed, one reader thread each."""
    count = 0
    while True:
        try:
            sock, _ = listener.accept()
        except OSError as exc:
            if listener.fileno() < 0:
                return
            log("accept failed: %s" % exc)
            time.sleep(0.05)
            continue
        count += 1
        conn = Connection(sock, "conn#%d" % count)
        spawn(conn.run)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="independent MessagePack-RPC test server")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int, help="TCP port (0: ephemeral)")
    where.add_argument("--unix", help="unix socket path")
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args(argv)

    stopping = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    unix_path: Optional[str] = None
    if args.unix is not None:
        unix_path = os.path.abspath(args.unix)
        if os.path.exists(unix_path):
            os.unlink(unix_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(unix_path)
        url = "unix://" + unix_path
    else:
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((args.host, args.port))
        port = listener.getsockname()[1]
        host = "[%s]" % args.host if family == socket.AF_INET6 else args.host
        url = "tcp://%s:%d" % (host, port)
    listener.listen(128)
    print("listening on " + url, flush=True)
    spawn(serve, listener)
    while not stopping.wait(0.5):
        pass
    listener.close()
    if unix_path is not None and os.path.exists(unix_path):
        os.unlink(unix_path)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter shutdown: connection threads may still be running
