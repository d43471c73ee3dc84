#!/usr/bin/env python3
"""Runs every conformance client against every conformance server, over TCP and
over Unix sockets, and prints a table of cells (passed/total cases per cell).

Usage: tests/interop/matrix.py [--servers rust,c,...] [--clients rust,...] [--transports tcp,unix]
Exit status 0 only when every case of every cell passed. The last line is
`N passed, N failed`, counting cells.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
SERVERS = ["rust", "c", "python", "msgpack-py"]
CLIENTS = ["rust", "c", "python", "python-async", "msgpack-py", "pynvim"]
FOREIGN = {"msgpack-py", "pynvim"}
TRANSPORTS = ["tcp", "unix"]
CELL_TIMEOUT = 120.0
RESULT_LINE = re.compile(r"^(\d+) passed, (\d+) failed$")


def start_server(lang: str, transport: str, tmp: str) -> Tuple[subprocess.Popen, List[str]]:
    """Starts a server and returns it with the client arguments that reach it."""
    where = ["--port", "0"] if transport == "tcp" else ["--unix", os.path.join(tmp, lang + ".sock")]
    proc = subprocess.Popen([os.path.join(HERE, "serve"), lang, *where],
                            stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # the server's one "listening" line
    if not line:
        proc.kill()
        raise RuntimeError(f"{lang} server did not start")
    if transport == "tcp":
        port = re.search(r":(\d+)$", line)
        if port is None:
            proc.kill()
            raise RuntimeError(f"{lang} server printed no port: {line!r}")
        return proc, ["--port", port.group(1)]
    return proc, where


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_cell(client: str, target: List[str]) -> Tuple[int, int, List[str]]:
    """Runs one client; returns (passed, failed, failure lines)."""
    try:
        out = subprocess.run([os.path.join(HERE, "call"), client, *target], capture_output=True,
                             text=True, timeout=CELL_TIMEOUT)
    except subprocess.TimeoutExpired:
        return 0, 1, ["client timed out"]
    lines = out.stdout.strip().splitlines()
    failures = [l for l in lines if l.startswith("FAIL")]
    m = RESULT_LINE.match(lines[-1]) if lines else None
    if m is None:
        return 0, 1, failures + [f"no result line (exit {out.returncode}): {out.stderr.strip()[-300:]}"]
    passed, failed = int(m.group(1)), int(m.group(2))
    if out.returncode != 0 and failed == 0:
        failed, failures = 1, failures + [f"exit status {out.returncode}"]
    return passed, failed, failures


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--clients", default=",".join(CLIENTS))
    ap.add_argument("--transports", default=",".join(TRANSPORTS))
    args = ap.parse_args()
    servers, clients = args.servers.split(","), args.clients.split(",")
    transports = args.transports.split(",")

    cells: Dict[Tuple[str, str, str], Optional[Tuple[int, int]]] = {}
    problems: List[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="foorpc-interop-") as tmp:
        for transport in transports:
            for server in servers:
                proc, target = start_server(server, transport, tmp)
                try:
                    for client in clients:
                        if client in FOREIGN and server in FOREIGN:
                            continue  # both sides foreign: says nothing about foorpc
                        passed, failed, failures = run_cell(client, target)
                        cells[(transport, server, client)] = (passed, failed)
                        for f in failures:
                            problems.append(f"{client} -> {server} ({transport}): {f}")
                finally:
                    stop_server(proc)

    width = max(len(c) for c in clients) + 2
    print(f"\ninterop matrix (cell = cases passed/run; {time.monotonic() - started:.0f} s)")
    for transport in transports:
        header = "server / client"
        print(f"\n{transport:<6} {header:<16}" + "".join(f"{c:>{width}}" for c in clients))
        for server in servers:
            row = f"{'':<6} {server:<16}"
            for client in clients:
                cell = cells.get((transport, server, client))
                text = "-" if cell is None else f"{cell[0]}/{cell[0] + cell[1]}" + ("" if cell[1] == 0 else " X")
                row += f"{text:>{width}}"
            print(row)
    if problems:
        print("\nfailures:")
        for p in problems:
            print("  " + p)
    ok = sum(1 for c in cells.values() if c is not None and c[1] == 0)
    bad = len(cells) - ok
    print(f"\n{ok} passed, {bad} failed")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
