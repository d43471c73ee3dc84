//! foorpc: a MessagePack-RPC runtime for Rust, C and Python programs.
//!
//! The wire format is the public MessagePack-RPC specification, so foorpc
//! talks to any msgpack-rpc peer. Either side of a connection may call the
//! other.
//!
//! ```no_run
//! use foorpc::{Client, Execution, Router, Server};
//!
//! let mut router = Router::new();
//! router.typed("add", Execution::Inline, |(a, b): (i64, i64)| Ok(a + b));
//! let server = Server::builder().router(router).bind("tcp://127.0.0.1:0")?.start()?;
//!
//! let client = Client::connect(&server.local_addr().to_string())?;
//! let sum: i64 = client.call("add", (1, 2))?;
//! assert_eq!(sum, 3);
//! # Ok::<(), foorpc::Error>(())
//! ```
//!
//! # Layout
//! Each layer knows only the ones below it:
//! - [`value`](Value) and [`message`]: the dynamic value (rmpv's, which keeps
//!   exact MessagePack types) and the three message kinds;
//! - [`codec`]: encoding (also of caller-encoded params and results), and an
//!   incremental decoder with limits;
//! - [`transport`]: TCP and Unix sockets and addresses;
//! - `conn`: one connection: buffers, calls in flight, dispatch; read by
//!   waiting callers (leader/followers, a blocking `recv` in the caller), by
//!   a reactor, or by the program's own event loop
//!   ([`Peer::drive_from_event_loop`]);
//! - `reactor`: the mio event loop, and call deadlines for background calls;
//! - `pending`: msgid allocation and reply slots;
//! - [`dispatch`]: handlers and the exactly-once [`Responder`]; `pool`: the
//!   worker threads of blocking handlers;
//! - `fork`: what changes in a child process;
//! - [`Client`], [`Peer`], [`Server`]: the public handles.
//!
//! The C ABI (`ffi/`) and the Python bindings (`python/`) are thin layers
//! over [`Peer`], [`Router`] and [`Responder`]; they pass MessagePack bytes
//! through the `*_encoded` calls so that no [`Value`] tree is built for them.

mod bufpool;
mod client;
pub mod codec;
mod conn;
mod deadline;
pub mod dispatch;
pub mod error;
mod fasthash;
mod fork;
mod interrupt;
pub mod limits;
pub mod message;
mod peer;
mod pending;
mod pool;
mod reactor;
mod serial;
mod server;
pub mod transport;

/// Hands back a byte buffer received from an `*_encoded` call once it is
/// used, so that the next large result can reuse it.
pub use bufpool::recycle;
pub use client::{Client, ClientBuilder, DEFAULT_CALL_TIMEOUT, DEFAULT_CONNECT_TIMEOUT};
pub use conn::MAX_CALLS_IN_FLIGHT;
pub use dispatch::{Execution, Notification, Request, Responder, Router};
pub use error::{Error, Result, ERROR_CODE_EXCEPTION, ERROR_CODE_VALIDATION};
/// A number that changes in a child process after every `fork()`: front
/// ends compare it (one atomic load) to refuse objects inherited across fork.
pub use fork::generation as fork_generation;
pub use interrupt::with_write_interrupt;
pub use limits::Limits;
pub use message::Message;
pub use peer::{encoded_result, from_value, to_params, CallCanceller, Peer, PendingCall};
pub use rmpv::Value;
pub use server::{Server, ServerBuilder, DEFAULT_DRAIN_TIMEOUT};
pub use transport::Address;
