//! The calling side of a connection, shared by clients and by handlers that
//! call back into the peer that called them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::Params;
use crate::conn::{Conn, Flush};
use crate::deadline;
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::pending::{CallSlot, Callback, ClosureCompletion, DataCompletion};
use crate::reactor::ReactorHandle;
use crate::Value;

/// A handle to one connection, for calling and notifying the other side.
///
/// Cheap to clone and usable from many threads at once: calls are pipelined on
/// the connection and matched to their replies by msgid.
#[derive(Clone)]
pub struct Peer {
    conn: Arc<Conn>,
}

/// Converts typed arguments into a params array (a tuple gives one param per field).
pub fn to_params(args: impl Serialize) -> Result<Vec<Value>> {
    match rmpv::ext::to_value(args).map_err(|e| Error::Serialization(e.to_string()))? {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        single => Ok(vec![single]),
    }
}

/// The MessagePack bytes of a result delivered by [`Peer::call_encoded`] or
/// a [`Peer::call_async_encoded`] handle (which carry them as `Value::Binary`).
pub fn encoded_result(result: Value) -> Vec<u8> {
    match result {
        Value::Binary(bytes) => bytes,
        // Not reachable through those calls; encode rather than lose it.
        other => {
            let mut bytes = Vec::new();
            crate::codec::encode_value(&mut bytes, &other);
            bytes
        }
    }
}

/// Converts a result value into `R`.
pub fn from_value<R: DeserializeOwned>(value: Value) -> Result<R> {
    rmpv::ext::from_value(value).map_err(|e| Error::Serialization(e.to_string()))
}

impl Peer {
    pub(crate) fn new(conn: Arc<Conn>) -> Peer {
        Peer { conn }
    }

    pub(crate) fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    /// A number that identifies this connection within the process.
    pub fn id(&self) -> u64 {
        self.conn.id()
    }

    /// The limits of this connection (the client's or the server's, as
    /// configured): what it accepts from the other side, and what
    /// caller-encoded params and results ([`Peer::call_encoded`],
    /// [`Peer::call_async_encoded`], [`Peer::notify_encoded`]) are checked
    /// against before they are sent.
    pub fn limits(&self) -> &Limits {
        self.conn.limits()
    }

    /// The timeout used by calls that do not give one (None: wait for ever).
    pub fn default_timeout(&self) -> Option<Duration> {
        self.conn.call_timeout()
    }

    /// Calls `method` with typed arguments (a tuple) and the default timeout.
    pub fn call<R: DeserializeOwned>(&self, method: &str, args: impl Serialize) -> Result<R> {
        self.call_timeout(method, args, self.default_timeout())
    }

    /// Calls `method` with typed arguments, waiting at most `timeout` for the reply.
    pub fn call_timeout<R: DeserializeOwned>(
        &self,
        method: &str,
        args: impl Serialize,
        timeout: Option<Duration>,
    ) -> Result<R> {
        let params = to_params(args)?;
        from_value(self.call_value(method, &params, timeout)?)
    }

    /// Calls `method` with dynamic params, waiting at most `timeout` (None: for ever).
    pub fn call_value(
        &self,
        method: &str,
        params: &[Value],
        timeout: Option<Duration>,
    ) -> Result<Value> {
        self.call_params(method, Params::Values(params), timeout, false)
    }

    /// Calls `method` with params already encoded as one MessagePack array
    /// (checked, then sent as is) and returns the result's MessagePack bytes:
    /// no `Value` is built either way, for front ends that convert from and
    /// to their own objects. Fails with [`Error::Usage`] on invalid params;
    /// a remote error still comes as [`Error::Remote`].
    pub fn call_encoded(
        &self,
        method: &str,
        params: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>> {
        self.conn.check_encoded(params, true)?;
        let result = self.call_params(method, Params::Encoded(params), timeout, true)?;
        Ok(encoded_result(result))
    }

    fn call_params(
        &self,
        method: &str,
        params: Params<'_>,
        timeout: Option<Duration>,
        raw_result: bool,
    ) -> Result<Value> {
        self.conn.check_usable(true)?;
        let deadline = timeout.and_then(deadline::after);
        let flush = Flush::Wait(deadline);
        let (msgid, slot) = self
            .conn
            .start_call(method, params, deadline, raw_result, flush)?;
        self.conn.wait_reply(msgid, &slot, deadline)
    }

    /// Sends a request and returns at once, without waiting for the socket;
    /// the reply is collected through the returned handle (wait, poll,
    /// callback or `.await`). `timeout` bounds it.
    ///
    /// What the socket does not take at once is written by the client's
    /// I/O thread (a connection without one gets it now, and keeps it) or
    /// by the program's event loop. Fails with [`Error::LimitExceeded`],
    /// sending nothing, while more than [`Limits::max_write_backlog`] bytes
    /// already wait for the peer to read them (one request may exceed it).
    /// A call that times out while its request still waits to be written
    /// ends with [`Error::Timeout`]; the request is still written (part of
    /// it may be on the wire already, and the stream must stay whole), and
    /// its late reply is ignored.
    pub fn call_async(
        &self,
        method: &str,
        params: &[Value],
        timeout: Option<Duration>,
    ) -> Result<PendingCall> {
        self.call_async_params(method, Params::Values(params), timeout, false, false)
    }

    /// [`Peer::call_async`] with params already encoded, whose handle yields
    /// the result's MessagePack bytes as `Value::Binary` (see
    /// [`Peer::call_encoded`]; [`encoded_result`] unwraps them).
    pub fn call_async_encoded(
        &self,
        method: &str,
        params: &[u8],
        timeout: Option<Duration>,
    ) -> Result<PendingCall> {
        self.conn.check_encoded(params, true)?;
        self.call_async_params(method, Params::Encoded(params), timeout, true, false)
    }

    /// [`Peer::call_async_encoded`], its request written as a blocking call
    /// writes it: when the socket does not take it all at once, this thread
    /// waits for the peer to read, until the call's deadline (then the
    /// connection closes and the call fails with [`Error::Timeout`]), or
    /// until a check given to [`with_write_interrupt`] stops it. On a
    /// connection whose I/O thread writes (a client with handlers), it waits
    /// instead, before sending, while more than
    /// [`Limits::max_write_backlog`] is queued (at the deadline it fails with
    /// [`Error::Timeout`], nothing sent). For front ends that wait for the reply in slices
    /// themselves ([`PendingCall::wait_for`]) and want the blocking call's
    /// path.
    ///
    /// [`with_write_interrupt`]: crate::with_write_interrupt
    pub fn call_async_encoded_blocking_write(
        &self,
        method: &str,
        params: &[u8],
        timeout: Option<Duration>,
    ) -> Result<PendingCall> {
        self.conn.check_encoded(params, true)?;
        self.call_async_params(method, Params::Encoded(params), timeout, true, true)
    }

    fn call_async_params(
        &self,
        method: &str,
        params: Params<'_>,
        timeout: Option<Duration>,
        raw_result: bool,
        blocking_write: bool,
    ) -> Result<PendingCall> {
        self.conn.check_usable(false)?;
        let deadline = timeout.and_then(deadline::after);
        let flush = if blocking_write {
            Flush::Wait(deadline)
        } else {
            Flush::Background
        };
        let (msgid, slot) = self
            .conn
            .start_call(method, params, deadline, raw_result, flush)?;
        Ok(PendingCall {
            conn: self.conn.clone(),
            slot,
            msgid,
            deadline,
            finished: false,
        })
    }

    /// Sends a notification (no reply) and returns at once, without
    /// waiting for the socket: what it does not take is written as for
    /// [`Peer::call_async`] (and refused with [`Error::LimitExceeded`] the
    /// same way). What is queued is still written after [`Peer::close`] or
    /// the last [`crate::Client`] is dropped, for up to 10 s while the peer
    /// does not read (see [`Peer::close`] for a connection driven by the
    /// program's event loop); it is lost if the connection fails.
    pub fn notify(&self, method: &str, params: &[Value]) -> Result<()> {
        self.conn.check_usable(false)?;
        self.conn
            .notify(method, Params::Values(params), Flush::Background)
    }

    /// [`Peer::notify`] with params already encoded (see [`Peer::call_encoded`]).
    pub fn notify_encoded(&self, method: &str, params: &[u8]) -> Result<()> {
        self.conn.check_usable(false)?;
        self.conn.check_encoded(params, true)?;
        self.conn
            .notify(method, Params::Encoded(params), Flush::Background)
    }

    /// [`Peer::notify_encoded`], written as a blocking call writes (see
    /// [`Peer::call_async_encoded_blocking_write`]), waiting at most the
    /// default call timeout ([`Peer::default_timeout`]) for the peer to read.
    pub fn notify_encoded_blocking_write(&self, method: &str, params: &[u8]) -> Result<()> {
        self.conn.check_usable(false)?;
        self.conn.check_encoded(params, true)?;
        let deadline = self.default_timeout().and_then(deadline::after);
        self.conn
            .notify(method, Params::Encoded(params), Flush::Wait(deadline))
    }

    /// Holds this connection's writes back until the matching
    /// [`Peer::uncork`], so that requests made together leave in one write
    /// (an event loop corks for one iteration). Every `cork` must be matched
    /// by exactly one `uncork`.
    pub fn cork(&self) {
        self.conn.cork();
    }

    /// Ends one [`Peer::cork`]; the last one writes what was held back.
    pub fn uncork(&self) {
        self.conn.uncork();
    }

    /// Closes the connection: pending calls fail with [`Error::Closed`] and
    /// no more can be made. It returns at once; what was already queued for
    /// the peer (a large notification, say) is still written by the I/O
    /// thread, as the kernel writes a closed socket's buffer, for up to 10 s
    /// while the peer does not read, before the socket is shut. (On a
    /// connection driven by the program's event loop, only what the socket
    /// takes at once is written.)
    pub fn close(&self) {
        self.conn.close_gracefully();
    }

    /// True once the connection is closed (by either side), or ended by the
    /// peer: then no call can be made on it, and only the replies it is still
    /// owed are being written before it closes.
    pub fn is_closed(&self) -> bool {
        self.conn.is_ended()
    }

    /// Calls in flight on this connection.
    pub fn pending_calls(&self) -> usize {
        self.conn.pending_calls()
    }

    /// Shows `f` the data of each pending call of this connection whose
    /// completion was given with [`PendingCall::on_complete_with`] and data
    /// of type `T`: for a binding's garbage collector (Python's
    /// `tp_traverse`). Never waits: it sees nothing while another thread
    /// holds the table of pending calls.
    pub fn visit_pending<T: 'static>(&self, f: impl FnMut(&T)) {
        self.conn.visit_pending(f);
    }

    /// Forgets every pending call without completing it: no callback runs
    /// (each is dropped, with what it holds), and late replies are ignored.
    /// For a binding's garbage collector, once the calls' owners are
    /// garbage (Python's `tp_clear`).
    pub fn forget_pending(&self) {
        self.conn.forget_pending();
    }

    /// Hands this connection's I/O to the program's own event loop (asyncio,
    /// libuv, epoll...), which from then on must:
    /// - call [`Peer::read_ready`] when [`Peer::fd`] is readable, and again
    ///   as long as it stays readable (level-triggered, as asyncio, libuv's
    ///   `uv_poll` and `poll(2)` report it; with edge-triggered epoll, call
    ///   it again on `EPOLLRDHUP` too, or until it fails);
    /// - call [`Peer::flush`] after its calls (or an `uncork`) and, while
    ///   [`Peer::wants_write`], again whenever the fd is writable;
    /// - call [`Peer::expire_calls`] at the deadline it returns, so that
    ///   call timeouts fire.
    ///
    /// Nothing then blocks or starts a thread: completion callbacks
    /// ([`PendingCall::on_complete`]) run inside `read_ready` and
    /// `expire_calls`, on the loop's thread. Only a client without handlers
    /// qualifies; anything else fails with [`Error::Usage`].
    pub fn drive_from_event_loop(&self) -> Result<()> {
        self.conn.drive_from_event_loop()
    }

    /// True once [`Peer::drive_from_event_loop`] succeeded.
    pub fn is_loop_driven(&self) -> bool {
        self.conn.is_loop_driven()
    }

    /// The socket's file descriptor (for an event loop to watch).
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.conn.fd()
    }

    /// Reads what the socket holds, without waiting, and processes it:
    /// replies complete their calls, requests are answered. Fails once the
    /// connection is closed (every pending call has then failed too).
    pub fn read_ready(&self) -> Result<()> {
        self.conn.read_now()
    }

    /// Writes what is queued without waiting; `Ok(true)` when all of it is
    /// written, `Ok(false)` when the socket is full or the connection corked.
    pub fn flush(&self) -> Result<bool> {
        self.conn.flush_now()
    }

    /// True while queued bytes wait for the socket to take them.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Fails the calls whose deadline is `now` or earlier with
    /// [`Error::Timeout`]; returns the next deadline of a call in flight.
    pub fn expire_calls(&self, now: Instant) -> Option<Instant> {
        self.conn.expire_due(now)
    }

    /// Forgets the call `msgid` if it is still pending: its reply, if one comes,
    /// is ignored and its completion callback never runs. For calls whose
    /// [`PendingCall`] was handed to [`PendingCall::on_complete`] and whose
    /// caller lost interest (a cancelled asyncio task, for example).
    pub fn cancel(&self, msgid: u32) {
        self.conn.cancel(msgid);
    }
}

/// A call whose reply has not been collected yet.
///
/// Dropping it forgets the call (a late reply is ignored).
pub struct PendingCall {
    conn: Arc<Conn>,
    slot: Arc<CallSlot>,
    msgid: u32,
    deadline: Option<Instant>,
    finished: bool,
}

/// Forgets one call, from any thread, without keeping its connection open:
/// for whatever outlives the code that made the call (a future that a
/// cancelled task drops, say). A connection that is gone has nothing left
/// to forget.
#[derive(Clone)]
pub struct CallCanceller {
    conn: Weak<Conn>,
    msgid: u32,
}

impl CallCanceller {
    /// As [`Peer::cancel`] of the call's msgid.
    pub fn cancel(&self) {
        if let Some(conn) = self.conn.upgrade() {
            conn.cancel(self.msgid);
        }
    }
}

impl PendingCall {
    /// The request's msgid.
    pub fn msgid(&self) -> u32 {
        self.msgid
    }

    /// A handle that forgets this call later (see [`CallCanceller`]).
    pub fn canceller(&self) -> CallCanceller {
        CallCanceller {
            conn: Arc::downgrade(&self.conn),
            msgid: self.msgid,
        }
    }

    /// When the call times out (None: never).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Blocks until the reply arrives or the call's timeout passes.
    pub fn wait(mut self) -> Result<Value> {
        self.finished = true;
        // A reply read before the connection closed is still this call's.
        if let Some(r) = self.slot.try_take() {
            return r;
        }
        if let Err(e) = self.conn.check_usable(true) {
            self.conn.cancel(self.msgid);
            return Err(e);
        }
        self.conn.wait_reply(self.msgid, &self.slot, self.deadline)
    }

    /// Waits at most `wait` (zero: just look); `None` if the reply is not there yet.
    /// After it returns `Some`, the handle is spent.
    pub fn wait_for(&mut self, wait: Duration) -> Option<Result<Value>> {
        if self.finished {
            return Some(Err(Error::Usage(
                "the call's result was already taken".into(),
            )));
        }
        if self.conn.reactor().is_some_and(|r| r.is_current_thread()) && !wait.is_zero() {
            return Some(Err(Error::Usage(
                "waiting on the I/O thread would deadlock".into(),
            )));
        }
        let limit = deadline::earliest(deadline::after(wait), self.deadline);
        let outcome = match self.conn.wait_reply_until(&self.slot, limit) {
            Some(r) => Some(r),
            None if self.deadline.is_some_and(|d| Instant::now() >= d) => {
                Some(self.conn.time_out(self.msgid, &self.slot))
            }
            None => None,
        };
        if outcome.is_some() {
            self.finished = true;
        }
        outcome
    }

    /// Runs `f` with the outcome once it is known, on the I/O thread that
    /// received it (or right here if it is already known). `f` must be quick.
    /// If `f` panics on the I/O thread, the panic is reported by the panic
    /// hook and goes no further: the connection and its other calls go on.
    pub fn on_complete(self, f: impl FnOnce(Result<Value>) + Send + 'static) {
        self.complete_by(Box::new(ClosureCompletion(f)));
    }

    /// [`PendingCall::on_complete`] with `run(data, outcome)`, where `data`
    /// stays visible to [`Peer::visit_pending`] while the call is pending:
    /// for a language binding whose garbage collector must see what pending
    /// calls hold.
    pub fn on_complete_with<T: Send + 'static>(self, data: T, run: fn(T, Result<Value>)) {
        self.complete_by(Box::new(DataCompletion { data, run }));
    }

    fn complete_by(mut self, completion: Callback) {
        self.finished = true;
        if let Err(e) = self.drive_in_background() {
            self.conn.cancel(self.msgid);
            return completion.complete(Err(e));
        }
        self.slot.set_callback(completion);
    }

    /// Makes sure some thread reads the reply and enforces the deadline even
    /// when nobody waits on the handle.
    fn drive_in_background(&mut self) -> Result<()> {
        if self.conn.is_loop_driven() {
            return Ok(()); // the program's event loop reads and times out
        }
        if self.conn.reactor().is_none() {
            self.conn.attach_reactor(&ReactorHandle::client_reactor()?);
        }
        if self.deadline.is_some() {
            self.conn.watch_deadlines();
        }
        Ok(())
    }
}

impl Future for PendingCall {
    type Output = Result<Value>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(Err(Error::Usage(
                "the call's result was already taken".into(),
            )));
        }
        if let Err(e) = this.drive_in_background() {
            this.finished = true;
            this.conn.cancel(this.msgid);
            return Poll::Ready(Err(e));
        }
        match this.slot.set_waker(cx.waker()) {
            Some(r) => {
                this.finished = true;
                Poll::Ready(r)
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        if !self.finished && self.slot.is_waiting() {
            self.conn.cancel(self.msgid);
        }
    }
}
