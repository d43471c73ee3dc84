"""Packaging: public API, stubs checked against the built module, the example server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import sys
from pathlib import Path

import pytest

import foorpc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def test_public_api() -> None:
    for name in foorpc.__all__:
        assert hasattr(foorpc, name), name
    assert foorpc._native.__name__ == "foorpc._native"
    assert issubclass(foorpc.RemoteError, foorpc.RpcError)
    assert issubclass(foorpc.RpcTimeoutError, TimeoutError)
    # Distinct classes before Python 3.11: each must catch a call's timeout.
    assert issubclass(foorpc.RpcTimeoutError, asyncio.TimeoutError)
    assert issubclass(foorpc.RpcTimeoutError, concurrent.futures.TimeoutError)
    assert issubclass(foorpc.ConnectionLostError, ConnectionError)
    assert isinstance(foorpc.__version__, str)
    assert Path(foorpc.__file__).with_name("py.typed").exists()
    assert Path(foorpc.__file__).with_name("_native.pyi").exists()


def test_stubtest() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "foorpc._native",
         "--allowlist", str(HERE / "stubtest-allowlist.txt")],
        capture_output=True, text=True, cwd=HERE, timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_example_against_foreign_client(py_calc: str) -> None:
    """python/examples/calc_server.py passes the plain msgpack client's cases."""
    client = ROOT / "tests" / "peers" / "msgpack_client.py"
    if not client.exists():
        pytest.skip("tests/peers/msgpack_client.py is not there")
    port = py_calc.rsplit(":", 1)[1]
    cases = ("add,echo_each_type,large_echo,unknown_method,fail_error_shape,"
             "pipelined_out_of_order,concurrent_1000,timeout_on_sleeping_server")
    r = subprocess.run([sys.executable, str(client), "--port", port, "--cases", cases],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "8 passed, 0 failed" in r.stdout


def test_mypy_strict_on_package() -> None:
    """The package and the example type-check (strict) against the shipped stubs."""
    src = HERE.parent / "pysrc"
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", "/dev/null",
         str(src / "foorpc"), str(HERE.parent / "examples" / "calc_server.py")],
        capture_output=True, text=True, cwd=src, timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
