//! `ServerCore` (the native half of `foorpc.Server`), handlers and `Responder`.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Duration;

use foorpc::{Execution, Notification, Request, Router, Value};
use pyo3::exceptions::PyBaseException;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::PyTraverseError;

use crate::client::{seconds, Peer};
use crate::convert;
use crate::errors::{self, Error};
use crate::interpreter;

/// A Python callable registered as a method or notification handler.
#[derive(Clone)]
pub struct Handler {
    func: Arc<Py<PyAny>>,
    /// Pass a `Peer` as the first argument.
    pass_peer: bool,
    /// Called as `func(responder, args)` on the I/O thread; answers later
    /// through the responder (async handlers scheduled on an asyncio loop).
    deferred: bool,
}

impl Handler {
    pub fn new(func: Py<PyAny>, pass_peer: bool, deferred: bool) -> Handler {
        Handler {
            func: Arc::new(func),
            pass_peer,
            deferred,
        }
    }

    fn args<'py>(
        &self,
        py: Python<'py>,
        params: Vec<Value>,
        peer: foorpc::Peer,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut items = Vec::with_capacity(params.len() + 1);
        if self.pass_peer {
            items.push(Bound::new(py, Peer::new(peer))?.into_any());
        }
        for v in params {
            items.push(convert::to_py(py, v)?);
        }
        PyTuple::new(py, items)
    }
}

/// Identifies a `ServerCore` (0: none) for [`IN_HANDLER_OF`].
static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The id of the server whose handler this thread is running now (0:
    /// none), so that `shutdown()` from inside a handler can tell that the
    /// drain would wait for its caller.
    static IN_HANDLER_OF: Cell<u64> = const { Cell::new(0) };
}

/// Runs `f` marked as inside a handler of server `id`.
fn in_handler_of<R>(id: u64, f: impl FnOnce() -> R) -> R {
    struct Restore(u64);
    impl Drop for Restore {
        fn drop(&mut self) {
            IN_HANDLER_OF.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(IN_HANDLER_OF.with(|c| c.replace(id)));
    f()
}

/// Builds a core router from Python handlers of server `id` (0: a client's
/// handlers): plain methods run on the worker pool, deferred ones (which
/// only hand an `async def` to its loop) on the I/O thread. Plain
/// notification handlers run on the pool one at a time per connection, in
/// arrival order. The fallback takes every notification without a handler
/// of its own, method name first.
pub fn build_router(
    id: u64,
    methods: Vec<(String, Handler)>,
    notes: Vec<(String, Handler)>,
    note_fallback: Option<Handler>,
) -> Router {
    let mut router = Router::new();
    for (name, h) in methods {
        if h.deferred {
            router.register(&name, Execution::Inline, move |req| {
                in_handler_of(id, || run_deferred(&h, req))
            });
        } else {
            router.register(&name, Execution::Pool, move |req| {
                in_handler_of(id, || run_method(&h, req, id == 0))
            });
        }
    }
    for (name, h) in notes {
        router.notification(&name, notification_execution(&h), move |n| {
            in_handler_of(id, || run_notification(&h, n, id == 0))
        });
    }
    if let Some(h) = note_fallback {
        router.notification_fallback(notification_execution(&h), move |mut n| {
            n.params.insert(0, foorpc::Value::from(n.method.as_str()));
            in_handler_of(id, || run_notification(&h, n, id == 0))
        });
    }
    router
}

/// Refuses what a plain handler returned if it is awaitable (a coroutine:
/// an `async def` behind an ordinary decorator, or in a client's handlers),
/// which foorpc does not await: a TypeError that says so, and the coroutine
/// is closed (no "never awaited" warning).
fn not_awaitable<'py>(
    h: &Handler,
    method: &str,
    out: Bound<'py, PyAny>,
    client: bool,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: reads a slot of a valid type object (allowed for static
    // types since 3.10, heap types always).
    let awaitable = unsafe {
        !pyo3::ffi::PyType_GetSlot(pyo3::ffi::Py_TYPE(out.as_ptr()), pyo3::ffi::Py_am_await)
            .is_null()
    };
    if !awaitable {
        return Ok(out);
    }
    let py = out.py();
    if let Ok(close) = out.getattr("close") {
        if let Err(e) = close.call0() {
            e.write_unraisable(py, Some(&out));
        }
    }
    let func = h.func.bind(py);
    let shown = func
        .getattr("__qualname__")
        .and_then(|n| n.str())
        .map(|n| n.to_string())
        .or_else(|_| func.repr().map(|r| r.to_string()))
        .unwrap_or_else(|_| "?".into());
    let kind = out
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "awaitable".into());
    let advice = if client {
        "a client's handlers must be plain callables that return the value \
         (foorpc does not await them)"
    } else {
        "declare the handler `async def` (an async function behind a decorator \
         that is not itself `async def` is run as a plain one) so that foorpc awaits it"
    };
    Err(PyTypeError::new_err(format!(
        "handler {shown} of {method:?} returned a {kind} instead of a value: {advice}"
    )))
}

/// Where a notification handler runs: a plain one may take its time, so off
/// the I/O thread, but in order; a deferred one only starts a task on its
/// loop, so right on the I/O thread.
fn notification_execution(h: &Handler) -> Execution {
    if h.deferred {
        Execution::Inline
    } else {
        Execution::Ordered
    }
}

fn run_method(h: &Handler, req: Request, client: bool) {
    let Request {
        method,
        params,
        peer,
        responder,
    } = req;
    convert::with_buffer(|buf| {
        let Some(ok) = interpreter::attach(|py| {
            let result = h
                .args(py, params, peer)
                .and_then(|args| h.func.bind(py).call1(args))
                .and_then(|out| not_awaitable(h, &method, out, client))
                .and_then(|out| convert::encode(&out, buf, 0));
            encode_outcome(py, result, buf)
        }) else {
            return; // the process is exiting: the dropped responder answers
        };
        // Sent with the GIL released. The bytes are valid MessagePack; the
        // core still answers (with an error) if they break the limits.
        let _ = if ok {
            responder.ok_encoded(buf)
        } else {
            responder.error_encoded(buf)
        };
    })
}

/// After encoding a result into `buf`: on failure, replaces it with the
/// error object for the exception. True if `buf` holds a result.
fn encode_outcome(py: Python<'_>, result: PyResult<()>, buf: &mut Vec<u8>) -> bool {
    match result {
        Ok(()) => true,
        Err(e) => {
            buf.clear();
            errors::encode_error_object(py, &e, buf);
            false
        }
    }
}

/// Answers `responder` with the error object for `err`.
fn answer_exception(py: Python<'_>, responder: foorpc::Responder, err: &PyErr) {
    convert::with_buffer(|buf| {
        errors::encode_error_object(py, err, buf);
        let _ = responder.error_encoded(buf);
    })
}

fn run_deferred(h: &Handler, req: Request) {
    let Request {
        params,
        peer,
        responder,
        ..
    } = req;
    interpreter::attach(|py| {
        let args = match h.args(py, params, peer) {
            Ok(a) => a,
            Err(e) => return answer_exception(py, responder, &e),
        };
        let r = match Bound::new(py, Responder::new(responder)) {
            Ok(r) => r,
            Err(e) => return e.write_unraisable(py, None),
        };
        if let Err(e) = h.func.bind(py).call1((r.clone(), args)) {
            r.get().send_exception(py, &e);
        }
    });
}

fn run_notification(h: &Handler, n: Notification, client: bool) {
    let Notification {
        method,
        params,
        peer,
    } = n;
    interpreter::attach(|py| {
        let args = match h.args(py, params, peer) {
            Ok(args) => args,
            // The peer's fault, with nobody to answer: logged like a
            // handler's exception (the handler entry logs those), without a
            // traceback, which would only show foorpc's own frames.
            Err(e) => return log_dropped_notification(py, &method, &e),
        };
        let called = h.func.bind(py).call1(args);
        if let Err(e) = called.and_then(|out| not_awaitable(h, &method, out, client)) {
            e.write_unraisable(py, Some(h.func.bind(py)));
        }
    });
}

/// Logs on the `foorpc` logger that a notification whose params cannot
/// become Python values was dropped.
fn log_dropped_notification(py: Python<'_>, method: &str, e: &PyErr) {
    let logged = py
        .import("logging")
        .and_then(|logging| logging.call_method1("getLogger", ("foorpc",)))
        .and_then(|log| {
            log.call_method1(
                "warning",
                (
                    "foorpc: notification %r dropped: its params cannot become Python values (%s)",
                    method,
                    e.value(py).str()?,
                ),
            )
        });
    if let Err(failed) = logged {
        failed.write_unraisable(py, None);
    }
}

/// Answers one request, once (later answers are ignored). Dropping it
/// unanswered sends an error reply.
#[pyclass(module = "foorpc._native", frozen)]
pub struct Responder {
    inner: Mutex<Option<foorpc::Responder>>,
}

impl Responder {
    fn new(r: foorpc::Responder) -> Responder {
        Responder {
            inner: Mutex::new(Some(r)),
        }
    }

    /// Answers with an encoded result (`ok`) or error object; false if
    /// already answered.
    fn send(&self, ok: bool, encoded: &[u8]) -> bool {
        let r = self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(r) = r else { return false };
        // Bytes that break the limits are answered with an error by the core.
        let _ = if ok {
            r.ok_encoded(encoded)
        } else {
            r.error_encoded(encoded)
        };
        true
    }

    fn send_exception(&self, py: Python<'_>, err: &PyErr) -> bool {
        convert::with_buffer(|buf| {
            errors::encode_error_object(py, err, buf);
            py.detach(|| self.send(false, buf))
        })
    }
}

#[pymethods]
impl Responder {
    /// Answers with `result`; False if the request was already answered.
    /// A result that cannot be converted answers with that error instead.
    fn ok(&self, py: Python<'_>, result: &Bound<'_, PyAny>) -> bool {
        convert::with_buffer(|buf| {
            let ok = encode_outcome(py, convert::encode(result, buf, 0), buf);
            py.detach(|| self.send(ok, buf))
        })
    }

    /// Answers with the error object `error`, sent unchanged.
    fn error(&self, py: Python<'_>, error: &Bound<'_, PyAny>) -> PyResult<bool> {
        convert::with_buffer(|buf| {
            convert::encode(error, buf, 0)?;
            Ok(py.detach(|| self.send(false, buf)))
        })
    }

    /// Answers with the error reply for the exception `exc`
    /// (`[0, "TypeName: message"]`, or a RemoteError's `.error`).
    fn exception(&self, py: Python<'_>, exc: &Bound<'_, PyBaseException>) -> bool {
        self.send_exception(py, &PyErr::from_value(exc.clone().into_any()))
    }

    /// True once answered.
    #[getter]
    fn done(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }
}

struct State {
    methods: Vec<(String, Handler)>,
    notes: Vec<(String, Handler)>,
    note_fallback: Option<Handler>,
    builder: Option<foorpc::ServerBuilder>,
    addresses: Vec<String>,
    server: Option<Arc<foorpc::Server>>,
    /// Started (or starting) or shut down: no more registrations.
    stopped: bool,
    shutdown_requested: bool,
}

/// The native half of `foorpc.Server`: handlers, addresses, the running server.
#[pyclass(module = "foorpc._native", frozen)]
pub struct ServerCore {
    state: Mutex<State>,
    /// Marks the threads running this server's handlers ([`IN_HANDLER_OF`]).
    id: u64,
}

impl ServerCore {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `handler` as `name` in the table `table` picks, replacing
    /// an earlier one of that name (only before start).
    fn register(
        &self,
        table: impl FnOnce(&mut State) -> &mut Vec<(String, Handler)>,
        name: String,
        handler: Handler,
    ) -> PyResult<()> {
        let mut st = self.lock();
        not_running(&st)?;
        let table = table(&mut st);
        table.retain(|(n, _)| *n != name);
        table.push((name, handler));
        Ok(())
    }
}

impl Drop for ServerCore {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(server) = st.server.take() {
            drop_in_background(server);
        }
    }
}

/// Drops the core server of a `ServerCore` being freed (or cleared by the
/// cycle collector), perhaps still running (no `shutdown()`). Dropping it
/// shuts it down, which waits for the calls in flight, whose handlers need
/// the GIL that whoever frees the `ServerCore` holds (any thread, the cycle
/// collector's included, perhaps a handler's own). So that runs on a thread
/// of its own, and the replies in flight are still sent. It also drops the
/// router, whose handlers' references then go (PyO3 releases them the next
/// time it holds the GIL).
fn drop_in_background(server: Arc<foorpc::Server>) {
    // If no thread can be started, the slot still holds the server.
    let slot = Arc::new(Mutex::new(Some(server)));
    let moved = slot.clone();
    let spawned = std::thread::Builder::new()
        .name("foorpc-server-drop".into())
        .spawn(move || drop(moved.lock().unwrap_or_else(|p| p.into_inner()).take()));
    if spawned.is_err() {
        let server = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        // Wait here then, with the GIL released (if Python can no longer
        // be attached to, the closure is dropped unrun: the same wait).
        let _ = Python::try_attach(|py| py.detach(move || drop(server)));
    }
}

fn not_running(st: &State) -> PyResult<()> {
    if st.server.is_some() || st.stopped {
        return Err(PyRuntimeError::new_err(
            "the server was already started; register handlers and bind before start()",
        ));
    }
    Ok(())
}

#[pymethods]
impl ServerCore {
    #[new]
    #[pyo3(
        signature = (*, timeout = Some(30.0), drain_timeout = 10.0, limits = None),
        text_signature = "(*, timeout=30.0, drain_timeout=10.0, limits=None)"
    )]
    fn new(
        timeout: Option<f64>,
        drain_timeout: f64,
        limits: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let call_timeout = match timeout {
            None => None,
            Some(s) => seconds(s)?,
        };
        let drain = seconds(drain_timeout)?.unwrap_or(Duration::from_secs(u32::MAX as u64));
        let builder = foorpc::Server::builder()
            .call_timeout(call_timeout)
            .drain_timeout(drain)
            .limits(crate::limits::from_dict(limits)?);
        Ok(ServerCore {
            state: Mutex::new(State {
                methods: Vec::new(),
                notes: Vec::new(),
                note_fallback: None,
                builder: Some(builder),
                addresses: Vec::new(),
                server: None,
                stopped: false,
                shutdown_requested: false,
            }),
            id: NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Registers a method handler (see `Handler`).
    #[pyo3(signature = (name, func, *, pass_peer = false, deferred = false))]
    fn add_method(
        &self,
        name: String,
        func: Py<PyAny>,
        pass_peer: bool,
        deferred: bool,
    ) -> PyResult<()> {
        let handler = Handler::new(func, pass_peer, deferred);
        self.register(|st| &mut st.methods, name, handler)
    }

    /// Registers a notification handler: run in each connection's arrival
    /// order, on the worker pool (`deferred`: on the I/O thread, for one that
    /// only starts an asyncio task).
    #[pyo3(signature = (name, func, *, pass_peer = false, deferred = false))]
    fn add_notification(
        &self,
        name: String,
        func: Py<PyAny>,
        pass_peer: bool,
        deferred: bool,
    ) -> PyResult<()> {
        let handler = Handler::new(func, pass_peer, deferred);
        self.register(|st| &mut st.notes, name, handler)
    }

    /// Registers the handler of notifications that have none of their own;
    /// it is called with the method name first (run as `add_notification`'s).
    #[pyo3(signature = (func, *, pass_peer = false, deferred = false))]
    fn add_notification_fallback(
        &self,
        func: Py<PyAny>,
        pass_peer: bool,
        deferred: bool,
    ) -> PyResult<()> {
        let mut st = self.lock();
        not_running(&st)?;
        st.note_fallback = Some(Handler::new(func, pass_peer, deferred));
        Ok(())
    }

    /// Binds `tcp://HOST:PORT` (port 0: any free port) or `unix:///PATH` now;
    /// returns the bound address with its real port.
    fn bind(&self, py: Python<'_>, address: String) -> PyResult<String> {
        let listener = py
            .detach(|| {
                let addr = foorpc::Address::parse(&address)?;
                let l = foorpc::transport::Listener::bind(&addr)?;
                let real = l.local_address()?;
                Ok::<_, foorpc::Error>((l, real))
            })
            .map_err(errors::bind_error)?;
        let mut st = self.lock();
        not_running(&st)?;
        let (l, real) = listener;
        let b = st.builder.take().expect("builder present before start");
        st.builder = Some(b.listener(l));
        let real = real.to_string();
        st.addresses.push(real.clone());
        Ok(real)
    }

    /// Starts serving in the background (I/O on foorpc's threads).
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        // The lock is never held while the GIL is released or taken.
        let builder = {
            let mut st = self.lock();
            not_running(&st)?;
            if st.addresses.is_empty() {
                return Err(PyRuntimeError::new_err("bind an address before start()"));
            }
            let router = build_router(
                self.id,
                st.methods.clone(),
                st.notes.clone(),
                st.note_fallback.clone(),
            );
            // Taking the builder out marks the server as started.
            st.stopped = true;
            st.builder
                .take()
                .expect("builder present before start")
                .router(router)
        };
        let server = py.detach(|| builder.start()).map_err(Error)?;
        let server = Arc::new(server);
        let mut st = self.lock();
        st.server = Some(server.clone());
        let shut_down_meanwhile = st.shutdown_requested;
        drop(st);
        if shut_down_meanwhile {
            py.detach(|| server.shutdown());
        }
        Ok(())
    }

    /// Graceful shutdown: stop accepting, let calls in flight finish (up to
    /// the drain timeout), close connections. Blocks until done; idempotent.
    /// The drain runs on a thread of its own and is waited for in slices, so
    /// that Ctrl-C (an exception from a signal handler) ends the wait; the
    /// drain then finishes by itself, within the drain timeout.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        let server = {
            let mut st = self.lock();
            st.stopped = true;
            st.shutdown_requested = true;
            st.builder = None;
            st.server.clone()
        };
        let Some(s) = server else { return Ok(()) };
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        let drain = s.clone();
        let spawned = std::thread::Builder::new()
            .name("foorpc-server-stop".into())
            .spawn(move || {
                drain.shutdown();
                drop(done_tx);
            });
        if spawned.is_err() {
            py.detach(|| s.shutdown());
            return Ok(());
        }
        let mut done = done;
        loop {
            // The receiver goes in and comes back: it is not Sync.
            let (outcome, rx) = py.detach(move || {
                let outcome = done.recv_timeout(Duration::from_millis(50));
                (outcome, done)
            });
            done = rx;
            match outcome {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => py.check_signals()?,
                _ => return Ok(()),
            }
        }
    }

    /// True on a thread that is running one of this server's handlers now
    /// (a plain one on the worker pool, or an entry on the I/O thread).
    fn in_handler(&self) -> bool {
        IN_HANDLER_OF.with(|c| c.get()) == self.id
    }

    /// The bound addresses, with real ports.
    #[getter]
    fn addresses(&self) -> Vec<String> {
        self.lock().addresses.clone()
    }

    /// True between start() and shutdown().
    #[getter]
    fn running(&self) -> bool {
        let st = self.lock();
        st.server.is_some() && !st.shutdown_requested
    }

    /// Connections open now.
    #[getter]
    fn connection_count(&self, py: Python<'_>) -> usize {
        let server = self.lock().server.clone();
        match server {
            Some(s) => py.detach(|| s.connection_count()),
            None => 0,
        }
    }

    /// The handlers, for the cycle collector: handlers often refer to the
    /// `foorpc.Server` that holds this object (its async handlers always do).
    /// Each handler's callable is one reference of this object's; the running
    /// router's clones of it share that reference and are not visited again.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // Never wait in the collector: a state in use now is skipped this
        // time (its handlers then look referenced from elsewhere, which only
        // delays their collection).
        let st = match self.state.try_lock() {
            Ok(st) => st,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(()),
        };
        let handlers = st.methods.iter().chain(st.notes.iter()).map(|(_, h)| h);
        for h in handlers.chain(st.note_fallback.iter()) {
            visit.call(h.func.as_ref())?;
        }
        Ok(())
    }

    /// Breaks a reference cycle: drops the handlers and shuts the server down
    /// as if this object were freed (a shut down server is also freed).
    fn __clear__(&self) {
        let (methods, notes, fallback, server) = {
            let mut st = self.lock();
            st.stopped = true;
            st.shutdown_requested = true;
            st.builder = None;
            (
                std::mem::take(&mut st.methods),
                std::mem::take(&mut st.notes),
                st.note_fallback.take(),
                st.server.take(),
            )
        };
        // Dropped outside the lock: a callable freed here may run Python.
        drop((methods, notes, fallback));
        if let Some(server) = server {
            drop_in_background(server);
        }
    }
}
