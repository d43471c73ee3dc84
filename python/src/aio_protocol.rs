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

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PySystemError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyTuple, PyType};

use crate::aio_future::CallFuture;

/// The definitions the descriptors point to; they must outlive the class.
struct Defs {
    blocking: ffi::PyMemberDef,
    get_loop: ffi::PyMethodDef,
    add_done_callback: ffi::PyMethodDef,
}

/// Installs the member and the two methods on the `CallFuture` class.
pub fn install(class: &Bound<'_, PyType>) -> PyResult<()> {
    let py = class.py();
    let offset = blocking_offset(class)?;
    let defs: &'static mut Defs = Box::leak(Box::new(Defs {
        blocking: ffi::PyMemberDef {
            name: c"_asyncio_future_blocking".as_ptr(),
            type_code: ffi::Py_T_BOOL,
            offset,
            flags: 0,
            doc: c"Part of asyncio's protocol for future-compatible objects.".as_ptr(),
        },
        get_loop: ffi::PyMethodDef {
            ml_name: c"get_loop".as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunction: get_loop,
            },
            ml_flags: ffi::METH_NOARGS,
            ml_doc: c"get_loop($self, /)\n--\n\nThe event loop the future belongs to.".as_ptr(),
        },
        add_done_callback: ffi::PyMethodDef {
            ml_name: c"add_done_callback".as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunctionFastWithKeywords: add_done_callback,
            },
            ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            ml_doc: c"add_done_callback($self, callback, /, *, context=None)\n--\n\n\
                Calls callback(future) in `context` (default: a copy of the current one) \
                once the future is done."
                .as_ptr(),
        },
    }));
    let ty = class.as_type_ptr();
    // SAFETY: `ty` is a live class and the definitions are never freed.
    let (member, get_loop, add_done_callback) = unsafe {
        (
            new_descriptor(py, ffi::PyDescr_NewMember(ty, &mut defs.blocking))?,
            new_descriptor(py, ffi::PyDescr_NewMethod(ty, &mut defs.get_loop))?,
            new_descriptor(py, ffi::PyDescr_NewMethod(ty, &mut defs.add_done_callback))?,
        )
    };
    class.setattr("_asyncio_future_blocking", member)?;
    class.setattr("get_loop", get_loop)?;
    class.setattr("add_done_callback", add_done_callback)
}

/// SAFETY: `descr` is a new reference or NULL with an exception set.
unsafe fn new_descriptor(py: Python<'_>, descr: *mut ffi::PyObject) -> PyResult<Bound<'_, PyAny>> {
    Bound::from_owned_ptr_or_err(py, descr)
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

/// Runs `body` for a C entry point: an error is raised in Python (NULL is
/// returned), and a panic becomes a SystemError instead of crossing into
/// CPython.
fn entry(body: impl FnOnce(Python<'_>) -> PyResult<Py<PyAny>>) -> *mut ffi::PyObject {
    // SAFETY: CPython calls methods holding the GIL.
    let py = unsafe { Python::assume_attached() };
    let outcome = catch_unwind(AssertUnwindSafe(|| body(py))).unwrap_or_else(|_| {
        Err(PySystemError::new_err(
            "foorpc: panic in a CallFuture method",
        ))
    });
    match outcome {
        Ok(obj) => obj.into_ptr(),
        Err(err) => {
            err.restore(py);
            std::ptr::null_mut()
        }
    }
}

/// SAFETY: `slf` must be a `CallFuture`: a method descriptor checks that
/// before it calls, both unbound and when it binds.
unsafe fn future<'py>(py: Python<'py>, slf: *mut ffi::PyObject) -> Bound<'py, CallFuture> {
    Bound::from_borrowed_ptr(py, slf).cast_into_unchecked()
}

unsafe extern "C" fn get_loop(
    slf: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    entry(|py| Ok(future(py, slf).get().event_loop().clone_ref(py)))
}

unsafe extern "C" fn add_done_callback(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    entry(|py| {
        let arg = |i: usize| Bound::from_borrowed_ptr(py, *args.add(i));
        if nargs != 1 {
            return Err(PyTypeError::new_err(format!(
                "add_done_callback() takes exactly one positional argument ({nargs} given)"
            )));
        }
        let context = if kwnames.is_null() {
            None
        } else {
            let names = Bound::from_borrowed_ptr(py, kwnames);
            if !is_context_only(&names)? {
                return Err(PyTypeError::new_err(format!(
                    "add_done_callback() takes only `context` as a keyword argument, got {}",
                    names.repr()?
                )));
            }
            Some(arg(1)).filter(|c| !c.is_none())
        };
        CallFuture::add_callback(
            &future(py, slf),
            arg(0).unbind(),
            context.map(Bound::unbind),
        )?;
        Ok(py.None())
    })
}

/// The first keyword-names tuple seen that is `("context",)`, kept alive so
/// that its address stays its own: a Task passes the same tuple every time.
static CONTEXT_ONLY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Whether the keyword names of a call are exactly `("context",)`: by the
/// tuple's identity first, as the names a Task passes are not interned.
fn is_context_only(names: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = names.py();
    if CONTEXT_ONLY
        .get(py)
        .is_some_and(|known| known.as_ptr() == names.as_ptr())
    {
        return Ok(true);
    }
    let names = names.cast::<PyTuple>()?;
    if names.len() != 1 || !names.get_item(0)?.eq("context")? {
        return Ok(false);
    }
    let _ = CONTEXT_ONLY.get_or_init(py, || names.clone().into_any().unbind());
    Ok(true)
}
