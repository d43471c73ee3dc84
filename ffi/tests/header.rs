//! Checks of the committed C header, `include/foorpc.h`:
//! - it is exactly what cbindgen generates from ffi/ now (run from the
//!   workspace root, the same command as `make header`);
//! - its version macros agree with Cargo.toml, the combined one included.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("ffi/ is in the workspace root")
        .to_path_buf()
}

fn committed_header() -> String {
    std::fs::read_to_string(root().join("include/foorpc.h")).expect("include/foorpc.h exists")
}

/// The value of `#define NAME VALUE` in the header.
fn define(header: &str, name: &str) -> u64 {
    let prefix = format!("#define {name} ");
    let line = header
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("the header defines {name}"));
    let value = line[prefix.len()..].trim();
    match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    }
    .unwrap_or_else(|_| panic!("{name} is a number: {value:?}"))
}

#[test]
fn header_is_what_cbindgen_generates() {
    let cbindgen = std::env::var("CBINDGEN").unwrap_or_else(|_| "cbindgen".into());
    let version = Command::new(&cbindgen)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cbindgen} (install cbindgen 0.29.2): {e}"));
    let version = String::from_utf8_lossy(&version.stdout);
    assert_eq!(
        version.trim(),
        "cbindgen 0.29.2",
        "the header is generated with cbindgen 0.29.2 (cargo install --locked cbindgen --version 0.29.2)"
    );
    let out = std::env::temp_dir().join(format!("foorpc-header-{}.h", std::process::id()));
    let status = Command::new(&cbindgen)
        .current_dir(root())
        .args([
            "--config",
            "ffi/cbindgen.toml",
            "--crate",
            "foorpc-ffi",
            "--output",
        ])
        .arg(&out)
        .arg("ffi")
        .status()
        .expect("cbindgen runs");
    assert!(status.success(), "cbindgen failed");
    let generated = std::fs::read_to_string(&out).expect("cbindgen wrote the header");
    let _ = std::fs::remove_file(&out);
    assert!(
        generated == committed_header(),
        "include/foorpc.h is stale: regenerate it with `make header` \
         (cbindgen --config ffi/cbindgen.toml --crate foorpc-ffi --output include/foorpc.h ffi)"
    );
}

#[test]
fn version_macros_match_cargo_toml() {
    let header = committed_header();
    let major: u64 = env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap();
    let minor: u64 = env!("CARGO_PKG_VERSION_MINOR").parse().unwrap();
    let patch: u64 = env!("CARGO_PKG_VERSION_PATCH").parse().unwrap();
    assert_eq!(define(&header, "FOORPC_VERSION_MAJOR"), major);
    assert_eq!(define(&header, "FOORPC_VERSION_MINOR"), minor);
    assert_eq!(define(&header, "FOORPC_VERSION_PATCH"), patch);
    assert_eq!(
        define(&header, "FOORPC_VERSION_NUMBER"),
        (major << 16) | (minor << 8) | patch,
        "FOORPC_VERSION_NUMBER is (MAJOR << 16) | (MINOR << 8) | PATCH"
    );
    assert_eq!(
        format!("{major}.{minor}.{patch}"),
        env!("CARGO_PKG_VERSION"),
        "a plain MAJOR.MINOR.PATCH version"
    );
}

#[test]
fn header_declares_every_export_with_ownership_docs() {
    let header = committed_header();
    assert!(header.contains("extern \"C\" {"), "C++ guards");
    let decls: Vec<&str> = header
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with("typedef") && l.contains(" foorpc_"))
        .filter(|l| l.contains('('))
        .collect();
    assert!(decls.len() > 50, "{} declarations", decls.len());
    for d in &decls {
        let name = d
            .split('(')
            .next()
            .unwrap()
            .rsplit([' ', '*'])
            .next()
            .unwrap();
        assert!(name.starts_with("foorpc_"), "{name} starts with foorpc_");
    }
    // Every declaration is preceded by a doc comment.
    let lines: Vec<&str> = header.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if decls.contains(l) {
            assert_eq!(lines[i - 1].trim(), "*/", "{l} has a doc comment");
        }
    }
}
