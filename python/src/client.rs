//! `Client` and `Peer`: calling the other side of a connection.

use std::mem::ManuallyDrop;
use std::sync::Mutex;
use std::time::Duration;

use foorpc::Value;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};

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

/// Seconds as a float -> an optional duration (`inf`: none).
pub fn seconds(s: f64) -> PyResult<Option<Duration>> {
    if s.is_nan() || s < 0.0 {
        return Err(PyValueError::new_err(format!(
            "timeout must be >= 0 seconds (or math.inf), got {s}"
        )));
    }
    if s.is_infinite() {
        return Ok(None);
    }
    Ok(Some(Duration::from_secs_f64(s)))
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
        py.detach(|| {
            let mut pending = peer.call_async_encoded(method, buf, timeout)?;
            let outcome = pending.wait_for(WAIT_SLICE);
            Ok::<_, foorpc::Error>((pending, outcome))
        })
        .map_err(|e| PyErr::from(Error(e)))
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
fn notify(
    py: Python<'_>,
    peer: &foorpc::Peer,
    method: &str,
    params: &Bound<'_, PyTuple>,
) -> PyResult<()> {
    convert::with_buffer(|buf| {
        convert::encode_params(params, buf)?;
        py.detach(|| peer.notify_encoded(method, buf))
            .map_err(|e| PyErr::from(Error(e)))
    })
}

struct AsyncHelpers {
    set_result: Py<PyAny>,
    set_exception: Py<PyAny>,
    get_running_loop: Py<PyAny>,
}

static ASYNC_HELPERS: PyOnceLock<AsyncHelpers> = PyOnceLock::new();

fn async_helpers(py: Python<'_>) -> PyResult<&AsyncHelpers> {
    ASYNC_HELPERS.get_or_try_init(py, || {
        let m = py.import("foorpc._aio")?;
        Ok(AsyncHelpers {
            set_result: m.getattr("_set_result")?.unbind(),
            set_exception: m.getattr("_set_exception")?.unbind(),
            get_running_loop: py.import("asyncio")?.getattr("get_running_loop")?.unbind(),
        })
    })
}

type Completed = (Py<PyAny>, foorpc::Result<Value>);

/// Delivers replies to asyncio futures of one event loop, in batches.
///
/// foorpc's I/O thread queues each outcome without taking the GIL; only when
/// the queue was empty does it take the GIL to schedule one drain with the
/// loop's `call_soon_threadsafe`. The drain runs on the loop: it converts the
/// values and resolves every queued future (skipping cancelled ones).
#[pyclass(module = "foorpc._native", frozen)]
pub struct Completions {
    queue: Mutex<Vec<Completed>>,
    call_soon_threadsafe: Py<PyAny>,
}

impl Completions {
    fn push(this: &Py<Completions>, item: Completed) {
        let first = {
            let mut q = this.get().queue.lock().unwrap_or_else(|p| p.into_inner());
            q.push(item);
            q.len() == 1
        };
        if first {
            Python::attach(|py| {
                // Fails only when the loop is closed: nobody is waiting any more.
                let _ = this
                    .get()
                    .call_soon_threadsafe
                    .call1(py, (this.clone_ref(py),));
            });
        }
    }
}

#[pymethods]
impl Completions {
    #[new]
    fn new(call_soon_threadsafe: Py<PyAny>) -> Self {
        Completions {
            queue: Mutex::new(Vec::new()),
            call_soon_threadsafe,
        }
    }

    /// Resolves the queued futures (called on the loop).
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let items = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
        let h = async_helpers(py)?;
        for (fut, outcome) in items {
            let (setter, arg) = match outcome.map_err(Error) {
                Ok(v) => match convert::result_to_py(py, v) {
                    Ok(obj) => (&h.set_result, obj),
                    Err(e) => (&h.set_exception, e.into_value(py).into_bound(py).into_any()),
                },
                Err(e) => (
                    &h.set_exception,
                    PyErr::from(e).into_value(py).into_bound(py).into_any(),
                ),
            };
            setter.call1(py, (fut, arg))?;
        }
        Ok(())
    }

    /// Outcomes queued and not yet delivered.
    #[getter]
    fn queued(&self) -> usize {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Starts a call of `method(*params)` whose outcome resolves the asyncio
/// `future` through `completions` (which belongs to the future's loop).
/// Returns the msgid (for cancelling).
pub fn future_call(
    py: Python<'_>,
    peer: &foorpc::Peer,
    completions: &Bound<'_, Completions>,
    future: Py<PyAny>,
    method: &str,
    params: &Bound<'_, PyTuple>,
    timeout: Option<Duration>,
) -> PyResult<u32> {
    async_helpers(py)?;
    let pending = convert::with_buffer(|buf| {
        convert::encode_params(params, buf)?;
        peer.call_async_encoded(method, buf, timeout)
            .map_err(|e| PyErr::from(Error(e)))
    })?;
    let msgid = pending.msgid();
    let completions = completions.clone().unbind();
    pending.on_complete(move |outcome| Completions::push(&completions, (future, outcome)));
    Ok(msgid)
}

/// A connection to a MessagePack-RPC server (`tcp://HOST:PORT` or `unix:///PATH`).
///
/// Share one client between threads: calls are pipelined on its one
/// connection. The public class is `foorpc.Client`, a subclass that adds
/// attribute stubs and the context manager.
#[pyclass(module = "foorpc._native", subclass, frozen)]
pub struct Client {
    inner: ManuallyDrop<foorpc::Client>,
    /// The process it was made in (see foorpc::fork_generation).
    generation: u64,
    default_timeout: Option<Duration>,
    address: String,
}

impl Drop for Client {
    fn drop(&mut self) {
        if foorpc::fork_generation() == self.generation {
            // SAFETY: dropped once, here, and never used again.
            unsafe { ManuallyDrop::drop(&mut self.inner) }
        }
        // In a child after fork() the connection belongs to the parent:
        // closing it here would shut the parent's socket down, so leak it.
    }
}

impl Client {
    fn peer(&self) -> PyResult<&foorpc::Peer> {
        if foorpc::fork_generation() != self.generation {
            return Err(errors::forked("client"));
        }
        Ok(self.inner.peer())
    }
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(
        signature = (address, *, connect_timeout = 10.0, timeout = Some(30.0), handlers = None, notification_handlers = None),
        text_signature = "(address, *, connect_timeout=10.0, timeout=30.0, handlers=None, notification_handlers=None)"
    )]
    fn new(
        py: Python<'_>,
        address: String,
        connect_timeout: f64,
        timeout: Option<f64>,
        handlers: Option<&Bound<'_, PyDict>>,
        notification_handlers: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
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
        let router = build_router(methods, notes, None);
        let builder = foorpc::Client::builder()
            .connect_timeout(connect_timeout)
            .call_timeout(default_timeout)
            .router(router);
        let addr = address.clone();
        let inner = py.detach(move || builder.connect(&addr)).map_err(Error)?;
        Ok(Client {
            inner: ManuallyDrop::new(inner),
            generation: foorpc::fork_generation(),
            default_timeout,
            address,
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
        let peer = self.peer()?;
        let timeout = timeout_arg(timeout, self.default_timeout)?;
        blocking_call(py, peer, &method, params, timeout)
    }

    /// Sends the notification `method(*params)` (no reply).
    #[pyo3(signature = (method, *params))]
    fn notify(&self, py: Python<'_>, method: String, params: &Bound<'_, PyTuple>) -> PyResult<()> {
        let peer = self.peer()?;
        notify(py, peer, &method, params)
    }

    /// Closes the connection; calls still waiting fail with ConnectionLostError.
    fn close(&self) {
        if foorpc::fork_generation() == self.generation {
            self.inner.close();
        }
    }

    /// True once the connection is closed (by either side).
    #[getter]
    fn closed(&self) -> bool {
        foorpc::fork_generation() != self.generation || self.inner.is_closed()
    }

    /// Calls waiting for their reply.
    #[getter]
    fn pending_calls(&self) -> PyResult<usize> {
        Ok(self.peer()?.pending_calls())
    }

    /// The address given to the constructor.
    #[getter]
    fn address(&self) -> &str {
        &self.address
    }

    /// The default call timeout in seconds (None: no timeout).
    #[getter]
    fn timeout(&self) -> Option<f64> {
        self.default_timeout.map(|d| d.as_secs_f64())
    }

    /// Starts a call whose outcome resolves the asyncio `future` through
    /// `completions` (of the future's loop); returns its msgid. Used by `AsyncClient`.
    #[pyo3(signature = (completions, future, method, params, timeout = None))]
    fn _call_future(
        &self,
        py: Python<'_>,
        completions: &Bound<'_, Completions>,
        future: Py<PyAny>,
        method: String,
        params: &Bound<'_, PyTuple>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u32> {
        let peer = self.peer()?;
        let timeout = timeout_arg(timeout, self.default_timeout)?;
        future_call(py, peer, completions, future, &method, params, timeout)
    }

    /// Holds requests back (AsyncClient corks for one loop iteration, so
    /// that the calls made in it leave in one write); see `_uncork`.
    fn _cork(&self) -> PyResult<()> {
        self.peer()?.cork();
        Ok(())
    }

    /// Ends one `_cork`: the last one writes what was held back.
    fn _uncork(&self) -> PyResult<()> {
        self.peer()?.uncork();
        Ok(())
    }

    /// Forgets the call `msgid` (its awaiting task was cancelled).
    fn _cancel(&self, msgid: u32) {
        if foorpc::fork_generation() == self.generation {
            self.inner.cancel(msgid);
        }
    }

    fn __repr__(&self) -> String {
        format!("<foorpc.Client {}>", self.address)
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

    /// Calls `method(*params)` on the peer; returns an awaitable (an asyncio
    /// future of the running loop). Cancelling it forgets the call.
    #[pyo3(signature = (method, *params, timeout = None))]
    fn acall(
        &self,
        py: Python<'_>,
        method: String,
        params: &Bound<'_, PyTuple>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let peer = self.peer()?;
        let timeout = timeout_arg(timeout, peer.default_timeout())?;
        let h = async_helpers(py)?;
        let event_loop = h.get_running_loop.call0(py)?.into_bound(py);
        let fut = event_loop.call_method0("create_future")?;
        let cst = event_loop.getattr("call_soon_threadsafe")?;
        let completions = Bound::new(py, Completions::new(cst.unbind()))?;
        let msgid = future_call(
            py,
            peer,
            &completions,
            fut.clone().unbind(),
            &method,
            params,
            timeout,
        )?;
        let canceller = Py::new(
            py,
            CancelOnDone {
                peer: peer.clone(),
                msgid,
            },
        )?;
        fut.call_method1("add_done_callback", (canceller,))?;
        Ok(fut.unbind())
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

/// Done-callback of `Peer.acall` futures: forgets the call if it was cancelled.
#[pyclass(module = "foorpc._native", frozen)]
pub struct CancelOnDone {
    peer: foorpc::Peer,
    msgid: u32,
}

#[pymethods]
impl CancelOnDone {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0("cancelled")?.is_truthy()? {
            self.peer.cancel(self.msgid);
        }
        Ok(())
    }
}
