//! Limits that protect a process from its peers.
//!
//! The defaults are meant for a server on an open network: a hostile peer can
//! cost at most one message's worth of memory and its own connection.

/// Resource limits for a client or a server. Every field is configurable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest message accepted from a peer, in bytes (encoded size).
    pub max_message_size: usize,
    /// Deepest nesting of arrays and maps accepted inside one message.
    pub max_depth: usize,
    /// Requests from one peer being handled at once; more get an error reply.
    pub max_in_flight: usize,
    /// Connections a server holds at once; more are closed on accept.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 64 * 1024 * 1024,
            max_depth: 128,
            max_in_flight: 4096,
            max_connections: 4096,
        }
    }
}
