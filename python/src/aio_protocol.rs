//! The three parts of asyncio's protocol for future-compatible objects that
//! a Task uses on every `await` of a `CallFuture`, installed on the class by
//! hand at import: `_asyncio_future_blocking` (read, then set to False) as a
//! struct member, and `get_loop()` and `add_done_callback(cb, context=ctx)`
//! as plain C methods.
//!
//! Why by hand: PyO3's getter, setter and method trampolines (thread-local
//! bookkeeping, argument extraction with keyword handling) made these four
//! steps cost 650 instructions more per asyncio call (6% of it). A
//! member descriptor is read and written by CPython itself, and these two
//! methods take their arguments straight from the vectorcall array.

use pyo3::exceptions::{PySystemError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyTuple, PyType};

use crate::aio_future::CallFuture;
use crate::cmethod::{
    add_fastcall, add_member, add_noargs, is_name, FastArgs, FastMethod, NoArgsMethod,
};

/// Installs the member and the two methods on the `CallFuture` class.
pub fn install(class: &Bound<'_, PyType>) -> PyResult<()> {
    add_member(
        class,
        ffi::PyMemberDef {
            name: c"_asyncio_future_blocking".as_ptr(),
            type_code: ffi::Py_T_BOOL,
            offset: blocking_offset(class)?,
            flags: 0,
            doc: c"Part of asyncio's protocol for future-compatible objects.".as_ptr(),
        },
    )?;
    add_noargs::<GetLoop>(
        class,
        c"get_loop",
        c"get_loop($self, /)\n--\n\nThe event loop the future belongs to.",
    )?;
    add_fastcall::<AddDoneCallback>(
        class,
        c"add_done_callback",
        c"add_done_callback($self, callback, /, *, context=None)\n--\n\n\
        Calls callback(future) in `context` (default: a copy of the current one) \
        once the future is done.",
    )
}

/// Where `CallFuture::blocking` lies in a `CallFuture` object, measured on
/// one. An `AtomicBool` has the layout of a `bool`: one byte, 0 or 1, which
/// is what a `Py_T_BOOL` member reads and writes. Every access to it is made
/// holding the GIL, so CPython's plain writes never race the atomic ones.
fn blocking_offset(class: &Bound<'_, PyType>) -> PyResult<ffi::Py_ssize_t> {
    let py = class.py();
    let probe = Py::new(py, CallFuture::new(py.None(), None))?;
    let start = probe.as_ptr() as usize;
    let field = &probe.get().blocking as *const _ as usize;
    let size: usize = class.getattr("__basicsize__")?.extract()?;
    match field.checked_sub(start) {
        Some(offset) if offset < size => Ok(offset as ffi::Py_ssize_t),
        _ => Err(PySystemError::new_err(
            "foorpc: CallFuture's blocking flag lies outside its object",
        )),
    }
}

/// SAFETY: `slf` must be a `CallFuture` (see [`FastMethod::call`]).
unsafe fn future<'py>(py: Python<'py>, slf: *mut ffi::PyObject) -> Bound<'py, CallFuture> {
    Bound::from_borrowed_ptr(py, slf).cast_into_unchecked()
}

struct GetLoop;

impl NoArgsMethod for GetLoop {
    unsafe fn call(py: Python<'_>, slf: *mut ffi::PyObject) -> PyResult<Py<PyAny>> {
        Ok(future(py, slf).get().event_loop().clone_ref(py))
    }
}

struct AddDoneCallback;

impl FastMethod for AddDoneCallback {
    unsafe fn call<'py>(
        py: Python<'py>,
        slf: *mut ffi::PyObject,
        args: FastArgs<'_, 'py>,
    ) -> PyResult<Py<PyAny>> {
        if args.len() != 1 {
            return Err(PyTypeError::new_err(format!(
                "add_done_callback() takes exactly one positional argument ({} given)",
                args.len()
            )));
        }
        let mut context = None;
        if let Some(names) = args.keyword_names() {
            if !is_context_only(&names)? {
                return Err(PyTypeError::new_err(format!(
                    "add_done_callback() takes only `context` as a keyword argument, got {}",
                    names.repr()?
                )));
            }
            context = args
                .keywords()
                .next()
                .map(|(_, v)| v)
                .filter(|c| !c.is_none());
        }
        CallFuture::add_callback(
            &future(py, slf),
            args.get(0).to_owned().unbind(),
            context.map(|c| c.to_owned().unbind()),
        )?;
        Ok(py.None())
    }
}

/// The first keyword-names tuple seen that is `("context",)`, kept alive so
/// that its address stays its own: a Task passes the same tuple every time.
static CONTEXT_ONLY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Whether the keyword names of a call are exactly `("context",)`: by the
/// tuple's identity first, as the names a Task passes are not interned.
fn is_context_only(names: &Bound<'_, PyTuple>) -> PyResult<bool> {
    let py = names.py();
    if CONTEXT_ONLY
        .get(py)
        .is_some_and(|known| known.as_ptr() == names.as_ptr())
    {
        return Ok(true);
    }
    if names.len() != 1 || !is_name(&names.get_item(0)?, pyo3::intern!(py, "context"))? {
        return Ok(false);
    }
    let _ = CONTEXT_ONLY.get_or_init(py, || names.clone().into_any().unbind());
    Ok(true)
}
