//! Arbitrary bytes through a streaming `Decoder` with small limits.
//!
//! Input layout: `[size, depth, decoded, split_seed, stream...]`. The first
//! four bytes choose the limits and how the stream is cut into pieces.
//!
//! Checks:
//! - no panic;
//! - every message returned is within `max_message_size` (bytes consumed),
//!   `max_depth` (the message array is level 1) and `max_decoded_size`
//!   (counted as `Limits::max_decoded_size` documents), measured on the
//!   consumed bytes by rmpv, an independent reader, which must also read
//!   exactly those bytes as one value;
//! - the stream decoded in one piece and in pieces (each call passing the
//!   whole pending buffer from the same start) gives the same messages and
//!   the same end (the same error, or the same incomplete tail);
//! - a message is never shorter than a `bytes_needed()` reported while it
//!   was pending.
#![no_main]

use foorpc::codec::{DecodeError, Decoder, DECODED_VALUE_SIZE};
use foorpc::{Limits, Message, Value};
use libfuzzer_sys::fuzz_target;

mod common;
use common::{cost_depth, envelope, same};

/// How a stream ended: with an error, or with this many bytes of an
/// incomplete message left.
#[derive(Debug, PartialEq)]
enum End {
    Error(DecodeError),
    Pending(usize),
}

fn limits_from(head: &[u8; 3]) -> Limits {
    // Small limits, with a few that reach the one-pass paths.
    let max_message_size = match head[0] {
        0..=199 => usize::from(head[0]),
        200..=249 => 200 + usize::from(head[0] - 200) * 40,
        _ => 64 * 1024,
    };
    let max_depth = usize::from(head[1] % 10);
    let max_decoded_size = match head[2] % 8 {
        0 => 0,
        1 => DECODED_VALUE_SIZE * 3,
        2 => DECODED_VALUE_SIZE * 4 + 16,
        3 => usize::from(head[2]) * 4,
        4 => 19 * DECODED_VALUE_SIZE + 254,
        5 => 19 * DECODED_VALUE_SIZE + 255,
        6 => 4096,
        _ => 1 << 20,
    };
    Limits {
        max_message_size,
        max_depth,
        max_decoded_size,
        ..Limits::default()
    }
}

/// splitmix64, for the piece sizes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The params/result of `msg` must be what rmpv read from the same bytes.
fn check_against_rmpv(msg: &Message, raw: &Value) {
    let Value::Array(items) = raw else {
        panic!("a message that rmpv reads as {raw}");
    };
    let ok = match msg {
        Message::Request { msgid, params, .. } => {
            items.len() == 4
                && items[1].as_u64() == Some(u64::from(*msgid))
                && same(&items[3], &Value::Array(params.clone()))
        }
        Message::Response {
            msgid,
            error,
            result,
        } => {
            items.len() == 4
                && items[1].as_u64() == Some(u64::from(*msgid))
                && same(&items[2], error)
                && same(&items[3], result)
        }
        Message::Notification { params, .. } => {
            items.len() == 3 && same(&items[2], &Value::Array(params.clone()))
        }
    };
    assert!(ok, "decoded {msg:?} but rmpv read {raw}");
}

fn check_message(limits: &Limits, msg: &Message, bytes: &[u8]) {
    assert!(
        bytes.len() <= limits.max_message_size,
        "a {}-byte message passed a {}-byte limit",
        bytes.len(),
        limits.max_message_size
    );
    let mut rd = bytes;
    let raw = rmpv::decode::read_value(&mut rd)
        .unwrap_or_else(|e| panic!("decoded {msg:?}, which rmpv cannot read: {e}"));
    assert!(
        rd.is_empty(),
        "the message has {} bytes after its value",
        rd.len()
    );
    let (cost, depth) = cost_depth(&raw);
    assert!(
        depth <= limits.max_depth,
        "a message {depth} deep passed a depth limit of {}",
        limits.max_depth
    );
    assert!(
        cost <= limits.max_decoded_size,
        "a message costing {cost} decoded passed a limit of {}",
        limits.max_decoded_size
    );
    check_against_rmpv(msg, &raw);
}

/// Decodes `stream` fed in pieces of the sizes `cuts` gives (the last one
/// takes the rest), as a connection does: the pending bytes are passed again
/// from the same start, and a message's bytes are removed once returned.
fn decode_stream(
    limits: &Limits,
    stream: &[u8],
    mut cuts: impl FnMut() -> usize,
) -> (Vec<(Message, usize)>, End) {
    let mut dec = Decoder::new(limits);
    let mut pending: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut msgs = Vec::new();
    let mut need_seen = 0usize;
    // Each round either consumes at least one byte or feeds at least one.
    for _ in 0..=2 * stream.len() + 2 {
        match dec.decode(&pending) {
            Ok(Some((msg, n))) => {
                assert!(
                    n >= 1 && n <= pending.len(),
                    "consumed {n} of {}",
                    pending.len()
                );
                assert!(
                    n >= need_seen,
                    "a {n}-byte message after bytes_needed() said {need_seen}"
                );
                check_message(limits, &msg, &pending[..n]);
                msgs.push((msg, n));
                pending.drain(..n);
                need_seen = 0;
            }
            Ok(None) => {
                let need = dec.bytes_needed();
                assert!(
                    need > pending.len() || pending.is_empty(),
                    "incomplete with {} bytes, yet bytes_needed() is {need}",
                    pending.len()
                );
                need_seen = need_seen.max(need);
                if fed == stream.len() {
                    return (msgs, End::Pending(pending.len()));
                }
                let take = cuts().clamp(1, stream.len() - fed);
                pending.extend_from_slice(&stream[fed..fed + take]);
                fed += take;
            }
            Err(e) => return (msgs, End::Error(e)),
        }
    }
    panic!("the decoder made no progress");
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let limits = limits_from(&[data[0], data[1], data[2]]);
    let split = data[3];
    let stream = &data[4..];

    let (whole, whole_end) = decode_stream(&limits, stream, || usize::MAX);

    let mut rng = Rng(u64::from(split) ^ (stream.len() as u64) << 8);
    let (pieces, pieces_end) = match split % 4 {
        // One byte at a time.
        0 => decode_stream(&limits, stream, || 1),
        // A first byte alone (no one-pass path), then the rest.
        1 => {
            let mut first = true;
            decode_stream(&limits, stream, move || {
                if std::mem::take(&mut first) {
                    1
                } else {
                    usize::MAX
                }
            })
        }
        // Random small pieces.
        2 => decode_stream(&limits, stream, || 1 + (rng.next() % 9) as usize),
        // Random pieces of any size.
        _ => decode_stream(&limits, stream, || 1 + (rng.next() % 64) as usize),
    };

    assert_eq!(whole.len(), pieces.len(), "{whole:?} vs {pieces:?}");
    for ((a, na), (b, nb)) in whole.iter().zip(&pieces) {
        assert_eq!(na, nb);
        assert!(same(&envelope(a), &envelope(b)), "{a:?} vs {b:?}");
    }
    assert_eq!(whole_end, pieces_end);
});
