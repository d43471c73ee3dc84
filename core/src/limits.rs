//! Limits that protect a process from its peers.
//!
//! The defaults are meant for a server on an open network: a hostile peer can
//! cost about one message's worth of memory (`max_message_size` as it
//! arrives, at most `max_decoded_size` once decoded), plus the replies it
//! leaves unread (up to `max_write_backlog`) and the requests it has
//! handlers work on (up to `max_request_backlog`), and its own connection.

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
    /// Checked from headers alone, before anything is allocated.
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
    pub max_write_backlog: usize,
    /// Bytes (as received) of requests a server holds for one peer while
    /// its handlers work on them, notifications waiting for or running on
    /// the worker pool included. Above it the server reads no more of that
    /// peer's messages until its handlers have finished down to half. One
    /// message may exceed it. Not applied while the server waits for a
    /// reply from that peer, so that a handler calling back gets its answer.
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
