#!/usr/bin/env python3
"""The foorpc demo: one Python client calls the C server and the Rust server
through the same stub and the same MessagePack-RPC bytes.

Run through `make demo`, which builds everything first. Usage:
    demo.py C_SERVER_BINARY RUST_SERVER_BINARY
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any, List, Tuple

import foorpc


def say(text: str) -> None:
    print(f"==> {text}", flush=True)


def start(name: str, argv: List[str]) -> Tuple["subprocess.Popen[str]", str]:
    """Starts a calc_server on a free port; returns it and its address."""
    proc = subprocess.Popen([*argv, "tcp://127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if " on " not in line:
        proc.kill()
        raise SystemExit(f"the {name} server did not start (it printed {line!r})")
    address = line.rsplit(" on ", 1)[1]
    say(f"{name} calc_server is listening on {address} (pid {proc.pid})")
    return proc, address


def shape(v: Any) -> Any:
    """The value with every leaf replaced by its exact type, to compare types too."""
    if isinstance(v, dict):
        return {k: shape(x) for k, x in v.items()}
    if isinstance(v, list):
        return [shape(x) for x in v]
    return type(v).__name__


def exercise(name: str, address: str) -> None:
    say(f"Python client -> {name} server at {address}")
    with foorpc.Client(address, timeout=5.0) as client:
        print(f"    client.add(1, 2)            = {client.add(1, 2)!r}")
        value = {"bytes": b"\x00\xff", "float32": foorpc.Float32(1.5), "big": 2**64 - 1,
                 "nested": [None, True, "héllo 😀"]}
        echoed = client.echo(value)
        print(f"    client.echo({value!r})")
        same = echoed == value and shape(echoed) == shape(value)
        print(f"        = {echoed!r}  (same values and types: {same})")
        try:
            client.fail("boom")
        except foorpc.RemoteError as e:
            print(f"    client.fail('boom')         -> RemoteError code={e.code} message={e.message!r}")
        n = 2000
        right = sum(client.add(i, i) == 2 * i for i in range(n))
        print(f"    {n} sequential add calls    : {right} right answers"
              " (for speed figures see bench/run)")
        try:
            client.call("sleep_ms", 1000, timeout=0.1)
        except foorpc.RpcTimeoutError:
            print("    client.call('sleep_ms', 1000, timeout=0.1) -> RpcTimeoutError, as asked")


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    say(f"foorpc {foorpc.__version__}: one Python stub, two servers in two languages")
    servers = [start("C", [sys.argv[1]]), start("Rust", [sys.argv[2]])]
    try:
        for (proc, address), name in zip(servers, ["C", "Rust"]):
            exercise(name, address)
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait(timeout=15)
    say("both servers answered the same Python calls; stopped them (SIGTERM, graceful)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
