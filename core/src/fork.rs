//! Fork awareness: threads do not survive `fork()`, so process-wide pools and
//! reactors are recreated in the child, and connections made before the fork
//! refuse to be used there (their socket is shared with the parent).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

static GENERATION: AtomicU64 = AtomicU64::new(0);

extern "C" fn in_child() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// A number that changes in a child process after every `fork()`.
pub fn generation() -> u64 {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // SAFETY: registering a handler that only touches an atomic.
        unsafe {
            libc::pthread_atfork(None, None, Some(in_child));
        }
    });
    GENERATION.load(Ordering::SeqCst)
}
