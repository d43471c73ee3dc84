//! A peer that vanishes, or stops answering, never leaves a caller hanging.

mod common;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use foorpc::{Client, ClientBuilder, Error, Execution, Message, Router, Value};

const TIMEOUT: Duration = Duration::from_secs(10);

fn assert_lost(r: foorpc::Result<Value>, what: &str) {
    match r {
        Err(Error::ConnectionLost(_)) => {}
        other => panic!("{what}: expected ConnectionLost, got {other:?}"),
    }
}

/// A raw server that reads `n` requests, then closes the connection.
fn vanishing_server(n: usize) -> (String, thread::JoinHandle<()>) {
    raw_server(move |mut peer| {
        for _ in 0..n {
            assert!(matches!(peer.expect_msg(), Message::Request { .. }));
        }
        // Dropping the peer closes the socket without answering.
    })
}

fn one_call_fails_fast(client: Client, t: thread::JoinHandle<()>) {
    let start = Instant::now();
    let r = client.call_value("add", &[Value::from(1), Value::from(2)], Some(TIMEOUT));
    let elapsed = start.elapsed();
    assert_lost(r, "the call in flight");
    assert!(
        elapsed < TIMEOUT / 2,
        "the call waited {elapsed:?} instead of failing at once"
    );
    t.join().unwrap();
    // Later calls fail at once with a clear error rather than hanging.
    assert!(client.is_closed());
    let start = Instant::now();
    assert_lost(
        client.call_value("add", &[], Some(TIMEOUT)),
        "a call after the loss",
    );
    assert!(matches!(
        client.call_async("add", &[], Some(TIMEOUT)),
        Err(Error::ConnectionLost(_))
    ));
    assert!(matches!(
        client.notify("note", &[]),
        Err(Error::ConnectionLost(_))
    ));
    assert!(start.elapsed() < TIMEOUT / 2);
}

#[test]
fn vanishing_peer_fails_the_call_at_once() {
    let (address, t) = vanishing_server(1);
    one_call_fails_fast(Client::connect(&address).unwrap(), t);
}

/// Same with a client driven by the background reactor (it has handlers).
#[test]
fn vanishing_peer_fails_the_call_at_once_with_a_reactor() {
    let (address, t) = vanishing_server(1);
    let mut router = Router::new();
    router.method_inline("ping", |_| Ok(Value::from("pong")));
    let client = ClientBuilder::default()
        .router(router)
        .connect(&address)
        .unwrap();
    one_call_fails_fast(client, t);
}

/// Every pending call of several threads fails promptly, whichever thread
/// was reading the socket.
#[test]
fn all_pending_calls_of_all_threads_fail() {
    const N: usize = 6;
    let (address, t) = vanishing_server(N + 1);
    let client = Client::connect(&address).unwrap();
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    let threads: Vec<_> = (0..N)
        .map(|i| {
            let (client, tx) = (client.clone(), tx.clone());
            thread::spawn(move || {
                let r = client.call_value("echo", &[Value::from(i)], Some(TIMEOUT));
                tx.send((i, r, Instant::now())).unwrap();
            })
        })
        .collect();
    // One more call, made asynchronously and waited on last.
    let pending = client.call_async("echo", &[], Some(TIMEOUT)).unwrap();
    for _ in 0..N {
        let (i, r, _) = rx.recv_timeout(TIMEOUT).expect("a caller hung");
        assert_lost(r, &format!("thread {i}"));
    }
    assert_lost(pending.wait(), "the async call");
    assert!(start.elapsed() < TIMEOUT / 2, "{:?}", start.elapsed());
    for th in threads {
        th.join().unwrap();
    }
    t.join().unwrap();
    assert_eq!(client.pending_calls(), 0);
    assert_lost(
        client.call_value("echo", &[], Some(TIMEOUT)),
        "a later call",
    );
}

/// A peer that keeps the connection open but never answers: the call ends
/// with Timeout, and the connection stays usable.
#[test]
fn silent_peer_times_out() {
    let (address, t) = raw_server(|mut peer| {
        let Message::Request { .. } = peer.expect_msg() else {
            panic!("expected a request")
        };
        // The second request is answered.
        let Message::Request { msgid, .. } = peer.expect_msg() else {
            panic!("expected a request")
        };
        let mut out = Vec::new();
        foorpc::codec::encode_response(&mut out, msgid, &Value::Nil, &Value::from("late"));
        peer.send(&out);
        let _ = peer.read_msg(PROMPT);
    });
    let client = Client::builder()
        .call_timeout(Some(Duration::from_millis(300)))
        .connect(&address)
        .unwrap();
    let start = Instant::now();
    assert!(matches!(
        client.call::<Value>("ignored", ()),
        Err(Error::Timeout)
    ));
    assert!(start.elapsed() < TIMEOUT / 2);
    assert_eq!(
        client.pending_calls(),
        0,
        "the timed-out call was forgotten"
    );
    assert!(!client.is_closed());
    assert_eq!(
        client
            .call_value("answered", &[], Some(Duration::from_secs(10)))
            .unwrap(),
        Value::from("late")
    );
    drop(client);
    t.join().unwrap();
}

/// Closing the client fails the calls other threads are waiting on.
#[test]
fn closing_the_client_fails_waiting_calls() {
    let mut router = calc_router();
    let gate = Gate::new();
    let g = gate.clone();
    router.register("block", Execution::Pool, move |req| {
        g.wait(PROMPT * 2);
        req.responder.ok(Value::Nil);
    });
    let server = start_tcp(router);
    let client = Client::connect(&server.local_addr().to_string()).unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let c = client.clone();
            thread::spawn(move || c.call_value("block", &[], Some(TIMEOUT)))
        })
        .collect();
    assert!(eventually(PROMPT, || client.pending_calls() == 3));
    let start = Instant::now();
    client.close();
    for w in waiters {
        assert!(matches!(w.join().unwrap(), Err(Error::Closed)));
    }
    assert!(start.elapsed() < TIMEOUT / 2);
    assert!(matches!(
        client.call_value("add", &[], CALL),
        Err(Error::Closed)
    ));
    gate.open();
}

#[test]
fn connecting_to_nobody_fails() {
    // Bind then drop a listener so that the port is (very likely) free.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start = Instant::now();
    match Client::connect(&format!("tcp://127.0.0.1:{port}")) {
        Err(Error::Io { kind, .. }) => assert_eq!(kind, std::io::ErrorKind::ConnectionRefused),
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() < TIMEOUT / 2);
    let dir = TempDir::new("nobody");
    let (address, _) = dir.socket("none.sock");
    assert!(matches!(Client::connect(&address), Err(Error::Io { .. })));
    assert!(matches!(
        Client::connect("udp://127.0.0.1:1"),
        Err(Error::InvalidAddress(_))
    ));
}
