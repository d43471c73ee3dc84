//! The hasher of the tables on the request path: the method handlers, the
//! calls in flight and the reactor's connections.
//!
//! std's SipHash was a tenth of a server's own work per request (the method
//! name of every request, the reactor's token of every event). foldhash's
//! fast variant costs a few multiplications per word and is seeded at
//! random per process, so a peer cannot plan keys that collide: it cannot
//! insert keys into these tables, but it can choose which names it asks for
//! and which of this side's calls and connections it keeps open.

/// A `BuildHasher` for those tables.
pub(crate) type FastState = foldhash::fast::RandomState;
