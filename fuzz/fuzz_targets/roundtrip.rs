//! Values built from the fuzz input, encoded by foorpc and decoded back.
//!
//! Input layout: `[size, depth, decoded, kind, value bytes...]`; the value
//! bytes are read as a small program that builds `Value`s of every type
//! (str with invalid UTF-8, ext, NaN and negative zero included).
//!
//! Checks:
//! - a message within the limits decodes back to an equal message
//!   (floats compared bitwise, so NaN equals itself), consuming exactly the
//!   encoded bytes, whether given whole or one byte at a time;
//! - a message over a limit is refused with `TooLarge`, `TooDeep` or
//!   `TooLargeDecoded`, never decoded, never a panic;
//! - `check_encoded` on the encoded params (as the C and Python front ends
//!   send caller-encoded params) accepts exactly those within the limits.
#![no_main]

use foorpc::codec::{self, check_encoded, DecodeError, Decoder, DECODED_VALUE_SIZE};
use foorpc::{Limits, Message, Value};
use libfuzzer_sys::fuzz_target;

mod common;
use common::{cost_depth, envelope, is_limit_error, same};

struct Src<'a> {
    data: &'a [u8],
    /// Values built so far: bounds the work per input.
    budget: usize,
}

impl Src<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a.to_vec()
    }

    fn u64(&mut self) -> u64 {
        let mut a = [0u8; 8];
        for x in &mut a {
            *x = self.byte();
        }
        u64::from_le_bytes(a)
    }

    fn len(&mut self) -> usize {
        match self.byte() {
            b @ 0..=239 => usize::from(b % 20),
            b @ 240..=251 => usize::from(b - 240) * 30 + 20,
            // Long: up to a few hundred bytes or elements.
            _ => usize::from(self.byte()) + 256,
        }
    }

    fn value(&mut self, depth: usize) -> Value {
        if self.budget == 0 {
            return Value::Nil;
        }
        self.budget -= 1;
        let tag = self.byte();
        match tag % 16 {
            0 => Value::Nil,
            1 => Value::Boolean(tag & 0x10 != 0),
            2 => Value::from(self.u64()),
            3 => Value::from(self.u64() as i64),
            4 => Value::from(i64::from(self.byte() as i8)),
            5 => Value::F32(f32::from_bits(self.u64() as u32)),
            6 => Value::F64(f64::from_bits(self.u64())),
            7 => {
                let n = self.len();
                Value::from(String::from_utf8_lossy(&self.bytes(n)).into_owned())
            }
            8 => {
                // A str holding invalid UTF-8, as rmpv keeps it.
                let n = self.len();
                let mut raw = self.bytes(n);
                raw.push(0xff);
                let mut enc = Vec::new();
                rmp::encode::write_str_len(&mut enc, raw.len() as u32).unwrap();
                enc.extend_from_slice(&raw);
                rmpv::decode::read_value(&mut &enc[..]).unwrap()
            }
            9 => {
                let n = self.len();
                Value::Binary(self.bytes(n))
            }
            10 => {
                let ty = self.byte() as i8;
                let n = match self.byte() % 8 {
                    0 => 1,
                    1 => 2,
                    2 => 4,
                    3 => 8,
                    4 => 16,
                    _ => self.len(),
                };
                Value::Ext(ty, self.bytes(n))
            }
            11 | 12 if depth < 12 => {
                let n = self.len();
                Value::Array((0..n).map(|_| self.value(depth + 1)).collect())
            }
            13 if depth < 12 => {
                let n = self.len();
                Value::Map(
                    (0..n)
                        .map(|_| (self.value(depth + 1), self.value(depth + 1)))
                        .collect(),
                )
            }
            14 => Value::F64([f64::NAN, -0.0, f64::INFINITY, f64::MIN_POSITIVE][tag as usize >> 6]),
            _ => Value::from(u64::from(tag)),
        }
    }
}

fn limits_from(head: &[u8; 3]) -> Limits {
    let max_message_size = match head[0] {
        0..=99 => usize::from(head[0]),
        100..=249 => usize::from(head[0]) * 20,
        _ => 1 << 20,
    };
    let max_depth = usize::from(head[1] % 16);
    let max_decoded_size = match head[2] % 4 {
        0 => usize::from(head[2]) * 8,
        1 => 19 * DECODED_VALUE_SIZE + 255,
        2 => 8192,
        _ => 1 << 24,
    };
    Limits {
        max_message_size,
        max_depth,
        max_decoded_size,
        ..Limits::default()
    }
}

fn decode_all(
    limits: &Limits,
    bytes: &[u8],
    bytewise: bool,
) -> Result<(Message, usize), DecodeError> {
    let mut dec = Decoder::new(limits);
    let mut have = if bytewise { 0 } else { bytes.len() };
    loop {
        match dec.decode(&bytes[..have])? {
            Some(done) => return Ok(done),
            None if have == bytes.len() => panic!("a whole encoded message is incomplete"),
            None => have += 1,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let limits = limits_from(&[data[0], data[1], data[2]]);
    let kind = data[3];
    let mut src = Src {
        data: &data[4..],
        budget: 2000,
    };
    let msgid = (src.u64() >> (kind >> 3)) as u32;
    let msg = match kind % 3 {
        0 => {
            let n = src.len();
            let method = String::from_utf8_lossy(&src.bytes(n)).into_owned();
            let n = src.len();
            let params = (0..n).map(|_| src.value(0)).collect();
            Message::Request {
                msgid,
                method,
                params,
            }
        }
        1 => Message::Response {
            msgid,
            error: src.value(0),
            result: src.value(0),
        },
        _ => {
            let n = src.len();
            let method = String::from_utf8_lossy(&src.bytes(n)).into_owned();
            let n = src.len();
            let params = (0..n).map(|_| src.value(0)).collect();
            Message::Notification { method, params }
        }
    };
    let mut bytes = Vec::new();
    codec::encode(&msg, &mut bytes);

    let (cost, depth) = cost_depth(&envelope(&msg));
    let within = bytes.len() <= limits.max_message_size
        && depth <= limits.max_depth
        && cost <= limits.max_decoded_size;
    for bytewise in [false, true] {
        match decode_all(&limits, &bytes, bytewise) {
            Ok((back, n)) => {
                assert!(within, "decoded an over-limit message ({} bytes, depth {depth}, cost {cost}, {limits:?})", bytes.len());
                assert_eq!(n, bytes.len());
                assert!(
                    same(&envelope(&back), &envelope(&msg)),
                    "{msg:?} came back as {back:?}"
                );
            }
            Err(e) => {
                assert!(
                    !within,
                    "a message within the limits was refused: {e} ({limits:?})"
                );
                assert!(is_limit_error(&e), "an over-limit message refused as {e:?}");
            }
        }
    }

    // Caller-encoded params: checked as the receiver will count them
    // (inside the message array: one level and the envelope's cost less).
    if let Message::Request { params, .. } | Message::Notification { params, .. } = &msg {
        let mut enc = Vec::new();
        codec::encode_value(&mut enc, &Value::Array(params.clone()));
        let (pcost, pdepth) = cost_depth(&Value::Array(params.clone()));
        let ok = enc.len() <= limits.max_message_size
            && pdepth < limits.max_depth
            && pcost <= limits.max_decoded_size;
        match check_encoded(&enc, &limits, true) {
            Ok(()) => assert!(ok, "check_encoded took over-limit params ({} bytes, depth {pdepth}, cost {pcost}, {limits:?})", enc.len()),
            Err(e) => {
                assert!(!ok, "check_encoded refused params within the limits: {e}");
                assert!(
                    is_limit_error(&e),
                    "over-limit params refused as {e:?}"
                );
            }
        }
    }
});
