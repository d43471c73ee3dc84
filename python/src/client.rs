//! `Client` and `Peer`: calling the other side of a connection.

use std::mem::ManuallyDrop;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::aio_client::running_loop;
use crate::aio_future::{start_call, CallFuture, Completions};
use crate::convert;
use crate::errors::{self, Error};
use crate::server::{build_router, Handler};

/// How long a blocking wait lasts before Python signal handlers get a chance
/// to run (Ctrl-C interrupts a call within this time).
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// Reads a `timeout=` argument: None -> `default`, `math.inf` -> no timeout.
pub fn timeout_arg(
    timeout: Option<&Bound<'_, PyAny>>,
    default: Option<Duration>,
) -> PyResult<Option<Duration>> {
    let Some(t) = timeout.filter(|t| !t.is_none()) else {
        return Ok(default);
    };
    seconds(t.extract::<f64>()?)
}

/// Seconds as a float -> an optional duration (`inf`, or more seconds than
/// a `Duration` holds, such as 1e20 or `sys.float_info.max`: none).
pub fn seconds(s: f64) -> PyResult<Option<Duration>> {
    if s.is_nan() || s < 0.0 {
        return Err(PyValueError::new_err(format!(
            "timeout must be >= 0 seconds (or math.inf), got {s}"
        )));
    }
    Ok(Duration::try_from_secs_f64(s).ok())
}

thread_local! {
    /// The exception a signal handler raised while this thread was writing.
    static INTERRUPTED_BY: std::cell::RefCell<Option<PyErr>> = const { std::cell::RefCell::new(None) };
}

/// Asked by the core between the slices of a write that waits for the peer
/// to read (a large request to a peer that does not read): runs the Python
/// signal handlers, so that Ctrl-C stops the write as it stops the wait for
/// a reply. On the main thread only, as Python runs them nowhere else.
fn signal_handler_raised() -> bool {
    Python::attach(|py| match py.check_signals() {
        Ok(()) => false,
        Err(e) => {
            INTERRUPTED_BY.with(|slot| *slot.borrow_mut() = Some(e));
            true
        }
    })
}

/// Sends with the GIL released and Python's signal handlers asked while the
/// write waits; the exception a handler raised wins over the core's error.
fn send_interruptibly<R: Send>(
    py: Python<'_>,
    send: impl FnOnce() -> foorpc::Result<R> + Send,
) -> PyResult<R> {
    let sent = py.detach(|| foorpc::with_write_interrupt(signal_handler_raised, send));
    match INTERRUPTED_BY.with(|slot| slot.borrow_mut().take()) {
        Some(raised) => Err(raised),
        None => sent.map_err(|e| PyErr::from(Error(e))),
    }
}

fn default_timeout_arg(t: Option<f64>) -> PyResult<Option<Duration>> {
    match t {
        None => Ok(None),
        Some(s) => seconds(s),
    }
}

/// A blocking call of `method(*params)`: encodes the params, sends, then
/// waits with the GIL released, in slices so that Ctrl-C (and other signal
/// handlers) can interrupt it. Dropping the pending call on an exception
/// cancels it.
pub fn blocking_call(
    py: Python<'_>,
    peer: &foorpc::Peer,
    method: &str,
    params: &Bound<'_, PyTuple>,
    timeout: Option<Duration>,
) -> PyResult<Py<PyAny>> {
    let (mut pending, mut outcome) = convert::with_buffer(|buf| {
        convert::encode_params(params, buf)?;
        let buf = &*buf;
        send_interruptibly(py, || {
            let mut pending = peer.call_async_encoded_blocking_write(method, buf, timeout)?;
            let outcome = pending.wait_for(WAIT_SLICE);
            Ok((pending, outcome))
        })
    })?;
    loop {
        if let Some(r) = outcome {
            return match r {
                Ok(v) => Ok(convert::result_to_py(py, v)?.unbind()),
                Err(e) => Err(Error(e).into()),
            };
        }
        py.check_signals()?;
        outcome = py.detach(|| pending.wait_for(WAIT_SLICE));
    }
}

/// Sends the notification `method(*params)`.
pub fn notify(
    py: Python<'_>,
    peer: &foorpc::Peer,
    method: &str,
    params: &Bound<'_, PyTuple>,
) -> PyResult<()> {
    convert::with_buffer(|buf| {
        convert::encode_params(params, buf)?;
        let buf = &*buf;
        if peer.is_loop_driven() {
            // Never waits (the event loop writes what the socket does not
            // take), so the GIL stays held: the cycle collector sees this
            // connection's calls in flight (`LoopDriver::__traverse__`), and
            // a failed write, which fails them, must not run during a
            // collection.
            return peer
                .notify_encoded_blocking_write(method, buf)
                .map_err(|e| PyErr::from(Error(e)));
        }
        send_interruptibly(py, || peer.notify_encoded_blocking_write(method, buf))
    })
}

/// The connection behind `Client` and `AsyncClient`, aware of fork(): in a
/// child process it refuses to be used and is never closed (the socket
/// belongs to the parent).
pub struct Connection {
    inner: ManuallyDrop<foorpc::Client>,
    /// The process it was made in (see foorpc::fork_generation).
    generation: u64,
    pub default_timeout: Option<Duration>,
    pub address: String,
}

impl Connection {
    /// Connects with the constructor arguments both client classes take.
    pub fn open(
        py: Python<'_>,
        address: String,
        connect_timeout: f64,
        timeout: Option<f64>,
        handlers: Option<&Bound<'_, PyDict>>,
        notification_handlers: Option<&Bound<'_, PyDict>>,
        limits: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Connection> {
        let default_timeout = default_timeout_arg(timeout)?;
        let connect_timeout =
            seconds(connect_timeout)?.unwrap_or(Duration::from_secs(u32::MAX as u64));
        let mut methods = Vec::new();
        let mut notes = Vec::new();
        for (k, v) in handlers.into_iter().flat_map(|d| d.iter()) {
            methods.push((
                k.extract::<String>()?,
                Handler::new(v.unbind(), false, false),
            ));
        }
        for (k, v) in notification_handlers.into_iter().flat_map(|d| d.iter()) {
            notes.push((
                k.extract::<String>()?,
                Handler::new(v.unbind(), false, false),
            ));
        }
        let router = build_router(0, methods, notes, None);
        let builder = foorpc::Client::builder()
            .connect_timeout(connect_timeout)
            .call_timeout(default_timeout)
            .limits(crate::limits::from_dict(limits)?)
            .router(router);
        let addr = address.clone();
        let inner = py.detach(move || builder.connect(&addr)).map_err(Error)?;
        Ok(Connection {
            inner: ManuallyDrop::new(inner),
            generation: foorpc::fork_generation(),
            default_timeout,
            address,
        })
    }

    pub fn peer(&self) -> PyResult<&foorpc::Peer> {
        if foorpc::fork_generation() != self.generation {
            return Err(errors::forked("client"));
        }
        Ok(self.inner.peer())
    }

    /// The peer, or None in a child process after fork().
    pub fn peer_here(&self) -> Option<&foorpc::Peer> {
        (foorpc::fork_generation() == self.generation).then(|| self.inner.peer())
    }

    pub fn close(&self) {
        if let Some(peer) = self.peer_here() {
            peer.close();
        }
    }

    pub fn closed(&self) -> bool {
        self.peer_here().map_or(true, |p| p.is_closed())
    }

    pub fn timeout_secs(&self) -> Option<f64> {
        self.default_timeout.map(|d| d.as_secs_f64())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if foorpc::fork_generation() == self.generation {
            // SAFETY: dropped once, here, and never used again.
            unsafe { ManuallyDrop::drop(&mut self.inner) }
        }
        // In a child after fork() the connection belongs to the parent:
        // closing it here would shut the parent's socket down, so leak it.
    }
}

/// A connection to a MessagePack-RPC server (`tcp://HOST:PORT` or `unix:///PATH`).
///
/// Share one client between threads: calls are pipelined on its one
/// connection. The public class is `foorpc.Client`, a subclass that adds
/// attribute stubs and the context manager.
#[pyclass(module = "foorpc._native", subclass, frozen)]
pub struct Client {
    conn: Connection,
}

#[pymethods]
impl Client {
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
        Ok(Client {
            conn: Connection::open(
                py,
                address,
                connect_timeout,
                timeout,
                handlers,
                notification_handlers,
                limits,
            )?,
        })
    }

    /// Calls `method(*params)` and returns its result. `timeout` in seconds:
    /// None uses the client's default, `math.inf` waits for ever.
    #[pyo3(signature = (method, *params, timeout = None))]
    fn call(
        &self,
        py: Python<'_>,
        method: String,
        params: &Bound<'_, PyTuple>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let peer = self.conn.peer()?;
        let timeout = timeout_arg(timeout, self.conn.default_timeout)?;
        blocking_call(py, peer, &method, params, timeout)
    }

    /// Sends the notification `method(*params)` (no reply).
    #[pyo3(signature = (method, *params))]
    fn notify(&self, py: Python<'_>, method: String, params: &Bound<'_, PyTuple>) -> PyResult<()> {
        let peer = self.conn.peer()?;
        notify(py, peer, &method, params)
    }

    /// Closes the connection; calls still waiting fail with ConnectionLostError.
    fn close(&self) {
        self.conn.close();
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

    fn __repr__(&self) -> String {
        format!("<foorpc.Client {}>", self.conn.address)
    }
}

/// The other side of a connection, given to handlers (a parameter named
/// `peer`) so that they can call back into the client that called them.
#[pyclass(module = "foorpc._native", frozen)]
pub struct Peer {
    inner: foorpc::Peer,
    /// The process it was made in (see foorpc::fork_generation).
    generation: u64,
}

impl Peer {
    pub fn new(inner: foorpc::Peer) -> Peer {
        Peer {
            inner,
            generation: foorpc::fork_generation(),
        }
    }

    fn peer(&self) -> PyResult<&foorpc::Peer> {
        if foorpc::fork_generation() != self.generation {
            return Err(errors::forked("peer"));
        }
        Ok(&self.inner)
    }
}

#[pymethods]
impl Peer {
    /// Calls `method(*params)` on the peer and waits for the result (do not
    /// use from an `async def` handler: use `await peer.acall(...)`).
    #[pyo3(signature = (method, *params, timeout = None))]
    fn call(
        &self,
        py: Python<'_>,
        method: String,
        params: &Bound<'_, PyTuple>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let peer = self.peer()?;
        let timeout = timeout_arg(timeout, peer.default_timeout())?;
        blocking_call(py, peer, &method, params, timeout)
    }

    /// Calls `method(*params)` on the peer; returns an awaitable future of
    /// the running loop. Cancelling it forgets the call.
    #[pyo3(signature = (method, *params, timeout = None))]
    fn acall(
        &self,
        py: Python<'_>,
        method: String,
        params: &Bound<'_, PyTuple>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<CallFuture>> {
        let peer = self.peer()?;
        if crate::interpreter::exiting() {
            return Err(crate::errors::exiting()); // replies come through the I/O thread
        }
        let timeout = timeout_arg(timeout, peer.default_timeout())?;
        let event_loop = running_loop(py)?;
        let completions = Py::new(py, Completions::new(&event_loop)?)?;
        let (fut, _deadline) = start_call(
            py,
            peer,
            &completions,
            &event_loop.unbind(),
            &method,
            |buf| convert::encode_params(params, buf),
            timeout,
        )?;
        Ok(fut)
    }

    /// Sends the notification `method(*params)` to the peer.
    #[pyo3(signature = (method, *params))]
    fn notify(&self, py: Python<'_>, method: String, params: &Bound<'_, PyTuple>) -> PyResult<()> {
        let peer = self.peer()?;
        notify(py, peer, &method, params)
    }

    /// A number that identifies the connection within this process.
    #[getter]
    fn id(&self) -> u64 {
        self.inner.id()
    }

    /// Calls to the peer waiting for their reply.
    #[getter]
    fn pending_calls(&self) -> usize {
        self.inner.pending_calls()
    }

    /// True once the connection is closed.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Closes the connection.
    fn close(&self) {
        if foorpc::fork_generation() == self.generation {
            self.inner.close();
        }
    }

    fn __repr__(&self) -> String {
        format!("<foorpc.Peer id={}>", self.inner.id())
    }
}
