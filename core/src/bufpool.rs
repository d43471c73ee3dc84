//! A few large byte buffers kept for reuse across calls.
//!
//! A large result handed over as bytes would otherwise be a fresh allocation
//! per call; once it is freed, the allocator gives its pages back to the OS
//! and the next call faults them in again, which costs more than the copy
//! itself. Front ends hand buffers back with [`recycle`] when done.

use std::sync::Mutex;

/// Smaller buffers are cheap to allocate and are not kept.
const MIN_KEPT: usize = 64 * 1024;
/// Larger buffers are not kept: at most `MAX_KEPT_BYTES * MAX_KEPT` stays idle.
const MAX_KEPT_BYTES: usize = 4 * 1024 * 1024;
const MAX_KEPT: usize = 4;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An empty buffer with room for `len` bytes, reused when one is kept.
pub(crate) fn take(len: usize) -> Vec<u8> {
    if len >= MIN_KEPT {
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = pool.iter().position(|b| b.capacity() >= len) {
            return pool.swap_remove(i);
        }
    }
    Vec::with_capacity(len)
}

/// Gives a buffer back for reuse (small or huge ones are simply freed).
pub fn recycle(mut buf: Vec<u8>) {
    if !(MIN_KEPT..=MAX_KEPT_BYTES).contains(&buf.capacity()) {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
    if pool.len() < MAX_KEPT {
        buf.clear();
        pool.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_come_back() {
        let mut a = take(100_000);
        a.extend_from_slice(&[7; 100_000]);
        let ptr = a.as_ptr();
        recycle(a);
        let b = take(90_000);
        assert!(b.is_empty() && b.capacity() >= 90_000);
        // Other tests may share the pool; when ours is the one taken, it is reused.
        if b.as_ptr() == ptr {
            assert!(b.capacity() >= 100_000);
        }
        recycle(b);
        recycle(Vec::with_capacity(10)); // too small: dropped
        assert!(POOL
            .lock()
            .unwrap()
            .iter()
            .all(|b| b.capacity() >= MIN_KEPT));
    }
}
