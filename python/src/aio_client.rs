//! The native half of `foorpc.AsyncClient`: calls from asyncio, with the
//! connection driven by the event loop itself.
//!
//! A client without handlers hands its socket to the loop that first calls
//! it (`loop.add_reader`): replies are read and their tasks woken inside the
//! loop's own reader callback, with no I/O thread, no GIL hand-off and no
//! wake-up through the loop's self-pipe. The calls of one loop iteration are
//! corked and leave in one write; a timer per client enforces call timeouts.
//! A client with handlers (the server may call it at any time, and handlers
//! may answer from worker threads) keeps foorpc's I/O thread, which hands
//! outcomes to the loop in batches (see `Completions`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use pyo3::exceptions::{PyNotImplementedError, PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};

use crate::aio_future::{start_call, CallFuture, Completions, PendingHeld};
use crate::client::{notify, timeout_arg, Connection};
use crate::cmethod::{add_fastcall, is_name, FastArgs, FastMethod};
use crate::convert;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

thread_local! {
    /// The driver whose loop callback runs on this thread right now. A call
    /// made meanwhile (by a task that callback woke) is on that driver's
    /// loop, so it need not ask asyncio, whose `get_running_loop` costs a
    /// getpid() system call per call on Python 3.11.
    static DELIVERING: std::cell::Cell<*const LoopDriver> = const { std::cell::Cell::new(std::ptr::null()) };
}

/// Marks `driver` as delivering on this thread until dropped.
struct Delivering(*const LoopDriver);

impl Delivering {
    fn enter(driver: &LoopDriver) -> Delivering {
        Delivering(DELIVERING.with(|d| d.replace(driver)))
    }
}

impl Drop for Delivering {
    fn drop(&mut self) {
        DELIVERING.with(|d| d.set(self.0));
    }
}

/// The running event loop of this thread (RuntimeError when there is none).
pub fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let f = GET_RUNNING_LOOP.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("asyncio")?.getattr("get_running_loop")?.unbind())
    })?;
    f.bind(py).call0()
}

/// While a read's replies are delivered, the requests of the tasks woken so
/// far are written after every this many, so that the server works on them
/// while the rest are delivered (client and server overlap instead of taking
/// turns).
const FLUSH_EVERY: usize = 48;

/// The armed timeout timer: its handle and when it fires.
struct Timer {
    handle: Option<Py<PyAny>>,
    at: Option<Instant>,
}

/// One client's link to one event loop.
#[pyclass(module = "foorpc._native", frozen)]
pub struct LoopDriver {
    peer: foorpc::Peer,
    event_loop: Py<PyAny>,
    completions: Py<Completions>,
    /// The loop reads the socket (else foorpc's I/O thread does: the client
    /// has handlers, or the loop has no `add_reader`).
    reads: AtomicBool,
    /// Calls of this loop iteration are held back for one write.
    corked: AtomicBool,
    writer_added: AtomicBool,
    detached: AtomicBool,
    timer: Mutex<Timer>,
}

impl LoopDriver {
    /// Links `peer` to `event_loop`, handing it the socket when it can.
    fn attach(
        py: Python<'_>,
        peer: &foorpc::Peer,
        event_loop: &Bound<'_, PyAny>,
        serves: bool,
    ) -> PyResult<Py<LoopDriver>> {
        let completions = Py::new(py, Completions::new(event_loop)?)?;
        let driver = Py::new(
            py,
            LoopDriver {
                peer: peer.clone(),
                event_loop: event_loop.clone().unbind(),
                completions,
                reads: AtomicBool::new(false),
                corked: AtomicBool::new(false),
                writer_added: AtomicBool::new(false),
                detached: AtomicBool::new(false),
                timer: Mutex::new(Timer {
                    handle: None,
                    at: None,
                }),
            },
        )?;
        if serves {
            return Ok(driver);
        }
        // The reader is registered before the loop takes over, so no reply
        // can be missed; until then nothing was waiting for one.
        let on_readable = driver.bind(py).getattr("_on_readable")?;
        match event_loop.call_method1("add_reader", (peer.fd(), on_readable)) {
            Ok(_) => {}
            // A loop without add_reader (Windows' proactor): the I/O thread
            // reads, unless an earlier loop already took the socket over.
            Err(e) if e.is_instance_of::<PyNotImplementedError>(py) => {
                if peer.is_loop_driven() {
                    return Err(PyRuntimeError::new_err(
                        "this AsyncClient was driven by an event loop that watches its socket; \
                         a loop without add_reader needs its own client",
                    ));
                }
                return Ok(driver);
            }
            Err(e) => return Err(e),
        }
        if peer.drive_from_event_loop().is_err() {
            // foorpc's I/O thread already reads (an earlier loop had no
            // add_reader): keep it.
            let _ = event_loop.call_method1("remove_reader", (peer.fd(),));
            return Ok(driver);
        }
        driver.get().reads.store(true, Ordering::Release);
        Ok(driver)
    }

    /// Holds this iteration's calls back; the loop's next pass writes them.
    fn cork_iteration(this: &Bound<'_, LoopDriver>) -> PyResult<()> {
        let d = this.get();
        if !d.corked.swap(true, Ordering::AcqRel) {
            d.peer.cork();
            let uncork = this.getattr("_uncork")?;
            if let Err(e) = d.event_loop.call_method1(this.py(), "call_soon", (uncork,)) {
                d.corked.store(false, Ordering::Release);
                d.peer.uncork();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Ends a cork: writes, and watches for room when the socket is full.
    fn end_cork(this: &Bound<'_, LoopDriver>) -> PyResult<()> {
        let d = this.get();
        if d.corked.swap(false, Ordering::AcqRel) {
            d.peer.uncork();
        }
        d.watch_writes(this)
    }

    fn watch_writes(&self, this: &Bound<'_, LoopDriver>) -> PyResult<()> {
        if self.reads.load(Ordering::Acquire)
            && self.peer.wants_write()
            && !self.peer.is_closed()
            && !self.writer_added.swap(true, Ordering::AcqRel)
        {
            let on_writable = this.getattr("_on_writable")?;
            self.event_loop
                .call_method1(this.py(), "add_writer", (self.peer.fd(), on_writable))?;
        }
        Ok(())
    }

    /// Makes sure the timer fires by `deadline` (calls driven by this loop only).
    fn arm_timer(this: &Bound<'_, LoopDriver>, deadline: Instant) -> PyResult<()> {
        let d = this.get();
        // No lock is held while Python runs (another thread could wait for
        // it holding the GIL).
        let old = {
            let mut t = lock(&d.timer);
            if t.at.is_some_and(|at| at <= deadline) {
                return Ok(());
            }
            t.at = Some(deadline);
            t.handle.take()
        };
        if let Some(old) = old {
            old.call_method0(this.py(), "cancel")?;
        }
        let delay = deadline
            .saturating_duration_since(Instant::now())
            .as_secs_f64();
        let on_timer = this.getattr("_on_timer")?;
        let armed = d
            .event_loop
            .call_method1(this.py(), "call_later", (delay, on_timer));
        let mut t = lock(&d.timer);
        match armed {
            Ok(handle) => {
                t.handle = Some(handle);
                Ok(())
            }
            Err(e) => {
                t.at = None;
                Err(e)
            }
        }
    }

    /// Runs `io` (which may complete calls) inside one cork, then resolves
    /// the completed futures right here: this is a loop callback.
    fn deliver(
        this: &Bound<'_, LoopDriver>,
        io: impl FnOnce(&foorpc::Peer) -> bool,
    ) -> PyResult<()> {
        let d = this.get();
        let corks = !d.corked.swap(true, Ordering::AcqRel);
        if corks {
            d.peer.cork();
        }
        d.completions.get().claim();
        let open = io(&d.peer);
        let delivering = Delivering::enter(d);
        let completions = d.completions.bind(this.py());
        let drained = if corks {
            Completions::drain_in_steps(completions, FLUSH_EVERY, || {
                // Unless a callback detached this driver (and uncorked).
                if d.corked.load(Ordering::Acquire) {
                    d.peer.uncork();
                    d.peer.cork();
                }
            })
        } else {
            Completions::drain(completions)
        };
        drop(delivering);
        let uncorked = if corks {
            LoopDriver::end_cork(this)
        } else {
            Ok(())
        };
        if !open {
            LoopDriver::detach(this);
        }
        drained.and(uncorked)
    }

    /// This driver's loop reads the socket: then the loop reaches the
    /// connection's pending calls through this driver alone.
    fn owns_pending_calls(&self) -> bool {
        self.reads.load(Ordering::Acquire) && !self.detached.load(Ordering::Acquire)
    }

    /// Stops watching the socket (the connection is closed or moves to another loop).
    fn detach(this: &Bound<'_, LoopDriver>) {
        let d = this.get();
        if d.detached.swap(true, Ordering::AcqRel) {
            return;
        }
        let py = this.py();
        let timer = lock(&d.timer).handle.take();
        if let Some(h) = timer {
            let _ = h.call_method0(py, "cancel");
        }
        // A cork whose `_uncork` this loop may never run must not hold the
        // connection's writes back for good.
        if d.corked.swap(false, Ordering::AcqRel) {
            d.peer.uncork();
        }
        if d.reads.load(Ordering::Acquire) {
            let fd = d.peer.fd();
            let _ = d.event_loop.call_method1(py, "remove_reader", (fd,));
            if d.writer_added.swap(false, Ordering::AcqRel) {
                let _ = d.event_loop.call_method1(py, "remove_writer", (fd,));
            }
        }
    }
}

#[pymethods]
impl LoopDriver {
    /// For Python's cycle collector: the armed timer's handle holds this
    /// driver's `_on_timer`, and this driver holds the handle. A driver that
    /// reads the socket for its loop also owns the connection's pending
    /// calls (their futures and completion queue): the loop reaches them
    /// only through it, so a loop closed with calls pending, whose tasks
    /// refer to the client, leaves a cycle the collector can free. (With
    /// foorpc's I/O thread reading, that thread holds them instead.) The
    /// calls of a loop-driven connection change only with the GIL held
    /// (the loop's callbacks, `call`, `notify`, close), so a collection
    /// sees them the same in all its passes.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.completions)?;
        if let Ok(t) = self.timer.try_lock() {
            visit.call(&t.handle)?;
        }
        if self.owns_pending_calls() {
            let mut visited = Ok(());
            self.peer
                .visit_pending::<PendingHeld>(|(fut, completions)| {
                    if visited.is_ok() {
                        visited = visit.call(fut).and_then(|()| visit.call(completions));
                    }
                });
            visited?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let handle = lock(&self.timer).handle.take();
        drop(handle);
        if self.owns_pending_calls() {
            self.peer.forget_pending();
        }
    }

    fn _uncork(slf: &Bound<'_, Self>) -> PyResult<()> {
        LoopDriver::end_cork(slf)
    }

    fn _on_readable(slf: &Bound<'_, Self>) -> PyResult<()> {
        LoopDriver::deliver(slf, |peer| peer.read_ready().is_ok())
    }

    /// Writes what calls made off the loop left queued (see `notify`).
    fn _flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        let _ = slf.get().peer.flush();
        slf.get().watch_writes(slf)
    }

    fn _on_writable(slf: &Bound<'_, Self>) -> PyResult<()> {
        let d = slf.get();
        match d.peer.flush() {
            Ok(false) => Ok(()),
            done => {
                if d.writer_added.swap(false, Ordering::AcqRel) {
                    d.event_loop
                        .call_method1(slf.py(), "remove_writer", (d.peer.fd(),))?;
                }
                if done.is_err() {
                    // Failing the calls queued them for the next loop pass.
                    LoopDriver::detach(slf);
                }
                Ok(())
            }
        }
    }

    fn _on_timer(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let mut t = lock(&slf.get().timer);
            t.handle = None;
            t.at = None;
        }
        let mut next = None;
        let delivered = LoopDriver::deliver(slf, |peer| {
            next = peer.expire_calls(Instant::now());
            !peer.is_closed()
        });
        let rearmed = match next {
            Some(at) if !slf.get().detached.load(Ordering::Acquire) => {
                LoopDriver::arm_timer(slf, at)
            }
            _ => Ok(()),
        };
        delivered.and(rearmed)
    }
}

/// An asyncio client (public class: `foorpc.AsyncClient`, which adds
/// `connect`, attribute stubs and `async with`).
#[pyclass(module = "foorpc._native", subclass, frozen)]
pub struct AsyncClient {
    conn: Connection,
    /// The server may call this client (it has handlers).
    serves: bool,
    driver: Mutex<Option<Py<LoopDriver>>>,
}

impl AsyncClient {
    /// The driver for the running loop, linking this client to it on first use.
    ///
    /// The `driver` lock is never held while Python runs: a thread waiting
    /// for it would hold the GIL that the holder needs.
    fn driver<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, LoopDriver>> {
        let current = self.current_driver(py);
        if let Some(d) = &current {
            if DELIVERING.with(|p| std::ptr::eq(p.get(), d.get())) {
                return Ok(d.clone());
            }
        }
        let event_loop = running_loop(py)?;
        if let Some(old) = &current {
            if old.get().event_loop.is(&event_loop) {
                return Ok(old.clone());
            }
            let old_loop = old.get().event_loop.bind(py);
            let in_use = old.get().reads.load(Ordering::Acquire)
                && !old.get().detached.load(Ordering::Acquire)
                && !old_loop.call_method0("is_closed")?.is_truthy()?
                && old_loop.call_method0("is_running")?.is_truthy()?;
            if in_use && !self.conn.closed() {
                return Err(in_another_loop());
            }
            LoopDriver::detach(old);
        }
        let peer = self.conn.peer()?;
        let new = LoopDriver::attach(py, peer, &event_loop, self.serves)?;
        let mut slot = lock(&self.driver);
        let unchanged = match (&*slot, &current) {
            (Some(now), Some(seen)) => now.is(seen),
            (None, None) => true,
            _ => false,
        };
        if !unchanged {
            // Another thread linked this client to its loop meanwhile.
            drop(slot);
            LoopDriver::detach(new.bind(py));
            return Err(in_another_loop());
        }
        *slot = Some(new.clone_ref(py));
        Ok(new.into_bound(py))
    }

    fn current_driver<'py>(&self, py: Python<'py>) -> Option<Bound<'py, LoopDriver>> {
        lock(&self.driver).as_ref().map(|d| d.bind(py).clone())
    }

    /// `call`: starts `method` with the params `encode_params` writes, on
    /// the running loop.
    fn start_call(
        &self,
        py: Python<'_>,
        method: &str,
        encode_params: impl FnOnce(&mut Vec<u8>) -> PyResult<()>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<CallFuture>> {
        let peer = self.conn.peer()?;
        let driver = self.driver(py)?;
        let timeout = timeout_arg(timeout, self.conn.default_timeout)?;
        LoopDriver::cork_iteration(&driver)?;
        let d = driver.get();
        if crate::interpreter::exiting() && !d.reads.load(Ordering::Acquire) {
            return Err(crate::errors::exiting()); // the reply could never be delivered
        }
        let (fut, deadline) = start_call(
            py,
            peer,
            &d.completions,
            &d.event_loop,
            method,
            encode_params,
            timeout,
        )?;
        if let (true, Some(deadline)) = (d.reads.load(Ordering::Acquire), deadline) {
            if let Err(e) = LoopDriver::arm_timer(&driver, deadline) {
                CallFuture::cancel_with(fut.bind(py), None)?;
                return Err(e);
            }
        }
        Ok(fut)
    }
}

/// Installs `AsyncClient.call`, written by hand (see `cmethod`): it is the
/// entry point of every asyncio call.
pub fn install(class: &Bound<'_, PyType>) -> PyResult<()> {
    add_fastcall::<Call>(
        class,
        c"call",
        c"call($self, method, *params, timeout=None)\n--\n\n\
        Calls ``method(*params)``; returns an awaitable future of the running \
        loop. ``timeout`` as in `Client.call`. Cancelling it forgets the call.",
    )
}

/// `AsyncClient.call(method, *params, timeout=None)`.
struct Call;

impl FastMethod for Call {
    unsafe fn call<'py>(
        py: Python<'py>,
        slf: *mut ffi::PyObject,
        args: FastArgs<'_, 'py>,
    ) -> PyResult<Py<PyAny>> {
        let mut method = (args.len() > 0).then(|| args.get(0));
        let mut timeout = None;
        for (name, value) in args.keywords() {
            if is_name(&name, pyo3::intern!(py, "timeout"))? {
                timeout = Some(value);
            } else if is_name(&name, pyo3::intern!(py, "method"))? {
                if method.replace(value).is_some() {
                    return Err(PyTypeError::new_err(
                        "call() got multiple values for argument 'method'",
                    ));
                }
            } else {
                return Err(PyTypeError::new_err(format!(
                    "call() got an unexpected keyword argument {}",
                    name.repr()?
                )));
            }
        }
        let Some(method) = method else {
            return Err(PyTypeError::new_err(
                "call() missing required argument 'method' (pos 1)",
            ));
        };
        let method = method.cast::<PyString>()?;
        // SAFETY: the method descriptor checked that `slf` is an AsyncClient.
        let client = Borrowed::from_ptr(py, slf).cast_unchecked::<AsyncClient>();
        let params = (1..args.len()).map(|i| args.get(i).to_owned());
        let fut = client.get().start_call(
            py,
            method.to_str()?,
            |buf| convert::encode_params_from(params, buf),
            timeout.as_deref(),
        )?;
        Ok(fut.into_any())
    }
}

fn in_another_loop() -> PyErr {
    PyRuntimeError::new_err(
        "this AsyncClient is driven by another running event loop; make one client per event loop",
    )
}

#[pymethods]
impl AsyncClient {
    /// For Python's cycle collector: the client holds its loop driver,
    /// which holds the calls it reads replies for (see
    /// `LoopDriver::__traverse__`), whose tasks may hold the client.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(driver) = self.driver.try_lock() {
            visit.call(&*driver)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let driver = lock(&self.driver).take();
        drop(driver);
    }

    #[new]
    #[pyo3(
        signature = (address, *, connect_timeout = 10.0, timeout = Some(30.0), handlers = None, notification_handlers = None, limits = None),
        text_signature = "(address, *, connect_timeout=10.0, timeout=30.0, handlers=None, notification_handlers=None, limits=None)"
    )]
    fn new(
        py: Python<'_>,
        address: String,
        connect_timeout: f64,
        timeout: Option<f64>,
        handlers: Option<&Bound<'_, PyDict>>,
        notification_handlers: Option<&Bound<'_, PyDict>>,
        limits: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let serves = handlers.is_some_and(|h| !h.is_empty())
            || notification_handlers.is_some_and(|h| !h.is_empty());
        Ok(AsyncClient {
            conn: Connection::open(
                py,
                address,
                connect_timeout,
                timeout,
                handlers,
                notification_handlers,
                limits,
            )?,
            serves,
            driver: Mutex::new(None),
        })
    }

    /// Sends the notification ``method(*params)`` (queued at once; does not wait).
    #[pyo3(signature = (method, *params))]
    fn notify(&self, py: Python<'_>, method: &str, params: &Bound<'_, PyTuple>) -> PyResult<()> {
        let peer = self.conn.peer()?;
        if running_loop(py).is_ok() {
            // Leaves with this iteration's calls.
            LoopDriver::cork_iteration(&self.driver(py)?)?;
            return notify(py, peer, method, params);
        }
        notify(py, peer, method, params)?;
        // Off the loop: what the socket could not take is written by the loop.
        if let Some(d) = self.current_driver(py) {
            if d.get().reads.load(Ordering::Acquire) && peer.wants_write() {
                let flush = d.getattr("_flush")?;
                let _ = d
                    .get()
                    .event_loop
                    .call_method1(py, "call_soon_threadsafe", (flush,));
            }
        }
        Ok(())
    }

    /// Closes the connection; pending calls fail with ConnectionLostError.
    fn _close(&self, py: Python<'_>) {
        self.conn.close();
        if let Some(d) = self.current_driver(py) {
            if running_loop(py).is_ok_and(|l| l.is(&d.get().event_loop)) {
                LoopDriver::detach(&d);
            }
            // Elsewhere the reader sees the closed socket and detaches itself.
        }
    }

    /// True once the connection is closed (by either side).
    #[getter]
    fn closed(&self) -> bool {
        self.conn.closed()
    }

    /// Calls waiting for their reply.
    #[getter]
    fn pending_calls(&self) -> PyResult<usize> {
        Ok(self.conn.peer()?.pending_calls())
    }

    /// The address given to the constructor.
    #[getter]
    fn address(&self) -> &str {
        &self.conn.address
    }

    /// The default call timeout in seconds (None: no timeout).
    #[getter]
    fn timeout(&self) -> Option<f64> {
        self.conn.timeout_secs()
    }
}
