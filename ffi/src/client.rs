//! `foorpc_client_*`: connect to a server and call it;
//! `foorpc_client_options_*`: handlers for what the server sends the client.

use std::os::raw::{c_char, c_void};
use std::sync::{Arc, Mutex, PoisonError};

use foorpc::{Client, Limits, Router};

use crate::buf::foorpc_buf;
use crate::error::{fail_with, foorpc_result};
use crate::handler::{foorpc_handler_callback, foorpc_notification_callback};
use crate::handler::{register, Handlers, Registration, Running};
use crate::peer::{self, foorpc_call_callback, timeout};

/// A connection to a MessagePack-RPC server (TCP or Unix socket).
///
/// Thread-safe: any number of threads may call, call asynchronously and
/// notify through one client at once (calls are pipelined on the connection
/// and replies matched by msgid). Only foorpc_client_free must not overlap
/// with other uses.
pub struct foorpc_client {
    inner: Client,
    /// The call callbacks running, which foorpc_client_free waits for.
    running: Arc<Running>,
}

/// Options for foorpc_client_connect_with: the handlers of requests and
/// notifications the server sends to the client (over the same connection),
/// and the limits the client applies to what the server sends.
///
/// Built with foorpc_client_options_new, foorpc_client_options_register*
/// and foorpc_client_options_set_limit, freed with
/// foorpc_client_options_free. foorpc_client_connect_with copies the
/// handlers and limits, so one options object may serve any number of
/// connections and may be freed (or changed, for later connections only)
/// once connected.
/// Thread-safe (registration is serialized).
pub struct foorpc_client_options {
    router: Mutex<Router>,
    limits: Mutex<Limits>,
}

impl Handlers for foorpc_client_options {
    fn with_router(&self, f: impl FnOnce(&mut Router)) -> Result<(), foorpc_result> {
        f(&mut self.router.lock().unwrap_or_else(PoisonError::into_inner));
        Ok(())
    }
}

/// Creates empty client options (no handlers). On success `*options_out`
/// receives them; the caller owns them and must call
/// foorpc_client_options_free. Any thread.
#[no_mangle]
pub extern "C" fn foorpc_client_options_new(
    options_out: *mut *mut foorpc_client_options,
) -> foorpc_result {
    ffi_panic_boundary! {
        let out = try_mut!(options_out);
        *out = Box::into_raw(Box::new(foorpc_client_options {
            router: Mutex::new(Router::new()),
            limits: Mutex::new(Limits::default()),
        }));
        foorpc_result::Ok
    }
}

/// Registers `callback` for requests the server sends to `method` (a
/// NUL-terminated UTF-8 string, copied), as foorpc_server_register does for
/// a server: `flags` is FOORPC_HANDLER_POOL (0), FOORPC_HANDLER_INLINE
/// (then it runs on the client's I/O thread, shared by the clients of the
/// process, and must not block) or FOORPC_HANDLER_ORDERED (on the pool, one
/// at a time per connection, in arrival order); the handler answers through
/// its responder.
/// A method nobody registered gets an error reply `[1, "unknown method:
/// NAME"]`. Registering a method again replaces its handler.
///
/// `userdata` is passed to every call of `callback` as is. It must stay
/// valid while a client connected with these options exists, and after
/// foorpc_client_free until its handlers still running have returned (pool
/// and ordered handlers are not waited for); it must be safe to use from
/// several threads at once for pool handlers, and for ordered handlers when
/// the options serve more than one connection. Any thread.
#[no_mangle]
pub extern "C" fn foorpc_client_options_register(
    options: *const foorpc_client_options,
    method: *const c_char,
    callback: foorpc_handler_callback,
    userdata: *mut c_void,
    flags: u32,
) -> foorpc_result {
    ffi_panic_boundary! {
        let options = try_ref!(options);
        let method = try_cstr!(method);
        register(options, Registration::Request(Some(method), callback), userdata, flags)
    }
}

/// Registers `callback` for requests to every method that has no handler of
/// its own (instead of the "unknown method" error reply). Otherwise as
/// foorpc_client_options_register.
#[no_mangle]
pub extern "C" fn foorpc_client_options_register_fallback(
    options: *const foorpc_client_options,
    callback: foorpc_handler_callback,
    userdata: *mut c_void,
    flags: u32,
) -> foorpc_result {
    ffi_panic_boundary! {
        let options = try_ref!(options);
        register(options, Registration::Request(None, callback), userdata, flags)
    }
}

/// Registers `callback` for notifications the server sends for `method`
/// (NUL-terminated UTF-8, copied). Notifications nobody registered are
/// ignored. `flags`, `userdata` and the threads are as for
/// foorpc_client_options_register; FOORPC_HANDLER_INLINE (quick handlers)
/// and FOORPC_HANDLER_ORDERED (handlers that may block) see them in arrival
/// order, FOORPC_HANDLER_POOL runs them side by side.
#[no_mangle]
pub extern "C" fn foorpc_client_options_register_notification(
    options: *const foorpc_client_options,
    method: *const c_char,
    callback: foorpc_notification_callback,
    userdata: *mut c_void,
    flags: u32,
) -> foorpc_result {
    ffi_panic_boundary! {
        let options = try_ref!(options);
        let method = try_cstr!(method);
        register(options, Registration::Notification(Some(method), callback), userdata, flags)
    }
}

/// Registers `callback` for notifications of every method that has no
/// notification handler of its own (instead of ignoring them). Otherwise as
/// foorpc_client_options_register_notification.
#[no_mangle]
pub extern "C" fn foorpc_client_options_register_notification_fallback(
    options: *const foorpc_client_options,
    callback: foorpc_notification_callback,
    userdata: *mut c_void,
    flags: u32,
) -> foorpc_result {
    ffi_panic_boundary! {
        let options = try_ref!(options);
        register(options, Registration::Notification(None, callback), userdata, flags)
    }
}

/// Sets one of the limits a client connected with these options applies to
/// what the server sends: `limit` is a FOORPC_LIMIT_* constant, `value` at
/// least 1 (UINT64_MAX: no limit; see each constant for its meaning and
/// default;
/// FOORPC_LIMIT_MAX_CONNECTIONS is for servers and does nothing here;
/// FOORPC_LIMIT_MAX_REQUEST_BACKLOG bounds what the client's handlers hold;
/// FOORPC_LIMIT_MAX_WRITE_BACKLOG bounds what foorpc_client_call_async and
/// foorpc_client_notify leave queued).
/// Like the handlers, the limits are copied when a client connects. Errors:
/// FOORPC_RESULT_INVALID_ARGUMENT (unknown limit, or 0). Any thread.
#[no_mangle]
pub extern "C" fn foorpc_client_options_set_limit(
    options: *const foorpc_client_options,
    limit: u32,
    value: u64,
) -> foorpc_result {
    ffi_panic_boundary! {
        let options = try_ref!(options);
        let mut limits = options.limits.lock().unwrap_or_else(PoisonError::into_inner);
        crate::limits::set(&mut limits, limit, value)
    }
}

/// Frees client options. Clients connected with them keep their handlers.
/// NULL is fine. Must be called once, when no other thread uses them.
#[no_mangle]
pub extern "C" fn foorpc_client_options_free(options: *mut foorpc_client_options) {
    ffi_panic_boundary! {
        if !options.is_null() {
            // SAFETY: created by foorpc_client_options_new, freed once.
            drop(unsafe { Box::from_raw(options) });
        }
    }
}

/// Connects to `address`: "tcp://HOST:PORT" or "unix:///PATH" (a
/// NUL-terminated string, not retained), waiting at most `timeout_ms`
/// milliseconds for the connection (0: the default, 10 s). Calls made later
/// without their own timeout wait at most 30 s. The client serves no
/// requests: the server's requests get an error reply, its notifications are
/// ignored (see foorpc_client_connect_with). Such a client reads only while
/// one of its own calls waits, so a server request sent while none does is
/// answered at the client's next call (or waits out the server's timeout),
/// until it needs foorpc's client I/O thread: from its first
/// foorpc_client_call_async, or the first notification the socket does not
/// take at once, on, that thread reads and writes for it.
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
    foorpc_client_connect_with(address, timeout_ms, std::ptr::null(), client_out)
}

/// Connects as foorpc_client_connect, with `options` (NULL: none): the
/// server may then call the client's handlers over this connection at any
/// time, and they run on foorpc's client threads (see
/// foorpc_client_options_register). The handlers are copied; `options` is
/// not retained. Any thread may call it.
#[no_mangle]
pub extern "C" fn foorpc_client_connect_with(
    address: *const c_char,
    timeout_ms: u32,
    options: *const foorpc_client_options,
    client_out: *mut *mut foorpc_client,
) -> foorpc_result {
    ffi_panic_boundary! {
        let address = try_cstr!(address);
        let out = try_mut!(client_out);
        let mut builder = Client::builder()
            .connect_timeout(timeout(timeout_ms, foorpc::DEFAULT_CONNECT_TIMEOUT));
        // SAFETY: NULL or live options (the caller's contract).
        if let Some(o) = unsafe { options.as_ref() } {
            builder = builder
                .router(o.router.lock().unwrap_or_else(PoisonError::into_inner).clone())
                .limits(o.limits.lock().unwrap_or_else(PoisonError::into_inner).clone());
        }
        match builder.connect(address) {
            Ok(inner) => {
                *out = Box::into_raw(Box::new(foorpc_client {
                    inner,
                    running: Running::new(),
                }));
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
/// Other errors: FOORPC_RESULT_INVALID_MSGPACK (params are not one array,
/// or exceed the client's limits as set with foorpc_client_options_set_limit,
/// by default 64 MiB, 256 MiB once decoded at 40 bytes per value,
/// arrays/maps nested 128 deep counting the request and params arrays;
/// nothing is sent and the connection stays open),
/// FOORPC_RESULT_TIMEOUT (if this thread was still writing the request
/// then, the connection is closed too: part of it may be on the wire),
/// FOORPC_RESULT_CONNECTION_LOST,
/// FOORPC_RESULT_CLOSED, FOORPC_RESULT_USAGE (called from an inline handler
/// or a callback on foorpc's I/O thread, or from a callback that runs on a
/// thread blocked in a call on the same connection: see
/// foorpc_call_callback). Thread-safe; blocks the calling thread until the
/// reply or the timeout.
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
        peer::call(client.inner.peer(), method, params, params_len, timeout_ms, result_out)
    }
}

/// Calls `method` without blocking: queues the request and returns at
/// once, without waiting for the server to read it; `callback(userdata,
/// ...)` receives the outcome later (see foorpc_call_callback for its thread
/// and arguments). What the socket does not take at once is written by
/// foorpc's client I/O thread (shared by the clients of the process). `method`,
/// `params` and `params_len` are as for foorpc_client_call and are not
/// retained (what is still to be written is copied); `timeout_ms` bounds the
/// wait for the reply, writing the request included (0: the default, 30 s).
///
/// When it returns FOORPC_RESULT_OK the callback runs exactly once: with
/// the reply; with FOORPC_RESULT_TIMEOUT when none came in time (a request
/// not all written by then is still written whole, and its late reply
/// ignored: the connection stays usable); with
/// FOORPC_RESULT_CONNECTION_LOST when the connection fails; with
/// FOORPC_RESULT_CLOSED when the client is closed or freed first. One
/// exception: a reply the I/O thread has read but not yet handed to the
/// callback when foorpc_client_free starts is dropped and its callback never
/// runs (see foorpc_client_free). `userdata` must stay valid until the
/// callback has run, or until foorpc_client_free has returned.
///
/// On an error the callback never runs and nothing is sent:
/// FOORPC_RESULT_INVALID_MSGPACK (as for foorpc_client_call),
/// FOORPC_RESULT_LIMIT_EXCEEDED (more than the client's
/// FOORPC_LIMIT_MAX_WRITE_BACKLOG, by default 8 MiB, already waits unwritten
/// for the server to read it; one request may exceed it; the connection
/// stays open), FOORPC_RESULT_CLOSED or FOORPC_RESULT_CONNECTION_LOST (the
/// connection is closed). Thread-safe; callable from any thread, including
/// from a callback.
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
        peer::call_async(
            client.inner.peer(),
            method,
            params,
            params_len,
            timeout_ms,
            callback,
            userdata,
            Some(client.running.clone()),
        )
    }
}

/// Sends a notification: `method` with `params` (as for foorpc_client_call,
/// not retained), no reply. Queues it and returns at once, without waiting
/// for the server to read it: what the socket does not take at once is
/// written by foorpc's client I/O thread, as for foorpc_client_call_async.
/// It may still be lost if the connection fails. What is queued is still
/// written after foorpc_client_close or foorpc_client_free, which return at
/// once: the I/O thread goes on writing for up to 10 s while the server does
/// not read, then shuts the socket.
/// Errors (nothing is sent): FOORPC_RESULT_INVALID_MSGPACK,
/// FOORPC_RESULT_LIMIT_EXCEEDED (as for foorpc_client_call_async),
/// FOORPC_RESULT_CLOSED, FOORPC_RESULT_CONNECTION_LOST. Thread-safe;
/// callable from any thread, including from a callback.
#[no_mangle]
pub extern "C" fn foorpc_client_notify(
    client: *const foorpc_client,
    method: *const c_char,
    params: *const u8,
    params_len: usize,
) -> foorpc_result {
    ffi_panic_boundary! {
        let client = try_ref!(client);
        peer::notify(client.inner.peer(), method, params, params_len)
    }
}

/// Closes the connection: calls still waiting fail with FOORPC_RESULT_CLOSED
/// (their callbacks run), and later calls fail at once. It returns at once;
/// notifications and requests already queued (that the socket had no room
/// for) are still written by the I/O thread for up to 10 s while the server
/// does not read, as the kernel writes a closed socket's buffer. The client stays
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
/// callbacks of calls still pending run with FOORPC_RESULT_CLOSED, all of
/// them before it returns. It also waits, however long they take, until no
/// callback of this client's foorpc_client_call_async runs any more (one the
/// I/O thread was already delivering, say); a callback that has not started
/// by then never runs. So no call callback uses its `userdata` once it
/// returns (handlers registered with foorpc_client_options_register* are
/// not waited for). Must not be called from a foorpc callback of this
/// client (if it is, it does not wait for the callbacks the calling thread
/// is inside of). In a child process after fork(), closing or freeing a
/// client inherited from the parent releases only the child's copy: the
/// parent's connection goes on.
#[no_mangle]
pub extern "C" fn foorpc_client_free(client: *mut foorpc_client) {
    ffi_panic_boundary! {
        if !client.is_null() {
            // SAFETY: created by foorpc_client_connect, freed once.
            let c = unsafe { Box::from_raw(client) };
            c.inner.close();
            c.running.close_and_wait();
            drop(c);
        }
    }
}
