//! Handlers: the method registry, and the responder that answers a request once.
//!
//! A [`Router`] maps method names to handlers. Each handler says where it runs:
//! [`Execution::Pool`] (the default for requests) on a worker thread, so that a
//! slow handler never delays other calls; [`Execution::Inline`] on the thread that
//! read the message, for short non-blocking handlers and for handlers that answer
//! later through their [`Responder`].

use std::collections::HashMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::conn::{Conn, Held};
use crate::error::{Error, ERROR_CODE_EXCEPTION, ERROR_CODE_VALIDATION};
use crate::fasthash::FastState;
use crate::peer::Peer;
use crate::pool::{Job, Pool};
use crate::serial::SerialQueue;
use crate::Value;

/// Where a handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Execution {
    /// On the thread that read the message: no hand-off, but it must not block.
    Inline,
    /// On the worker pool: may block for as long as it likes.
    Pool,
    /// On the worker pool, one at a time per connection and in arrival
    /// order (as `Inline`, with each message's handler finished before the
    /// next one's starts), so it may block: a slow one holds up only the
    /// later messages of its own connection. A later `Pool` handler of that
    /// connection starts once the ordered ones before it have run (an
    /// `Inline` one does not wait).
    Ordered,
}

/// An incoming request: what was asked, who asked, and how to answer.
pub struct Request {
    pub method: String,
    pub params: Vec<Value>,
    /// The connection the request came on; handlers may call back through it.
    pub peer: Peer,
    /// Answers the request, now or later, from any thread.
    pub responder: Responder,
}

/// An incoming notification (no answer is expected).
pub struct Notification {
    pub method: String,
    pub params: Vec<Value>,
    pub peer: Peer,
}

type RequestFn = Arc<dyn Fn(Request) + Send + Sync>;
type NotificationFn = Arc<dyn Fn(Notification) + Send + Sync>;

/// Handlers by method name.
type Handlers<F> = HashMap<String, (F, Execution), FastState>;

/// The handlers of a server or client.
#[derive(Clone, Default)]
pub struct Router {
    methods: Handlers<RequestFn>,
    fallback: Option<(RequestFn, Execution)>,
    notifications: Handlers<NotificationFn>,
    notification_fallback: Option<(NotificationFn, Execution)>,
}

impl Router {
    pub fn new() -> Router {
        Router::default()
    }

    /// True when no handler at all is registered.
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
            && self.fallback.is_none()
            && self.notifications.is_empty()
            && self.notification_fallback.is_none()
    }

    /// Registers a handler with full control: it gets the [`Request`] and must
    /// answer through `request.responder` (dropping it unanswered sends an error).
    pub fn register(
        &mut self,
        name: &str,
        execution: Execution,
        handler: impl Fn(Request) + Send + Sync + 'static,
    ) -> &mut Self {
        self.methods
            .insert(name.to_owned(), (Arc::new(handler), execution));
        self
    }

    /// Handles every method that has no handler of its own (default: an error reply).
    pub fn fallback(
        &mut self,
        execution: Execution,
        handler: impl Fn(Request) + Send + Sync + 'static,
    ) -> &mut Self {
        self.fallback = Some((Arc::new(handler), execution));
        self
    }

    /// A handler over dynamic values, run on the pool.
    pub fn method(
        &mut self,
        name: &str,
        f: impl Fn(Vec<Value>) -> Result<Value, Error> + Send + Sync + 'static,
    ) -> &mut Self {
        self.register(name, Execution::Pool, move |req| {
            req.responder.respond(f(req.params))
        })
    }

    /// A handler over dynamic values, run inline: it must be quick and never block.
    pub fn method_inline(
        &mut self,
        name: &str,
        f: impl Fn(Vec<Value>) -> Result<Value, Error> + Send + Sync + 'static,
    ) -> &mut Self {
        self.register(name, Execution::Inline, move |req| {
            req.responder.respond(f(req.params))
        })
    }

    /// A typed handler: the params array is deserialized into `A` (a tuple, or a
    /// struct read as a sequence) and the result serialized. Runs where `execution` says.
    pub fn typed<A, R, F>(&mut self, name: &str, execution: Execution, f: F) -> &mut Self
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(A) -> Result<R, Error> + Send + Sync + 'static,
    {
        let method = name.to_owned();
        self.register(name, execution, move |req| {
            let args: A = match rmpv::ext::from_value(Value::Array(req.params)) {
                Ok(a) => a,
                Err(e) => {
                    return req.responder.error(Error::error_object(
                        ERROR_CODE_VALIDATION,
                        format!("invalid arguments for {method}: {e}"),
                    ))
                }
            };
            let result = f(args).and_then(|r| {
                rmpv::ext::to_value(r).map_err(|e| Error::Serialization(e.to_string()))
            });
            req.responder.respond(result)
        })
    }

    /// A notification handler. `Execution::Inline` and `Execution::Ordered`
    /// see a connection's notifications in arrival order (`Ordered` may
    /// block); `Execution::Pool` runs them side by side (each once the
    /// ordered handlers of the messages before it have run).
    pub fn notification(
        &mut self,
        name: &str,
        execution: Execution,
        f: impl Fn(Notification) + Send + Sync + 'static,
    ) -> &mut Self {
        self.notifications
            .insert(name.to_owned(), (Arc::new(f), execution));
        self
    }

    /// Handles notifications no other handler takes (default: ignored).
    pub fn notification_fallback(
        &mut self,
        execution: Execution,
        f: impl Fn(Notification) + Send + Sync + 'static,
    ) -> &mut Self {
        self.notification_fallback = Some((Arc::new(f), execution));
        self
    }

    pub(crate) fn dispatch_request(&self, req: Request) {
        let entry = self.methods.get(&req.method).or(self.fallback.as_ref());
        let Some((handler, execution)) = entry else {
            let msg = format!("unknown method: {}", req.method);
            return req
                .responder
                .error(Error::error_object(ERROR_CODE_VALIDATION, msg));
        };
        run(handler.clone(), *execution, req);
    }

    /// Runs the notification's handler. One that goes to the worker pool
    /// counts as held (`hold`) until it has run: the peer must not queue
    /// them without bound.
    pub(crate) fn dispatch_notification(&self, n: Notification, hold: impl FnOnce() -> Held) {
        let entry = self
            .notifications
            .get(&n.method)
            .or(self.notification_fallback.as_ref());
        let Some((handler, execution)) = entry else {
            return;
        };
        if matches!(execution, Execution::Inline) {
            return run(handler.clone(), Execution::Inline, n);
        }
        let (handler, held) = (handler.clone(), hold());
        let serial = serial_for(*execution, &n);
        hand_off(
            *execution,
            serial,
            Box::new(move || {
                handler(n);
                drop(held);
            }),
        );
    }
}

/// What a handler gets: it names the connection it came on.
trait FromPeer: Send + 'static {
    fn peer(&self) -> &Peer;
}

impl FromPeer for Request {
    fn peer(&self) -> &Peer {
        &self.peer
    }
}

impl FromPeer for Notification {
    fn peer(&self) -> &Peer {
        &self.peer
    }
}

fn run<T: FromPeer>(handler: Arc<dyn Fn(T) + Send + Sync>, execution: Execution, arg: T) {
    if matches!(execution, Execution::Inline) {
        // A panicking handler must not take the I/O thread down; the
        // request's Responder, dropped while unwinding, sends an error reply.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(arg)));
        return;
    }
    let serial = serial_for(execution, &arg);
    hand_off(execution, serial, Box::new(move || handler(arg)));
}

/// The queue of ordered handlers of the connection `arg` came on that a
/// handler run as `execution` must wait for: always for `Ordered`; for
/// `Pool`, only while ordered handlers of earlier messages are still waiting
/// or running (none at all on connections without ordered handlers).
fn serial_for(execution: Execution, arg: &impl FromPeer) -> Option<Arc<SerialQueue>> {
    let conn = arg.peer().conn();
    match execution {
        Execution::Ordered => Some(conn.serial()),
        _ => conn.busy_serial(),
    }
}

/// Runs a handler on the worker pool, so that it starts after the ordered
/// handlers of the messages that came before it on its connection (as an
/// inline one would): an `Ordered` one in their queue, a `Pool` one handed
/// to the pool by that queue once they have run.
fn hand_off(execution: Execution, serial: Option<Arc<SerialQueue>>, job: Job) {
    match serial {
        None => Pool::global().execute(job),
        Some(queue) if matches!(execution, Execution::Ordered) => queue.push(job),
        Some(queue) => queue.push(Box::new(move || Pool::global().execute(job))),
    }
}

/// Answers one request, exactly once, from any thread.
///
/// Dropping it without answering sends an error reply, so a caller never waits
/// for an answer that will not come.
pub struct Responder {
    conn: Option<Arc<Conn>>,
    msgid: u32,
    /// The request's size as received: held against the connection's
    /// `Limits::max_request_backlog` until answered.
    size: usize,
}

impl Responder {
    pub(crate) fn new(conn: Arc<Conn>, msgid: u32, size: usize) -> Responder {
        Responder {
            conn: Some(conn),
            msgid,
            size,
        }
    }

    /// The request's msgid.
    pub fn msgid(&self) -> u32 {
        self.msgid
    }

    /// Answers with a result.
    pub fn ok(mut self, result: Value) {
        match result {
            // A large binary result leaves from its own buffer, not copied.
            Value::Binary(bytes)
                if bytes.len() >= crate::conn::SPLICE_MIN && bytes.len() <= u32::MAX as usize =>
            {
                if let Some(conn) = self.conn.take() {
                    let (msgid, len) = (self.msgid, bytes.len());
                    conn.respond_by(self.size, |conn, flush| {
                        conn.send_spliced(
                            flush,
                            |out| codec::encode_response_bin_head(out, msgid, len),
                            bytes,
                        )
                    });
                }
            }
            result => self.send(&Value::Nil, &result),
        }
    }

    /// Answers with an error object, sent as is (foorpc's own shape is `[code, message]`).
    /// A nil error object would read as success, so it is replaced by a generic error.
    pub fn error(mut self, error: Value) {
        let error = if error.is_nil() {
            Error::error_object(ERROR_CODE_EXCEPTION, "error")
        } else {
            error
        };
        self.send(&error, &Value::Nil);
    }

    /// Answers with a result already encoded as one MessagePack value
    /// (checked, then sent as is). Invalid bytes send an error reply instead
    /// and return [`Error::Usage`]: either way the request is answered.
    pub fn ok_encoded(mut self, result: &[u8]) -> Result<(), Error> {
        self.send_encoded(&[0xc0], result)
    }

    /// Answers with an error object already encoded as one MessagePack value
    /// (a nil error object is not allowed: it would read as success).
    pub fn error_encoded(mut self, error: &[u8]) -> Result<(), Error> {
        if error == [0xc0] {
            self.error(Error::error_object(ERROR_CODE_EXCEPTION, "error"));
            return Err(Error::Usage("an error object must not be nil".into()));
        }
        self.send_encoded(error, &[0xc0])
    }

    fn send_encoded(&mut self, error: &[u8], result: &[u8]) -> Result<(), Error> {
        let Some(conn) = self.conn.take() else {
            return Ok(());
        };
        let checked = conn
            .check_encoded(error, false)
            .and_then(|()| conn.check_encoded(result, false));
        let msgid = self.msgid;
        match checked {
            Ok(()) => {
                conn.respond_by(self.size, |conn, flush| {
                    conn.send_with_payload(
                        flush,
                        |out| codec::encode_response_encoded(out, msgid, error, &[]),
                        result,
                    )
                });
                Ok(())
            }
            Err(e) => {
                let obj = Error::error_object(ERROR_CODE_EXCEPTION, e.to_string());
                conn.respond(self.size, |out| {
                    codec::encode_response(out, msgid, &obj, &Value::Nil)
                });
                Err(e)
            }
        }
    }

    /// Answers with a handler's result: `Err(e)` becomes `e.to_error_object()`.
    pub fn respond(self, result: Result<Value, Error>) {
        match result {
            Ok(v) => self.ok(v),
            Err(e) => self.error(e.to_error_object()),
        }
    }

    fn send(&mut self, error: &Value, result: &Value) {
        if let Some(conn) = self.conn.take() {
            let msgid = self.msgid;
            conn.respond(self.size, |out| {
                codec::encode_response(out, msgid, error, result)
            });
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if self.conn.is_some() {
            let msg = if std::thread::panicking() {
                "the handler panicked"
            } else {
                "the handler dropped the request without answering"
            };
            self.send(&Error::error_object(ERROR_CODE_EXCEPTION, msg), &Value::Nil);
        }
    }
}
