//! The one error type of the runtime.
//!
//! Every failure a caller can see is an [`Error`]. It is `Clone` because one
//! connection failure is delivered to every call that was waiting on it.

use std::fmt;
use std::io;

use crate::Value;

/// Neovim's error code for "an exception was raised while handling the call".
pub const ERROR_CODE_EXCEPTION: i64 = 0;
/// Neovim's error code for "the call itself was not valid" (unknown method, bad arguments).
pub const ERROR_CODE_VALIDATION: i64 = 1;

/// What went wrong with a call, a connection or a server.
#[derive(Debug, Clone)]
pub enum Error {
    /// An operating-system I/O error (connect, bind, read, write).
    Io {
        kind: io::ErrorKind,
        message: String,
    },
    /// An address that is not `tcp://host:port` or `unix:///path`.
    InvalidAddress(String),
    /// The peer sent bytes that are not valid MessagePack-RPC; the
    /// connection is closed (so this is a connection error too).
    Protocol(String),
    /// A configured limit (message size, depth, calls in flight, connections)
    /// was exceeded by something this side was asked to do; the connection
    /// stays usable.
    LimitExceeded(String),
    /// A message from the peer is over one of this side's own limits
    /// ([`Limits::max_message_size`], [`Limits::max_decoded_size`] or
    /// [`Limits::max_depth`]); the connection is closed (so this is a
    /// connection error too). The message may be valid MessagePack-RPC: the
    /// limit is this side's.
    ///
    /// [`Limits::max_message_size`]: crate::Limits::max_message_size
    /// [`Limits::max_decoded_size`]: crate::Limits::max_decoded_size
    /// [`Limits::max_depth`]: crate::Limits::max_depth
    MessageLimitExceeded(String),
    /// The peer answered with an error; the value is its error object, unchanged.
    Remote(Value),
    /// No reply arrived within the call's timeout.
    Timeout,
    /// The connection closed or failed while the call was pending (or before it was sent).
    ConnectionLost(String),
    /// The client or server was closed by its owner.
    Closed,
    /// Typed arguments or results could not be converted to or from MessagePack.
    Serialization(String),
    /// The operation is not allowed here (for example a blocking call from the I/O thread).
    Usage(String),
}

/// The crate's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Builds the `[code, message]` error object foorpc sends on the wire.
    pub fn error_object(code: i64, message: impl Into<String>) -> Value {
        Value::Array(vec![Value::from(code), Value::from(message.into())])
    }

    /// The error object to put in a reply for this error when a handler fails with it.
    pub fn to_error_object(&self) -> Value {
        match self {
            Error::Remote(v) => v.clone(),
            other => Error::error_object(ERROR_CODE_EXCEPTION, other.to_string()),
        }
    }

    /// For a remote error of the `[code, message]` shape, its code and message.
    pub fn remote_code_message(&self) -> Option<(i64, String)> {
        let Error::Remote(Value::Array(items)) = self else {
            return None;
        };
        match items.as_slice() {
            [code, msg] => Some((code.as_i64()?, msg.as_str()?.to_owned())),
            _ => None,
        }
    }

    /// True for errors after which the connection can no longer be used.
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Error::ConnectionLost(_)
                | Error::Closed
                | Error::Io { .. }
                | Error::Protocol(_)
                | Error::MessageLimitExceeded(_)
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { message, .. } => write!(f, "I/O error: {message}"),
            Error::InvalidAddress(a) => write!(
                f,
                "invalid address {a:?}: expected tcp://HOST:PORT or unix:///PATH"
            ),
            Error::Protocol(m) => write!(f, "protocol error: {m}"),
            Error::LimitExceeded(m) => write!(f, "limit exceeded: {m}"),
            Error::MessageLimitExceeded(m) => {
                write!(f, "limit exceeded, connection closed: {m}")
            }
            Error::Remote(v) => match self.remote_code_message() {
                Some((code, msg)) => write!(f, "remote error {code}: {msg}"),
                None => write!(f, "remote error: {v}"),
            },
            Error::Timeout => write!(f, "call timed out"),
            Error::ConnectionLost(m) => write!(f, "connection lost: {m}"),
            Error::Closed => write!(f, "closed"),
            Error::Serialization(m) => write!(f, "serialization error: {m}"),
            Error::Usage(m) => write!(f, "invalid use: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::TimedOut => Error::Timeout,
            kind => Error::Io {
                kind,
                message: e.to_string(),
            },
        }
    }
}
