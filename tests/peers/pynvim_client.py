#!/usr/bin/env python3
"""pynvim (Neovim's own Python msgpack-rpc session) as a conformance client.

Usage: pynvim_client.py (--port N [--host H] | --unix PATH) [--cases a,b,...]

Runs the cases a stock pynvim session can express against a conformance
server (tests/interop/README.md). Prints ``PASS name`` / ``FAIL name: why`` and
last ``N passed, N failed``; exit status 0 only when every case passed.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Callable, Dict, List

from pynvim.msgpack_rpc import socket_session, tcp_session


def connect(args: argparse.Namespace) -> Any:
    if args.unix:
        return socket_session(args.unix)
    return tcp_session(args.host, args.port)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def case_add(s: Any) -> None:
    for a, b in [(1, 2), (-5, 3), (2**40, 1)]:
        got = s.request("add", a, b)
        assert got == a + b, f"add({a}, {b}) = {got!r}"


def case_echo(s: Any) -> None:
    values: List[Any] = [None, True, False, 0, 127, 128, 65535, 2**32, 2**64 - 1, -1, -33,
                         -2**31 - 1, -2**63, 1.5, -0.0, math.inf, math.nan, "", "héllo 😀",
                         b"", b"\x00\xff" * 100, [], [1, [2, [3]]], {}, {"a": {"b": [None]}}]
    for v in values:
        got = s.request("echo", v)
        assert same(got, v), f"echo({v!r}) = {got!r}"


def case_unknown_method(s: Any) -> None:
    try:
        s.request("no_such_method")
    except Exception:
        return
    raise AssertionError("no error for an unknown method")


def case_fail_error_shape(s: Any) -> None:
    try:
        s.request("fail", "boom")
    except Exception as e:  # pynvim raises NvimError with the message part
        assert "boom" in str(e), f"error does not carry 'boom': {e!r}"
        return
    raise AssertionError("fail did not fail")


def case_notification_order(s: Any) -> None:
    for i in range(1, 6):
        s.request("note", i, async_=True)  # pynvim's spelling of a notification
    # pynvim announces itself with an nvim_set_client_info notification.
    got = [n for n in s.request("get_notifications") if not n[0].startswith("nvim_")]
    want = [["note", [i]] for i in range(1, 6)]
    assert same(got, want), f"get_notifications() = {got!r}"


CASES: Dict[str, Callable[[Any], None]] = {
    "add": case_add,
    "echo_each_type": case_echo,
    "unknown_method": case_unknown_method,
    "fail_error_shape": case_fail_error_shape,
    "notification_order": case_notification_order,
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--unix")
    ap.add_argument("--cases")
    args = ap.parse_args()
    names = args.cases.split(",") if args.cases else list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"unsupported case(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    passed = failed = 0
    for name in names:
        s = connect(args)
        try:
            CASES[name](s)
            passed += 1
            print(f"PASS {name}")
        except Exception as e:  # report and go on with the next case
            failed += 1
            print(f"FAIL {name}: {e!r}")
        finally:
            s.close()
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
