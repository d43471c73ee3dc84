//! Server behaviour: limits, graceful shutdown, notifications from clients.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use foorpc::{Client, Error, Execution, Limits, Message, Router, Server, Value};

/// calc_router plus `block`: reports that it started, then answers once the gate opens.
fn blocking_router(gate: &Gate) -> (Router, mpsc::Receiver<()>) {
    let mut router = calc_router();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let g = gate.clone();
    router.register("block", Execution::Pool, move |req| {
        let _ = tx.lock().unwrap().send(());
        g.wait(Duration::from_secs(20));
        req.responder.ok(Value::from("unblocked"));
    });
    (router, rx)
}

// ---- limits -------------------------------------------------------------------

#[test]
fn max_in_flight_refuses_the_excess_and_the_connection_keeps_working() {
    let gate = Gate::new();
    let (router, started) = blocking_router(&gate);
    let limits = Limits {
        max_in_flight: 2,
        ..Limits::default()
    };
    let server = start_with(router, "tcp://127.0.0.1:0", limits);
    let address = server.local_addr().to_string();
    let a = Client::connect(&address).unwrap();

    let b1 = a.call_async("block", &[], CALL).unwrap();
    let b2 = a.call_async("block", &[], CALL).unwrap();
    for _ in 0..2 {
        started.recv_timeout(PROMPT).expect("block did not start");
    }
    // Two requests are being handled: the next ones get an error reply each.
    for i in 0..3 {
        let err = a.call::<i64>("add", (i, 1)).unwrap_err();
        let (_, msg) = code_message(&err);
        assert!(msg.contains("limit exceeded"), "{msg}");
    }
    assert!(!a.is_closed());
    // The limit is per connection: another client is not affected.
    let other = Client::connect(&address).unwrap();
    assert_eq!(other.call::<i64>("add", (1, 1)).unwrap(), 2);

    gate.open();
    assert_eq!(b1.wait().unwrap(), Value::from("unblocked"));
    assert_eq!(b2.wait().unwrap(), Value::from("unblocked"));
    // The slots are free again.
    for i in 0..5 {
        assert_eq!(a.call::<i64>("add", (i, 1)).unwrap(), i + 1);
    }
}

#[test]
fn max_connections_closes_the_extra_connection_at_once() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let server = start_with(calc_router(), "tcp://127.0.0.1:0", limits);
    let address = server.local_addr().to_string();
    let a = Client::connect(&address).unwrap();
    let b = Client::connect(&address).unwrap();
    assert_eq!(a.call::<i64>("add", (1, 1)).unwrap(), 2);
    assert_eq!(b.call::<i64>("add", (2, 2)).unwrap(), 4);
    assert!(eventually(PROMPT, || server.connection_count() == 2));

    // A third connection is closed at once (with no reply to its request).
    let mut raw = RawPeer::connect(&tcp_host_port(&server));
    raw.send(&request_bytes(1, "add", &[Value::from(1), Value::from(2)]));
    let seen = raw.expect_closed_within(PROMPT);
    assert!(seen.is_empty(), "{seen:?}");
    // A foorpc client over the limit fails its call, it does not hang.
    let c = Client::connect(&address).unwrap();
    let start = Instant::now();
    let err = c
        .call::<i64>("add", (1, 2))
        .expect_err("a call over the connection limit succeeded");
    assert!(err.is_connection_error(), "{err:?}");
    assert!(start.elapsed() < PROMPT);

    // The existing connections keep working.
    assert_eq!(a.call::<i64>("add", (3, 3)).unwrap(), 6);
    assert_eq!(b.call::<i64>("add", (4, 4)).unwrap(), 8);
    assert_eq!(server.connection_count(), 2);

    // Once one leaves, a new connection is accepted.
    drop(a);
    assert!(eventually(PROMPT, || server.connection_count() == 1));
    let d = Client::connect(&address).unwrap();
    assert_eq!(d.call::<i64>("add", (5, 5)).unwrap(), 10);
}

/// A peer that sends requests and never reads the replies is read no
/// further once `max_write_backlog` bytes of replies wait for it (plus what
/// the sockets hold): the server's memory stays bounded, other connections
/// are served, and once the peer reads, every reply arrives, none lost.
#[test]
fn a_peer_that_reads_no_replies_is_not_read_past_the_write_backlog() {
    const CALLS: u32 = 2000;
    const REPLY: usize = 16 * 1024; // 2000 replies: 32 MiB
    let handled = Arc::new(AtomicUsize::new(0));
    let mut router = calc_router();
    let count = handled.clone();
    router.method_inline("blob", move |params| {
        count.fetch_add(1, Ordering::SeqCst);
        let tag = params.first().and_then(Value::as_u64).unwrap_or(0) as u8;
        Ok(Value::Binary(vec![tag; REPLY]))
    });
    let limits = Limits {
        max_write_backlog: 256 * 1024,
        ..Limits::default()
    };
    let server = start_with(router, "tcp://127.0.0.1:0", limits);
    let mut raw = RawPeer::connect(&tcp_host_port(&server));
    let requests: Vec<u8> = (0..CALLS)
        .flat_map(|i| request_bytes(i, "blob", &[Value::from(i % 251)]))
        .collect();
    raw.send(&requests); // about 30 KiB: the sockets take it at once

    // The server stops once the replies fill the sockets and the backlog.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = usize::MAX;
    while Instant::now() < deadline {
        let now = handled.load(Ordering::SeqCst);
        if now == last || now == CALLS as usize {
            break;
        }
        last = now;
        thread::sleep(Duration::from_millis(300));
    }
    let before_reading = handled.load(Ordering::SeqCst);
    assert!(
        before_reading < CALLS as usize / 2,
        "{before_reading} of {CALLS} requests were handled while no reply was read"
    );
    // Other connections are served meanwhile.
    let other = Client::connect(&server.local_addr().to_string()).unwrap();
    assert_eq!(other.call::<i64>("add", (1, 2)).unwrap(), 3);

    // Reading resumes the server: every reply comes, in order, intact.
    for i in 0..CALLS {
        let (error, result) = raw.expect_response(i);
        assert_eq!(error, Value::Nil);
        assert_eq!(
            result,
            Value::Binary(vec![(i % 251) as u8; REPLY]),
            "reply {i}"
        );
    }
    assert_eq!(handled.load(Ordering::SeqCst), CALLS as usize);
    assert_eq!(other.call::<i64>("add", (2, 3)).unwrap(), 5);
}

/// How many of `started` have begun, once the count stops moving (at most 10 s).
fn settled(started: &AtomicUsize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    // The first handler may take a while to start on a busy machine.
    eventually(Duration::from_secs(10), || {
        started.load(Ordering::SeqCst) > 0
    });
    let mut last = usize::MAX;
    while Instant::now() < deadline {
        let now = started.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
        thread::sleep(Duration::from_millis(300));
    }
    started.load(Ordering::SeqCst)
}

const HELD_PARAM: usize = 64 * 1024;
const HELD_LIMIT: usize = 256 * 1024;
const HELD_MESSAGES: u32 = 200; // 12.5 MiB

fn request_backlog_limits() -> Limits {
    Limits {
        max_request_backlog: HELD_LIMIT,
        ..Limits::default()
    }
}

/// Sends `bytes` from another thread (the server stops reading them) and
/// checks that no more handlers start than `HELD_LIMIT` lets through, one
/// message over it included.
fn send_while_held_back(
    raw: &RawPeer<std::net::TcpStream>,
    bytes: Vec<u8>,
    started: &AtomicUsize,
) -> thread::JoinHandle<()> {
    let mut writer = raw.stream.try_clone().unwrap();
    let sender = thread::spawn(move || writer.write_all(&bytes).unwrap());
    let before = settled(started);
    let most = HELD_LIMIT / HELD_PARAM + 1;
    assert!(
        (1..=most).contains(&before),
        "{before} handlers started while they held the messages (limit: {most})"
    );
    sender
}

/// The length of a bin first param (0 for anything else).
fn first_bin_len(params: &[Value]) -> usize {
    params
        .first()
        .and_then(Value::as_slice)
        .map_or(0, <[u8]>::len)
}

/// calc_router plus `slow_len(bin)`, on the pool: counts itself in
/// `started`, waits for the gate, then answers the bin's length.
fn slow_len_router(gate: &Gate, started: &Arc<AtomicUsize>) -> Router {
    let mut router = calc_router();
    let (g, count) = (gate.clone(), started.clone());
    router.register("slow_len", Execution::Pool, move |req| {
        count.fetch_add(1, Ordering::SeqCst);
        g.wait(Duration::from_secs(20));
        let len = first_bin_len(&req.params);
        req.responder.ok(Value::from(len));
    });
    router
}

/// Reads `n` success replies in any order (pool handlers finish in any
/// order), by msgid.
fn replies_by_msgid(
    raw: &mut RawPeer<std::net::TcpStream>,
    n: u32,
) -> std::collections::HashMap<u32, Value> {
    let mut replies = std::collections::HashMap::new();
    for _ in 0..n {
        match raw.expect_msg() {
            foorpc::Message::Response {
                msgid,
                error,
                result,
            } => {
                assert_eq!(error, Value::Nil, "reply {msgid}");
                replies.insert(msgid, result);
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }
    replies
}

/// A peer whose requests wait on slow pool handlers is read no further once
/// `max_request_backlog` bytes of them are held (a request over the limit
/// still goes through, then reading stops): the pool does not take up every
/// request the peer can send. Other connections are served, and once the
/// handlers finish, every request is handled and answered.
#[test]
fn requests_held_by_slow_handlers_stop_reading_past_the_request_backlog() {
    let gate = Gate::new();
    let started = Arc::new(AtomicUsize::new(0));
    let router = slow_len_router(&gate, &started);
    let server = start_with(router, "tcp://127.0.0.1:0", request_backlog_limits());
    let mut raw = RawPeer::connect(&tcp_host_port(&server));
    let requests: Vec<u8> = (0..HELD_MESSAGES)
        .flat_map(|i| {
            request_bytes(
                i,
                "slow_len",
                &[Value::Binary(vec![1; HELD_PARAM + i as usize])],
            )
        })
        .collect();
    let sender = send_while_held_back(&raw, requests, &started);
    let other = Client::connect(&server.local_addr().to_string()).unwrap();
    assert_eq!(other.call::<i64>("add", (1, 2)).unwrap(), 3);

    gate.open();
    let replies = replies_by_msgid(&mut raw, HELD_MESSAGES);
    for i in 0..HELD_MESSAGES {
        assert_eq!(
            replies.get(&i),
            Some(&Value::from(HELD_PARAM + i as usize)),
            "reply {i}"
        );
    }
    sender.join().unwrap();
    assert_eq!(started.load(Ordering::SeqCst), HELD_MESSAGES as usize);
}

/// Requests whose handlers panic, drop their responder or do not exist are
/// answered with an error and stop being held: far more than the limit of
/// them goes through without reading ever stopping.
#[test]
fn requests_answered_by_errors_stop_being_held() {
    let mut router = calc_router();
    router.register("panics", Execution::Pool, |_| panic!("handler bug"));
    router.register("drops", Execution::Inline, drop);
    let server = start_with(router, "tcp://127.0.0.1:0", request_backlog_limits());
    let mut raw = RawPeer::connect(&tcp_host_port(&server));
    let methods = ["panics", "drops", "no_such_method"];
    let per_method = 4 * HELD_LIMIT / HELD_PARAM; // four times the limit each
    for (m, method) in methods.iter().enumerate() {
        for i in 0..per_method {
            let msgid = (m * per_method + i) as u32;
            raw.send(&request_bytes(
                msgid,
                method,
                &[Value::Binary(vec![5; HELD_PARAM])],
            ));
            let (error, _) = raw.expect_response(msgid);
            assert!(!error.is_nil(), "{method} #{i} answered without an error");
        }
    }
    let other = Client::connect(&server.local_addr().to_string()).unwrap();
    assert_eq!(other.call::<i64>("add", (1, 2)).unwrap(), 3);
    raw.send(&request_bytes(
        9999,
        "add",
        &[Value::from(2), Value::from(3)],
    ));
    assert_eq!(raw.expect_response(9999), (Value::Nil, Value::from(5)));
}

/// Notifications for a handler on the worker pool count as held until it
/// has run: a peer cannot queue them without bound behind a slow handler.
#[test]
fn notifications_queued_for_the_pool_stop_reading_past_the_request_backlog() {
    let gate = Gate::new();
    let (started, bytes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut router = calc_router();
    let (g, count, total) = (gate.clone(), started.clone(), bytes.clone());
    router.notification("slow_note", Execution::Pool, move |n| {
        count.fetch_add(1, Ordering::SeqCst);
        g.wait(Duration::from_secs(20));
        let len = first_bin_len(&n.params);
        total.fetch_add(len, Ordering::SeqCst);
    });
    let server = start_with(router, "tcp://127.0.0.1:0", request_backlog_limits());
    let raw = RawPeer::connect(&tcp_host_port(&server));
    let notes: Vec<u8> = (0..HELD_MESSAGES)
        .flat_map(|_| {
            let mut out = Vec::new();
            foorpc::codec::encode_notification(
                &mut out,
                "slow_note",
                &[Value::Binary(vec![2; HELD_PARAM])],
            );
            out
        })
        .collect();
    let sender = send_while_held_back(&raw, notes, &started);
    gate.open();
    sender.join().unwrap();
    let all = HELD_MESSAGES as usize * HELD_PARAM;
    assert!(
        eventually(Duration::from_secs(10), || bytes.load(Ordering::SeqCst)
            == all),
        "{} of {all} bytes of notifications handled",
        bytes.load(Ordering::SeqCst)
    );
    drop(raw);
}

/// Requests held back at the request backlog are still answered when the
/// peer ends its stream right after them: nothing it sent is lost. The
/// server's event loop is kept busy while the peer sends, so that the
/// requests and the end of the stream are read in one batch.
#[test]
fn requests_held_back_when_the_peer_ends_its_stream_are_all_answered() {
    const PARAM: usize = 6 * 1024;
    const N: u32 = 10; // 60 KiB: four times the limit, one read
    let gate = Gate::new();
    let started = Arc::new(AtomicUsize::new(0));
    let mut router = slow_len_router(&gate, &started);
    router.method_inline("stall_loop", |_| {
        thread::sleep(Duration::from_millis(500));
        Ok(Value::Nil)
    });
    let limits = Limits {
        max_request_backlog: 16 * 1024,
        ..Limits::default()
    };
    let server = start_with(router, "tcp://127.0.0.1:0", limits);
    let mut raw = RawPeer::connect(&tcp_host_port(&server));
    assert!(eventually(PROMPT, || server.connection_count() == 1));
    let address = server.local_addr().to_string();
    let staller = thread::spawn(move || {
        let c = Client::connect(&address).unwrap();
        c.call_value("stall_loop", &[], CALL).unwrap();
    });
    thread::sleep(Duration::from_millis(150)); // the event loop is asleep in stall_loop
    let requests: Vec<u8> = (0..N)
        .flat_map(|i| request_bytes(i, "slow_len", &[Value::Binary(vec![1; PARAM])]))
        .collect();
    raw.send(&requests);
    raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
    staller.join().unwrap();
    let before = settled(&started);
    assert!(before < N as usize, "{before} of {N} handlers started");
    gate.open();
    let replies = replies_by_msgid(&mut raw, N);
    assert_eq!(replies.len(), N as usize);
    assert!(
        replies.values().all(|r| *r == Value::from(PARAM)),
        "{replies:?}"
    );
    assert!(raw.expect_closed_within(Duration::from_secs(5)).is_empty());
}

/// Handlers that keep their responder hold their request until they answer.
/// Answering from another connection's inline handler resumes the paused
/// peer on the event loop, later: never inside the handler that answered.
#[test]
fn a_paused_peer_resumes_outside_the_handler_that_relieved_it() {
    static PUBLISHING: AtomicBool = AtomicBool::new(false);
    let parked = Arc::new(Mutex::new(Vec::<foorpc::Responder>::new()));
    let nested = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let mut router = calc_router();
    let (p, n, count) = (parked.clone(), nested.clone(), started.clone());
    router.register("park", Execution::Inline, move |req| {
        count.fetch_add(1, Ordering::SeqCst);
        if PUBLISHING.load(Ordering::SeqCst) {
            n.fetch_add(1, Ordering::SeqCst);
        }
        p.lock().unwrap().push(req.responder);
    });
    let p = parked.clone();
    router.register("publish", Execution::Inline, move |req| {
        let waiting = std::mem::take(&mut *p.lock().unwrap());
        PUBLISHING.store(true, Ordering::SeqCst);
        let answered = waiting.len();
        for r in waiting {
            r.ok(Value::from("published"));
        }
        PUBLISHING.store(false, Ordering::SeqCst);
        req.responder.ok(Value::from(answered));
    });
    let server = start_with(router, "tcp://127.0.0.1:0", request_backlog_limits());
    let mut raw = RawPeer::connect(&tcp_host_port(&server));
    const N: u32 = 20;
    let requests: Vec<u8> = (0..N)
        .flat_map(|i| request_bytes(i, "park", &[Value::Binary(vec![1; HELD_PARAM])]))
        .collect();
    raw.send(&requests);
    let before = settled(&started);
    assert!(
        before < N as usize,
        "{before} of {N} requests parked at once"
    );
    let publisher = Client::connect(&server.local_addr().to_string()).unwrap();
    let mut published = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while published < N as u64 && Instant::now() < deadline {
        published += publisher.call::<u64>("publish", ()).unwrap();
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(published, N as u64);
    for _ in 0..N {
        let msg = raw.expect_msg();
        assert!(matches!(msg, foorpc::Message::Response { .. }), "{msg:?}");
    }
    assert_eq!(
        nested.load(Ordering::SeqCst),
        0,
        "handlers ran inside publish"
    );
}

/// A server whose `len_via_client(bin)` calls the client's `twice(len)`
/// (waiting up to `wait`) and answers with that; `started` counts handlers.
fn calling_back_server(wait: Duration, started: &Arc<AtomicUsize>) -> Server {
    let mut router = calc_router();
    let count = started.clone();
    router.register("len_via_client", Execution::Pool, move |req| {
        count.fetch_add(1, Ordering::SeqCst);
        let len = first_bin_len(&req.params);
        let r = req
            .peer
            .call_value("twice", &[Value::from(len)], Some(wait));
        req.responder.respond(r);
    });
    start_with(router, "tcp://127.0.0.1:0", request_backlog_limits())
}

/// Held requests do not stop reading while the server waits for replies
/// from the same peer, up to `CALLBACK_ALLOWANCE` (4) times the limit:
/// handlers that call back get their answers.
#[test]
fn handlers_calling_back_get_their_replies_past_the_request_backlog() {
    let server = calling_back_server(Duration::from_secs(10), &Arc::default());
    let mut client_router = Router::new();
    client_router.method_inline("twice", |params| {
        Ok(Value::from(
            params.first().and_then(Value::as_u64).unwrap_or(0) * 2,
        ))
    });
    let client = Client::builder()
        .router(client_router)
        .connect(&server.local_addr().to_string())
        .unwrap();
    // 12 x 64 KiB: three times the limit.
    let calls: Vec<_> = (0..12)
        .map(|i| {
            let bin = Value::Binary(vec![3; HELD_PARAM + i]);
            client
                .peer()
                .call_async("len_via_client", &[bin], Some(Duration::from_secs(20)))
                .unwrap()
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(
            call.wait().unwrap(),
            Value::from(2 * (HELD_PARAM + i)),
            "call {i}"
        );
    }
}

/// A peer that never answers the server's calls cannot lift the limit:
/// past four times it, reading stops all the same.
#[test]
fn a_peer_ignoring_callbacks_is_not_read_past_four_times_the_request_backlog() {
    let started = Arc::new(AtomicUsize::new(0));
    let server = calling_back_server(Duration::from_secs(3), &started);
    let raw = RawPeer::connect(&tcp_host_port(&server));
    let requests: Vec<u8> = (0..HELD_MESSAGES)
        .flat_map(|i| request_bytes(i, "len_via_client", &[Value::Binary(vec![4; HELD_PARAM])]))
        .collect();
    let mut writer = raw.stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let _ = writer.write_all(&requests); // the server closes it in the end
    });
    let before = settled(&started);
    let most = 4 * HELD_LIMIT / HELD_PARAM + 1;
    assert!(
        (HELD_LIMIT / HELD_PARAM + 1..=most).contains(&before),
        "{before} handlers started while waiting on the peer (allowed: {most})"
    );
    drop(raw);
    drop(server);
    sender.join().unwrap();
}

#[test]
fn max_message_size_rejects_a_large_message() {
    let limits = Limits {
        max_message_size: 1024,
        ..Limits::default()
    };
    let server = start_with(calc_router(), "tcp://127.0.0.1:0", limits);
    let address = server.local_addr().to_string();
    let small = Client::connect(&address).unwrap();
    let big = Client::connect(&address).unwrap();

    let ok = Value::Binary(vec![7; 500]);
    assert_eq!(
        small
            .call_value("echo", std::slice::from_ref(&ok), CALL)
            .unwrap(),
        ok
    );

    let start = Instant::now();
    let err = big
        .call_value(
            "echo",
            &[Value::Binary(vec![7; 2000])],
            Some(Duration::from_secs(10)),
        )
        .unwrap_err();
    assert!(err.is_connection_error(), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(big.is_closed());
    // Only the offending connection was closed.
    assert_eq!(
        small
            .call_value("echo", std::slice::from_ref(&ok), CALL)
            .unwrap(),
        ok
    );
    assert!(eventually(PROMPT, || server.connection_count() == 1));
}

#[test]
fn client_limits_apply_to_replies() {
    let server = start_tcp(calc_router());
    let address = server.local_addr().to_string();
    let client = Client::builder()
        .limits(Limits {
            max_message_size: 1024,
            max_depth: 8,
            ..Limits::default()
        })
        .connect(&address)
        .unwrap();
    let ok = Value::Binary(vec![1; 500]);
    assert_eq!(
        client
            .call_value("echo", std::slice::from_ref(&ok), CALL)
            .unwrap(),
        ok
    );
    // The reply is too large for this client.
    match client.call_value("echo", &[Value::Binary(vec![1; 2000])], CALL) {
        Err(e @ Error::MessageLimitExceeded(_)) => {
            assert!(e.is_connection_error());
            assert!(e.to_string().contains("1024-byte limit"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(client.is_closed());

    // nils(2000): small on the wire (2 KB), too large decoded for this
    // client (80 KB); a reply taken as MessagePack bytes counts the same way.
    let mut router = calc_router();
    router.method_inline("nils", |params| {
        let n = params.first().and_then(Value::as_u64).unwrap_or(0) as usize;
        Ok(Value::Array(vec![Value::Nil; n]))
    });
    let nils_server = start_tcp(router);
    let small_decoded = Limits {
        max_decoded_size: 64 * 1024,
        ..Limits::default()
    };
    for raw in [false, true] {
        let client = Client::builder()
            .limits(small_decoded.clone())
            .connect(&nils_server.local_addr().to_string())
            .unwrap();
        assert_eq!(client.call::<Vec<()>>("nils", (100,)).unwrap().len(), 100);
        let outcome = if raw {
            client
                .call_encoded("nils", &[0x91, 0xcd, 0x07, 0xd0], CALL)
                .map(|_| ())
        } else {
            client
                .call_value("nils", &[Value::from(2000)], CALL)
                .map(|_| ())
        };
        match outcome {
            Err(Error::MessageLimitExceeded(m)) => assert!(m.contains("decoded"), "{m}"),
            other => panic!("raw {raw}: {other:?}"),
        }
        assert!(client.is_closed());
    }

    // Too deep for this client.
    let client = Client::builder()
        .limits(Limits {
            max_depth: 8,
            ..Limits::default()
        })
        .connect(&address)
        .unwrap();
    let mut deep = Value::Nil;
    for _ in 0..10 {
        deep = Value::Array(vec![deep]);
    }
    assert!(matches!(
        client.call_value("echo", &[deep], CALL),
        Err(Error::MessageLimitExceeded(_))
    ));
    assert!(client.is_closed());
}

#[test]
fn custom_depth_limit_on_the_server() {
    let limits = Limits {
        max_depth: 4,
        ..Limits::default()
    };
    let server = start_with(calc_router(), "tcp://127.0.0.1:0", limits);
    let address = server.local_addr().to_string();
    let client = Client::connect(&address).unwrap();
    // message(1) > params(2) > [x](3) > [nil](4): allowed.
    let ok = Value::Array(vec![Value::Array(vec![Value::Nil])]);
    assert_eq!(
        client
            .call_value("echo", std::slice::from_ref(&ok), CALL)
            .unwrap(),
        ok
    );
    let too_deep = Value::Array(vec![ok]);
    let err = client.call_value("echo", &[too_deep], CALL).unwrap_err();
    assert!(err.is_connection_error(), "{err:?}");
}

#[test]
fn a_peer_has_its_connections_limits() {
    let server_limits = Limits {
        max_depth: 200,
        ..Limits::default()
    };
    let mut router = calc_router();
    router.register("peer_depth", Execution::Inline, |req| {
        req.responder
            .ok(Value::from(req.peer.limits().max_depth as u64));
    });
    let server = start_with(router, "tcp://127.0.0.1:0", server_limits);
    let address = server.local_addr().to_string();
    let client_limits = Limits {
        max_depth: 4,
        ..Limits::default()
    };
    let client = Client::builder()
        .limits(client_limits.clone())
        .connect(&address)
        .unwrap();
    assert_eq!(client.limits(), &client_limits);
    // A server connection's peer has the server's limits.
    assert_eq!(client.call::<u64>("peer_depth", ()).unwrap(), 200);
    // Caller-encoded params are checked against them, and the reason gives
    // the configured limit (the message array counts).
    client
        .call_encoded("echo", &[0x91, 0x91, 0x01], CALL)
        .unwrap();
    match client.call_encoded("echo", &[0x91, 0x91, 0x91, 0x91, 0x01], CALL) {
        Err(Error::Usage(m)) => assert!(m.contains("deeper than the 4-level limit"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(!client.is_closed());
}

// ---- graceful shutdown ------------------------------------------------------------

#[test]
fn shutdown_lets_a_call_in_flight_finish() {
    let mut router = calc_router();
    let (tx, started) = mpsc::channel();
    let tx = Mutex::new(tx);
    router.register("slow", Execution::Pool, move |req| {
        let _ = tx.lock().unwrap().send(());
        thread::sleep(Duration::from_millis(300));
        req.responder.ok(Value::from("done"));
    });
    let server = start_tcp(router);
    let client = Client::connect(&server.local_addr().to_string()).unwrap();
    let caller = {
        let c = client.clone();
        thread::spawn(move || c.call_value("slow", &[], Some(Duration::from_secs(10))))
    };
    started.recv_timeout(PROMPT).unwrap();
    server.shutdown();
    assert_eq!(caller.join().unwrap().unwrap(), Value::from("done"));
    // After shutdown the connection is closed.
    assert!(client
        .call_value("add", &[Value::from(1), Value::from(1)], Some(PROMPT))
        .unwrap_err()
        .is_connection_error());
    server.shutdown(); // twice is fine
}

#[test]
fn shutdown_refuses_new_connections_and_requests_while_draining() {
    let gate = Gate::new();
    let (router, started) = blocking_router(&gate);
    let server = start_tcp(router);
    let address = server.local_addr().to_string();
    let busy = Client::connect(&address).unwrap();
    let idle = Client::connect(&address).unwrap();
    assert_eq!(idle.call::<i64>("add", (1, 1)).unwrap(), 2);

    let call_done = Arc::new(AtomicBool::new(false));
    let caller = {
        let (busy, call_done) = (busy.clone(), call_done.clone());
        thread::spawn(move || {
            let r = busy.call_value("block", &[], Some(Duration::from_secs(10)));
            call_done.store(true, Ordering::SeqCst);
            r
        })
    };
    started.recv_timeout(PROMPT).unwrap();

    thread::scope(|s| {
        let shutting = s.spawn(|| server.shutdown());
        // New connections are refused once shutdown has started.
        assert!(
            eventually(PROMPT, || Client::builder()
                .connect_timeout(Duration::from_secs(1))
                .connect(&address)
                .is_err()),
            "still accepting connections during shutdown"
        );
        // New requests on open connections get an error reply.
        let mut last = None;
        assert!(
            eventually(PROMPT, || {
                let r = idle.call::<i64>("add", (1, 1));
                let refused = matches!(&r, Err(Error::Remote(_)));
                last = Some(r);
                refused
            }),
            "requests still served during shutdown: {last:?}"
        );
        let (_, msg) = code_message(last.unwrap().as_ref().unwrap_err());
        assert!(msg.contains("shutting down"), "{msg}");
        // The call in flight is still waiting for its handler, not cut off.
        assert!(!call_done.load(Ordering::SeqCst));
        assert!(!shutting.is_finished());
        gate.open();
        shutting.join().unwrap();
    });
    assert_eq!(caller.join().unwrap().unwrap(), Value::from("unblocked"));
    assert!(eventually(PROMPT, || idle
        .call::<i64>("add", (1, 1))
        .is_err_and(|e| e.is_connection_error())));
}

#[test]
fn shutdown_does_not_wait_longer_than_the_drain_timeout() {
    let gate = Gate::new();
    let (router, started) = blocking_router(&gate);
    let server = Server::builder()
        .router(router)
        .drain_timeout(Duration::from_millis(200))
        .bind("tcp://127.0.0.1:0")
        .unwrap()
        .start()
        .unwrap();
    let client = Client::connect(&server.local_addr().to_string()).unwrap();
    let caller = {
        let c = client.clone();
        thread::spawn(move || c.call_value("block", &[], Some(Duration::from_secs(20))))
    };
    started.recv_timeout(PROMPT).unwrap();
    let start = Instant::now();
    server.shutdown();
    assert!(start.elapsed() < Duration::from_secs(10), "shutdown hung");
    // The abandoned call fails instead of waiting for its 20 s timeout.
    let r = caller.join().unwrap();
    assert!(r.as_ref().is_err_and(|e| e.is_connection_error()), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
    gate.open();
}

#[test]
fn shutdown_from_the_io_thread_returns_and_the_drain_finishes() {
    // An inline handler runs on the server's I/O thread: shutdown there (and
    // again, and dropping a handle) must return at once, and the shutdown
    // must still finish, so that waiters on other threads wake.
    let slot: Arc<Mutex<Option<Arc<Server>>>> = Arc::new(Mutex::new(None));
    let (tx, returned) = mpsc::channel();
    let tx = Mutex::new(tx);
    let mut router = calc_router();
    let s = slot.clone();
    router.register("stop", Execution::Inline, move |req| {
        req.responder.ok(Value::from("stopping"));
        let server = s.lock().unwrap().take();
        if let Some(server) = server {
            server.shutdown();
            server.shutdown(); // a second call must not wait on this thread
            drop(server);
            let _ = tx.lock().unwrap().send(());
        }
    });
    let server = Arc::new(start_tcp(router));
    *slot.lock().unwrap() = Some(server.clone());
    let address = server.local_addr().to_string();
    let client = Client::connect(&address).unwrap();
    let _ = client.call_value("stop", &[], Some(PROMPT));
    if returned.recv_timeout(PROMPT).is_err() {
        std::mem::forget(server); // its drop would wait too
        panic!("shutdown on the I/O thread did not return");
    }
    let (tx, waited) = mpsc::channel();
    let waiter = {
        let server = server.clone();
        thread::spawn(move || {
            server.wait();
            let _ = tx.send(());
        })
    };
    if waited.recv_timeout(Duration::from_secs(10)).is_err() {
        std::mem::forget(server);
        panic!("the shutdown started on the I/O thread never finished");
    }
    waiter.join().unwrap();
    assert!(Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .connect(&address)
        .is_err());
    server.shutdown(); // from another thread afterwards: returns at once
}

#[test]
fn shutdown_waits_for_peers_that_do_not_read_one_deadline_in_all() {
    // Each peer asks for a reply far larger than the socket buffers, reads
    // its first bytes (so the server is writing it), then reads no more.
    const PEERS: usize = 5;
    const BIG: usize = 24 << 20;
    let mut router = calc_router();
    router.register("big", Execution::Inline, |req| {
        req.responder.ok(Value::Binary(vec![7; BIG]));
    });
    let server = start_tcp(router);
    let host_port = tcp_host_port(&server);
    let mut peers = Vec::new();
    for i in 0..PEERS {
        let mut s = std::net::TcpStream::connect(&host_port).unwrap();
        s.set_read_timeout(Some(PROMPT)).unwrap();
        s.write_all(&request_bytes(i as u32 + 1, "big", &[]))
            .unwrap();
        let mut first = [0u8; 16];
        std::io::Read::read_exact(&mut s, &mut first).expect("the reply did not start");
        peers.push(s);
    }
    let start = Instant::now();
    server.shutdown();
    let took = start.elapsed();
    // About 1 s in all; 1 s per peer before.
    assert!(
        took < Duration::from_millis(3500),
        "shutdown took {took:?} with {PEERS} peers that do not read"
    );
    drop(peers);
}

#[test]
fn shutdown_in_a_forked_child_returns_and_the_parent_serves_on() {
    let server = start_tcp(calc_router());
    let address = server.local_addr().to_string();
    let client = Client::connect(&address).unwrap();
    assert_eq!(client.call::<i64>("add", (1, 1)).unwrap(), 2);
    // SAFETY: the child only shuts its copy of the server down and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: in the child; alarm ends it if shutdown hangs.
        unsafe { libc::alarm(20) };
        server.shutdown();
        server.wait();
        drop(server);
        // SAFETY: leaves the child without running the test harness's exit.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    let mut exited = false;
    for _ in 0..3000 {
        // SAFETY: waits for our own child without blocking.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            exited = true;
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    if !exited {
        // SAFETY: our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut status, 0);
        }
    }
    assert!(
        exited && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child's shutdown did not return (status {status:#x})"
    );
    // The parent's server was not touched.
    assert_eq!(client.call::<i64>("add", (2, 3)).unwrap(), 5);
    let other = Client::connect(&address).unwrap();
    assert_eq!(other.call::<i64>("add", (3, 3)).unwrap(), 6);
}

#[test]
fn unix_socket_file_is_removed_after_shutdown() {
    let dir = TempDir::new("shutdown");
    let (address, path) = dir.socket("srv.sock");
    let server = start(calc_router(), &address);
    assert!(path.exists());
    let client = Client::connect(&address).unwrap();
    assert_eq!(client.call::<i64>("add", (2, 3)).unwrap(), 5);
    server.shutdown();
    assert!(!path.exists(), "the socket file was left behind");
    assert!(Client::connect(&address).is_err());
    // A new server can bind the same path.
    let again = start(calc_router(), &address);
    let client = Client::connect(&address).unwrap();
    assert_eq!(client.call::<i64>("add", (3, 3)).unwrap(), 6);
    drop(again);
    assert!(!path.exists());
}

#[test]
fn one_server_several_addresses() {
    let dir = TempDir::new("multi");
    let (unix, _) = dir.socket("m.sock");
    let server = Server::builder()
        .router(calc_router())
        .bind("tcp://127.0.0.1:0")
        .unwrap()
        .bind(&unix)
        .unwrap()
        .start()
        .unwrap();
    assert_eq!(server.local_addrs().len(), 2);
    for addr in server.local_addrs() {
        let c = Client::connect(&addr.to_string()).unwrap();
        assert_eq!(c.call::<i64>("add", (20, 22)).unwrap(), 42);
    }
    assert!(matches!(Server::builder().start(), Err(Error::Usage(_))));
}

// ---- notifications --------------------------------------------------------------

#[test]
fn client_notifications_arrive_in_order() {
    let seen = Arc::new(Mutex::new(Vec::<i64>::new()));
    let pooled = Arc::new(AtomicUsize::new(0));
    let unknown = Arc::new(AtomicUsize::new(0));
    let mut router = calc_router();
    {
        let notes = seen.clone();
        router.notification("note", Execution::Inline, move |n| {
            let v = n.params.first().and_then(Value::as_i64).expect("an int");
            notes.lock().unwrap().push(v);
        });
        let pooled = pooled.clone();
        router.notification("slow_note", Execution::Pool, move |_| {
            pooled.fetch_add(1, Ordering::SeqCst);
        });
        let unknown = unknown.clone();
        router.notification_fallback(Execution::Inline, move |n| {
            assert_eq!(n.method, "whatever");
            unknown.fetch_add(1, Ordering::SeqCst);
        });
        let seen = seen.clone();
        router.method("seen", move |_| {
            let v = seen.lock().unwrap().clone();
            Ok(Value::Array(v.into_iter().map(Value::from).collect()))
        });
    }
    let server = start_tcp(router);
    let client = Client::connect(&server.local_addr().to_string()).unwrap();
    for i in 0..100i64 {
        client.notify("note", &[Value::from(i)]).unwrap();
        client.notify("slow_note", &[]).unwrap();
        client.notify("whatever", &[]).unwrap();
    }
    // The call is read after the notes, so it sees all of them, in order.
    let got: Vec<i64> = client.call("seen", ()).unwrap();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    assert_eq!(unknown.load(Ordering::SeqCst), 100);
    assert!(eventually(PROMPT, || pooled.load(Ordering::SeqCst) == 100));
}

/// calc_router plus `note(v)`, an ordered notification handler that records
/// `v` in the returned log; the one given 0 first waits for the gate.
fn ordered_note_router() -> (Gate, Arc<Mutex<Vec<i64>>>, Router) {
    let gate = Gate::new();
    let seen = Arc::new(Mutex::new(Vec::<i64>::new()));
    let mut router = calc_router();
    let (g, log) = (gate.clone(), seen.clone());
    router.notification("note", Execution::Ordered, move |n| {
        let v = n.params[0].as_i64().expect("an int");
        if v == 0 {
            g.wait(Duration::from_secs(20));
        }
        log.lock().unwrap().push(v);
    });
    (gate, seen, router)
}

/// `Execution::Ordered` handlers run off the I/O thread, one at a time per
/// connection and in arrival order: a slow one holds up only the later
/// ordered messages of its own connection. Inline calls on that connection,
/// and another connection's ordered work, go on meanwhile.
#[test]
fn ordered_handlers_keep_arrival_order_without_holding_up_the_server() {
    let (gate, seen, mut router) = ordered_note_router();
    {
        let seen = seen.clone();
        router.register("record", Execution::Ordered, move |req| {
            let v = req.params[0].as_i64().expect("an int");
            seen.lock().unwrap().push(v);
            req.responder.ok(Value::from(v));
        });
    }
    let server = start_tcp(router);
    let address = server.local_addr().to_string();
    let (a, b) = (
        Client::connect(&address).unwrap(),
        Client::connect(&address).unwrap(),
    );
    for i in 0..100 {
        a.notify("note", &[Value::from(i)]).unwrap();
    }
    let a_last = a.call_async("record", &[Value::from(100)], CALL).unwrap();
    assert_eq!(a.call::<i64>("add", (1, 2)).unwrap(), 3);
    for i in 1000..1010 {
        b.notify("note", &[Value::from(i)]).unwrap();
    }
    assert_eq!(
        b.call_value("record", &[Value::from(2000)], CALL).unwrap(),
        Value::from(2000)
    );
    let b_order: Vec<i64> = (1000..1010).chain([2000]).collect();
    assert_eq!(*seen.lock().unwrap(), b_order, "a's messages ran early");
    gate.open();
    assert_eq!(a_last.wait().unwrap(), Value::from(100));
    let a_order: Vec<i64> = seen
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|v| *v <= 100)
        .collect();
    assert_eq!(a_order, (0..=100).collect::<Vec<i64>>());
}

/// A handler that closes its connection (`Peer::close`) while a large reply
/// waits for the peer to read it: that reply is still written whole, then
/// the connection ends, without waiting for the handlers still running on
/// it (their replies go nowhere).
#[test]
fn closing_a_peer_writes_what_was_queued_and_waits_for_no_handler() {
    const BLOB: usize = 24 << 20;
    let gate = Gate::new();
    let mut router = calc_router();
    router.method_inline("blob", |_| Ok(Value::Binary(vec![5; BLOB])));
    let g = gate.clone();
    router.register("block", Execution::Pool, move |req| {
        g.wait(Duration::from_secs(20));
        req.responder.ok(Value::from("late"));
    });
    router.notification("bye", Execution::Inline, |n| n.peer.close());
    let server = start_tcp(router);
    let mut raw = RawPeer::connect(&tcp_host_port(&server));
    let mut out = request_bytes(1, "block", &[]);
    out.extend(request_bytes(2, "blob", &[]));
    foorpc::codec::encode_notification(&mut out, "bye", &[]);
    raw.send(&out);
    thread::sleep(Duration::from_millis(200)); // the blob's reply waits, queued
    match raw.read_msg(PROMPT) {
        Read1::Msg(Message::Response {
            msgid: 2,
            result: Value::Binary(b),
            ..
        }) => assert_eq!(b.len(), BLOB),
        other => panic!("expected the blob's reply, got {other:?}"),
    }
    let end = raw.read_msg(PROMPT);
    assert!(matches!(end, Read1::Closed), "{end:?}");
    gate.open();
}

/// A `Pool` handler starts only once the `Ordered` handlers of the messages
/// that came before it on its connection have run, as if those were
/// inline: a peer that notifies, then asks, finds its notifications handled.
#[test]
fn a_pool_handler_starts_after_the_ordered_handlers_before_it() {
    let (gate, seen, mut router) = ordered_note_router();
    {
        let seen = seen.clone();
        router.method("seen", move |_| {
            let v = seen
                .lock()
                .unwrap()
                .iter()
                .map(|&v| Value::from(v))
                .collect();
            Ok(Value::Array(v))
        });
    }
    let server = start_tcp(router);
    let client = Client::connect(&server.local_addr().to_string()).unwrap();
    for i in 0..10 {
        client.notify("note", &[Value::from(i)]).unwrap();
    }
    let mut asked = client.call_async("seen", &[], CALL).unwrap();
    assert!(
        asked.wait_for(Duration::from_millis(200)).is_none(),
        "answered before the notifications before it were handled"
    );
    gate.open();
    let got = asked.wait_for(PROMPT).expect("no reply").unwrap();
    let all: Vec<Value> = (0..10).map(Value::from).collect();
    assert_eq!(got, Value::Array(all));
}

/// An inline handler that answers, then closes its connection: the reply,
/// held back with the rest of its batch's writes, goes out, and then the
/// connection ends at once (it must not wait for the drain limit).
#[test]
fn an_inline_handler_that_answers_then_closes_ends_the_connection() {
    let mut router = Router::new();
    router.register("bye", Execution::Inline, |req| {
        let peer = req.peer.clone();
        req.responder.ok(Value::from("bye"));
        peer.close();
    });
    let server = start_tcp(router);
    let mut raw = RawPeer::connect(&tcp_host_port(&server));
    thread::sleep(Duration::from_millis(200)); // registered, and no event pending
    raw.send(&request_bytes(1, "bye", &[]));
    assert_eq!(raw.expect_response(1).1, Value::from("bye"));
    let end = raw.read_msg(PROMPT);
    assert!(matches!(end, Read1::Closed), "{end:?}");
}

/// A client whose ordered notification handlers fall behind stops reading
/// once what waits for them passes `max_request_backlog` (four times that
/// while a call of its own waits), as a server does: the server's sends then
/// meet its write backlog, instead of the client's memory growing without
/// bound. Nothing is lost: once the handler catches up, every notification
/// sent is handled, in order, and the call's reply arrives.
#[test]
fn a_client_whose_ordered_handlers_fall_behind_stops_reading() {
    const NOTES: i64 = 400;
    let flooded = Arc::new(Mutex::new(None));
    let mut router = calc_router();
    {
        let flooded = flooded.clone();
        router.register("flood", Execution::Pool, move |req| {
            let note = Value::Binary(vec![1; 64 << 10]);
            let (mut sent, mut stalled_since) = (0, None);
            while sent < NOTES {
                match req.peer.notify("note", &[Value::from(sent), note.clone()]) {
                    Ok(()) => (sent, stalled_since) = (sent + 1, None),
                    // The client reads no more: give up after a second of it.
                    Err(Error::LimitExceeded(_)) => {
                        let since = *stalled_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_secs(1) {
                            break;
                        }
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            *flooded.lock().unwrap() = Some(sent);
            req.responder.ok(Value::from(sent));
        });
    }
    let server_limits = Limits {
        max_write_backlog: 1 << 20,
        ..Limits::default()
    };
    let server = start_with(router, "tcp://127.0.0.1:0", server_limits);
    let (gate, seen) = (Gate::new(), Arc::new(Mutex::new(Vec::new())));
    let mut handlers = Router::new();
    {
        let (g, seen) = (gate.clone(), seen.clone());
        handlers.notification("note", Execution::Ordered, move |n| {
            g.wait(Duration::from_secs(20));
            seen.lock()
                .unwrap()
                .push(n.params[0].as_i64().expect("an int"));
        });
    }
    let client = Client::builder()
        .router(handlers)
        .limits(Limits {
            max_request_backlog: 1 << 20,
            ..Limits::default()
        })
        .connect(&server.local_addr().to_string())
        .unwrap();
    let asked = client.call_async("flood", &[], CALL).unwrap();
    assert!(eventually(PROMPT, || flooded.lock().unwrap().is_some()));
    let sent = flooded.lock().unwrap().unwrap();
    assert!(
        sent < NOTES,
        "the client read all {sent} notifications its handler had not taken"
    );
    gate.open();
    assert_eq!(asked.wait().unwrap(), Value::from(sent));
    assert!(eventually(PROMPT, || seen.lock().unwrap().len() == sent as usize));
    assert_eq!(*seen.lock().unwrap(), (0..sent).collect::<Vec<_>>());
}

/// A shutdown's drain waits for the handlers of notifications already read
/// that went to the worker pool, ordered or not, as for requests.
#[test]
fn shutdown_waits_for_pool_and_ordered_notification_handlers() {
    let handled = Arc::new(AtomicUsize::new(0));
    let mut router = calc_router();
    for (name, execution) in [("ordered", Execution::Ordered), ("pooled", Execution::Pool)] {
        let handled = handled.clone();
        router.notification(name, execution, move |_| {
            thread::sleep(Duration::from_millis(20));
            handled.fetch_add(1, Ordering::SeqCst);
        });
    }
    let server = start_tcp(router);
    let client = Client::connect(&server.local_addr().to_string()).unwrap();
    for _ in 0..10 {
        client.notify("ordered", &[]).unwrap();
        client.notify("pooled", &[]).unwrap();
    }
    // Answered inline once read: the notifications before it were read too.
    assert_eq!(client.call::<i64>("add", (1, 2)).unwrap(), 3);
    server.shutdown();
    assert_eq!(handled.load(Ordering::SeqCst), 20);
}
