//! The panic boundary and the argument-checking macros used by every export.
//!
//! A panic must never unwind into C (it is undefined behaviour, and aborts
//! with recent Rust). Every `extern "C"` body runs inside
//! [`ffi_panic_boundary!`]; a caught panic becomes `FOORPC_RESULT_PANIC` (with
//! the panic message as the thread's last error) or a neutral value for
//! functions that return no result code.

use std::any::Any;

use crate::error::{foorpc_result, set_last_error};

/// The value an export returns when its body panicked.
pub(crate) trait PanicOrDefault {
    fn on_panic() -> Self;
}

impl PanicOrDefault for foorpc_result {
    fn on_panic() -> Self {
        foorpc_result::Panic
    }
}

impl PanicOrDefault for () {
    fn on_panic() -> Self {}
}

impl PanicOrDefault for usize {
    fn on_panic() -> Self {
        0
    }
}

impl PanicOrDefault for u64 {
    fn on_panic() -> Self {
        0
    }
}

impl PanicOrDefault for bool {
    fn on_panic() -> Self {
        false
    }
}

impl<T> PanicOrDefault for *const T {
    fn on_panic() -> Self {
        std::ptr::null()
    }
}

impl<T> PanicOrDefault for *mut T {
    fn on_panic() -> Self {
        std::ptr::null_mut()
    }
}

impl PanicOrDefault for crate::msgpack::foorpc_type {
    fn on_panic() -> Self {
        crate::msgpack::foorpc_type::None
    }
}

/// Records a caught panic as the thread's last error.
pub(crate) fn record_panic(payload: Box<dyn Any + Send>) {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    set_last_error(format!("internal error: a panic was caught: {msg}"));
}

/// Runs the body, turning a panic into `PanicOrDefault::on_panic()`.
/// `return` inside the body returns from the export.
macro_rules! ffi_panic_boundary {
    ( $($body:tt)* ) => {
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(move || { $($body)* })) {
            Ok(ret) => ret,
            Err(payload) => {
                $crate::panic::record_panic(payload);
                $crate::panic::PanicOrDefault::on_panic()
            }
        }
    };
}

/// `&T` from a `*const T` / `*mut T`, or return `FOORPC_RESULT_NULL_PARAMETER`.
macro_rules! try_ref {
    ($ptr:ident) => {
        match unsafe { ($ptr).as_ref() } {
            Some(r) => r,
            None => return $crate::error::null_parameter(stringify!($ptr)),
        }
    };
}

/// `&mut T` from a `*mut T`, or return `FOORPC_RESULT_NULL_PARAMETER`.
macro_rules! try_mut {
    ($ptr:ident) => {
        match unsafe { ($ptr).as_mut() } {
            Some(r) => r,
            None => return $crate::error::null_parameter(stringify!($ptr)),
        }
    };
}

/// A byte slice from pointer and length (NULL is fine when the length is 0).
macro_rules! try_slice {
    ($ptr:ident, $len:ident) => {
        if $len == 0 {
            &[][..]
        } else if ($ptr).is_null() {
            return $crate::error::null_parameter(stringify!($ptr));
        } else {
            unsafe { ::std::slice::from_raw_parts(($ptr) as *const u8, $len) }
        }
    };
}

/// A `&str` from a NUL-terminated C string that must be UTF-8.
macro_rules! try_cstr {
    ($ptr:ident) => {{
        if ($ptr).is_null() {
            return $crate::error::null_parameter(stringify!($ptr));
        }
        match unsafe { ::std::ffi::CStr::from_ptr($ptr) }.to_str() {
            Ok(s) => s,
            Err(_) => {
                return $crate::error::fail(
                    $crate::error::foorpc_result::InvalidArgument,
                    concat!(stringify!($ptr), " is not valid UTF-8"),
                )
            }
        }
    }};
}

/// The value of a `Result<T, foorpc_result>`, or return its code (the last
/// error is already set).
macro_rules! try_ok {
    ($result:expr) => {
        match $result {
            Ok(v) => v,
            Err(code) => return code,
        }
    };
}
