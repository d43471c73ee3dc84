//! One peer connection: socket, read buffer and decoder, write queue, calls in
//! flight, and dispatch of what the peer sends.
//!
//! A connection is driven in one of two ways:
//! - by its callers (`Caller` mode, the default for clients): a thread waiting
//!   for a reply reads the socket itself when no other thread is reading
//!   (leader/followers), so a synchronous call costs no thread hand-off;
//! - by a reactor thread (servers, and clients that have handlers, futures or
//!   callbacks, or a non-blocking send the socket did not take at once, see
//!   `Flush::Background`): the reactor reads and finishes writes, and waiting
//!   threads are woken with the reply.
//!
//! - by the program's own event loop (asyncio, for example), which reads
//!   when the socket is readable and flushes what its calls queued; nothing
//!   here blocks or starts a thread for such a connection
//!   (`Conn::drive_from_event_loop`).
//!
//! Either way the same code reads, decodes and processes messages: the
//! `read_wanted` flag lets a reader that finds the read lock taken leave the
//! work to the holder, which looks again before it leaves.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::codec::{self, DecodeError, Decoder, Params};
use crate::deadline;
use crate::dispatch::{Notification, Request, Responder, Router};
use crate::error::{Error, Result, ERROR_CODE_VALIDATION};
use crate::interrupt;
use crate::limits::Limits;
use crate::message::Message;
use crate::peer::Peer;
use crate::pending::{CallSlot, Pending};
use crate::reactor::ReactorHandle;
use crate::serial::SerialQueue;
use crate::server::ServerState;
use crate::transport::Stream;
use crate::{fork, Value};

/// Bytes read per `read()` call; also the size of each thread's scratch buffer.
const READ_CHUNK: usize = 64 * 1024;
/// A write queue or partial-message buffer above this is freed once empty, so
/// that an idle connection holds almost no memory.
const KEEP_CAPACITY: usize = 2 * 1024 * 1024;
/// A waiting follower looks for lost promotions at least this often.
const FOLLOWER_RECHECK: Duration = Duration::from_millis(200);
/// Bytes of whole messages one read batch takes at most before it is
/// processed; the rest waits in the socket for the next batch.
const BATCH_BYTES: usize = 1024 * 1024;
/// Calls of our own in flight on one connection at most. The program
/// decides how many it makes (an asyncio program may start any number at
/// once); this only keeps their msgids unique. `Limits::max_in_flight`
/// bounds the other direction, the peer's requests.
pub const MAX_CALLS_IN_FLIGHT: usize = 1 << 24;
/// While a server waits for replies from a peer, that peer's requests being
/// handled may reach this many times `Limits::max_request_backlog` before
/// reading stops (see `Conn::backlog_too_large`).
const CALLBACK_ALLOWANCE: usize = 4;
/// How long a connection whose peer ended its stream stays open to answer
/// the requests still in flight (`Conn::close_after_replies`).
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
    /// Connections this (caller's) thread is reading right now, innermost
    /// last: completion callbacks run inside those reads, and a blocking
    /// call they made on the same connection would wait for this very
    /// thread to read its reply.
    static READING_HERE: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    /// The messages of one read, kept empty between reads on this thread so
    /// that a read does not allocate. A read nested in the processing of
    /// another (a handler that calls out) takes a fresh one.
    static BATCH: Cell<Vec<Incoming>> = const { Cell::new(Vec::new()) };
}

/// A message read, and what it costs: its size on the wire or decoded,
/// whichever is larger (what a request, or a notification handed to the
/// pool, counts against `Limits::max_request_backlog` while it is handled).
type Incoming = (Message, usize);

/// Most messages a kept `BATCH` has room for: the usual batch of pipelined
/// calls (a larger one is shrunk to this, not dropped, so that the next
/// large read need not grow it from nothing again).
const KEPT_BATCH: usize = 64;

/// Marks a connection as read by this thread until dropped.
struct ReadingHere;

impl ReadingHere {
    fn enter(conn_id: u64) -> ReadingHere {
        READING_HERE.with(|r| r.borrow_mut().push(conn_id));
        ReadingHere
    }
}

impl Drop for ReadingHere {
    fn drop(&mut self) {
        READING_HERE.with(|r| r.borrow_mut().pop());
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here leave their state consistent at every step, so a
    // panic elsewhere (a user callback) must not make the connection unusable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a connection is set up.
#[derive(Clone)]
pub(crate) struct ConnConfig {
    pub limits: Limits,
    pub call_timeout: Option<Duration>,
    pub router: Arc<Router>,
    pub server: Option<Arc<ServerState>>,
}

struct ReadState {
    /// Bytes of a message not yet complete (empty between messages).
    partial: Vec<u8>,
    decoder: Decoder,
    /// Messages read but not handled yet, because the peer makes the server
    /// hold too much (see `Conn::pump`); handled, in order, before any more
    /// are read.
    deferred: VecDeque<Incoming>,
}

struct WriteState {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    pos: usize,
    /// Large payloads that go out where they stand in the stream, straight
    /// from their own buffer (one `sendmsg` with the bytes around them)
    /// instead of being copied into `buf`; in stream order.
    spliced: VecDeque<Spliced>,
    /// While > 0, replies are queued and flushed together when it drops to 0.
    cork: u32,
}

/// A payload that belongs in the stream right before `buf[at]`.
struct Spliced {
    at: usize,
    data: Vec<u8>,
    /// Bytes of `data` already written.
    done: usize,
}

/// What a send does with the bytes the socket does not take at once.
#[derive(Clone, Copy)]
pub(crate) enum Flush {
    /// On a connection read by its callers, this thread waits for the
    /// socket until the deadline (blocking calls); on one with a reactor or
    /// an event loop, that finishes the write.
    Wait(Option<Instant>),
    /// Returns at once: the reactor or the event loop finishes the write,
    /// and a connection read by its callers gets the client reactor for it.
    /// Refused with `Error::LimitExceeded` while the connection's backlog
    /// is over `Limits::max_write_backlog` (see `Conn::check_backlog`).
    Background,
}

/// Payloads at least this large are spliced rather than copied.
pub(crate) const SPLICE_MIN: usize = 64 * 1024;

impl WriteState {
    fn pending(&self) -> bool {
        self.pos < self.buf.len() || !self.spliced.is_empty()
    }

    /// Bytes queued and not yet written.
    fn backlog(&self) -> usize {
        let queued = self.buf.len() - self.pos;
        if self.spliced.is_empty() {
            return queued; // the common case: no walk over an empty deque
        }
        queued
            + self
                .spliced
                .iter()
                .map(|s| s.data.len() - s.done)
                .sum::<usize>()
    }

    /// The unwritten bytes, in stream order (up to 64 pieces at a time).
    fn unwritten(&self) -> Vec<std::io::IoSlice<'_>> {
        let mut out = Vec::with_capacity(2 * self.spliced.len() + 1);
        let mut start = self.pos;
        for s in self.spliced.iter().take(32) {
            if start < s.at {
                out.push(std::io::IoSlice::new(&self.buf[start..s.at]));
            }
            out.push(std::io::IoSlice::new(&s.data[s.done..]));
            start = s.at;
        }
        if start < self.buf.len() && self.spliced.len() <= 32 {
            out.push(std::io::IoSlice::new(&self.buf[start..]));
        }
        out
    }

    /// Marks `n` more bytes of the stream written.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let next = self.spliced.front().map_or(self.buf.len(), |s| s.at);
            if self.pos < next {
                let k = n.min(next - self.pos);
                self.pos += k;
                n -= k;
                continue;
            }
            let Some(s) = self.spliced.front_mut() else {
                break;
            };
            let k = n.min(s.data.len() - s.done);
            s.done += k;
            n -= k;
            if s.done == s.data.len() {
                self.spliced.pop_front();
            }
        }
    }
}

enum Received {
    Bytes(usize),
    Nothing,
    Eof,
    Failed(std::io::Error),
}

enum ReadStatus {
    Open,
    /// The peer ended its stream or broke the protocol: what it sent before
    /// is still answered (`Conn::close_after_replies`).
    Ended(Error),
    /// The socket failed: nothing more can be written either.
    Closed(Error),
}

pub(crate) struct Conn {
    id: u64,
    stream: Stream,
    config: ConnConfig,
    read: Mutex<ReadState>,
    read_wanted: AtomicBool,
    /// The poller reported the peer's end of stream. A short read then no
    /// longer means the socket is drained: with edge-triggered polling, a FIN
    /// that came with the data raises no event of its own, so reading goes on
    /// until it finds the end.
    read_closed: AtomicBool,
    /// A server connection stopped reading because its peer makes it hold
    /// too much (see `pump`); resumed once that has come down to half.
    reads_paused: AtomicBool,
    write: Mutex<WriteState>,
    /// `WriteState::backlog` as of the last change, readable without the lock.
    write_backlog: AtomicUsize,
    /// Bytes of the peer's requests being handled, and of its notifications
    /// waiting for or running on the worker pool (each counted at its size
    /// on the wire or decoded, whichever is larger).
    held: AtomicUsize,
    /// `ReadState::deferred` is not empty (readable without the read lock,
    /// for `close_if_drained`).
    deferred_left: AtomicBool,
    /// Set once the peer's stream has ended (`close_after_replies`).
    draining: AtomicBool,
    /// Why, and when the connection closes at the latest.
    drain: Mutex<Option<(Error, Instant)>>,
    /// Closed by its owner, with bytes still queued: those are written, but
    /// nothing more is queued and no reply is waited for
    /// ([`Conn::close_gracefully`]).
    sealed: AtomicBool,
    pending: Mutex<Pending>,
    /// Its owner is gone: the connection closes once no call of ours is
    /// pending (see [`Conn::close_when_calls_done`]).
    close_when_idle: AtomicBool,
    /// Handlers of this connection's messages that run in arrival order on
    /// the pool ([`crate::Execution::Ordered`]); made on first use.
    serial: OnceLock<Arc<SerialQueue>>,
    closed: AtomicBool,
    reactor: OnceLock<ReactorHandle>,
    in_flight: AtomicUsize,
    deadlines_watched: AtomicBool,
    /// Caller-driven with a blocking socket: a leader waits inside `recv`.
    blocking_reads: AtomicBool,
    /// Read, flushed and timed out by the program's event loop (see
    /// [`Conn::drive_from_event_loop`]): never waits here.
    loop_driven: AtomicBool,
    /// Held while choosing between a reactor and an event loop, so that a
    /// connection never gets both.
    choosing_driver: Mutex<()>,
    /// The socket's receive timeout now, in microseconds (u64::MAX: unset).
    recv_timeout_us: AtomicU64,
    /// The deadline the reactor will wake up for next (nanoseconds after
    /// `epoch()`, u64::MAX for none); an earlier new call wakes it sooner.
    reactor_wakes_at: AtomicU64,
    fork_generation: u64,
}

/// A fixed instant that deadlines are stored relative to, as atomics.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn as_nanos(t: Option<Instant>) -> u64 {
    t.map_or(u64::MAX, |t| {
        t.saturating_duration_since(epoch())
            .as_nanos()
            .min(u64::MAX as u128 - 1) as u64
    })
}

impl Conn {
    pub(crate) fn new(stream: Stream, config: ConnConfig) -> Arc<Conn> {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Arc::new(Conn {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            read: Mutex::new(ReadState {
                partial: Vec::new(),
                decoder: Decoder::new(&config.limits),
                deferred: VecDeque::new(),
            }),
            pending: Mutex::new(Pending::new(MAX_CALLS_IN_FLIGHT)),
            stream,
            config,
            read_wanted: AtomicBool::new(false),
            read_closed: AtomicBool::new(false),
            reads_paused: AtomicBool::new(false),
            write_backlog: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            deferred_left: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            drain: Mutex::new(None),
            sealed: AtomicBool::new(false),
            write: Mutex::new(WriteState {
                buf: Vec::new(),
                spliced: VecDeque::new(),
                pos: 0,
                cork: 0,
            }),
            close_when_idle: AtomicBool::new(false),
            serial: OnceLock::new(),
            closed: AtomicBool::new(false),
            reactor: OnceLock::new(),
            in_flight: AtomicUsize::new(0),
            deadlines_watched: AtomicBool::new(false),
            blocking_reads: AtomicBool::new(false),
            loop_driven: AtomicBool::new(false),
            choosing_driver: Mutex::new(()),
            recv_timeout_us: AtomicU64::new(u64::MAX),
            reactor_wakes_at: AtomicU64::new(u64::MAX),
            fork_generation: fork::generation(),
        })
    }

    /// The limits this connection applies.
    pub(crate) fn limits(&self) -> &Limits {
        &self.config.limits
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        self.stream.as_raw_fd()
    }

    pub(crate) fn call_timeout(&self) -> Option<Duration> {
        self.config.call_timeout
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closed, or ended by the peer and only writing what it is still owed
    /// (`close_after_replies`): either way no new call can be made.
    pub(crate) fn is_ended(&self) -> bool {
        self.is_closed() || self.draining.load(Ordering::Acquire)
    }

    pub(crate) fn reactor(&self) -> Option<&ReactorHandle> {
        self.reactor.get()
    }

    /// Marks the connection as driven by `reactor` (which registers it itself).
    pub(crate) fn set_reactor(&self, reactor: &ReactorHandle) {
        let _ = self.reactor.set(reactor.clone());
    }

    /// For a connection read by its callers: make the socket blocking so
    /// that a waiting caller sleeps inside `recv` (one syscall, not two).
    pub(crate) fn use_blocking_reads(&self) {
        if self.reactor.get().is_none() && self.stream.set_blocking(true).is_ok() {
            self.blocking_reads.store(true, Ordering::Release);
        }
    }

    /// Hands reading, flushing and deadlines to the program's event loop.
    /// Only a connection that nothing else drives and that serves no
    /// handlers qualifies (handlers may answer from worker threads, whose
    /// writes the event loop would not hear about).
    pub(crate) fn drive_from_event_loop(&self) -> Result<()> {
        let _choosing = lock(&self.choosing_driver);
        if self.reactor.get().is_some() || !self.config.router.is_empty() {
            return Err(Error::Usage(
                "only a client without handlers can be driven by an event loop".into(),
            ));
        }
        if !self.loop_driven.swap(true, Ordering::AcqRel) {
            self.blocking_reads.store(false, Ordering::Release);
            self.stream.set_blocking(false)?;
        }
        Ok(())
    }

    /// True when the program's event loop drives this connection.
    pub(crate) fn is_loop_driven(&self) -> bool {
        self.loop_driven.load(Ordering::Acquire)
    }

    /// Hands this connection to `reactor` (once); from then on the reactor reads.
    pub(crate) fn attach_reactor(self: &Arc<Self>, reactor: &ReactorHandle) {
        let _choosing = lock(&self.choosing_driver);
        if self.is_loop_driven() {
            return; // the event loop reads
        }
        if self.blocking_reads.swap(false, Ordering::AcqRel) {
            let _ = self.stream.set_blocking(false);
        }
        if self.reactor.set(reactor.clone()).is_ok() {
            reactor.add_conn(self.clone());
        }
    }

    /// Fails when the connection cannot be used from this thread or process.
    pub(crate) fn check_usable(&self, blocking: bool) -> Result<()> {
        if self.fork_generation != fork::generation() {
            return Err(Error::Usage(
                "this connection was made before fork(); create a new one in the child process"
                    .into(),
            ));
        }
        if blocking && self.is_loop_driven() {
            return Err(Error::Usage(
                "this connection is driven by an event loop: a blocking wait would read \
                 behind its back (or block it); use call_async with on_complete or .await"
                    .into(),
            ));
        }
        if blocking && READING_HERE.with(|r| r.borrow().contains(&self.id)) {
            return Err(Error::Usage(
                "a blocking call from a completion callback that runs while this thread reads \
                 the same connection would wait for itself; use call_async"
                    .into(),
            ));
        }
        if blocking && self.reactor.get().is_some_and(|r| r.is_current_thread()) {
            return Err(Error::Usage(
                "a blocking call from a handler that runs on the I/O thread would deadlock; \
                 use call_async or register the handler to run on the pool"
                    .into(),
            ));
        }
        if let Some(e) = lock(&self.pending).closed_reason() {
            return Err(e);
        }
        Ok(())
    }

    // ---- writing ----------------------------------------------------------

    /// Queues one encoded message and writes it out (unless corked). `flush`
    /// says who writes what the socket does not take at once.
    pub(crate) fn send(
        self: &Arc<Self>,
        flush: Flush,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<()> {
        self.queue_and_flush(flush, |w| encode(&mut w.buf))
    }

    /// [`Conn::send`] of a message that ends with a large payload: `head`
    /// encodes what precedes it, and `payload` leaves from its own buffer.
    pub(crate) fn send_spliced(
        self: &Arc<Self>,
        flush: Flush,
        head: impl FnOnce(&mut Vec<u8>),
        payload: Vec<u8>,
    ) -> Result<()> {
        self.queue_and_flush(flush, |w| {
            head(&mut w.buf);
            let at = w.buf.len();
            w.spliced.push_back(Spliced {
                at,
                data: payload,
                done: 0,
            });
        })
    }

    /// [`Conn::send`] of a message whose last bytes are the caller's
    /// `payload` (encoded params or result), after what `head` encodes. A
    /// large payload goes out straight from the caller's buffer when nothing
    /// else is queued; only what the socket does not take at once is copied.
    pub(crate) fn send_with_payload(
        self: &Arc<Self>,
        flush: Flush,
        head: impl FnOnce(&mut Vec<u8>),
        payload: &[u8],
    ) -> Result<()> {
        if payload.len() < SPLICE_MIN {
            return self.send(flush, |out| {
                head(out);
                out.extend_from_slice(payload);
            });
        }
        let mut first = Vec::with_capacity(64);
        head(&mut first);
        self.send_borrowed(flush, &first, payload)
    }

    fn send_borrowed(self: &Arc<Self>, flush: Flush, head: &[u8], payload: &[u8]) -> Result<()> {
        self.queue_and_flush(flush, |w| {
            let mut sent = 0;
            if w.cork == 0 && !w.pending() {
                let parts = [std::io::IoSlice::new(head), std::io::IoSlice::new(payload)];
                // An error is met again (and handled) by the flush that follows.
                sent = self.stream.write_vectored(&parts).unwrap_or(0);
            }
            if sent < head.len() {
                w.buf.extend_from_slice(&head[sent..]);
                w.buf.extend_from_slice(payload);
            } else {
                w.buf.extend_from_slice(&payload[sent - head.len()..]);
            }
        })
    }

    fn queue_and_flush(
        self: &Arc<Self>,
        flush: Flush,
        queue: impl FnOnce(&mut WriteState),
    ) -> Result<()> {
        let mut w = lock(&self.write);
        if self.is_closed() || self.sealed.load(Ordering::Acquire) {
            drop(w);
            return Err(self.closed_error());
        }
        if matches!(flush, Flush::Background) {
            self.check_backlog(&w)?;
        }
        queue(&mut w);
        if w.cork > 0 {
            self.write_backlog.store(w.backlog(), Ordering::Release);
            return Ok(());
        }
        match self.flush_locked(&mut w) {
            Ok(true) => Ok(()),
            // The reactor or the event loop finishes the write when the socket has room.
            Ok(false) if self.reactor.get().is_some() || self.is_loop_driven() => Ok(()),
            Ok(false) => {
                drop(w);
                match flush {
                    Flush::Wait(deadline) => self.drive_writes(deadline),
                    Flush::Background => self.write_in_background(),
                }
            }
            Err(e) => {
                drop(w);
                let err = Error::ConnectionLost(format!("write failed: {e}"));
                self.close(err.clone());
                Err(err)
            }
        }
    }

    /// Refuses a [`Flush::Background`] send while more than
    /// `Limits::max_write_backlog` bytes already wait for the peer to read
    /// them (one message may exceed it). A loop-driven connection is
    /// flushed by its event loop, which bounds what it queues itself.
    fn check_backlog(&self, w: &WriteState) -> Result<()> {
        if self.is_loop_driven() {
            return Ok(());
        }
        let limit = self.config.limits.max_write_backlog;
        let backlog = w.backlog();
        if backlog > limit {
            return Err(Error::LimitExceeded(format!(
                "{backlog} bytes already wait for the peer to read them \
                 (max_write_backlog is {limit})"
            )));
        }
        Ok(())
    }

    /// Hands a write the socket could not take at once to the client
    /// reactor: a connection read by its callers gets it now, for good.
    fn write_in_background(self: &Arc<Self>) -> Result<()> {
        match ReactorHandle::client_reactor() {
            Ok(reactor) => {
                self.attach_reactor(&reactor);
                Ok(())
            }
            Err(e) => {
                // Part of the message may be on the wire: the stream cannot go on.
                let err = Error::ConnectionLost(format!("no I/O thread to finish the write: {e}"));
                self.close(err.clone());
                Err(err)
            }
        }
    }

    /// Writes queued bytes until done (true) or the socket is full (false).
    fn flush_locked(&self, w: &mut WriteState) -> std::io::Result<bool> {
        while w.pending() {
            let written = if w.spliced.is_empty() {
                self.stream.write(&w.buf[w.pos..])
            } else {
                self.stream.write_vectored(&w.unwritten())
            };
            match written {
                Ok(n) => w.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.write_backlog.store(w.backlog(), Ordering::Release);
                    return Ok(false);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.write_backlog.store(0, Ordering::Release);
        w.pos = 0;
        w.buf.clear();
        if w.buf.capacity() > KEEP_CAPACITY {
            w.buf = Vec::new();
        }
        Ok(true)
    }

    /// Without a reactor, finishes a write the socket could not take at once.
    ///
    /// The peer may itself be blocked writing replies to us, so while waiting
    /// to write, this thread also reads when no other thread is reading;
    /// otherwise both sides could wait on each other for ever.
    fn drive_writes(self: &Arc<Self>, deadline: Option<Instant>) -> Result<()> {
        const SLICE: Duration = Duration::from_millis(50);
        loop {
            if self.is_closed() {
                // Closed by another thread meanwhile: what was queued is dropped.
                return Err(self.closed_error());
            }
            {
                let mut w = lock(&self.write);
                match self.flush_locked(&mut w) {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(e) => {
                        drop(w);
                        let err = Error::ConnectionLost(format!("write failed: {e}"));
                        self.close(err.clone());
                        return Err(err);
                    }
                }
            }
            if self.reactor.get().is_some() {
                return Ok(()); // the reactor finishes the write
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                // Part of a message may be on the wire: the stream cannot be resumed.
                self.close(Error::ConnectionLost(
                    "timed out writing to the peer".into(),
                ));
                return Err(Error::Timeout);
            }
            if interrupt::requested() {
                let err = Error::ConnectionLost("the write was interrupted".into());
                self.close(err.clone());
                return Err(err);
            }
            let slice = Some(deadline.map_or(now + SLICE, |d| d.min(now + SLICE)));
            match self.read.try_lock() {
                Ok(guard) => {
                    let revents = poll_fd_events(self.fd(), libc::POLLIN | libc::POLLOUT, slice);
                    if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                        let _reading = ReadingHere::enter(self.id);
                        self.pump(guard, false);
                    }
                }
                Err(_) => {
                    poll_fd(self.fd(), libc::POLLOUT, slice);
                }
            }
        }
    }

    /// Holds back writes so that replies produced together leave in one syscall.
    pub(crate) fn cork(&self) {
        lock(&self.write).cork += 1;
    }

    pub(crate) fn uncork(&self) {
        let mut w = lock(&self.write);
        if w.cork == 0 {
            return; // an unmatched uncork must not wrap and cork for good
        }
        w.cork -= 1;
        if w.cork == 0 && w.pending() {
            drop(w);
            if let Ok(true) = self.flush_now() {
                // A connection closed while its writes were corked closes
                // once they are out (no writable event may come to tell).
                if self.draining.load(Ordering::Acquire) {
                    self.close_if_drained();
                }
            }
        }
    }

    /// The reactor saw the socket become writable: writes what is queued,
    /// and resumes reading once the backlog that paused it has drained to half
    /// its limit.
    pub(crate) fn on_writable(self: &Arc<Self>) {
        // Most writable events come along with a readable one, with nothing
        // queued and nothing waiting for room: no lock taken for them.
        if self.write_backlog.load(Ordering::Acquire) == 0
            && !self.reads_paused.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
        {
            return;
        }
        let _ = self.flush_now();
        if self.draining.load(Ordering::Acquire) {
            self.close_if_drained();
        }
        self.resume_reads_if_relieved(true);
    }

    /// A connection whose peer has more than the limit of its messages
    /// being handled (requests, and notifications waiting for or running
    /// on the worker pool), or, on a server, leaves more than the limit of
    /// replies unread, reads no more of its messages: memory stays bounded,
    /// and the peer's own sends block, as TCP flow control makes them. (A
    /// client's unread requests never stop it reading: the server may be
    /// blocked writing replies to it, and two foorpc peers must not both
    /// stop.)
    ///
    /// While this side waits for a reply from the peer, the messages being
    /// handled may reach [`CALLBACK_ALLOWANCE`] times their limit: a handler
    /// calling back must get its answer.
    fn backlog_too_large(&self) -> bool {
        let limit = self.config.limits.max_request_backlog;
        let held = self.held.load(Ordering::SeqCst);
        let holds_too_much = held > limit.saturating_mul(CALLBACK_ALLOWANCE)
            || (held > limit && lock(&self.pending).len() == 0);
        let replies_unread = self.config.server.is_some()
            && self.write_backlog.load(Ordering::SeqCst) > self.config.limits.max_write_backlog;
        holds_too_much || replies_unread
    }

    /// Resumes reading a paused connection once what paused it is down to
    /// half its limit. `direct` only from the top of the event loop
    /// (`on_writable`); anywhere else the reactor is asked to do it, so that
    /// the peer's handlers never run inside another handler's reply.
    fn resume_reads_if_relieved(self: &Arc<Self>, direct: bool) {
        if !self.reads_paused.load(Ordering::SeqCst) {
            return;
        }
        let limits = &self.config.limits;
        let held = self.held.load(Ordering::SeqCst);
        let limit = limits.max_request_backlog;
        let replies_read = self.config.server.is_none()
            || self.write_backlog.load(Ordering::SeqCst) <= limits.max_write_backlog / 2;
        let relieved = replies_read
            && (held <= limit / 2
                || (held <= limit.saturating_mul(CALLBACK_ALLOWANCE / 2)
                    && lock(&self.pending).len() > 0));
        if !relieved || !self.reads_paused.swap(false, Ordering::SeqCst) {
            return;
        }
        match self.reactor.get() {
            Some(r) if !direct => {
                // Weak: a reactor that has stopped drops its commands unrun,
                // and must not keep the connection (and its socket) alive.
                let conn = Arc::downgrade(self);
                r.submit(move |_| {
                    if let Some(conn) = conn.upgrade() {
                        conn.on_readable(false);
                    }
                });
            }
            _ => self.on_readable(false),
        }
    }

    /// The queue of this connection's ordered handlers.
    pub(crate) fn serial(&self) -> Arc<SerialQueue> {
        self.serial.get_or_init(Default::default).clone()
    }

    /// That queue, while it has handlers waiting or running.
    pub(crate) fn busy_serial(&self) -> Option<Arc<SerialQueue>> {
        self.serial.get().filter(|q| !q.is_idle()).cloned()
    }

    /// Counts `bytes` of the peer's messages as held until the returned
    /// guard is dropped (a notification handed to the worker pool).
    pub(crate) fn hold(self: &Arc<Self>, bytes: usize) -> Held {
        self.held.fetch_add(bytes, Ordering::SeqCst);
        if let Some(server) = &self.config.server {
            server.begin_notification();
        }
        Held {
            conn: self.clone(),
            bytes,
        }
    }

    fn release(self: &Arc<Self>, bytes: usize) {
        if bytes > 0 {
            self.held.fetch_sub(bytes, Ordering::SeqCst);
            self.resume_reads_if_relieved(false);
        }
    }

    /// Writes what is queued (unless corked) without waiting; true when
    /// nothing is left to write.
    pub(crate) fn flush_now(&self) -> Result<bool> {
        let mut w = lock(&self.write);
        if w.cork > 0 || !w.pending() {
            return Ok(!w.pending());
        }
        match self.flush_locked(&mut w) {
            Ok(done) => Ok(done),
            Err(e) => {
                drop(w);
                let err = Error::ConnectionLost(format!("write failed: {e}"));
                self.close(err.clone());
                Err(err)
            }
        }
    }

    /// True when bytes wait for the socket to take them.
    pub(crate) fn wants_write(&self) -> bool {
        lock(&self.write).pending()
    }

    /// Writes what is queued, waiting up to `timeout` (used before a graceful close).
    pub(crate) fn flush_for(&self, timeout: Duration) {
        self.flush_until(Instant::now() + timeout);
    }

    /// Writes what is queued until done or `deadline` (at least one attempt,
    /// however late), so that several connections can share one deadline.
    pub(crate) fn flush_until(&self, deadline: Instant) {
        let mut w = lock(&self.write);
        while w.pending() {
            match self.flush_locked(&mut w) {
                Ok(true) => return,
                Ok(false) if poll_fd(self.fd(), libc::POLLOUT, Some(deadline)) => {}
                _ => return,
            }
        }
    }

    // ---- reading ----------------------------------------------------------

    /// The reactor saw the socket become readable; `read_closed` when the
    /// same event said the peer will send nothing more.
    pub(crate) fn on_readable(self: &Arc<Self>, read_closed: bool) {
        if read_closed {
            self.read_closed.store(true, Ordering::SeqCst);
        }
        self.read_wanted.store(true, Ordering::SeqCst);
        if let Ok(guard) = self.read.try_lock() {
            self.pump(guard, false);
        }
    }

    /// The event loop saw the socket become readable: reads what is there
    /// without waiting and processes it (completions run on this thread).
    /// The loop is level-triggered (it reports the socket again while there
    /// is more to read, the end of stream included), so a short read may
    /// stop here.
    pub(crate) fn read_now(self: &Arc<Self>) -> Result<()> {
        self.on_readable(false);
        match lock(&self.pending).closed_reason() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Reads and processes until nothing is left that someone asked to be read.
    ///
    /// A server connection whose peer leaves more than
    /// `Limits::max_write_backlog` bytes of replies unread, or has more than
    /// `Limits::max_request_backlog` bytes of requests being handled,
    /// handles no more of its requests: the rest of a batch waits in
    /// `ReadState::deferred`, and nothing more is read until the replies
    /// drain (`on_writable`) or the handlers finish (`release`). Memory
    /// stays bounded, and the peer's own sends block, as TCP flow control
    /// makes them. Clients always read, so two foorpc peers cannot both stop.
    ///
    /// Once the peer's stream has ended, the deferred messages are still
    /// handled (`close_if_drained` waits for them), but nothing is read.
    fn pump<'a>(self: &'a Arc<Self>, mut guard: MutexGuard<'a, ReadState>, mut wait: bool) {
        loop {
            if !guard.deferred.is_empty() && !self.backlog_too_large() {
                let deferred = std::mem::take(&mut guard.deferred);
                self.process_corked(deferred.into_iter(), &mut guard.deferred);
                self.deferred_left
                    .store(!guard.deferred.is_empty(), Ordering::SeqCst);
            }
            if self.backlog_too_large() {
                // Published before the backlog is looked at again, so that
                // `resume_reads_if_relieved` either sees the pause or
                // relieved it first.
                self.reads_paused.store(true, Ordering::SeqCst);
                if self.backlog_too_large() {
                    return;
                }
                self.reads_paused.store(false, Ordering::SeqCst);
                continue;
            }
            if !guard.deferred.is_empty() {
                continue; // the uncork drained the replies: handle the rest
            }
            if self.draining.load(Ordering::SeqCst) {
                // The stream has ended: nothing more to read.
                drop(guard);
                self.close_if_drained();
                return;
            }
            self.read_wanted.store(false, Ordering::SeqCst);
            let mut batch = BATCH.with(Cell::take);
            let status = self.read_batch(&mut guard, &mut batch, std::mem::take(&mut wait));
            if !batch.is_empty() {
                // Processed before the read lock is released: a caller that
                // takes the lock next must find a reply read here already
                // delivered, or it would wait on the socket for bytes that are
                // gone (only try_lock is ever used on it, so this cannot deadlock).
                self.process_corked(batch.drain(..), &mut guard.deferred);
            }
            batch.shrink_to(KEPT_BATCH);
            BATCH.with(|kept| kept.set(batch));
            // Reading starts only once nothing is deferred, so this says
            // whether the batch deferred any.
            let deferred_left = !guard.deferred.is_empty();
            self.deferred_left.store(deferred_left, Ordering::SeqCst);
            if deferred_left {
                self.read_wanted.store(true, Ordering::SeqCst);
            }
            drop(guard);
            match status {
                ReadStatus::Open => {}
                ReadStatus::Ended(e) => {
                    self.close_after_replies(e);
                    // Messages deferred before the end are still handled:
                    // the loop goes on to them.
                    if !deferred_left || self.is_closed() {
                        return;
                    }
                }
                ReadStatus::Closed(e) => return self.close(e),
            }
            if !self.read_wanted.load(Ordering::SeqCst) {
                return;
            }
            match self.read.try_lock() {
                Ok(g) => guard = g,
                Err(_) => return,
            }
        }
    }

    /// Reads what the socket has and decodes every complete message into `out`.
    ///
    /// With `wait`, the first read waits for data (up to the socket's receive
    /// timeout, see [`Conn::lead_once`]).
    fn read_batch(
        self: &Arc<Self>,
        rs: &mut ReadState,
        out: &mut Vec<Incoming>,
        mut wait: bool,
    ) -> ReadStatus {
        if self.is_closed() {
            return ReadStatus::Closed(self.closed_error());
        }
        // Only responses are looked up: one uncontended lock per reply.
        let raw_result = |msgid: u32| lock(&self.pending).wants_raw(msgid);
        let mut decoded = 0;
        SCRATCH.with(|scratch| {
            let scratch = &mut *scratch.borrow_mut();
            loop {
                // A big message in progress is read straight into its own
                // buffer, sized once from the decoder's hint: no copy through
                // the scratch buffer, no growing by doubling.
                let need = rs.decoder.bytes_needed();
                let direct = !rs.partial.is_empty() && need > rs.partial.len() + READ_CHUNK;
                let read = if direct {
                    let want = need - rs.partial.len();
                    rs.partial.reserve(want);
                    let spare = &mut rs.partial.spare_capacity_mut()[..want];
                    // SAFETY: recv writes at most `want` bytes into this spare capacity.
                    let buf = unsafe {
                        std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<u8>(), want)
                    };
                    self.receive(buf, std::mem::take(&mut wait))
                } else {
                    self.receive(scratch, std::mem::take(&mut wait))
                };
                let n = match read {
                    Received::Bytes(n) => n,
                    Received::Nothing => return ReadStatus::Open,
                    Received::Eof if rs.partial.is_empty() => {
                        return ReadStatus::Ended(Error::ConnectionLost(
                            "the peer closed the connection".into(),
                        ))
                    }
                    Received::Eof => {
                        return ReadStatus::Ended(Error::ConnectionLost(
                            "the peer closed the connection in the middle of a message".into(),
                        ))
                    }
                    Received::Failed(e) => {
                        return ReadStatus::Closed(Error::ConnectionLost(format!(
                            "read failed: {e}"
                        )))
                    }
                };
                let asked = if direct {
                    let asked = need - rs.partial.len();
                    // SAFETY: recv initialised these n bytes of spare capacity.
                    unsafe { rs.partial.set_len(rs.partial.len() + n) };
                    asked
                } else {
                    scratch.len()
                };
                let result = if direct && rs.partial.len() < need {
                    Ok(0)
                } else if rs.partial.is_empty() {
                    // Common case: whole messages straight from the scratch buffer.
                    decode_all(&mut rs.decoder, &scratch[..n], out, &raw_result).map(|used| {
                        rs.partial.extend_from_slice(&scratch[used..n]);
                        used
                    })
                } else {
                    if !direct {
                        rs.partial.extend_from_slice(&scratch[..n]);
                    }
                    decode_all(&mut rs.decoder, &rs.partial, out, &raw_result).map(|used| {
                        rs.partial.drain(..used);
                        if rs.partial.is_empty() && rs.partial.capacity() > KEEP_CAPACITY {
                            rs.partial = Vec::new();
                        }
                        used
                    })
                };
                match result {
                    Ok(used) => decoded += used,
                    Err(e) => return ReadStatus::Ended(self.protocol_violation(e)),
                }
                if decoded >= BATCH_BYTES {
                    // Enough for one batch: it is processed (and its replies
                    // queued) before more is read, so that a peer sending
                    // without pause meets the write backlog limit (see `pump`).
                    self.read_wanted.store(true, Ordering::SeqCst);
                    return ReadStatus::Open;
                }
                if n < asked && !self.read_closed.load(Ordering::Relaxed) {
                    // A short read drained the socket; new data (or the end
                    // of the stream) raises a new event.
                    return ReadStatus::Open;
                }
            }
        })
    }

    /// One read: waiting (up to the receive timeout) when `wait`, else not.
    fn receive(&self, buf: &mut [u8], wait: bool) -> Received {
        loop {
            let read = if wait {
                self.stream.recv_wait(buf)
            } else {
                self.stream.read(buf)
            };
            return match read {
                Ok(0) => Received::Eof,
                Ok(n) => Received::Bytes(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Received::Nothing,
                // A signal while waiting: let the caller look again (Ctrl-C in Python).
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted && wait => Received::Nothing,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Received::Failed(e),
            };
        }
    }

    /// Answers a violation where the msgid is known; the connection then
    /// closes. A message over this side's limits is not the peer's
    /// violation of the protocol: it gives [`Error::MessageLimitExceeded`].
    fn protocol_violation(self: &Arc<Self>, e: DecodeError) -> Error {
        if matches!(
            e,
            DecodeError::TooLarge { .. }
                | DecodeError::TooDeep { .. }
                | DecodeError::TooLargeDecoded { .. }
        ) {
            return Error::MessageLimitExceeded(e.to_string());
        }
        if let DecodeError::Invalid {
            msgid: Some(msgid), ..
        } = &e
        {
            let obj = Error::error_object(ERROR_CODE_VALIDATION, e.to_string());
            let _ = self.send(
                Flush::Wait(deadline::after(Duration::from_secs(1))),
                |out| codec::encode_response(out, *msgid, &obj, &Value::Nil),
            );
            if self.is_loop_driven() {
                let _ = self.flush_now(); // an event loop must not wait here
            } else if self.reactor.get().is_none() {
                self.flush_for(Duration::from_secs(1));
            } // else the reactor writes it before the connection closes
        }
        Error::Protocol(e.to_string())
    }

    /// [`Conn::process`] with writes corked, so that the replies it produces
    /// leave together.
    fn process_corked(
        self: &Arc<Self>,
        batch: impl Iterator<Item = Incoming>,
        deferred: &mut VecDeque<Incoming>,
    ) {
        self.cork();
        self.process(batch, deferred);
        self.uncork();
    }

    /// Completes replies and dispatches requests and notifications.
    ///
    /// On a server connection, a request or notification met while the peer
    /// makes the server hold too much stops it: that message and the rest
    /// of `batch` go to `deferred`.
    fn process(
        self: &Arc<Self>,
        mut batch: impl Iterator<Item = Incoming>,
        deferred: &mut VecDeque<Incoming>,
    ) {
        while let Some((msg, size)) = batch.next() {
            if !matches!(msg, Message::Response { .. }) && self.backlog_too_large() {
                deferred.push_back((msg, size));
                deferred.extend(batch);
                return;
            }
            match msg {
                Message::Response {
                    msgid,
                    error,
                    result,
                } => {
                    let slot = lock(&self.pending).take(msgid);
                    if let Some(slot) = slot {
                        slot.complete(if error.is_nil() {
                            Ok(result)
                        } else {
                            Err(Error::Remote(error))
                        });
                        self.close_if_calls_done();
                    }
                }
                Message::Request {
                    msgid,
                    method,
                    params,
                } => self.dispatch_request(msgid, method, params, size),
                Message::Notification { method, params } => {
                    let notification = Notification {
                        method,
                        params,
                        peer: Peer::new(self.clone()),
                    };
                    let hold = || self.hold(size);
                    self.config.router.dispatch_notification(notification, hold)
                }
            }
        }
    }

    fn dispatch_request(
        self: &Arc<Self>,
        msgid: u32,
        method: String,
        params: Vec<Value>,
        size: usize,
    ) {
        let refuse = |msg: String| {
            let obj = Error::error_object(crate::error::ERROR_CODE_EXCEPTION, msg);
            let _ = self.send(self.reply_flush(), |out| {
                codec::encode_response(out, msgid, &obj, &Value::Nil)
            });
        };
        if let Some(server) = &self.config.server {
            if !server.begin_request() {
                return refuse("the server is shutting down".into());
            }
        }
        let limit = self.config.limits.max_in_flight;
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= limit {
            self.finish_request(0);
            return refuse(format!(
                "limit exceeded: {limit} requests already in flight on this connection"
            ));
        }
        self.held.fetch_add(size, Ordering::SeqCst);
        let request = Request {
            method,
            params,
            responder: Responder::new(self.clone(), msgid, size),
            peer: Peer::new(self.clone()),
        };
        self.config.router.dispatch_request(request);
    }

    /// How a reply is written: without a reactor, the answering thread
    /// waits up to the call timeout for the socket.
    fn reply_flush(&self) -> Flush {
        Flush::Wait(self.config.call_timeout.and_then(deadline::after))
    }

    /// Sends the reply to one request (called once per request, by its
    /// Responder, with the request's size as received): `send` queues it,
    /// given how it is to be written.
    pub(crate) fn respond_by(
        self: &Arc<Self>,
        size: usize,
        send: impl FnOnce(&Arc<Self>, Flush) -> Result<()>,
    ) {
        let _ = send(self, self.reply_flush());
        self.finish_request(size);
    }

    /// [`Conn::respond_by`] with a reply encoded into the write buffer.
    pub(crate) fn respond(self: &Arc<Self>, size: usize, encode: impl FnOnce(&mut Vec<u8>)) {
        self.respond_by(size, |conn, flush| conn.send(flush, encode));
    }

    /// A request of `size` bytes is answered (or was refused: 0).
    fn finish_request(self: &Arc<Self>, size: usize) {
        self.release(size);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(server) = &self.config.server {
            server.end_request();
        }
        if self.draining.load(Ordering::Acquire) {
            self.close_if_drained();
        }
    }

    /// The peer ended its stream, or broke the protocol: nothing more is
    /// read and our own calls fail with `reason` (no reply can come now),
    /// but the requests it sent before are still answered. The connection
    /// closes once their replies are written, or after [`DRAIN_LIMIT`].
    /// Without a reactor to finish the writes, it closes at once.
    fn close_after_replies(self: &Arc<Self>, reason: Error) {
        if self.reactor.get().is_none() {
            return self.close(reason);
        }
        let deadline = Instant::now() + DRAIN_LIMIT;
        lock(&self.drain).get_or_insert((reason.clone(), deadline));
        self.draining.store(true, Ordering::SeqCst);
        let slots = lock(&self.pending).close(reason.clone());
        for slot in slots {
            slot.complete(Err(reason.clone()));
        }
        if !self.close_if_drained() {
            self.watch_deadlines();
            self.wake_reactor_by(deadline);
        }
    }

    /// Closes a draining connection that owes nothing more; true once closed.
    #[cold]
    fn close_if_drained(&self) -> bool {
        if !self.draining.load(Ordering::SeqCst) {
            return false;
        }
        let owes_replies = !self.sealed.load(Ordering::SeqCst)
            && (self.in_flight.load(Ordering::SeqCst) > 0
                || self.deferred_left.load(Ordering::SeqCst));
        if owes_replies || lock(&self.write).pending() {
            return false;
        }
        let reason = lock(&self.drain).as_ref().map(|(e, _)| e.clone());
        self.close(reason.unwrap_or(Error::Closed));
        true
    }

    // ---- calls --------------------------------------------------------------

    /// Registers a call and sends its request, written as `flush` says.
    pub(crate) fn start_call(
        self: &Arc<Self>,
        method: &str,
        params: Params<'_>,
        deadline: Option<Instant>,
        raw_result: bool,
        flush: Flush,
    ) -> Result<(u32, Arc<CallSlot>)> {
        self.wait_for_room(flush)?;
        let slot = CallSlot::new(deadline, raw_result);
        let msgid = lock(&self.pending).insert(slot.clone())?;
        // A handler calling back to a peer whose requests paused the reading
        // must be able to read the reply.
        self.resume_reads_if_relieved(false);
        if let Some(d) = deadline {
            if self.deadlines_watched.load(Ordering::Acquire) {
                self.wake_reactor_by(d);
            }
        }
        let sent = match params {
            Params::Encoded(bytes) => self.send_with_payload(
                flush,
                |out| codec::encode_request_head(out, msgid, method),
                bytes,
            ),
            params => self.send(flush, |out| {
                codec::encode_request_params(out, msgid, method, params)
            }),
        };
        match sent {
            Ok(()) => Ok((msgid, slot)),
            Err(e) => {
                lock(&self.pending).take(msgid);
                self.close_if_calls_done();
                Err(e)
            }
        }
    }

    /// Sends a notification, written as `flush` says.
    pub(crate) fn notify(
        self: &Arc<Self>,
        method: &str,
        params: Params<'_>,
        flush: Flush,
    ) -> Result<()> {
        self.wait_for_room(flush)?;
        self.send(flush, |out| {
            codec::encode_notification_params(out, method, params)
        })
    }

    /// Before a blocking send of our own on a connection whose I/O thread
    /// writes (so the send itself would not wait): waits while more than
    /// `Limits::max_write_backlog` is queued unwritten, so that a peer that
    /// does not read cannot make it grow without bound. Nothing is sent when
    /// it gives up: at the deadline ([`Error::Timeout`]), or when the host
    /// asks to stop ([`crate::with_write_interrupt`]).
    fn wait_for_room(&self, flush: Flush) -> Result<()> {
        const SLICE: Duration = Duration::from_millis(10);
        let Flush::Wait(deadline) = flush else {
            return Ok(());
        };
        if self.reactor.get().map_or(true, |r| r.is_current_thread()) {
            return Ok(());
        }
        let limit = self.config.limits.max_write_backlog;
        while self.write_backlog.load(Ordering::Acquire) > limit {
            if self.is_ended() {
                return Err(self.closed_error());
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(Error::Timeout);
            }
            if interrupt::requested() {
                return Err(Error::Usage(
                    "the send was interrupted before any of it was written".into(),
                ));
            }
            // The I/O thread writes once the socket has room; look again then.
            if !poll_fd(self.fd(), libc::POLLOUT, Some(now + SLICE)) {
                continue;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Checks caller-encoded bytes against this connection's limits.
    pub(crate) fn check_encoded(&self, bytes: &[u8], array: bool) -> Result<()> {
        codec::check_encoded(bytes, &self.config.limits, array)
            .map_err(|e| Error::Usage(format!("invalid MessagePack: {e}")))
    }

    /// Forgets a call (timed out, or its handle was dropped).
    pub(crate) fn cancel(self: &Arc<Self>, msgid: u32) {
        lock(&self.pending).take(msgid);
        self.close_if_calls_done();
    }

    /// Fails the calls whose deadline has passed; returns the next deadline.
    pub(crate) fn expire_due(self: &Arc<Self>, now: Instant) -> Option<Instant> {
        let drain = lock(&self.drain).clone();
        let drain_until = drain.as_ref().map(|(_, at)| *at);
        if let Some((reason, at)) = drain {
            if now >= at && !self.is_closed() {
                // Replies still owed after DRAIN_LIMIT are dropped.
                self.close(reason);
            }
        }
        let mut pending = lock(&self.pending);
        let expired = pending.take_expired(now);
        let next = deadline::earliest(pending.next_deadline(), drain_until);
        drop(pending);
        self.reactor_wakes_at
            .store(as_nanos(next), Ordering::Release);
        let any_expired = !expired.is_empty();
        for slot in expired {
            slot.complete(Err(Error::Timeout));
        }
        if any_expired {
            self.close_if_calls_done();
        }
        next
    }

    /// Gives up on the call `msgid` at its deadline: its outcome if it came
    /// meanwhile, else [`Error::Timeout`].
    pub(crate) fn time_out(self: &Arc<Self>, msgid: u32, slot: &CallSlot) -> Result<Value> {
        self.cancel(msgid);
        // The reply may have landed between the last look and the cancel.
        if let Some(r) = slot.try_take() {
            return r;
        }
        Err(Error::Timeout)
    }

    /// Makes sure the reactor looks at this connection's deadlines by `at`.
    fn wake_reactor_by(&self, at: Instant) {
        let at = as_nanos(Some(at));
        if self.reactor_wakes_at.fetch_min(at, Ordering::AcqRel) > at {
            if let Some(r) = self.reactor.get() {
                r.submit(|_| {}); // recompute the reactor's next wake-up
            }
        }
    }

    /// Asks the reactor to enforce this connection's call deadlines (once).
    pub(crate) fn watch_deadlines(self: &Arc<Self>) {
        if self.is_loop_driven() {
            return; // the event loop calls expire_due itself
        }
        if !self.deadlines_watched.swap(true, Ordering::AcqRel) {
            if let Some(r) = self.reactor.get() {
                r.watch_deadlines(Arc::downgrade(self));
            }
        }
    }

    /// Waits for a reply until `until`; `None` if it has not come by then.
    ///
    /// Without a reactor, the waiting thread reads the socket itself when no
    /// other thread does (leader), or waits to be handed the reply or the
    /// reading role (follower).
    pub(crate) fn wait_reply_until(
        self: &Arc<Self>,
        slot: &CallSlot,
        until: Option<Instant>,
    ) -> Option<Result<Value>> {
        let mut led = false;
        let outcome = loop {
            if let Some(r) = slot.try_take() {
                break Some(r);
            }
            let now = Instant::now();
            if until.is_some_and(|u| now >= u) {
                // Time is up, but when nobody else reads this connection, look
                // at the socket once without waiting: otherwise polling with a
                // zero wait would never see a reply.
                if !led && self.reactor.get().is_none() && !self.is_closed() {
                    if let Ok(guard) = self.read.try_lock() {
                        led = true;
                        self.lead_once(guard, until);
                        continue;
                    }
                }
                break None;
            }
            // Once closed, the closing thread fails this call: wait for that.
            if self.reactor.get().is_none() && !self.is_closed() {
                // Announce the wait before looking at the lock: a reader that
                // leaves after this look finds us and hands over its role.
                slot.mark_waiting();
                if let Ok(guard) = self.read.try_lock() {
                    led = true;
                    // The previous reader may have delivered our reply between
                    // our look and taking the lock.
                    if let Some(r) = slot.try_take() {
                        break Some(r);
                    }
                    self.lead_once(guard, until);
                    continue;
                }
            }
            let recheck = now + FOLLOWER_RECHECK;
            slot.wait(until.map_or(recheck, |u| u.min(recheck)));
        };
        if led {
            lock(&self.pending).promote_one();
        }
        outcome
    }

    /// Waits for the reply to `msgid` until `deadline`, then gives up on it.
    pub(crate) fn wait_reply(
        self: &Arc<Self>,
        msgid: u32,
        slot: &CallSlot,
        deadline: Option<Instant>,
    ) -> Result<Value> {
        match self.wait_reply_until(slot, deadline) {
            Some(r) => r,
            None => self.time_out(msgid, slot),
        }
    }

    /// One round as the reading thread: wait for the socket, then read and process.
    fn lead_once<'a>(
        self: &'a Arc<Self>,
        guard: MutexGuard<'a, ReadState>,
        until: Option<Instant>,
    ) {
        let _reading = ReadingHere::enter(self.id);
        let want_write = lock(&self.write).pending();
        if !want_write && self.blocking_reads.load(Ordering::Acquire) {
            let wait = self.recv_slice(until);
            self.pump(guard, wait);
            return;
        }
        let events = libc::POLLIN | if want_write { libc::POLLOUT } else { 0 };
        let revents = poll_fd_events(self.fd(), events, until);
        if revents & libc::POLLOUT != 0 {
            self.on_writable();
        }
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            self.pump(guard, false);
        }
    }

    /// Sets the socket's receive timeout for a wait until `until`, in slices
    /// of at most 50 ms rounded up to 5 ms so that the common cases (long
    /// timeouts, Python's 50 ms signal-check slices) never change it: no
    /// extra syscall per call. False when there is no time left to wait.
    fn recv_slice(&self, until: Option<Instant>) -> bool {
        const MAX_SLICE_US: u64 = 50_000;
        const GRAIN_US: u64 = 5_000;
        let left = until.map_or(MAX_SLICE_US, |u| {
            u.saturating_duration_since(Instant::now())
                .as_micros()
                .min(MAX_SLICE_US as u128) as u64
        });
        if left == 0 {
            return false;
        }
        let us = left.div_ceil(GRAIN_US) * GRAIN_US;
        if self.recv_timeout_us.swap(us, Ordering::AcqRel) != us {
            let _ = self.stream.set_recv_timeout(Duration::from_micros(us));
        }
        true
    }

    // ---- closing ------------------------------------------------------------

    fn closed_error(&self) -> Error {
        lock(&self.pending)
            .closed_reason()
            .unwrap_or_else(|| Error::ConnectionLost("connection closed".into()))
    }

    /// Closes the connection; every pending call fails with `reason`.
    pub(crate) fn close(&self, reason: Error) {
        let slots = lock(&self.pending).close(reason.clone());
        let first = !self.closed.swap(true, Ordering::AcqRel);
        // The calls are failed before the socket is shut down: a thread
        // woken by the shutdown finds its outcome there, instead of reading
        // the dead socket again and again until it is.
        for slot in slots {
            slot.complete(Err(reason.clone()));
        }
        if !first {
            return;
        }
        {
            // Nothing more is written: the queue's memory goes now, not
            // when the last handle to the connection does.
            let mut w = lock(&self.write);
            w.buf = Vec::new();
            w.pos = 0;
            w.spliced.clear();
            self.write_backlog.store(0, Ordering::Release);
        }
        if self.fork_generation != fork::generation() {
            // In a child after fork() the socket and the reactor are the
            // parent's: a shutdown(2) would end the parent's connection (it
            // acts on the socket, not on this process's descriptor), and the
            // reactor's thread is not here. Dropping closes only the child's
            // descriptor.
            return;
        }
        self.stream.shutdown();
        if let Some(r) = self.reactor.get() {
            r.remove_conn(self.id);
        }
    }

    /// Closes the connection once no call of ours is pending: at once when
    /// none is. Calls already made still get their replies (and their
    /// callbacks, futures or waiting threads their outcome), as after
    /// dropping a tarpc or gRPC channel; every call ends by its timeout, or
    /// when the peer closes.
    pub(crate) fn close_when_calls_done(self: &Arc<Self>) {
        self.close_when_idle.store(true, Ordering::SeqCst);
        // After the store: a call taken out of the table before it finds
        // the flag unset, and this look finds the table without it.
        self.close_if_calls_done();
    }

    /// Checked each time a call leaves the table.
    #[inline]
    fn close_if_calls_done(self: &Arc<Self>) {
        if self.close_when_idle.load(Ordering::SeqCst) && lock(&self.pending).len() == 0 {
            self.close_gracefully();
        }
    }

    /// Closes at the owner's request: calls in flight fail with
    /// [`Error::Closed`] at once, nothing more is read or queued (a reply
    /// of a handler still running goes nowhere), but what was already queued
    /// for the peer (a notification the socket had no room for, say) is
    /// still written by the I/O thread, as the kernel still sends a closed
    /// socket's buffer, for up to [`DRAIN_LIMIT`]; then the socket is shut.
    ///
    /// A connection driven by the program's event loop has no I/O thread to
    /// go on writing, and its loop may not run again (a close at the end of
    /// a program): what the socket takes at once is written, corked or not,
    /// and the rest is dropped.
    pub(crate) fn close_gracefully(self: &Arc<Self>) {
        let here = self.fork_generation == fork::generation();
        if here && self.wants_write() {
            if self.reactor.get().is_some() {
                self.sealed.store(true, Ordering::SeqCst);
                return self.close_after_replies(Error::Closed);
            }
            if self.is_loop_driven() {
                let mut w = lock(&self.write);
                w.cork = 0;
                let _ = self.flush_locked(&mut w);
            }
        }
        self.close(Error::Closed);
    }

    pub(crate) fn visit_pending<T: 'static>(&self, f: impl FnMut(&T)) {
        if let Ok(pending) = self.pending.try_lock() {
            pending.visit_callbacks(f);
        }
    }

    pub(crate) fn forget_pending(self: &Arc<Self>) {
        let forgotten = lock(&self.pending).forget_all();
        drop(forgotten); // with their callbacks, outside the lock
        self.close_if_calls_done();
    }

    pub(crate) fn pending_calls(&self) -> usize {
        lock(&self.pending).len()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let slots = lock(&self.pending).close(Error::Closed);
        for slot in slots {
            slot.complete(Err(Error::Closed));
        }
    }
}

/// Bytes of a peer's notification that its connection counts as held
/// (`Limits::max_request_backlog`) until this is dropped, once its handler
/// has run; on a server, a shutdown's drain waits for it too.
pub(crate) struct Held {
    conn: Arc<Conn>,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.conn.release(self.bytes);
        if let Some(server) = &self.conn.config.server {
            server.end_request();
        }
    }
}

fn decode_all(
    dec: &mut Decoder,
    data: &[u8],
    out: &mut Vec<Incoming>,
    raw_result: &dyn Fn(u32) -> bool,
) -> Result<usize, DecodeError> {
    let mut used = 0;
    while used < data.len() {
        match dec.decode_with(&data[used..], raw_result)? {
            Some((msg, n)) => {
                out.push((msg, n.max(dec.last_decoded_size())));
                used += n;
            }
            None => break,
        }
    }
    Ok(used)
}

/// Waits until `fd` has one of `events` or `until` passes; true if it has.
pub(crate) fn poll_fd(fd: std::os::fd::RawFd, events: i16, until: Option<Instant>) -> bool {
    poll_fd_events(fd, events, until) != 0
}

fn poll_fd_events(fd: std::os::fd::RawFd, events: i16, until: Option<Instant>) -> i16 {
    let timeout_ms = match until {
        None => -1,
        Some(u) => {
            let left = u.saturating_duration_since(Instant::now());
            // Round up so that a wait never ends just before its deadline.
            (left.as_micros().div_ceil(1000)).min(i32::MAX as u128) as i32
        }
    };
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if rc > 0 {
        pfd.revents
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(w: &WriteState) -> Vec<u8> {
        w.unwritten()
            .iter()
            .flat_map(|s| s.iter().copied())
            .collect()
    }

    #[test]
    fn spliced_payloads_keep_their_place_through_partial_writes() {
        let mut w = WriteState {
            buf: Vec::new(),
            pos: 0,
            spliced: VecDeque::new(),
            cork: 0,
        };
        let mut want = Vec::new();
        for (i, size) in [5usize, 0, 7].into_iter().enumerate() {
            let head = vec![b'h' + i as u8; 3];
            w.buf.extend_from_slice(&head);
            want.extend_from_slice(&head);
            let data = vec![i as u8; size];
            want.extend_from_slice(&data);
            if size > 0 {
                let at = w.buf.len();
                w.spliced.push_back(Spliced { at, data, done: 0 });
            }
        }
        w.buf.extend_from_slice(b"tail");
        want.extend_from_slice(b"tail");
        assert_eq!(stream_of(&w), want);
        // Write it 2 bytes at a time: what is left is always the rest of the stream.
        let mut written = 0;
        while w.pending() {
            let n = 2.min(want.len() - written);
            w.advance(n);
            written += n;
            assert_eq!(stream_of(&w), &want[written..]);
        }
        assert_eq!(written, want.len());
        assert!(w.spliced.is_empty());
    }
}
