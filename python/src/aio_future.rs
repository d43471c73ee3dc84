//! `CallFuture`, the awaitable of an asyncio call, and `Completions`, which
//! resolves those futures on their event loop in batches.
//!
//! Why not `asyncio.Future`: a Task waiting on one is woken through
//! `loop.call_soon`, one handle and one loop pass per call, which alone caps
//! an asyncio client far below the wire's rate. `CallFuture` speaks the
//! protocol asyncio defines for future-compatible objects
//! (`_asyncio_future_blocking`, `add_done_callback`, `get_loop`, ...), so
//! Tasks, `gather`, `wait_for` and `shield` accept it; and it runs its done
//! callbacks as soon as its reply is delivered, in the callback's context.
//! That delivery only ever happens from a callback the loop itself runs (the
//! socket's reader, a timer, a `call_soon` drain), never inside a task, so a
//! woken task steps exactly as if the loop had called it. It also has `send`,
//! `throw` and `close`, so `asyncio.create_task(client.call(...))` works.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use foorpc::Value;
use pyo3::exceptions::asyncio::{CancelledError, InvalidStateError};
use pyo3::exceptions::{PyKeyboardInterrupt, PyStopIteration, PySystemExit};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use pyo3::{PyTraverseError, PyVisit};

use crate::aio_await::await_iter;
use crate::convert;
use crate::errors::Error;
use crate::interpreter;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum Outcome {
    Pending,
    Value(Py<PyAny>),
    /// An exception instance.
    Error(Py<PyAny>),
    /// Cancelled, with the message given to `cancel()`.
    Cancelled(Option<Py<PyAny>>),
}

/// A done callback and the `contextvars.Context` it runs in.
type Callback = (Py<PyAny>, Py<PyAny>);

struct FutureState {
    outcome: Outcome,
    callbacks: Callbacks,
}

/// Done callbacks in registration order. There is nearly always exactly one
/// (the awaiting Task's wake-up), kept inline so that registering it does
/// not allocate.
#[derive(Default)]
struct Callbacks {
    /// None only while `rest` is empty too.
    first: Option<Callback>,
    rest: Vec<Callback>,
}

impl Callbacks {
    fn push(&mut self, callback: Callback) {
        if self.first.is_none() {
            self.first = Some(callback);
        } else {
            self.rest.push(callback);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Callback> {
        self.first.iter().chain(&self.rest)
    }
}

impl IntoIterator for Callbacks {
    type Item = Callback;
    type IntoIter = std::iter::Chain<std::option::IntoIter<Callback>, std::vec::IntoIter<Callback>>;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

/// The awaitable result of one asyncio call (a future of its event loop).
///
/// `await` it, or hand it to `asyncio.gather`, `wait_for`, `shield` or
/// `create_task`. Cancelling it forgets the call: a late reply is ignored.
#[pyclass(module = "foorpc._native", frozen)]
pub struct CallFuture {
    event_loop: Py<PyAny>,
    pub(crate) blocking: AtomicBool,
    state: Mutex<FutureState>,
    /// The call to forget when the future is cancelled. It does not keep
    /// the connection open: the connection holds this future until the
    /// call ends, and a strong link back would be a cycle that Python's
    /// collector cannot see.
    call: Option<foorpc::CallCanceller>,
}

impl CallFuture {
    pub fn new(event_loop: Py<PyAny>, call: Option<foorpc::CallCanceller>) -> CallFuture {
        CallFuture {
            event_loop,
            blocking: AtomicBool::new(false),
            state: Mutex::new(FutureState {
                outcome: Outcome::Pending,
                callbacks: Callbacks::default(),
            }),
            call,
        }
    }

    /// Sets the call's outcome and runs the done callbacks right here (see
    /// the module docs for why that is safe: the caller is a loop callback).
    fn resolve(
        this: &Bound<'_, CallFuture>,
        outcome: foorpc::Result<Value>,
        wakeup_arg: &Py<PyAny>,
    ) -> PyResult<()> {
        let py = this.py();
        let fut = this.get();
        if !matches!(lock(&fut.state).outcome, Outcome::Pending) {
            return Ok(()); // cancelled meanwhile
        }
        let outcome = match outcome.map_err(Error) {
            Ok(v) => match convert::result_to_py(py, v) {
                Ok(obj) => Outcome::Value(obj.unbind()),
                Err(e) => Outcome::Error(e.into_value(py).into_any()),
            },
            Err(e) => Outcome::Error(PyErr::from(e).into_value(py).into_any()),
        };
        // The shortcut is for values only: an error must reach a waiter that
        // reads the outcome from what it is woken with.
        let shortcut = matches!(outcome, Outcome::Value(_));
        let callbacks = {
            let mut st = lock(&fut.state);
            if !matches!(st.outcome, Outcome::Pending) {
                return Ok(());
            }
            st.outcome = outcome;
            std::mem::take(&mut st.callbacks)
        };
        let mut callbacks = callbacks.into_iter();
        while let Some((callback, context)) = callbacks.next() {
            let arg = if shortcut && is_task_wakeup(callback.bind(py)) {
                wakeup_arg.bind(py)
            } else {
                this.as_any()
            };
            let ran = context_run(py)?.call1(py, (&context, &callback, arg));
            if let Err(err) = ran {
                if let Err(fatal) = fut.report(py, err, &callback) {
                    // SystemExit or KeyboardInterrupt leaves; the other
                    // callbacks still run, on the loop's next pass.
                    let _ = fut.schedule(this, callbacks);
                    return Err(fatal);
                }
            }
        }
        Ok(())
    }

    /// Hands an exception raised by a done callback to the loop's exception
    /// handler, as asyncio's handles do; KeyboardInterrupt and SystemExit
    /// propagate.
    fn report(&self, py: Python<'_>, err: PyErr, callback: &Py<PyAny>) -> PyResult<()> {
        if err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py) {
            return Err(err);
        }
        let context = PyDict::new(py);
        let text = callback
            .bind(py)
            .repr()
            .map(|r| r.to_string())
            .unwrap_or_default();
        context.set_item("message", format!("Exception in callback {text}"))?;
        context.set_item("exception", err.into_value(py))?;
        self.event_loop
            .call_method1(py, "call_exception_handler", (context,))?;
        Ok(())
    }

    /// Schedules callbacks the way asyncio.Future does (used when the
    /// future completes outside a loop callback: cancel, late registration).
    fn schedule(
        &self,
        this: &Bound<'_, CallFuture>,
        callbacks: impl IntoIterator<Item = Callback>,
    ) -> PyResult<()> {
        let py = this.py();
        for (callback, context) in callbacks {
            let kwargs = PyDict::new(py);
            kwargs.set_item("context", context)?;
            self.event_loop
                .call_method(py, "call_soon", (callback, this), Some(&kwargs))?;
        }
        Ok(())
    }

    /// The event loop the future belongs to.
    pub(crate) fn event_loop(&self) -> &Py<PyAny> {
        &self.event_loop
    }

    /// `add_done_callback` (see `aio_protocol`): without a context, the
    /// caller's current one, as asyncio.Future does.
    pub(crate) fn add_callback(
        this: &Bound<'_, CallFuture>,
        callback: Py<PyAny>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let fut = this.get();
        let context = match context {
            Some(c) => c,
            None => copy_context(this.py())?,
        };
        {
            let mut st = lock(&fut.state);
            if matches!(st.outcome, Outcome::Pending) {
                st.callbacks.push((callback, context));
                return Ok(());
            }
        }
        fut.schedule(this, [(callback, context)])
    }

    fn is_done(&self) -> bool {
        !matches!(lock(&self.state).outcome, Outcome::Pending)
    }

    /// What an awaiting coroutine gets now: wait, or the result (or error).
    pub(crate) fn step(&self, py: Python<'_>) -> Step {
        match &lock(&self.state).outcome {
            Outcome::Pending => Step::Pending,
            Outcome::Value(v) => Step::Done(Ok(v.clone_ref(py))),
            Outcome::Error(e) => Step::Done(Err(raise_stored(e.bind(py)))),
            Outcome::Cancelled(msg) => Step::Done(Err(cancelled_error(py, msg.as_ref()))),
        }
    }

    /// Forgets the call and marks the future cancelled; false if it was done.
    pub(crate) fn cancel_with(
        this: &Bound<'_, CallFuture>,
        msg: Option<Py<PyAny>>,
    ) -> PyResult<bool> {
        let fut = this.get();
        let callbacks = {
            let mut st = lock(&fut.state);
            if !matches!(st.outcome, Outcome::Pending) {
                return Ok(false);
            }
            st.outcome = Outcome::Cancelled(msg);
            std::mem::take(&mut st.callbacks)
        };
        if let Some(call) = &fut.call {
            call.cancel();
        }
        fut.schedule(this, callbacks)?;
        Ok(true)
    }
}

/// The C function behind the done callback a C asyncio Task registers on
/// the future it waits for (`task_wakeup`, bound to the task); 0 until seen.
static TASK_WAKEUP_FN: AtomicUsize = AtomicUsize::new(0);

fn is_task_wakeup(callback: &Bound<'_, PyAny>) -> bool {
    // SAFETY: both calls only read a valid object.
    let function = unsafe {
        if pyo3::ffi::PyCFunction_Check(callback.as_ptr()) == 0 {
            return false;
        }
        pyo3::ffi::PyCFunction_GetFunction(callback.as_ptr()).map_or(0, |f| f as usize)
    };
    let known = TASK_WAKEUP_FN.load(Ordering::Relaxed);
    if known != 0 {
        return function == known;
    }
    let named = callback
        .getattr("__name__")
        .is_ok_and(|n| n.eq("task_wakeup").unwrap_or(false));
    let of_task = || -> PyResult<bool> {
        let task = callback.py().import("asyncio")?.getattr("Task")?;
        callback.getattr("__self__")?.is_instance(&task)
    };
    if function != 0 && named && of_task().unwrap_or(false) {
        TASK_WAKEUP_FN.store(function, Ordering::Relaxed);
        return true;
    }
    false
}

/// What Task wake-ups are called with instead of the `CallFuture`: an
/// `asyncio.Future` done with None.
///
/// Why: the C `task_wakeup(fut)` of every CPython from 3.10 on reads a
/// foreign future's outcome with `PyObject_CallMethod(fut, "result", NULL)`,
/// which makes a new "result" string, misses the method cache and walks the
/// MRO on every call (about 9% of an asyncio call on 3.11, 8% on 3.12).
/// Given an `asyncio.Future` it reads the result directly; it does nothing
/// else with its argument. A wake-up that gets a future done with None
/// resumes the coroutine, whose `await` then takes the real outcome (value
/// or exception) from the `CallFuture` itself, exactly as if the result had
/// come through the wake-up.
fn task_wakeup_arg(event_loop: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let done = event_loop.call_method0("create_future")?;
    done.call_method1("set_result", (event_loop.py().None(),))?;
    Ok(done.unbind())
}

static CONTEXT_RUN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static COPY_CONTEXT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn copy_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    COPY_CONTEXT
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("contextvars")?.getattr("copy_context")?.unbind())
        })?
        .call0(py)
}

/// `contextvars.Context.run`, unbound: calling it with the context first
/// spares a bound-method object per callback.
fn context_run(py: Python<'_>) -> PyResult<&Py<PyAny>> {
    CONTEXT_RUN.get_or_try_init(py, || {
        Ok(py
            .import("contextvars")?
            .getattr("Context")?
            .getattr("run")?
            .unbind())
    })
}

/// The stored exception, to raise again: its traceback is cleared first, so
/// that raising it once more does not grow it (asyncio.Future does the same).
fn raise_stored(exc: &Bound<'_, PyAny>) -> PyErr {
    // SAFETY: `exc` is an exception instance (only those are stored).
    unsafe { pyo3::ffi::PyException_SetTraceback(exc.as_ptr(), pyo3::ffi::Py_None()) };
    PyErr::from_value(exc.clone())
}

fn cancelled_error(py: Python<'_>, msg: Option<&Py<PyAny>>) -> PyErr {
    match msg {
        Some(m) => CancelledError::new_err((m.clone_ref(py),)),
        None => CancelledError::new_err(()),
    }
}

#[pymethods]
impl CallFuture {
    fn done(&self) -> bool {
        self.is_done()
    }

    fn cancelled(&self) -> bool {
        matches!(lock(&self.state).outcome, Outcome::Cancelled(_))
    }

    /// The call's result; raises its error, CancelledError, or
    /// InvalidStateError while it is pending.
    fn result(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self.step(py) {
            Step::Pending => Err(InvalidStateError::new_err("Result is not set.")),
            Step::Done(r) => r,
        }
    }

    /// The call's exception (None if it succeeded).
    fn exception(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        match &lock(&self.state).outcome {
            Outcome::Pending => Err(InvalidStateError::new_err("Exception is not set.")),
            Outcome::Value(_) => Ok(None),
            Outcome::Error(e) => Ok(Some(e.clone_ref(py))),
            Outcome::Cancelled(msg) => Err(cancelled_error(py, msg.as_ref())),
        }
    }

    /// Removes every registration of `callback`; returns how many.
    fn remove_done_callback(&self, callback: &Bound<'_, PyAny>) -> PyResult<usize> {
        let py = callback.py();
        // `==` may run any Python code (even complete or cancel this
        // future), so compare copies with the state unlocked, then remove
        // the matching objects from whatever is registered by then.
        let registered: Vec<Py<PyAny>> = lock(&self.state)
            .callbacks
            .iter()
            .map(|(cb, _)| cb.clone_ref(py))
            .collect();
        let mut matching = Vec::new();
        for cb in &registered {
            if cb.bind(py).eq(callback)? {
                matching.push(cb.as_ptr());
            }
        }
        let mut removed = Vec::new();
        {
            let mut st = lock(&self.state);
            for entry in std::mem::take(&mut st.callbacks) {
                if matching.contains(&entry.0.as_ptr()) {
                    removed.push(entry);
                } else {
                    st.callbacks.push(entry);
                }
            }
        }
        // Dropped unlocked: a destructor may run Python code.
        Ok(removed.len())
    }

    /// Cancels the future and forgets the call; false if it was done.
    #[pyo3(signature = (msg = None))]
    fn cancel(slf: &Bound<'_, Self>, msg: Option<Py<PyAny>>) -> PyResult<bool> {
        CallFuture::cancel_with(slf, msg)
    }

    /// The message given to `cancel()` (read by `asyncio.gather`).
    #[getter]
    fn _cancel_message(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        match &lock(&self.state).outcome {
            Outcome::Cancelled(msg) => msg.as_ref().map(|m| m.clone_ref(py)),
            _ => None,
        }
    }

    /// The CancelledError a cancelled future raises (used by `asyncio.gather`).
    fn _make_cancelled_error(&self, py: Python<'_>) -> Py<PyAny> {
        let msg = match &lock(&self.state).outcome {
            Outcome::Cancelled(msg) => msg.as_ref().map(|m| m.clone_ref(py)),
            _ => None,
        };
        cancelled_error(py, msg.as_ref()).into_value(py).into_any()
    }

    /// The objects this future holds, for Python's cycle collector: a task
    /// waiting on a future that never completes forms a cycle through it
    /// (task, coroutine, this future, its callbacks, the task).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        // Never blocks: a state locked right now is left unvisited, which
        // only keeps its objects alive until the next collection.
        if let Ok(st) = self.state.try_lock() {
            match &st.outcome {
                Outcome::Value(v) | Outcome::Error(v) => visit.call(v)?,
                Outcome::Cancelled(Some(m)) => visit.call(m)?,
                Outcome::Cancelled(None) | Outcome::Pending => {}
            }
            for (callback, context) in st.callbacks.iter() {
                visit.call(callback)?;
                visit.call(context)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let callbacks = std::mem::take(&mut lock(&self.state).callbacks);
        drop(callbacks);
    }

    /// An iterator that yields this future to the awaiting task until it is
    /// done, then returns the result (see `aio_await`).
    fn __await__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        await_iter(slf)
    }

    fn __iter__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        await_iter(slf)
    }

    /// Coroutine protocol: yields itself until done, then returns the result.
    fn __next__(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        let fut = slf.get();
        match fut.step(slf.py()) {
            Step::Pending => {
                fut.blocking.store(true, Ordering::Relaxed);
                Ok(Some(slf.clone().into_any().unbind()))
            }
            Step::Done(r) => Err(PyStopIteration::new_err((r?,))),
        }
    }

    /// Coroutine protocol (so that `create_task` accepts the future).
    fn send(slf: &Bound<'_, Self>, _value: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
        CallFuture::__next__(slf)
    }

    /// Coroutine protocol: the awaiting code gives up; the call is forgotten
    /// and the exception raised.
    #[pyo3(signature = (typ, val = None, _tb = None))]
    fn throw(
        slf: &Bound<'_, Self>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        CallFuture::cancel_with(slf, None)?;
        let exc = match val.filter(|v| !v.is_none()) {
            Some(v) if v.is_instance_of::<pyo3::exceptions::PyBaseException>() => v.clone(),
            Some(v) => typ.call1((v,))?,
            None if typ.is_instance_of::<pyo3::types::PyType>() => typ.call0()?,
            None => typ.clone(),
        };
        Err(PyErr::from_value(exc))
    }

    /// Coroutine protocol: forgets the call if it is still pending.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        CallFuture::cancel_with(slf, None)?;
        Ok(())
    }

    fn __repr__(&self) -> &'static str {
        match lock(&self.state).outcome {
            Outcome::Pending => "<foorpc.CallFuture pending>",
            Outcome::Value(_) => "<foorpc.CallFuture finished>",
            Outcome::Error(_) => "<foorpc.CallFuture failed>",
            Outcome::Cancelled(_) => "<foorpc.CallFuture cancelled>",
        }
    }
}

/// See [`CallFuture::step`].
pub(crate) enum Step {
    Pending,
    Done(PyResult<Py<PyAny>>),
}

type Completed = (Py<CallFuture>, foorpc::Result<Value>);

struct Queue {
    items: Vec<Completed>,
    /// A drain is scheduled or running: pushes need not schedule another.
    draining: bool,
}

/// Delivers call outcomes to the futures of one event loop, in batches.
///
/// Any thread may push an outcome; only the push that finds no drain
/// scheduled takes the GIL to schedule one with `call_soon_threadsafe`. A
/// loop callback that is about to produce outcomes itself (the socket's
/// reader) claims the drain first and drains right after: no scheduling, no
/// extra loop pass.
#[pyclass(module = "foorpc._native", frozen)]
pub struct Completions {
    queue: Mutex<Queue>,
    call_soon_threadsafe: Py<PyAny>,
    /// See [`task_wakeup_arg`].
    wakeup_arg: Py<PyAny>,
}

impl Completions {
    /// Completions for the futures of `event_loop`.
    pub fn new(event_loop: &Bound<'_, PyAny>) -> PyResult<Completions> {
        Ok(Completions {
            queue: Mutex::new(Queue {
                items: Vec::new(),
                draining: false,
            }),
            call_soon_threadsafe: event_loop.getattr("call_soon_threadsafe")?.unbind(),
            wakeup_arg: task_wakeup_arg(event_loop)?,
        })
    }

    pub fn push(this: &Py<Completions>, item: Completed) {
        let schedule = {
            let mut q = lock(&this.get().queue);
            q.items.push(item);
            !std::mem::replace(&mut q.draining, true)
        };
        if schedule {
            interpreter::attach(|py| {
                let scheduled = this
                    .get()
                    .call_soon_threadsafe
                    .call1(py, (this.clone_ref(py),));
                if scheduled.is_err() {
                    // Only a closed loop refuses: its futures can never be
                    // resolved or awaited again, so what they hold (done
                    // callbacks, tasks, the client) is let go now rather
                    // than kept by this queue for good.
                    let items = std::mem::take(&mut lock(&this.get().queue).items);
                    drop(items);
                }
            });
        }
    }

    /// Claims the drain for a loop callback that calls [`Completions::drain`] next.
    pub fn claim(&self) {
        lock(&self.queue).draining = true;
    }

    /// Resolves queued futures until the queue stays empty (on the loop).
    pub fn drain(this: &Bound<'_, Completions>) -> PyResult<()> {
        Completions::drain_in_steps(this, usize::MAX, || {})
    }

    /// [`Completions::drain`], calling `step` after every `every` futures:
    /// the reader writes the requests the woken tasks made so far, so the
    /// server works on them while the rest of the batch is delivered.
    ///
    /// When a callback raises SystemExit or KeyboardInterrupt, the error
    /// propagates and what is left is delivered by a drain scheduled on the
    /// loop's next pass: no queued outcome is lost.
    pub fn drain_in_steps(
        this: &Bound<'_, Completions>,
        every: usize,
        mut step: impl FnMut(),
    ) -> PyResult<()> {
        let (py, me) = (this.py(), this.get());
        let mut since_step = 0;
        loop {
            let items = {
                let mut q = lock(&me.queue);
                if q.items.is_empty() {
                    q.draining = false;
                    return Ok(());
                }
                std::mem::take(&mut q.items)
            };
            let mut items = items.into_iter();
            while let Some((fut, outcome)) = items.next() {
                since_step += 1;
                if since_step == every {
                    since_step = 0;
                    step();
                }
                if let Err(e) = CallFuture::resolve(fut.bind(py), outcome, &me.wakeup_arg) {
                    let left = {
                        let mut q = lock(&me.queue);
                        let newer = std::mem::replace(&mut q.items, items.collect());
                        q.items.extend(newer);
                        q.draining = !q.items.is_empty();
                        q.draining
                    };
                    if left {
                        let _ = me.call_soon_threadsafe.call1(py, (this,));
                    }
                    return Err(e);
                }
            }
        }
    }
}

#[pymethods]
impl Completions {
    /// Resolves the queued futures (scheduled on the loop by `push`).
    fn __call__(slf: &Bound<'_, Self>) -> PyResult<()> {
        Completions::drain(slf)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.call_soon_threadsafe)?;
        visit.call(&self.wakeup_arg)?;
        if let Ok(q) = self.queue.try_lock() {
            for (fut, _) in &q.items {
                visit.call(fut)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let items = std::mem::take(&mut lock(&self.queue).items);
        drop(items);
    }

    /// Outcomes queued and not yet delivered.
    #[getter]
    fn queued(&self) -> usize {
        lock(&self.queue).items.len()
    }
}

/// What a pending asyncio call's completion holds (see
/// `LoopDriver::__traverse__`): its future, and the queue it is delivered
/// through.
pub type PendingHeld = (Py<CallFuture>, Py<Completions>);

/// Starts `method(*params)` on `peer`, the params encoded as a MessagePack
/// array by `encode_params`; returns the future its outcome resolves through
/// `completions` (which belongs to `event_loop`), and the call's deadline.
pub fn start_call(
    py: Python<'_>,
    peer: &foorpc::Peer,
    completions: &Py<Completions>,
    event_loop: &Py<PyAny>,
    method: &str,
    encode_params: impl FnOnce(&mut Vec<u8>) -> PyResult<()>,
    timeout: Option<std::time::Duration>,
) -> PyResult<(Py<CallFuture>, Option<std::time::Instant>)> {
    let pending = convert::with_buffer(|buf| {
        encode_params(buf)?;
        peer.call_async_encoded(method, buf, timeout)
            .map_err(|e| PyErr::from(Error(e)))
    })?;
    let fut = Py::new(
        py,
        CallFuture::new(event_loop.clone_ref(py), Some(pending.canceller())),
    )?;
    let deadline = pending.deadline();
    let held = (fut.clone_ref(py), completions.clone_ref(py));
    pending.on_complete_with(held, |(target, completions), outcome| {
        Completions::push(&completions, (target, outcome))
    });
    Ok((fut, deadline))
}
