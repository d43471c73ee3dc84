#!/usr/bin/env python3
"""foorpc's Python conformance client: runs the named cases of
tests/interop/README.md against any conformance server and prints
``PASS name`` / ``FAIL name: why`` per case, then ``N passed, N failed``.
Exit status 0 only when every case passed, 2 on an unknown case.

``conformance_client.py (--port N | --unix PATH) [--cases a,b,...] [--asyncio]``

Without ``--asyncio`` every case uses the blocking ``foorpc.Client`` (the
pipelined cases from threads); with it every case uses ``foorpc.AsyncClient``
from one asyncio event loop. Each case opens a fresh connection.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

import foorpc
from conformance_common import echo_values, parse_args, same, show

CALL_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0


class CaseFailed(Exception):
    """A case's check did not hold; the message says why."""


def expect(what: str, got: Any, want: Any) -> None:
    if not same(got, want):
        raise CaseFailed(f"{what}: got {show(got)}, want {show(want)}")


def large_value() -> bytes:
    """4 MiB of bin, byte i being (i * 7) mod 256 (as the Rust client sends)."""
    period = bytes((i * 7) & 0xFF for i in range(256))
    return period * ((4 << 20) // 256)


def mul(a: int, b: int) -> int:
    return a * b


def check_error_shape(e: foorpc.RemoteError) -> None:
    err = e.error
    if not (isinstance(err, list) and len(err) == 2):
        raise CaseFailed(f"error is not [code, message]: {show(err)}")
    code, msg = err
    if not isinstance(code, int) or isinstance(code, bool):
        raise CaseFailed(f"error is not [code, message]: {show(err)}")
    if not isinstance(msg, str) or "boom" not in msg:
        raise CaseFailed(f"message does not carry 'boom': {show(err)}")


NOTES_WANT: List[Any] = [["note", [i]] for i in range(1, 6)]
PIPELINED: List[Tuple[str, Tuple[Any, ...]]] = [("sleep_ms", (300,)), ("sleep_ms", (10,)), ("add", (1, 2))]
PIPELINED_WANT = [300, 10, 3]

# ---------------------------------------------------------------------------
# The cases with the blocking client


def connect(address: str, **kw: Any) -> foorpc.Client:
    try:
        return foorpc.Client(address, connect_timeout=CONNECT_TIMEOUT, timeout=CALL_TIMEOUT, **kw)
    except Exception as e:
        raise CaseFailed(f"connect: {e!r}") from None


def empty_call(address: str) -> None:
    with connect(address) as c:
        expect("get_notifications()", c.call("get_notifications"), [])


def add(address: str) -> None:
    with connect(address) as c:
        for a, b in [(1, 2), (-5, 3), (1 << 40, 1)]:
            expect(f"add({a}, {b})", c.call("add", a, b), a + b)


def echo_each_type(address: str) -> None:
    with connect(address) as c:
        for name, v in echo_values():
            got = c.call("echo", v)
            if not same(got, v):
                raise CaseFailed(f"echo {name}: sent {show(v)}, got {show(got)}")


def large_echo(address: str) -> None:
    big = large_value()
    with connect(address) as c:
        got = c.call("echo", big)
        if type(got) is not bytes or got != big:
            raise CaseFailed("4 MiB bin came back different")


def unknown_method(address: str) -> None:
    with connect(address) as c:
        try:
            r = c.call("no_such_method")
        except foorpc.RemoteError:
            pass
        else:
            raise CaseFailed(f"expected an error reply, got {show(r)}")
        expect("add after error", c.call("add", 1, 1), 2)


def fail_error_shape(address: str) -> None:
    with connect(address) as c:
        try:
            r = c.call("fail", "boom")
        except foorpc.RemoteError as e:
            check_error_shape(e)
        else:
            raise CaseFailed(f"expected an error reply, got {show(r)}")


def notification_order(address: str) -> None:
    with connect(address) as c:
        for i in range(1, 6):
            c.notify("note", i)
        expect("get_notifications()", c.call("get_notifications"), NOTES_WANT)


def pipelined_out_of_order(address: str) -> None:
    with connect(address) as c:
        lock = threading.Lock()
        order: List[int] = []
        results: Dict[int, Any] = {}
        errors: Dict[int, BaseException] = {}

        def run(i: int, method: str, params: Tuple[Any, ...]) -> None:
            try:
                r = c.call(method, *params, timeout=10)
                with lock:
                    order.append(i)
                    results[i] = r
            except BaseException as e:  # reported below
                with lock:
                    order.append(i)
                    errors[i] = e

        threads = [threading.Thread(target=run, args=(i, m, p)) for i, (m, p) in enumerate(PIPELINED)]
        threads[0].start()
        # sleep_ms(300) goes out first: wait until it is in flight, then send the other two.
        deadline = time.monotonic() + 5
        while c.pending_calls < 1 and threads[0].is_alive() and time.monotonic() < deadline:
            time.sleep(0.001)
        threads[1].start()
        threads[2].start()
        for t in threads:
            t.join(15)
        if any(t.is_alive() for t in threads):
            raise CaseFailed("replies did not arrive")
        if errors:
            i, e = sorted(errors.items())[0]
            raise CaseFailed(f"{PIPELINED[i][0]}{PIPELINED[i][1]}: {e!r}")
        expect("results", [results[i] for i in range(3)], PIPELINED_WANT)
        if order != [2, 1, 0]:
            raise CaseFailed(f"replies arrived in order {order}, want [2, 1, 0]")


def concurrent_1000(address: str) -> None:
    n = 1000
    with connect(address) as c:
        results: List[Any] = [None] * n
        errors: List[Tuple[int, BaseException]] = []
        lock = threading.Lock()
        start = threading.Barrier(n, timeout=30)

        def run(i: int) -> None:
            try:
                start.wait()
                results[i] = c.call("add", i, i, timeout=CALL_TIMEOUT)
            except BaseException as e:
                with lock:
                    errors.append((i, e))

        old = threading.stack_size(256 * 1024)
        try:
            threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
        finally:
            threading.stack_size(old)
        for t in threads:
            t.join(60)
        if any(t.is_alive() for t in threads):
            raise CaseFailed("calls did not finish")
        if errors:
            i, e = sorted(errors, key=lambda x: x[0])[0]
            raise CaseFailed(f"add({i}, {i}): {e!r} ({len(errors)} calls failed)")
        for i, r in enumerate(results):
            expect(f"add({i}, {i})", r, 2 * i)


def timeout_on_sleeping_server(address: str) -> None:
    with connect(address) as c:
        start = time.monotonic()
        try:
            r = c.call("sleep_ms", 2000, timeout=0.2)
        except foorpc.RpcTimeoutError as e:
            if not isinstance(e, TimeoutError):
                raise CaseFailed("RpcTimeoutError is not a TimeoutError") from None
        else:
            raise CaseFailed(f"expected a timeout, got {show(r)}")
        took = time.monotonic() - start
        if took > 1.5:
            raise CaseFailed(f"timeout of 200 ms took {took:.3f} s")
        expect("add after timeout", c.call("add", 1, 1), 2)


def server_to_client_call(address: str) -> None:
    with connect(address, handlers={"mul": mul}) as c:
        expect("call_back(mul, [6, 7])", c.call("call_back", "mul", [6, 7]), 42)
        # A method the client lacks: the server relays the client's error reply.
        try:
            r = c.call("call_back", "no_such_client_method", [])
        except foorpc.RemoteError:
            pass
        else:
            raise CaseFailed(f"expected an error reply, got {show(r)}")


def disconnect_mid_call(address: str) -> None:
    with connect(address) as c:
        start = time.monotonic()
        try:
            r = c.call("disconnect", timeout=10)
        except foorpc.ConnectionLostError:
            pass
        except Exception as e:
            raise CaseFailed(f"expected a lost connection, got {e!r}") from None
        else:
            raise CaseFailed(f"expected a lost connection, got {show(r)}")
        took = time.monotonic() - start
        if took > 2.0:
            raise CaseFailed(f"noticed only after {took:.3f} s")


SyncCase = Callable[[str], None]
SYNC_CASES: List[Tuple[str, SyncCase]] = [
    ("empty_call", empty_call),
    ("add", add),
    ("echo_each_type", echo_each_type),
    ("large_echo", large_echo),
    ("unknown_method", unknown_method),
    ("fail_error_shape", fail_error_shape),
    ("notification_order", notification_order),
    ("pipelined_out_of_order", pipelined_out_of_order),
    ("concurrent_1000", concurrent_1000),
    ("timeout_on_sleeping_server", timeout_on_sleeping_server),
    ("server_to_client_call", server_to_client_call),
    ("disconnect_mid_call", disconnect_mid_call),
]

# ---------------------------------------------------------------------------
# The cases with the asyncio client (all run on one event loop)


async def aconnect(address: str, **kw: Any) -> foorpc.AsyncClient:
    try:
        return await foorpc.AsyncClient.connect(
            address, connect_timeout=CONNECT_TIMEOUT, timeout=CALL_TIMEOUT, **kw
        )
    except Exception as e:
        raise CaseFailed(f"connect: {e!r}") from None


async def a_empty_call(address: str) -> None:
    async with await aconnect(address) as c:
        expect("get_notifications()", await c.call("get_notifications"), [])


async def a_add(address: str) -> None:
    async with await aconnect(address) as c:
        for a, b in [(1, 2), (-5, 3), (1 << 40, 1)]:
            expect(f"add({a}, {b})", await c.call("add", a, b), a + b)


async def a_echo_each_type(address: str) -> None:
    async with await aconnect(address) as c:
        for name, v in echo_values():
            got = await c.call("echo", v)
            if not same(got, v):
                raise CaseFailed(f"echo {name}: sent {show(v)}, got {show(got)}")


async def a_large_echo(address: str) -> None:
    big = large_value()
    async with await aconnect(address) as c:
        got = await c.call("echo", big)
        if type(got) is not bytes or got != big:
            raise CaseFailed("4 MiB bin came back different")


async def a_unknown_method(address: str) -> None:
    async with await aconnect(address) as c:
        try:
            r = await c.call("no_such_method")
        except foorpc.RemoteError:
            pass
        else:
            raise CaseFailed(f"expected an error reply, got {show(r)}")
        expect("add after error", await c.call("add", 1, 1), 2)


async def a_fail_error_shape(address: str) -> None:
    async with await aconnect(address) as c:
        try:
            r = await c.call("fail", "boom")
        except foorpc.RemoteError as e:
            check_error_shape(e)
        else:
            raise CaseFailed(f"expected an error reply, got {show(r)}")


async def a_notification_order(address: str) -> None:
    async with await aconnect(address) as c:
        for i in range(1, 6):
            c.notify("note", i)
        expect("get_notifications()", await c.call("get_notifications"), NOTES_WANT)


async def a_pipelined_out_of_order(address: str) -> None:
    async with await aconnect(address) as c:
        order: List[int] = []

        async def run(i: int, method: str, params: Tuple[Any, ...]) -> Any:
            try:
                return await c.call(method, *params, timeout=10)
            finally:
                order.append(i)

        # Tasks start in creation order, and each call is written before its
        # task first suspends: the three requests leave in order.
        tasks = [asyncio.create_task(run(i, m, p)) for i, (m, p) in enumerate(PIPELINED)]
        done, pending = await asyncio.wait(tasks, timeout=15)
        for t in pending:
            t.cancel()
        if pending:
            raise CaseFailed("replies did not arrive")
        for i, t in enumerate(tasks):
            e = t.exception()
            if e is not None:
                raise CaseFailed(f"{PIPELINED[i][0]}{PIPELINED[i][1]}: {e!r}")
        expect("results", [t.result() for t in tasks], PIPELINED_WANT)
        if order != [2, 1, 0]:
            raise CaseFailed(f"replies arrived in order {order}, want [2, 1, 0]")


async def a_concurrent_1000(address: str) -> None:
    n = 1000
    async with await aconnect(address) as c:
        results = await asyncio.gather(
            *(c.call("add", i, i, timeout=CALL_TIMEOUT) for i in range(n)), return_exceptions=True
        )
        failed = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
        if failed:
            i, e = failed[0]
            raise CaseFailed(f"add({i}, {i}): {e!r} ({len(failed)} calls failed)")
        for i, r in enumerate(results):
            expect(f"add({i}, {i})", r, 2 * i)


async def a_timeout_on_sleeping_server(address: str) -> None:
    async with await aconnect(address) as c:
        start = time.monotonic()
        try:
            r = await asyncio.wait_for(c.call("sleep_ms", 2000, timeout=0.2), 5)
        except foorpc.RpcTimeoutError as e:
            if not isinstance(e, TimeoutError):
                raise CaseFailed("RpcTimeoutError is not a TimeoutError") from None
        except asyncio.TimeoutError:
            raise CaseFailed("the call's own timeout of 200 ms never fired") from None
        else:
            raise CaseFailed(f"expected a timeout, got {show(r)}")
        took = time.monotonic() - start
        if took > 1.5:
            raise CaseFailed(f"timeout of 200 ms took {took:.3f} s")
        expect("add after timeout", await c.call("add", 1, 1), 2)


async def a_server_to_client_call(address: str) -> None:
    async with await aconnect(address, handlers={"mul": mul}) as c:
        expect("call_back(mul, [6, 7])", await c.call("call_back", "mul", [6, 7]), 42)
        try:
            r = await c.call("call_back", "no_such_client_method", [])
        except foorpc.RemoteError:
            pass
        else:
            raise CaseFailed(f"expected an error reply, got {show(r)}")


async def a_disconnect_mid_call(address: str) -> None:
    async with await aconnect(address) as c:
        start = time.monotonic()
        try:
            r = await asyncio.wait_for(c.call("disconnect", timeout=10), 5)
        except foorpc.ConnectionLostError:
            pass
        except Exception as e:
            raise CaseFailed(f"expected a lost connection, got {e!r}") from None
        else:
            raise CaseFailed(f"expected a lost connection, got {show(r)}")
        took = time.monotonic() - start
        if took > 2.0:
            raise CaseFailed(f"noticed only after {took:.3f} s")


AsyncCase = Callable[[str], Awaitable[None]]
ASYNC_CASES: List[Tuple[str, AsyncCase]] = [
    ("empty_call", a_empty_call),
    ("add", a_add),
    ("echo_each_type", a_echo_each_type),
    ("large_echo", a_large_echo),
    ("unknown_method", a_unknown_method),
    ("fail_error_shape", a_fail_error_shape),
    ("notification_order", a_notification_order),
    ("pipelined_out_of_order", a_pipelined_out_of_order),
    ("concurrent_1000", a_concurrent_1000),
    ("timeout_on_sleeping_server", a_timeout_on_sleeping_server),
    ("server_to_client_call", a_server_to_client_call),
    ("disconnect_mid_call", a_disconnect_mid_call),
]
CASE_NAMES = [name for name, _ in SYNC_CASES]
assert CASE_NAMES == [name for name, _ in ASYNC_CASES]

# ---------------------------------------------------------------------------


def why(e: BaseException) -> str:
    return str(e) if isinstance(e, CaseFailed) else f"{type(e).__name__}: {e}"


def report(name: str, failure: Optional[str]) -> bool:
    print(f"PASS {name}" if failure is None else f"FAIL {name}: {failure}", flush=True)
    return failure is None


def run_sync(address: str, names: List[str]) -> List[bool]:
    cases = dict(SYNC_CASES)
    outcome = []
    for name in names:
        try:
            cases[name](address)
            failure = None
        except Exception as e:
            failure = why(e)
        outcome.append(report(name, failure))
    return outcome


async def run_async(address: str, names: List[str]) -> List[bool]:
    cases = dict(ASYNC_CASES)
    outcome = []
    for name in names:
        try:
            await cases[name](address)
            failure = None
        except Exception as e:
            failure = why(e)
        outcome.append(report(name, failure))
    return outcome


def main() -> int:
    args = parse_args("conformance_client.py", sys.argv[1:], client=True)
    names = CASE_NAMES if args.cases is None else args.cases
    for n in names:
        if n not in CASE_NAMES:
            print(f"unknown case {n}", file=sys.stderr)
            return 2
    if args.use_asyncio:
        outcome = asyncio.run(run_async(args.address, names))
    else:
        outcome = run_sync(args.address, names)
    passed = sum(outcome)
    failed = len(outcome) - passed
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
