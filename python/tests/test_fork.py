"""os.fork(): a child creates its own clients; an inherited one raises RpcError."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

import foorpc

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads (3.12+)


def wait_child(pid: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the child process hung (deadlock after fork?)")


def child(body) -> int:  # type: ignore[no-untyped-def]
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = body()
        except BaseException as e:  # noqa: BLE001
            os.write(2, f"child failed: {e!r}\n".encode())
        finally:
            os._exit(code)
    return wait_child(pid)


def test_child_makes_its_own_client(calc: str) -> None:
    parent = foorpc.Client(calc)
    assert parent.add(1, 2) == 3
    # a call is in flight in another thread while we fork
    t = threading.Thread(target=parent.sleep_ms, args=(300,))
    t.start()
    time.sleep(0.05)

    def body() -> int:
        with pytest.raises(foorpc.RpcError, match="fork"):
            parent.add(1, 2)
        with pytest.raises(foorpc.RpcError, match="fork"):
            parent.notify("x")
        assert parent.closed
        parent.close()  # a no-op in the child: the parent's socket is left alone
        with foorpc.Client(calc) as c:
            assert c.add(2, 3) == 5
            assert c.sleep_ms(50) == 50

        async def amain() -> None:
            ac = await foorpc.AsyncClient.connect(calc)
            assert await asyncio.gather(*(ac.add(i, 1) for i in range(50))) == [i + 1 for i in range(50)]
            await ac.close()

        asyncio.run(amain())
        return 0

    assert child(body) == 0
    t.join()
    # the parent's connection was not disturbed by the child
    assert parent.add(20, 22) == 42
    parent.close()


def test_async_client_inherited(rust_calc: str) -> None:
    async def parent_side() -> foorpc.AsyncClient:
        ac = await foorpc.AsyncClient.connect(rust_calc)
        assert await ac.add(1, 1) == 2  # the I/O thread is running
        return ac

    ac = asyncio.run(parent_side())

    def body() -> int:
        async def amain() -> None:
            with pytest.raises(foorpc.RpcError, match="fork"):
                await ac.add(1, 2)

        asyncio.run(amain())
        del_ok = True
        return 0 if del_ok else 1

    assert child(body) == 0

    async def again() -> None:
        assert await ac.add(2, 2) == 4
        await ac.close()

    asyncio.run(again())


def test_server_in_child() -> None:
    """A child process can run its own server after fork."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            s = foorpc.Server()
            s.add_method("pid", os.getpid)
            addr = s.bind("tcp://127.0.0.1:0")
            s.start()
            os.write(w, addr.encode() + b"\n")
            time.sleep(1.0)
            s.shutdown()
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        addr = f.readline().strip()
    with foorpc.Client(addr) as c:
        assert c.pid() == pid
    assert wait_child(pid) == 0
