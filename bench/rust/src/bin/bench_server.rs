//! The server under test: `add(a, b)` and `echo(x)`, both `Execution::Inline`.
//!
//! Usage: `bench_server ADDRESS` (e.g. `tcp://127.0.0.1:0`). Prints one line,
//! `listening ADDRESS`, then serves until stdin closes or SIGTERM.

use std::io::Read;

use foorpc::{Error, Execution, Router, Server, Value};

fn main() {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://127.0.0.1:0".into());
    let mut router = Router::new();
    router.typed("add", Execution::Inline, |(a, b): (i64, i64)| Ok(a + b));
    router.method_inline("echo", |params| match <[Value; 1]>::try_from(params) {
        Ok([x]) => Ok(x),
        Err(_) => Err(Error::Remote(Error::error_object(
            1,
            "echo takes one argument",
        ))),
    });
    let server = match Server::builder()
        .router(router)
        .bind(&address)
        .and_then(|b| b.start())
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench_server: {e}");
            std::process::exit(1);
        }
    };
    println!("listening {}", server.local_addr());
    // Serve until the driver closes our stdin (or kills us).
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    // Exit without the graceful drain: the driver is done with us.
    std::process::exit(0);
}
