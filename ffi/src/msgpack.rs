//! A small MessagePack writer and reader for C programs, so that a C
//! programmer builds params and reads results without another library.
//!
//! The writer appends values to a buffer it owns; the reader walks borrowed
//! bytes one value at a time (arrays and maps are read as a header followed
//! by their elements). The reader never allocates and never reads past `len`.

use std::os::raw::c_char;

use foorpc::Value;

use crate::error::{fail, foorpc_result};

/// The type of the next MessagePack value, as seen by foorpc_reader_peek_type.
/// Integers are classified by value, not by encoding: FOORPC_TYPE_UINT for
/// integers >= 0, FOORPC_TYPE_INT for negative ones.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum foorpc_type {
    /// No value: the reader is at the end, or the next bytes are malformed.
    None = 0,
    Nil = 1,
    Bool = 2,
    /// A negative integer (read it with foorpc_reader_read_int).
    Int = 3,
    /// An integer >= 0 (read it with foorpc_reader_read_uint, or with
    /// foorpc_reader_read_int when it is at most INT64_MAX).
    Uint = 4,
    F32 = 5,
    F64 = 6,
    Str = 7,
    Bin = 8,
    Array = 9,
    Map = 10,
    Ext = 11,
}

// ---------------------------------------------------------------------------
// Scanning
// ---------------------------------------------------------------------------

/// One item header and its scalar payload.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Item<'a> {
    Nil,
    Bool(bool),
    Uint(u64),
    /// Always negative.
    Int(i64),
    F32(f32),
    F64(f64),
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Array(u32),
    Map(u32),
    Ext(i8, &'a [u8]),
}

impl Item<'_> {
    fn kind(&self) -> foorpc_type {
        match self {
            Item::Nil => foorpc_type::Nil,
            Item::Bool(_) => foorpc_type::Bool,
            Item::Uint(_) => foorpc_type::Uint,
            Item::Int(_) => foorpc_type::Int,
            Item::F32(_) => foorpc_type::F32,
            Item::F64(_) => foorpc_type::F64,
            Item::Str(_) => foorpc_type::Str,
            Item::Bin(_) => foorpc_type::Bin,
            Item::Array(_) => foorpc_type::Array,
            Item::Map(_) => foorpc_type::Map,
            Item::Ext(..) => foorpc_type::Ext,
        }
    }
}

fn type_name(t: foorpc_type) -> &'static str {
    match t {
        foorpc_type::None => "nothing",
        foorpc_type::Nil => "nil",
        foorpc_type::Bool => "bool",
        foorpc_type::Int => "negative int",
        foorpc_type::Uint => "uint",
        foorpc_type::F32 => "float32",
        foorpc_type::F64 => "float64",
        foorpc_type::Str => "str",
        foorpc_type::Bin => "bin",
        foorpc_type::Array => "array",
        foorpc_type::Map => "map",
        foorpc_type::Ext => "ext",
    }
}

type ScanResult<T> = Result<T, (foorpc_result, &'static str)>;

const TRUNCATED: (foorpc_result, &str) = (
    foorpc_result::EndOfData,
    "the MessagePack data ends inside a value",
);

fn take(buf: &[u8], at: usize, n: usize) -> ScanResult<&[u8]> {
    at.checked_add(n)
        .and_then(|end| buf.get(at..end))
        .ok_or(TRUNCATED)
}

fn be(buf: &[u8], at: usize, n: usize) -> ScanResult<u64> {
    Ok(take(buf, at, n)?
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// Reads the item at the start of `buf`: the item and the bytes it takes
/// (for arrays and maps, the header only).
pub(crate) fn parse_item(buf: &[u8]) -> ScanResult<(Item<'_>, usize)> {
    let Some(&m) = buf.first() else {
        return Err((foorpc_result::EndOfData, "no more MessagePack values"));
    };
    let sized =
        |n: usize, hdr: usize| -> ScanResult<(&[u8], usize)> { Ok((take(buf, hdr, n)?, hdr + n)) };
    let len_at = |w: usize| -> ScanResult<usize> { Ok(be(buf, 1, w)? as usize) };
    Ok(match m {
        0x00..=0x7f => (Item::Uint(u64::from(m)), 1),
        0x80..=0x8f => (Item::Map(u32::from(m & 0x0f)), 1),
        0x90..=0x9f => (Item::Array(u32::from(m & 0x0f)), 1),
        0xa0..=0xbf => {
            let (s, n) = sized(usize::from(m & 0x1f), 1)?;
            (Item::Str(s), n)
        }
        0xc0 => (Item::Nil, 1),
        0xc1 => {
            return Err((
                foorpc_result::MalformedData,
                "0xc1 is not a MessagePack type",
            ))
        }
        0xc2 => (Item::Bool(false), 1),
        0xc3 => (Item::Bool(true), 1),
        0xc4..=0xc6 => {
            let w = 1 << (m - 0xc4);
            let (b, n) = sized(len_at(w)?, 1 + w)?;
            (Item::Bin(b), n)
        }
        0xc7..=0xc9 => {
            let w = 1 << (m - 0xc7);
            let len = len_at(w)?;
            let ty = take(buf, 1 + w, 1)?[0] as i8;
            let (d, n) = sized(len, 2 + w)?;
            (Item::Ext(ty, d), n)
        }
        0xca => (Item::F32(f32::from_bits(be(buf, 1, 4)? as u32)), 5),
        0xcb => (Item::F64(f64::from_bits(be(buf, 1, 8)?)), 9),
        0xcc..=0xcf => {
            let w = 1 << (m - 0xcc);
            (Item::Uint(be(buf, 1, w)?), 1 + w)
        }
        0xd0..=0xd3 => {
            let w = 1usize << (m - 0xd0);
            let raw = be(buf, 1, w)?;
            let shift = 64 - 8 * w as u32;
            // Sign-extend the w-byte big-endian integer.
            let v = ((raw << shift) as i64) >> shift;
            if v >= 0 {
                (Item::Uint(v as u64), 1 + w)
            } else {
                (Item::Int(v), 1 + w)
            }
        }
        0xd4..=0xd8 => {
            let len = 1usize << (m - 0xd4);
            let ty = take(buf, 1, 1)?[0] as i8;
            let (d, n) = sized(len, 2)?;
            (Item::Ext(ty, d), n)
        }
        0xd9..=0xdb => {
            let w = 1 << (m - 0xd9);
            let (s, n) = sized(len_at(w)?, 1 + w)?;
            (Item::Str(s), n)
        }
        0xdc | 0xdd => {
            let w = if m == 0xdc { 2 } else { 4 };
            (Item::Array(len_at(w)? as u32), 1 + w)
        }
        0xde | 0xdf => {
            let w = if m == 0xde { 2 } else { 4 };
            (Item::Map(len_at(w)? as u32), 1 + w)
        }
        0xe0..=0xff => (Item::Int(i64::from(m as i8)), 1),
    })
}

/// Length in bytes of the whole value at the start of `buf` (with all its
/// elements). Iterative, so deep nesting cannot overflow the stack.
pub(crate) fn value_len(buf: &[u8]) -> ScanResult<usize> {
    let mut pos = 0usize;
    let mut owed: u64 = 1;
    while owed > 0 {
        let (item, n) = parse_item(&buf[pos..])?;
        pos += n;
        owed -= 1;
        match item {
            Item::Array(k) => owed += u64::from(k),
            Item::Map(k) => owed += 2 * u64::from(k),
            _ => {}
        }
    }
    Ok(pos)
}

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

/// A growing buffer of MessagePack values, owned by the caller (free it with
/// foorpc_writer_free). Values are appended in order; foorpc_writer_array(n)
/// and foorpc_writer_map(n) write a header that the next n values (2n for a
/// map: key, value, key, value...) complete. The writer does not check that
/// the counts add up; a call checks its params when it is made.
/// Not thread-safe: use one writer from one thread at a time.
pub struct foorpc_writer {
    buf: Vec<u8>,
}

fn put_len(out: &mut Vec<u8>, n: usize, fix: Option<(u8, usize)>, markers: [Option<u8>; 3]) {
    if let Some((base, max)) = fix {
        if n <= max {
            out.push(base | n as u8);
            return;
        }
    }
    if let (Some(m), true) = (markers[0], n <= 0xff) {
        out.extend_from_slice(&[m, n as u8]);
    } else if let (Some(m), true) = (markers[1], n <= 0xffff) {
        out.push(m);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(markers[2].expect("a 32-bit form exists"));
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

fn check_u32_len(n: usize) -> Result<(), foorpc_result> {
    if n > u32::MAX as usize {
        Err(fail(
            foorpc_result::InvalidArgument,
            "MessagePack lengths are at most 4294967295",
        ))
    } else {
        Ok(())
    }
}

/// Runs `f` on the writer's buffer after the NULL check.
macro_rules! with_writer {
    ($w:ident, |$buf:ident| $body:expr) => {
        ffi_panic_boundary! {
            let $buf = &mut try_mut!($w).buf;
            $body;
            foorpc_result::Ok
        }
    };
}

/// Creates an empty writer. On success `*writer_out` receives it; the caller
/// owns it and must call foorpc_writer_free.
#[no_mangle]
pub extern "C" fn foorpc_writer_new(writer_out: *mut *mut foorpc_writer) -> foorpc_result {
    ffi_panic_boundary! {
        let out = try_mut!(writer_out);
        *out = Box::into_raw(Box::new(foorpc_writer { buf: Vec::new() }));
        foorpc_result::Ok
    }
}

/// Frees a writer (NULL is fine). Pointers from foorpc_writer_data become invalid.
#[no_mangle]
pub extern "C" fn foorpc_writer_free(writer: *mut foorpc_writer) {
    ffi_panic_boundary! {
        if !writer.is_null() {
            // SAFETY: created by foorpc_writer_new, freed once.
            drop(unsafe { Box::from_raw(writer) });
        }
    }
}

/// Empties the writer, keeping its memory for reuse.
#[no_mangle]
pub extern "C" fn foorpc_writer_clear(writer: *mut foorpc_writer) -> foorpc_result {
    with_writer!(writer, |buf| buf.clear())
}

/// The bytes written so far. The pointer is borrowed from the writer: valid
/// until the next call that changes or frees it. NULL when `writer` is NULL.
#[no_mangle]
pub extern "C" fn foorpc_writer_data(writer: *const foorpc_writer) -> *const u8 {
    ffi_panic_boundary! {
        // SAFETY: NULL or a live writer.
        unsafe { writer.as_ref() }.map_or(std::ptr::null(), |w| w.buf.as_ptr())
    }
}

/// Number of bytes written so far (0 when `writer` is NULL).
#[no_mangle]
pub extern "C" fn foorpc_writer_len(writer: *const foorpc_writer) -> usize {
    ffi_panic_boundary! {
        // SAFETY: NULL or a live writer.
        unsafe { writer.as_ref() }.map_or(0, |w| w.buf.len())
    }
}

/// Appends nil.
#[no_mangle]
pub extern "C" fn foorpc_writer_nil(writer: *mut foorpc_writer) -> foorpc_result {
    with_writer!(writer, |buf| buf.push(0xc0))
}

/// Appends a boolean.
#[no_mangle]
pub extern "C" fn foorpc_writer_bool(writer: *mut foorpc_writer, value: bool) -> foorpc_result {
    with_writer!(writer, |buf| buf.push(if value { 0xc3 } else { 0xc2 }))
}

/// Appends a signed integer, in its smallest encoding (values >= 0 use the
/// unsigned forms, as every MessagePack library does).
#[no_mangle]
pub extern "C" fn foorpc_writer_int(writer: *mut foorpc_writer, value: i64) -> foorpc_result {
    with_writer!(writer, |buf| foorpc::codec::encode_value(
        buf,
        &Value::from(value)
    ))
}

/// Appends an unsigned integer, in its smallest encoding.
#[no_mangle]
pub extern "C" fn foorpc_writer_uint(writer: *mut foorpc_writer, value: u64) -> foorpc_result {
    with_writer!(writer, |buf| foorpc::codec::encode_value(
        buf,
        &Value::from(value)
    ))
}

/// Appends a float32.
#[no_mangle]
pub extern "C" fn foorpc_writer_f32(writer: *mut foorpc_writer, value: f32) -> foorpc_result {
    with_writer!(writer, |buf| {
        buf.push(0xca);
        buf.extend_from_slice(&value.to_be_bytes());
    })
}

/// Appends a float64.
#[no_mangle]
pub extern "C" fn foorpc_writer_f64(writer: *mut foorpc_writer, value: f64) -> foorpc_result {
    with_writer!(writer, |buf| {
        buf.push(0xcb);
        buf.extend_from_slice(&value.to_be_bytes());
    })
}

/// Appends a str of `len` bytes copied from `data` (which need not be
/// NUL-terminated; UTF-8 is expected but not checked). `data` may be NULL
/// when `len` is 0. Nothing is retained.
#[no_mangle]
pub extern "C" fn foorpc_writer_str(
    writer: *mut foorpc_writer,
    data: *const c_char,
    len: usize,
) -> foorpc_result {
    ffi_panic_boundary! {
        let w = try_mut!(writer);
        let s = try_slice!(data, len);
        if let Err(e) = check_u32_len(len) {
            return e;
        }
        put_len(&mut w.buf, len, Some((0xa0, 31)), [Some(0xd9), Some(0xda), Some(0xdb)]);
        w.buf.extend_from_slice(s);
        foorpc_result::Ok
    }
}

/// Appends a str copied from the NUL-terminated string `s` (without the NUL).
#[no_mangle]
pub extern "C" fn foorpc_writer_cstr(
    writer: *mut foorpc_writer,
    s: *const c_char,
) -> foorpc_result {
    ffi_panic_boundary! {
        if s.is_null() {
            return crate::error::null_parameter("s");
        }
        // SAFETY: a NUL-terminated string (the caller's contract).
        let len = unsafe { libc::strlen(s) };
        foorpc_writer_str(writer, s, len)
    }
}

/// Appends a bin of `len` bytes copied from `data` (NULL is fine when `len` is 0).
#[no_mangle]
pub extern "C" fn foorpc_writer_bin(
    writer: *mut foorpc_writer,
    data: *const u8,
    len: usize,
) -> foorpc_result {
    ffi_panic_boundary! {
        let w = try_mut!(writer);
        let b = try_slice!(data, len);
        if let Err(e) = check_u32_len(len) {
            return e;
        }
        put_len(&mut w.buf, len, None, [Some(0xc4), Some(0xc5), Some(0xc6)]);
        w.buf.extend_from_slice(b);
        foorpc_result::Ok
    }
}

/// Appends an array header: the next `count` values are its elements.
#[no_mangle]
pub extern "C" fn foorpc_writer_array(writer: *mut foorpc_writer, count: u32) -> foorpc_result {
    with_writer!(writer, |buf| put_len(
        buf,
        count as usize,
        Some((0x90, 15)),
        [None, Some(0xdc), Some(0xdd)]
    ))
}

/// Appends a map header: the next `count` pairs of values (key, value) are
/// its entries.
#[no_mangle]
pub extern "C" fn foorpc_writer_map(writer: *mut foorpc_writer, count: u32) -> foorpc_result {
    with_writer!(writer, |buf| put_len(
        buf,
        count as usize,
        Some((0x80, 15)),
        [None, Some(0xde), Some(0xdf)]
    ))
}

/// Appends an ext value of type `ext_type` (application types are 0..127,
/// negative ones are reserved by MessagePack, e.g. -1 for timestamps) with
/// `len` bytes copied from `data` (NULL is fine when `len` is 0).
#[no_mangle]
pub extern "C" fn foorpc_writer_ext(
    writer: *mut foorpc_writer,
    ext_type: i8,
    data: *const u8,
    len: usize,
) -> foorpc_result {
    ffi_panic_boundary! {
        let w = try_mut!(writer);
        let d = try_slice!(data, len);
        if let Err(e) = check_u32_len(len) {
            return e;
        }
        match len {
            1 => w.buf.push(0xd4),
            2 => w.buf.push(0xd5),
            4 => w.buf.push(0xd6),
            8 => w.buf.push(0xd7),
            16 => w.buf.push(0xd8),
            _ => put_len(&mut w.buf, len, None, [Some(0xc7), Some(0xc8), Some(0xc9)]),
        }
        w.buf.push(ext_type as u8);
        w.buf.extend_from_slice(d);
        foorpc_result::Ok
    }
}

/// Appends one already encoded MessagePack value, copied verbatim. Fails with
/// FOORPC_RESULT_INVALID_MSGPACK (writing nothing) unless `data` holds
/// exactly one complete value.
#[no_mangle]
pub extern "C" fn foorpc_writer_raw(
    writer: *mut foorpc_writer,
    data: *const u8,
    len: usize,
) -> foorpc_result {
    ffi_panic_boundary! {
        let w = try_mut!(writer);
        let d = try_slice!(data, len);
        match value_len(d) {
            Ok(n) if n == d.len() => {}
            Ok(_) => return fail(foorpc_result::InvalidMsgpack, "extra bytes after the value"),
            Err((_, why)) => return fail(foorpc_result::InvalidMsgpack, why),
        }
        w.buf.extend_from_slice(d);
        foorpc_result::Ok
    }
}

// ---------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------

/// Reads MessagePack values one at a time from bytes it borrows (they must
/// stay valid and unchanged until the reader is freed). Every read either
/// succeeds and moves past the value, or fails and leaves the position
/// unchanged. Pointers returned for str, bin and ext point into the borrowed
/// bytes. Not thread-safe: use one reader from one thread at a time.
pub struct foorpc_reader {
    data: *const u8,
    len: usize,
    pos: usize,
}

impl foorpc_reader {
    fn rest(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: data/len describe the caller's live buffer (checked non-NULL
        // at creation), and pos <= len.
        unsafe { std::slice::from_raw_parts(self.data.add(self.pos), self.len - self.pos) }
    }

    /// Reads the next item with `accept` (which returns the output and whether
    /// the item was of the right type); moves on only on success.
    fn read<T>(
        &mut self,
        want: &str,
        accept: impl FnOnce(Item<'_>) -> Result<Option<T>, foorpc_result>,
    ) -> Result<T, foorpc_result> {
        let (item, n) = match parse_item(self.rest()) {
            Ok(x) => x,
            Err((code, why)) => return Err(fail(code, why)),
        };
        let found = item.kind();
        match accept(item)? {
            Some(v) => {
                self.pos += n;
                Ok(v)
            }
            None => Err(fail(
                foorpc_result::TypeMismatch,
                format!("expected {want}, found {}", type_name(found)),
            )),
        }
    }
}

/// Writes `v` through `out` (which must be non-NULL) when `r` is Ok.
macro_rules! reader_op {
    ($reader:ident, $out:ident, $want:expr, $accept:expr) => {
        ffi_panic_boundary! {
            let r = try_mut!($reader);
            let out = try_mut!($out);
            match r.read($want, $accept) {
                Ok(v) => {
                    *out = v;
                    foorpc_result::Ok
                }
                Err(code) => code,
            }
        }
    };
}

/// Creates a reader over `len` bytes at `data` (NULL is fine when `len` is
/// 0). The reader borrows the bytes; the caller owns the reader and must call
/// foorpc_reader_free.
#[no_mangle]
pub extern "C" fn foorpc_reader_new(
    data: *const u8,
    len: usize,
    reader_out: *mut *mut foorpc_reader,
) -> foorpc_result {
    ffi_panic_boundary! {
        let out = try_mut!(reader_out);
        if len > 0 && data.is_null() {
            return crate::error::null_parameter("data");
        }
        *out = Box::into_raw(Box::new(foorpc_reader { data, len, pos: 0 }));
        foorpc_result::Ok
    }
}

/// Frees a reader (NULL is fine). The bytes it read are not touched.
#[no_mangle]
pub extern "C" fn foorpc_reader_free(reader: *mut foorpc_reader) {
    ffi_panic_boundary! {
        if !reader.is_null() {
            // SAFETY: created by foorpc_reader_new, freed once.
            drop(unsafe { Box::from_raw(reader) });
        }
    }
}

/// The type of the next value without consuming it; FOORPC_TYPE_NONE at the
/// end of the data, when the next value is malformed, or when `reader` is NULL.
#[no_mangle]
pub extern "C" fn foorpc_reader_peek_type(reader: *const foorpc_reader) -> foorpc_type {
    ffi_panic_boundary! {
        // SAFETY: NULL or a live reader.
        match unsafe { reader.as_ref() } {
            Some(r) => parse_item(r.rest()).map_or(foorpc_type::None, |(item, _)| item.kind()),
            None => foorpc_type::None,
        }
    }
}

/// Bytes not read yet (0 when `reader` is NULL).
#[no_mangle]
pub extern "C" fn foorpc_reader_remaining(reader: *const foorpc_reader) -> usize {
    ffi_panic_boundary! {
        // SAFETY: NULL or a live reader.
        unsafe { reader.as_ref() }.map_or(0, |r| r.len - r.pos)
    }
}

/// Reads a nil.
#[no_mangle]
pub extern "C" fn foorpc_reader_read_nil(reader: *mut foorpc_reader) -> foorpc_result {
    ffi_panic_boundary! {
        let r = try_mut!(reader);
        match r.read("nil", |i| Ok(matches!(i, Item::Nil).then_some(()))) {
            Ok(()) => foorpc_result::Ok,
            Err(code) => code,
        }
    }
}

/// Reads a boolean into `*out`.
#[no_mangle]
pub extern "C" fn foorpc_reader_read_bool(
    reader: *mut foorpc_reader,
    out: *mut bool,
) -> foorpc_result {
    reader_op!(reader, out, "bool", |i| Ok(match i {
        Item::Bool(b) => Some(b),
        _ => None,
    }))
}

/// Reads an integer (any encoding) into `*out`; FOORPC_RESULT_OUT_OF_RANGE
/// when it is above INT64_MAX.
#[no_mangle]
pub extern "C" fn foorpc_reader_read_int(
    reader: *mut foorpc_reader,
    out: *mut i64,
) -> foorpc_result {
    reader_op!(reader, out, "int", |i| match i {
        Item::Int(v) => Ok(Some(v)),
        Item::Uint(u) => i64::try_from(u).map(Some).map_err(|_| fail(
            foorpc_result::OutOfRange,
            format!("{u} does not fit int64_t")
        )),
        _ => Ok(None),
    })
}

/// Reads an integer (any encoding) into `*out`; FOORPC_RESULT_OUT_OF_RANGE
/// when it is negative.
#[no_mangle]
pub extern "C" fn foorpc_reader_read_uint(
    reader: *mut foorpc_reader,
    out: *mut u64,
) -> foorpc_result {
    reader_op!(reader, out, "uint", |i| match i {
        Item::Uint(u) => Ok(Some(u)),
        Item::Int(v) => Err(fail(
            foorpc_result::OutOfRange,
            format!("{v} does not fit uint64_t"),
        )),
        _ => Ok(None),
    })
}

/// Reads a float64 or a float32 (widened exactly) into `*out`. Integers are
/// not accepted.
#[no_mangle]
pub extern "C" fn foorpc_reader_read_f64(
    reader: *mut foorpc_reader,
    out: *mut f64,
) -> foorpc_result {
    reader_op!(reader, out, "float", |i| Ok(match i {
        Item::F64(f) => Some(f),
        Item::F32(f) => Some(f64::from(f)),
        _ => None,
    }))
}

/// Reads a float32 into `*out` (a float64 is a type mismatch: use
/// foorpc_reader_read_f64).
#[no_mangle]
pub extern "C" fn foorpc_reader_read_f32(
    reader: *mut foorpc_reader,
    out: *mut f32,
) -> foorpc_result {
    reader_op!(reader, out, "float32", |i| Ok(match i {
        Item::F32(f) => Some(f),
        _ => None,
    }))
}

/// Reads a str: `*data_out` points at its bytes inside the reader's input
/// (borrowed, NOT NUL-terminated, possibly invalid UTF-8) and `*len_out`
/// receives its length.
#[no_mangle]
pub extern "C" fn foorpc_reader_read_str(
    reader: *mut foorpc_reader,
    data_out: *mut *const c_char,
    len_out: *mut usize,
) -> foorpc_result {
    ffi_panic_boundary! {
        let r = try_mut!(reader);
        let data_out = try_mut!(data_out);
        let len_out = try_mut!(len_out);
        match r.read("str", |i| Ok(match i {
            Item::Str(s) => Some((s.as_ptr(), s.len())),
            _ => None,
        })) {
            Ok((p, n)) => {
                *data_out = p.cast();
                *len_out = n;
                foorpc_result::Ok
            }
            Err(code) => code,
        }
    }
}

/// Reads a bin: `*data_out` points at its bytes inside the reader's input
/// (borrowed) and `*len_out` receives its length.
#[no_mangle]
pub extern "C" fn foorpc_reader_read_bin(
    reader: *mut foorpc_reader,
    data_out: *mut *const u8,
    len_out: *mut usize,
) -> foorpc_result {
    ffi_panic_boundary! {
        let r = try_mut!(reader);
        let data_out = try_mut!(data_out);
        let len_out = try_mut!(len_out);
        match r.read("bin", |i| Ok(match i {
            Item::Bin(b) => Some((b.as_ptr(), b.len())),
            _ => None,
        })) {
            Ok((p, n)) => {
                *data_out = p;
                *len_out = n;
                foorpc_result::Ok
            }
            Err(code) => code,
        }
    }
}

/// Reads an array header: `*count_out` receives the number of elements,
/// which are the next values to read.
#[no_mangle]
pub extern "C" fn foorpc_reader_read_array(
    reader: *mut foorpc_reader,
    count_out: *mut u32,
) -> foorpc_result {
    reader_op!(reader, count_out, "array", |i| Ok(match i {
        Item::Array(n) => Some(n),
        _ => None,
    }))
}

/// Reads a map header: `*count_out` receives the number of entries; the next
/// 2 * count values are key, value, key, value...
#[no_mangle]
pub extern "C" fn foorpc_reader_read_map(
    reader: *mut foorpc_reader,
    count_out: *mut u32,
) -> foorpc_result {
    reader_op!(reader, count_out, "map", |i| Ok(match i {
        Item::Map(n) => Some(n),
        _ => None,
    }))
}

/// Reads an ext value: its type into `*type_out`, and a borrowed pointer to
/// its data and the data's length into `*data_out` and `*len_out`.
#[no_mangle]
pub extern "C" fn foorpc_reader_read_ext(
    reader: *mut foorpc_reader,
    type_out: *mut i8,
    data_out: *mut *const u8,
    len_out: *mut usize,
) -> foorpc_result {
    ffi_panic_boundary! {
        let r = try_mut!(reader);
        let type_out = try_mut!(type_out);
        let data_out = try_mut!(data_out);
        let len_out = try_mut!(len_out);
        match r.read("ext", |i| Ok(match i {
            Item::Ext(t, d) => Some((t, d.as_ptr(), d.len())),
            _ => None,
        })) {
            Ok((t, p, n)) => {
                *type_out = t;
                *data_out = p;
                *len_out = n;
                foorpc_result::Ok
            }
            Err(code) => code,
        }
    }
}

/// Reads one whole value (with all elements of an array or map) without
/// decoding it: `*data_out` points at its encoded bytes inside the reader's
/// input (borrowed) and `*len_out` receives their length. Handy to pass a
/// value through unchanged (e.g. to foorpc_responder_ok).
#[no_mangle]
pub extern "C" fn foorpc_reader_read_raw(
    reader: *mut foorpc_reader,
    data_out: *mut *const u8,
    len_out: *mut usize,
) -> foorpc_result {
    ffi_panic_boundary! {
        let r = try_mut!(reader);
        let data_out = try_mut!(data_out);
        let len_out = try_mut!(len_out);
        let rest = r.rest();
        match value_len(rest) {
            Ok(n) => {
                *data_out = rest.as_ptr();
                *len_out = n;
                r.pos += n;
                foorpc_result::Ok
            }
            Err((code, why)) => fail(code, why),
        }
    }
}

/// Skips one whole value (with all elements of an array or map).
#[no_mangle]
pub extern "C" fn foorpc_reader_skip(reader: *mut foorpc_reader) -> foorpc_result {
    ffi_panic_boundary! {
        let r = try_mut!(reader);
        match value_len(r.rest()) {
            Ok(n) => {
                r.pos += n;
                foorpc_result::Ok
            }
            Err((code, why)) => fail(code, why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        foorpc::codec::encode_value(&mut out, v);
        out
    }

    #[test]
    fn value_len_matches_the_encoder() {
        let values = [
            Value::Nil,
            Value::from(-33),
            Value::from(u64::MAX),
            Value::from(i64::MIN),
            Value::F32(1.5),
            Value::from("x".repeat(300)),
            Value::Binary(vec![7; 70_000]),
            Value::Array(vec![
                Value::from(1),
                Value::Map(vec![(Value::Nil, Value::F64(2.0))]),
            ]),
            Value::Ext(-1, vec![0; 12]),
            Value::Ext(5, vec![1; 4]),
        ];
        for v in &values {
            let bytes = encode(v);
            assert_eq!(value_len(&bytes), Ok(bytes.len()), "{v}");
            for cut in 0..bytes.len() {
                assert!(value_len(&bytes[..cut]).is_err(), "{v} cut at {cut}");
            }
        }
    }

    #[test]
    fn signed_encodings_of_positive_numbers_read_as_uint() {
        let (item, n) = parse_item(&[0xd1, 0x00, 0x05]).unwrap();
        assert!(matches!(item, Item::Uint(5)) && n == 3);
        let (item, _) = parse_item(&[0xd0, 0xff]).unwrap();
        assert!(matches!(item, Item::Int(-1)));
    }
}
