//! The client: connects to a server and calls it.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use crate::conn::{Conn, ConnConfig};
use crate::dispatch::Router;
use crate::error::Result;
use crate::limits::Limits;
use crate::peer::Peer;
use crate::reactor::ReactorHandle;
use crate::transport::{Address, Stream};

/// Default time allowed for a TCP connection to be established.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a call waits for its reply when it is not given a timeout.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Options for [`Client`].
#[derive(Clone)]
pub struct ClientBuilder {
    connect_timeout: Duration,
    call_timeout: Option<Duration>,
    limits: Limits,
    router: Router,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            call_timeout: Some(DEFAULT_CALL_TIMEOUT),
            limits: Limits::default(),
            router: Router::new(),
        }
    }
}

impl ClientBuilder {
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Timeout of calls that do not give their own (None: wait for ever).
    pub fn call_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.call_timeout = timeout;
        self
    }

    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Handlers for requests and notifications the server sends to this client.
    pub fn router(mut self, router: Router) -> Self {
        self.router = router;
        self
    }

    /// Connects to `tcp://host:port` or `unix:///path`.
    pub fn connect(self, address: &str) -> Result<Client> {
        let address = Address::parse(address)?;
        let stream = Stream::connect(&address, self.connect_timeout)?;
        let serves = !self.router.is_empty();
        let conn = Conn::new(
            stream,
            ConnConfig {
                limits: self.limits,
                call_timeout: self.call_timeout,
                router: Arc::new(self.router),
                server: None,
            },
        );
        if serves {
            // The server may call at any time, not only while a call of ours waits.
            conn.attach_reactor(&ReactorHandle::client_reactor()?);
        } else {
            conn.use_blocking_reads();
        }
        Ok(Client {
            peer: Peer::new(conn.clone()),
            _owner: Arc::new(CloseOnDrop(conn)),
        })
    }
}

struct CloseOnDrop(Arc<Conn>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close_when_calls_done();
    }
}

/// A connection to a MessagePack-RPC server.
///
/// Clone it freely and share it between threads: every clone uses the same
/// connection, calls are pipelined and replies matched by msgid. When the
/// last clone is dropped, the connection closes once the calls already made
/// are done (each ends with its reply, its timeout, or the peer's close);
/// [`Peer::close`] closes it at once and fails them.
/// All calling methods come from [`Peer`].
#[derive(Clone)]
pub struct Client {
    peer: Peer,
    _owner: Arc<CloseOnDrop>,
}

impl Client {
    /// Connects with default options.
    pub fn connect(address: &str) -> Result<Client> {
        ClientBuilder::default().connect(address)
    }

    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The underlying connection handle.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
}

impl Deref for Client {
    type Target = Peer;
    fn deref(&self) -> &Peer {
        &self.peer
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.peer.id())
            .finish()
    }
}
