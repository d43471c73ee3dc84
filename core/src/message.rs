//! The three MessagePack-RPC message kinds.

use crate::Value;

/// One MessagePack-RPC message, as it travels on the wire.
///
/// `method` is text: a name sent as bin, or holding invalid UTF-8, is decoded
/// lossily (it can still be dispatched or reported, never crash the decoder).
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `[0, msgid, method, params]`
    Request {
        msgid: u32,
        method: String,
        params: Vec<Value>,
    },
    /// `[1, msgid, error, result]`; `error` is nil on success.
    Response {
        msgid: u32,
        error: Value,
        result: Value,
    },
    /// `[2, method, params]`
    Notification { method: String, params: Vec<Value> },
}

/// Wire tag of a request.
pub const TYPE_REQUEST: u8 = 0;
/// Wire tag of a response.
pub const TYPE_RESPONSE: u8 = 1;
/// Wire tag of a notification.
pub const TYPE_NOTIFICATION: u8 = 2;
