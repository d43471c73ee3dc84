"""The process exits cleanly while foorpc's own threads are running Python:
a pool handler in the middle of its work when the main thread returns."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest
from child_scripts import assert_no_crash, default_sigint, run_python, seconds_after, server_with_a_handler_called

SLEEPING_HANDLER = server_with_a_handler_called(
    "slow", "time.sleep(float(sys.argv[1]))  # the GIL is released here, and taken back at the end"
) + textwrap.dedent(
    """
    class SlowToDie:
        # Collected while the interpreter finalizes: its sleep lets other
        # threads ask for the GIL then.
        def __del__(self, sleep=time.sleep) -> None:
            sleep(1.0)

    # Only in a cycle: left to the collection the interpreter makes once it
    # is finalizing (the collector is off until then).
    import gc
    gc.disable()
    keeper = SlowToDie()
    keeper.me = keeper
    del keeper
    assert entered.wait(10)
    time.sleep(0.05)  # the handler is asleep now
    print("main thread done", flush=True)
    """
)


@pytest.mark.parametrize("handler_seconds", [0.4, 5.5])
def test_exit_while_a_pool_handler_runs_waits_for_it(handler_seconds: float) -> None:
    # Without the wait at exit, the worker thread taking the GIL back met a
    # finalizing interpreter: CPython ended it with pthread_exit, whose forced
    # unwind aborted the process (exit status -6, "Fatal Python error").
    # The wait has no bound (a handler of 5.5 s aborted the process when it
    # was 5 s), as a ThreadPoolExecutor's work items finish before exit.
    t = time.monotonic()
    done = run_python(SLEEPING_HANDLER, str(handler_seconds))
    took = time.monotonic() - t
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "main thread done" in done.stdout
    for bad in ("Fatal Python error", "panicked", "Traceback"):
        assert bad not in output, output
    assert handler_seconds <= took < handler_seconds + 30, f"exit took {took:.1f} s"


STUCK_HANDLER = server_with_a_handler_called("stuck", "threading.Event().wait()  # never set") + textwrap.dedent(
    """
    assert entered.wait(10)
    print("main thread done", flush=True)
    """
)


def test_ctrl_c_ends_the_wait_for_a_handler_that_never_returns() -> None:
    # The process waits at exit for its running handlers, for as long as
    # they take; Ctrl-C ends that wait, as it ends Python's own wait for
    # threads at exit.
    child = subprocess.Popen(
        [sys.executable, "-c", STUCK_HANDLER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "main thread done\n"
        time.sleep(0.3)  # in the exit's wait by now
        assert child.poll() is None, "the exit did not wait for the handler"
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=20)
    finally:
        child.kill()
    assert child.returncode == 0, out + err
    assert "KeyboardInterrupt" in err, err
    assert_no_crash(err)


FORK_WHILE_A_HANDLER_RUNS = server_with_a_handler_called("slow", "time.sleep(3)") + textwrap.dedent(
    """
    assert entered.wait(10)
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # a normal exit: the atexit hooks run
    t = time.monotonic()
    os.waitpid(pid, 0)
    print(f"child exit took {time.monotonic() - t:.2f} s", flush=True)
    os._exit(0)  # the parent's own handler is still asleep
    """
)


def test_a_child_forked_while_a_handler_runs_exits_at_once() -> None:
    # The child has none of the parent's threads: its exit must not wait for
    # the handler the parent was running (it waited for it before).
    done = run_python(FORK_WHILE_A_HANDLER_RUNS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert seconds_after(done.stdout, "child exit took ") < 2.5, done.stdout


LATE_ATEXIT_HOOK = textwrap.dedent(
    """
    import atexit, asyncio, sys
    ADDRESS = sys.argv[1]

    def late_hook() -> None:
        # Registered before `import foorpc`: runs after foorpc's own hook.
        import foorpc

        async def main() -> None:
            with foorpc.Client(ADDRESS) as sync:
                print("sync", sync.add(1, 2), flush=True)
            plain = foorpc.AsyncClient(ADDRESS)  # connect() needs an executor, gone by now
            print("async without handlers", await plain.add(2, 3), flush=True)
            await plain.close()
            serving = foorpc.AsyncClient(ADDRESS, handlers={"ping": lambda: 1}, timeout=5)
            try:
                await serving.add(3, 4)
                print("async with handlers: answered", flush=True)
            except foorpc.RpcError as e:
                print("async with handlers:", type(e).__name__, e, flush=True)
            await serving.close()

        asyncio.run(main())

    atexit.register(late_hook)
    import foorpc
    print("main done", flush=True)
    """
)


def test_an_atexit_hook_after_foorpcs_gets_an_error_not_a_hang(rust_calc: str) -> None:
    # After foorpc's hook, replies that come through the I/O thread can no
    # longer be delivered: the call says so at once instead of waiting for
    # ever (its timeout would never fire either). Clients that read on the
    # calling thread still work.
    done = run_python(LATE_ATEXIT_HOOK, rust_calc, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == ["main done", "sync 3", "async without handlers 5"], done.stdout
    assert lines[3].startswith("async with handlers: RpcError the process is exiting"), done.stdout
