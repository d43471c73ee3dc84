//! foorpc's Rust conformance server (tests/interop/README.md has the contract).
//!
//! `conformance_server (--port N | --unix PATH)` prints one line once it
//! listens and serves until SIGTERM or SIGINT.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foorpc::{Error, Execution, Router, Server, Value};

type Seen = Arc<Mutex<HashMap<u64, Vec<Value>>>>;

/// The longest `sleep_ms` accepted, as in the C conformance server.
const MAX_SLEEP_MS: u64 = 3_600_000;

fn main() {
    let args = foorpc_interop::parse_args("conformance_server");
    let signals = block_termination_signals();

    let seen: Seen = Arc::default();
    let mut router = Router::new();
    router.typed("add", Execution::Inline, |(a, b): (i64, i64)| {
        a.checked_add(b).ok_or_else(|| {
            Error::Remote(Error::error_object(
                1,
                "add takes two integers whose sum fits int64",
            ))
        })
    });
    router.method_inline("echo", |params| match <[Value; 1]>::try_from(params) {
        Ok([x]) => Ok(x),
        Err(_) => Err(Error::Remote(Error::error_object(
            1,
            "echo takes one argument",
        ))),
    });
    router.method_inline("fail", |params| {
        let msg = params.first().and_then(Value::as_str).unwrap_or("fail");
        Err(Error::Remote(Error::error_object(0, msg)))
    });
    router.register("sleep_ms", Execution::Inline, |req| {
        let ms = match req.params.as_slice() {
            [n] => n.as_u64().filter(|&ms| ms <= MAX_SLEEP_MS),
            _ => None,
        };
        let Some(ms) = ms else {
            return req.responder.error(Error::error_object(
                1,
                "sleep_ms takes a number of milliseconds (at most one hour)",
            ));
        };
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            req.responder.ok(Value::from(ms));
        });
    });
    let recorded = seen.clone();
    router.notification_fallback(Execution::Inline, move |n| {
        let entry = Value::Array(vec![Value::from(n.method), Value::Array(n.params)]);
        let mut seen = recorded.lock().unwrap();
        seen.entry(n.peer.id()).or_default().push(entry);
    });
    router.register("get_notifications", Execution::Inline, move |req| {
        let seen = seen.lock().unwrap();
        let list = seen.get(&req.peer.id()).cloned().unwrap_or_default();
        req.responder.ok(Value::Array(list));
    });
    // Runs on the pool: it blocks while the client answers.
    router.register("call_back", Execution::Pool, |req| {
        let mut params = req.params.into_iter();
        let (Some(method), Some(Value::Array(inner))) = (params.next(), params.next()) else {
            return req
                .responder
                .error(Error::error_object(1, "call_back(method, params)"));
        };
        let method = method.as_str().unwrap_or_default().to_owned();
        match req
            .peer
            .call_value(&method, &inner, req.peer.default_timeout())
        {
            Ok(v) => req.responder.ok(v),
            Err(Error::Remote(e)) => req.responder.error(e),
            Err(e) => req.responder.respond(Err(e)),
        }
    });
    router.register("disconnect", Execution::Inline, |req| {
        req.peer.close();
        drop(req.responder); // the connection is closed: nothing is sent
    });

    let server = Server::builder()
        .router(router)
        .bind(&args.address)
        .and_then(|b| b.start())
        .unwrap_or_else(|e| {
            eprintln!("conformance_server: {e}");
            std::process::exit(1)
        });
    println!(
        "rust conformance server listening on {}",
        server.local_addr()
    );
    let mut sig = 0;
    // SAFETY: waits on the signal set blocked above.
    unsafe { libc::sigwait(&signals, &mut sig) };
    server.shutdown();
}

fn block_termination_signals() -> libc::sigset_t {
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
