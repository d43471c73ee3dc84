//! Addresses, streams and listeners for TCP and Unix domain sockets.
//!
//! One [`Stream`] type covers both transports so that everything above this
//! module is transport-agnostic. Sockets are non-blocking; writes use
//! `MSG_NOSIGNAL` so a vanished peer is an error, never a SIGPIPE that kills a
//! C or Python host process.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use mio::event::Source;
use mio::{Interest, Registry, Token};

use crate::error::{Error, Result};

/// Where to connect or bind: `tcp://host:port` or `unix:///path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A TCP address (host names resolve when connecting or binding).
    Tcp(String),
    /// A Unix domain socket path.
    Unix(PathBuf),
}

impl Address {
    /// Parses `tcp://host:port` or `unix:///path`.
    pub fn parse(s: &str) -> Result<Address> {
        if let Some(rest) = s.strip_prefix("tcp://") {
            let valid = rest
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if valid {
                return Ok(Address::Tcp(rest.to_owned()));
            }
        } else if let Some(path) = s.strip_prefix("unix://") {
            if !path.is_empty() {
                return Ok(Address::Unix(PathBuf::from(path)));
            }
        }
        Err(Error::InvalidAddress(s.to_owned()))
    }

    fn socket_addrs(host_port: &str) -> Result<Vec<SocketAddr>> {
        let addrs: Vec<SocketAddr> = host_port
            .to_socket_addrs()
            .map_err(|e| Error::InvalidAddress(format!("tcp://{host_port} ({e})")))?
            .collect();
        if addrs.is_empty() {
            return Err(Error::InvalidAddress(format!("tcp://{host_port}")));
        }
        Ok(addrs)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(hp) => write!(f, "tcp://{hp}"),
            Address::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

impl std::str::FromStr for Address {
    type Err = Error;
    fn from_str(s: &str) -> Result<Address> {
        Address::parse(s)
    }
}

/// Connects to a Unix socket, waiting at most `timeout` for room in the
/// listener's backlog.
///
/// Written with libc because std has no Unix connect with a timeout. On a
/// blocking socket, Linux waits for a full backlog for as long as the
/// socket's send timeout allows (`SO_SNDTIMEO`), so that timeout bounds the
/// connect; a non-blocking connect would fail at once instead (`EAGAIN`: no
/// connect is ever in progress on a Unix socket to wait for).
fn connect_unix(
    path: &std::path::Path,
    timeout: Duration,
) -> Result<std::os::unix::net::UnixStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;

    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(Error::from(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unix socket path too long or not valid: {}", path.display()),
        )));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;

    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error().into());
    }
    // SAFETY: fd is a new socket that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // A zero timeval means "no timeout": the shortest wait is one microsecond.
    let wait = libc::timeval {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_usec: if timeout.is_zero() {
            1
        } else {
            timeout.subsec_micros() as libc::suseconds_t
        },
    };
    set_send_timeout(fd, &wait)?;
    loop {
        // SAFETY: addr is a valid sockaddr_un and len is within its size.
        let rc = unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) };
        if rc == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out").into())
            }
            _ => return Err(err.into()),
        }
    }
    // Writes pass MSG_DONTWAIT; the timeout only ever bounded the connect.
    set_send_timeout(
        fd,
        &libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
    )?;
    Ok(std::os::unix::net::UnixStream::from(sock))
}

fn set_send_timeout(fd: RawFd, wait: &libc::timeval) -> Result<()> {
    // SAFETY: wait points to a timeval, whose size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (wait as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error().into());
    }
    Ok(())
}

/// A connected, non-blocking socket.
#[derive(Debug)]
pub enum Stream {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

impl Stream {
    /// Connects, waiting at most `timeout` for a TCP handshake.
    pub fn connect(addr: &Address, timeout: Duration) -> Result<Stream> {
        match addr {
            Address::Tcp(hp) => {
                let mut last = None;
                for sa in Address::socket_addrs(hp)? {
                    match std::net::TcpStream::connect_timeout(&sa, timeout) {
                        Ok(s) => {
                            s.set_nodelay(true)?;
                            s.set_nonblocking(true)?;
                            return Ok(Stream::Tcp(mio::net::TcpStream::from_std(s)));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.map(Error::from).unwrap_or(Error::Timeout))
            }
            Address::Unix(path) => {
                let s = connect_unix(path, timeout)?;
                s.set_nonblocking(true)?;
                Ok(Stream::Unix(mio::net::UnixStream::from_std(s)))
            }
        }
    }

    /// Reads what is available without waiting; `Ok(0)` means the peer closed.
    ///
    /// All I/O passes `MSG_DONTWAIT`, so it never blocks whatever the
    /// socket's mode; only [`Stream::recv_wait`] waits.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv(buf, libc::MSG_DONTWAIT)
    }

    /// Reads, waiting for data up to the socket's receive timeout (a
    /// blocking socket only; see [`Stream::set_blocking`]). One syscall where
    /// `poll` + `read` would take two.
    pub fn recv_wait(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv(buf, 0)
    }

    fn recv(&self, buf: &mut [u8], flags: i32) -> io::Result<usize> {
        // SAFETY: the fd is open for the lifetime of `self`; buf is a valid slice.
        let n = unsafe { libc::recv(self.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes what fits now, without waiting and without raising SIGPIPE.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: the fd is open for the lifetime of `self`; buf is a valid slice.
        let n = unsafe {
            libc::send(
                self.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// [`Stream::write`] from several buffers in one `sendmsg`.
    pub fn write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: an all-zero msghdr is valid; IoSlice is ABI-compatible with
        // iovec on Unix, and the slices outlive the call.
        let n = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = bufs.len() as _;
            libc::sendmsg(
                self.as_raw_fd(),
                &msg,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Switches the socket's blocking mode (it only matters to `recv_wait`
    /// and to the reactor, which wants non-blocking sockets).
    pub fn set_blocking(&self, blocking: bool) -> io::Result<()> {
        let fd = self.as_raw_fd();
        // SAFETY: fcntl on an fd owned by `self`.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 {
                return Err(io::Error::last_os_error());
            }
            let flags = if blocking {
                flags & !libc::O_NONBLOCK
            } else {
                flags | libc::O_NONBLOCK
            };
            if libc::fcntl(fd, libc::F_SETFL, flags) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Sets how long `recv_wait` waits at most.
    pub fn set_recv_timeout(&self, timeout: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: a valid timeval of the size given.
        let rc = unsafe {
            libc::setsockopt(
                self.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Shuts both directions down so that a thread blocked on the socket wakes.
    pub fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Source for Stream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.register(r, t, i),
            Stream::Unix(s) => s.register(r, t, i),
        }
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.reregister(r, t, i),
            Stream::Unix(s) => s.reregister(r, t, i),
        }
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.deregister(r),
            Stream::Unix(s) => s.deregister(r),
        }
    }
}

/// A bound, non-blocking listening socket.
#[derive(Debug)]
pub enum Listener {
    Tcp(mio::net::TcpListener),
    Unix(mio::net::UnixListener, PathBuf),
}

impl Listener {
    /// Binds; for TCP port 0 the OS picks a port, reported by [`Listener::local_address`].
    /// A stale Unix socket file left by a dead process is replaced.
    pub fn bind(addr: &Address) -> Result<Listener> {
        match addr {
            Address::Tcp(hp) => {
                let mut last = None;
                for sa in Address::socket_addrs(hp)? {
                    match mio::net::TcpListener::bind(sa) {
                        Ok(l) => return Ok(Listener::Tcp(l)),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.map(Error::from).unwrap_or(Error::Closed))
            }
            Address::Unix(path) => {
                remove_stale_socket(path);
                let l = mio::net::UnixListener::bind(path)?;
                Ok(Listener::Unix(l, path.clone()))
            }
        }
    }

    /// The address actually bound (with the real port for TCP port 0).
    pub fn local_address(&self) -> Result<Address> {
        match self {
            Listener::Tcp(l) => Ok(Address::Tcp(l.local_addr()?.to_string())),
            Listener::Unix(_, p) => Ok(Address::Unix(p.clone())),
        }
    }

    /// Accepts one pending connection, if any.
    pub fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l, _) => Ok(Stream::Unix(l.accept()?.0)),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes a Unix socket file nobody listens on any more; leaves other files alone.
fn remove_stale_socket(path: &std::path::Path) {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if is_socket && std::os::unix::net::UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
}

impl Source for Listener {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.register(r, t, i),
            Listener::Unix(l, _) => l.register(r, t, i),
        }
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.reregister(r, t, i),
            Listener::Unix(l, _) => l.reregister(r, t, i),
        }
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.deregister(r),
            Listener::Unix(l, _) => l.deregister(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(
            Address::parse("tcp://127.0.0.1:80").unwrap(),
            Address::Tcp("127.0.0.1:80".into())
        );
        assert_eq!(
            Address::parse("unix:///tmp/x.sock").unwrap(),
            Address::Unix("/tmp/x.sock".into())
        );
        for bad in [
            "",
            "127.0.0.1:80",
            "tcp://",
            "tcp://:80",
            "tcp://h:99999",
            "unix://",
            "udp://h:1",
        ] {
            assert!(
                matches!(Address::parse(bad), Err(Error::InvalidAddress(_))),
                "{bad}"
            );
        }
        assert_eq!(
            Address::parse("tcp://[::1]:5").unwrap().to_string(),
            "tcp://[::1]:5"
        );
    }

    /// A Unix listener that accepts nothing, its backlog filled up.
    fn full_unix_listener(
        path: &std::path::Path,
    ) -> (std::os::unix::net::UnixListener, Vec<mio::net::UnixStream>) {
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        let mut waiting = Vec::new();
        for _ in 0..100_000 {
            // Non-blocking: EAGAIN once the backlog is full.
            match mio::net::UnixStream::connect(path) {
                Ok(s) => waiting.push(s),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (listener, waiting),
                Err(e) => panic!("filling the backlog: {e}"),
            }
        }
        panic!("the backlog never filled");
    }

    #[test]
    fn a_unix_connect_waits_no_longer_than_its_timeout() {
        let path = std::env::temp_dir().join(format!("foorpc-connect-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let (listener, waiting) = full_unix_listener(&path);
        let addr = Address::Unix(path.clone());
        // On a thread, so that a connect that never returns fails the test
        // instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        let a = addr.clone();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let outcome = Stream::connect(&a, Duration::from_millis(200));
            let _ = tx.send((outcome, started.elapsed()));
        });
        let (outcome, waited) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the connect did not return");
        assert!(matches!(outcome, Err(Error::Timeout)), "{outcome:?}");
        // It waited for room, rather than failing at once.
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
        // Once the listener accepts, the same connect goes through.
        drop(waiting);
        listener.set_nonblocking(true).unwrap();
        while listener.accept().is_ok() {}
        assert!(Stream::connect(&addr, Duration::from_secs(5)).is_ok());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_unix_connect_reports_a_missing_socket_and_a_path_too_long() {
        let missing = Address::Unix("/nonexistent-foorpc-dir/x.sock".into());
        match Stream::connect(&missing, Duration::from_secs(1)) {
            Err(Error::Io { kind, .. }) => assert_eq!(kind, io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
        let long = Address::Unix(std::path::PathBuf::from(format!(
            "/tmp/{}",
            "x".repeat(200)
        )));
        match Stream::connect(&long, Duration::from_secs(1)) {
            Err(Error::Io { kind, .. }) => assert_eq!(kind, io::ErrorKind::InvalidInput),
            other => panic!("{other:?}"),
        }
    }
}
