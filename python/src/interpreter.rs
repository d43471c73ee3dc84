//! Python from foorpc's own threads (the I/O thread and the worker pool),
//! which may still be running while the process exits.
//!
//! CPython ends a foreign thread that holds or waits for the GIL once the
//! interpreter is finalizing (`pthread_exit`, whose forced unwind aborts
//! the process when it meets Rust's `catch_unwind`), and PyO3 panics when
//! the GIL is asked for after finalization. So an `atexit` hook, which runs
//! before finalization starts, stops foorpc's threads from entering Python
//! and waits (GIL released) for those inside to leave, for as long as they
//! take: the same as a `ThreadPoolExecutor`, whose work items finish before
//! the process exits. A bounded wait would let a longer handler meet the
//! finalizing interpreter and abort the process. Ctrl-C (any exception a
//! signal handler raises) stops the wait. A handler or a completion that
//! comes later is dropped instead: a request's responder, dropped, answers
//! with an error.
//!
//! So in an `atexit` hook registered before `import foorpc` (hooks run last
//! registered first) a server's handlers no longer run, and an asyncio call
//! whose reply would come through the I/O thread (a client with handlers,
//! `Peer.acall`) raises at once instead of waiting for ever. Synchronous
//! calls, and asyncio clients without handlers, which read on the calling
//! thread, still work there.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

/// How often the exit's wait looks at signals (Ctrl-C ends the wait).
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// Set by the `atexit` hook: from then on foorpc's threads leave Python alone.
static EXITING: AtomicBool = AtomicBool::new(false);
/// foorpc threads inside [`attach`] (running Python, or waiting for the GIL).
static INSIDE: AtomicUsize = AtomicUsize::new(0);

/// The `atexit` hook. An exception from a signal handler (Ctrl-C's
/// `KeyboardInterrupt`) ends the wait and is reported by `atexit`.
#[pyfunction]
fn wait_for_foorpc_threads(py: Python<'_>) -> PyResult<()> {
    EXITING.store(true, Ordering::SeqCst);
    loop {
        let left = py.detach(|| {
            let until = Instant::now() + SIGNAL_CHECK;
            while INSIDE.load(Ordering::SeqCst) > 0 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
            INSIDE.load(Ordering::SeqCst)
        });
        if left == 0 {
            return Ok(());
        }
        py.check_signals()?;
    }
}

/// In a child after `fork()`: the parent's threads, counted in, are not
/// there.
#[pyfunction]
fn forget_parent_threads() {
    INSIDE.store(0, Ordering::SeqCst);
}

/// Registers the `atexit` hook and the fork hook (at module import).
pub fn install(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let hook = wrap_pyfunction!(wait_for_foorpc_threads, m)?;
    py.import("atexit")?.call_method1("register", (hook,))?;
    let in_child = wrap_pyfunction!(forget_parent_threads, m)?;
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("after_in_child", in_child)?;
    py.import("os")?
        .call_method("register_at_fork", (), Some(&kwargs))?;
    Ok(())
}

/// True once the `atexit` hook has run: foorpc's threads run no more Python.
pub fn exiting() -> bool {
    EXITING.load(Ordering::SeqCst)
}

struct Inside;

impl Drop for Inside {
    fn drop(&mut self) {
        INSIDE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs `f` with the GIL on one of foorpc's threads, unless the process is
/// exiting (then `None`: nothing runs).
pub fn attach<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    // Counted before EXITING is read, and the hook sets EXITING before it
    // reads the count: either this thread sees the exit, or the hook waits.
    INSIDE.fetch_add(1, Ordering::SeqCst);
    let _inside = Inside;
    // SAFETY: Py_IsInitialized only reads the runtime's state; it may be
    // called without the GIL, even after finalization.
    if EXITING.load(Ordering::SeqCst) || unsafe { pyo3::ffi::Py_IsInitialized() } == 0 {
        return None;
    }
    Some(Python::attach(f))
}
