//! Python bindings of foorpc.
