//! `foorpc_client_*`: connect to a server and call it.

use std::os::raw::{c_char, c_void};
use std::time::Duration;

use foorpc::{Client, Error, Value};

use crate::buf::{self, foorpc_buf};
use crate::error::{code_of, fail_with, foorpc_result, set_last_error};
use crate::msgpack::decode_params;

/// A connection to a MessagePack-RPC server (TCP or Unix socket).
///
/// Thread-safe: any number of threads may call, call asynchronously and
/// notify through one client at once (calls are pipelined on the connection
/// and replies matched by msgid). Only foorpc_client_free must not overlap
/// with other uses.
pub struct foorpc_client {
    inner: Client,
}

/// Called once with the outcome of foorpc_client_call_async.
///
/// `userdata` is the pointer given to foorpc_client_call_async. `result` is
/// FOORPC_RESULT_OK with the result value's MessagePack bytes in
/// `data`/`len`, FOORPC_RESULT_REMOTE_ERROR with the peer's error object's
/// MessagePack bytes, or another code with `data` NULL and `len` 0 (then
/// foorpc_last_error_message, called inside the callback, describes it).
/// `data` is borrowed: valid only until the callback returns (copy what you
/// keep).
///
/// Runs on the thread that receives the outcome: usually foorpc's client I/O
/// thread; it can also be a thread blocked in foorpc_client_call on the same
/// client (which reads replies for everyone), or the thread calling
/// foorpc_client_call_async, before it returns, when the outcome is known at
/// once. Callbacks of different calls may run at the same time. It must be
/// quick and must not block: a blocking foorpc call from the I/O thread fails
/// with FOORPC_RESULT_USAGE (use foorpc_client_call_async there).
pub type foorpc_call_callback = Option<
    unsafe extern "C" fn(userdata: *mut c_void, result: foorpc_result, data: *const u8, len: usize),
>;

/// A `void *` the caller promises may be used from another thread.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut c_void);
// SAFETY: foorpc never dereferences userdata; the C API documents on which
// threads callbacks receive it, and the caller is responsible for that.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    pub(crate) fn get(self) -> *mut c_void {
        self.0
    }
}

fn timeout(ms: u32, default: Duration) -> Duration {
    if ms == 0 {
        default
    } else {
        Duration::from_millis(u64::from(ms))
    }
}

/// Connects to `address`: "tcp://HOST:PORT" or "unix:///PATH" (a
/// NUL-terminated string, not retained), waiting at most `timeout_ms`
/// milliseconds for the connection (0: the default, 10 s). Calls made later
/// without their own timeout wait at most 30 s.
///
/// On success `*client_out` receives a new client; the caller owns it and
/// must call foorpc_client_free. Errors: FOORPC_RESULT_INVALID_ADDRESS,
/// FOORPC_RESULT_IO (e.g. connection refused), FOORPC_RESULT_TIMEOUT.
/// Any thread may call it.
#[no_mangle]
pub extern "C" fn foorpc_client_connect(
    address: *const c_char,
    timeout_ms: u32,
    client_out: *mut *mut foorpc_client,
) -> foorpc_result {
    ffi_panic_boundary! {
        let address = try_cstr!(address);
        let out = try_mut!(client_out);
        let builder = Client::builder()
            .connect_timeout(timeout(timeout_ms, foorpc::DEFAULT_CONNECT_TIMEOUT));
        match builder.connect(address) {
            Ok(inner) => {
                *out = Box::into_raw(Box::new(foorpc_client { inner }));
                foorpc_result::Ok
            }
            Err(e) => fail_with(&e),
        }
    }
}

/// Calls `method` (a NUL-terminated UTF-8 string) with `params`: the
/// MessagePack encoding of the params ARRAY (`params_len` bytes; NULL/0 means
/// no params), and waits at most `timeout_ms` milliseconds for the reply
/// (0: the default, 30 s). Neither `method` nor `params` is retained.
///
/// On FOORPC_RESULT_OK `*result_out` receives the result value's MessagePack
/// bytes; on FOORPC_RESULT_REMOTE_ERROR it receives the peer's error object
/// (foorpc peers send `[code, message]`; other peers may send any value).
/// In both cases the caller owns the new foorpc_buf and must call
/// foorpc_buf_free; on any other code `*result_out` is not written.
/// `result_out` may be NULL to discard the result.
///
/// Other errors: FOORPC_RESULT_INVALID_MSGPACK (params are not one array),
/// FOORPC_RESULT_TIMEOUT, FOORPC_RESULT_CONNECTION_LOST, FOORPC_RESULT_CLOSED,
/// FOORPC_RESULT_USAGE (called from a callback on foorpc's I/O thread).
/// Thread-safe; blocks the calling thread until the reply or the timeout.
#[no_mangle]
pub extern "C" fn foorpc_client_call(
    client: *const foorpc_client,
    method: *const c_char,
    params: *const u8,
    params_len: usize,
    timeout_ms: u32,
    result_out: *mut *mut foorpc_buf,
) -> foorpc_result {
    ffi_panic_boundary! {
        let client = try_ref!(client);
        let method = try_cstr!(method);
        let params = match decode_params(try_slice!(params, params_len)) {
            Ok(p) => p,
            Err(code) => return code,
        };
        let t = timeout(timeout_ms, foorpc::DEFAULT_CALL_TIMEOUT);
        match client.inner.call_value(method, &params, Some(t)) {
            Ok(v) => {
                buf::put(result_out, &v);
                foorpc_result::Ok
            }
            Err(e) => {
                if let Error::Remote(obj) = &e {
                    buf::put(result_out, obj);
                }
                fail_with(&e)
            }
        }
    }
}

/// Calls the callback with an outcome, recording a failure as the thread's last error.
fn deliver(cb: CallbackFn, userdata: SendPtr, outcome: foorpc::Result<Value>) {
    let (code, bytes) = match &outcome {
        Ok(v) => (foorpc_result::Ok, Some(v)),
        Err(e) => {
            set_last_error(e.to_string());
            match e {
                Error::Remote(obj) => (foorpc_result::RemoteError, Some(obj)),
                other => (code_of(other), None),
            }
        }
    };
    let mut out = Vec::new();
    if let Some(v) = bytes {
        foorpc::codec::encode_value(&mut out, v);
    }
    let (ptr, len) = if bytes.is_some() {
        (out.as_ptr(), out.len())
    } else {
        (std::ptr::null(), 0)
    };
    // SAFETY: a C function pointer given by the caller, with its userdata.
    unsafe { cb(userdata.get(), code, ptr, len) };
}

type CallbackFn =
    unsafe extern "C" fn(userdata: *mut c_void, result: foorpc_result, data: *const u8, len: usize);

/// Calls `method` without blocking: sends the request and returns at once;
/// `callback(userdata, ...)` receives the outcome later (see
/// foorpc_call_callback for its thread and arguments). `method`, `params`
/// and `params_len` are as for foorpc_client_call and are not retained;
/// `timeout_ms` bounds the wait for the reply (0: the default, 30 s).
///
/// When it returns FOORPC_RESULT_OK the callback runs exactly once (also
/// when the call times out, the connection fails, or the client is closed or
/// freed first); when it returns an error the callback never runs.
/// `userdata` must stay valid until the callback has run.
/// Thread-safe; callable from any thread, including from a callback.
#[no_mangle]
pub extern "C" fn foorpc_client_call_async(
    client: *const foorpc_client,
    method: *const c_char,
    params: *const u8,
    params_len: usize,
    timeout_ms: u32,
    callback: foorpc_call_callback,
    userdata: *mut c_void,
) -> foorpc_result {
    ffi_panic_boundary! {
        let client = try_ref!(client);
        let method = try_cstr!(method);
        let Some(cb) = callback else {
            return crate::error::null_parameter("callback");
        };
        let params = match decode_params(try_slice!(params, params_len)) {
            Ok(p) => p,
            Err(code) => return code,
        };
        let t = timeout(timeout_ms, foorpc::DEFAULT_CALL_TIMEOUT);
        let userdata = SendPtr(userdata);
        match client.inner.call_async(method, &params, Some(t)) {
            Ok(pending) => {
                pending.on_complete(move |outcome| {
                    // A panic must not unwind into the I/O thread's C caller chain.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        deliver(cb, userdata, outcome)
                    }));
                });
                foorpc_result::Ok
            }
            Err(e) => fail_with(&e),
        }
    }
}

/// Sends a notification: `method` with `params` (as for foorpc_client_call),
/// no reply. Returns once the message is queued for sending (it may still be
/// lost if the connection fails). Not retained. Thread-safe.
#[no_mangle]
pub extern "C" fn foorpc_client_notify(
    client: *const foorpc_client,
    method: *const c_char,
    params: *const u8,
    params_len: usize,
) -> foorpc_result {
    ffi_panic_boundary! {
        let client = try_ref!(client);
        let method = try_cstr!(method);
        let params = match decode_params(try_slice!(params, params_len)) {
            Ok(p) => p,
            Err(code) => return code,
        };
        match client.inner.notify(method, &params) {
            Ok(()) => foorpc_result::Ok,
            Err(e) => fail_with(&e),
        }
    }
}

/// Closes the connection: calls still waiting fail with FOORPC_RESULT_CLOSED
/// (their callbacks run), and later calls fail at once. The client stays
/// allocated: free it with foorpc_client_free. NULL is fine; calling it twice
/// is fine. Thread-safe.
#[no_mangle]
pub extern "C" fn foorpc_client_close(client: *const foorpc_client) {
    ffi_panic_boundary! {
        // SAFETY: NULL or a live client.
        if let Some(c) = unsafe { client.as_ref() } {
            c.inner.close();
        }
    }
}

/// True while the connection is open (false once closed by either side, or
/// when `client` is NULL). Thread-safe.
#[no_mangle]
pub extern "C" fn foorpc_client_is_connected(client: *const foorpc_client) -> bool {
    ffi_panic_boundary! {
        // SAFETY: NULL or a live client.
        unsafe { client.as_ref() }.is_some_and(|c| !c.inner.is_closed())
    }
}

/// Closes the connection (as foorpc_client_close) and frees the client.
/// NULL is fine. Must be called once, when no other thread uses the client;
/// callbacks of calls still pending run with FOORPC_RESULT_CLOSED. Must not
/// be called from a foorpc callback of this client.
#[no_mangle]
pub extern "C" fn foorpc_client_free(client: *mut foorpc_client) {
    ffi_panic_boundary! {
        if !client.is_null() {
            // SAFETY: created by foorpc_client_connect, freed once.
            let c = unsafe { Box::from_raw(client) };
            c.inner.close();
            drop(c);
        }
    }
}
