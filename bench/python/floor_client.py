"""The Python floor: a hand-written MessagePack-RPC client on a blocking
socket (the msgpack package, nothing else), against the Rust bench server.

Usage: floor_client.py ADDRESS seq N | slices N | pipe N WINDOW | echo N BYTES
(`slices`: seq driven slice by slice from stdin, see common.run_seq)
"""

from __future__ import annotations

import socket
import time

import msgpack

from common import args, print_bandwidth, print_rate, run_seq


class FloorClient:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 30)
        self.packer = msgpack.Packer(use_bin_type=True)
        self.next_id = 0
        # recv_into a buffer made once: no allocation per read.
        self.buf = bytearray(1 << 20)
        self.view = memoryview(self.buf)

    def request(self, method: str, params: list) -> bytes:
        msgid = self.next_id
        self.next_id = (self.next_id + 1) & 0xFFFFFFFF
        return self.packer.pack([0, msgid, method, params])

    def call(self, method: str, *params):
        self.sock.sendall(self.request(method, list(params)))
        return self.read_one()

    def read_one(self):
        unpacker = self.unpacker
        while True:
            for msg in unpacker:
                if msg[2] is not None:
                    raise RuntimeError(f"remote error {msg[2]!r}")
                return msg[3]
            n = self.sock.recv_into(self.buf)
            if not n:
                raise ConnectionError("server closed")
            unpacker.feed(self.view[:n])

    def pipeline(self, total: int, window: int) -> None:
        """`total` add(1, 2) calls with `window` in flight (sliding window)."""
        req = self.request("add", [1, 2])
        sent = min(window, total)
        self.sock.sendall(req * sent)
        done = 0
        unpacker = self.unpacker
        while done < total:
            n = self.sock.recv_into(self.buf)
            if not n:
                raise ConnectionError("server closed")
            unpacker.feed(self.view[:n])
            got = 0
            for msg in unpacker:
                got += 1
            done += got
            more = min(total - sent, got)
            if more > 0:
                self.sock.sendall(req * more)
                sent += more


def main() -> None:
    host, port, _, what, n, extra = args()
    c = FloorClient(host, port)
    if what in ("seq", "slices"):
        run_seq(what == "slices", n, lambda: c.call("add", 1, 2))
    elif what == "pipe":
        window = extra or 64
        c.pipeline(max(n // 10, window * 4), window)
        t = time.perf_counter_ns()
        c.pipeline(n, window)
        print_rate(n, time.perf_counter_ns() - t)
    elif what == "echo":
        payload = b"\xab" * extra
        for _ in range(max(n // 10, 3)):
            c.call("echo", payload)
        t = time.perf_counter_ns()
        for _ in range(n):
            assert len(c.call("echo", payload)) == extra
        print_bandwidth(n, extra, time.perf_counter_ns() - t)
    else:
        raise SystemExit(f"unknown benchmark {what}")


if __name__ == "__main__":
    main()
