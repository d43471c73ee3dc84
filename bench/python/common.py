"""Shared by the Python benchmark clients: argument parsing and output."""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterator, List, Tuple


def percentile(sorted_values: List[int], p: float) -> int:
    i = int(round((len(sorted_values) - 1) * p))
    return sorted_values[min(i, len(sorted_values) - 1)]


def print_latencies(lat: List[int]) -> None:
    lat.sort()
    print(f"seq_p50_ns {percentile(lat, 0.50)}")
    print(f"seq_p99_ns {percentile(lat, 0.99)}")


def run_seq(sliced: bool, n: int, call: Callable[[], object]) -> None:
    """Sequential timed calls of `call`, then their p50 and p99.

    `seq N`: a warm-up of N/10 (at least 100) calls, then N timed ones.
    `slices N`: stdin lines `warm K` / `run K` ask for K calls (`run` ones
    timed, at most N kept), each answered `ok`; the bench driver uses it to
    interleave the seq clients so that they all meet the same machine noise.
    """
    if sliced:
        def slices() -> Iterator[Tuple[int, bool]]:
            for line in sys.stdin:
                word, k = line.split()
                if word not in ("warm", "run"):
                    raise SystemExit(f"slices: bad line {line!r}")
                yield int(k), word == "run"
    else:
        def slices() -> Iterator[Tuple[int, bool]]:
            yield max(n // 10, 100), False
            yield n, True
    lat: List[int] = []
    clock = time.perf_counter_ns
    for k, timed in slices():
        for _ in range(k):
            t = clock()
            call()
            d = clock() - t
            if timed:
                lat.append(d)
        if sliced:
            print("ok", flush=True)
    del lat[n:]
    if not lat:
        raise SystemExit("seq: no timed calls")
    print_latencies(lat)


def print_rate(calls: int, ns: int) -> None:
    print(f"pipe_calls_per_s {calls / (ns / 1e9):.0f}")


def print_bandwidth(calls: int, size: int, ns: int) -> None:
    print(f"echo_mib_per_s {calls * size / (ns / 1e9) / (1024 * 1024):.1f}")


def args():
    """ADDRESS WHAT N [EXTRA] -> (host, port, address, what, n, extra)."""
    if len(sys.argv) < 4:
        sys.exit(f"usage: {sys.argv[0]} ADDRESS seq N | slices N | pipe N WINDOW | echo N BYTES")
    address, what, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    extra = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    hostport = address[len("tcp://"):] if address.startswith("tcp://") else address
    host, _, port = hostport.rpartition(":")
    return host, int(port), address, what, n, extra
