//! The event loop: the one place that calls `mio::Poll::poll`.
//!
//! A reactor thread owns a `Poll`, the connections registered with it, its
//! listeners (for servers) and the timers of asynchronous calls. Other threads
//! hand it work as closures through a queue and a `Waker`.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::conn::{Conn, ConnConfig};
use crate::error::Result;
use crate::fasthash::FastState;
use crate::fork;
use crate::transport::Listener;

const WAKER: Token = Token(0);

/// Work sent to the reactor thread.
pub(crate) type Command = Box<dyn FnOnce(&mut Core) + Send>;

struct Shared {
    waker: Waker,
    commands: Mutex<Vec<Command>>,
    thread: OnceLock<ThreadId>,
}

/// A cheap, cloneable handle to a reactor thread.
#[derive(Clone)]
pub(crate) struct ReactorHandle {
    shared: Arc<Shared>,
}

/// How a server reactor sets up the connections it accepts.
pub(crate) struct Acceptor {
    pub config: ConnConfig,
}

/// The state owned by the reactor thread.
pub(crate) struct Core {
    poll: Poll,
    handle: ReactorHandle,
    conns: HashMap<Token, Arc<Conn>, FastState>,
    tokens: HashMap<u64, Token, FastState>,
    listeners: HashMap<Token, Listener, FastState>,
    acceptor: Option<Acceptor>,
    /// Connections whose calls have deadlines to enforce, with the next one.
    timed: HashMap<u64, (Weak<Conn>, Option<Instant>), FastState>,
    next_token: usize,
    stop: bool,
}

impl ReactorHandle {
    /// Starts a reactor thread.
    pub(crate) fn start(
        name: &str,
        acceptor: Option<Acceptor>,
    ) -> Result<(ReactorHandle, JoinHandle<()>)> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let handle = ReactorHandle {
            shared: Arc::new(Shared {
                waker,
                commands: Mutex::new(Vec::new()),
                thread: OnceLock::new(),
            }),
        };
        let mut core = Core {
            poll,
            handle: handle.clone(),
            conns: HashMap::default(),
            tokens: HashMap::default(),
            listeners: HashMap::default(),
            acceptor,
            timed: HashMap::default(),
            next_token: 1,
            stop: false,
        };
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let _ = core.handle.shared.thread.set(std::thread::current().id());
                core.run();
            })?;
        Ok((handle, thread))
    }

    /// The reactor that drives clients needing background I/O (created on first use,
    /// and anew in a child process after `fork()`).
    pub(crate) fn client_reactor() -> Result<ReactorHandle> {
        static GLOBAL: Mutex<Option<(u64, ReactorHandle)>> = Mutex::new(None);
        let generation = fork::generation();
        let mut g = GLOBAL.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((gen, h)) = &*g {
            if *gen == generation {
                return Ok(h.clone());
            }
        }
        let (h, _thread) = ReactorHandle::start("foorpc-client-io", None)?;
        *g = Some((generation, h.clone()));
        Ok(h)
    }

    /// Runs `cmd` on the reactor thread, soon.
    pub(crate) fn submit(&self, cmd: impl FnOnce(&mut Core) + Send + 'static) {
        self.shared
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(cmd));
        let _ = self.shared.waker.wake();
    }

    /// Runs `f` on the reactor thread and returns its result (None if the reactor is gone).
    pub(crate) fn run_sync<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core) -> R + Send + 'static,
    ) -> Option<R> {
        if self.is_current_thread() {
            return None;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(move |core| {
            let _ = tx.send(f(core));
        });
        rx.recv_timeout(Duration::from_secs(30)).ok()
    }

    pub(crate) fn is_current_thread(&self) -> bool {
        self.shared.thread.get() == Some(&std::thread::current().id())
    }

    pub(crate) fn add_conn(&self, conn: Arc<Conn>) {
        self.submit(move |core| core.register_conn(conn));
    }

    pub(crate) fn remove_conn(&self, conn_id: u64) {
        self.submit(move |core| core.remove_conn_id(conn_id));
    }

    /// Enforces the deadlines of `conn`'s calls from now on.
    pub(crate) fn watch_deadlines(&self, conn: Weak<Conn>) {
        self.submit(move |core| {
            if let Some(c) = conn.upgrade() {
                core.timed.insert(c.id(), (conn, Some(Instant::now())));
            }
        });
    }
}

impl Core {
    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        while !self.stop {
            let timeout = self
                .timed
                .values()
                .filter_map(|(_, next)| *next)
                .min()
                .map(|t| t.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    t if self.listeners.contains_key(&t) => self.accept(t),
                    t => {
                        let Some(conn) = self.conns.get(&t).cloned() else {
                            continue; // already removed: a stale event
                        };
                        if ev.is_writable() {
                            conn.on_writable();
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            conn.on_readable(ev.is_read_closed() || ev.is_error());
                        }
                        if conn.is_closed() {
                            self.remove_token(t);
                        }
                    }
                }
            }
            self.run_commands();
            self.fire_timers();
        }
        for (_, conn) in self.conns.drain() {
            conn.close(crate::Error::Closed);
        }
        self.listeners.clear();
    }

    fn run_commands(&mut self) {
        loop {
            let cmds = std::mem::take(
                &mut *self
                    .handle
                    .shared
                    .commands
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            if cmds.is_empty() {
                return;
            }
            for cmd in cmds {
                cmd(self);
            }
        }
    }

    /// Fails calls whose deadline passed. Connections are looked at again
    /// after every round, since calls come and go without telling the reactor.
    fn fire_timers(&mut self) {
        let now = Instant::now();
        self.timed.retain(|_, (conn, next)| match conn.upgrade() {
            Some(c) if !c.is_closed() => {
                *next = c.expire_due(now);
                true
            }
            _ => false,
        });
    }

    fn new_token(&mut self) -> Token {
        let t = Token(self.next_token);
        self.next_token += 1;
        t
    }

    fn register_conn(&mut self, conn: Arc<Conn>) {
        if conn.is_closed() {
            return;
        }
        let token = self.new_token();
        let fd = conn.fd();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if self
            .poll
            .registry()
            .register(&mut SourceFd(&fd), token, interest)
            .is_err()
        {
            conn.close(crate::Error::ConnectionLost(
                "could not watch the socket".into(),
            ));
            return;
        }
        self.tokens.insert(conn.id(), token);
        self.conns.insert(token, conn.clone());
        // Data may have arrived before registration; edge-triggered polling
        // would not report it. (A FIN that came before registration is
        // reported: registering queues an event for what is ready already.)
        conn.on_readable(false);
        if conn.is_closed() {
            self.remove_token(token);
        }
    }

    fn remove_token(&mut self, token: Token) {
        if let Some(conn) = self.conns.remove(&token) {
            self.tokens.remove(&conn.id());
            let fd = conn.fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        }
    }

    fn remove_conn_id(&mut self, conn_id: u64) {
        if let Some(token) = self.tokens.get(&conn_id).copied() {
            self.remove_token(token);
        }
    }

    /// Starts accepting on `listener` (servers only).
    pub(crate) fn add_listener(&mut self, mut listener: Listener) -> io::Result<()> {
        let token = self.new_token();
        self.poll
            .registry()
            .register(&mut listener, token, Interest::READABLE)?;
        self.listeners.insert(token, listener);
        Ok(())
    }

    /// Stops accepting: listeners are closed (Unix socket files removed).
    pub(crate) fn close_listeners(&mut self) {
        for (_, mut l) in self.listeners.drain() {
            let _ = self.poll.registry().deregister(&mut l);
        }
    }

    /// Every connection registered here.
    pub(crate) fn connections(&self) -> Vec<Arc<Conn>> {
        self.conns.values().cloned().collect()
    }

    /// Ends the loop after this round; remaining connections are closed.
    pub(crate) fn stop(&mut self) {
        self.stop = true;
    }

    fn accept(&mut self, token: Token) {
        loop {
            let Some(listener) = self.listeners.get(&token) else {
                return;
            };
            let stream = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return, // e.g. EMFILE: try again on the next event
            };
            let Some(acceptor) = &self.acceptor else {
                continue;
            };
            if self.conns.len() >= acceptor.config.limits.max_connections {
                // Over the limit: closing at once costs the other clients nothing.
                drop(stream);
                continue;
            }
            let conn = Conn::new(stream, acceptor.config.clone());
            let handle = self.handle.clone();
            conn.set_reactor(&handle);
            self.register_conn(conn);
        }
    }
}
