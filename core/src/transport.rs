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
                let s = std::os::unix::net::UnixStream::connect(path)?;
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
}
