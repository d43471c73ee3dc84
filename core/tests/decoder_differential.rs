//! Seeded, bounded differential fuzzing of the decoder.
//!
//! Every input is decoded several ways that must agree:
//! - whole, by a fresh [`Decoder`] (which tries the one-pass fast paths for
//!   scalar requests and replies);
//! - in pieces, the first one a single byte (so that the scan commits the
//!   message header and the fast paths are never taken) or of random size,
//!   always passing the whole pending buffer from the same start;
//! - by rmpv (`rmpv::decode::read_value`), an independent MessagePack reader,
//!   whose value is mapped to a message per the MessagePack-RPC spec and the
//!   decoder's documented rules (limits, the message array as depth level 1,
//!   method names as str or bin decoded lossily).
//!
//! The raw-result mode (`Decoder::decode_with`) is crate-private and is not
//! reachable here; the codec's own unit tests compare it across paths.
//!
//! Everything is deterministic: each case draws from its own splitmix64
//! stream seeded from the test's seed and the case index. A failure names the
//! seed, the case, the limits and the input in hex, plus a shrunk input.

use std::panic::{catch_unwind, AssertUnwindSafe};

use foorpc::codec::{self, check_encoded, DecodeError, Decoder, DECODED_VALUE_SIZE};
use foorpc::{Limits, Message, Value};

mod common;
use common::same_message;

// ---------------------------------------------------------------------------
// Randomness
// ---------------------------------------------------------------------------

/// splitmix64: tiny, fast and good enough for input generation.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// The seed of case `i` of a test seeded with `seed`.
fn case_seed(seed: u64, i: usize) -> u64 {
    seed ^ (i as u64).wrapping_mul(0xd1b5_4a32_d192_ed03)
}

// ---------------------------------------------------------------------------
// Generating MessagePack (every width, not only the smallest form)
// ---------------------------------------------------------------------------

/// Pushes `marker` then the low `width` bytes of `v`, big-endian.
fn put_be(out: &mut Vec<u8>, marker: u8, v: u64, width: usize) {
    out.push(marker);
    out.extend_from_slice(&v.to_be_bytes()[8 - width..]);
}

/// An unsigned integer, in its smallest form half the time and otherwise in
/// any form that holds it (uint 8..64, and int 8..64 when it fits).
fn put_uint(rng: &mut Rng, out: &mut Vec<u8>, u: u64) {
    if rng.chance(50) {
        codec::write_uint(out, u);
        return;
    }
    let mut forms: Vec<(u8, usize)> = vec![(0xcf, 8)];
    if u <= u64::from(u32::MAX) {
        forms.push((0xce, 4));
    }
    if u <= u64::from(u16::MAX) {
        forms.push((0xcd, 2));
    }
    if u <= u64::from(u8::MAX) {
        forms.push((0xcc, 1));
    }
    if u <= i64::MAX as u64 {
        forms.push((0xd3, 8));
    }
    if u <= i32::MAX as u64 {
        forms.push((0xd2, 4));
    }
    if u <= i16::MAX as u64 {
        forms.push((0xd1, 2));
    }
    if u <= i8::MAX as u64 {
        forms.push((0xd0, 1));
        forms.push((u as u8, 0)); // positive fixint
    }
    let (marker, width) = rng.pick(&forms);
    put_be(out, marker, u, width);
}

/// A negative integer, in its smallest form half the time and otherwise in
/// any signed form that holds it.
fn put_neg(rng: &mut Rng, out: &mut Vec<u8>, i: i64) {
    debug_assert!(i < 0);
    if rng.chance(50) {
        codec::write_int(out, i);
        return;
    }
    let mut forms: Vec<(u8, usize)> = vec![(0xd3, 8)];
    if i >= i64::from(i32::MIN) {
        forms.push((0xd2, 4));
    }
    if i >= i64::from(i16::MIN) {
        forms.push((0xd1, 2));
    }
    if i >= i64::from(i8::MIN) {
        forms.push((0xd0, 1));
    }
    if i >= -32 {
        forms.push((i as u8, 0)); // negative fixint
    }
    let (marker, width) = rng.pick(&forms);
    put_be(out, marker, i as u64, width);
}

/// A length or count header: the smallest form that holds `n` most of the
/// time, otherwise any form that holds it. `fix` is (base marker, bound) of
/// the fix form, `m8` the 8-bit form if the type has one.
fn put_header(
    rng: &mut Rng,
    out: &mut Vec<u8>,
    n: usize,
    fix: Option<(u8, usize)>,
    m8: Option<u8>,
    m16: u8,
    m32: u8,
) {
    let mut forms: Vec<(u8, usize)> = Vec::new();
    if let Some((base, bound)) = fix {
        if n < bound {
            forms.push((base | n as u8, 0));
        }
    }
    if let Some(m) = m8 {
        if n <= 0xff {
            forms.push((m, 1));
        }
    }
    if n <= 0xffff {
        forms.push((m16, 2));
    }
    forms.push((m32, 4));
    let (marker, width) = if rng.chance(60) {
        forms[0]
    } else {
        rng.pick(&forms)
    };
    put_be(out, marker, n as u64, width);
}

const UINTS: &[u64] = &[
    0,
    1,
    31,
    127,
    128,
    255,
    256,
    32767,
    32768,
    65535,
    65536,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    i64::MAX as u64,
    1 << 63,
    u64::MAX,
];

const NEGS: &[i64] = &[
    -1,
    -31,
    -32,
    -33,
    -127,
    -128,
    -129,
    -32767,
    -32768,
    -32769,
    i32::MIN as i64 + 1,
    i32::MIN as i64,
    i32::MIN as i64 - 1,
    i64::MIN + 1,
    i64::MIN,
];

const F32S: &[u32] = &[
    0x0000_0000, // 0.0
    0x8000_0000, // -0.0
    0x3fc0_0000, // 1.5
    0x7fc0_0000, // NaN
    0xffc0_0001, // NaN with sign and payload
    0x7f80_0000, // inf
    0xff80_0000, // -inf
    0x0000_0001, // smallest subnormal
    0x7f7f_ffff, // f32::MAX
];

const F64S: &[u64] = &[
    0,
    1 << 63,
    0x3ff8_0000_0000_0000,
    0x7ff8_0000_0000_0000,
    0xfff0_0000_0000_0001,
    0x7ff0_0000_0000_0000,
    0xfff0_0000_0000_0000,
    1,
    0x7fef_ffff_ffff_ffff,
];

const METHOD_MSGIDS: &[u32] = &[0, 127, 128, 255, 256, 65535, 65536, u32::MAX];

fn random_uint(rng: &mut Rng) -> u64 {
    if rng.chance(60) {
        rng.pick(UINTS)
    } else {
        let shift = rng.below(64) as u32;
        rng.next() >> shift
    }
}

fn random_neg(rng: &mut Rng) -> i64 {
    if rng.chance(60) {
        rng.pick(NEGS)
    } else {
        let shift = rng.range(1, 63) as u32;
        -((rng.next() >> shift) as i64) - 1
    }
}

/// A length for str/bin/ext data: mostly short, sometimes on a form
/// boundary, rarely long enough to need a 16- or 32-bit header.
fn random_len(rng: &mut Rng) -> usize {
    match rng.below(1000) {
        0 => rng.pick(&[65535, 65536]),
        1..=599 => rng.below(6),
        600..=799 => rng.below(40),
        800..=959 => rng.pick(&[15, 16, 17, 31, 32, 33, 255, 256]),
        _ => rng.range(257, 600),
    }
}

/// Text for a str: ASCII, multi-byte UTF-8, or (sometimes) invalid UTF-8.
fn random_text(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mode = rng.below(10);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match mode {
            0 => out.push(rng.byte()), // anything, usually invalid UTF-8
            1 | 2 => {
                let c = rng.pick(&["é", "€", "😀", "a", "\u{0}"]);
                out.extend_from_slice(c.as_bytes());
            }
            _ => out.push(b'a' + rng.below(26) as u8),
        }
    }
    out.truncate(n); // may cut a multi-byte char: invalid UTF-8 too
    out
}

/// Count of elements of a generated array or map.
fn random_count(rng: &mut Rng) -> usize {
    match rng.below(10) {
        0..=7 => rng.below(5),
        8 => rng.range(5, 16),
        _ => rng.range(16, 18),
    }
}

/// A nil, bool, int or float (the items the fast paths take).
fn gen_scalar(rng: &mut Rng, out: &mut Vec<u8>) {
    match rng.below(6) {
        0 => out.push(0xc0),
        1 => out.push(if rng.chance(50) { 0xc3 } else { 0xc2 }),
        2 => {
            let u = random_uint(rng);
            put_uint(rng, out, u);
        }
        3 => {
            let i = random_neg(rng);
            put_neg(rng, out, i);
        }
        4 => {
            let bits = if rng.chance(60) {
                rng.pick(F32S)
            } else {
                rng.next() as u32
            };
            put_be(out, 0xca, u64::from(bits), 4);
        }
        _ => {
            let bits = if rng.chance(60) {
                rng.pick(F64S)
            } else {
                rng.next()
            };
            put_be(out, 0xcb, bits, 8);
        }
    }
}

/// One value of any type in any encoding width; containers nest at most
/// `depth` more levels. Records the offset of every item header in `marks`.
fn gen_value(rng: &mut Rng, out: &mut Vec<u8>, depth: usize, marks: &mut Vec<usize>) {
    marks.push(out.len());
    let kinds = if depth > 0 { 10 } else { 8 };
    match rng.below(kinds) {
        0..=3 => gen_scalar(rng, out),
        4 => {
            let n = random_len(rng);
            let data = random_text(rng, n);
            put_header(rng, out, n, Some((0xa0, 32)), Some(0xd9), 0xda, 0xdb);
            out.extend_from_slice(&data);
        }
        5 => {
            let n = random_len(rng);
            put_header(rng, out, n, None, Some(0xc4), 0xc5, 0xc6);
            out.extend((0..n).map(|_| rng.byte()));
        }
        6 | 7 => {
            let n = if rng.chance(50) {
                rng.pick(&[1, 2, 4, 8, 16])
            } else {
                random_len(rng)
            };
            let fixed = match n {
                1 => Some(0xd4),
                2 => Some(0xd5),
                4 => Some(0xd6),
                8 => Some(0xd7),
                16 => Some(0xd8),
                _ => None,
            };
            match fixed {
                Some(marker) if rng.chance(70) => out.push(marker),
                _ => put_header(rng, out, n, None, Some(0xc7), 0xc8, 0xc9),
            }
            out.push(rng.byte()); // ext type, any i8
            out.extend((0..n).map(|_| rng.byte()));
        }
        8 => {
            let n = random_count(rng);
            put_header(rng, out, n, Some((0x90, 16)), None, 0xdc, 0xdd);
            for _ in 0..n {
                gen_value(rng, out, depth - 1, marks);
            }
        }
        _ => {
            let n = random_count(rng);
            put_header(rng, out, n, Some((0x80, 16)), None, 0xde, 0xdf);
            for _ in 0..2 * n {
                gen_value(rng, out, depth - 1, marks);
            }
        }
    }
}

/// The message array's header: fixarray mostly, array16/32 sometimes.
fn put_envelope(rng: &mut Rng, out: &mut Vec<u8>, n: usize) {
    if rng.chance(85) && n < 16 {
        out.push(0x90 | n as u8);
    } else {
        put_header(rng, out, n, Some((0x90, 16)), None, 0xdc, 0xdd);
    }
}

/// The type tag: as foorpc writes it, in another integer form, or wrong.
fn put_tag(rng: &mut Rng, out: &mut Vec<u8>, tag: u8) {
    match rng.below(100) {
        0..=84 => out.push(tag),
        85..=92 => put_uint(rng, out, u64::from(tag)),
        _ => {
            let wrong: &[&[u8]] = &[
                &[0x03],
                &[0xff],
                &[0xc0],
                &[0xa1, b'0'],
                &[0xca, 0, 0, 0, 0],
                &[0xcc, 0x03],
                &[0xcf, 0, 0, 0, 1, 0, 0, 0, 0],
                &[0x90],
            ];
            out.extend_from_slice(rng.pick(wrong));
        }
    }
}

/// A msgid: the boundary values or random u32s in any integer form, or
/// (sometimes) out of range, negative or not an integer at all.
fn put_msgid(rng: &mut Rng, out: &mut Vec<u8>, marks: &mut Vec<usize>) {
    marks.push(out.len());
    if rng.chance(85) {
        let id = if rng.chance(70) {
            rng.pick(METHOD_MSGIDS)
        } else {
            let shift = rng.below(32) as u32;
            (rng.next() as u32) >> shift
        };
        put_uint(rng, out, u64::from(id));
        return;
    }
    match rng.below(6) {
        0 => {
            let u = u64::from(u32::MAX) + 1 + (rng.next() >> rng.range(1, 63));
            put_uint(rng, out, u);
        }
        1 => {
            let i = random_neg(rng);
            put_neg(rng, out, i);
        }
        2 => out.push(0xc0),
        3 => put_be(out, 0xcb, 1f64.to_bits(), 8),
        4 => out.extend_from_slice(&[0xa1, b'1']),
        _ => gen_value(rng, out, 1, marks),
    }
}

/// A method name: str (sometimes invalid UTF-8) in any width, bin, or a
/// value of the wrong type.
fn put_method(rng: &mut Rng, out: &mut Vec<u8>, marks: &mut Vec<usize>) {
    let roll = rng.below(100);
    if roll >= 90 {
        gen_value(rng, out, 1, marks);
        return;
    }
    marks.push(out.len());
    let n = if rng.chance(85) {
        rng.below(12)
    } else {
        rng.pick(&[0, 31, 32, 40, 255, 256])
    };
    let name = if rng.chance(85) {
        (0..n).map(|_| b'a' + rng.below(26) as u8).collect()
    } else {
        random_text(rng, n)
    };
    if roll < 80 {
        put_header(rng, out, n, Some((0xa0, 32)), Some(0xd9), 0xda, 0xdb);
    } else {
        put_header(rng, out, n, None, Some(0xc4), 0xc5, 0xc6);
    }
    out.extend_from_slice(&name);
}

/// Params: a fixarray of scalars (the fast path's shape) often, any array
/// of nested values, or a value of the wrong type.
fn put_params(rng: &mut Rng, out: &mut Vec<u8>, marks: &mut Vec<usize>) {
    let roll = rng.below(100);
    if roll >= 90 {
        gen_value(rng, out, 2, marks);
        return;
    }
    marks.push(out.len());
    if roll < 55 {
        let n = if rng.chance(90) {
            rng.below(16)
        } else {
            rng.range(16, 18)
        };
        put_envelope(rng, out, n);
        for _ in 0..n {
            marks.push(out.len());
            gen_scalar(rng, out);
        }
    } else {
        let n = random_count(rng);
        put_envelope(rng, out, n);
        for _ in 0..n {
            gen_value(rng, out, 4, marks);
        }
    }
}

/// An arity: the right one mostly, a wrong one sometimes.
fn arity(rng: &mut Rng, right: usize) -> usize {
    if rng.chance(92) {
        right
    } else {
        rng.pick(&[0, 1, 2, 3, 4, 5, 6])
    }
}

/// A request, response or notification (with the occasional wrong tag,
/// arity, msgid, method or params), or another value entirely.
fn gen_message(rng: &mut Rng, out: &mut Vec<u8>, marks: &mut Vec<usize>) {
    marks.push(out.len());
    match rng.below(100) {
        0..=29 => gen_fast_shaped(rng, out, marks),
        30..=59 => {
            let n = arity(rng, 4);
            put_envelope(rng, out, n);
            for i in 0..n {
                match i {
                    0 => put_tag(rng, out, 0),
                    1 => put_msgid(rng, out, marks),
                    2 => put_method(rng, out, marks),
                    3 => put_params(rng, out, marks),
                    _ => gen_value(rng, out, 1, marks),
                }
            }
        }
        60..=79 => {
            let n = arity(rng, 4);
            put_envelope(rng, out, n);
            for i in 0..n {
                match i {
                    0 => put_tag(rng, out, 1),
                    1 => put_msgid(rng, out, marks),
                    2 if rng.chance(75) => {
                        marks.push(out.len());
                        out.push(0xc0);
                    }
                    3 if rng.chance(65) => {
                        marks.push(out.len());
                        gen_scalar(rng, out);
                    }
                    _ => gen_value(rng, out, 3, marks),
                }
            }
        }
        80..=94 => {
            let n = arity(rng, 3);
            put_envelope(rng, out, n);
            for i in 0..n {
                match i {
                    0 => put_tag(rng, out, 2),
                    1 => put_method(rng, out, marks),
                    2 => put_params(rng, out, marks),
                    _ => gen_value(rng, out, 1, marks),
                }
            }
        }
        _ => gen_value(rng, out, 3, marks),
    }
}

/// A request or reply as foorpc writes the common ones, in the shape the
/// one-pass paths take: `[0, msgid, name, [scalars]]` (fixstr or str8 name,
/// sometimes invalid UTF-8) or `[1, msgid, nil, scalar]`.
fn gen_fast_shaped(rng: &mut Rng, out: &mut Vec<u8>, marks: &mut Vec<usize>) {
    let msgid = if rng.chance(60) {
        rng.pick(METHOD_MSGIDS)
    } else {
        rng.next() as u32
    };
    if rng.chance(55) {
        out.extend_from_slice(&[0x94, 0x00]);
        marks.push(out.len());
        codec::write_uint(out, u64::from(msgid));
        marks.push(out.len());
        let n = if rng.chance(90) {
            rng.below(12)
        } else {
            rng.pick(&[31, 32, 255])
        };
        if n < 32 && rng.chance(80) {
            out.push(0xa0 | n as u8);
        } else {
            out.extend_from_slice(&[0xd9, n as u8]);
        }
        if rng.chance(90) {
            out.extend((0..n).map(|_| b'a' + rng.below(26) as u8));
        } else {
            let name = random_text(rng, n);
            out.extend_from_slice(&name);
        }
        marks.push(out.len());
        let count = rng.below(16);
        out.push(0x90 | count as u8);
        for _ in 0..count {
            marks.push(out.len());
            gen_scalar(rng, out);
        }
    } else {
        out.extend_from_slice(&[0x94, 0x01]);
        marks.push(out.len());
        codec::write_uint(out, u64::from(msgid));
        marks.push(out.len());
        out.push(0xc0);
        marks.push(out.len());
        gen_scalar(rng, out);
    }
}

/// A message, sometimes followed by another one or by a few random bytes
/// (the decoder must return only the first message).
fn gen_stream(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    let mut marks = Vec::new();
    gen_message(rng, &mut out, &mut marks);
    match rng.below(100) {
        0..=14 => gen_message(rng, &mut out, &mut marks),
        15..=24 => out.extend((0..rng.range(1, 4)).map(|_| rng.byte())),
        _ => {}
    }
    out
}

// ---------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------

const MARKERS: &[u8] = &[
    0xc1, 0xdc, 0xdd, 0xde, 0xdf, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xd9, 0xda, 0xdb, 0xd4, 0xd8,
    0x9f, 0x8f, 0xbf, 0x94, 0x93, 0x90, 0x00, 0x01, 0x02, 0xc0, 0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd3,
    0xca, 0xcb, 0xff, 0x7f,
];

/// Headers announcing (nearly) 4 GiB or 4G elements, or just over common
/// limits.
const HUGE: &[&[u8]] = &[
    &[0xc6, 0xff, 0xff, 0xff, 0xff],
    &[0xdb, 0xff, 0xff, 0xff, 0xff],
    &[0xdb, 0x04, 0x00, 0x00, 0x00],
    &[0xc9, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[0xdd, 0xff, 0xff, 0xff, 0xff],
    &[0xdd, 0x00, 0x10, 0x00, 0x00],
    &[0xdf, 0xff, 0xff, 0xff, 0xff],
    &[0xdf, 0x80, 0x00, 0x00, 0x00],
    &[0xdc, 0xff, 0xff],
    &[0xde, 0xff, 0xff],
    &[0xc5, 0xff, 0xff],
    &[0xda, 0xff, 0xff],
];

/// Applies one random mutation to `bytes`; `marks` are item offsets in the
/// original encoding (still roughly right after earlier mutations), `other`
/// a second valid encoding to splice with.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>, marks: &[usize], other: &[u8]) {
    let len = bytes.len();
    let at = |rng: &mut Rng| if len == 0 { 0 } else { rng.below(len) };
    match rng.below(10) {
        0 if len > 0 => {
            let i = at(rng);
            bytes[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = at(rng);
            bytes[i] = if rng.chance(60) {
                rng.pick(MARKERS)
            } else {
                rng.byte()
            };
        }
        2 => bytes.truncate(at(rng)),
        3 => {
            let i = rng.below(len + 1);
            let n = rng.range(1, 4);
            let ins: Vec<u8> = (0..n)
                .map(|_| {
                    if rng.chance(50) {
                        rng.pick(MARKERS)
                    } else {
                        rng.byte()
                    }
                })
                .collect();
            bytes.splice(i..i, ins);
        }
        4 if len > 0 => {
            let i = at(rng);
            let n = rng.range(1, 4).min(len - i);
            bytes.drain(i..i + n);
        }
        5 => {
            // Splice: a prefix of this message, a suffix of the other.
            let i = rng.below(len + 1);
            let j = rng.below(other.len() + 1);
            bytes.truncate(i);
            bytes.extend_from_slice(&other[j..]);
        }
        6 => bytes.extend_from_slice(other),
        7 | 8 => {
            // A huge length: rewrite the length field of an item that has
            // one, or put a huge header in place of (or before) an item.
            let i = match marks.iter().copied().filter(|&m| m < len).count() {
                0 => rng.below(len + 1),
                n => marks
                    .iter()
                    .copied()
                    .filter(|&m| m < len)
                    .nth(rng.below(n))
                    .unwrap(),
            };
            let len_bytes = match bytes.get(i) {
                Some(0xc4 | 0xc7 | 0xd9) => 1,
                Some(0xc5 | 0xc8 | 0xda | 0xdc | 0xde) => 2,
                Some(0xc6 | 0xc9 | 0xdb | 0xdd | 0xdf) => 4,
                _ => 0,
            };
            if len_bytes > 0 && i + 1 + len_bytes <= len && rng.chance(60) {
                let fill = rng.pick(&[0xff, 0x7f, 0x10]);
                for b in &mut bytes[i + 1..i + 1 + len_bytes] {
                    *b = fill;
                }
                bytes[i + 1] = rng.pick(&[0xff, 0x7f, 0x04, 0x01]);
            } else {
                let huge = rng.pick(HUGE);
                let end = if rng.chance(50) { i } else { (i + 1).min(len) };
                bytes.splice(i..end, huge.iter().copied());
            }
        }
        _ => {
            // Duplicate a chunk in place.
            let i = rng.below(len + 1);
            let n = rng.range(1, 8).min(len - i);
            let chunk: Vec<u8> = bytes[i..i + n].to_vec();
            bytes.splice(i..i, chunk);
        }
    }
}

// ---------------------------------------------------------------------------
// Decoding every way
// ---------------------------------------------------------------------------

type Outcome = Result<Option<(Message, usize)>, DecodeError>;

fn limits(max_message_size: usize, max_depth: usize) -> Limits {
    Limits {
        max_message_size,
        max_depth,
        ..Limits::default()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Outcomes compare by their `Debug` text: exact, and NaN equals NaN.
fn show(o: &Outcome) -> String {
    format!("{o:?}")
}

/// The whole buffer at once, on a fresh decoder (fast paths allowed).
fn decode_whole(bytes: &[u8], l: &Limits) -> Outcome {
    Decoder::new(l).decode(bytes)
}

/// The buffer in growing pieces, the first `first` bytes long, always
/// passing everything received so far from the same start, until the
/// decoder returns a message or an error or the bytes run out.
fn decode_pieces(bytes: &[u8], l: &Limits, first: usize, rng: &mut Rng) -> Outcome {
    let mut d = Decoder::new(l);
    let mut k = first.min(bytes.len());
    loop {
        let r = d.decode(&bytes[..k]);
        if matches!(r, Ok(None)) && k < bytes.len() {
            let step = match rng.below(10) {
                0..=5 => rng.range(1, 4),
                6..=8 => rng.range(1, 32),
                _ => rng.range(1, 512),
            };
            k = (k + step).min(bytes.len());
            continue;
        }
        return r;
    }
}

/// A short name of an outcome's kind, for failure tags.
fn kind_of(o: &Outcome) -> &'static str {
    match o {
        Ok(None) => "incomplete",
        Ok(Some(_)) => "message",
        Err(DecodeError::TooLarge { .. }) => "TooLarge",
        Err(DecodeError::TooDeep { .. }) => "TooDeep",
        Err(DecodeError::TooLargeDecoded { .. }) => "TooLargeDecoded",
        Err(DecodeError::Malformed(_)) => "Malformed",
        Err(DecodeError::Invalid { .. }) => "Invalid",
    }
}

/// Whole-buffer and piecewise decodes (first piece 1 byte, and random)
/// give the same outcome, and after a message the same decoder decodes the
/// rest as a fresh one does.
fn paths_agree(bytes: &[u8], l: &Limits, seed: u64) -> Result<(), String> {
    let whole = decode_whole(bytes, l);
    let mut rng = Rng::new(seed);
    let one = decode_pieces(bytes, l, 1, &mut rng);
    if show(&whole) != show(&one) {
        return Err(format!(
            "[paths differ: whole {}, pieces {}] whole buffer: {}\n    first piece 1 byte: {}",
            kind_of(&whole),
            kind_of(&one),
            show(&whole),
            show(&one)
        ));
    }
    let first = rng.range(1, bytes.len().max(1));
    let random = decode_pieces(bytes, l, first, &mut rng);
    if show(&whole) != show(&random) {
        return Err(format!(
            "[paths differ: whole {}, pieces {}] whole buffer: {}\n    first piece {first} bytes: {}",
            kind_of(&whole),
            kind_of(&random),
            show(&whole),
            show(&random)
        ));
    }
    if let Ok(Some((_, n))) = &whole {
        let n = *n;
        if n == 0 || n > bytes.len() {
            return Err(format!("[bad length] decoded {n} of {} bytes", bytes.len()));
        }
        let mut d = Decoder::new(l);
        d.decode(bytes)
            .map_err(|e| format!("[not repeatable] {e}"))?;
        let reused = d.decode(&bytes[n..]);
        let fresh = decode_whole(&bytes[n..], l);
        if show(&reused) != show(&fresh) {
            return Err(format!(
                "[state after a message] next message on the same decoder: {}\n    on a fresh one: {}",
                show(&reused),
                show(&fresh)
            ));
        }
    }
    Ok(())
}

/// Nesting depth of a value as the decoder counts it: every array or map
/// (empty ones too) is a level; scalars add none.
/// What `v` costs decoded, counted independently of the decoder's scan:
/// `DECODED_VALUE_SIZE` per array element and per map key or value, plus
/// the bytes of every str, bin and ext.
fn decoded_size(v: &Value) -> usize {
    match v {
        Value::Array(items) => {
            items.len() * DECODED_VALUE_SIZE + items.iter().map(decoded_size).sum::<usize>()
        }
        Value::Map(entries) => {
            2 * entries.len() * DECODED_VALUE_SIZE
                + entries
                    .iter()
                    .map(|(k, v)| decoded_size(k) + decoded_size(v))
                    .sum::<usize>()
        }
        Value::String(s) => s.as_bytes().len(),
        Value::Binary(b) => b.len(),
        Value::Ext(_, b) => b.len(),
        _ => 0,
    }
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| depth(k).max(depth(v)))
                .max()
                .unwrap_or(0)
        }
        _ => 0,
    }
}

/// rmpv's reading of the first value in `bytes`, and how many bytes it took.
///
/// rmpv 1.x reads the reserved marker 0xc1 as nil; the MessagePack spec says
/// it is never used and the decoder documents it as `Malformed`, so a value
/// with 0xc1 in an item position counts as unreadable here.
fn rmpv_first(bytes: &[u8]) -> Result<(Value, usize), String> {
    let mut rd = bytes;
    match rmpv::decode::read_value(&mut rd) {
        Ok(_) if reserved_marker_in(bytes) => Err("reserved marker 0xc1".to_owned()),
        Ok(v) => Ok((v, bytes.len() - rd.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether the first value in `bytes` has the reserved marker 0xc1 where an
/// item starts, walking item sizes from rmp's marker table (not the
/// codec's).
fn reserved_marker_in(bytes: &[u8]) -> bool {
    use rmp::Marker as M;
    let len_at = |pos: usize, n: usize| -> Option<usize> {
        let field = bytes.get(pos + 1..pos + 1 + n)?;
        Some(
            field
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b)),
        )
    };
    let mut pos = 0;
    let mut owed: usize = 1;
    while owed > 0 {
        let Some(&b) = bytes.get(pos) else {
            return false;
        };
        owed -= 1;
        let (size, children) = match M::from_u8(b) {
            M::Reserved => return true,
            M::FixPos(_) | M::FixNeg(_) | M::Null | M::False | M::True => (Some(1), 0),
            M::U8 | M::I8 => (Some(2), 0),
            M::U16 | M::I16 => (Some(3), 0),
            M::U32 | M::I32 | M::F32 => (Some(5), 0),
            M::U64 | M::I64 | M::F64 => (Some(9), 0),
            M::FixStr(n) => (Some(1 + usize::from(n)), 0),
            M::Str8 | M::Bin8 => (len_at(pos, 1).map(|n| 2 + n), 0),
            M::Str16 | M::Bin16 => (len_at(pos, 2).map(|n| 3 + n), 0),
            M::Str32 | M::Bin32 => (len_at(pos, 4).map(|n| 5 + n), 0),
            M::FixExt1 => (Some(3), 0),
            M::FixExt2 => (Some(4), 0),
            M::FixExt4 => (Some(6), 0),
            M::FixExt8 => (Some(10), 0),
            M::FixExt16 => (Some(18), 0),
            M::Ext8 => (len_at(pos, 1).map(|n| 3 + n), 0),
            M::Ext16 => (len_at(pos, 2).map(|n| 4 + n), 0),
            M::Ext32 => (len_at(pos, 4).map(|n| 6 + n), 0),
            M::FixArray(n) => (Some(1), usize::from(n)),
            M::FixMap(n) => (Some(1), 2 * usize::from(n)),
            M::Array16 => (Some(3), len_at(pos, 2).unwrap_or(0)),
            M::Array32 => (Some(5), len_at(pos, 4).unwrap_or(0)),
            M::Map16 => (Some(3), 2 * len_at(pos, 2).unwrap_or(0)),
            M::Map32 => (Some(5), 2 * len_at(pos, 4).unwrap_or(0)),
        };
        let Some(size) = size else {
            return false;
        };
        pos += size;
        owed += children;
    }
    false
}

fn msgid_of(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// A method name per the decoder's documented rule: str or bin, lossily.
fn method_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Value::Binary(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// The message a value is per the MessagePack-RPC spec, if any.
fn spec_message(v: &Value) -> Option<Message> {
    let items = v.as_array()?;
    match (items.first()?.as_u64()?, items.len()) {
        (0, 4) => Some(Message::Request {
            msgid: msgid_of(&items[1])?,
            method: method_of(&items[2])?,
            params: items[3].as_array()?.clone(),
        }),
        (1, 4) => Some(Message::Response {
            msgid: msgid_of(&items[1])?,
            error: items[2].clone(),
            result: items[3].clone(),
        }),
        (2, 3) => Some(Message::Notification {
            method: method_of(&items[1])?,
            params: items[2].as_array()?.clone(),
        }),
        _ => None,
    }
}

/// The msgid an `Invalid` error must carry: a request's (tag 0), when it
/// has one in range.
fn invalid_msgid(v: &Value) -> Option<u32> {
    let items = v.as_array()?;
    if items.len() >= 2 && items[0].as_u64() == Some(0) {
        msgid_of(&items[1])
    } else {
        None
    }
}

/// The decoder's whole-buffer outcome is what rmpv and the spec say:
/// - a message only where rmpv reads the same bytes as that spec message
///   within the limits, and every such message is accepted;
/// - incomplete only where rmpv cannot read a value;
/// - `Invalid` only for well-formed MessagePack within the limits that is
///   not a spec message (with the request's msgid when it has one);
/// - `TooLarge`/`TooDeep` only where the value (if rmpv reads one) is over
///   the size/depth limit; `Malformed` only where rmpv fails too.
fn matches_rmpv(bytes: &[u8], l: &Limits) -> Result<(), String> {
    let ours = decode_whole(bytes, l);
    let theirs = rmpv_first(bytes);
    let fail = |why: &str| {
        let theirs = match &theirs {
            Ok((v, n)) => format!("Ok({n} bytes, depth {}: {v:?})", depth(v)),
            Err(e) => format!("Err({e})"),
        };
        Err(format!(
            "[rmpv: {why}] decoder: {}\n    rmpv: {theirs}",
            show(&ours)
        ))
    };
    let (v, n) = match (&ours, &theirs) {
        (_, Ok((v, n))) => (v, *n),
        (Ok(Some(_)), Err(_)) => return fail("decoder accepts what rmpv cannot read"),
        (Err(DecodeError::Invalid { .. }), Err(_)) => {
            return fail("decoder says well-formed but not RPC, rmpv cannot read it")
        }
        (_, Err(_)) => return Ok(()),
    };
    let within =
        n <= l.max_message_size && depth(v) <= l.max_depth && decoded_size(v) <= l.max_decoded_size;
    let spec = spec_message(v);
    match &ours {
        Ok(Some((msg, used))) => {
            if *used != n {
                return fail("different lengths");
            }
            if !within {
                return fail("accepted over the limits");
            }
            match &spec {
                Some(want) if same_message(msg, want) => Ok(()),
                Some(_) => fail("different messages"),
                None => fail("accepted a value that is not a spec message"),
            }
        }
        Ok(None) => fail("incomplete although rmpv reads a whole value"),
        Err(DecodeError::Invalid { msgid, .. }) => {
            if !within {
                fail("Invalid for a value over the limits")
            } else if spec.is_some() {
                fail("rejected a valid spec message")
            } else if *msgid != invalid_msgid(v) {
                fail("wrong msgid in the Invalid error")
            } else {
                Ok(())
            }
        }
        Err(DecodeError::TooLarge { .. }) if n <= l.max_message_size => {
            fail("TooLarge for a value within the size limit")
        }
        Err(DecodeError::TooDeep { .. }) if depth(v) <= l.max_depth => {
            fail("TooDeep for a value within the depth limit")
        }
        Err(DecodeError::TooLargeDecoded { .. }) if decoded_size(v) <= l.max_decoded_size => {
            fail("TooLargeDecoded for a value within the decoded size limit")
        }
        Err(DecodeError::Malformed(_)) => fail("Malformed, yet rmpv reads a value"),
        Err(_) => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// Running cases
// ---------------------------------------------------------------------------

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic".to_owned()
    }
}

/// Runs a check, turning a panic into a failure.
fn guarded(check: &dyn Fn(&[u8]) -> Result<(), String>, bytes: &[u8]) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| check(bytes)))
        .unwrap_or_else(|p| Err(format!("[PANIC] {}", panic_text(&*p))))
}

/// The tag of a failure ("[paths differ]", "[PANIC]", ...), to shrink an
/// input while it fails the same way.
fn failure_kind(why: &str) -> &str {
    why.split(']').next().unwrap_or(why)
}

/// Deletes chunks of `bytes` while the check still fails the same way.
fn shrink(check: &dyn Fn(&[u8]) -> Result<(), String>, bytes: &[u8], kind: &str) -> Vec<u8> {
    let still_fails =
        |b: &[u8]| matches!(guarded(check, b), Err(why) if failure_kind(&why) == kind);
    let mut cur = bytes.to_vec();
    let mut chunk = (cur.len() / 2).max(1);
    let mut budget = 4000;
    while budget > 0 && !cur.is_empty() {
        let mut progress = false;
        let mut i = 0;
        while i + chunk <= cur.len() && budget > 0 {
            budget -= 1;
            let mut candidate = cur.clone();
            candidate.drain(i..i + chunk);
            if still_fails(&candidate) {
                cur = candidate;
                progress = true;
            } else {
                i += chunk;
            }
        }
        if !progress {
            if chunk == 1 {
                break;
            }
            chunk /= 2;
        }
    }
    cur
}

/// Failures of one test, reported together at its end: how many of each
/// kind, and the first two inputs of each kind with a shrunk version.
struct Findings {
    test: &'static str,
    seed: u64,
    cases: usize,
    kinds: Vec<(String, usize)>,
    reports: Vec<String>,
}

impl Findings {
    fn new(test: &'static str, seed: u64) -> Findings {
        Findings {
            test,
            seed,
            cases: 0,
            kinds: Vec::new(),
            reports: Vec::new(),
        }
    }

    /// Runs `check` on `bytes` (case `case`, under `l`), recording a
    /// failure or panic with the input and a shrunk input that fails the
    /// same way.
    fn run(
        &mut self,
        case: usize,
        l: &Limits,
        bytes: &[u8],
        check: &dyn Fn(&[u8]) -> Result<(), String>,
    ) {
        self.cases += 1;
        let Err(why) = guarded(check, bytes) else {
            return;
        };
        let kind = failure_kind(&why).to_owned();
        let seen = match self.kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.kinds.push((kind.clone(), 1));
                1
            }
        };
        if seen > 2 || self.reports.len() >= 12 {
            return;
        }
        let small = shrink(check, bytes, &kind);
        let small_why = guarded(check, &small).err().unwrap_or_default();
        self.reports.push(format!(
            "seed {:#018x} case {case}, max_message_size {}, max_depth {}:\n  input  {}\n  {why}\n  shrunk {}\n  {small_why}",
            self.seed,
            l.max_message_size,
            l.max_depth,
            hex(bytes),
            hex(&small),
        ));
    }

    fn finish(self) {
        let failed: usize = self.kinds.iter().map(|(_, n)| n).sum();
        let kinds: Vec<String> = self
            .kinds
            .iter()
            .map(|(k, n)| format!("{n} x {k}]"))
            .collect();
        assert!(
            self.reports.is_empty(),
            "{}: {failed} of {} checks failed ({}); first ones:\n\n{}",
            self.test,
            self.cases,
            kinds.join(", "),
            self.reports.join("\n\n")
        );
    }
}

/// Runs a test body on a thread with a large stack: rmpv and the decoder
/// recurse once per nesting level, and debug builds have big frames.
fn with_big_stack(body: impl FnOnce() + Send + 'static) {
    let handle = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(body)
        .expect("spawn test thread");
    if let Err(p) = handle.join() {
        std::panic::resume_unwind(p);
    }
}

/// Limits around an input: the defaults, exactly its first value's size,
/// depth and decoded size (as rmpv reads it), one byte or one level less,
/// and random ones.
fn limit_variants(rng: &mut Rng, bytes: &[u8]) -> Vec<Limits> {
    let (size, deep, decoded) = match rmpv_first(bytes) {
        Ok((v, n)) => (n, depth(&v), decoded_size(&v)),
        Err(_) => (bytes.len(), 3, bytes.len() * DECODED_VALUE_SIZE),
    };
    let with_decoded = |max_decoded_size: usize| Limits {
        max_decoded_size,
        ..Limits::default()
    };
    vec![
        Limits::default(),
        limits(size, deep),
        limits(size.saturating_sub(1), deep),
        limits(size, deep.saturating_sub(1)),
        limits(rng.below(bytes.len() + 3), rng.below(6)),
        with_decoded(decoded),
        with_decoded(decoded.saturating_sub(1)),
        with_decoded(rng.below(decoded + 2)),
    ]
}

/// Item lengths of nil/bool/int/float from their first byte.
fn scalar_len(b: u8) -> Option<usize> {
    match b {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Some(1),
        0xcc | 0xd0 => Some(2),
        0xcd | 0xd1 => Some(3),
        0xce | 0xd2 | 0xca => Some(5),
        0xcf | 0xd3 | 0xcb => Some(9),
        _ => None,
    }
}

/// Whether `buf` has the shape the codec documents for its one-pass paths
/// (`[0, msgid, name, [scalars]]` or `[1, msgid, nil, scalar]`, msgid a
/// positive fixint or uint 8/16/32, name a fixstr or str8, within the
/// limits): only to show that the generator exercises them.
fn fast_path_shape(buf: &[u8], l: &Limits) -> bool {
    let id_len = match (buf.first(), buf.get(2)) {
        (Some(0x94), Some(0x00..=0x7f)) => 1,
        (Some(0x94), Some(0xcc)) => 2,
        (Some(0x94), Some(0xcd)) => 3,
        (Some(0x94), Some(0xce)) => 5,
        _ => return false,
    };
    let at = 2 + id_len;
    let item = |pos: usize| {
        let n = scalar_len(*buf.get(pos)?)?;
        (pos + n <= buf.len()).then_some(n)
    };
    let end = match buf[1] {
        0x00 if l.max_depth >= 2 => {
            let (name_at, name_len) = match buf.get(at) {
                Some(&b @ 0xa0..=0xbf) => (at + 1, usize::from(b & 0x1f)),
                Some(0xd9) => match buf.get(at + 1) {
                    Some(&n) => (at + 2, usize::from(n)),
                    None => return false,
                },
                _ => return false,
            };
            let params_at = name_at + name_len;
            let count = match buf.get(params_at) {
                Some(&b @ 0x90..=0x9f) => usize::from(b & 0x0f),
                _ => return false,
            };
            let mut end = params_at + 1;
            for _ in 0..count {
                match item(end) {
                    Some(n) => end += n,
                    None => return false,
                }
            }
            end
        }
        0x01 if l.max_depth >= 1 && buf.get(at) == Some(&0xc0) => match item(at + 1) {
            Some(n) => at + 1 + n,
            None => return false,
        },
        _ => return false,
    };
    end <= l.max_message_size
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

const CASES: usize = 3000;

/// The one-pass fast paths (taken only for a message decoded from the start
/// of a fresh buffer) must give exactly what the incremental scan and parse
/// give: a decoder fed the same bytes in pieces (first piece one byte, so
/// the fast paths are bypassed; or a random first piece) returns the same
/// message, the same incomplete, or the same error, for requests, replies
/// and notifications of every integer/float/str/bin/ext width, boundary
/// and out-of-range msgids, wrong arities and tags, under limits cut at
/// the message's exact size and depth.
#[test]
fn fast_paths_agree_with_the_incremental_scan() {
    with_big_stack(|| {
        let seed = 0x5eed_0001_fa57_0001;
        let mut findings = Findings::new("fast_paths_agree_with_the_incremental_scan", seed);
        let mut fast_shaped = 0;
        let mut accepted = 0;
        for case in 0..CASES {
            let cs = case_seed(seed, case);
            let mut rng = Rng::new(cs);
            let bytes = gen_stream(&mut rng);
            if fast_path_shape(&bytes, &Limits::default()) {
                fast_shaped += 1;
            }
            if matches!(decode_whole(&bytes, &Limits::default()), Ok(Some(_))) {
                accepted += 1;
            }
            for (k, l) in limit_variants(&mut rng, &bytes).iter().enumerate() {
                let piece_seed = cs ^ k as u64;
                findings.run(case, l, &bytes, &|b| paths_agree(b, l, piece_seed));
            }
        }
        findings.finish();
        assert!(
            fast_shaped * 4 > CASES,
            "only {fast_shaped} of {CASES} inputs have the fast paths' shape"
        );
        assert!(
            accepted * 2 > CASES,
            "only {accepted} of {CASES} inputs decode"
        );
    });
}

/// An independent reader decides: whatever the decoder accepts, rmpv reads
/// from the same bytes as that very spec message ([0, msgid, method,
/// params], [1, msgid, error, result], [2, method, params]) with the same
/// length and within the limits; whatever rmpv reads as a spec message
/// within the limits, the decoder accepts; and each error kind only where
/// rmpv agrees it applies (see `matches_rmpv`).
#[test]
fn decoder_agrees_with_rmpv_and_the_spec() {
    with_big_stack(|| {
        let seed = 0x5eed_0002_0e4f_0002;
        let mut findings = Findings::new("decoder_agrees_with_rmpv_and_the_spec", seed);
        let mut spec_messages = 0;
        for case in 0..CASES {
            let mut rng = Rng::new(case_seed(seed, case));
            let bytes = gen_stream(&mut rng);
            if let Ok((v, _)) = rmpv_first(&bytes) {
                if spec_message(&v).is_some() {
                    spec_messages += 1;
                }
            }
            for l in limit_variants(&mut rng, &bytes) {
                findings.run(case, &l, &bytes, &|b| matches_rmpv(b, &l));
            }
        }
        findings.finish();
        assert!(
            spec_messages * 2 > CASES,
            "only {spec_messages} of {CASES} inputs are spec messages"
        );
    });
}

/// Mutated encodings (bytes flipped or replaced by markers, truncated,
/// bytes inserted or deleted, two messages spliced or concatenated, length
/// headers set to huge values) never panic, decode the same whole and in
/// pieces, and still agree with rmpv.
#[test]
fn mutated_messages_never_panic_and_paths_agree() {
    with_big_stack(|| {
        let seed = 0x5eed_0003_3a7e_0003;
        let mut findings = Findings::new("mutated_messages_never_panic_and_paths_agree", seed);
        for case in 0..CASES {
            let cs = case_seed(seed, case);
            let mut rng = Rng::new(cs);
            let mut bytes = Vec::new();
            let mut marks = Vec::new();
            gen_message(&mut rng, &mut bytes, &mut marks);
            let mut other = Vec::new();
            gen_message(&mut rng, &mut other, &mut Vec::new());
            for _ in 0..rng.range(1, 3) {
                mutate(&mut rng, &mut bytes, &marks, &other);
            }
            let mut all = vec![
                Limits::default(),
                limits(1 << 20, 128),
                limits(64, 4),
                limits(bytes.len(), 3),
                limits(usize::MAX, 16),
                limits(rng.below(bytes.len() + 2), rng.below(4)),
            ];
            for k in 0..2 {
                let l = all.swap_remove(rng.below(all.len()));
                let piece_seed = cs ^ k;
                findings.run(case, &l, &bytes, &|b| {
                    paths_agree(b, &l, piece_seed)?;
                    matches_rmpv(b, &l)
                });
            }
        }
        findings.finish();
    });
}

/// Every multi-byte header (ints, floats, str/bin/ext/array/map lengths,
/// small and huge) cut at every byte, where items are still owed after it
/// (a notification's method, a request's method, a param before another):
/// decoded whole, one byte at a time and in random pieces, under limits the
/// header breaks or not, the outcome is the same. Mutations reach these
/// splits only by chance; here each one is tried.
#[test]
fn cut_headers_decode_the_same_whole_and_in_pieces() {
    with_big_stack(|| {
        let seed = 0x5eed_0006_c0de_0006;
        let mut findings = Findings::new("cut_headers_decode_the_same_whole_and_in_pieces", seed);
        let prefixes: &[&[u8]] = &[
            &[0x93, 0x02],
            &[0x94, 0x00, 0x01],
            &[0x94, 0x00, 0x01, 0xa1, b'm', 0x92],
        ];
        let mut headers: Vec<Vec<u8>> = Vec::new();
        for marker in [0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd1, 0xd2, 0xd3, 0xca, 0xcb] {
            let mut h = vec![marker];
            h.extend(std::iter::repeat(0x7f).take(scalar_len(marker).unwrap() - 1));
            headers.push(h);
        }
        for marker in 0xd4..=0xd8u8 {
            headers.push(vec![marker, 0x01]);
        }
        for (markers, width) in [
            ([0xc4, 0xd9, 0xc7], 1),
            ([0xc5, 0xda, 0xc7], 2),
            ([0xc6, 0xdb, 0xc9], 4),
        ] {
            for marker in markers {
                for fill in [0x00, 0x01, 0x7f, 0xff] {
                    let mut h = vec![marker];
                    h.extend(std::iter::repeat(fill).take(width));
                    if matches!(marker, 0xc7..=0xc9) {
                        h.push(0x05); // ext type
                    }
                    headers.push(h);
                }
            }
        }
        for (m16, m32) in [(0xdc, 0xdd), (0xde, 0xdf)] {
            for fill in [0x00, 0x01, 0x7f, 0xff] {
                headers.push(vec![m16, fill, fill]);
                headers.push(vec![m32, fill, fill, fill, fill]);
            }
        }
        let mut case = 0;
        for prefix in prefixes {
            for header in &headers {
                let full = [&prefix[..], header].concat();
                for cut in prefix.len() + 1..=full.len() {
                    let bytes = &full[..cut];
                    for l in [
                        Limits::default(),
                        limits(full.len() + 1, 128),
                        limits(16, 128),
                        limits(1 << 20, 1),
                        limits(1 << 20, 2),
                    ] {
                        let piece_seed = case_seed(seed, case);
                        findings.run(case, &l, bytes, &|b| {
                            let whole = decode_whole(b, &l);
                            let mut d = Decoder::new(&l);
                            let mut bytewise = Ok(None);
                            for k in 1..=b.len() {
                                bytewise = d.decode(&b[..k]);
                                if !matches!(bytewise, Ok(None)) {
                                    break;
                                }
                            }
                            if show(&whole) != show(&bytewise) {
                                return Err(format!(
                                    "[paths differ: whole {}, bytewise {}] whole buffer: {}\n    one byte at a time: {}",
                                    kind_of(&whole),
                                    kind_of(&bytewise),
                                    show(&whole),
                                    show(&bytewise)
                                ));
                            }
                            paths_agree(b, &l, piece_seed)
                        });
                        case += 1;
                    }
                }
            }
        }
        findings.finish();
    });
}

/// A valid message cut anywhere is incomplete (`Ok(None)`), never an error
/// and never a message: for a fresh decoder given the prefix, and for one
/// decoder fed growing prefixes, which then returns the whole message. Also
/// under limits exactly at the message's size and depth.
#[test]
fn truncated_valid_messages_are_incomplete() {
    with_big_stack(|| {
        let seed = 0x5eed_0004_c07a_0004;
        let mut findings = Findings::new("truncated_valid_messages_are_incomplete", seed);
        let mut valid = 0;
        let mut case = 0;
        while valid < CASES / 2 {
            let mut rng = Rng::new(case_seed(seed, case));
            let mut bytes = Vec::new();
            gen_message(&mut rng, &mut bytes, &mut Vec::new());
            let Ok((v, n)) = rmpv_first(&bytes) else {
                case += 1;
                continue;
            };
            if n != bytes.len() || spec_message(&v).is_none() || depth(&v) > 128 {
                case += 1;
                continue;
            }
            valid += 1;
            let len = bytes.len();
            let mut cuts: Vec<usize> = if len <= 80 {
                (0..len).collect()
            } else {
                let mut c: Vec<usize> = (0..40).chain(len - 8..len).collect();
                c.extend((0..32).map(|_| rng.below(len)));
                c
            };
            cuts.sort_unstable();
            cuts.dedup();
            for l in [Limits::default(), limits(len, depth(&v))] {
                let check = |b: &[u8]| -> Result<(), String> {
                    let mut d = Decoder::new(&l);
                    for &cut in &cuts {
                        let prefix = &b[..cut.min(b.len())];
                        let fresh = decode_whole(prefix, &l);
                        let resumed = d.decode(prefix);
                        if !matches!(fresh, Ok(None)) || !matches!(resumed, Ok(None)) {
                            return Err(format!(
                                "[prefix not incomplete] first {cut} bytes: fresh decoder {}, resumed {}",
                                show(&fresh),
                                show(&resumed)
                            ));
                        }
                    }
                    match d.decode(b) {
                        Ok(Some((_, n))) if n == b.len() => Ok(()),
                        other => Err(format!(
                            "[whole not decoded] after the prefixes: {}",
                            show(&other)
                        )),
                    }
                };
                findings.run(case, &l, &bytes, &check);
            }
            case += 1;
        }
        findings.finish();
    });
}

/// `check_encoded` accepts exactly the byte strings that rmpv reads as one
/// complete value using every byte (an array when `array` is set), at most
/// `max_message_size` bytes and nested at most `max_depth - 1` levels (the
/// value travels inside the message array), for random bytes, encoded
/// values and param lists of every width, and mutations of them; a value
/// over only one limit gets that limit's error.
#[test]
fn check_encoded_matches_rmpv() {
    with_big_stack(|| {
        let seed = 0x5eed_0005_c4ec_0005;
        let mut findings = Findings::new("check_encoded_matches_rmpv", seed);
        let mut accepted = 0;
        for case in 0..CASES {
            let mut rng = Rng::new(case_seed(seed, case));
            let mut bytes = Vec::new();
            let mut marks = Vec::new();
            match rng.below(10) {
                0..=2 => {
                    let n = rng.below(13);
                    bytes.extend((0..n).map(|_| {
                        if rng.chance(50) {
                            rng.pick(MARKERS)
                        } else {
                            rng.byte()
                        }
                    }));
                }
                roll => {
                    if rng.chance(50) {
                        put_params(&mut rng, &mut bytes, &mut marks);
                    } else {
                        gen_value(&mut rng, &mut bytes, 3, &mut marks);
                    }
                    if roll >= 7 {
                        let mut other = Vec::new();
                        gen_value(&mut rng, &mut other, 1, &mut Vec::new());
                        mutate(&mut rng, &mut bytes, &marks, &other);
                    }
                }
            }
            let (deep, decoded) = rmpv_first(&bytes)
                .map(|(v, _)| (depth(&v), decoded_size(&v)))
                .unwrap_or((2, 0));
            let len = bytes.len();
            let with_decoded = |max_decoded_size: usize| Limits {
                max_decoded_size,
                ..limits(1 << 20, 128)
            };
            let variants = [
                limits(1 << 20, 128),
                limits(len, deep + 1),
                limits(len.saturating_sub(1), deep + 1),
                limits(1 << 20, deep),
                limits(rng.below(len + 2), rng.below(4)),
                with_decoded(decoded),
                with_decoded(decoded.saturating_sub(1)),
            ];
            for l in variants {
                for array in [false, true] {
                    if check_encoded(&bytes, &l, array).is_ok() {
                        accepted += 1;
                    }
                    findings.run(case, &l, &bytes, &|b| check_encoded_vs_rmpv(b, &l, array));
                }
            }
        }
        let checks = findings.cases;
        findings.finish();
        assert!(
            accepted * 10 > checks,
            "only {accepted} of {checks} checks accepted"
        );
    });
}

fn check_encoded_vs_rmpv(bytes: &[u8], l: &Limits, array: bool) -> Result<(), String> {
    let ours = check_encoded(bytes, l, array);
    let theirs = rmpv_first(bytes);
    let (whole, fits, is_array) = match &theirs {
        Ok((v, n)) => (
            *n == bytes.len(),
            [
                *n <= l.max_message_size,
                depth(v) <= l.max_depth.saturating_sub(1),
                decoded_size(v) <= l.max_decoded_size,
            ],
            v.is_array(),
        ),
        Err(_) => (false, [false; 3], false),
    };
    let want_ok = whole && fits.iter().all(|&f| f) && (is_array || !array);
    let over_one = fits.iter().filter(|&&f| !f).count() == 1;
    let consistent = match &ours {
        Ok(()) => want_ok,
        Err(_) if want_ok => false,
        // One value using every byte, of the right type, over one limit:
        // that limit's error.
        Err(e) if whole && (is_array || !array) && over_one => matches!(
            (e, fits),
            (DecodeError::TooLarge { .. }, [false, _, _])
                | (DecodeError::TooDeep { .. }, [_, false, _])
                | (DecodeError::TooLargeDecoded { .. }, [_, _, false])
        ),
        Err(_) => true,
    };
    if consistent {
        return Ok(());
    }
    let theirs = match &theirs {
        Ok((v, n)) => format!("Ok({n} bytes, depth {}: {v:?})", depth(v)),
        Err(e) => format!("Err({e})"),
    };
    Err(format!(
        "[check_encoded differs] array {array}: check_encoded {ours:?}\n    rmpv: {theirs}"
    ))
}
