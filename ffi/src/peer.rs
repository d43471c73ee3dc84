//! `foorpc_peer_*`: one connection, seen from a handler: call or notify the
//! other side, tell connections apart, close. Also the calling machinery
//! shared with `foorpc_client_*` (a client is a connection too).

use std::os::raw::{c_char, c_void};
use std::sync::Arc;
use std::time::Duration;

use foorpc::codec::{check_encoded, DecodeError};
use foorpc::{Error, Peer, Value};

use crate::buf::{self, foorpc_buf};
use crate::error::{code_of, fail, fail_with, foorpc_result, set_last_error};
use crate::handler::{run_counted, Running};

/// One connection (of a server, or a client's), as handlers see it: call
/// and notify the other side through it, identify it, close it.
///
/// Handlers get one borrowed (notification callbacks: valid during the
/// callback) or ask for an owned one (foorpc_responder_peer); an owned
/// handle is freed with foorpc_peer_free. A handle does not keep the
/// connection open: once the connection is closed (by either side, or by
/// stopping the server or freeing the client), calls through it fail with
/// FOORPC_RESULT_CLOSED or FOORPC_RESULT_CONNECTION_LOST.
///
/// Thread-safe: any number of threads may use one handle at once (calls are
/// pipelined on the connection). Only foorpc_peer_free must not overlap with
/// other uses of the same handle.
pub struct foorpc_peer {
    pub(crate) inner: Peer,
}

/// Called once with the outcome of foorpc_client_call_async or
/// foorpc_peer_call_async.
///
/// `userdata` is the pointer given to the call. `result` is
/// FOORPC_RESULT_OK with the result value's MessagePack bytes in
/// `data`/`len`, FOORPC_RESULT_REMOTE_ERROR with the peer's error object's
/// MessagePack bytes, or another code with `data` NULL and `len` 0 (then
/// foorpc_last_error_message, called inside the callback, describes it).
/// `data` is borrowed: valid only until the callback returns (copy what you
/// keep).
///
/// Runs on the thread that receives the outcome: usually foorpc's I/O thread
/// of the connection (a client's I/O thread, or the server's for a peer of a
/// server connection); it can also be a thread blocked in a call on the same
/// connection (which reads replies for everyone), or the thread making the
/// asynchronous call, before it returns, when the outcome is known at once,
/// or the thread that closes the connection (foorpc_client_close,
/// foorpc_client_free, foorpc_peer_close), for the calls still pending then:
/// do not hold a lock around those that the callback takes too.
/// Callbacks of different calls may run at the same time. It must be quick
/// and must not block: a blocking foorpc call from the I/O thread, or on the
/// same connection from a thread blocked in a call on it, fails with
/// FOORPC_RESULT_USAGE (use the asynchronous calls there). foorpc_server_stop
/// called from a callback only starts the shutdown and returns at once.
pub type foorpc_call_callback = Option<
    unsafe extern "C" fn(userdata: *mut c_void, result: foorpc_result, data: *const u8, len: usize),
>;

type CallbackFn =
    unsafe extern "C" fn(userdata: *mut c_void, result: foorpc_result, data: *const u8, len: usize);

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

pub(crate) fn timeout(ms: u32, default: Duration) -> Duration {
    if ms == 0 {
        default
    } else {
        Duration::from_millis(u64::from(ms))
    }
}

/// The params of a call as given by C, checked and ready to send as is: one
/// MessagePack array within the connection's limits (`peer.limits()`, as set
/// with foorpc_client_options_set_limit or foorpc_server_set_limit; an empty
/// input means no params). Anything else is FOORPC_RESULT_INVALID_MSGPACK.
///
/// The core's `*_encoded` calls check the bytes again, with the same
/// limits, but report a failure as `Error::Usage`, which they also use for a
/// call that is not allowed here; checking first keeps the two apart (the
/// scan reads item headers only and does not allocate per item).
pub(crate) fn checked_params<'a>(peer: &Peer, bytes: &'a [u8]) -> Result<&'a [u8], foorpc_result> {
    if bytes.is_empty() {
        return Ok(&[0x90]);
    }
    match check_encoded(bytes, peer.limits(), true) {
        Ok(()) => Ok(bytes),
        Err(e) => {
            let why = match e {
                DecodeError::Invalid { reason, .. } => reason,
                other => other.to_string(),
            };
            Err(fail(
                foorpc_result::InvalidMsgpack,
                format!("params are not one valid MessagePack array: {why}"),
            ))
        }
    }
}

/// The body of foorpc_client_call and foorpc_peer_call.
pub(crate) fn call(
    peer: &Peer,
    method: *const c_char,
    params: *const u8,
    params_len: usize,
    timeout_ms: u32,
    result_out: *mut *mut foorpc_buf,
) -> foorpc_result {
    let method = try_cstr!(method);
    let params = try_ok!(checked_params(peer, try_slice!(params, params_len)));
    let t = timeout(timeout_ms, foorpc::DEFAULT_CALL_TIMEOUT);
    match peer.call_encoded(method, params, Some(t)) {
        Ok(bytes) => {
            // The result's bytes as they came off the wire: no Value, no re-encoding.
            buf::put_bytes(result_out, bytes);
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

/// Calls the callback with an outcome, recording a failure as the thread's last error.
fn deliver(cb: CallbackFn, userdata: SendPtr, outcome: foorpc::Result<Value>) {
    let (code, out) = match outcome {
        // The result arrives as its wire bytes (call_async_encoded).
        Ok(result) => (foorpc_result::Ok, Some(foorpc::encoded_result(result))),
        Err(e) => {
            set_last_error(e.to_string());
            match e {
                Error::Remote(obj) => (foorpc_result::RemoteError, Some(buf::encode(&obj))),
                other => (code_of(&other), None),
            }
        }
    };
    let (ptr, len) = match &out {
        Some(b) => (b.as_ptr(), b.len()),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: a C function pointer given by the caller, with its userdata.
    crate::handler::as_handler(|| unsafe { cb(userdata.get(), code, ptr, len) });
}

/// The body of foorpc_client_call_async and foorpc_peer_call_async.
/// `running` counts the callback's run for the client that made the call.
#[allow(clippy::too_many_arguments)] // the C function's arguments, plus `running`
pub(crate) fn call_async(
    peer: &Peer,
    method: *const c_char,
    params: *const u8,
    params_len: usize,
    timeout_ms: u32,
    callback: foorpc_call_callback,
    userdata: *mut c_void,
    running: Option<Arc<Running>>,
) -> foorpc_result {
    let method = try_cstr!(method);
    let Some(cb) = callback else {
        return crate::error::null_parameter("callback");
    };
    let params = try_ok!(checked_params(peer, try_slice!(params, params_len)));
    let t = timeout(timeout_ms, foorpc::DEFAULT_CALL_TIMEOUT);
    let userdata = SendPtr(userdata);
    match peer.call_async_encoded(method, params, Some(t)) {
        Ok(pending) => {
            pending.on_complete(move |outcome| {
                // A panic must not unwind into the I/O thread's C caller chain.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_counted(&running, || deliver(cb, userdata, outcome))
                }));
            });
            foorpc_result::Ok
        }
        Err(e) => fail_with(&e),
    }
}

/// The body of foorpc_client_notify and foorpc_peer_notify.
pub(crate) fn notify(
    peer: &Peer,
    method: *const c_char,
    params: *const u8,
    params_len: usize,
) -> foorpc_result {
    let method = try_cstr!(method);
    let params = try_ok!(checked_params(peer, try_slice!(params, params_len)));
    match peer.notify_encoded(method, params) {
        Ok(()) => foorpc_result::Ok,
        Err(e) => fail_with(&e),
    }
}

/// A number that identifies the connection within the process: every
/// connection (accepted by a server or made by a client) gets its own,
/// never 0 and never reused; every handle of one connection gives the same.
/// 0 when `peer` is NULL. Thread-safe.
#[no_mangle]
pub extern "C" fn foorpc_peer_id(peer: *const foorpc_peer) -> u64 {
    ffi_panic_boundary! {
        // SAFETY: NULL or a live peer.
        unsafe { peer.as_ref() }.map_or(0, |p| p.inner.id())
    }
}

/// Calls `method` on the other side of the connection and waits for the
/// reply: as foorpc_client_call (params array, `timeout_ms` with 0 for the
/// default 30 s, `*result_out` written on FOORPC_RESULT_OK with the result and
/// on FOORPC_RESULT_REMOTE_ERROR with the peer's error object, owned by the
/// caller; `result_out` may be NULL).
///
/// Blocks the calling thread, so call it from a FOORPC_HANDLER_POOL or
/// FOORPC_HANDLER_ORDERED handler or any other thread of yours: from an inline handler or a callback on
/// foorpc's I/O thread it fails at once with FOORPC_RESULT_USAGE (use
/// foorpc_peer_call_async there). Other errors: FOORPC_RESULT_CLOSED,
/// FOORPC_RESULT_CONNECTION_LOST, FOORPC_RESULT_TIMEOUT,
/// FOORPC_RESULT_INVALID_MSGPACK. Thread-safe.
#[no_mangle]
pub extern "C" fn foorpc_peer_call(
    peer: *const foorpc_peer,
    method: *const c_char,
    params: *const u8,
    params_len: usize,
    timeout_ms: u32,
    result_out: *mut *mut foorpc_buf,
) -> foorpc_result {
    ffi_panic_boundary! {
        let peer = try_ref!(peer);
        call(&peer.inner, method, params, params_len, timeout_ms, result_out)
    }
}

/// Calls `method` on the other side without blocking, as
/// foorpc_client_call_async: when it returns FOORPC_RESULT_OK,
/// `callback(userdata, ...)` runs exactly once with the outcome (see
/// foorpc_call_callback), also when the connection closes first; on an
/// error it never runs (errors as for foorpc_client_call_async, the limit
/// being the server's or client's FOORPC_LIMIT_MAX_WRITE_BACKLOG). `userdata`
/// must stay valid until the callback has run. Thread-safe; callable from
/// any thread, inline handlers and callbacks included.
#[no_mangle]
pub extern "C" fn foorpc_peer_call_async(
    peer: *const foorpc_peer,
    method: *const c_char,
    params: *const u8,
    params_len: usize,
    timeout_ms: u32,
    callback: foorpc_call_callback,
    userdata: *mut c_void,
) -> foorpc_result {
    ffi_panic_boundary! {
        let peer = try_ref!(peer);
        call_async(&peer.inner, method, params, params_len, timeout_ms, callback, userdata, None)
    }
}

/// Sends a notification to the other side: `method` with `params` (as for
/// foorpc_client_notify), no reply. Returns once it is queued for sending,
/// without waiting for the peer to read it (errors as for
/// foorpc_client_notify). Thread-safe; callable from any thread, inline
/// handlers included.
#[no_mangle]
pub extern "C" fn foorpc_peer_notify(
    peer: *const foorpc_peer,
    method: *const c_char,
    params: *const u8,
    params_len: usize,
) -> foorpc_result {
    ffi_panic_boundary! {
        let peer = try_ref!(peer);
        notify(&peer.inner, method, params, params_len)
    }
}

/// Closes the connection now, without waiting: calls still pending on it
/// (in both directions) fail with FOORPC_RESULT_CLOSED, and replies of
/// handlers still running are discarded. What was already queued for the
/// peer (a large reply it has not read yet) is still written by the I/O
/// thread, for up to 10 s while the peer does not read, before the socket
/// is shut. To close instead of answering a request, close
/// first, then free the responder (its error reply goes nowhere). A server
/// goes on serving its other connections; closing a client's connection
/// this way is like foorpc_client_close. NULL is fine; calling it twice is
/// fine. Thread-safe; callable from any thread, inline handlers included.
#[no_mangle]
pub extern "C" fn foorpc_peer_close(peer: *const foorpc_peer) {
    ffi_panic_boundary! {
        // SAFETY: NULL or a live peer.
        if let Some(p) = unsafe { peer.as_ref() } {
            p.inner.close();
        }
    }
}

/// True while the connection is open (false once closed by either side, or
/// when `peer` is NULL). Thread-safe.
#[no_mangle]
pub extern "C" fn foorpc_peer_is_connected(peer: *const foorpc_peer) -> bool {
    ffi_panic_boundary! {
        // SAFETY: NULL or a live peer.
        unsafe { peer.as_ref() }.is_some_and(|p| !p.inner.is_closed())
    }
}

/// A new handle to the same connection, e.g. to keep a borrowed peer after
/// its callback returns. On success `*peer_out` receives it; the caller owns
/// it and must call foorpc_peer_free. Thread-safe.
#[no_mangle]
pub extern "C" fn foorpc_peer_clone(
    peer: *const foorpc_peer,
    peer_out: *mut *mut foorpc_peer,
) -> foorpc_result {
    ffi_panic_boundary! {
        let peer = try_ref!(peer);
        let out = try_mut!(peer_out);
        *out = Box::into_raw(Box::new(foorpc_peer { inner: peer.inner.clone() }));
        foorpc_result::Ok
    }
}

/// Frees a handle from foorpc_peer_clone or foorpc_responder_peer. The
/// connection stays open (close it with foorpc_peer_close). NULL is fine.
/// Must be called once per owned handle, when no other thread uses it; never
/// on the borrowed peer of a notification callback.
#[no_mangle]
pub extern "C" fn foorpc_peer_free(peer: *mut foorpc_peer) {
    ffi_panic_boundary! {
        if !peer.is_null() {
            // SAFETY: created by Box::into_raw in this crate, freed once.
            drop(unsafe { Box::from_raw(peer) });
        }
    }
}
