"""Fixtures: the Rust calc_server and the Python example calc_server, run as
subprocesses on a free port, and in-process foorpc servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RUST_CALC = ROOT / "target" / "release" / "examples" / "calc_server"
PY_CALC = HERE.parent / "examples" / "calc_server.py"


def _start(cmd: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    prefix = "calc_server listening on "
    if not line.startswith(prefix):
        proc.kill()
        raise RuntimeError(f"{cmd[0]} printed {line!r}")
    return proc, line[len(prefix):]


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout:
        proc.stdout.close()


@pytest.fixture(scope="session")
def rust_calc() -> Iterator[str]:
    """Address of the Rust calc_server (built by `make build-rust`)."""
    if not RUST_CALC.exists():
        pytest.fail(f"{RUST_CALC} is missing: run `make build-rust`")
    proc, addr = _start([str(RUST_CALC), "tcp://127.0.0.1:0"])
    yield addr
    _stop(proc)


@pytest.fixture(scope="session")
def py_calc() -> Iterator[str]:
    """Address of python/examples/calc_server.py."""
    proc, addr = _start([sys.executable, str(PY_CALC), "tcp://127.0.0.1:0"])
    yield addr
    _stop(proc)


@pytest.fixture(params=["rust", "py"])
def calc(request: pytest.FixtureRequest) -> str:
    """Each calc_server in turn (Rust, Python)."""
    return str(request.getfixturevalue(f"{request.param}_calc"))


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    # Unix socket paths are limited to ~108 bytes; tmp_path may be long.
    p = Path("/tmp") / f"foorpc-test-{os.getpid()}-{tmp_path.name}.sock"
    yield str(p)  # type: ignore[misc]
    if p.exists():
        p.unlink()
