//! The C ABI of foorpc: `libfoorpc.so` / `libfoorpc.a` and `include/foorpc.h`.
//!
//! The model is rustls-ffi (see DESIGN.md section 4):
//! - opaque handles (`foorpc_client`, `foorpc_client_options`,
//!   `foorpc_server`, `foorpc_responder`, `foorpc_peer`, `foorpc_buf`,
//!   `foorpc_writer`, `foorpc_reader`): plain Rust structs that
//!   cbindgen emits as incomplete C types, always handed out boxed;
//! - every fallible function returns a [`foorpc_result`] and writes outputs
//!   only on success; the detailed message of the last failure is kept per
//!   thread ([`error`]);
//! - every export body runs inside [`ffi_panic_boundary!`], so no panic
//!   crosses into C;
//! - parameters and results cross as MessagePack bytes; [`msgpack`] gives C a
//!   small writer and reader.
//!
//! # Layout
//! - `panic`: the panic boundary and the null-check macros;
//! - `error`: `foorpc_result`, its messages, the per-thread last error;
//! - `buf`: owned output bytes (`foorpc_buf`);
//! - `msgpack`: `foorpc_writer`, `foorpc_reader`, `foorpc_type`;
//! - `client`: `foorpc_client_*` and `foorpc_client_options_*`;
//! - `server`: `foorpc_server_*` and `foorpc_responder_*`;
//! - `handler`: the handler callbacks and flags, shared by servers and
//!   client options;
//! - `limits`: the `FOORPC_LIMIT_*` names of the limits servers and clients
//!   apply to their peers;
//! - `peer`: `foorpc_peer_*` (a connection, as handlers see it) and the
//!   calling machinery shared with clients;
//! - `version`: `foorpc_version()` and the version macros.

#![allow(non_camel_case_types)]
// Every export checks its pointers for NULL; the remaining contract (valid,
// live pointers of the right type) is stated in each function's C docs.
#![allow(clippy::missing_safety_doc)]
#![allow(clippy::not_unsafe_ptr_arg_deref)]

#[macro_use]
mod panic;

pub mod buf;
pub mod client;
pub mod error;
pub mod handler;
pub mod limits;
pub mod msgpack;
pub mod peer;
pub mod server;
pub mod version;

pub use buf::foorpc_buf;
pub use client::{foorpc_client, foorpc_client_options};
pub use error::foorpc_result;
pub use msgpack::{foorpc_reader, foorpc_type, foorpc_writer};
pub use peer::foorpc_peer;
pub use server::{foorpc_responder, foorpc_server};
