"""Shared by the Python benchmark clients: argument parsing and output."""

from __future__ import annotations

import sys
from typing import List


def percentile(sorted_values: List[int], p: float) -> int:
    i = int(round((len(sorted_values) - 1) * p))
    return sorted_values[min(i, len(sorted_values) - 1)]


def print_latencies(lat: List[int]) -> None:
    lat.sort()
    print(f"seq_p50_ns {percentile(lat, 0.50)}")
    print(f"seq_p99_ns {percentile(lat, 0.99)}")


def print_rate(calls: int, ns: int) -> None:
    print(f"pipe_calls_per_s {calls / (ns / 1e9):.0f}")


def print_bandwidth(calls: int, size: int, ns: int) -> None:
    print(f"echo_mib_per_s {calls * size / (ns / 1e9) / (1024 * 1024):.1f}")


def args():
    """ADDRESS WHAT N [EXTRA] -> (host, port, address, what, n, extra)."""
    if len(sys.argv) < 4:
        sys.exit(f"usage: {sys.argv[0]} ADDRESS seq N | pipe N WINDOW | echo N BYTES")
    address, what, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    extra = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    hostport = address[len("tcp://"):] if address.startswith("tcp://") else address
    host, _, port = hostport.rpartition(":")
    return host, int(port), address, what, n, extra
