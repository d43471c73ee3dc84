//! Gives libfoorpc.so its soname: `libfoorpc.so.MAJOR` (`libfoorpc.so.0` while
//! the version is 0.x), so that programs linked against it keep working across
//! compatible upgrades and `make install` can create the usual symlinks.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets the version");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libfoorpc.so.{major}");
    println!("cargo:rerun-if-changed=build.rs");
}
