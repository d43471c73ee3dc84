//! A peer that vanishes, or stops answering, never leaves a caller hanging.

mod common;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use foorpc::{Client, ClientBuilder, Error, Execution, Message, Peer, Router, Value};

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

// ---- a peer that does not read -------------------------------------------------

/// Params far larger than the socket buffers hold: one bin.
const BIG: usize = 24 << 20;

/// A client connected to a listener on 127.0.0.1 that accepts and does not
/// read (until the test reads from the returned stream).
fn client_of_a_deaf_peer(builder: ClientBuilder) -> (Client, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("tcp://{}", listener.local_addr().unwrap());
    let client = builder.connect(&address).unwrap();
    let (peer, _) = listener.accept().unwrap();
    (client, peer)
}

fn big_params() -> Vec<Value> {
    vec![Value::Binary(vec![7; BIG])]
}

/// Runs `f` on another thread: its outcome, or a panic naming `what` when
/// it is still blocked after PROMPT (instead of hanging the test).
fn returns_promptly<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(PROMPT)
        .unwrap_or_else(|_| panic!("{what} blocked on a peer that does not read"))
}

/// `call_async` queues what the socket does not take and returns; the I/O
/// thread writes on. A call that times out before its request is all
/// written ends with Timeout, but the connection stays whole: the rest of
/// the request is still written, and the next call works once the peer
/// reads and answers.
#[test]
fn call_async_to_a_peer_that_does_not_read_returns_then_times_out() {
    let (client, mut peer) = client_of_a_deaf_peer(Client::builder());
    let c = client.clone();
    let pending = returns_promptly("call_async", move || {
        c.call_async("m", &big_params(), Some(Duration::from_millis(300)))
    })
    .expect("call_async failed instead of queueing");
    let (tx, rx) = mpsc::channel();
    pending.on_complete(move |r| tx.send(r).unwrap());
    let outcome = rx.recv_timeout(TIMEOUT).expect("the callback never ran");
    assert!(matches!(outcome, Err(Error::Timeout)), "{outcome:?}");
    assert!(!client.is_closed());

    // [0, 0, "m", [bin32]]: 5 bytes, then the params' 6 bytes of headers.
    peer.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut got = vec![0; 5 + 6 + BIG];
    std::io::Read::read_exact(&mut peer, &mut got).expect("the request was not all written");
    assert_eq!(&got[..6], &[0x94, 0x00, 0x00, 0xa1, b'm', 0x91]);
    assert!(got[11..].iter().all(|&b| b == 7));
    let answered = thread::spawn(move || {
        let mut request = [0u8; 6];
        std::io::Read::read_exact(&mut peer, &mut request).unwrap();
        assert_eq!(request, [0x94, 0x00, 0x01, 0xa1, b'n', 0x90]);
        let mut late_then_real = Vec::new();
        for (msgid, result) in [(0u32, "late"), (1, "real")] {
            foorpc::codec::encode_response(
                &mut late_then_real,
                msgid,
                &Value::Nil,
                &Value::from(result),
            );
        }
        std::io::Write::write_all(&mut peer, &late_then_real).unwrap();
        peer
    });
    assert_eq!(
        client.call_value("n", &[], CALL).unwrap(),
        Value::from("real")
    );
    drop(answered.join().unwrap());
}

/// `notify` queues and returns; the I/O thread writes the message as the
/// peer reads it. Meanwhile, more than `max_write_backlog` unwritten
/// refuses further non-blocking sends (the connection stays open), and
/// dropping the client does not wait for the peer.
#[test]
fn notify_to_a_peer_that_does_not_read_is_written_as_it_reads() {
    let (client, mut peer) = client_of_a_deaf_peer(Client::builder());
    let c = client.clone();
    returns_promptly("notify", move || c.notify("m", &big_params()))
        .expect("notify failed instead of queueing");
    for refused in [
        client.notify("m", &[]),
        client.call_async("m", &[], CALL).map(|_| ()),
    ] {
        match refused {
            Err(Error::LimitExceeded(why)) => assert!(why.contains("max_write_backlog"), "{why}"),
            other => panic!("expected LimitExceeded over the backlog, got {other:?}"),
        }
    }
    assert!(!client.is_closed());

    // [2, "m", [bin32]]: 4 bytes, then the params' 6 bytes of headers.
    peer.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut got = vec![0; 4 + 6 + BIG];
    std::io::Read::read_exact(&mut peer, &mut got).expect("the message was not all written");
    assert_eq!(&got[..6], &[0x93, 0x02, 0xa1, b'm', 0x91, 0xc6]);
    assert!(got[10..].iter().all(|&b| b == 7));
    client
        .notify("n", &[])
        .expect("refused after the peer read");
    let mut small = [0; 4];
    std::io::Read::read_exact(&mut peer, &mut small).unwrap();
    assert_eq!(small, [0x93, 0x02, 0xa1, b'n']);

    client.notify("m", &big_params()).unwrap();
    returns_promptly("dropping the client", move || drop(client));
}

/// Closing (or dropping) a client returns at once, but what it had queued
/// is still written, as a closed socket's buffer is: a peer that reads late
/// gets every message whole, then the end of the stream. Nothing sent after
/// the close is queued.
#[test]
fn what_was_queued_before_close_still_reaches_a_peer_that_reads_late() {
    for close in [Peer::close as fn(&Peer), |_: &Peer| {}] {
        let (client, mut peer) = client_of_a_deaf_peer(Client::builder());
        client.notify("n", &[]).unwrap();
        client.notify("m", &big_params()).unwrap();
        let handle = client.peer().clone();
        let late = returns_promptly("closing the client", move || {
            close(&handle);
            drop(client);
            handle.notify("late", &[])
        });
        assert!(matches!(late, Err(Error::Closed)), "{late:?}");
        peer.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut peer, &mut all).expect("the stream did not end");
        assert_eq!(
            all.len(),
            5 + 4 + 6 + BIG,
            "not all that was queued arrived"
        );
        assert_eq!(
            &all[..11],
            &[0x93, 0x02, 0xa1, b'n', 0x90, 0x93, 0x02, 0xa1, b'm', 0x91, 0xc6]
        );
        assert!(all[15..].iter().all(|&b| b == 7));
    }
}

/// The blocking write (Python's blocking calls and notifications) still
/// waits for the socket, up to the default timeout, then closes.
#[test]
fn a_blocking_write_to_a_peer_that_does_not_read_times_out_and_closes() {
    let builder = Client::builder().call_timeout(Some(Duration::from_millis(300)));
    let (client, _peer) = client_of_a_deaf_peer(builder);
    let mut params = vec![0x91, 0xc6];
    params.extend_from_slice(&(BIG as u32).to_be_bytes());
    params.resize(6 + BIG, 0);
    let r = client.notify_encoded_blocking_write("m", &params);
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    assert!(client.is_closed());
}

/// On a connection whose I/O thread writes (a client with handlers), a
/// blocking send does not itself wait for the socket; it waits instead
/// while more than `max_write_backlog` is queued, and at its timeout fails
/// with nothing sent: a peer that does not read cannot make the queue grow
/// without bound. The connection stays whole.
#[test]
fn a_blocking_send_waits_for_the_backlog_of_a_client_with_handlers() {
    let mut handlers = Router::new();
    handlers.method_inline("ping", |_| Ok(Value::from("pong")));
    let builder = Client::builder()
        .router(handlers)
        .call_timeout(Some(Duration::from_millis(300)));
    let (client, mut peer) = client_of_a_deaf_peer(builder);
    let mut params = vec![0x91, 0xc6];
    params.extend_from_slice(&(BIG as u32).to_be_bytes());
    params.resize(6 + BIG, 7);
    client.notify_encoded_blocking_write("m", &params).unwrap();
    let second = client.notify_encoded_blocking_write("m", &params);
    assert!(matches!(second, Err(Error::Timeout)), "{second:?}");
    assert!(!client.is_closed());
    drop(client);
    peer.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut peer, &mut all).expect("the stream did not end");
    assert_eq!(all.len(), 4 + 6 + BIG, "not exactly the first notification");
}
