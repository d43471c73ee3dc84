//! Helpers shared by the integration tests: servers with a small set of
//! handlers, temporary directories for Unix sockets, a raw MessagePack-RPC
//! peer over a std socket, one round of an event loop over a client's
//! socket, a minimal `block_on`, and exact equality of values and messages.
//!
//! Every test file uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::future::Future;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use foorpc::codec::{self, Decoder};
use foorpc::{Client, Error, Execution, Limits, Message, Router, Server, Value};

/// Upper bound for anything that should happen "at once" (generous: a shared
/// 2-core machine can stall for a while).
pub const PROMPT: Duration = Duration::from_secs(5);

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "foorpc-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A `unix:///...` address of a socket file inside the directory.
    pub fn socket(&self, name: &str) -> (String, PathBuf) {
        let p = self.0.join(name);
        (format!("unix://{}", p.display()), p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A gate that handlers block on until the test opens it.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    pub fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }

    /// Waits until open (true) or `timeout` passes (false).
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut open = self.0 .0.lock().unwrap();
        while !*open {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            open = self.0 .1.wait_timeout(open, deadline - now).unwrap().0;
        }
        true
    }
}

/// The handlers most tests use:
/// - `add(a, b)`: typed, inline;
/// - `echo(x)`: inline, returns its one argument unchanged;
/// - `sleep_ms(n)`: pool, sleeps then returns n.
pub fn calc_router() -> Router {
    let mut r = Router::new();
    r.typed("add", Execution::Inline, |(a, b): (i64, i64)| Ok(a + b));
    r.method_inline("echo", |params| match <[Value; 1]>::try_from(params) {
        Ok([x]) => Ok(x),
        Err(_) => Err(Error::Remote(Error::error_object(1, "echo takes one arg"))),
    });
    r.method("sleep_ms", |params| {
        let ms = params.first().and_then(Value::as_u64).unwrap_or(0);
        thread::sleep(Duration::from_millis(ms));
        Ok(Value::from(ms))
    });
    r
}

/// Starts a server on `address` with a short drain timeout (so a test that
/// fails with a handler still blocked does not also wait 10 s in drop).
pub fn start(router: Router, address: &str) -> Server {
    start_with(router, address, Limits::default())
}

pub fn start_with(router: Router, address: &str, limits: Limits) -> Server {
    Server::builder()
        .router(router)
        .limits(limits)
        .drain_timeout(Duration::from_secs(3))
        .bind(address)
        .expect("bind")
        .start()
        .expect("start")
}

/// A server on a free 127.0.0.1 port.
pub fn start_tcp(router: Router) -> Server {
    start(router, "tcp://127.0.0.1:0")
}

/// `host:port` of a TCP server, for std sockets.
pub fn tcp_host_port(server: &Server) -> String {
    match server.local_addr() {
        foorpc::Address::Tcp(hp) => hp.clone(),
        other => panic!("not a TCP server: {other}"),
    }
}

/// Waits (bounded) until `f` holds; false if it never did within `timeout`.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Encodes a request the way any msgpack-rpc peer would.
pub fn request_bytes(msgid: u32, method: &str, params: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    codec::encode_request(&mut out, msgid, method, params);
    out
}

/// What a raw read ended with.
#[derive(Debug)]
pub enum Read1 {
    Msg(Message),
    /// The peer closed (EOF or reset).
    Closed,
    /// Nothing within the timeout.
    TimedOut,
}

/// A MessagePack-RPC peer over a plain blocking std socket: writes raw bytes,
/// reads messages with foorpc's decoder.
pub struct RawPeer<S: Read + Write> {
    pub stream: S,
    buf: Vec<u8>,
    decoder: Decoder,
}

impl RawPeer<TcpStream> {
    pub fn connect(host_port: &str) -> RawPeer<TcpStream> {
        let s = TcpStream::connect(host_port).expect("raw connect");
        s.set_nodelay(true).unwrap();
        RawPeer::new(s)
    }
}

impl<S: Read + Write> RawPeer<S> {
    pub fn new(stream: S) -> RawPeer<S> {
        RawPeer {
            stream,
            buf: Vec::new(),
            decoder: Decoder::new(&Limits::default()),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("raw write");
        self.stream.flush().unwrap();
    }

    /// Reads until one complete message, EOF/reset, or `timeout` (the
    /// stream's read timeout must be settable: see `set_timeout`).
    pub fn read_msg_with(
        &mut self,
        timeout: Duration,
        set_timeout: impl Fn(&S, Duration),
    ) -> Read1 {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.buf.is_empty() {
                if let Some((msg, n)) = self.decoder.decode(&self.buf).expect("peer sent garbage") {
                    self.buf.drain(..n);
                    return Read1::Msg(msg);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Read1::TimedOut;
            }
            set_timeout(&self.stream, deadline - now);
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Read1::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Read1::Closed, // reset
            }
        }
    }
}

fn tcp_timeout(s: &TcpStream, d: Duration) {
    s.set_read_timeout(Some(d.max(Duration::from_millis(1))))
        .unwrap();
}

impl RawPeer<TcpStream> {
    pub fn read_msg(&mut self, timeout: Duration) -> Read1 {
        self.read_msg_with(timeout, tcp_timeout)
    }

    /// Expects one message within PROMPT.
    pub fn expect_msg(&mut self) -> Message {
        match self.read_msg(PROMPT) {
            Read1::Msg(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Expects a response with `msgid` within PROMPT; returns (error, result).
    pub fn expect_response(&mut self, msgid: u32) -> (Value, Value) {
        match self.expect_msg() {
            Message::Response {
                msgid: id,
                error,
                result,
            } => {
                assert_eq!(id, msgid, "reply to the wrong msgid");
                (error, result)
            }
            other => panic!("expected a response to {msgid}, got {other:?}"),
        }
    }

    /// Asserts the peer closes the connection within `timeout`, ignoring
    /// any message it sends before.
    pub fn expect_closed_within(&mut self, timeout: Duration) -> Vec<Message> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_msg(left) {
                Read1::Closed => return seen,
                Read1::Msg(m) => seen.push(m),
                Read1::TimedOut => panic!("connection still open after {timeout:?}"),
            }
        }
    }

    /// Asserts the connection stays open and silent for a short while.
    pub fn expect_open_and_silent(&mut self, wait: Duration) {
        match self.read_msg(wait) {
            Read1::TimedOut => {}
            other => panic!("expected the connection to stay open and silent, got {other:?}"),
        }
    }
}

/// A raw server: a std listener on 127.0.0.1 whose single connection is
/// handled by `f` on a thread. Returns the `tcp://` address and the thread.
pub fn raw_server(
    f: impl FnOnce(RawPeer<TcpStream>) + Send + 'static,
) -> (String, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("raw bind");
    let addr = format!("tcp://{}", listener.local_addr().unwrap());
    let t = thread::spawn(move || {
        let (s, _) = listener.accept().expect("raw accept");
        s.set_nodelay(true).unwrap();
        f(RawPeer::new(s));
    });
    (addr, t)
}

/// Runs a future to completion on this thread: the waker unparks it. No
/// runtime. `None` if it is not done within `timeout`.
pub fn block_on<F: Future>(fut: F, timeout: Duration) -> Option<F::Output> {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    let deadline = Instant::now() + timeout;
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::park_timeout(deadline - now);
    }
}

/// The `[code, message]` of a foorpc error reply, or a panic saying what it was.
pub fn code_message(e: &Error) -> (i64, String) {
    e.remote_code_message()
        .unwrap_or_else(|| panic!("expected a remote [code, message] error, got {e:?}"))
}

/// Timeout for calls in tests: long enough for a loaded machine, short
/// enough that a lost reply fails the test instead of hanging it.
pub const CALL: Option<Duration> = Some(Duration::from_secs(10));

/// Waits (at most `wait`) for `events` on the client's socket, with one
/// poll(2); returns the events that came (0 when `wait` passed).
pub fn poll_client(client: &Client, events: i16, wait: Duration) -> i16 {
    let mut pfd = libc::pollfd {
        fd: client.fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as i32) };
    pfd.revents
}

/// One poll(2) round over the socket of a client driven by the test's own
/// event loop: flushes when it is writable, reads when it is readable.
pub fn loop_once(client: &Client, wait: Duration) -> foorpc::Result<()> {
    let events = libc::POLLIN
        | if client.wants_write() {
            libc::POLLOUT
        } else {
            0
        };
    let revents = poll_client(client, events, wait);
    if revents & libc::POLLOUT != 0 {
        client.flush()?;
    }
    if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
        client.read_ready()?;
    }
    Ok(())
}

/// Exact equality of values: same variant, same integer sign class, floats
/// by bits (NaN equals NaN, -0.0 differs from 0.0), strings by raw bytes and
/// validity. (`Value`'s `PartialEq` compares floats by value.)
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Nil, Value::Nil) => true,
        (Value::Boolean(x), Value::Boolean(y)) => x == y,
        (Value::Integer(x), Value::Integer(y)) => {
            x.as_u64() == y.as_u64() && x.as_i64() == y.as_i64()
        }
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        (Value::String(x), Value::String(y)) => {
            x.as_bytes() == y.as_bytes() && x.is_str() == y.is_str()
        }
        (Value::Binary(x), Value::Binary(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => same_values(x, y),
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| same_value(ka, kb) && same_value(va, vb))
        }
        (Value::Ext(ta, da), Value::Ext(tb, db)) => ta == tb && da == db,
        _ => false,
    }
}

/// [`same_value`] element by element.
pub fn same_values(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_value(a, b))
}

/// Exact equality of messages ([`same_value`] for their values).
pub fn same_message(a: &Message, b: &Message) -> bool {
    match (a, b) {
        (
            Message::Request {
                msgid: ia,
                method: ma,
                params: pa,
            },
            Message::Request {
                msgid: ib,
                method: mb,
                params: pb,
            },
        ) => ia == ib && ma == mb && same_values(pa, pb),
        (
            Message::Response {
                msgid: ia,
                error: ea,
                result: ra,
            },
            Message::Response {
                msgid: ib,
                error: eb,
                result: rb,
            },
        ) => ia == ib && same_value(ea, eb) && same_value(ra, rb),
        (
            Message::Notification {
                method: ma,
                params: pa,
            },
            Message::Notification {
                method: mb,
                params: pb,
            },
        ) => ma == mb && same_values(pa, pb),
        _ => false,
    }
}
