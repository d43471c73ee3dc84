"""The grpcio baseline: a tiny Add service, sync unary calls, Python on
both sides. Built with grpc's generic handler API and bytes (de)serializers,
so no protoc and no generated code: a request is two int64 (little endian),
a reply one int64.

Usage:
  grpc_bench.py server            prints `listening tcp://127.0.0.1:PORT`, serves until stdin closes
  grpc_bench.py ADDRESS seq N     sequential add(1, 2): seq_p50_ns, seq_p99_ns
"""

from __future__ import annotations

import struct
import sys
import time
from concurrent import futures

import grpc

METHOD = "/bench.Calc/Add"
PAIR = struct.Struct("<qq")
ONE = struct.Struct("<q")


def identity(b: bytes) -> bytes:
    return b


def serve() -> None:
    def add(request: bytes, context) -> bytes:
        a, b = PAIR.unpack(request)
        return ONE.pack(a + b)

    handler = grpc.method_handlers_generic_handler(
        "bench.Calc",
        {
            "Add": grpc.unary_unary_rpc_method_handler(
                add, request_deserializer=identity, response_serializer=identity
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening tcp://127.0.0.1:{port}", flush=True)
    sys.stdin.read()  # until the driver closes our stdin
    server.stop(0)


def client(address: str, what: str, n: int) -> None:
    if what != "seq":
        raise SystemExit(f"unknown benchmark {what}")
    target = address[len("tcp://"):] if address.startswith("tcp://") else address
    with grpc.insecure_channel(target) as channel:
        add = channel.unary_unary(
            METHOD, request_serializer=identity, response_deserializer=identity
        )
        req = PAIR.pack(1, 2)
        for _ in range(max(n // 10, 50)):
            add(req)
        lat = []
        clock = time.perf_counter_ns
        for _ in range(n):
            t = clock()
            reply = add(req)
            lat.append(clock() - t)
        assert ONE.unpack(reply)[0] == 3
        lat.sort()
        print(f"seq_p50_ns {lat[len(lat) // 2]}")
        print(f"seq_p99_ns {lat[min(int(round((len(lat) - 1) * 0.99)), len(lat) - 1)]}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["server"]:
        serve()
    else:
        client(sys.argv[1], sys.argv[2], int(sys.argv[3]))
