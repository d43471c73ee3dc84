//! The C ABI of foorpc.
