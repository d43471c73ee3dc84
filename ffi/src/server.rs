//! `foorpc_server_*`: serve C handlers; `foorpc_responder_*`: answer a request.
//!
//! A `foorpc_server` goes from building (register handlers, bind addresses)
//! to running (`foorpc_server_start` or `foorpc_server_run`) to stopped
//! (`foorpc_server_stop`). It wraps the core `ServerBuilder`, `Router` and
//! `Server`; each C callback becomes a core handler that encodes the params
//! array once and hands C a boxed `Responder`.

use std::os::raw::{c_char, c_void};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use foorpc::transport::{Address, Listener};
use foorpc::{Error, Limits, Peer, Responder, Router, Server, Value};

use crate::error::{fail, fail_with, foorpc_result};
use crate::handler::{
    foorpc_handler_callback, foorpc_notification_callback, in_handler, register, Handlers,
    Registration, Running,
};
use crate::peer::foorpc_peer;

/// A MessagePack-RPC server with C handlers.
///
/// Thread-safe: any thread may call its functions, but handlers can only be
/// registered and addresses bound before it starts.
pub struct foorpc_server {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    stopped: Condvar,
    /// The C handlers running, which foorpc_server_free waits for.
    running: Arc<Running>,
}

enum State {
    Building {
        router: Router,
        limits: Limits,
        listeners: Vec<Listener>,
        addrs: Vec<Address>,
    },
    Running {
        server: Arc<Server>,
        addrs: Vec<Address>,
    },
    Stopping {
        addrs: Vec<Address>,
    },
    Stopped {
        addrs: Vec<Address>,
    },
}

impl State {
    fn addrs(&self) -> &[Address] {
        match self {
            State::Building { addrs, .. }
            | State::Running { addrs, .. }
            | State::Stopping { addrs }
            | State::Stopped { addrs } => addrs,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the server has stopped.
    fn wait_stopped(&self, mut st: MutexGuard<'_, State>) {
        while !matches!(*st, State::Stopped { .. }) {
            st = self.stopped.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn finish_stop(&self, server: Arc<Server>) {
        server.shutdown();
        drop(server);
        let mut st = self.lock();
        let addrs = std::mem::take(&mut *st).into_addrs();
        *st = State::Stopped { addrs };
        self.stopped.notify_all();
    }

    /// Starts a server that is being built; false (with the last error set)
    /// when it cannot start.
    fn start_locked(&self, st: &mut State) -> Result<(), foorpc_result> {
        let State::Building { .. } = st else {
            return Err(fail(
                foorpc_result::InvalidState,
                "the server was already started or stopped",
            ));
        };
        if st.addrs().is_empty() {
            return Err(fail(
                foorpc_result::InvalidState,
                "bind at least one address (foorpc_server_bind) before starting",
            ));
        }
        let State::Building {
            router,
            limits,
            listeners,
            addrs,
        } = std::mem::take(st)
        else {
            unreachable!("checked above");
        };
        let builder = listeners
            .into_iter()
            .fold(Server::builder().router(router).limits(limits), |b, l| {
                b.listener(l)
            });
        match builder.start() {
            Ok(server) => {
                *st = State::Running {
                    server: Arc::new(server),
                    addrs,
                };
                Ok(())
            }
            Err(e) => {
                *st = State::Stopped { addrs };
                self.stopped.notify_all();
                Err(fail_with(&e))
            }
        }
    }
}

impl Default for State {
    fn default() -> Self {
        State::Stopped { addrs: Vec::new() }
    }
}

impl State {
    fn into_addrs(self) -> Vec<Address> {
        match self {
            State::Building { addrs, .. }
            | State::Running { addrs, .. }
            | State::Stopping { addrs }
            | State::Stopped { addrs } => addrs,
        }
    }
}

/// Answers one request, exactly once, from any thread.
///
/// Owned by the handler that received it. foorpc_responder_ok and
/// foorpc_responder_error answer and free it; foorpc_responder_free frees it
/// unanswered, which sends the caller an error reply (so a caller never waits
/// for an answer that will not come). After any of these three the pointer is
/// invalid. One responder must not be used by two threads at once, but it
/// may be passed to another thread and answered there.
pub struct foorpc_responder {
    pub(crate) inner: Responder,
    /// The connection the request came on.
    pub(crate) peer: Peer,
}

/// Creates a server with no handlers and no addresses. On success
/// `*server_out` receives it; the caller owns it and must call
/// foorpc_server_free. Then: foorpc_server_register* and foorpc_server_bind,
/// then foorpc_server_start or foorpc_server_run. Any thread may call it.
#[no_mangle]
pub extern "C" fn foorpc_server_new(server_out: *mut *mut foorpc_server) -> foorpc_result {
    ffi_panic_boundary! {
        let out = try_mut!(server_out);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::Building {
                router: Router::new(),
                limits: Limits::default(),
                listeners: Vec::new(),
                addrs: Vec::new(),
            }),
            stopped: Condvar::new(),
            running: Running::new(),
        });
        *out = Box::into_raw(Box::new(foorpc_server { shared }));
        foorpc_result::Ok
    }
}

/// Handlers go on the router of a server that is still being built.
impl Handlers for foorpc_server {
    fn with_router(&self, f: impl FnOnce(&mut Router)) -> Result<(), foorpc_result> {
        let mut st = self.shared.lock();
        match &mut *st {
            State::Building { router, .. } => {
                f(router);
                Ok(())
            }
            _ => Err(fail(
                foorpc_result::InvalidState,
                "handlers must be registered before the server starts",
            )),
        }
    }

    fn running(&self) -> Option<Arc<Running>> {
        Some(self.shared.running.clone())
    }
}

/// Registers `callback` for requests to `method` (a NUL-terminated UTF-8
/// string, copied). `flags` is FOORPC_HANDLER_POOL (0),
/// FOORPC_HANDLER_INLINE or FOORPC_HANDLER_ORDERED (anything else:
/// FOORPC_RESULT_INVALID_ARGUMENT); see foorpc_handler_callback for the
/// threads it runs on. `userdata` is passed to every call of `callback` as
/// is; it must stay valid until foorpc_server_free returns, which waits until
/// no handler of the server runs any more (and must be safe to use from
/// several threads at once for pool handlers, and for ordered handlers,
/// which run one at a time per connection only). Registering a method again
/// replaces its handler. A method nobody registered gets an error reply
/// `[1, "unknown method: NAME"]`.
///
/// Only before the server starts (FOORPC_RESULT_INVALID_STATE after). Any
/// thread may call it.
#[no_mangle]
pub extern "C" fn foorpc_server_register(
    server: *mut foorpc_server,
    method: *const c_char,
    callback: foorpc_handler_callback,
    userdata: *mut c_void,
    flags: u32,
) -> foorpc_result {
    ffi_panic_boundary! {
        let server = try_ref!(server);
        let method = try_cstr!(method);
        register(server, Registration::Request(Some(method), callback), userdata, flags)
    }
}

/// Registers `callback` for requests to every method that has no handler of
/// its own (instead of the "unknown method" error reply). Otherwise as
/// foorpc_server_register.
#[no_mangle]
pub extern "C" fn foorpc_server_register_fallback(
    server: *mut foorpc_server,
    callback: foorpc_handler_callback,
    userdata: *mut c_void,
    flags: u32,
) -> foorpc_result {
    ffi_panic_boundary! {
        let server = try_ref!(server);
        register(server, Registration::Request(None, callback), userdata, flags)
    }
}

/// Registers `callback` for notifications of `method` (NUL-terminated
/// UTF-8, copied). Notifications nobody registered are ignored (see
/// foorpc_server_register_notification_fallback). `flags`, `userdata` and
/// the threads are as for foorpc_server_register. One connection's
/// notifications are seen in arrival order with FOORPC_HANDLER_INLINE (on
/// the I/O thread: quick handlers only) or FOORPC_HANDLER_ORDERED (on the
/// pool: a slow one holds up only its connection's later ORDERED messages);
/// FOORPC_HANDLER_POOL runs them side by side. The callback gets the
/// connection as a borrowed foorpc_peer. Only before the server starts.
#[no_mangle]
pub extern "C" fn foorpc_server_register_notification(
    server: *mut foorpc_server,
    method: *const c_char,
    callback: foorpc_notification_callback,
    userdata: *mut c_void,
    flags: u32,
) -> foorpc_result {
    ffi_panic_boundary! {
        let server = try_ref!(server);
        let method = try_cstr!(method);
        register(server, Registration::Notification(Some(method), callback), userdata, flags)
    }
}

/// Registers `callback` for notifications of every method that has no
/// notification handler of its own (instead of ignoring them). Otherwise as
/// foorpc_server_register_notification. Only before the server starts.
#[no_mangle]
pub extern "C" fn foorpc_server_register_notification_fallback(
    server: *mut foorpc_server,
    callback: foorpc_notification_callback,
    userdata: *mut c_void,
    flags: u32,
) -> foorpc_result {
    ffi_panic_boundary! {
        let server = try_ref!(server);
        register(server, Registration::Notification(None, callback), userdata, flags)
    }
}

/// Sets one of the limits the server applies to its clients: `limit` is a
/// FOORPC_LIMIT_* constant, `value` at least 1 (UINT64_MAX: no limit; see
/// each constant for its meaning and default). Errors: FOORPC_RESULT_INVALID_ARGUMENT (unknown
/// limit, or 0), FOORPC_RESULT_INVALID_STATE once the server has started.
/// Any thread.
#[no_mangle]
pub extern "C" fn foorpc_server_set_limit(
    server: *mut foorpc_server,
    limit: u32,
    value: u64,
) -> foorpc_result {
    ffi_panic_boundary! {
        let server = try_ref!(server);
        let mut st = server.shared.lock();
        let State::Building { limits, .. } = &mut *st else {
            return fail(
                foorpc_result::InvalidState,
                "limits must be set before the server starts",
            );
        };
        crate::limits::set(limits, limit, value)
    }
}

/// Binds `address` now: "tcp://HOST:PORT" (port 0 picks a free port, see
/// foorpc_server_local_address) or "unix:///PATH" (a stale socket file is
/// replaced; the file is removed when the server stops). NUL-terminated,
/// not retained. May be called several times to serve several addresses.
/// Connections are accepted once the server starts.
///
/// Errors: FOORPC_RESULT_INVALID_ADDRESS, FOORPC_RESULT_IO (e.g. address in
/// use), FOORPC_RESULT_INVALID_STATE after the server started. Any thread.
#[no_mangle]
pub extern "C" fn foorpc_server_bind(
    server: *mut foorpc_server,
    address: *const c_char,
) -> foorpc_result {
    ffi_panic_boundary! {
        let server = try_ref!(server);
        let address = try_cstr!(address);
        let mut st = server.shared.lock();
        let State::Building { listeners, addrs, .. } = &mut *st else {
            return fail(
                foorpc_result::InvalidState,
                "addresses must be bound before the server starts",
            );
        };
        let bound = Address::parse(address)
            .and_then(|a| Listener::bind(&a))
            .and_then(|l| Ok((l.local_address()?, l)));
        match bound {
            Ok((addr, listener)) => {
                listeners.push(listener);
                addrs.push(addr);
                foorpc_result::Ok
            }
            Err(e) => fail_with(&e),
        }
    }
}

/// Writes the first bound address, with the real port (e.g.
/// "tcp://127.0.0.1:40123" or "unix:///tmp/x.sock"), NUL-terminated, into
/// the caller's `buf` of `len` bytes; `*out_n` receives its length without
/// the NUL. When `len` is too small, nothing is written to `buf`, `*out_n`
/// receives the length needed (without the NUL) and the result is
/// FOORPC_RESULT_BUFFER_TOO_SMALL. As with snprintf, `buf` may be NULL when
/// `len` is 0, to ask for the size: `foorpc_server_local_address(s, NULL, 0,
/// &n)` gives FOORPC_RESULT_BUFFER_TOO_SMALL and `n`, then a buffer of
/// `n + 1` bytes fits. `out_n` may be NULL. FOORPC_RESULT_NULL_PARAMETER
/// when `buf` is NULL and `len` is not 0; FOORPC_RESULT_INVALID_STATE when
/// nothing is bound. Any thread.
#[no_mangle]
pub extern "C" fn foorpc_server_local_address(
    server: *const foorpc_server,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> foorpc_result {
    ffi_panic_boundary! {
        let server = try_ref!(server);
        if buf.is_null() && len != 0 {
            return crate::error::null_parameter("buf");
        }
        let text = match server.shared.lock().addrs().first() {
            Some(a) => a.to_string(),
            None => return fail(foorpc_result::InvalidState, "no address is bound"),
        };
        if !out_n.is_null() {
            // SAFETY: checked non-NULL; the caller's out-pointer.
            unsafe { *out_n = text.len() };
        }
        if text.len() >= len {
            return fail(
                foorpc_result::BufferTooSmall,
                format!("the address needs {} bytes with its NUL", text.len() + 1),
            );
        }
        // SAFETY: buf holds len > text.len() bytes (the caller's contract).
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
            *buf.add(text.len()) = 0;
        }
        foorpc_result::Ok
    }
}

/// Starts serving in the background and returns at once: connections are
/// accepted and handlers run on foorpc's threads until foorpc_server_stop
/// or foorpc_server_free. Needs at least one bound address.
/// FOORPC_RESULT_INVALID_STATE when already started or stopped. Any thread.
#[no_mangle]
pub extern "C" fn foorpc_server_start(server: *mut foorpc_server) -> foorpc_result {
    ffi_panic_boundary! {
        let server = try_ref!(server);
        let mut st = server.shared.lock();
        match server.shared.start_locked(&mut st) {
            Ok(()) => foorpc_result::Ok,
            Err(code) => code,
        }
    }
}

/// Serves in the foreground: starts the server if foorpc_server_start was not
/// called, then blocks until the server has stopped (foorpc_server_stop from
/// another thread, e.g. a signal-handling thread or a handler). Returns
/// FOORPC_RESULT_OK once stopped, at once if it was already stopped.
/// Must not be called from a handler.
#[no_mangle]
pub extern "C" fn foorpc_server_run(server: *mut foorpc_server) -> foorpc_result {
    ffi_panic_boundary! {
        let server = try_ref!(server);
        let shared = server.shared.clone();
        let mut st = shared.lock();
        if let State::Building { .. } = &*st {
            if let Err(code) = shared.start_locked(&mut st) {
                return code;
            }
        }
        shared.wait_stopped(st);
        foorpc_result::Ok
    }
}

/// Stops the server gracefully: stops accepting connections, lets requests
/// being handled, and POOL and ORDERED notifications already read, finish
/// (for up to 10 s; new requests get an error reply; a
/// handler still holding its responder is waited for even when its
/// connection has closed), sends their replies (waiting up to 1 s in all,
/// however many peers do not read them), closes every connection, and wakes
/// foorpc_server_run. Blocks until done, except when called from a
/// handler (of any flags) or from a foorpc_call_callback (of any client or
/// server), where it only starts the shutdown and returns at once: waiting
/// there would wait for the calling handler's own request, or stall the I/O
/// thread the shutdown needs.
///
/// Any thread may call it, any number of times, also before the server
/// starts (then it never starts). It is not async-signal-safe: call it from
/// a thread that waits for signals (sigwait) or reads a self-pipe, not from
/// a signal handler.
#[no_mangle]
pub extern "C" fn foorpc_server_stop(server: *const foorpc_server) -> foorpc_result {
    ffi_panic_boundary! {
        let server = try_ref!(server);
        let shared = server.shared.clone();
        let in_handler = in_handler();
        let mut st = shared.lock();
        match std::mem::take(&mut *st) {
            State::Building { addrs, .. } => {
                // Dropping the listeners closes them (and removes Unix socket files).
                *st = State::Stopped { addrs };
                shared.stopped.notify_all();
            }
            State::Running { server, addrs } => {
                *st = State::Stopping { addrs };
                drop(st);
                if in_handler {
                    // The handler or callback must return (and an I/O thread
                    // go on running) for the drain to finish.
                    let (shared2, server2) = (shared.clone(), server.clone());
                    let spawned = std::thread::Builder::new()
                        .name("foorpc-stop".into())
                        .spawn(move || shared2.finish_stop(server2));
                    if let Err(e) = spawned {
                        let mut st = shared.lock();
                        let addrs = std::mem::take(&mut *st).into_addrs();
                        *st = State::Running { server, addrs };
                        return fail_with(&Error::from(e));
                    }
                } else {
                    shared.finish_stop(server);
                }
            }
            State::Stopping { addrs } => {
                *st = State::Stopping { addrs };
                if !in_handler {
                    shared.wait_stopped(st);
                }
            }
            stopped @ State::Stopped { .. } => *st = stopped,
        }
        foorpc_result::Ok
    }
}

/// Stops the server (as foorpc_server_stop, blocking) and frees it. NULL is
/// fine. Must be called once, not from a handler, and not while another
/// thread still uses the server (a foorpc_server_run blocked on it must have
/// returned). Responders still held by C stay valid (answering them after
/// the stop is harmless).
///
/// After the stop it waits, however long they take, until no handler of the
/// server runs any more: request handlers still running after the stop's
/// 10 s, and notification handlers (which the stop does not wait for).
/// Handlers that have not started by then are never called (a request gets
/// an error reply), so no handler uses a `userdata` of the server once it
/// returns. (Called from a handler anyway, it does not wait for the handlers
/// the calling thread is inside of.)
///
/// In a child process after fork(), foorpc_server_stop and
/// foorpc_server_free return at once without stopping anything: the server
/// goes on in the parent, and the child only frees its copy of the handle
/// (the child's copies of the server's sockets stay open until it exits or
/// execs).
#[no_mangle]
pub extern "C" fn foorpc_server_free(server: *mut foorpc_server) {
    ffi_panic_boundary! {
        if server.is_null() {
            return;
        }
        foorpc_server_stop(server);
        // SAFETY: created by foorpc_server_new, freed once.
        let s = unsafe { Box::from_raw(server) };
        let st = s.shared.lock();
        s.shared.wait_stopped(st);
        s.shared.running.close_and_wait();
    }
}

// ---------------------------------------------------------------------------
// Responder
// ---------------------------------------------------------------------------

/// Takes the responder out of its box (the box is freed).
fn take_responder(responder: *mut foorpc_responder) -> Option<Responder> {
    if responder.is_null() {
        return None;
    }
    // SAFETY: handed out by a handler adapter, used once (the C contract).
    Some(unsafe { Box::from_raw(responder) }.inner)
}

/// The code for the outcome of `Responder::ok_encoded` / `error_encoded`,
/// which answer in every case: their only failure is bytes that are not
/// one valid MessagePack value within the connection's limits (the caller
/// then got an error reply instead).
fn answered(outcome: Result<(), Error>, what: &str) -> foorpc_result {
    match outcome {
        Ok(()) => foorpc_result::Ok,
        Err(e) => {
            let why = match e {
                Error::Usage(m) => m,
                other => other.to_string(),
            };
            fail(
                foorpc_result::InvalidMsgpack,
                format!("{what} was not sent (the caller got an error reply): {why}"),
            )
        }
    }
}

/// The connection the request came on: on success `*peer_out` receives a
/// new handle to it, which the caller owns and must free with
/// foorpc_peer_free (it may outlive the responder). Use it to call the
/// caller back (foorpc_peer_call from a pool handler, foorpc_peer_call_async
/// from anywhere), to tell connections apart (foorpc_peer_id) or to close
/// the connection (foorpc_peer_close). Does not answer or free the
/// responder. Any thread that owns the responder.
#[no_mangle]
pub extern "C" fn foorpc_responder_peer(
    responder: *const foorpc_responder,
    peer_out: *mut *mut foorpc_peer,
) -> foorpc_result {
    ffi_panic_boundary! {
        let responder = try_ref!(responder);
        let out = try_mut!(peer_out);
        *out = Box::into_raw(Box::new(foorpc_peer { inner: responder.peer.clone() }));
        foorpc_result::Ok
    }
}

/// Answers the request with a result: `result`/`result_len` is the MessagePack
/// encoding of one value (copied; an empty input answers nil). Frees the
/// responder in every case (except when it is NULL): if the bytes are not
/// exactly one valid value (or exceed the connection's limits: the
/// server's, or for a client's handler the client's, as set with
/// foorpc_server_set_limit or foorpc_client_options_set_limit; by default
/// 64 MiB, 256 MiB once decoded at 40 bytes per value, arrays/maps nested
/// 128 deep counting the reply array),
/// the caller gets an error reply and this
/// returns FOORPC_RESULT_INVALID_MSGPACK. Any thread may call it.
#[no_mangle]
pub extern "C" fn foorpc_responder_ok(
    responder: *mut foorpc_responder,
    result: *const u8,
    result_len: usize,
) -> foorpc_result {
    ffi_panic_boundary! {
        let Some(r) = take_responder(responder) else {
            return crate::error::null_parameter("responder");
        };
        let bytes = try_slice!(result, result_len);
        if bytes.is_empty() {
            r.ok(Value::Nil);
            return foorpc_result::Ok;
        }
        answered(r.ok_encoded(bytes), "the handler's result")
    }
}

/// Answers the request with an error object: `error`/`error_len` is the
/// MessagePack encoding of one value, sent as is (foorpc's shape is
/// `[code, message]`; nil or an empty input becomes `[0, "error"]`, since a
/// nil error would read as success). Frees the responder in every case
/// (except when it is NULL); invalid bytes send `[0, "..."]` and return
/// FOORPC_RESULT_INVALID_MSGPACK. Any thread.
#[no_mangle]
pub extern "C" fn foorpc_responder_error(
    responder: *mut foorpc_responder,
    error: *const u8,
    error_len: usize,
) -> foorpc_result {
    ffi_panic_boundary! {
        let Some(r) = take_responder(responder) else {
            return crate::error::null_parameter("responder");
        };
        let bytes = try_slice!(error, error_len);
        if bytes.is_empty() || bytes == [0xc0] {
            r.error(Value::Nil);
            return foorpc_result::Ok;
        }
        answered(r.error_encoded(bytes), "the handler's error object")
    }
}

/// Answers the request with foorpc's error object `[code, message]`:
/// `message`/`message_len` are UTF-8 bytes (copied; not NUL-terminated; NULL
/// is fine when the length is 0; invalid UTF-8 is replaced by U+FFFD). Use
/// code 0 for "the call failed" and 1 for "the call was invalid" (Neovim's
/// codes). Frees the responder (except when it is NULL). Any thread.
#[no_mangle]
pub extern "C" fn foorpc_responder_error_message(
    responder: *mut foorpc_responder,
    code: i64,
    message: *const c_char,
    message_len: usize,
) -> foorpc_result {
    ffi_panic_boundary! {
        let Some(r) = take_responder(responder) else {
            return crate::error::null_parameter("responder");
        };
        let bytes = try_slice!(message, message_len);
        r.error(Error::error_object(code, String::from_utf8_lossy(bytes)));
        foorpc_result::Ok
    }
}

/// Frees a responder without answering: the caller gets the error reply
/// `[0, "the handler dropped the request without answering"]`. NULL is fine.
/// Any thread.
#[no_mangle]
pub extern "C" fn foorpc_responder_free(responder: *mut foorpc_responder) {
    ffi_panic_boundary! {
        drop(take_responder(responder));
    }
}
