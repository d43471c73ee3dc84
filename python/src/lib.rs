//! Python bindings of foorpc: the private extension module `foorpc._native`.
//!
//! The public API is the `foorpc` package (pysrc/foorpc), which re-exports
//! and extends these classes.

mod aio_await;
mod aio_client;
mod aio_future;
mod aio_protocol;
mod client;
mod cmethod;
mod convert;
mod errors;
mod interpreter;
mod limits;
mod server;

#[pyo3::pymodule(gil_used = false)]
mod _native {
    use pyo3::prelude::*;

    #[pymodule_export]
    use crate::aio_client::{AsyncClient, LoopDriver};
    #[pymodule_export]
    use crate::aio_future::{CallFuture, Completions};
    #[pymodule_export]
    use crate::client::{Client, Peer};
    #[pymodule_export]
    use crate::server::{Responder, ServerCore};

    /// Deepest nesting of lists and dicts converted to or from MessagePack.
    #[pymodule_export]
    const MAX_DEPTH: usize = crate::convert::MAX_DEPTH;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        crate::aio_protocol::install(&m.py().get_type::<CallFuture>())?;
        crate::aio_client::install(&m.py().get_type::<AsyncClient>())?;
        crate::interpreter::install(m)?;
        m.add("DEFAULT_LIMITS", crate::limits::defaults(m.py())?)?;
        Ok(())
    }
}
