//! A host's way to stop a blocking write, such as a Python program's Ctrl-C.
//!
//! A call whose request does not fit in the socket waits, in 50 ms slices,
//! for the peer to read. A host whose own signals must be seen in between
//! (Python runs its signal handlers only when asked) sets a check for the
//! calls it makes on a thread; when the check says so, the write stops.

use std::cell::Cell;

type Check = fn() -> bool;

thread_local! {
    static CHECK: Cell<Option<Check>> = const { Cell::new(None) };
}

/// Runs `f` with `check` asked between the slices of every blocking write
/// made on this thread. When it returns true, the write stops, the
/// connection is closed (part of a message may be on the wire, so the
/// stream cannot go on) and the call fails with [`Error::ConnectionLost`];
/// a send still waiting for the connection's backlog to drain before it
/// starts fails with [`Error::Usage`], nothing sent.
///
/// [`Error::ConnectionLost`]: crate::Error::ConnectionLost
/// [`Error::Usage`]: crate::Error::Usage
pub fn with_write_interrupt<R>(check: Check, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Check>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CHECK.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CHECK.with(|c| c.replace(Some(check))));
    f()
}

/// True when the host asks the blocking write on this thread to stop.
pub(crate) fn requested() -> bool {
    CHECK.with(|c| c.get()).is_some_and(|check| check())
}
