//! Result codes, their messages, and the per-thread last error.

use std::cell::RefCell;
use std::os::raw::c_char;

use foorpc::Error;

/// The outcome of a foorpc call. 0 is success; failures are grouped by
/// category in ranges of 1000 and their numbers never change:
/// 1xxx the caller used the API wrongly, 2xxx I/O and connections,
/// 3xxx protocol and limits, 4xxx the call's outcome (remote error, timeout),
/// 5xxx reading MessagePack with foorpc_reader, 9xxx internal errors.
/// A number that is retired stays listed here as a comment and is never
/// reused. (Retired: none yet.)
///
/// In C the type is a uint32_t: compare with the FOORPC_RESULT_* constants.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum foorpc_result {
    /// Success.
    Ok = 0,

    // 1xxx: usage
    /// A required pointer argument was NULL.
    NullParameter = 1000,
    /// An argument has an invalid value (for example a string that is not UTF-8).
    InvalidArgument = 1001,
    /// An address is not `tcp://HOST:PORT` or `unix:///PATH`.
    InvalidAddress = 1002,
    /// The object is not in a state that allows this (for example registering
    /// a handler on a server that already runs).
    InvalidState = 1003,
    /// Bytes given as MessagePack are not exactly one valid value (or the
    /// params of a call are not an array).
    InvalidMsgpack = 1004,
    /// The call is not allowed here (for example a blocking call on the I/O
    /// thread, or a connection used in a child process after fork()).
    Usage = 1005,
    /// A caller's buffer is too small for the output.
    BufferTooSmall = 1006,

    // 2xxx: I/O and connections
    /// An operating-system I/O error (connect, bind, read, write).
    Io = 2000,
    /// The connection closed or failed while the call was pending.
    ConnectionLost = 2001,
    /// The client or server was closed by its owner.
    Closed = 2002,

    // 3xxx: protocol and limits
    /// The peer sent bytes that are not valid MessagePack-RPC; the
    /// connection was closed.
    Protocol = 3000,
    /// A configured limit was exceeded: a message from the peer is over this
    /// side's size, decoded-size or depth limit (FOORPC_LIMIT_*), and the
    /// connection was closed; or, with the connection left open, one
    /// connection already has 16,777,216 of its own calls pending.
    LimitExceeded = 3001,
    /// A value could not be converted to or from MessagePack.
    Serialization = 3002,

    // 4xxx: the call's outcome
    /// The peer answered with an error; its error object is available (see
    /// foorpc_client_call).
    RemoteError = 4000,
    /// No reply (or no connection) within the timeout.
    Timeout = 4001,

    // 5xxx: foorpc_reader
    /// The next value has another type than the one asked for.
    TypeMismatch = 5000,
    /// No more values, or the input ends inside a value.
    EndOfData = 5001,
    /// The integer does not fit the requested C type.
    OutOfRange = 5002,
    /// The input is not valid MessagePack.
    MalformedData = 5003,

    // 9xxx: internal
    /// A bug in foorpc was caught at the C boundary (a Rust panic).
    Panic = 9000,
}

impl foorpc_result {
    #[cfg(test)]
    pub(crate) fn message(self) -> &'static str {
        self.message_nul().trim_end_matches('\0')
    }

    fn message_nul(self) -> &'static str {
        use foorpc_result::*;
        match self {
            Ok => "success\0",
            NullParameter => "a required pointer argument was NULL\0",
            InvalidArgument => "invalid argument\0",
            InvalidAddress => "invalid address: expected tcp://HOST:PORT or unix:///PATH\0",
            InvalidState => "the object is not in a state that allows this operation\0",
            InvalidMsgpack => "the bytes are not exactly one valid MessagePack value\0",
            Usage => "this operation is not allowed here\0",
            BufferTooSmall => "the output buffer is too small\0",
            Io => "I/O error\0",
            ConnectionLost => "the connection was lost\0",
            Closed => "closed\0",
            Protocol => "protocol error: the peer sent invalid MessagePack-RPC\0",
            LimitExceeded => "a configured limit was exceeded\0",
            Serialization => "a value could not be converted to or from MessagePack\0",
            RemoteError => "the peer answered with an error\0",
            Timeout => "timed out\0",
            TypeMismatch => "the MessagePack value has another type\0",
            EndOfData => "the MessagePack data ended\0",
            OutOfRange => "the number does not fit the requested type\0",
            MalformedData => "the MessagePack data is malformed\0",
            Panic => "internal error (a panic was caught at the C boundary)\0",
        }
    }

    fn from_u32(code: u32) -> Option<foorpc_result> {
        use foorpc_result::*;
        const ALL: [foorpc_result; 21] = [
            Ok,
            NullParameter,
            InvalidArgument,
            InvalidAddress,
            InvalidState,
            InvalidMsgpack,
            Usage,
            BufferTooSmall,
            Io,
            ConnectionLost,
            Closed,
            Protocol,
            LimitExceeded,
            Serialization,
            RemoteError,
            Timeout,
            TypeMismatch,
            EndOfData,
            OutOfRange,
            MalformedData,
            Panic,
        ];
        ALL.into_iter().find(|r| *r as u32 == code)
    }
}

/// The code for a core error.
pub(crate) fn code_of(e: &Error) -> foorpc_result {
    match e {
        Error::Io { .. } => foorpc_result::Io,
        Error::InvalidAddress(_) => foorpc_result::InvalidAddress,
        Error::Protocol(_) => foorpc_result::Protocol,
        Error::LimitExceeded(_) | Error::MessageLimitExceeded(_) => foorpc_result::LimitExceeded,
        Error::Remote(_) => foorpc_result::RemoteError,
        Error::Timeout => foorpc_result::Timeout,
        Error::ConnectionLost(_) => foorpc_result::ConnectionLost,
        Error::Closed => foorpc_result::Closed,
        Error::Serialization(_) => foorpc_result::Serialization,
        Error::Usage(_) => foorpc_result::Usage,
    }
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Sets the calling thread's last error message.
pub(crate) fn set_last_error(msg: impl Into<String>) {
    let msg = msg.into();
    let _ = LAST_ERROR.try_with(|m| *m.borrow_mut() = msg);
}

/// Records `msg` as the last error and returns `code`.
pub(crate) fn fail(code: foorpc_result, msg: impl Into<String>) -> foorpc_result {
    set_last_error(msg);
    code
}

/// Records a core error as the last error and returns its code.
pub(crate) fn fail_with(e: &Error) -> foorpc_result {
    fail(code_of(e), e.to_string())
}

pub(crate) fn null_parameter(name: &str) -> foorpc_result {
    fail(
        foorpc_result::NullParameter,
        format!("argument `{name}` is NULL"),
    )
}

/// A static, NUL-terminated English description of a result code (for any
/// number, also unknown ones). Never NULL; the caller must not free it.
/// Thread-safe: any thread may call it at any time.
#[no_mangle]
pub extern "C" fn foorpc_result_message(code: u32) -> *const c_char {
    ffi_panic_boundary! {
        match foorpc_result::from_u32(code) {
            Some(r) => r.message_nul().as_ptr().cast(),
            None => "unknown foorpc_result code\0".as_ptr().cast(),
        }
    }
}

/// True for codes that mean the connection can no longer be used
/// (FOORPC_RESULT_IO, _CONNECTION_LOST, _CLOSED, _PROTOCOL, _LIMIT_EXCEEDED):
/// reconnect to go on. FOORPC_RESULT_LIMIT_EXCEEDED is one except from a
/// call refused because 16,777,216 calls of its connection are pending
/// already (that connection stays open: foorpc_client_is_connected tells).
/// Thread-safe.
#[no_mangle]
pub extern "C" fn foorpc_result_is_connection_error(code: u32) -> bool {
    ffi_panic_boundary! {
        matches!(
            foorpc_result::from_u32(code),
            Some(
                foorpc_result::Io
                    | foorpc_result::ConnectionLost
                    | foorpc_result::Closed
                    | foorpc_result::Protocol
                    | foorpc_result::LimitExceeded
            )
        )
    }
}

/// Copies the detailed message of the most recent failure of a foorpc call on
/// the calling thread (calls that succeed leave it unchanged; inside a
/// callback it describes the outcome the callback was given) into `buf`, as a
/// NUL-terminated string, truncated to fit `len` bytes. `*out_n` receives the
/// number of bytes written, not counting the NUL. With no failure yet the
/// message is empty.
///
/// `buf` is owned by the caller; nothing is retained. `out_n` may be NULL.
/// Returns FOORPC_RESULT_NULL_PARAMETER when `buf` is NULL or `len` is 0, and
/// FOORPC_RESULT_BUFFER_TOO_SMALL (after writing the truncated message) when
/// the message did not fit. Any thread may call it; each thread has its own.
#[no_mangle]
pub extern "C" fn foorpc_last_error_message(
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> foorpc_result {
    ffi_panic_boundary! {
        if buf.is_null() || len == 0 {
            return foorpc_result::NullParameter;
        }
        let (n, fits) = LAST_ERROR
            .try_with(|m| {
                let m = m.borrow();
                let n = m.len().min(len - 1);
                // SAFETY: buf holds len > n bytes (the caller's contract).
                unsafe {
                    std::ptr::copy_nonoverlapping(m.as_ptr(), buf.cast::<u8>(), n);
                    *buf.add(n) = 0;
                }
                (n, n == m.len())
            })
            .unwrap_or((0, true));
        if !out_n.is_null() {
            // SAFETY: checked non-NULL; the caller's contract says it is writable.
            unsafe { *out_n = n };
        }
        if fits {
            foorpc_result::Ok
        } else {
            foorpc_result::BufferTooSmall
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_message_and_round_trips() {
        for code in 0..10_000u32 {
            if let Some(r) = foorpc_result::from_u32(code) {
                assert_eq!(r as u32, code);
                assert!(r.message_nul().ends_with('\0'));
                assert!(!r.message().is_empty());
            }
        }
    }
}
