"""The entry points written by hand against CPython's calling conventions
(python/src/cmethod.rs): AsyncClient.call, CallFuture.add_done_callback,
CallFuture.get_loop and the _asyncio_future_blocking member.

Several tests here check that references dropped inside those entry points
are released right away. PyO3 releases a `Py<T>` dropped while its own
attach count is 0 later: it goes into PyO3's global pool and is only
released when the next PyO3-generated entry point runs, on whatever thread
that happens to be. The hand-written trampolines never raise that count.
Those tests read `sys.getrefcount`, and touch nothing PyO3-generated between
the call under test and the first reading: `client.closed`, a PyO3 getter,
empties the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import inspect
import math
import subprocess
import sys
import textwrap
import weakref
from typing import Any, Iterator, List

import pytest

import foorpc
from foorpc import _native


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


# --- references dropped inside the hand-written entry points ----------------


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """No collection in between: freeing a garbage PyO3 object (its dealloc
    is PyO3-generated) would empty PyO3's pool too, and hide the problem."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_call_releases_the_uncork_handle_at_once(calc: str) -> None:
    """The first call of a loop iteration schedules `_uncork` with
    loop.call_soon; the Handle that call_soon returns must be released by
    the time `call` returns, not parked in PyO3's pool."""

    async def main() -> None:
        async with await foorpc.AsyncClient.connect(calc) as c:
            loop = asyncio.get_running_loop()
            assert await c.call("add", 1, 2) == 3
            # This task is now resumed by the loop itself, not from inside
            # the client's (PyO3-generated) reader callback.
            await asyncio.sleep(0)
            n = len(loop._ready)  # type: ignore[attr-defined]
            with _no_gc():
                fut = c.call("add", 2, 3)
                assert len(loop._ready) == n + 1  # type: ignore[attr-defined]
                handle = loop._ready[-1]  # type: ignore[attr-defined]
                before = sys.getrefcount(handle)
                c.closed  # a PyO3 getter: empties PyO3's pool
                after = sys.getrefcount(handle)
            assert handle._callback.__name__ == "_uncork"
            assert before == after, "call() left a reference to the Handle in PyO3's pool"
            assert await fut == 5

    run(main())


def test_add_done_callback_on_a_done_future_releases_the_handle_at_once(calc: str) -> None:
    async def main() -> None:
        async with await foorpc.AsyncClient.connect(calc) as c:
            loop = asyncio.get_running_loop()
            fut = c.call("add", 1, 1)
            assert await fut == 2
            await asyncio.sleep(0)
            n = len(loop._ready)  # type: ignore[attr-defined]
            seen: List[Any] = []
            with _no_gc():
                fut.add_done_callback(seen.append)
                assert len(loop._ready) == n + 1  # type: ignore[attr-defined]
                handle = loop._ready[-1]  # type: ignore[attr-defined]
                before = sys.getrefcount(handle)
                c.closed
                after = sys.getrefcount(handle)
            assert before == after, (
                "add_done_callback() left a reference to the Handle in PyO3's pool"
            )
            await asyncio.sleep(0)
            assert seen == [fut]

    run(main())


def test_a_client_moving_to_another_loop_lets_go_of_the_old_one(calc: str) -> None:
    """The call that links the client to a new loop drops the old loop's
    driver, which holds the old loop: both must go then, not whenever some
    other PyO3 entry point runs next."""
    c = foorpc.AsyncClient(calc)
    try:

        async def first() -> int:
            return await c.call("add", 1, 2)

        loop1 = asyncio.new_event_loop()
        assert loop1.run_until_complete(first()) == 3
        loop1.close()
        old = weakref.ref(loop1)
        del loop1
        gc.collect()
        assert old() is not None  # the driver still holds it

        async def switch() -> Any:
            # Garbage PyO3 objects freed by a collection would empty PyO3's
            # pool too (their dealloc is PyO3-generated): collect it first.
            gc.collect()
            fut = c.call("add", 2, 3)  # drops the driver of loop1
            gc.collect()
            alive = old() is not None
            c.closed  # empties PyO3's pool
            gc.collect()
            return fut, alive, old() is not None

        loop2 = asyncio.new_event_loop()
        try:
            fut, alive_after_call, alive_after_getter = loop2.run_until_complete(switch())
            assert loop2.run_until_complete(asyncio.wait_for(fut, 10)) == 5
        finally:
            c._close()
            loop2.close()
        assert not alive_after_getter
        assert not alive_after_call, "the old loop outlived the call that replaced its driver"
    finally:
        c._close()


# --- AsyncClient.call: arguments ---------------------------------------------


def test_call_signature_and_descriptor_checks() -> None:
    meth = _native.AsyncClient.__dict__["call"]
    assert type(meth).__name__ == "method_descriptor"
    assert str(inspect.signature(meth)) == "(self, /, method, *params, timeout=None)"
    with pytest.raises(TypeError, match="needs an argument"):
        _native.AsyncClient.call()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="doesn't apply to a 'object' object"):
        _native.AsyncClient.call(object(), "add")  # type: ignore[arg-type]


def test_call_keyword_edge_cases(calc: str) -> None:
    class Name(str):
        pass

    async def main() -> None:
        async with await foorpc.AsyncClient.connect(calc) as c:
            # Unbound, on the public subclass and on a user's subclass.
            assert await _native.AsyncClient.call(c, "add", 1, 2) == 3
            # Keyword names that are str subclasses (allowed in **kwargs).
            assert await c.call("add", 1, 2, **{Name("timeout"): 5}) == 3
            assert await c.call(**{Name("method"): "sleep_ms"}) == 0  # type: ignore[arg-type]
            assert await c.call(method="sleep_ms", timeout=None) == 0
            # CPython itself rejects non-str names and duplicates.
            with pytest.raises(TypeError, match="keywords must be strings"):
                c.call("add", 1, 2, **{1: 2})  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="multiple values"):
                c.call("add", 1, 2, timeout=1, **{"timeout": 2})  # type: ignore[misc]
            # The method given both ways, with params: an error, nothing sent.
            with pytest.raises(TypeError, match="multiple values for argument 'method'"):
                c.call("add", 1, method="add")  # type: ignore[misc]
            with pytest.raises(TypeError, match="unexpected keyword argument 'params'"):
                c.call("add", params=(1, 2))  # type: ignore[call-arg]
            with pytest.raises(UnicodeEncodeError):
                c.call("\udc80")
            assert c.pending_calls == 0
            assert await c.call("add", 4, 5) == 9

    run(main())


def test_call_timeout_none_means_the_clients_default(calc: str) -> None:
    async def main() -> None:
        async with await foorpc.AsyncClient.connect(calc, timeout=0.2) as c:
            with pytest.raises(foorpc.RpcTimeoutError):
                await asyncio.wait_for(c.call("sleep_ms", 2000, timeout=None), 10)
            with pytest.raises(foorpc.RpcTimeoutError):
                await asyncio.wait_for(c.sleep_ms(2000), 10)
            assert await asyncio.wait_for(c.call("sleep_ms", 300, timeout=math.inf), 10) == 300

    run(main())


def test_call_on_a_users_subclass(calc: str) -> None:
    class Mine(foorpc.AsyncClient):
        def call(self, method: str, *params: Any, timeout: Any = None) -> Any:
            return super().call(method.upper().lower(), *params, timeout=timeout)

    async def main() -> None:
        async with Mine(calc) as c:
            assert await c.call("add", 1, 2) == 3
            assert await c.add(2, 2) == 4  # the stubs go through the override

    run(main())


# --- CallFuture.add_done_callback / get_loop / _asyncio_future_blocking -------


def _vectorcall_method(obj: Any, name: str, args: tuple, kwnames: Any) -> Any:  # type: ignore[type-arg]
    """obj.name(*args) through PyObject_VectorcallMethod with `kwnames`, via
    ctypes (exported since 3.9; PyObject_Vectorcall is inline before 3.11).
    The method descriptor receives `kwnames` as given."""
    vc = ctypes.pythonapi.PyObject_VectorcallMethod
    vc.restype = ctypes.py_object
    vc.argtypes = [ctypes.py_object, ctypes.c_void_p, ctypes.c_size_t, ctypes.py_object]
    everything = (obj, *args)
    arr = (ctypes.py_object * len(everything))(*everything)
    return vc(name, ctypes.cast(arr, ctypes.c_void_p), len(everything), kwnames)


def test_add_done_callback_accepts_an_empty_keyword_names_tuple(calc: str) -> None:
    """The vectorcall protocol lets a caller with no keywords pass NULL *or*
    an empty kwnames tuple; asyncio.Future accepts both (and so does
    AsyncClient.call)."""
    async def main() -> None:
        async with await foorpc.AsyncClient.connect(calc) as c:
            aio = asyncio.get_running_loop().create_future()
            assert _vectorcall_method(aio, "add_done_callback", (lambda f: None,), ()) is None
            fut = _vectorcall_method(c, "call", ("add", 1, 2), ())
            assert await fut == 3
            seen: List[Any] = []
            assert _vectorcall_method(fut, "add_done_callback", (seen.append,), ()) is None
            await asyncio.sleep(0)
            assert seen == [fut]
            aio.cancel()

    run(main())


def test_add_done_callback_keyword_edge_cases(calc: str) -> None:
    class Name(str):
        pass

    async def main() -> None:
        async with await foorpc.AsyncClient.connect(calc) as c:
            fut = c.sleep_ms(30)
            seen: List[str] = []
            fut.add_done_callback(lambda _f: seen.append("subclass"), **{Name("context"): None})
            with pytest.raises(TypeError, match="keywords must be strings"):
                fut.add_done_callback(print, **{1: None})  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                fut.add_done_callback(print, context=None, **{"context": None})  # type: ignore[misc]
            with pytest.raises(TypeError, match="no arguments"):
                fut.get_loop(1)  # type: ignore[call-arg]
            with pytest.raises(TypeError, match="no keyword arguments"):
                fut.get_loop(x=1)  # type: ignore[call-arg]
            assert str(inspect.signature(foorpc.CallFuture.add_done_callback)) == (
                "(self, callback, /, *, context=None)"
            )
            assert await fut == 30
            await asyncio.sleep(0)
            assert seen == ["subclass"]

    run(main())


def test_reimporting_the_extension_keeps_the_entry_points() -> None:
    """Importing foorpc._native again (a new module object, the same
    classes) installs the entry points again; both copies work."""
    script = textwrap.dedent(
        """
        import importlib, sys
        import foorpc._native as n1
        old = n1.AsyncClient.__dict__["call"]
        del sys.modules["foorpc._native"]
        n2 = importlib.import_module("foorpc._native")
        assert n2 is not n1 and n2.AsyncClient is n1.AsyncClient
        for cls, name, kind in [
            (n2.AsyncClient, "call", "method_descriptor"),
            (n2.CallFuture, "get_loop", "method_descriptor"),
            (n2.CallFuture, "add_done_callback", "method_descriptor"),
            (n2.CallFuture, "_asyncio_future_blocking", "member_descriptor"),
        ]:
            assert type(cls.__dict__[name]).__name__ == kind, name
        try:
            old(object(), "x")
        except TypeError:
            pass
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
