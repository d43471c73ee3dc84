//! C handlers: the callback types, the handler flags, and the adapters that
//! turn a C callback into a core handler. Shared by the server
//! (`foorpc_server_register*`) and by client-side handlers
//! (`foorpc_client_options_register*`): both fill a core `Router`.

use std::cell::{Cell, RefCell};
use std::os::raw::{c_char, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use foorpc::{Execution, Notification, Request, Router, Value};

use crate::error::{fail, foorpc_result, null_parameter};
use crate::peer::{foorpc_peer, SendPtr};
use crate::server::foorpc_responder;

/// Flag for foorpc_server_register* and foorpc_client_options_register*: run
/// the handler on foorpc's worker pool (the default, 0). It may block
/// (including blocking calls back to the peer with foorpc_peer_call);
/// handlers of concurrent requests run at the same time on different threads.
/// On a connection with FOORPC_HANDLER_ORDERED handlers, it starts once the
/// ordered handlers of the messages before it have returned.
/// A server, or a client with handlers, reads no more from a peer whose
/// requests waiting on handlers (answered or not by handlers that keep their
/// responder) and pool notifications add up to more than 16 MiB
/// (FOORPC_LIMIT_MAX_REQUEST_BACKLOG), until they are down to half.
pub const FOORPC_HANDLER_POOL: u32 = 0;
/// Flag for foorpc_server_register* and foorpc_client_options_register*: run
/// the handler on the I/O thread that read the message: no thread hand-off,
/// but it must be quick and never block: a blocking foorpc call
/// (foorpc_peer_call, foorpc_client_call) on a connection this I/O thread
/// serves fails with FOORPC_RESULT_USAGE; any other blocking call (on
/// another client, say), and any sleep, stalls every connection of this I/O
/// thread (every connection of the server, or every client of the process
/// that uses foorpc's client I/O thread) until it returns; the
/// asynchronous calls and notifications never block. Use it for short handlers and
/// for handlers that hand their responder to another thread to answer later.
/// Inline notification handlers see notifications of one connection in
/// arrival order.
pub const FOORPC_HANDLER_INLINE: u32 = 1;
/// Flag for foorpc_server_register* and foorpc_client_options_register*: run
/// the handler on foorpc's worker pool, one message at a time per connection
/// and in arrival order: the handler of a connection's ORDERED message
/// (request or notification, whatever its method) starts once the handlers
/// of that connection's earlier ORDERED messages have returned. It may block
/// (including blocking calls back to the peer with foorpc_peer_call): a slow
/// one holds up only its own connection's later messages whose handlers are
/// ORDERED or POOL (a POOL handler starts once the ORDERED handlers of the
/// messages before it have returned, so that it sees their effects as it
/// would an INLINE handler's), never the I/O thread, other connections, or
/// INLINE handlers. It may run on any pool thread, not always the same one, but
/// never two of one connection at once; handlers of different connections
/// run at the same time. The order is that of the handlers' runs: a request
/// handler that keeps its responder to answer later lets the next message
/// start when it returns. A blocking call back to the peer that needs one of
/// this connection's later ORDERED messages handled before it is answered
/// waits until its timeout. ORDERED messages waiting their turn count
/// against the same 16 MiB as POOL ones. The choice for notification
/// handlers that may be slow and need their connection's arrival order.
pub const FOORPC_HANDLER_ORDERED: u32 = 2;

/// Handles one request.
///
/// `userdata` is the pointer given at registration. `method`/`method_len`
/// name the method called (NUL-terminated too, for convenience); `params`/
/// `params_len` are the MessagePack encoding of the params array (read it
/// with foorpc_reader). Both are borrowed: valid only until the callback
/// returns.
///
/// `responder` is owned by the callback: answer exactly once with
/// foorpc_responder_ok or foorpc_responder_error (which free it), now or
/// later from any thread, or free it with foorpc_responder_free (which sends
/// an error reply). It stays valid until then, even after the server stops.
/// foorpc_responder_peer gives the connection the request came on (to call
/// the caller back, or to close its connection).
///
/// Runs on a worker-pool thread (FOORPC_HANDLER_POOL), possibly on several
/// threads at once for concurrent requests; on the I/O thread that read
/// the request (FOORPC_HANDLER_INLINE); or on a worker-pool thread after
/// the connection's earlier ORDERED handlers have returned, never at the
/// same time as another ORDERED handler of the same connection
/// (FOORPC_HANDLER_ORDERED).
pub type foorpc_handler_callback = Option<
    unsafe extern "C" fn(
        userdata: *mut c_void,
        method: *const c_char,
        method_len: usize,
        params: *const u8,
        params_len: usize,
        responder: *mut foorpc_responder,
    ),
>;

/// Handles one notification (no answer is sent). `userdata`, `method` and
/// `params` and the threads are as for foorpc_handler_callback: one
/// connection's notifications reach INLINE handlers (quick ones, on the I/O
/// thread) and ORDERED handlers (which may block) in arrival order; POOL
/// handlers run them side by side.
///
/// `peer` is the connection the notification came on, borrowed: valid only
/// until the callback returns. foorpc_peer_id tells connections apart; call
/// foorpc_peer_clone to keep a handle for later. Never NULL.
pub type foorpc_notification_callback = Option<
    unsafe extern "C" fn(
        userdata: *mut c_void,
        method: *const c_char,
        method_len: usize,
        params: *const u8,
        params_len: usize,
        peer: *const foorpc_peer,
    ),
>;

type HandlerFn = unsafe extern "C" fn(
    *mut c_void,
    *const c_char,
    usize,
    *const u8,
    usize,
    *mut foorpc_responder,
);
type NotificationFn =
    unsafe extern "C" fn(*mut c_void, *const c_char, usize, *const u8, usize, *const foorpc_peer);

thread_local! {
    /// True while a C request or notification handler (inline on an I/O
    /// thread, or on a pool thread) or a call callback (possibly on an I/O
    /// thread) runs on this thread, where a blocking server stop would wait
    /// for that very handler's request, or for the I/O thread it blocks.
    static IN_HANDLER: Cell<bool> = const { Cell::new(false) };
}

/// True while a C handler or call callback runs on this thread.
pub(crate) fn in_handler() -> bool {
    IN_HANDLER.with(Cell::get)
}

/// Runs `f` (a call into C) with the in-handler flag set; restores the flag
/// after, also when `f` unwinds.
pub(crate) fn as_handler<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            IN_HANDLER.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(IN_HANDLER.with(|c| c.replace(true)));
    f()
}

/// Counts the C callbacks of one object (a server's handlers, a client's
/// call callbacks) that are running, so that its `_free` can wait until none
/// runs; once closed, callbacks that have not started are skipped.
pub(crate) struct Running {
    /// Callbacks running, plus CLOSED once closed.
    count: AtomicUsize,
    lock: Mutex<()>,
    idle: Condvar,
    /// The process that made it: a child after fork() has none of its threads.
    pid: u32,
}

const CLOSED: usize = 1 << (usize::BITS - 1);

thread_local! {
    /// The `Running` counters (by address) whose callbacks this thread is inside of.
    static ENTERED: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

impl Running {
    pub(crate) fn new() -> Arc<Running> {
        Arc::new(Running {
            count: AtomicUsize::new(0),
            lock: Mutex::new(()),
            idle: Condvar::new(),
            pid: std::process::id(),
        })
    }

    fn key(&self) -> usize {
        self as *const Running as usize
    }

    /// Runs `f`, counted, unless closed (then `f` is dropped unrun).
    pub(crate) fn run(&self, f: impl FnOnce()) {
        struct Exit<'a>(&'a Running);
        impl Drop for Exit<'_> {
            fn drop(&mut self) {
                ENTERED.with(|e| {
                    let mut e = e.borrow_mut();
                    if let Some(i) = e.iter().rposition(|&k| k == self.0.key()) {
                        e.remove(i);
                    }
                });
                self.0.exit();
            }
        }
        if self.count.fetch_add(1, Ordering::SeqCst) & CLOSED != 0 {
            self.exit();
            return;
        }
        ENTERED.with(|e| e.borrow_mut().push(self.key()));
        let _exit = Exit(self);
        f();
    }

    fn exit(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) & CLOSED != 0 {
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.idle.notify_all();
        }
    }

    /// Skips callbacks from now on, then waits (without a bound) until the
    /// running ones have returned, except those the calling thread is inside
    /// of (it would wait for itself). Returns at once in a child process
    /// after fork(), where the threads running them do not exist.
    pub(crate) fn close_and_wait(&self) {
        self.count.fetch_or(CLOSED, Ordering::SeqCst);
        if std::process::id() != self.pid {
            return;
        }
        let own = ENTERED.with(|e| e.borrow().iter().filter(|&&k| k == self.key()).count());
        // Short waits: a callback ending between the check and the wait
        // costs at most one of them.
        const RECHECK: Duration = Duration::from_millis(10);
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while self.count.load(Ordering::SeqCst) & !CLOSED > own {
            guard = self
                .idle
                .wait_timeout(guard, RECHECK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Runs `f` through `running` when there is one.
pub(crate) fn run_counted(running: &Option<Arc<Running>>, f: impl FnOnce()) {
    match running {
        Some(r) => r.run(f),
        None => f(),
    }
}

/// Something C handlers are registered on: a server being built, or client options.
pub(crate) trait Handlers {
    /// Runs `f` on the router, or fails (with the last error set) when
    /// handlers can no longer be registered.
    fn with_router(&self, f: impl FnOnce(&mut Router)) -> Result<(), foorpc_result>;

    /// The counter of the handlers' runs that `_free` waits for, if any.
    fn running(&self) -> Option<Arc<Running>> {
        None
    }
}

fn execution(flags: u32) -> Result<Execution, foorpc_result> {
    match flags {
        FOORPC_HANDLER_POOL => Ok(Execution::Pool),
        FOORPC_HANDLER_INLINE => Ok(Execution::Inline),
        FOORPC_HANDLER_ORDERED => Ok(Execution::Ordered),
        other => Err(fail(
            foorpc_result::InvalidArgument,
            format!("unknown handler flags {other:#x}"),
        )),
    }
}

/// The C callback and where it runs, or the error for a NULL callback or
/// unknown flags.
fn checked<F>(callback: Option<F>, flags: u32) -> Result<(F, Execution), foorpc_result> {
    let Some(cb) = callback else {
        return Err(null_parameter("callback"));
    };
    Ok((cb, execution(flags)?))
}

/// Passes a message to C: encodes `method` (NUL-terminated) and the params
/// array into one allocation, then runs `f(method, method_len, params,
/// params_len)`, with the in-handler flag set. The pointers are valid
/// during `f`.
fn deliver(
    method: &str,
    params: Vec<Value>,
    f: impl FnOnce(*const c_char, usize, *const u8, usize),
) {
    let bytes = crate::buf::encode_after(&[method.as_bytes(), b"\0"], &Value::Array(params));
    let at = method.len() + 1;
    let call = || {
        f(
            bytes.as_ptr().cast(),
            method.len(),
            bytes[at..].as_ptr(),
            bytes.len() - at,
        )
    };
    as_handler(call);
}

/// A core request handler calling `callback`, and where it runs.
/// Once `running` is closed, a request is answered with an error reply
/// without calling C.
fn request_handler(
    callback: foorpc_handler_callback,
    userdata: *mut c_void,
    flags: u32,
    running: Option<Arc<Running>>,
) -> Result<(Execution, impl Fn(Request) + Send + Sync + 'static), foorpc_result> {
    let (cb, execution): (HandlerFn, _) = checked(callback, flags)?;
    let userdata = SendPtr(userdata);
    let handler = move |req: Request| {
        run_counted(&running, move || {
            let resp = Box::into_raw(Box::new(foorpc_responder {
                inner: req.responder,
                peer: req.peer,
            }));
            deliver(&req.method, req.params, |m, ml, p, pl| {
                // SAFETY: the caller's C function and userdata; the pointers stay
                // valid for the duration of the call; `resp` is handed over.
                unsafe { cb(userdata.get(), m, ml, p, pl, resp) }
            });
        });
    };
    Ok((execution, handler))
}

/// A core notification handler calling `callback`, and where it runs.
/// Once `running` is closed, notifications are dropped without calling C.
fn notification_handler(
    callback: foorpc_notification_callback,
    userdata: *mut c_void,
    flags: u32,
    running: Option<Arc<Running>>,
) -> Result<(Execution, impl Fn(Notification) + Send + Sync + 'static), foorpc_result> {
    let (cb, execution): (NotificationFn, _) = checked(callback, flags)?;
    let userdata = SendPtr(userdata);
    let handler = move |n: Notification| {
        run_counted(&running, move || {
            let peer = foorpc_peer { inner: n.peer };
            deliver(&n.method, n.params, |m, ml, p, pl| {
                // SAFETY: as in request_handler; `peer` is borrowed for the call.
                unsafe { cb(userdata.get(), m, ml, p, pl, &peer) }
            });
        });
    };
    Ok((execution, handler))
}

/// What a registration is for: requests or notifications, of one method or
/// of every method without a handler of its own (`None`).
pub(crate) enum Registration<'a> {
    Request(Option<&'a str>, foorpc_handler_callback),
    Notification(Option<&'a str>, foorpc_notification_callback),
}

/// Registers a C callback on `target` (the body of every
/// foorpc_*_register* export, after its own argument checks).
pub(crate) fn register(
    target: &impl Handlers,
    what: Registration<'_>,
    userdata: *mut c_void,
    flags: u32,
) -> foorpc_result {
    let installed = match what {
        Registration::Request(method, callback) => {
            let (execution, handler) =
                try_ok!(request_handler(callback, userdata, flags, target.running()));
            target.with_router(|r| match method {
                Some(m) => {
                    r.register(m, execution, handler);
                }
                None => {
                    r.fallback(execution, handler);
                }
            })
        }
        Registration::Notification(method, callback) => {
            let (execution, handler) = try_ok!(notification_handler(
                callback,
                userdata,
                flags,
                target.running()
            ));
            target.with_router(|r| match method {
                Some(m) => {
                    r.notification(m, execution, handler);
                }
                None => {
                    r.notification_fallback(execution, handler);
                }
            })
        }
    };
    match installed {
        Ok(()) => foorpc_result::Ok,
        Err(code) => code,
    }
}
