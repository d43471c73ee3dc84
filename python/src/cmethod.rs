//! Methods and members written against CPython's calling conventions
//! directly, and installed on PyO3 classes at import: the few entry points
//! that every asyncio call goes through.
//!
//! Why by hand: PyO3's trampolines (thread-local bookkeeping, gathering
//! `*args` into a tuple, keyword handling) cost more than what these entry
//! points do themselves. A `METH_FASTCALL` method reads its arguments
//! straight from the vectorcall array, and a struct member is read and
//! written by CPython itself.

use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PySystemError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyTuple, PyType};

/// A method taking `(*args, **kwargs)` the vectorcall way
/// (`METH_FASTCALL | METH_KEYWORDS`).
pub(crate) trait FastMethod {
    /// SAFETY: `slf` is an instance of the class the method was added to (a
    /// method descriptor checks that before it calls).
    unsafe fn call<'py>(
        py: Python<'py>,
        slf: *mut ffi::PyObject,
        args: FastArgs<'_, 'py>,
    ) -> PyResult<Py<PyAny>>;
}

/// A method taking no arguments (`METH_NOARGS`).
pub(crate) trait NoArgsMethod {
    /// SAFETY: as [`FastMethod::call`].
    unsafe fn call(py: Python<'_>, slf: *mut ffi::PyObject) -> PyResult<Py<PyAny>>;
}

/// Adds `M` to `class` as the method `name`. `doc` starts with the
/// signature, as `name($self, ...)\n--\n\n`, for `inspect.signature`.
pub(crate) fn add_fastcall<M: FastMethod>(
    class: &Bound<'_, PyType>,
    name: &'static CStr,
    doc: &'static CStr,
) -> PyResult<()> {
    let meth = ffi::PyMethodDefPointer {
        PyCFunctionFastWithKeywords: fastcall::<M>,
    };
    add_method(
        class,
        name,
        meth,
        ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
        doc,
    )
}

/// Adds `M` to `class` as the method `name`, as [`add_fastcall`] does.
pub(crate) fn add_noargs<M: NoArgsMethod>(
    class: &Bound<'_, PyType>,
    name: &'static CStr,
    doc: &'static CStr,
) -> PyResult<()> {
    let meth = ffi::PyMethodDefPointer {
        PyCFunction: noargs::<M>,
    };
    add_method(class, name, meth, ffi::METH_NOARGS, doc)
}

unsafe extern "C" fn fastcall<M: FastMethod>(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    entry(|py| M::call(py, slf, FastArgs::new(py, args, nargs, kwnames)))
}

unsafe extern "C" fn noargs<M: NoArgsMethod>(
    slf: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    entry(|py| M::call(py, slf))
}

/// Adds a method to `class`. Its definition is kept for the life of the
/// process: the method's descriptor points to it.
fn add_method(
    class: &Bound<'_, PyType>,
    name: &'static CStr,
    meth: ffi::PyMethodDefPointer,
    flags: std::ffi::c_int,
    doc: &'static CStr,
) -> PyResult<()> {
    let def = Box::leak(Box::new(ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: meth,
        ml_flags: flags,
        ml_doc: doc.as_ptr(),
    }));
    // SAFETY: a live class and a definition that is never freed.
    let descr = unsafe { ffi::PyDescr_NewMethod(class.as_type_ptr(), def) };
    install(class, name, descr)
}

/// Adds a struct member to `class`, as [`add_method`] does a method.
pub(crate) fn add_member(class: &Bound<'_, PyType>, def: ffi::PyMemberDef) -> PyResult<()> {
    // SAFETY: name is a C string (the definitions here use literals).
    let name = unsafe { CStr::from_ptr(def.name) };
    let def = Box::leak(Box::new(def));
    // SAFETY: a live class and a definition that is never freed.
    let descr = unsafe { ffi::PyDescr_NewMember(class.as_type_ptr(), def) };
    install(class, name, descr)
}

fn install(class: &Bound<'_, PyType>, name: &CStr, descr: *mut ffi::PyObject) -> PyResult<()> {
    // SAFETY: `descr` is a new reference, or NULL with an exception set.
    let descr = unsafe { Bound::from_owned_ptr_or_err(class.py(), descr) }?;
    class.setattr(name.to_string_lossy().as_ref(), descr)
}

/// Runs the body of a C entry point: an error is raised in Python (NULL is
/// returned), and a panic becomes a SystemError instead of crossing into
/// CPython.
///
/// The body runs inside `Python::attach`, as PyO3's own entry points do:
/// the thread holds the GIL already, but without PyO3's attach count a `Py`
/// dropped in the body would be parked in PyO3's deferred-release pool
/// instead of released at once.
fn entry(body: impl FnOnce(Python<'_>) -> PyResult<Py<PyAny>>) -> *mut ffi::PyObject {
    Python::attach(|py| {
        let outcome = catch_unwind(AssertUnwindSafe(|| body(py)))
            .unwrap_or_else(|_| Err(PySystemError::new_err("foorpc: panic in a native method")));
        match outcome {
            Ok(obj) => obj.into_ptr(),
            Err(err) => {
                err.restore(py);
                std::ptr::null_mut()
            }
        }
    })
}

/// The arguments of a `METH_FASTCALL | METH_KEYWORDS` call, borrowed from
/// the caller's array.
pub(crate) struct FastArgs<'a, 'py> {
    py: Python<'py>,
    positional: &'a [*mut ffi::PyObject],
    keyword_values: &'a [*mut ffi::PyObject],
    keyword_names: Option<Borrowed<'a, 'py, PyTuple>>,
}

impl<'a, 'py> FastArgs<'a, 'py> {
    /// SAFETY: the arguments of a `METH_FASTCALL | METH_KEYWORDS` method
    /// call, made while attached: `nargs` positional arguments, then one
    /// value for each name in `kwnames` (a tuple of str, or NULL).
    pub(crate) unsafe fn new(
        py: Python<'py>,
        args: *const *mut ffi::PyObject,
        nargs: ffi::Py_ssize_t,
        kwnames: *mut ffi::PyObject,
    ) -> Self {
        let nargs = nargs.max(0) as usize;
        let keyword_names = (!kwnames.is_null())
            .then(|| Borrowed::from_ptr(py, kwnames).cast_unchecked::<PyTuple>());
        let nkw = keyword_names.as_ref().map_or(0, |t| t.len());
        let all: &[*mut ffi::PyObject] = if nargs + nkw == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(args, nargs + nkw)
        };
        let (positional, keyword_values) = all.split_at(nargs);
        FastArgs {
            py,
            positional,
            keyword_values,
            keyword_names,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.positional.len()
    }

    /// Positional argument `i` (< `len()`).
    pub(crate) fn get(&self, i: usize) -> Borrowed<'a, 'py, PyAny> {
        // SAFETY: the caller's array holds live objects for the whole call.
        unsafe { Borrowed::from_ptr(self.py, self.positional[i]) }
    }

    /// The keyword-names tuple (None when there are no keywords: a caller
    /// may pass NULL or an empty tuple).
    pub(crate) fn keyword_names(&self) -> Option<Borrowed<'a, 'py, PyTuple>> {
        self.keyword_names.filter(|names| !names.is_empty())
    }

    /// The keyword arguments, as (name, value) pairs.
    pub(crate) fn keywords(
        &self,
    ) -> impl Iterator<Item = (Bound<'py, PyAny>, Borrowed<'a, 'py, PyAny>)> + '_ {
        let py = self.py;
        self.keyword_names
            .iter()
            .flat_map(|names| names.iter())
            .zip(self.keyword_values)
            // SAFETY: as in `get`.
            .map(move |(name, &value)| (name, unsafe { Borrowed::from_ptr(py, value) }))
    }
}

/// Whether a keyword name is `expected`: by identity first, as the names in
/// compiled calls are interned. A str subclass's `__eq__` may raise.
pub(crate) fn is_name(name: &Bound<'_, PyAny>, expected: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(name.is(expected) || name.eq(expected)?)
}
