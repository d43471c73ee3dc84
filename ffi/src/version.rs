//! The library version, as a string and as header macros.
//!
//! The macros are plain constants here because cbindgen copies literals only;
//! the assertions below fail the build when they disagree with Cargo.toml,
//! and `ffi/tests/header.rs` checks the generated header too.

use std::os::raw::c_char;

/// Major version of the foorpc header (the library's version is foorpc_version()).
pub const FOORPC_VERSION_MAJOR: u32 = 0;
/// Minor version of the foorpc header.
pub const FOORPC_VERSION_MINOR: u32 = 1;
/// Patch version of the foorpc header.
pub const FOORPC_VERSION_PATCH: u32 = 0;
/// The header's version as one number, (MAJOR << 16) | (MINOR << 8) | PATCH,
/// for `#if FOORPC_VERSION_NUMBER >= 0x000100` checks.
pub const FOORPC_VERSION_NUMBER: u32 = 0x000100;

const fn parse(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut n = 0;
    while i < b.len() {
        assert!(b[i].is_ascii_digit(), "version parts are numbers");
        n = n * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    n
}

const _: () = {
    assert!(FOORPC_VERSION_MAJOR == parse(env!("CARGO_PKG_VERSION_MAJOR")));
    assert!(FOORPC_VERSION_MINOR == parse(env!("CARGO_PKG_VERSION_MINOR")));
    assert!(FOORPC_VERSION_PATCH == parse(env!("CARGO_PKG_VERSION_PATCH")));
    assert!(
        FOORPC_VERSION_NUMBER
            == (FOORPC_VERSION_MAJOR << 16) | (FOORPC_VERSION_MINOR << 8) | FOORPC_VERSION_PATCH
    );
    assert!(FOORPC_VERSION_MINOR < 256 && FOORPC_VERSION_PATCH < 256);
};

/// The library's version, e.g. "0.1.0": a static NUL-terminated string the
/// caller must not free. Compare with the FOORPC_VERSION_* macros to detect
/// a header/library mismatch. Thread-safe.
#[no_mangle]
pub extern "C" fn foorpc_version() -> *const c_char {
    ffi_panic_boundary! {
        concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
    }
}
