//! A small foorpc server: `add(a, b)`, `echo(x)`, `fail(msg)` and `sleep_ms(n)`.
//!
//! Run: `cargo run --release -p foorpc --example calc_server -- tcp://127.0.0.1:5555`
//! It prints one line once it listens and serves until SIGINT or SIGTERM.

use std::time::Duration;

use foorpc::{Error, Execution, Router, Server, Value};

fn main() {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://127.0.0.1:5555".into());
    // Block the termination signals before any thread starts, so that only
    // the main thread receives them (in sigwait below).
    let signals = termination_signals();

    let mut router = Router::new();
    router.typed("add", Execution::Inline, |(a, b): (i64, i64)| Ok(a + b));
    router.method_inline("echo", |params| match <[Value; 1]>::try_from(params) {
        Ok([x]) => Ok(x),
        Err(_) => Err(Error::Remote(Error::error_object(
            1,
            "echo takes one argument",
        ))),
    });
    router.method_inline("fail", |params| {
        let msg = params.first().and_then(Value::as_str).unwrap_or("failed");
        Err(Error::Remote(Error::error_object(0, msg)))
    });
    // Answered later from another thread: the I/O thread is never held up.
    router.register("sleep_ms", Execution::Inline, |req| {
        let ms = req.params.first().and_then(Value::as_u64).unwrap_or(0);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            req.responder.ok(Value::from(ms));
        });
    });

    let server = match Server::builder()
        .router(router)
        .bind(&address)
        .and_then(|b| b.start())
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("calc_server: {e}");
            std::process::exit(1);
        }
    };
    println!("calc_server listening on {}", server.local_addr());

    wait_for(&signals);
    server.shutdown();
}

fn termination_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-mask calls on a local sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for(set: &libc::sigset_t) {
    let mut sig = 0;
    // SAFETY: `set` is initialised; sigwait writes the signal number into `sig`.
    unsafe { libc::sigwait(set, &mut sig) };
}
