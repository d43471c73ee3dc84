//! Arbitrary bytes sent to a live foorpc server on 127.0.0.1.
//!
//! One server per process (small limits, a router with `add`, `echo` and a
//! notification handler). For each input: connect, write the bytes in
//! pieces the first input byte chooses, half-close, read whatever comes back
//! until the server closes (bounded in time and bytes), then check that a
//! fresh connection still gets `add(1, 2) == 3`.
//!
//! Checks: the server answers the fresh connection within 5 s (no panic, no
//! hang, no stuck reactor); after our half-close the server ends the
//! connection within 5 s (it has read everything, answered what it could and
//! sees the end of the stream); every reply it sent is well-formed
//! MessagePack-RPC.
#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use foorpc::codec::{encode_request, Decoder};
use foorpc::{Execution, Limits, Message, Router, Server, Value};
use libfuzzer_sys::fuzz_target;

const WAIT: Duration = Duration::from_secs(5);

fn server_addr() -> &'static str {
    static SERVER: OnceLock<(Server, String)> = OnceLock::new();
    &SERVER
        .get_or_init(|| {
            let mut router = Router::new();
            router.typed("add", Execution::Inline, |(a, b): (i64, i64)| Ok(a + b));
            router.method_inline("echo", |params| Ok(Value::Array(params)));
            router.method("echo_pool", |params| Ok(Value::Array(params)));
            router.notification("note", Execution::Inline, |_params| {});
            let limits = Limits {
                max_message_size: 4096,
                max_decoded_size: 64 * 1024,
                max_depth: 8,
                max_in_flight: 16,
                max_connections: 64,
                max_write_backlog: 64 * 1024,
                max_request_backlog: 64 * 1024,
            };
            let server = Server::builder()
                .router(router)
                .limits(limits)
                .drain_timeout(Duration::from_secs(1))
                .bind("tcp://127.0.0.1:0")
                .expect("bind")
                .start()
                .expect("start");
            let addr = match server.local_addr() {
                foorpc::Address::Tcp(hp) => hp.clone(),
                other => panic!("not TCP: {other:?}"),
            };
            (server, addr)
        })
        .1
}

/// Reads until the server closes, `limit` bytes, or `WAIT`.
fn read_to_close(s: &mut TcpStream, limit: usize) -> (Vec<u8>, bool) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < WAIT && out.len() < limit {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset is also the server ending the connection.
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

fn check_replies(bytes: &[u8]) {
    let mut dec = Decoder::new(&Limits::default());
    let mut at = 0;
    while at < bytes.len() {
        match dec.decode(&bytes[at..]) {
            Ok(Some((Message::Response { .. }, n))) => at += n,
            Ok(Some((other, _))) => panic!("the server sent {other:?}"),
            // The server may have been cut off mid-reply by our reset.
            Ok(None) => return,
            Err(e) => panic!("the server sent bytes that do not decode: {e}"),
        }
    }
}

fn add_still_works(addr: &str) {
    let mut s = TcpStream::connect(addr).expect("connect for add");
    s.set_write_timeout(Some(WAIT)).unwrap();
    let mut req = Vec::new();
    encode_request(&mut req, 7, "add", &[Value::from(1), Value::from(2)]);
    s.write_all(&req).expect("send add");
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let mut dec = Decoder::new(&Limits::default());
    loop {
        assert!(
            start.elapsed() < WAIT,
            "the server did not answer add(1, 2) in {WAIT:?}"
        );
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => panic!("the server closed a well-behaved connection"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => panic!("reading add's reply: {e}"),
        }
        if let Some((msg, _)) = dec.decode(&got).expect("add's reply decodes") {
            match msg {
                Message::Response {
                    msgid: 7,
                    error: Value::Nil,
                    result,
                } if result.as_i64() == Some(3) => return,
                other => panic!("add(1, 2) answered {other:?}"),
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let addr = server_addr();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_write_timeout(Some(WAIT)).unwrap();
    let piece = match split % 4 {
        0 => usize::MAX,
        1 => 1,
        n => usize::from(split >> 2) + n as usize,
    };
    let mut sent_all = true;
    for chunk in stream.chunks(piece.min(stream.len().max(1))) {
        if s.write_all(chunk).is_err() {
            // The server closed on a protocol violation: fine.
            sent_all = false;
            break;
        }
        if piece < 16 {
            s.flush().ok();
        }
    }
    if sent_all {
        let _ = s.shutdown(Shutdown::Write);
    }
    let (replies, closed) = read_to_close(&mut s, 1 << 20);
    assert!(
        closed,
        "the server kept a half-closed connection open for {WAIT:?}"
    );
    check_replies(&replies);
    drop(s);
    add_still_works(addr);
});
