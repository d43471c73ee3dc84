//! The iterator `await call_future` drives: a small type with an `am_send`
//! slot, built by hand with `PyType_FromSpec` (stable ABI since 3.10).
//!
//! Why by hand: an awaited object without `am_send` must return its result by
//! raising `StopIteration(result)`, an exception object created, normalised
//! and taken apart again for every call; with `am_send` the result is handed
//! back directly. PyO3 classes cannot declare that slot.

use std::ffi::{c_int, c_void};
use std::sync::atomic::Ordering;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::aio_future::{CallFuture, Step};

/// The object layout: a Python object header and the awaited future.
#[repr(C)]
struct AwaitIter {
    ob_base: ffi::PyObject,
    future: *mut ffi::PyObject,
}

static AWAIT_ITER_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn await_iter_type(py: Python<'_>) -> PyResult<&Py<PyAny>> {
    AWAIT_ITER_TYPE.get_or_try_init(py, || {
        let mut slots = [
            slot(ffi::Py_tp_dealloc, dealloc as *mut c_void),
            slot(ffi::Py_tp_iter, iter_self as *mut c_void),
            slot(ffi::Py_tp_iternext, iternext as *mut c_void),
            slot(ffi::Py_am_send, am_send as *mut c_void),
            slot(ffi::Py_tp_traverse, traverse as *mut c_void),
            slot(ffi::Py_tp_clear, clear as *mut c_void),
            slot(0, std::ptr::null_mut()),
        ];
        let mut spec = ffi::PyType_Spec {
            name: c"foorpc._native.CallFutureIter".as_ptr(),
            basicsize: std::mem::size_of::<AwaitIter>() as c_int,
            itemsize: 0,
            // Made only by `__await__`: a bare instance would await nothing.
            // GC: a coroutine suspended on it is part of a cycle through the future.
            flags: (ffi::Py_TPFLAGS_DEFAULT
                | ffi::Py_TPFLAGS_DISALLOW_INSTANTIATION
                | ffi::Py_TPFLAGS_HAVE_GC) as _,
            slots: slots.as_mut_ptr(),
        };
        // SAFETY: the spec and slots are valid for the call; CPython copies them.
        let ty = unsafe { ffi::PyType_FromSpec(&mut spec) };
        // SAFETY: a new reference, or NULL with an exception set.
        unsafe { Bound::from_owned_ptr_or_err(py, ty) }.map(Bound::unbind)
    })
}

fn slot(slot: c_int, pfunc: *mut c_void) -> ffi::PyType_Slot {
    ffi::PyType_Slot { slot, pfunc }
}

/// A new iterator over `future` (what `__await__` returns).
pub fn await_iter(future: &Bound<'_, CallFuture>) -> PyResult<Py<PyAny>> {
    let py = future.py();
    let ty = await_iter_type(py)?.as_ptr().cast::<ffi::PyTypeObject>();
    // SAFETY: `ty` is the heap type made above, whose basicsize is AwaitIter's.
    unsafe {
        let obj = ffi::PyType_GenericAlloc(ty, 0);
        let obj = Bound::from_owned_ptr_or_err(py, obj)?;
        (*obj.as_ptr().cast::<AwaitIter>()).future = future.clone().into_ptr();
        Ok(obj.unbind())
    }
}

/// The future an iterator awaits.
///
/// SAFETY: `iter` must be an AwaitIter made by `await_iter`.
unsafe fn future_of<'py>(
    py: Python<'py>,
    iter: *mut ffi::PyObject,
) -> Option<Bound<'py, CallFuture>> {
    let fut = (*iter.cast::<AwaitIter>()).future;
    (!fut.is_null()).then(|| Bound::from_borrowed_ptr(py, fut).cast_into_unchecked())
}

unsafe extern "C" fn am_send(
    iter: *mut ffi::PyObject,
    _arg: *mut ffi::PyObject,
    result: *mut *mut ffi::PyObject,
) -> ffi::PySendResult {
    // No panic may cross into CPython: the body only locks and clones.
    let outcome = std::panic::catch_unwind(|| {
        // SAFETY: CPython calls this slot holding the GIL (or attached).
        // Without `Python::attach` PyO3's attach count may be 0 here, which
        // only matters for a `Py` dropped in the body (it would be released
        // late, from PyO3's pool): none is, every object either leaves
        // through `result` or is a `Bound`, released at once.
        let py = Python::assume_attached();
        let Some(fut) = future_of(py, iter) else {
            // Cleared by the cycle collector: nothing left to await.
            ffi::PyErr_SetString(
                ffi::PyExc_RuntimeError,
                c"the awaited call is gone".as_ptr(),
            );
            *result = std::ptr::null_mut();
            return ffi::PySendResult::PYGEN_ERROR;
        };
        match fut.get().step(py) {
            Step::Pending => {
                fut.get().blocking.store(true, Ordering::Relaxed);
                *result = fut.into_ptr();
                ffi::PySendResult::PYGEN_NEXT
            }
            Step::Done(Ok(value)) => {
                *result = value.into_ptr();
                ffi::PySendResult::PYGEN_RETURN
            }
            Step::Done(Err(err)) => {
                err.restore(py);
                *result = std::ptr::null_mut();
                ffi::PySendResult::PYGEN_ERROR
            }
        }
    });
    outcome.unwrap_or_else(|_| {
        ffi::PyErr_SetString(
            ffi::PyExc_SystemError,
            c"foorpc: panic while awaiting a call".as_ptr(),
        );
        *result = std::ptr::null_mut();
        ffi::PySendResult::PYGEN_ERROR
    })
}

/// `next(it)`, for callers that do not use `am_send`: the result leaves as
/// `StopIteration(result)`. From Python 3.12 on, that is every `await`: the
/// interpreter's `SEND` calls `tp_iternext` on anything but its own
/// generators and coroutines.
unsafe extern "C" fn iternext(iter: *mut ffi::PyObject) -> *mut ffi::PyObject {
    let mut out = std::ptr::null_mut();
    match am_send(iter, ffi::Py_None(), &mut out) {
        ffi::PySendResult::PYGEN_NEXT => out,
        ffi::PySendResult::PYGEN_RETURN => {
            raise_stop_iteration(out);
            std::ptr::null_mut()
        }
        ffi::PySendResult::PYGEN_ERROR => std::ptr::null_mut(),
    }
}

/// Raises `StopIteration(value)` and releases `value` (owned), the way
/// CPython's own generators do: `PyErr_SetObject` builds the exception from
/// the bare value, which goes through PyO3's lazy `PyErr` in half the
/// instructions. A tuple or an exception would be taken as the constructor's
/// arguments or as the exception itself, so those are wrapped first.
///
/// SAFETY: the GIL is held and `value` is a valid owned reference.
unsafe fn raise_stop_iteration(value: *mut ffi::PyObject) {
    if ffi::PyTuple_Check(value) == 0 && ffi::PyExceptionInstance_Check(value) == 0 {
        ffi::PyErr_SetObject(ffi::PyExc_StopIteration, value);
    } else {
        let exc = ffi::PyObject_CallFunctionObjArgs(
            ffi::PyExc_StopIteration,
            value,
            std::ptr::null_mut::<ffi::PyObject>(),
        );
        if !exc.is_null() {
            ffi::PyErr_SetObject(ffi::PyExc_StopIteration, exc);
            ffi::Py_DecRef(exc);
        }
    }
    ffi::Py_DecRef(value);
}

unsafe extern "C" fn iter_self(iter: *mut ffi::PyObject) -> *mut ffi::PyObject {
    ffi::Py_IncRef(iter);
    iter
}

unsafe extern "C" fn traverse(
    iter: *mut ffi::PyObject,
    visit: ffi::visitproc,
    arg: *mut c_void,
) -> c_int {
    let fut = (*iter.cast::<AwaitIter>()).future;
    if fut.is_null() {
        0
    } else {
        visit(fut, arg)
    }
}

unsafe extern "C" fn clear(iter: *mut ffi::PyObject) -> c_int {
    let fut = std::mem::replace(
        &mut (*iter.cast::<AwaitIter>()).future,
        std::ptr::null_mut(),
    );
    if !fut.is_null() {
        ffi::Py_DecRef(fut);
    }
    0
}

unsafe extern "C" fn dealloc(iter: *mut ffi::PyObject) {
    let ty = ffi::Py_TYPE(iter);
    ffi::PyObject_GC_UnTrack(iter.cast());
    clear(iter);
    let free = ffi::PyType_GetSlot(ty, ffi::Py_tp_free);
    if !free.is_null() {
        let free: unsafe extern "C" fn(*mut c_void) = std::mem::transmute(free);
        free(iter.cast());
    }
    // Instances of a heap type hold a reference to it.
    ffi::Py_DecRef(ty.cast());
}
