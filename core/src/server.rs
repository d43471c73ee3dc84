//! The server: binds addresses, accepts connections on a reactor thread and
//! dispatches requests to a [`Router`]'s handlers; shuts down gracefully.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::conn::ConnConfig;
use crate::deadline;
use crate::dispatch::Router;
use crate::error::{Error, Result};
use crate::fork;
use crate::limits::Limits;
use crate::reactor::{Acceptor, ReactorHandle};
use crate::transport::{Address, Listener};

/// How long a graceful shutdown waits for in-flight calls by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a shutdown waits, in all, for the replies left to write to reach
/// peers that do not read them: one deadline for every connection.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Shared by a server and its connections: counts requests being handled so
/// that shutdown can wait for them.
pub(crate) struct ServerState {
    /// An atomic, not a mutex and condvar: counting must not cost a futex
    /// call per request; only a draining shutdown is woken.
    in_flight: AtomicUsize,
    idle_lock: Mutex<()>,
    idle: Condvar,
    draining: AtomicBool,
}

impl ServerState {
    fn new() -> ServerState {
        ServerState {
            in_flight: AtomicUsize::new(0),
            idle_lock: Mutex::new(()),
            idle: Condvar::new(),
            draining: AtomicBool::new(false),
        }
    }

    /// Counts a new request; false once the server is shutting down.
    pub(crate) fn begin_request(&self) -> bool {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.draining.load(Ordering::SeqCst) {
            self.end_request();
            return false;
        }
        true
    }

    /// Counts a notification handed to the worker pool (read before any
    /// shutdown, so never refused): a draining shutdown waits for it too.
    /// Ended with [`ServerState::end_request`].
    pub(crate) fn begin_notification(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn end_request(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.draining.load(Ordering::SeqCst)
        {
            let _guard = self.idle_lock.lock().unwrap_or_else(|p| p.into_inner());
            self.idle.notify_all();
        }
    }

    /// Waits until no request is in flight, or `timeout`.
    fn wait_idle(&self, timeout: Duration) {
        // Short waits: a request ending between the check and the wait
        // costs at most one of them.
        const RECHECK: Duration = Duration::from_millis(10);
        let deadline = deadline::after(timeout);
        let mut guard = self.idle_lock.lock().unwrap_or_else(|p| p.into_inner());
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return;
            }
            let left = deadline.map_or(RECHECK, |d| d - now);
            guard = self
                .idle
                .wait_timeout(guard, left.min(RECHECK))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Options and addresses for a [`Server`].
pub struct ServerBuilder {
    router: Router,
    limits: Limits,
    call_timeout: Option<Duration>,
    drain_timeout: Duration,
    listeners: Vec<Listener>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            router: Router::new(),
            limits: Limits::default(),
            call_timeout: Some(crate::client::DEFAULT_CALL_TIMEOUT),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            listeners: Vec::new(),
        }
    }
}

impl ServerBuilder {
    /// The handlers to serve.
    pub fn router(mut self, router: Router) -> Self {
        self.router = router;
        self
    }

    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Default timeout of calls that handlers make back to their clients.
    pub fn call_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// How long [`Server::shutdown`] waits for in-flight calls.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Binds `tcp://host:port` (port 0: any free port) or `unix:///path`, now,
    /// so that errors show here and the real port is known before `start`.
    pub fn bind(mut self, address: &str) -> Result<Self> {
        self.listeners
            .push(Listener::bind(&Address::parse(address)?)?);
        Ok(self)
    }

    /// Adds a listener bound by the caller (see [`Listener::bind`]); the same
    /// as [`ServerBuilder::bind`] for callers that keep the `Listener` until
    /// they start the server (the C API reports its address before `start`).
    pub fn listener(mut self, listener: Listener) -> Self {
        self.listeners.push(listener);
        self
    }

    /// Starts serving in the background; the returned [`Server`] controls it.
    pub fn start(self) -> Result<Server> {
        if self.listeners.is_empty() {
            return Err(Error::Usage(
                "bind at least one address before start".into(),
            ));
        }
        let addrs = self
            .listeners
            .iter()
            .map(Listener::local_address)
            .collect::<Result<Vec<_>>>()?;
        let state = Arc::new(ServerState::new());
        let acceptor = Acceptor {
            config: ConnConfig {
                limits: self.limits,
                call_timeout: self.call_timeout,
                router: Arc::new(self.router),
                server: Some(state.clone()),
            },
        };
        let (reactor, thread) = ReactorHandle::start("foorpc-server", Some(acceptor))?;
        let listeners = self.listeners;
        reactor
            .run_sync(move |core| listeners.into_iter().try_for_each(|l| core.add_listener(l)))
            .ok_or(Error::Closed)??;
        Ok(Server {
            state,
            reactor,
            addrs,
            drain_timeout: self.drain_timeout,
            finish: Arc::new(Finish {
                thread: Mutex::new(Some(thread)),
                done: Mutex::new(false),
                done_cv: Condvar::new(),
            }),
            shutting_down: AtomicBool::new(false),
            fork_generation: fork::generation(),
        })
    }
}

/// A running server. Dropping it shuts it down gracefully.
pub struct Server {
    state: Arc<ServerState>,
    reactor: ReactorHandle,
    addrs: Vec<Address>,
    drain_timeout: Duration,
    finish: Arc<Finish>,
    shutting_down: AtomicBool,
    /// The process the reactor thread runs in (see [`fork::generation`]).
    fork_generation: u64,
}

/// The end of a shutdown, shared with a drain running on a thread of its own.
struct Finish {
    thread: Mutex<Option<JoinHandle<()>>>,
    done: Mutex<bool>,
    done_cv: Condvar,
}

impl Finish {
    /// Joins the stopped reactor thread, then wakes every waiter.
    fn complete(&self) {
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
        self.set_done();
    }

    fn set_done(&self) {
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.done_cv.notify_all();
    }
}

impl Server {
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The addresses bound, in `bind` order, with real ports.
    pub fn local_addrs(&self) -> &[Address] {
        &self.addrs
    }

    /// The first address bound.
    pub fn local_addr(&self) -> &Address {
        &self.addrs[0]
    }

    /// Connections open now.
    pub fn connection_count(&self) -> usize {
        self.reactor
            .run_sync(|core| core.connections().len())
            .unwrap_or(0)
    }

    /// True in a child process after `fork()`: the reactor thread is the
    /// parent's and does not exist here.
    fn forked(&self) -> bool {
        self.fork_generation != fork::generation()
    }

    /// Shuts down gracefully: stop accepting, let in-flight calls, and the
    /// `Pool` and `Ordered` handlers of notifications already read, finish
    /// (new requests get an error reply) for up to the drain timeout, write the
    /// replies left (waiting up to 1 s in all for peers that do not read
    /// them, however many), close every connection. Blocks until done; safe to
    /// call twice and from any thread. On the server's I/O thread (from an
    /// inline handler or a completion it runs) it only starts the shutdown,
    /// which goes on on a thread of its own, and returns at once.
    ///
    /// In a child process after `fork()` it returns at once and touches
    /// nothing: the server keeps running in the parent (the child's copies of
    /// its sockets stay open until the child exits or execs).
    pub fn shutdown(&self) {
        if self.forked() {
            self.shutting_down.store(true, Ordering::SeqCst);
            // Neither join nor detach a thread of the parent's.
            if let Some(t) = self
                .finish
                .thread
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                std::mem::forget(t);
            }
            self.finish.set_done();
            return;
        }
        if self.shutting_down.swap(true, Ordering::AcqRel) {
            return self.wait();
        }
        if self.reactor.is_current_thread() {
            // Waiting here would stop the very thread the drain needs.
            let (reactor, state, drain, finish) = (
                self.reactor.clone(),
                self.state.clone(),
                self.drain_timeout,
                self.finish.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name("foorpc-stop".into())
                .spawn(move || {
                    drain_and_stop(&reactor, &state, drain);
                    finish.complete();
                });
            if spawned.is_err() {
                // No thread for a drain: stop without one once this round ends.
                self.state.draining.store(true, Ordering::SeqCst);
                self.reactor.submit(|core| {
                    core.close_listeners();
                    core.stop();
                });
                self.finish.set_done();
            }
            return;
        }
        drain_and_stop(&self.reactor, &self.state, self.drain_timeout);
        self.finish.complete();
    }

    /// Blocks until the server has shut down (run in the foreground). Returns
    /// at once on the server's own I/O thread (which must go on running for
    /// the shutdown to finish) and in a child process after `fork()`.
    pub fn wait(&self) {
        if self.reactor.is_current_thread() || self.forked() {
            return;
        }
        let mut done = self.finish.done.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            done = self
                .finish
                .done_cv
                .wait(done)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

fn drain_and_stop(reactor: &ReactorHandle, state: &ServerState, drain: Duration) {
    reactor.run_sync(|core| core.close_listeners());
    state.draining.store(true, Ordering::SeqCst);
    state.wait_idle(drain);
    let conns = reactor
        .run_sync(|core| core.connections())
        .unwrap_or_default();
    // One deadline for all: peers that do not read cost 1 s in all, not
    // 1 s each. A first round without waiting lets every connection write
    // what fits before any waits.
    let now = Instant::now();
    for conn in &conns {
        conn.flush_until(now);
    }
    let deadline = now + FLUSH_TIMEOUT;
    for conn in &conns {
        conn.flush_until(deadline);
    }
    reactor.run_sync(|core| core.stop());
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}
