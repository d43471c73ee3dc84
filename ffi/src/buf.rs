//! Owned output bytes handed to C.

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
    pub(crate) fn from_value(v: &foorpc::Value) -> *mut foorpc_buf {
        let mut bytes = Vec::new();
        foorpc::codec::encode_value(&mut bytes, v);
        foorpc_buf::into_raw(bytes)
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
            drop(unsafe { Box::from_raw(buf) });
        }
    }
}

/// Stores a new buffer into `*out`.
pub(crate) fn put(out: *mut *mut foorpc_buf, v: &foorpc::Value) {
    if !out.is_null() {
        // SAFETY: the caller's out-pointer, checked non-NULL.
        unsafe { *out = foorpc_buf::from_value(v) };
    }
}
