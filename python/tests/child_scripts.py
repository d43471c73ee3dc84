"""Python programs that tests run in a child process (exit, signals, fork),
and how they run them."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap


def default_sigint() -> None:
    """In the child before exec: a child of a non-interactive shell may
    inherit SIGINT ignored, and then Python installs no handler for it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_python(script: str, *args: str, timeout: float = 60) -> "subprocess.CompletedProcess[str]":
    """Runs `script` with this interpreter, Ctrl-C raising KeyboardInterrupt."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=default_sigint,
    )


def server_with_a_handler_called(name: str, body: str, *, server_args: str = "") -> str:
    """The start of a script: a started `server` whose handler `name` sets
    `entered` and then runs the one line `body`, and a raw connection `raw`
    that has sent it one request. Imports os, signal, socket, sys, threading,
    time and foorpc."""
    request = bytes([0x94, 0, 1, 0xA0 | len(name)]) + name.encode() + b"\x90"  # [0, 1, name, []]
    return textwrap.dedent(
        f"""
        import os, signal, socket, sys, threading, time
        import foorpc

        server = foorpc.Server({server_args})
        entered = threading.Event()

        @server.method
        def {name}() -> int:
            entered.set()
            {body}
            return 1

        host, port = server.bind("tcp://127.0.0.1:0").rsplit("//", 1)[1].rsplit(":", 1)
        server.start()
        raw = socket.create_connection((host, int(port)))
        raw.sendall({request!r})
        """
    )


def seconds_after(output: str, marker: str) -> float:
    """The number printed right after `marker` (as in "took 1.23 s")."""
    return float(output.split(marker)[1].split(" s")[0])


def assert_no_crash(output: str) -> None:
    for bad in ("Fatal Python error", "panicked"):
        assert bad not in output, output
