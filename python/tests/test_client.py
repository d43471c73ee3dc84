"""The blocking client: calls, stubs, errors, timeouts, threads, Ctrl-C."""

from __future__ import annotations

import _thread
import asyncio
import errno
import math
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from child_scripts import assert_no_crash, run_python, seconds_after

import foorpc


def test_call_and_stub(calc: str) -> None:
    with foorpc.Client(calc) as c:
        assert c.call("add", 1, 2) == 3
        assert c.add(40, 2) == 42
        assert c.add(2**40, 1, timeout=5) == 2**40 + 1
        stub = c.add
        assert stub.__name__ == "add" and stub(1, 1) == 2
        with pytest.raises(AttributeError):
            c._private  # noqa: B018  (underscore names are never stubs)
        with pytest.raises(AttributeError):
            c.__wrapped__  # noqa: B018


def test_remote_error(calc: str) -> None:
    with foorpc.Client(calc) as c:
        with pytest.raises(foorpc.RemoteError) as ei:
            c.fail("boom")
        e = ei.value
        assert isinstance(e, foorpc.RpcError)
        assert e.error == [0, "boom"] and e.code == 0 and e.message == "boom"
        assert "boom" in str(e)
        with pytest.raises(foorpc.RemoteError) as ei:
            c.call("no_such_method", 1)
        assert ei.value.code == 1 and "no_such_method" in ei.value.message
        assert c.add(1, 1) == 2  # the connection is still fine


def test_timeout(calc: str) -> None:
    with foorpc.Client(calc) as c:
        t0 = time.monotonic()
        with pytest.raises(foorpc.RpcTimeoutError) as ei:
            c.sleep_ms(1500, timeout=0.2)
        assert isinstance(ei.value, TimeoutError) and isinstance(ei.value, foorpc.RpcError)
        assert time.monotonic() - t0 < 2
        assert c.pending_calls == 0
        assert c.add(1, 2) == 3
        assert c.sleep_ms(10, timeout=math.inf) == 10
        with pytest.raises(ValueError):
            c.add(1, 2, timeout=-1)


def test_default_timeout(calc: str) -> None:
    with foorpc.Client(calc, timeout=0.2) as c:
        assert c.timeout == pytest.approx(0.2)
        with pytest.raises(foorpc.RpcTimeoutError):
            c.sleep_ms(1500)
        assert c.sleep_ms(300, timeout=5) == 300
    with foorpc.Client(calc, timeout=None) as c:
        assert c.timeout is None
        assert c.sleep_ms(1) == 1


def test_connect_errors() -> None:
    with pytest.raises(ValueError, match="invalid address"):
        foorpc.Client("http://nowhere")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(foorpc.ConnectionLostError) as ei:
        foorpc.Client(f"tcp://127.0.0.1:{port}", connect_timeout=2)
    assert isinstance(ei.value, ConnectionError)
    assert ei.value.errno == errno.ECONNREFUSED
    assert ei.value.strerror == os.strerror(errno.ECONNREFUSED)
    with pytest.raises(TypeError):
        foorpc.Client("tcp://127.0.0.1:1", 5)  # type: ignore[misc]  # keyword-only


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_connect_error_keeps_its_errno(tmp_path: Path, kind: str) -> None:
    """A connect that the OS refuses raises ConnectionLostError (an OSError)
    with the errno and strerror, so `e.errno == errno.ENOENT` works."""
    addr = f"unix://{tmp_path}/missing.sock"
    with pytest.raises(foorpc.ConnectionLostError) as ei:
        if kind == "sync":
            foorpc.Client(addr, connect_timeout=2)
        else:
            asyncio.run(asyncio.wait_for(foorpc.AsyncClient.connect(addr, connect_timeout=2), 10))
    assert isinstance(ei.value, OSError)
    assert ei.value.errno == errno.ENOENT
    assert ei.value.strerror == os.strerror(errno.ENOENT)


def test_close(calc: str) -> None:
    c = foorpc.Client(calc)
    assert not c.closed
    c.close()
    assert c.closed
    with pytest.raises(foorpc.ConnectionLostError):
        c.add(1, 2)
    c.close()  # twice is fine


def test_close_wakes_waiting_call(calc: str) -> None:
    c = foorpc.Client(calc)
    threading.Timer(0.2, c.close).start()
    with pytest.raises(foorpc.ConnectionLostError):
        c.sleep_ms(1500)


def test_notify(calc: str) -> None:
    with foorpc.Client(calc) as c:
        c.notify("anything", 1, "two")
        c.notify("echo")
        assert c.add(1, 2) == 3


def test_unix_socket(sock_path: str) -> None:
    server = foorpc.Server()
    server.add_method("add", lambda a, b: a + b)
    addr = server.bind(f"unix://{sock_path}")
    assert addr == f"unix://{sock_path}"
    with server:
        server.start()
        with foorpc.Client(addr) as c:
            assert c.add(2, 3) == 5


def test_threads_share_one_client(calc: str) -> None:
    """100 threads x 50 calls on one client, each getting its own reply."""
    errors: list[BaseException] = []
    with foorpc.Client(calc) as c:

        def worker(t: int) -> None:
            try:
                for i in range(50):
                    v = [t, i, "x" * (i % 7)]
                    assert c.echo(v) == v
                    assert c.add(t, i) == t + i
            except BaseException as e:  # pragma: no cover
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(100)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        assert c.pending_calls == 0


def test_gil_released_while_waiting(calc: str) -> None:
    with foorpc.Client(calc) as c:
        counter = 0
        stop = False

        def spin() -> None:
            nonlocal counter
            while not stop:
                counter += 1

        th = threading.Thread(target=spin)
        th.start()
        try:
            c.sleep_ms(300)
        finally:
            stop = True
            th.join()
        assert counter > 1000


@pytest.mark.parametrize("how", ["interrupt_main", "pthread_kill"])
def test_ctrl_c_interrupts_call(calc: str, how: str) -> None:
    with foorpc.Client(calc) as c:
        main = threading.main_thread().ident
        assert main == threading.get_ident()

        def interrupt() -> None:
            if how == "interrupt_main":
                _thread.interrupt_main()
            else:
                signal.pthread_kill(main, signal.SIGINT)  # type: ignore[arg-type]

        threading.Timer(0.3, interrupt).start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            c.sleep_ms(3000, timeout=30)
        assert time.monotonic() - t0 < 2
        assert c.pending_calls == 0  # the interrupted call was forgotten
        assert c.add(1, 2) == 3


WRITE_TO_A_PEER_THAT_DOES_NOT_READ = """
import os, signal, socket, sys, threading, time
import foorpc

signal.signal(signal.SIGINT, signal.default_int_handler)
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
held = []
threading.Thread(target=lambda: held.append(listener.accept()), daemon=True).start()
client = foorpc.Client(f"tcp://127.0.0.1:{listener.getsockname()[1]}", timeout=None)

def press_ctrl_c() -> None:
    time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGINT)

threading.Thread(target=press_ctrl_c, daemon=True).start()
big = b"x" * (40 << 20)  # far more than the socket buffers hold
started = time.monotonic()
try:
    if sys.argv[1] == "call":
        client.call("echo", big)
    else:
        client.notify("echo", big)
except KeyboardInterrupt:
    print(f"interrupted after {time.monotonic() - started:.2f} s; closed={client.closed}", flush=True)
"""


@pytest.mark.parametrize("what", ["call", "notify"])
def test_ctrl_c_stops_a_write_the_peer_does_not_read(what: str) -> None:
    # With no timeout, the write of a large request to a peer that does not
    # read used to wait for ever, Ctrl-C unseen. Now Ctrl-C stops it, and the
    # connection is closed (part of the message may be on the wire).
    done = run_python(WRITE_TO_A_PEER_THAT_DOES_NOT_READ, what, timeout=30)
    assert "interrupted after" in done.stdout, done.stdout + done.stderr
    assert seconds_after(done.stdout, "interrupted after ") < 10, done.stdout
    assert "closed=True" in done.stdout, done.stdout
    assert_no_crash(done.stderr)
