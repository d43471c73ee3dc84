//! MessagePack-RPC codec: encode one message, decode a stream incrementally.
//!
//! Messages are concatenated on the stream with no length prefix, so the
//! decoder works in two phases (the mini-redis `check` then `parse` shape):
//!
//! 1. a structural scan finds where the first complete MessagePack object
//!    ends, without allocating, and enforces [`Limits`] from headers alone
//!    (a peer cannot make us wait for, or buffer, 4 GiB it merely announced);
//! 2. only a complete object is turned into [`Value`]s and checked to be a
//!    request, response or notification.
//!
//! The scan state survives between calls, so a large message arriving in many
//! pieces is scanned once in total, not once per piece.
//!
//! Depth counts the message array itself as level 1: with `max_depth = 128`,
//! the params array is level 2 and may hold 126 more levels of nesting.
//!
//! Encoding always uses the smallest MessagePack form of each value, so equal
//! messages have equal bytes (the shared test vectors rely on it).

use std::fmt;

use rmpv::Utf8String;

use crate::limits::Limits;
use crate::message::{Message, TYPE_NOTIFICATION, TYPE_REQUEST, TYPE_RESPONSE};
use crate::Value;

/// What one array element or map key or value costs once decoded, as
/// [`Limits::max_decoded_size`] counts it: the size of a [`Value`].
pub const DECODED_VALUE_SIZE: usize = std::mem::size_of::<Value>();

/// The most a message taken by one of the one-pass paths (`scalar_request`,
/// `scalar_response`, `scalars_only`) can cost decoded: four envelope
/// elements, a method name of up to 255 bytes and 15 scalar params. Below
/// this `max_decoded_size`, everything goes through the scan, which counts.
const ONE_PASS_DECODED_MAX: usize = 19 * DECODED_VALUE_SIZE + 255;

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// Appends the encoding of one message to `out`.
pub fn encode(msg: &Message, out: &mut Vec<u8>) {
    match msg {
        Message::Request {
            msgid,
            method,
            params,
        } => encode_request(out, *msgid, method, params),
        Message::Response {
            msgid,
            error,
            result,
        } => encode_response(out, *msgid, error, result),
        Message::Notification { method, params } => encode_notification(out, method, params),
    }
}

/// The params of a request or notification: values to encode, or a
/// MessagePack array the caller has already encoded (checked with
/// [`check_encoded`]), which is copied as is. The C and Python front ends
/// encode straight from their own objects and skip building `Value`s.
#[derive(Debug, Clone, Copy)]
pub enum Params<'a> {
    Values(&'a [Value]),
    Encoded(&'a [u8]),
}

impl Params<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Params::Values(values) => write_params(out, values),
            Params::Encoded(bytes) => out.extend_from_slice(bytes),
        }
    }
}

/// Checks that `bytes` is exactly one complete MessagePack value within
/// `limits` (and an array when `array` is set), so that it can be put on
/// the wire as is. Depth counts as the receiver will count it: inside the
/// message's own array.
pub fn check_encoded(bytes: &[u8], limits: &Limits, array: bool) -> Result<(), DecodeError> {
    let invalid = |reason: &str| DecodeError::Invalid {
        msgid: None,
        reason: reason.to_owned(),
    };
    if array && !matches!(bytes.first(), Some(0x90..=0x9f | 0xdc | 0xdd)) {
        return Err(invalid("params must be one MessagePack array"));
    }
    if scalars_only(bytes, limits) {
        return Ok(());
    }
    check_scanned(bytes, limits)
}

/// `check_encoded`'s full scan.
fn check_scanned(bytes: &[u8], limits: &Limits) -> Result<(), DecodeError> {
    let invalid = |reason: &str| DecodeError::Invalid {
        msgid: None,
        reason: reason.to_owned(),
    };
    thread_local! {
        /// One scanner per thread, so that a check does not allocate.
        static SCANNER: std::cell::RefCell<Decoder> =
            std::cell::RefCell::new(Decoder::new(&Limits::default()));
    }
    let scanned = SCANNER.with(|scanner| {
        let mut scanner = scanner.borrow_mut();
        scanner.reset();
        scanner.max_size = limits.max_message_size;
        scanner.max_decoded = limits.max_decoded_size;
        // The value travels inside the message array: one level less is left.
        scanner.max_depth = limits.max_depth.saturating_sub(1);
        scanner.scan(bytes)
    });
    // Report the configured depth limit, counting the message array, as
    // the decoder of the other side will.
    let scanned = scanned.map_err(|e| match e {
        DecodeError::TooDeep { .. } => DecodeError::TooDeep {
            limit: limits.max_depth,
        },
        other => other,
    })?;
    match scanned {
        Some(n) if n == bytes.len() => Ok(()),
        Some(_) => Err(invalid("bytes follow the MessagePack value")),
        None => Err(invalid("the MessagePack value is incomplete")),
    }
}

/// True when `bytes` is one scalar, or a fixarray of scalars, exactly and
/// within `limits`: the common small params and results, checked in one pass.
/// False sends everything else through the full scan, which also gives the
/// reason when the bytes are not valid.
fn scalars_only(bytes: &[u8], limits: &Limits) -> bool {
    let Some(&first) = bytes.first() else {
        return false;
    };
    if bytes.len() > limits.max_message_size || limits.max_decoded_size < ONE_PASS_DECODED_MAX {
        return false;
    }
    let (count, mut pos) = match first {
        // The array is one level inside the message array.
        0x90..=0x9f if limits.max_depth >= 2 => (usize::from(first & 0x0f), 1),
        _ => (1, 0),
    };
    for _ in 0..count {
        match flat_item_len(bytes, pos) {
            Some(n) => pos += n,
            None => return false,
        }
    }
    pos == bytes.len()
}

/// The size of the scalar (nil, bool, int, float) at `buf[pos]` when it is
/// whole in `buf`; `None` for anything else. The scan sizes these items
/// from the same table ([`scalar_len`]).
fn flat_item_len(buf: &[u8], pos: usize) -> Option<usize> {
    let n = scalar_len(*buf.get(pos)?)?;
    (pos + n <= buf.len()).then_some(n)
}

/// The size of a nil, bool, int or float item (header and value) from its
/// first byte; `None` for every other kind.
#[inline]
fn scalar_len(first: u8) -> Option<usize> {
    match first {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Some(1),
        0xcc | 0xd0 => Some(2),
        0xcd | 0xd1 => Some(3),
        0xce | 0xd2 | 0xca => Some(5),
        0xcf | 0xd3 | 0xcb => Some(9),
        _ => None,
    }
}

/// Appends `[0, msgid, method, params]` with params given either way.
pub fn encode_request_params(out: &mut Vec<u8>, msgid: u32, method: &str, params: Params<'_>) {
    encode_request_head(out, msgid, method);
    params.write(out);
}

/// Appends the start of a request, `[0, msgid, method,`: the params follow.
pub fn encode_request_head(out: &mut Vec<u8>, msgid: u32, method: &str) {
    out.extend_from_slice(&[0x94, TYPE_REQUEST]);
    write_uint(out, u64::from(msgid));
    write_str(out, method.as_bytes());
}

/// Appends `[2, method, params]` with params given either way.
pub fn encode_notification_params(out: &mut Vec<u8>, method: &str, params: Params<'_>) {
    out.extend_from_slice(&[0x93, TYPE_NOTIFICATION]);
    write_str(out, method.as_bytes());
    params.write(out);
}

/// Appends `[1, msgid, nil, <bin header of len bytes>]`: a success reply
/// whose binary result (`len` bytes) the caller sends right after.
pub fn encode_response_bin_head(out: &mut Vec<u8>, msgid: u32, len: usize) {
    out.extend_from_slice(&[0x94, TYPE_RESPONSE]);
    write_uint(out, u64::from(msgid));
    out.push(0xc0);
    rmp::encode::write_bin_len(out, len as u32).expect("writing to a Vec cannot fail");
}

/// Appends `[1, msgid, error, result]` where `error` and `result` are
/// already encoded values (checked with [`check_encoded`]).
pub fn encode_response_encoded(out: &mut Vec<u8>, msgid: u32, error: &[u8], result: &[u8]) {
    out.extend_from_slice(&[0x94, TYPE_RESPONSE]);
    write_uint(out, u64::from(msgid));
    out.extend_from_slice(error);
    out.extend_from_slice(result);
}

/// Appends `[0, msgid, method, params]`, writing straight into `out` (no
/// intermediate `Value` for the envelope).
pub fn encode_request(out: &mut Vec<u8>, msgid: u32, method: &str, params: &[Value]) {
    out.extend_from_slice(&[0x94, TYPE_REQUEST]);
    write_uint(out, u64::from(msgid));
    write_str(out, method.as_bytes());
    write_params(out, params);
}

/// Appends `[1, msgid, error, result]`.
pub fn encode_response(out: &mut Vec<u8>, msgid: u32, error: &Value, result: &Value) {
    out.extend_from_slice(&[0x94, TYPE_RESPONSE]);
    write_uint(out, u64::from(msgid));
    encode_value(out, error);
    encode_value(out, result);
}

/// Appends `[2, method, params]`.
pub fn encode_notification(out: &mut Vec<u8>, method: &str, params: &[Value]) {
    out.extend_from_slice(&[0x93, TYPE_NOTIFICATION]);
    write_str(out, method.as_bytes());
    write_params(out, params);
}

/// Appends one value's MessagePack encoding, in its smallest form.
///
/// # Panics
///
/// If a str, bin, ext, array or map holds more than `u32::MAX` bytes or
/// elements, which MessagePack cannot express.
pub fn encode_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Nil => out.push(0xc0),
        Value::Boolean(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Integer(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => write_uint(out, u),
            (None, Some(i)) => write_int(out, i),
            (None, None) => unreachable!("rmpv integers are u64 or i64"),
        },
        Value::F32(f) => {
            out.push(0xca);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::F64(f) => {
            out.push(0xcb);
            out.extend_from_slice(&f.to_be_bytes());
        }
        // as_bytes keeps invalid UTF-8 exactly as it arrived.
        Value::String(s) => write_str(out, s.as_bytes()),
        Value::Binary(b) => {
            write_len(out, b.len(), [0xc4, 0xc5, 0xc6]);
            out.extend_from_slice(b);
        }
        Value::Array(items) => {
            write_array_len(out, items.len());
            for item in items {
                encode_value(out, item);
            }
        }
        Value::Map(entries) => {
            let n = entries.len();
            if n < 16 {
                out.push(0x80 | n as u8);
            } else {
                write_len16_32(out, n, 0xde, 0xdf);
            }
            for (k, val) in entries {
                encode_value(out, k);
                encode_value(out, val);
            }
        }
        Value::Ext(ty, data) => {
            let fixed = match data.len() {
                1 => Some(0xd4),
                2 => Some(0xd5),
                4 => Some(0xd6),
                8 => Some(0xd7),
                16 => Some(0xd8),
                _ => None,
            };
            match fixed {
                Some(marker) => out.push(marker),
                None => write_len(out, data.len(), [0xc7, 0xc8, 0xc9]),
            }
            out.push(*ty as u8);
            out.extend_from_slice(data);
        }
    }
}

fn write_params(out: &mut Vec<u8>, params: &[Value]) {
    write_array_len(out, params.len());
    for p in params {
        encode_value(out, p);
    }
}

/// Appends an unsigned integer in its smallest form (for front ends that
/// encode their own objects; `encode_value` uses the same writers).
pub fn write_uint(out: &mut Vec<u8>, u: u64) {
    if u < 128 {
        out.push(u as u8);
    } else if u <= u64::from(u8::MAX) {
        out.extend_from_slice(&[0xcc, u as u8]);
    } else if u <= u64::from(u16::MAX) {
        out.push(0xcd);
        out.extend_from_slice(&(u as u16).to_be_bytes());
    } else if u <= u64::from(u32::MAX) {
        out.push(0xce);
        out.extend_from_slice(&(u as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&u.to_be_bytes());
    }
}

/// Appends a signed integer in its smallest form: non-negative ones as
/// unsigned (`write_uint`), as rmp and every other msgpack library do.
pub fn write_int(out: &mut Vec<u8>, i: i64) {
    if i >= 0 {
        write_uint(out, i as u64);
    } else if i >= -32 {
        out.push(i as u8);
    } else if i >= i64::from(i8::MIN) {
        out.extend_from_slice(&[0xd0, i as u8]);
    } else if i >= i64::from(i16::MIN) {
        out.push(0xd1);
        out.extend_from_slice(&(i as i16).to_be_bytes());
    } else if i >= i64::from(i32::MIN) {
        out.push(0xd2);
        out.extend_from_slice(&(i as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&i.to_be_bytes());
    }
}

fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    if s.len() < 32 {
        out.push(0xa0 | s.len() as u8);
    } else {
        write_len(out, s.len(), [0xd9, 0xda, 0xdb]);
    }
    out.extend_from_slice(s);
}

fn write_array_len(out: &mut Vec<u8>, n: usize) {
    if n < 16 {
        out.push(0x90 | n as u8);
    } else {
        write_len16_32(out, n, 0xdc, 0xdd);
    }
}

/// Length header with 8-, 16- and 32-bit forms (bin, str8+, ext).
fn write_len(out: &mut Vec<u8>, n: usize, markers: [u8; 3]) {
    if n <= usize::from(u8::MAX) {
        out.extend_from_slice(&[markers[0], n as u8]);
    } else {
        write_len16_32(out, n, markers[1], markers[2]);
    }
}

fn write_len16_32(out: &mut Vec<u8>, n: usize, m16: u8, m32: u8) {
    if n <= usize::from(u16::MAX) {
        out.push(m16);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        let n = u32::try_from(n).expect("MessagePack lengths are at most u32::MAX");
        out.push(m32);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// Why a byte stream could not be decoded. After any of these the stream is
/// out of sync, so the connection must be closed.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodeError {
    /// The message (or a str/bin/ext/array/map inside it) declares more bytes
    /// than `max_message_size` allows. Detected as soon as the header is seen,
    /// without waiting for the data.
    TooLarge { limit: usize },
    /// Arrays/maps nested deeper than `max_depth` (the message array is level 1).
    TooDeep { limit: usize },
    /// The message would take more than `max_decoded_size` bytes once
    /// decoded (see [`Limits::max_decoded_size`]). Detected from headers.
    TooLargeDecoded { limit: usize },
    /// Bytes that are not MessagePack at all (the reserved byte 0xc1).
    Malformed(String),
    /// Well-formed MessagePack that is not a MessagePack-RPC message. `msgid`
    /// is set when the message is a request whose msgid could be read, so the
    /// caller can answer an error to it before closing.
    Invalid { msgid: Option<u32>, reason: String },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge { limit } => {
                write!(f, "message exceeds the {limit}-byte limit")
            }
            DecodeError::TooDeep { limit } => write!(
                f,
                "message nests arrays/maps deeper than the {limit}-level limit"
            ),
            DecodeError::TooLargeDecoded { limit } => write!(
                f,
                "message would take more than the {limit}-byte limit once decoded \
                 (each array element and map key or value counts {DECODED_VALUE_SIZE} bytes)"
            ),
            DecodeError::Malformed(m) => write!(f, "malformed MessagePack: {m}"),
            DecodeError::Invalid {
                msgid: Some(id),
                reason,
            } => write!(f, "invalid MessagePack-RPC request {id}: {reason}"),
            DecodeError::Invalid {
                msgid: None,
                reason,
            } => write!(f, "invalid MessagePack-RPC message: {reason}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Incremental decoder of a MessagePack-RPC byte stream (no length prefix:
/// messages are concatenated).
///
/// It keeps where its scan of the pending message stopped, so the caller must
/// pass the same pending bytes again (plus whatever arrived) on every call
/// until a message is returned.
#[derive(Debug)]
pub struct Decoder {
    max_size: usize,
    max_depth: usize,
    max_decoded: usize,
    /// What the items committed so far will cost decoded (see
    /// [`Limits::max_decoded_size`]).
    decoded: usize,
    /// What the last message returned costs decoded, counted the same way.
    last_decoded: usize,
    /// Offset of the next item header the scan has not read yet (may be past
    /// the buffer when a str/bin body is still missing).
    pos: usize,
    /// Items still to be read: the message itself, then container elements.
    /// Each takes at least one byte, so `pos + owed` bounds the message size.
    owed: usize,
    /// Elements left in each open array/map (maps count keys and values);
    /// kept (and its capacity reused) so the scan does not allocate.
    open: Vec<usize>,
    /// The pending message cannot be complete below this many bytes; calls
    /// with a shorter buffer return at once.
    need: usize,
}

/// What one item header says.
struct Item {
    /// Bytes of the header, including fixed-width scalar payloads.
    head: usize,
    /// Bytes of str/bin/ext data after the header.
    data: usize,
    /// Element count for arrays and maps (keys + values); `None` for scalars.
    children: Option<usize>,
}

enum Head {
    Item(Item),
    /// The header itself needs this many bytes and fewer are there.
    Short(usize),
}

impl Decoder {
    /// A decoder enforcing `limits.max_message_size`, `max_decoded_size` and
    /// `max_depth`.
    pub fn new(limits: &Limits) -> Decoder {
        Decoder {
            max_size: limits.max_message_size,
            max_depth: limits.max_depth,
            max_decoded: limits.max_decoded_size,
            decoded: 0,
            last_decoded: 0,
            pos: 0,
            owed: 1,
            open: Vec::with_capacity(limits.max_depth.min(16)),
            need: 1,
        }
    }

    /// How many bytes the buffer must hold before `decode` can make
    /// progress (a lower bound on the pending message's size); lets a reader
    /// size its buffer once for a large message.
    pub fn bytes_needed(&self) -> usize {
        self.need
    }

    /// What the message the last successful decode returned costs decoded,
    /// as [`Limits::max_decoded_size`] counts it.
    pub(crate) fn last_decoded_size(&self) -> usize {
        self.last_decoded
    }

    /// Tries to decode one message from the start of `buf`.
    ///
    /// `Ok(Some((msg, n)))`: the first `n` bytes were one complete message.
    /// `Ok(None)`: `buf` holds only part of a message; append more bytes and
    /// call again with the whole buffer from the same start. A partial
    /// message is never consumed. After an `Err` the stream is unusable.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
        self.decode_with(buf, &|_| false)
    }

    /// [`Decoder::decode`], except that the result of a response whose msgid
    /// `raw_result` picks is not decoded: it comes as `Value::Binary` holding
    /// its MessagePack bytes (for callers that want the bytes, not a `Value`).
    pub(crate) fn decode_with(
        &mut self,
        buf: &[u8],
        raw_result: &dyn Fn(u32) -> bool,
    ) -> Result<Option<(Message, usize)>, DecodeError> {
        if buf.len() < self.need {
            return Ok(None);
        }
        // The message's own array is one level deep: with no depth allowed
        // at all, only the full scan gives the right error (a request's
        // params are the second level; scalar_request checks that itself).
        if self.pos == 0 && self.max_depth >= 1 && self.max_decoded >= ONE_PASS_DECODED_MAX {
            let done = scalar_response(buf, self.max_size, raw_result)
                .or_else(|| scalar_request(buf, self.max_size, self.max_depth));
            if let Some(done) = done {
                self.reset();
                // What the scan would have counted for these shapes: the
                // envelope's four elements, the method name, scalar params.
                self.last_decoded = 4 * DECODED_VALUE_SIZE
                    + match &done.0 {
                        Message::Request { method, params, .. } => {
                            method.len() + params.len() * DECODED_VALUE_SIZE
                        }
                        _ => 0,
                    };
                return Ok(Some(done));
            }
        }
        self.decode_scanned(buf, raw_result)
    }

    /// `decode_with` without the one-pass paths for scalar replies and
    /// requests. Only call it past `decode_with`'s `need` check: a buffer
    /// shorter than `need` may end inside an item the scan has committed.
    fn decode_scanned(
        &mut self,
        buf: &[u8],
        raw_result: &dyn Fn(u32) -> bool,
    ) -> Result<Option<(Message, usize)>, DecodeError> {
        let Some(end) = self.scan(buf)? else {
            return Ok(None);
        };
        let decoded = self.decoded;
        self.reset();
        self.last_decoded = decoded;
        let msg = parse_message(&buf[..end], raw_result)?;
        Ok(Some((msg, end)))
    }

    fn reset(&mut self) {
        self.pos = 0;
        self.owed = 1;
        self.decoded = 0;
        self.open.clear();
        self.need = 1;
    }

    /// Advances the structural scan as far as `buf` allows. Returns the end of
    /// the first complete object, or `None` (with `need` set) if incomplete.
    fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        loop {
            while self.open.last() == Some(&0) {
                self.open.pop();
            }
            if self.owed == 0 {
                return Ok(Some(self.pos));
            }
            let item = match head(buf, self.pos)? {
                Head::Item(item) => item,
                Head::Short(head_len) => {
                    // Read the header again as soon as it is whole: only then
                    // can its declared size be checked against the limits, as
                    // a scan of the whole buffer at once would check it.
                    self.need = self.pos + head_len;
                    return Ok(None);
                }
            };
            let children = item.children.unwrap_or(0);
            let min_total = (self.pos as u64)
                .saturating_add(item.head as u64)
                .saturating_add(item.data as u64)
                .saturating_add(children as u64)
                .saturating_add(self.owed as u64 - 1);
            if min_total > self.max_size as u64 {
                return Err(DecodeError::TooLarge {
                    limit: self.max_size,
                });
            }
            if item.children.is_some() && self.open.len() + 1 > self.max_depth {
                return Err(DecodeError::TooDeep {
                    limit: self.max_depth,
                });
            }
            let decoded = self
                .decoded
                .saturating_add(item.data)
                .saturating_add(children.saturating_mul(DECODED_VALUE_SIZE));
            if decoded > self.max_decoded {
                return Err(DecodeError::TooLargeDecoded {
                    limit: self.max_decoded,
                });
            }
            self.decoded = decoded;
            // Commit the item; its data may still be missing (pos > len).
            if let Some(top) = self.open.last_mut() {
                *top -= 1;
            }
            self.pos += item.head + item.data;
            self.owed = self.owed - 1 + children;
            if children > 0 {
                self.open.push(children);
            }
            if self.pos + self.owed > buf.len() {
                self.need = self.pos + self.owed;
                return Ok(None);
            }
        }
    }
}

/// Reads the header of the item at `buf[pos]` without reading its data.
#[inline]
fn head(buf: &[u8], pos: usize) -> Result<Head, DecodeError> {
    let Some(&b) = buf.get(pos) else {
        return Ok(Head::Short(1));
    };
    // Fixed-size forms: (header length incl. payload, data, children).
    let (head, data, children) = if let Some(n) = scalar_len(b) {
        (n, 0, None)
    } else {
        match b {
            0x80..=0x8f => (1, 0, Some(2 * usize::from(b & 0x0f))),
            0x90..=0x9f => (1, 0, Some(usize::from(b & 0x0f))),
            0xa0..=0xbf => (1, usize::from(b & 0x1f), None),
            0xc1 => {
                return Err(DecodeError::Malformed(format!(
                    "reserved byte 0xc1 at offset {pos}"
                )))
            }
            // fixext: marker, type, 1..16 data bytes.
            0xd4..=0xd8 => (2, 1usize << (b - 0xd4), None),
            // Variable lengths: read the big-endian length that follows.
            _ => {
                let (len_bytes, extra) = match b {
                    0xc4 | 0xd9 => (1, 0),
                    0xc5 | 0xda | 0xdc | 0xde => (2, 0),
                    0xc6 | 0xdb | 0xdd | 0xdf => (4, 0),
                    0xc7 => (1, 1), // ext: a type byte follows the length
                    0xc8 => (2, 1),
                    0xc9 => (4, 1),
                    _ => unreachable!("every other byte is matched above"),
                };
                let head = 1 + len_bytes + extra;
                let Some(len_slice) = buf.get(pos + 1..pos + 1 + len_bytes) else {
                    // The length is what is needed to judge the item; an
                    // ext's type byte after it is not.
                    return Ok(Head::Short(1 + len_bytes));
                };
                let n = len_slice
                    .iter()
                    .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
                return Ok(Head::Item(match b {
                    0xdc | 0xdd => Item {
                        head,
                        data: 0,
                        children: Some(n),
                    },
                    0xde | 0xdf => Item {
                        head,
                        data: 0,
                        children: Some(n.saturating_mul(2)),
                    },
                    _ => Item {
                        head,
                        data: n,
                        children: None,
                    },
                }));
            }
        }
    };
    if buf.len() - pos < head {
        return Ok(Head::Short(head));
    }
    Ok(Head::Item(Item {
        head,
        data,
        children,
    }))
}

/// Builds values from a slice the scan has found complete. Every read is
/// still bounds-checked, so a caller that broke the "same buffer" contract
/// gets an error, not a panic.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn inconsistent() -> DecodeError {
    DecodeError::Malformed("buffer changed between decode calls".to_owned())
}

impl<'a> Reader<'a> {
    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let s = self
            .buf
            .get(self.pos..self.pos + n)
            .ok_or_else(inconsistent)?;
        self.pos += n;
        Ok(s)
    }

    #[inline]
    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    #[inline]
    fn be<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn len(&mut self, bytes: usize) -> Result<usize, DecodeError> {
        Ok(match bytes {
            1 => usize::from(self.byte()?),
            2 => usize::from(u16::from_be_bytes(self.be()?)),
            _ => u32::from_be_bytes(self.be()?) as usize,
        })
    }

    /// The element count if the next item is an array, without consuming
    /// anything otherwise.
    fn array_len(&mut self) -> Result<Option<usize>, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or_else(inconsistent)?;
        let n = match b {
            0x90..=0x9f => {
                self.pos += 1;
                usize::from(b & 0x0f)
            }
            0xdc => {
                self.pos += 1;
                self.len(2)?
            }
            0xdd => {
                self.pos += 1;
                self.len(4)?
            }
            _ => return Ok(None),
        };
        Ok(Some(n))
    }

    /// A method name: str or bin, decoded lossily; `None` for other types.
    fn method(&mut self) -> Result<Option<String>, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or_else(inconsistent)?;
        let len = match b {
            0xa0..=0xbf => {
                self.pos += 1;
                usize::from(b & 0x1f)
            }
            0xc4 | 0xd9 => {
                self.pos += 1;
                self.len(1)?
            }
            0xc5 | 0xda => {
                self.pos += 1;
                self.len(2)?
            }
            0xc6 | 0xdb => {
                self.pos += 1;
                self.len(4)?
            }
            _ => return Ok(None),
        };
        let bytes = self.take(len)?;
        Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
    }

    fn value(&mut self) -> Result<Value, DecodeError> {
        let start = self.pos;
        let b = self.byte()?;
        Ok(match b {
            0x00..=0x7f => Value::from(b),
            0x80..=0x8f => self.map(usize::from(b & 0x0f))?,
            0x90..=0x9f => self.array(usize::from(b & 0x0f))?,
            0xa0..=0xbf => self.string(start, usize::from(b & 0x1f))?,
            0xc0 => Value::Nil,
            0xc1 => return Err(DecodeError::Malformed("reserved byte 0xc1".to_owned())),
            0xc2 => Value::Boolean(false),
            0xc3 => Value::Boolean(true),
            0xc4..=0xc6 => {
                let n = self.len(1 << (b - 0xc4))?;
                Value::Binary(self.take(n)?.to_vec())
            }
            0xc7..=0xc9 => {
                let n = self.len(1 << (b - 0xc7))?;
                self.ext(n)?
            }
            0xca => Value::F32(f32::from_be_bytes(self.be()?)),
            0xcb => Value::F64(f64::from_be_bytes(self.be()?)),
            0xcc => Value::from(self.byte()?),
            0xcd => Value::from(u16::from_be_bytes(self.be()?)),
            0xce => Value::from(u32::from_be_bytes(self.be()?)),
            0xcf => Value::from(u64::from_be_bytes(self.be()?)),
            0xd0 => Value::from(i8::from_be_bytes(self.be()?)),
            0xd1 => Value::from(i16::from_be_bytes(self.be()?)),
            0xd2 => Value::from(i32::from_be_bytes(self.be()?)),
            0xd3 => Value::from(i64::from_be_bytes(self.be()?)),
            0xd4..=0xd8 => self.ext(1 << (b - 0xd4))?,
            0xd9..=0xdb => {
                let n = self.len(1 << (b - 0xd9))?;
                self.string(start, n)?
            }
            0xdc | 0xdd => {
                let n = self.len(if b == 0xdc { 2 } else { 4 })?;
                self.array(n)?
            }
            0xde | 0xdf => {
                let n = self.len(if b == 0xde { 2 } else { 4 })?;
                self.map(n)?
            }
            0xe0..=0xff => Value::from(b as i8),
        })
    }

    fn string(&mut self, start: usize, n: usize) -> Result<Value, DecodeError> {
        let bytes = self.take(n)?;
        Ok(Value::String(match std::str::from_utf8(bytes) {
            Ok(s) => Utf8String::from(s),
            // rmpv offers no public constructor for invalid UTF-8, but its own
            // decoder builds one that keeps the raw bytes; use it (rare path).
            Err(_) => {
                let mut item = &self.buf[start..self.pos];
                match rmpv::decode::read_value(&mut item) {
                    Ok(Value::String(s)) => s,
                    _ => return Err(inconsistent()),
                }
            }
        }))
    }

    fn ext(&mut self, n: usize) -> Result<Value, DecodeError> {
        let ty = self.byte()? as i8;
        Ok(Value::Ext(ty, self.take(n)?.to_vec()))
    }

    fn array(&mut self, n: usize) -> Result<Value, DecodeError> {
        // n is bounded by the scan (each element took at least one byte).
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value()?);
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, n: usize) -> Result<Value, DecodeError> {
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.value()?;
            let v = self.value()?;
            entries.push((k, v));
        }
        Ok(Value::Map(entries))
    }
}

fn invalid(msgid: Option<u32>, reason: impl Into<String>) -> DecodeError {
    DecodeError::Invalid {
        msgid,
        reason: reason.into(),
    }
}

/// A short name of a value's type, for error messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Boolean(_) => "a boolean",
        Value::Integer(_) => "an integer",
        Value::F32(_) | Value::F64(_) => "a float",
        Value::String(_) => "a str",
        Value::Binary(_) => "a bin",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        Value::Ext(..) => "an ext",
    }
}

fn msgid_of(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// A msgid at `buf[2]` written as a positive fixint or uint 8/16/32 (as
/// foorpc and most peers write it), and its length; `None` for other forms,
/// which the general parse handles.
fn plain_msgid(buf: &[u8]) -> Option<(u32, usize)> {
    Some(match *buf.get(2)? {
        b @ 0x00..=0x7f => (u32::from(b), 1),
        0xcc => (u32::from(*buf.get(3)?), 2),
        0xcd => (
            u32::from(u16::from_be_bytes(buf.get(3..5)?.try_into().ok()?)),
            3,
        ),
        0xce => (u32::from_be_bytes(buf.get(3..7)?.try_into().ok()?), 5),
        _ => return None,
    })
}

/// The most common request, read in one pass: `[0, msgid, method,
/// [scalar, ...]]` with the msgid as [`plain_msgid`] takes it, the method a
/// fixstr or str8 and up to 15 nil/bool/int/float params, all of it in
/// `buf` and within the limits. Anything else returns `None` and goes
/// through the general scan and parse, which give the same `Message` for
/// these bytes.
fn scalar_request(buf: &[u8], max_size: usize, max_depth: usize) -> Option<(Message, usize)> {
    // The params array is the second level.
    if max_depth < 2 || buf.get(..2)? != [0x94, TYPE_REQUEST] {
        return None;
    }
    let (msgid, id_len) = plain_msgid(buf)?;
    let method_at = 2 + id_len;
    let (name_at, name_len) = match *buf.get(method_at)? {
        b @ 0xa0..=0xbf => (method_at + 1, usize::from(b & 0x1f)),
        0xd9 => (method_at + 2, usize::from(*buf.get(method_at + 1)?)),
        _ => return None,
    };
    let params_at = name_at + name_len;
    let count = match *buf.get(params_at)? {
        b @ 0x90..=0x9f => usize::from(b & 0x0f),
        _ => return None,
    };
    let mut end = params_at + 1;
    for _ in 0..count {
        end += flat_item_len(buf, end)?;
    }
    if end > max_size {
        return None;
    }
    let mut r = Reader {
        buf: &buf[..end],
        pos: params_at + 1,
    };
    let mut params = Vec::with_capacity(count);
    for _ in 0..count {
        params.push(r.value().ok()?);
    }
    let method = String::from_utf8_lossy(&buf[name_at..params_at]).into_owned();
    let msg = Message::Request {
        msgid,
        method,
        params,
    };
    Some((msg, end))
}

/// The most common reply, read in one pass: `[1, msgid, nil, scalar]` with
/// the msgid a positive fixint or uint 8/16/32 and the result a nil, bool,
/// int or float, all of it in `buf` and within `max_size`. Anything else
/// (an error, a container result, a short buffer) returns `None` and goes
/// through the general scan and parse, which give the same `Message` for
/// these bytes: this only skips their per-item bookkeeping.
fn scalar_response(
    buf: &[u8],
    max_size: usize,
    raw_result: &dyn Fn(u32) -> bool,
) -> Option<(Message, usize)> {
    if buf.get(..2)? != [0x94, TYPE_RESPONSE] {
        return None;
    }
    let (msgid, id_len) = plain_msgid(buf)?;
    let error_at = 2 + id_len;
    if *buf.get(error_at)? != 0xc0 {
        return None;
    }
    let result_at = error_at + 1;
    let result_len = flat_item_len(buf, result_at)?;
    let end = result_at + result_len;
    if end > max_size {
        return None;
    }
    let result = if raw_result(msgid) {
        let mut bytes = crate::bufpool::take(result_len);
        bytes.extend_from_slice(&buf[result_at..end]);
        Value::Binary(bytes)
    } else {
        let mut r = Reader {
            buf: &buf[..end],
            pos: result_at,
        };
        r.value().ok()?
    };
    let msg = Message::Response {
        msgid,
        error: Value::Nil,
        result,
    };
    Some((msg, end))
}

/// Validates one complete, well-formed object as a MessagePack-RPC message,
/// building the envelope directly (no `Value` for the outer array).
fn parse_message(buf: &[u8], raw_result: &dyn Fn(u32) -> bool) -> Result<Message, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let Some(len) = r.array_len()? else {
        let v = r.value()?;
        return Err(invalid(
            None,
            format!("a message must be an array, got {}", kind(&v)),
        ));
    };
    if len == 0 {
        return Err(invalid(None, "a message must not be an empty array"));
    }
    let tag = r.value()?;
    match tag.as_u64() {
        Some(t) if t == u64::from(TYPE_REQUEST) => {
            let msgid = if len >= 2 {
                let v = r.value()?;
                let id = msgid_of(&v);
                if id.is_none() {
                    return Err(invalid(
                        None,
                        format!("request msgid must be an integer in 0..=4294967295, got {v}"),
                    ));
                }
                id
            } else {
                None
            };
            if len != 4 {
                return Err(invalid(
                    msgid,
                    format!("a request must have 4 elements, got {len}"),
                ));
            }
            let msgid = msgid.expect("len == 4 means the msgid was read");
            let Some(method) = r.method()? else {
                let v = r.value()?;
                return Err(invalid(
                    Some(msgid),
                    format!("method name must be a str or bin, got {}", kind(&v)),
                ));
            };
            match r.value()? {
                Value::Array(params) => Ok(Message::Request {
                    msgid,
                    method,
                    params,
                }),
                v => Err(invalid(
                    Some(msgid),
                    format!("params must be an array, got {}", kind(&v)),
                )),
            }
        }
        Some(t) if t == u64::from(TYPE_RESPONSE) => {
            if len != 4 {
                return Err(invalid(
                    None,
                    format!("a response must have 4 elements, got {len}"),
                ));
            }
            let v = r.value()?;
            let Some(msgid) = msgid_of(&v) else {
                return Err(invalid(
                    None,
                    format!("response msgid must be an integer in 0..=4294967295, got {v}"),
                ));
            };
            let error = r.value()?;
            let result = if raw_result(msgid) {
                // The result is the message's last element: the rest of it.
                let mut bytes = crate::bufpool::take(buf.len() - r.pos);
                bytes.extend_from_slice(&buf[r.pos..]);
                Value::Binary(bytes)
            } else {
                r.value()?
            };
            Ok(Message::Response {
                msgid,
                error,
                result,
            })
        }
        Some(t) if t == u64::from(TYPE_NOTIFICATION) => {
            if len != 3 {
                return Err(invalid(
                    None,
                    format!("a notification must have 3 elements, got {len}"),
                ));
            }
            let Some(method) = r.method()? else {
                let v = r.value()?;
                return Err(invalid(
                    None,
                    format!("method name must be a str or bin, got {}", kind(&v)),
                ));
            };
            match r.value()? {
                Value::Array(params) => Ok(Message::Notification { method, params }),
                v => Err(invalid(
                    None,
                    format!("params must be an array, got {}", kind(&v)),
                )),
            }
        }
        _ => Err(invalid(
            None,
            format!("unknown message type {tag} (expected 0, 1 or 2)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_message_size: usize, max_depth: usize) -> Limits {
        Limits {
            max_message_size,
            max_depth,
            ..Limits::default()
        }
    }

    /// The one-pass paths report the decoded cost the scan counts for the
    /// same bytes (the scan runs alone below `ONE_PASS_DECODED_MAX`).
    #[test]
    fn one_pass_paths_report_the_decoded_size_the_scan_counts() {
        let scan_only = Limits {
            max_decoded_size: ONE_PASS_DECODED_MAX - 1,
            ..Limits::default()
        };
        let mut messages = Vec::new();
        let mut add = Vec::new();
        encode_request(&mut add, 7, "add", &[Value::from(1), Value::from(-2)]);
        messages.push(add);
        let mut many = Vec::new();
        let params: Vec<Value> = (0..15).map(|i| Value::from(i * 1000)).collect();
        encode_request(&mut many, 300, &"m".repeat(200), &params);
        messages.push(many);
        let mut reply = Vec::new();
        encode_response(&mut reply, 9, &Value::Nil, &Value::from(2.5));
        messages.push(reply);
        for bytes in &messages {
            let mut fast = Decoder::new(&Limits::default());
            let mut scan = Decoder::new(&scan_only);
            let a = fast.decode(bytes).unwrap().unwrap();
            let b = scan.decode(bytes).unwrap().unwrap();
            assert_eq!(a.1, b.1);
            assert_eq!(
                fast.last_decoded_size(),
                scan.last_decoded_size(),
                "{bytes:x?}"
            );
            assert!(fast.last_decoded_size() >= 4 * DECODED_VALUE_SIZE);
        }
    }

    fn request(params: Vec<Value>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_request(&mut out, 7, "m", &params);
        out
    }

    /// Every header form, each inside a request so the scanner sees it nested.
    fn samples() -> Vec<Value> {
        vec![
            Value::Nil,
            Value::from(true),
            Value::from(5u8),
            Value::from(200u8),
            Value::from(60000u16),
            Value::from(70000u32),
            Value::from(u64::MAX),
            Value::from(-3i8),
            Value::from(-100i8),
            Value::from(-1000i16),
            Value::from(-100000i32),
            Value::from(i64::MIN),
            Value::F32(1.5),
            Value::F64(0.1),
            Value::from("abc"),
            Value::from("x".repeat(40)),
            Value::from("y".repeat(300)),
            Value::from("z".repeat(70000)),
            Value::Binary(vec![1, 2, 3]),
            Value::Binary(vec![9; 300]),
            Value::Binary(vec![8; 70000]),
            Value::Array(vec![]),
            Value::Array((0..20).map(Value::from).collect()),
            Value::Array((0..70000).map(|_| Value::Nil).collect()),
            Value::Map(vec![(Value::from(1), Value::from("a"))]),
            Value::Map((0..20).map(|i| (Value::from(i), Value::Nil)).collect()),
            Value::Map((0..70000).map(|i| (Value::from(i), Value::Nil)).collect()),
            Value::Ext(1, vec![1]),
            Value::Ext(2, vec![1, 2]),
            Value::Ext(3, vec![1; 4]),
            Value::Ext(4, vec![1; 8]),
            Value::Ext(5, vec![1; 16]),
            Value::Ext(6, vec![]),
            Value::Ext(7, vec![1; 3]),
            Value::Ext(-8, vec![1; 300]),
            Value::Ext(9, vec![1; 70000]),
        ]
    }

    #[test]
    fn every_form_is_incomplete_until_its_last_byte() {
        for v in samples() {
            let bytes = request(vec![v.clone(), Value::from(1)]);
            let mut d = Decoder::new(&Limits::default());
            // Every prefix is incomplete; a fresh decoder must agree with a
            // reused one (the reused one resumes its saved scan).
            let step = (bytes.len() / 300).max(1);
            let mut cut = 0;
            while cut < bytes.len() {
                assert_eq!(d.decode(&bytes[..cut]), Ok(None), "{v:?} cut {cut}");
                let mut fresh = Decoder::new(&Limits::default());
                assert_eq!(fresh.decode(&bytes[..cut]), Ok(None), "{v:?} cut {cut}");
                cut += step;
            }
            let (msg, n) = d.decode(&bytes).unwrap().unwrap();
            assert_eq!(n, bytes.len());
            assert_eq!(
                msg,
                Message::Request {
                    msgid: 7,
                    method: "m".into(),
                    params: vec![v, Value::from(1)]
                }
            );
        }
    }

    #[test]
    fn one_byte_at_a_time_in_every_header() {
        for v in samples().into_iter().filter(|v| {
            let mut b = Vec::new();
            encode_value(&mut b, v);
            b.len() < 2000
        }) {
            let bytes = request(vec![v]);
            let mut d = Decoder::new(&Limits::default());
            for cut in 0..bytes.len() {
                assert_eq!(d.decode(&bytes[..cut]), Ok(None));
            }
            assert_eq!(d.decode(&bytes).unwrap().unwrap().1, bytes.len());
        }
    }

    #[test]
    fn returns_only_the_first_message() {
        let mut bytes = request(vec![Value::from(1)]);
        let first = bytes.len();
        bytes.extend(request(vec![Value::from(2)]));
        let mut d = Decoder::new(&Limits::default());
        assert_eq!(d.decode(&bytes).unwrap().unwrap().1, first);
        assert_eq!(d.decode(&bytes[first..]).unwrap().unwrap().1, first);
        assert_eq!(d.decode(&[]), Ok(None));
    }

    #[test]
    fn hint_skips_rescans_of_a_big_body() {
        let bytes = request(vec![Value::Binary(vec![0; 1 << 20])]);
        let header = 1 + 1 + 1 + 2 + 1 + 5; // array, tag, msgid, "m", params, bin32 header
        let mut d = Decoder::new(&Limits::default());
        assert_eq!(d.decode(&bytes[..header]), Ok(None));
        assert_eq!(d.need, bytes.len());
        assert_eq!(d.pos, bytes.len());
        assert_eq!(d.decode(&bytes[..bytes.len() - 1]), Ok(None));
        assert!(d.decode(&bytes).unwrap().is_some());
        assert_eq!((d.need, d.pos, d.owed, d.open.len()), (1, 0, 1, 0));
    }

    #[test]
    fn hint_counts_one_byte_per_owed_element() {
        // An array16 of 1000 nils: after its header, 1000 more bytes at least.
        let bytes = request(vec![Value::Array(vec![Value::Nil; 1000])]);
        let mut d = Decoder::new(&Limits::default());
        assert_eq!(d.decode(&bytes[..9]), Ok(None));
        assert_eq!(d.need, bytes.len());
    }

    #[test]
    fn reserved_byte_is_malformed() {
        let mut d = Decoder::new(&Limits::default());
        assert!(matches!(d.decode(&[0xc1]), Err(DecodeError::Malformed(_))));
        let mut d = Decoder::new(&Limits::default());
        let bytes = [0x94, 0x00, 0x01, 0xa1, b'm', 0x91, 0xc1];
        assert!(matches!(d.decode(&bytes), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn declared_sizes_are_checked_from_the_header() {
        let too_large = Err(DecodeError::TooLarge { limit: 100 });
        let prefix = [0x94, 0x00, 0x01, 0xa1, b'm', 0x91];
        for header in [
            &[0xc6, 0xff, 0xff, 0xff, 0xff][..], // bin32
            &[0xdb, 0, 0, 0, 100],               // str32
            &[0xc9, 0, 0, 1, 0, 1],              // ext32
            &[0xdd, 0xff, 0xff, 0xff, 0xff],     // array32
            &[0xdf, 0, 0, 0, 50],                // map32: 100 elements
            &[0xdc, 0, 95],                      // 95 nils + 6 + 3 > 100
        ] {
            let mut d = Decoder::new(&limits(100, 128));
            let bytes = [&prefix[..], header].concat();
            assert_eq!(d.decode(&bytes), too_large, "{header:x?}");
        }
        // Exactly at the limit passes.
        let bytes = request(vec![Value::Binary(vec![0; 100 - 8])]);
        assert_eq!(bytes.len(), 100);
        let mut d = Decoder::new(&limits(100, 128));
        assert_eq!(d.decode(&bytes).unwrap().unwrap().1, 100);
        let bytes = request(vec![Value::Binary(vec![0; 101 - 8])]);
        let mut d = Decoder::new(&limits(100, 128));
        assert_eq!(d.decode(&bytes[..10]), too_large);
    }

    #[test]
    fn depth_counts_the_message_as_level_one() {
        fn nested(levels: usize) -> Value {
            (0..levels).fold(Value::Array(vec![]), |v, _| Value::Array(vec![v]))
        }
        // message (1) + params (2) + 2 more levels = 4, the last one empty.
        let ok = request(vec![nested(1)]);
        assert!(Decoder::new(&limits(1000, 4))
            .decode(&ok)
            .unwrap()
            .is_some());
        let deep = request(vec![nested(2)]);
        assert_eq!(
            Decoder::new(&limits(1000, 4)).decode(&deep),
            Err(DecodeError::TooDeep { limit: 4 })
        );
        // Maps nest too.
        let map = request(vec![Value::Map(vec![(nested(0), Value::Nil)])]);
        assert!(Decoder::new(&limits(1000, 4))
            .decode(&map)
            .unwrap()
            .is_some());
        assert_eq!(
            Decoder::new(&limits(1000, 3)).decode(&map),
            Err(DecodeError::TooDeep { limit: 3 })
        );
    }

    #[test]
    fn fixed_scalars_split_inside_their_payload() {
        // A uint64 cut after 4 of its 9 bytes must not be read early.
        let bytes = request(vec![Value::from(u64::MAX)]);
        let mut d = Decoder::new(&Limits::default());
        assert_eq!(d.decode(&bytes[..10]), Ok(None));
        assert_eq!(d.need, bytes.len());
        assert!(d.decode(&bytes).unwrap().is_some());
    }

    #[test]
    fn display_is_readable() {
        let e = DecodeError::TooLarge { limit: 67108864 };
        assert_eq!(e.to_string(), "message exceeds the 67108864-byte limit");
        let e = invalid(Some(3), "params must be an array, got an integer");
        assert_eq!(
            e.to_string(),
            "invalid MessagePack-RPC request 3: params must be an array, got an integer"
        );
    }

    /// Msgid encodings the one-pass paths take (positive fixint, uint
    /// 8/16/32 up to u32::MAX) and ones they leave to the general parse.
    fn msgid_forms() -> Vec<Vec<u8>> {
        vec![
            vec![0x00],
            vec![0x7f],
            vec![0xcc, 0xc8],
            vec![0xcd, 0x9c, 0x40],
            vec![0xce, 0xb2, 0xd0, 0x5e, 0x00],
            vec![0xce, 0xff, 0xff, 0xff, 0xff],
            vec![0xcf, 0, 0, 0, 0, 0, 0, 0, 9],
            vec![0xd0, 0x05],
            vec![0xff],
            vec![0xc0],
        ]
    }

    /// Every `[tag, msgid, third, fourth]` from the given element encodings.
    fn envelopes(
        tag: u8,
        msgids: &[Vec<u8>],
        thirds: &[Vec<u8>],
        fourths: &[Vec<u8>],
    ) -> Vec<Vec<u8>> {
        let mut messages = Vec::new();
        for id in msgids {
            for third in thirds {
                for fourth in fourths {
                    messages.push([&[0x94, tag][..], id, third, fourth].concat());
                }
            }
        }
        messages
    }

    /// For every message, alone and followed by another, every prefix of it,
    /// size limits that cut it or not, depths 0 to 8, and raw results or
    /// not: `decode_with` (which tries the one-pass paths) gives what the
    /// general scan and parse give. Returns how many cases `took_fast`
    /// (bytes, size limit, raw) says the one-pass path handled.
    fn assert_one_pass_matches_general(
        messages: Vec<Vec<u8>>,
        took_fast: impl Fn(&[u8], usize, bool) -> bool,
    ) -> usize {
        let mut fast_cases = 0;
        for msg in messages {
            let with_tail = [&msg[..], &[0x94, 0x01, 0x02, 0xc0, 0x03]].concat();
            for buf in [&msg, &with_tail] {
                for cut in 0..=buf.len() {
                    for (max, depth) in [
                        (msg.len() - 1, 8),
                        (msg.len(), 8),
                        (1 << 20, 0),
                        (1 << 20, 1),
                        (1 << 20, 2),
                        (1 << 20, 8),
                    ] {
                        for raw in [false, true] {
                            let lim = limits(max, depth);
                            let raw_result = |_: u32| raw;
                            let bytes = &buf[..cut];
                            let fast = Decoder::new(&lim).decode_with(bytes, &raw_result);
                            let general = Decoder::new(&lim).decode_scanned(bytes, &raw_result);
                            assert_eq!(
                                format!("{fast:?}"),
                                format!("{general:?}"),
                                "bytes {bytes:02x?}, max {max}, depth {depth}, raw {raw}"
                            );
                            if depth == 8 && took_fast(bytes, max, raw) {
                                fast_cases += 1;
                            }
                        }
                    }
                }
            }
        }
        fast_cases
    }

    /// The one-pass path for scalar replies gives exactly what the general
    /// scan and parse give, for every prefix of every reply shape near it
    /// (msgid and result encodings it takes and ones it leaves, errors,
    /// containers, trailing bytes), with and without a raw result, and
    /// under size limits that cut the reply.
    #[test]
    fn scalar_reply_path_matches_the_general_decoder() {
        let msgids = msgid_forms();
        let errors: Vec<Vec<u8>> = vec![vec![0xc0], vec![0xa1, b'x'], vec![0x01]];
        let mut results: Vec<Vec<u8>> =
            vec![vec![0x92, 0x01, 0x02], vec![0xa2, b'o', b'k'], vec![0xc1]];
        for v in samples() {
            let mut b = Vec::new();
            encode_value(&mut b, &v);
            // Every header form; long bodies add nothing but time here.
            if b.len() <= 64 {
                results.push(b);
            }
        }
        results.extend([
            vec![0xa0],
            vec![0xc4, 0x00],
            vec![0xd9, 0x00],
            vec![0xc7, 0x00, 0x06],
            vec![0xc7, 0x00],
            vec![0xca, 0x3f, 0x80, 0, 0],
            vec![0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe],
        ]);
        let messages = envelopes(TYPE_RESPONSE, &msgids, &errors, &results);
        let checked_fast = assert_one_pass_matches_general(messages, |buf, max, raw| {
            scalar_response(buf, max, &|_| raw).is_some()
        });
        assert!(
            checked_fast > 1000,
            "the one-pass path ran {checked_fast} times"
        );
    }

    /// The one-pass check of scalar params accepts only what the full scan
    /// accepts: every 1- and 2-byte string, and arrays of every sample
    /// (whole, cut short, with a byte more), under tight and loose limits.
    #[test]
    fn scalar_params_check_agrees_with_the_full_scan() {
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for a in 0..=255u8 {
            inputs.push(vec![a]);
            for b in 0..=255u8 {
                inputs.push(vec![a, b]);
            }
        }
        let scalars: Vec<Value> = samples()
            .into_iter()
            .filter(|v| {
                !matches!(
                    v,
                    Value::String(_)
                        | Value::Binary(_)
                        | Value::Array(_)
                        | Value::Map(_)
                        | Value::Ext(..)
                )
            })
            .collect();
        for n in 0..=3 {
            for start in 0..scalars.len() {
                let items: Vec<Value> = (0..n)
                    .map(|i| scalars[(start + i) % scalars.len()].clone())
                    .collect();
                let mut b = Vec::new();
                encode_value(&mut b, &Value::Array(items));
                for cut in 0..b.len() {
                    inputs.push(b[..cut].to_vec());
                }
                let mut more = b.clone();
                more.push(0xc0);
                inputs.push(more);
                inputs.push(b);
            }
        }
        let mut fast = 0;
        for bytes in &inputs {
            for (size, depth) in [
                (1 << 20, 64),
                (bytes.len(), 2),
                (bytes.len().saturating_sub(1), 64),
                (1 << 20, 1),
            ] {
                let lim = limits(size, depth);
                if scalars_only(bytes, &lim) {
                    fast += 1;
                    assert_eq!(
                        check_scanned(bytes, &lim),
                        Ok(()),
                        "bytes {bytes:02x?}, size {size}, depth {depth}"
                    );
                }
            }
        }
        assert!(fast > 2000, "the one-pass check accepted {fast} inputs");
    }

    /// The one-pass path for scalar requests gives exactly what the general
    /// scan and parse give, for every prefix of requests near its shape
    /// (msgid, method and params forms it takes and ones it leaves, invalid
    /// UTF-8 names, trailing bytes), under size and depth limits.
    #[test]
    fn scalar_request_path_matches_the_general_decoder() {
        let msgids = msgid_forms();
        let mut long = vec![0xd9, 40];
        long.extend(std::iter::repeat(b'm').take(40));
        let methods: Vec<Vec<u8>> = vec![
            vec![0xa3, b'a', b'd', b'd'],
            vec![0xa0],
            long,
            vec![0xa2, 0xff, 0xfe],
            vec![0xc4, 0x03, b'a', b'd', b'd'],
            vec![0xda, 0x00, 0x01, b'x'],
            vec![0x01],
        ];
        let mut params: Vec<Vec<u8>> = vec![
            vec![0x90],
            vec![0x92, 0x01, 0x02],
            vec![0x92, 0x01, 0xa1, b'x'],
            vec![0x91, 0x91, 0x01],
            vec![0xdc, 0x00, 0x01, 0x05],
            vec![0x80],
            vec![0x93, 0xc1, 0x01, 0x02],
            vec![0x01],
        ];
        let scalars: Vec<Vec<u8>> = samples()
            .iter()
            .filter(|v| v.is_nil() || v.is_bool() || v.is_number())
            .map(|v| {
                let mut b = Vec::new();
                encode_value(&mut b, v);
                b
            })
            .collect();
        for n in [1, 3, 15] {
            let mut p = vec![0x90 | n as u8];
            for i in 0..n {
                p.extend_from_slice(&scalars[i % scalars.len()]);
            }
            params.push(p);
        }
        let messages = envelopes(TYPE_REQUEST, &msgids, &methods, &params);
        let checked_fast = assert_one_pass_matches_general(messages, |buf, max, _| {
            scalar_request(buf, max, 8).is_some()
        });
        assert!(
            checked_fast > 1000,
            "the one-pass path ran {checked_fast} times"
        );
    }
}
