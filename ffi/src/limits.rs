//! `FOORPC_LIMIT_*`: the limits a server or a client applies to what its
//! peers send (the core's `foorpc::Limits`), set with
//! foorpc_server_set_limit and foorpc_client_options_set_limit.

use foorpc::Limits;

use crate::error::{fail, foorpc_result};

/// Largest message accepted from a peer, in bytes as sent (default 64 MiB).
pub const FOORPC_LIMIT_MAX_MESSAGE_SIZE: u32 = 1;
/// Most memory one message may take once decoded: 40 bytes per array
/// element and per map key or value, plus the bytes of its strs, bins and
/// exts (default 256 MiB). Replies a C client receives as bytes count too.
pub const FOORPC_LIMIT_MAX_DECODED_SIZE: u32 = 2;
/// Deepest nesting of arrays and maps in a message, the message's own array
/// counting as 1 (default 128).
pub const FOORPC_LIMIT_MAX_DEPTH: u32 = 3;
/// Requests from one peer handled at once; more get an error reply
/// (default 4096).
pub const FOORPC_LIMIT_MAX_IN_FLIGHT: u32 = 4;
/// Connections a server holds at once; more are closed on accept
/// (default 4096).
pub const FOORPC_LIMIT_MAX_CONNECTIONS: u32 = 5;
/// Bytes of replies a server queues for a peer that does not read them
/// before it reads no more of that peer's requests (default 8 MiB). On a
/// server's or a client's connection alike, foorpc_*_call_async and
/// foorpc_*_notify fail with FOORPC_RESULT_LIMIT_EXCEEDED, sending nothing,
/// while more than this already waits unwritten for the peer to read it
/// (one message may exceed it).
pub const FOORPC_LIMIT_MAX_WRITE_BACKLOG: u32 = 6;
/// Bytes of a peer's requests (and POOL and ORDERED notifications) a server,
/// or a client with handlers, holds while handlers work on them before it
/// reads no more from that peer (default 16 MiB; up to four times that while
/// a call of this side waits for a reply from that peer). A handler that
/// waits for a later message of that peer (the reply to its own call, say)
/// waits until its timeout if the peer sends more than that before it.
pub const FOORPC_LIMIT_MAX_REQUEST_BACKLOG: u32 = 7;

/// Sets limit `which` of `limits` to `value` (at least 1; a value larger
/// than a `size_t` holds means the largest one, so UINT64_MAX is "no limit"
/// everywhere). Returns the C result (the last error set on failure).
pub(crate) fn set(limits: &mut Limits, which: u32, value: u64) -> foorpc_result {
    let value = usize::try_from(value).unwrap_or(usize::MAX);
    if value == 0 {
        return fail(foorpc_result::InvalidArgument, "a limit must be at least 1");
    }
    let field = match which {
        FOORPC_LIMIT_MAX_MESSAGE_SIZE => &mut limits.max_message_size,
        FOORPC_LIMIT_MAX_DECODED_SIZE => &mut limits.max_decoded_size,
        FOORPC_LIMIT_MAX_DEPTH => &mut limits.max_depth,
        FOORPC_LIMIT_MAX_IN_FLIGHT => &mut limits.max_in_flight,
        FOORPC_LIMIT_MAX_CONNECTIONS => &mut limits.max_connections,
        FOORPC_LIMIT_MAX_WRITE_BACKLOG => &mut limits.max_write_backlog,
        FOORPC_LIMIT_MAX_REQUEST_BACKLOG => &mut limits.max_request_backlog,
        other => {
            return fail(
                foorpc_result::InvalidArgument,
                format!("unknown limit {other} (expected a FOORPC_LIMIT_* constant)"),
            )
        }
    };
    *field = value;
    foorpc_result::Ok
}
