//! Limits that protect a process from its peers.
//!
//! The defaults are meant for a server on an open network: a hostile peer can
//! cost about one message's worth of memory (`max_message_size` as it
//! arrives, at most `max_decoded_size` once decoded), plus the replies it
//! leaves unread (up to `max_write_backlog`) and the requests it has
//! handlers work on (up to `max_request_backlog`, four times that while the
//! server waits for its replies), and its own connection.

/// Resource limits for a client or a server. Every field is configurable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest message accepted from a peer, in bytes (encoded size).
    pub max_message_size: usize,
    /// Most memory one message may take once decoded into [`Value`]s: each
    /// array element and each map key and value counts
    /// [`DECODED_VALUE_SIZE`] bytes (40 on 64-bit targets), each str, bin
    /// and ext its length. Without it a message of one-byte items would
    /// take 40 times its size: 64 MiB of nils in one array, 2.5 GiB.
    /// Checked from headers alone, before anything is allocated. A reply
    /// that a C or Python client takes as MessagePack bytes counts the same
    /// way (the Python client builds objects from them), and so do
    /// caller-encoded params and results before they are sent. A message over
    /// it breaks the connection, as one over `max_message_size` does.
    ///
    /// [`Value`]: crate::Value
    /// [`DECODED_VALUE_SIZE`]: crate::codec::DECODED_VALUE_SIZE
    pub max_decoded_size: usize,
    /// Deepest nesting of arrays and maps accepted inside one message.
    pub max_depth: usize,
    /// Requests from one peer being handled at once; more get an error reply.
    pub max_in_flight: usize,
    /// Connections a server holds at once; more are closed on accept.
    pub max_connections: usize,
    /// Bytes of replies a server connection queues for a peer that does
    /// not read them. Above it the server reads no more of that peer's
    /// requests (its sends then block, as TCP flow control makes them) until
    /// the peer has read the queue down to half. One reply may exceed it.
    ///
    /// On any connection (a client's too), sends that do not wait for the
    /// socket ([`Peer::call_async`], [`Peer::notify`] and their variants)
    /// fail with [`Error::LimitExceeded`] while more than this is already
    /// queued unwritten; one message may exceed it. Not on a connection
    /// driven by the program's event loop ([`Peer::drive_from_event_loop`]),
    /// whose loop writes what it queued at each pass.
    ///
    /// [`Peer::drive_from_event_loop`]: crate::Peer::drive_from_event_loop
    ///
    /// [`Peer::call_async`]: crate::Peer::call_async
    /// [`Peer::notify`]: crate::Peer::notify
    /// [`Error::LimitExceeded`]: crate::Error::LimitExceeded
    pub max_write_backlog: usize,
    /// Bytes of requests a connection (a server's, or a client's with
    /// handlers) holds while its handlers work on them (until answered, so
    /// a handler that keeps its responder holds its request), notifications
    /// waiting for or running on the worker pool included; each counts its
    /// size on the wire or decoded, whichever is larger. Above it the
    /// connection reads no more of the peer's messages until its handlers
    /// have finished down to half. One message may exceed it. While this
    /// side waits for a reply from the peer (a handler calling back, or a
    /// client's own call), up to four times it is allowed.
    ///
    /// A handler that waits for a later message from the same peer (an
    /// acknowledgment, a cancel, or the reply to a call it makes, when the
    /// peer sends more than four times this limit before it) waits in vain
    /// while reading is stopped, until its timeout: keep what such handlers
    /// hold well under this limit.
    pub max_request_backlog: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 64 * 1024 * 1024,
            max_decoded_size: 256 * 1024 * 1024,
            max_depth: 128,
            max_in_flight: 4096,
            max_connections: 4096,
            max_write_backlog: 8 * 1024 * 1024,
            max_request_backlog: 16 * 1024 * 1024,
        }
    }
}
