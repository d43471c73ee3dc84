//! The method-name table under many and awkward names, and the per-thread
//! read batch (`BATCH` in conn.rs) under nesting and panics.
//!
//! - Many names, among them families that shared their full 64-bit hash
//!   under a word-at-a-time multiplicative hash once tried for this table
//!   ("method_av"/"method_ia", "get_by_ao"/"get_by_id", "" and "\0" x 8):
//!   every one reaches its own handler, and unregistered names close to
//!   registered ones are rejected.
//! - An inline handler makes a synchronous call to another server while
//!   pipelined requests wait in the batch of the read that brought it: the
//!   nested read on the same thread takes its own batch, and no request of
//!   the outer batch is lost, repeated or answered out of its msgid.
//! - A completion callback that panics in the middle of a batch: the rest
//!   of the batch is delivered, the connection reads on, and so do the
//!   other connections this thread reads.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use foorpc::{Client, Error, Execution, Message, Router, Value};

/// Every two-character suffix from [a-z0-9] (about 60% of "method_xy"
/// collided under the multiplicative hash once tried).
fn two_char_suffixes() -> Vec<String> {
    let alnum: Vec<char> = ('a'..='z').chain('0'..='9').collect();
    let mut out = Vec::new();
    for &c in &alnum {
        for &d in &alnum {
            out.push(format!("{c}{d}"));
        }
    }
    out
}

fn registered_names() -> Vec<String> {
    let mut names: Vec<String> = two_char_suffixes()
        .iter()
        .map(|s| format!("method_{s}"))
        .collect();
    names.extend(["get_by_ao", "get_by_id", "handle_ay", "handle_id"].map(String::from));
    // The empty name, and lengths that are multiples of 8.
    names.extend(["", "abcdefgh", "abcdefghabcdefgh", "x", "\0\0\0\0\0\0\0\0x"].map(String::from));
    // Long shared prefixes.
    let prefix = "a_long_shared_prefix_".repeat(8);
    names.extend((0..50).map(|i| format!("{prefix}{i}")));
    names
}

/// Unregistered names, some of which collided with a registered one under
/// the multiplicative hash once tried.
fn unregistered_names() -> Vec<String> {
    [
        "\0\0\0\0\0\0\0\0",                  // collided with ""
        "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",  // collided with ""
        "\0\0\0\0\0\0\0\0method_av",         // collided with "method_av"
        "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0x", // collided with "x"
        "method_",
        "method_a",
        "method_avv",
        "Method_av",
        "get_by_ia",
        "abcdefg",
        "abcdefghabcdefg",
        "\0",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn many_method_names_all_reach_their_own_handler_and_unknown_ones_are_rejected() {
    let names = registered_names();
    let mut router = Router::new();
    for n in &names {
        let me = n.clone();
        router.register(n, Execution::Inline, move |req| {
            req.responder.ok(Value::from(me.as_str()))
        });
    }
    // Notifications by colliding names, each recording which handler saw it.
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let notif_names = ["method_av", "method_ia", "", "\0\0\0\0\0\0\0\0"];
    for n in notif_names.iter().take(3) {
        let (me, seen) = (n.to_string(), seen.clone());
        router.notification(n, Execution::Inline, move |note| {
            seen.lock().unwrap().push((me.clone(), note.method.clone()));
        });
    }
    let server = start_tcp(router);
    let client = Client::connect(&server.local_addr().to_string()).unwrap();

    // Pipelined: every call in flight before the first reply is read.
    let calls: Vec<_> = names
        .iter()
        .map(|n| (n.clone(), client.call_async(n, &[], CALL).unwrap()))
        .collect();
    for (n, call) in calls {
        let got = call.wait().unwrap_or_else(|e| panic!("{n:?}: {e:?}"));
        assert_eq!(
            got.as_str(),
            Some(n.as_str()),
            "{n:?} reached another handler"
        );
    }
    for n in unregistered_names() {
        let err = client.call_value(&n, &[], CALL).unwrap_err();
        let (_, msg) = code_message(&err);
        assert!(msg.contains("unknown method"), "{n:?}: {msg}");
    }
    for n in notif_names {
        client.notify(n, &[]).unwrap();
    }
    // A call after the notifications: its reply means they were dispatched
    // (inline, in order, on the same connection).
    assert_eq!(client.call_value("x", &[], CALL).unwrap(), Value::from("x"));
    assert!(eventually(PROMPT, || seen.lock().unwrap().len() >= 3));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            ("method_av".to_string(), "method_av".to_string()),
            ("method_ia".to_string(), "method_ia".to_string()),
            (String::new(), String::new()),
        ],
        "a notification reached the wrong handler, or the unregistered one was taken"
    );
}

/// Reads `n` responses and returns them by msgid (each msgid once).
fn read_responses(peer: &mut RawPeer<std::net::TcpStream>, n: usize) -> HashMap<u32, Value> {
    let mut got = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "only {} of {n} responses arrived",
            got.len()
        );
        match peer.read_msg(left) {
            Read1::Msg(Message::Response {
                msgid,
                error,
                result,
            }) => {
                assert!(error.is_nil(), "msgid {msgid}: error {error:?}");
                assert!(
                    got.insert(msgid, result).is_none(),
                    "msgid {msgid} answered twice"
                );
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }
    got
}

#[test]
fn inline_handler_calls_another_server_synchronously_amid_pipelined_requests() {
    // Server B: `chatty(x, k)` sends k notifications to its caller, then answers x.
    let mut b_router = calc_router();
    b_router.register("chatty", Execution::Inline, |req| {
        let x = req.params.first().cloned().unwrap_or(Value::Nil);
        let k = req.params.get(1).and_then(Value::as_u64).unwrap_or(0);
        for i in 0..k {
            let _ = req.peer.notify("noise", &[Value::from(i)]);
        }
        req.responder.ok(x);
    });
    let server_b = start_tcp(b_router);
    // A client of B without handlers: read by its callers, so the synchronous
    // call below reads B's replies on A's I/O thread, inside A's batch.
    let to_b = Arc::new(Client::connect(&server_b.local_addr().to_string()).unwrap());

    // Server A: `relay(x, k)` (inline) = B's chatty(x, k), called synchronously;
    // `self_call` (inline) tries a synchronous call on its own connection.
    let mut a_router = calc_router();
    let b = to_b.clone();
    a_router.register("relay", Execution::Inline, move |req| {
        let r = b.call_value("chatty", &req.params, CALL);
        req.responder.respond(r);
    });
    a_router.register("self_call", Execution::Inline, |req| {
        let r = req
            .peer
            .call_value("anything", &[], Some(Duration::from_secs(2)));
        let answer = match r {
            Err(Error::Usage(_)) => Value::from("refused"),
            other => Value::from(format!("unexpected: {other:?}")),
        };
        req.responder.ok(answer);
    });
    let server_a = start_tcp(a_router);
    let mut peer = RawPeer::connect(&tcp_host_port(&server_a));

    let mut msgid = 0u32;
    for (n, k) in [
        (3usize, 0u64),
        (64, 3),
        (65, 0),
        (300, 100),
        (10, 200),
        (130, 1),
    ] {
        // One write: the requests arrive together and are processed as one batch
        // (or a few), with relays (each a nested read) among them.
        let mut bytes = Vec::new();
        let mut want = HashMap::new();
        for i in 0..n {
            let id = msgid;
            msgid += 1;
            let x = Value::from(id as i64 * 7);
            match i % 4 {
                0 => {
                    bytes.extend(request_bytes(id, "relay", &[x.clone(), Value::from(k)]));
                    want.insert(id, x);
                }
                1 => {
                    bytes.extend(request_bytes(id, "add", &[x.clone(), Value::from(1)]));
                    want.insert(id, Value::from(id as i64 * 7 + 1));
                }
                2 if i % 8 == 2 => {
                    bytes.extend(request_bytes(id, "self_call", &[]));
                    want.insert(id, Value::from("refused"));
                }
                _ => {
                    bytes.extend(request_bytes(id, "echo", std::slice::from_ref(&x)));
                    want.insert(id, x);
                }
            }
        }
        peer.send(&bytes);
        let got = read_responses(&mut peer, n);
        assert_eq!(got, want, "batch of {n} with {k} notifications per relay");
    }
    // Nothing extra arrives afterwards.
    peer.expect_open_and_silent(Duration::from_millis(200));
    // Both connections still work.
    assert_eq!(to_b.call::<i64>("add", (1, 2)).unwrap(), 3);
    let client_a = Client::connect(&server_a.local_addr().to_string()).unwrap();
    assert_eq!(
        client_a
            .call_value("relay", &[Value::from(5), Value::from(1)], CALL)
            .unwrap(),
        Value::from(5)
    );
}

/// Runs `n` pipelined add calls on a loop-driven client, driving it on this
/// thread; returns the results in msgid order.
fn loop_driven_adds(client: &Client, n: i64) -> Vec<i64> {
    let out: Arc<Mutex<Vec<(u32, i64)>>> = Arc::default();
    client.cork();
    for i in 0..n {
        let call = client
            .call_async("add", &[Value::from(i), Value::from(1)], CALL)
            .unwrap();
        let (id, out) = (call.msgid(), out.clone());
        call.on_complete(move |r| {
            let v = r.ok().and_then(|v| v.as_i64()).unwrap_or(-1);
            out.lock().unwrap().push((id, v));
        });
    }
    client.uncork();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.lock().unwrap().len() < n as usize && Instant::now() < deadline {
        loop_once(client, Duration::from_millis(50)).unwrap();
    }
    let mut got = out.lock().unwrap().clone();
    got.sort();
    got.into_iter().map(|(_, v)| v).collect()
}

#[test]
fn a_panicking_completion_callback_leaves_this_threads_other_connections_working() {
    let server = start_tcp(calc_router());
    let address = server.local_addr().to_string();
    let c1 = Client::connect(&address).unwrap();
    let c2 = Client::connect(&address).unwrap();
    c1.drive_from_event_loop().unwrap();
    c2.drive_from_event_loop().unwrap();
    // Warm up this thread's kept batch on c2.
    assert_eq!(loop_driven_adds(&c2, 5), vec![1, 2, 3, 4, 5]);

    // Five calls on c1 whose replies come in one read; the third callback panics.
    let done: Arc<Mutex<Vec<i64>>> = Arc::default();
    c1.cork();
    for i in 0..5i64 {
        let call = c1
            .call_async(
                "add",
                &[Value::from(i), Value::from(1)],
                Some(Duration::from_secs(3)),
            )
            .unwrap();
        let done = done.clone();
        call.on_complete(move |r| {
            if i == 2 {
                panic!("callback panics on purpose");
            }
            done.lock()
                .unwrap()
                .push(r.map(|v| v.as_i64().unwrap()).unwrap_or(-1));
        });
    }
    c1.uncork();
    c1.flush().unwrap();
    assert_ne!(poll_client(&c1, libc::POLLIN, PROMPT), 0);
    thread::sleep(Duration::from_millis(200)); // let all five replies land
    c1.read_ready().unwrap();
    assert_eq!(
        *done.lock().unwrap(),
        vec![1, 2, 4, 5],
        "the calls before and after the panicking callback completed"
    );

    // This thread's other connection keeps working, with batches below and
    // above the kept size.
    assert_eq!(loop_driven_adds(&c2, 3), vec![1, 2, 3]);
    let many = loop_driven_adds(&c2, 200);
    assert_eq!(many, (1..=200).collect::<Vec<i64>>());
    assert_eq!(loop_driven_adds(&c2, 10), (1..=10).collect::<Vec<i64>>());
}

/// After a completion callback panics inside `read_ready`, the connection
/// reads on (before, the panic unwound through the reader: its lock stayed
/// poisoned and the connection corked, and it never read again).
#[test]
fn after_a_panicking_callback_the_connection_still_reads() {
    let server = start_tcp(calc_router());
    let c1 = Client::connect(&server.local_addr().to_string()).unwrap();
    c1.drive_from_event_loop().unwrap();
    let call = c1
        .call_async("add", &[Value::from(1), Value::from(1)], CALL)
        .unwrap();
    call.on_complete(|_| panic!("callback panics on purpose"));
    c1.flush().unwrap();
    assert_ne!(poll_client(&c1, libc::POLLIN, PROMPT), 0);
    c1.read_ready().unwrap();
    // A new call on the same connection.
    let result = loop_driven_adds(&c1, 1);
    assert_eq!(result, vec![1]);
}
