//! The one place where foorpc errors become Python exceptions.
//!
//! The exception classes are defined in Python (`foorpc._errors`) and
//! imported here.

use std::io::ErrorKind;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::convert;

pyo3::import_exception!(foorpc._errors, RpcError);
pyo3::import_exception!(foorpc._errors, RemoteError);
pyo3::import_exception!(foorpc._errors, RpcTimeoutError);
pyo3::import_exception!(foorpc._errors, ConnectionLostError);

/// A foorpc error on its way to Python.
pub struct Error(pub foorpc::Error);

impl From<foorpc::Error> for Error {
    fn from(e: foorpc::Error) -> Self {
        Error(e)
    }
}

impl From<Error> for PyErr {
    fn from(Error(e): Error) -> PyErr {
        match e {
            foorpc::Error::Remote(v) => Python::attach(|py| remote_error(py, v)),
            foorpc::Error::Timeout => RpcTimeoutError::new_err("call timed out"),
            foorpc::Error::Closed => ConnectionLostError::new_err("the connection was closed"),
            // An OS error (connect refused, connection reset, ...) keeps
            // its errno, as the OSError that ConnectionLostError is.
            foorpc::Error::Io { kind, message } => match os_errno(kind) {
                Some(errno) => ConnectionLostError::new_err((errno, strerror(&message))),
                None => ConnectionLostError::new_err(format!("I/O error: {message}")),
            },
            // A protocol error, or a message over this side's own limit, closes the connection.
            e @ (foorpc::Error::ConnectionLost(_)
            | foorpc::Error::Protocol(_)
            | foorpc::Error::MessageLimitExceeded(_)) => {
                ConnectionLostError::new_err(e.to_string())
            }
            e @ foorpc::Error::InvalidAddress(_) => PyValueError::new_err(e.to_string()),
            e => RpcError::new_err(e.to_string()),
        }
    }
}

/// The error for a failed bind: an OS error is a plain `OSError(errno,
/// strerror)` as `socket.bind` raises (which Python makes the subclass for
/// the errno: `FileNotFoundError`, `PermissionError`, ...), not a
/// `ConnectionLostError`; other errors as everywhere else.
pub fn bind_error(e: foorpc::Error) -> PyErr {
    match e {
        foorpc::Error::Io { kind, message } => match os_errno(kind) {
            Some(errno) => PyOSError::new_err((errno, strerror(&message))),
            None => PyOSError::new_err(message),
        },
        e => Error(e).into(),
    }
}

/// The errno for an `io::ErrorKind` (the core keeps the kind, not the raw
/// errno), from the `errno` module, so the platform's own value.
fn os_errno(kind: ErrorKind) -> Option<i32> {
    let name = match kind {
        ErrorKind::AddrInUse => "EADDRINUSE",
        ErrorKind::AddrNotAvailable => "EADDRNOTAVAIL",
        ErrorKind::ConnectionRefused => "ECONNREFUSED",
        ErrorKind::ConnectionReset => "ECONNRESET",
        ErrorKind::ConnectionAborted => "ECONNABORTED",
        ErrorKind::NotConnected => "ENOTCONN",
        ErrorKind::BrokenPipe => "EPIPE",
        ErrorKind::NotFound => "ENOENT",
        ErrorKind::PermissionDenied => "EACCES",
        ErrorKind::TimedOut => "ETIMEDOUT",
        ErrorKind::AlreadyExists => "EEXIST",
        ErrorKind::NotADirectory => "ENOTDIR",
        ErrorKind::HostUnreachable => "EHOSTUNREACH",
        ErrorKind::NetworkUnreachable => "ENETUNREACH",
        ErrorKind::NetworkDown => "ENETDOWN",
        ErrorKind::ReadOnlyFilesystem => "EROFS",
        ErrorKind::InvalidFilename => "ENAMETOOLONG",
        ErrorKind::Interrupted => "EINTR",
        _ => return None,
    };
    Python::attach(|py| {
        py.import("errno")
            .and_then(|m| m.getattr(name))
            .and_then(|v| v.extract())
            .ok()
    })
}

/// The OS's text in an `io::Error` message, without Rust's `" (os error N)"`.
fn strerror(message: &str) -> String {
    match message.rfind(" (os error ") {
        Some(i) if message.ends_with(')') => message[..i].to_string(),
        _ => message.to_string(),
    }
}

/// How much of an error object that cannot become a Python value is shown.
const SHOWN_CHARS: usize = 200;

/// The `RemoteError` for the peer's error object `v`. One that cannot become
/// a Python value (a map used as a map key, keys equal in Python) still
/// gives a `RemoteError`, with `error` None, the reason and the object as
/// text in `message`, and the conversion error as `__cause__`.
fn remote_error(py: Python<'_>, v: foorpc::Value) -> PyErr {
    let kept = v.clone();
    let cause = match convert::to_py(py, v) {
        Ok(obj) => return RemoteError::new_err((obj.unbind(),)),
        Err(cause) => cause,
    };
    let mut shown: String = kept.to_string().chars().take(SHOWN_CHARS + 1).collect();
    if shown.chars().count() > SHOWN_CHARS {
        shown = shown.chars().take(SHOWN_CHARS).collect::<String>() + "...";
    }
    let message = format!(
        "the peer's error object cannot become a Python value ({}): {shown}",
        type_and_message(cause.value(py))
    );
    let err = RemoteError::new_err((py.None(),));
    if let Err(e) = err.value(py).setattr("message", message) {
        e.write_unraisable(py, None);
    }
    err.set_cause(py, Some(cause));
    err
}

/// `"TypeName: message"`, or `"TypeName"` for an empty message.
fn type_and_message(value: &Bound<'_, pyo3::exceptions::PyBaseException>) -> String {
    let name = value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    let msg = value
        .str()
        .map(|s| s.to_string())
        .unwrap_or_else(|_| String::new());
    if msg.is_empty() {
        name
    } else {
        format!("{name}: {msg}")
    }
}

/// Appends the error object sent in reply when a Python handler raised `err`:
/// a `RemoteError`'s `.error` unchanged, otherwise `[0, "TypeName: message"]`.
/// A falsy `.error` (None, False, 0, "", [], {}) would read as success to a
/// peer that tests `if error:`, so it becomes `[0, "RemoteError: <repr>"]`.
pub fn encode_error_object(py: Python<'_>, err: &PyErr, out: &mut Vec<u8>) {
    let value = err.value(py);
    let start = out.len();
    if value.is_instance_of::<RemoteError>() {
        if let Ok(obj) = value.getattr("error") {
            // An object whose truth cannot be told is tried as it is.
            if !obj.is_truthy().unwrap_or(true) {
                let text = match obj.repr() {
                    Ok(r) => format!("RemoteError: {r}"),
                    Err(_) => "RemoteError".into(),
                };
                let obj = foorpc::Error::error_object(foorpc::ERROR_CODE_EXCEPTION, text);
                foorpc::codec::encode_value(out, &obj);
                return;
            }
            if convert::encode(&obj, out, 0).is_ok() {
                return;
            }
            out.truncate(start);
        }
    }
    let obj = foorpc::Error::error_object(foorpc::ERROR_CODE_EXCEPTION, type_and_message(value));
    foorpc::codec::encode_value(out, &obj);
}

/// The error for an asyncio call whose reply would come through foorpc's
/// I/O thread once the process has started exiting (see `interpreter`).
pub fn exiting() -> PyErr {
    RpcError::new_err(
        "the process is exiting: replies to this asyncio client (it has handlers) come \
         through foorpc's I/O thread, which no longer runs Python; make the call before \
         foorpc's atexit hook, or use a client without handlers",
    )
}

/// The error for objects used in a child process after `fork()`.
pub fn forked(what: &str) -> PyErr {
    RpcError::new_err(format!(
        "this {what} was created before os.fork() and cannot be used in the child process \
         (its connection belongs to the parent); create a new one in the child"
    ))
}
