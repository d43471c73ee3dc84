//! Owned output bytes handed to C, and the encoding of values for C.

use foorpc::Value;

/// Bytes owned by the caller (a call's result, an error object): read them
/// with foorpc_buf_data and foorpc_buf_len, then release them with
/// foorpc_buf_free. Immutable, so any thread may read it; free it once.
pub struct foorpc_buf {
    pub(crate) bytes: Vec<u8>,
}

impl foorpc_buf {
    pub(crate) fn into_raw(bytes: Vec<u8>) -> *mut foorpc_buf {
        Box::into_raw(Box::new(foorpc_buf { bytes }))
    }

    /// Encodes one value into a new buffer.
    pub(crate) fn from_value(v: &Value) -> *mut foorpc_buf {
        foorpc_buf::into_raw(encode(v))
    }
}

/// Pointer to the buffer's bytes, valid until foorpc_buf_free(buf); NULL when
/// `buf` is NULL. Not NUL-terminated. The buffer keeps ownership.
#[no_mangle]
pub extern "C" fn foorpc_buf_data(buf: *const foorpc_buf) -> *const u8 {
    ffi_panic_boundary! {
        // SAFETY: NULL or a live foorpc_buf (the caller's contract).
        match unsafe { buf.as_ref() } {
            Some(b) => b.bytes.as_ptr(),
            None => std::ptr::null(),
        }
    }
}

/// Number of bytes in the buffer (0 when `buf` is NULL).
#[no_mangle]
pub extern "C" fn foorpc_buf_len(buf: *const foorpc_buf) -> usize {
    ffi_panic_boundary! {
        // SAFETY: NULL or a live foorpc_buf.
        unsafe { buf.as_ref() }.map_or(0, |b| b.bytes.len())
    }
}

/// Frees a buffer returned by foorpc. NULL is fine. Must not be called twice;
/// the pointers from foorpc_buf_data become invalid.
#[no_mangle]
pub extern "C" fn foorpc_buf_free(buf: *mut foorpc_buf) {
    ffi_panic_boundary! {
        if !buf.is_null() {
            // SAFETY: created by Box::into_raw in this crate, freed once.
            let buf = unsafe { Box::from_raw(buf) };
            // A large result buffer serves the next large result.
            foorpc::recycle(buf.bytes);
        }
    }
}

/// Stores a new buffer into `*out`.
pub(crate) fn put_bytes(out: *mut *mut foorpc_buf, bytes: Vec<u8>) {
    if !out.is_null() {
        // SAFETY: the caller's out-pointer, checked non-NULL.
        unsafe { *out = foorpc_buf::into_raw(bytes) };
    }
}

/// Writes a new buffer holding the encoding of `v` to `out` (if not NULL).
pub(crate) fn put(out: *mut *mut foorpc_buf, v: &Value) {
    if !out.is_null() {
        // SAFETY: the caller's out-pointer, checked non-NULL.
        unsafe { *out = foorpc_buf::from_value(v) };
    }
}

/// One value's MessagePack encoding (as `foorpc::codec::encode_value` writes
/// it), in a vector allocated once at its exact size: a large result is not
/// copied again and again as the vector grows.
pub(crate) fn encode(v: &Value) -> Vec<u8> {
    encode_after(&[], v)
}

/// The `prefix` pieces followed by the encoding of `v`, in one exact-size
/// allocation.
pub(crate) fn encode_after(prefix: &[&[u8]], v: &Value) -> Vec<u8> {
    let head: usize = prefix.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(head + encoded_len(v));
    for p in prefix {
        out.extend_from_slice(p);
    }
    foorpc::codec::encode_value(&mut out, v);
    out
}

/// The size of `v`'s encoding in the smallest form of each value (the form
/// `foorpc::codec::encode_value` writes).
fn encoded_len(v: &Value) -> usize {
    // Header of a str/bin/ext length with 8-, 16- and 32-bit forms.
    fn len_head(n: usize) -> usize {
        match n {
            0..=0xff => 2,
            0x100..=0xffff => 3,
            _ => 5,
        }
    }
    // Header of an array or map count (fix form below 16, then 16/32-bit).
    fn count_head(n: usize) -> usize {
        match n {
            0..=15 => 1,
            16..=0xffff => 3,
            _ => 5,
        }
    }
    match v {
        Value::Nil | Value::Boolean(_) => 1,
        Value::Integer(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => match u {
                0..=127 => 1,
                128..=0xff => 2,
                0x100..=0xffff => 3,
                0x1_0000..=0xffff_ffff => 5,
                _ => 9,
            },
            (None, Some(i)) => match i {
                -32..=-1 => 1,
                -0x80..=-33 => 2,
                -0x8000..=-0x81 => 3,
                -0x8000_0000..=-0x8001 => 5,
                _ => 9,
            },
            (None, None) => 9,
        },
        Value::F32(_) => 5,
        Value::F64(_) => 9,
        Value::String(s) => {
            let n = s.as_bytes().len();
            n + if n < 32 { 1 } else { len_head(n) }
        }
        Value::Binary(b) => len_head(b.len()) + b.len(),
        Value::Array(items) => {
            count_head(items.len()) + items.iter().map(encoded_len).sum::<usize>()
        }
        Value::Map(entries) => {
            count_head(entries.len())
                + entries
                    .iter()
                    .map(|(k, v)| encoded_len(k) + encoded_len(v))
                    .sum::<usize>()
        }
        Value::Ext(_, data) => {
            let head = match data.len() {
                1 | 2 | 4 | 8 | 16 => 1,
                n => len_head(n),
            };
            head + 1 + data.len()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_len_is_exact() {
        let mut values = vec![
            Value::Nil,
            Value::Boolean(true),
            Value::F32(1.5),
            Value::F64(-2.5),
            Value::Array(vec![]),
            Value::Map(vec![]),
        ];
        // Each boundary between two integer forms, from both sides.
        for b in [127i64, 255, 65535, 0xffff_ffff] {
            values.extend([Value::from(b), Value::from(b + 1)]);
        }
        for b in [-1i64, -32, -128, -32768, -0x8000_0000] {
            values.extend([Value::from(b), Value::from(b - 1)]);
        }
        values.extend([Value::from(0), Value::from(i64::MAX), Value::from(i64::MIN)]);
        values.push(Value::from(u64::MAX));
        for n in [
            0usize, 1, 2, 4, 8, 15, 16, 31, 32, 255, 256, 65535, 65536, 70_000,
        ] {
            values.push(Value::from("x".repeat(n)));
            values.push(Value::Binary(vec![7; n]));
            values.push(Value::Ext(-1, vec![0; n]));
            values.push(Value::Array(vec![Value::Nil; n]));
            values.push(Value::Map(vec![(Value::from(1), Value::Nil); n]));
        }
        values.push(Value::Array(vec![
            Value::from(1),
            Value::Map(vec![(Value::Nil, Value::Array(vec![Value::from("abc")]))]),
        ]));
        for v in &values {
            let mut plain = Vec::new();
            foorpc::codec::encode_value(&mut plain, v);
            let exact = encode_after(&[b"a", b"b"], v);
            assert_eq!(&exact[2..], &plain[..]);
            assert_eq!(exact.capacity(), exact.len(), "{v}");
        }
    }
}
