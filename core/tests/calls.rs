//! Calls from many threads over one connection, slow handlers, the typed
//! API, and the shapes of errors as callers see them.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use foorpc::{
    from_value, to_params, Client, Error, Execution, Message, Router, Value, ERROR_CODE_EXCEPTION,
    ERROR_CODE_VALIDATION,
};

const THREADS: u64 = 16;
const CALLS: u64 = 1000;

/// 16 threads x 1000 calls through clones of one Client: every reply must
/// reach the thread and call that asked for it.
fn many_threads_one_connection(server: &foorpc::Server, address: &str) {
    let client = Client::connect(address).unwrap();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let client = client.clone();
            thread::spawn(move || {
                let mut slowest = Duration::ZERO;
                for i in 0..CALLS {
                    let start = Instant::now();
                    if i % 2 == 0 {
                        let v = Value::Array(vec![Value::from(t), Value::from(i)]);
                        let got = client
                            .call_value("echo", std::slice::from_ref(&v), CALL)
                            .unwrap();
                        assert_eq!(got, v, "thread {t} call {i} got someone else's reply");
                    } else {
                        let sum: u64 = client.call_timeout("add", (t * 100_000, i), CALL).unwrap();
                        assert_eq!(sum, t * 100_000 + i, "thread {t} call {i}");
                    }
                    slowest = slowest.max(start.elapsed());
                }
                // A reply read by another thread must wake its caller: none
                // may sit out most of its 10 s timeout.
                assert!(slowest < Duration::from_secs(5), "a call took {slowest:?}");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a calling thread failed");
    }
    assert_eq!(client.pending_calls(), 0);
    assert!(!client.is_closed());
    assert_eq!(
        server.connection_count(),
        1,
        "all calls used one connection"
    );
}

#[test]
fn sixteen_threads_share_one_tcp_client() {
    let server = start_tcp(calc_router());
    many_threads_one_connection(&server, &server.local_addr().to_string());
}

#[test]
fn sixteen_threads_share_one_unix_client() {
    let dir = TempDir::new("calls");
    let (address, _) = dir.socket("s.sock");
    let server = start(calc_router(), &address);
    many_threads_one_connection(&server, &address);
}

/// A pool handler sleeping 2 s holds up neither other calls on the same
/// connection nor calls on another connection.
#[test]
fn sleeping_handler_does_not_delay_other_calls() {
    let server = start_tcp(calc_router());
    let address = server.local_addr().to_string();
    let a = Client::connect(&address).unwrap();
    let b = Client::connect(&address).unwrap();

    let slow_done = Arc::new(AtomicBool::new(false));
    let slow = {
        let (a, slow_done) = (a.clone(), slow_done.clone());
        thread::spawn(move || {
            let r: u64 = a.call("sleep_ms", (2000,)).unwrap();
            slow_done.store(true, Ordering::SeqCst);
            r
        })
    };
    // Make sure the slow request is in the server before the quick ones.
    assert!(eventually(PROMPT, || a.pending_calls() == 1));
    thread::sleep(Duration::from_millis(50));

    // Quick calls from several threads on both connections.
    thread::scope(|s| {
        for t in 0..4i64 {
            let (a, b) = (&a, &b);
            s.spawn(move || {
                for i in 0..50i64 {
                    let x = t * 1000 + i;
                    assert_eq!(a.call::<i64>("add", (x, 1)).unwrap(), x + 1);
                    assert_eq!(b.call::<i64>("add", (x, 2)).unwrap(), x + 2);
                }
            });
        }
    });
    // A second slow call on the other connection runs beside the first one.
    let b_slow = b.call_async("sleep_ms", &[Value::from(100)], CALL).unwrap();
    assert_eq!(b_slow.wait().unwrap(), Value::from(100));
    assert!(
        !slow_done.load(Ordering::SeqCst),
        "the quick calls waited for the sleeping handler"
    );
    assert_eq!(slow.join().unwrap(), 2000);
}

/// An inline handler hands its Responder to another thread and answers
/// later; the I/O thread keeps serving in the meantime.
#[test]
fn inline_handler_answers_later_from_another_thread() {
    let mut router = calc_router();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let gate = Gate::new();
    let g = gate.clone();
    let started_tx = std::sync::Mutex::new(started_tx);
    router.register("later", Execution::Inline, move |req| {
        let g = g.clone();
        let x = req.params.first().cloned().unwrap_or(Value::Nil);
        started_tx.lock().unwrap().send(()).unwrap();
        thread::spawn(move || {
            assert!(g.wait(PROMPT * 2));
            req.responder
                .ok(Value::Array(vec![Value::from("later"), x]));
        });
    });
    let server = start_tcp(router);
    let client = Client::connect(&server.local_addr().to_string()).unwrap();

    let pending = client
        .call_async("later", &[Value::from(42)], CALL)
        .unwrap();
    started_rx.recv_timeout(PROMPT).unwrap();
    // While "later" waits, the same I/O thread answers other calls.
    for i in 0..10i64 {
        assert_eq!(client.call::<i64>("add", (i, i)).unwrap(), 2 * i);
    }
    let other = Client::connect(&server.local_addr().to_string()).unwrap();
    assert_eq!(other.call::<i64>("add", (2, 3)).unwrap(), 5);
    gate.open();
    assert_eq!(
        pending.wait().unwrap(),
        Value::Array(vec![Value::from("later"), Value::from(42)])
    );
}

// ---- typed API --------------------------------------------------------------

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Point {
    x: i32,
    y: i32,
}

#[test]
fn typed_calls_and_handlers() {
    let mut router = calc_router();
    router.typed(
        "scale",
        Execution::Pool,
        |(p, k): (Point, i32)| -> Result<Point, Error> {
            Ok(Point {
                x: p.x * k,
                y: p.y * k,
            })
        },
    );
    router.typed("concat", Execution::Inline, |(a, b): (String, String)| {
        Ok(a + &b)
    });
    let server = start_tcp(router);
    let client = Client::connect(&server.local_addr().to_string()).unwrap();

    assert_eq!(client.call::<i64>("add", (1, 2)).unwrap(), 3);
    assert_eq!(client.call::<i64>("add", (-5, 2)).unwrap(), -3);
    assert_eq!(
        client.call::<String>("concat", ("foo", "rpc")).unwrap(),
        "foorpc"
    );
    let p: Point = client.call("scale", (Point { x: 1, y: -2 }, 3)).unwrap();
    assert_eq!(p, Point { x: 3, y: -6 });
    // A result of the wrong type is the caller's serialization error.
    assert!(matches!(
        client.call::<String>("add", (1, 2)),
        Err(Error::Serialization(_))
    ));
    // The connection is fine after that.
    assert_eq!(client.call::<i64>("add", (20, 22)).unwrap(), 42);
}

#[test]
fn typed_handler_rejects_bad_arguments_with_a_validation_error() {
    let server = start_tcp(calc_router());
    let client = Client::connect(&server.local_addr().to_string()).unwrap();
    for bad in [
        vec![Value::from("x"), Value::from(2)],
        vec![Value::from(1)],
        vec![Value::from(1), Value::from(2), Value::from(3)],
        vec![],
    ] {
        let err = client.call_value("add", &bad, CALL).unwrap_err();
        let (code, msg) = code_message(&err);
        assert_eq!(code, ERROR_CODE_VALIDATION, "{bad:?}: {msg}");
        assert!(msg.starts_with("invalid arguments"), "{bad:?}: {msg}");
    }
    assert_eq!(client.call::<i64>("add", (1, 2)).unwrap(), 3);
}

#[test]
fn to_params_and_from_value() {
    assert_eq!(
        to_params((1, "a", true)).unwrap(),
        vec![Value::from(1), Value::from("a"), Value::from(true)]
    );
    assert_eq!(to_params((7,)).unwrap(), vec![Value::from(7)]);
    // A single non-sequence value becomes one param; unit becomes none.
    assert_eq!(to_params(5).unwrap(), vec![Value::from(5)]);
    assert_eq!(to_params(()).unwrap(), Vec::<Value>::new());
    assert_eq!(
        to_params((Point { x: 1, y: 2 },)).unwrap().len(),
        1,
        "a struct inside the tuple is one param"
    );

    let (a, b): (i64, String) =
        from_value(Value::Array(vec![Value::from(-1), Value::from("s")])).unwrap();
    assert_eq!((a, b), (-1, "s".to_owned()));
    let p: Point = from_value(rmpv::ext::to_value(Point { x: 4, y: 5 }).unwrap()).unwrap();
    assert_eq!(p, Point { x: 4, y: 5 });
    assert!(matches!(
        from_value::<i64>(Value::from("nope")),
        Err(Error::Serialization(_))
    ));
}

/// msgid 0 is a valid msgid in both directions.
#[test]
fn msgid_zero_is_valid() {
    // A raw client sends msgid 0 to a foorpc server.
    let server = start_tcp(calc_router());
    let mut raw = RawPeer::connect(&tcp_host_port(&server));
    raw.send(&request_bytes(0, "add", &[Value::from(1), Value::from(2)]));
    assert_eq!(raw.expect_response(0), (Value::Nil, Value::from(3)));

    // A foorpc client's first call uses msgid 0; a raw server answers it.
    let (address, t) = raw_server(|mut peer| {
        for _ in 0..2 {
            let Message::Request { msgid, params, .. } = peer.expect_msg() else {
                panic!("expected a request");
            };
            let mut out = Vec::new();
            foorpc::codec::encode_response(&mut out, msgid, &Value::Nil, &params[0]);
            peer.send(&out);
        }
    });
    let client = Client::connect(&address).unwrap();
    let first = client
        .call_async("echo", &[Value::from("first")], CALL)
        .unwrap();
    assert_eq!(first.msgid(), 0);
    assert_eq!(first.wait().unwrap(), Value::from("first"));
    assert_eq!(
        client
            .call_value("echo", &[Value::from("second")], CALL)
            .unwrap(),
        Value::from("second")
    );
    t.join().unwrap();
}

// ---- error shapes -------------------------------------------------------------

fn error_router() -> Router {
    let mut r = calc_router();
    r.method("remote_map", |_| {
        Err(Error::Remote(Value::Map(vec![
            (Value::from("code"), Value::from(404)),
            (Value::from("data"), Value::Binary(vec![0, 255])),
        ])))
    });
    r.method_inline("remote_str", |_| Err(Error::Remote(Value::from("plain"))));
    r.method("usage", |_| Err(Error::Usage("not like that".into())));
    r.register("drop_it", Execution::Pool, drop);
    r.register("drop_inline", Execution::Inline, drop);
    r.register("panic_pool", Execution::Pool, |_req| panic!("boom in pool"));
    r.register("panic_inline", Execution::Inline, |_req| {
        panic!("boom inline")
    });
    r.register("nil_error", Execution::Inline, |req| {
        req.responder.error(Value::Nil)
    });
    r
}

#[test]
fn handler_errors_reach_the_caller_unchanged() {
    let server = start_tcp(error_router());
    let client = Client::connect(&server.local_addr().to_string()).unwrap();

    match client.call_value("remote_map", &[], CALL) {
        Err(Error::Remote(v)) => assert_eq!(
            v,
            Value::Map(vec![
                (Value::from("code"), Value::from(404)),
                (Value::from("data"), Value::Binary(vec![0, 255])),
            ])
        ),
        other => panic!("{other:?}"),
    }
    match client.call_value("remote_str", &[], CALL) {
        Err(Error::Remote(v)) => assert_eq!(v, Value::from("plain")),
        other => panic!("{other:?}"),
    }
    // foorpc's own errors are [code, message].
    let err = client.call_value("usage", &[], CALL).unwrap_err();
    let (code, msg) = code_message(&err);
    assert_eq!(code, ERROR_CODE_EXCEPTION);
    assert!(msg.contains("not like that"), "{msg}");
    let err = client.call_value("no_such_method", &[], CALL).unwrap_err();
    assert_eq!(
        code_message(&err),
        (
            ERROR_CODE_VALIDATION,
            "unknown method: no_such_method".to_owned()
        )
    );
    // A nil error object would read as success: it is replaced by an error.
    let err = client.call_value("nil_error", &[], CALL).unwrap_err();
    assert_eq!(code_message(&err).0, ERROR_CODE_EXCEPTION);
}

#[test]
fn dropped_responder_and_panicking_handler_send_error_replies() {
    let server = start_tcp(error_router());
    let client = Client::connect(&server.local_addr().to_string()).unwrap();
    for method in ["drop_it", "drop_inline"] {
        let start = Instant::now();
        let err = client
            .call_value(method, &[], Some(Duration::from_secs(10)))
            .unwrap_err();
        let (code, msg) = code_message(&err);
        assert_eq!(code, ERROR_CODE_EXCEPTION, "{method}");
        assert!(msg.contains("without answering"), "{method}: {msg}");
        assert!(start.elapsed() < Duration::from_secs(5), "{method} hung");
    }
    for method in ["panic_pool", "panic_inline", "panic_pool", "panic_inline"] {
        let start = Instant::now();
        let err = client
            .call_value(method, &[], Some(Duration::from_secs(10)))
            .unwrap_err();
        let (code, msg) = code_message(&err);
        assert_eq!(code, ERROR_CODE_EXCEPTION, "{method}");
        assert!(msg.contains("panicked"), "{method}: {msg}");
        assert!(start.elapsed() < Duration::from_secs(5), "{method} hung");
        // The server keeps serving, on this connection and on new ones.
        assert_eq!(client.call::<i64>("add", (1, 1)).unwrap(), 2);
    }
    let other = Client::connect(&server.local_addr().to_string()).unwrap();
    assert_eq!(other.call::<i64>("add", (2, 2)).unwrap(), 4);
}

/// A peer that sends the start of a large reply and then hangs up: the call
/// fails as a lost connection, saying that it ended mid-message, whether
/// the result was asked for as a value or as bytes.
#[test]
fn a_reply_cut_inside_a_large_body_fails_the_call() {
    for raw in [false, true] {
        let (address, t) = raw_server(|mut peer| {
            let Message::Request { msgid, .. } = peer.expect_msg() else {
                panic!("expected a request");
            };
            let mut out = Vec::new();
            let body = Value::Binary(vec![5; 500_000]);
            foorpc::codec::encode_response(&mut out, msgid, &Value::Nil, &body);
            peer.send(&out[..300_000]);
        });
        let client = Client::connect(&address).unwrap();
        let err = if raw {
            client.call_encoded("blob", &[0x90], CALL).unwrap_err()
        } else {
            client.call_value("blob", &[], CALL).unwrap_err()
        };
        assert!(err.is_connection_error(), "{err:?}");
        assert!(err.to_string().contains("middle of a message"), "{err}");
        t.join().unwrap();
    }
}

/// A peer whose error objects are plain strings: the caller gets the string
/// unchanged, not reshaped into foorpc's [code, message].
#[test]
fn string_error_from_a_raw_peer_is_kept() {
    let (address, t) = raw_server(|mut peer| {
        let Message::Request { msgid, .. } = peer.expect_msg() else {
            panic!("expected a request");
        };
        let mut out = Vec::new();
        foorpc::codec::encode_response(&mut out, msgid, &Value::from("oops"), &Value::Nil);
        peer.send(&out);
        // Keep the connection until the client is done.
        let _ = peer.read_msg(PROMPT);
    });
    let client = Client::connect(&address).unwrap();
    let err = client
        .call_value("anything", &[Value::from(1)], CALL)
        .unwrap_err();
    match &err {
        Error::Remote(v) => assert_eq!(v, &Value::String("oops".into())),
        other => panic!("{other:?}"),
    }
    assert_eq!(err.remote_code_message(), None);
    assert!(!err.is_connection_error());
    drop(client);
    t.join().unwrap();
}

/// Large binary results leave from their own buffers between small replies
/// (and while the socket is full): every reply must arrive whole and in place.
#[test]
fn large_binary_results_interleave_with_small_ones() {
    let mut router = calc_router();
    router.method_inline("blob", |params| {
        let n = params.first().and_then(Value::as_u64).unwrap_or(0) as usize;
        let seed = params.get(1).and_then(Value::as_u64).unwrap_or(0) as u8;
        Ok(Value::Binary(
            (0..n).map(|i| seed.wrapping_add(i as u8)).collect(),
        ))
    });
    let server = start_tcp(router);
    let client = Client::connect(&server.local_addr().to_string()).unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let client = client.clone();
            thread::spawn(move || {
                let mut calls = Vec::new();
                for i in 0..24u64 {
                    let size = [70_000u64, 1 << 20, 3, 300_000][(i % 4) as usize] + t;
                    let seed = t * 31 + i;
                    let blob = client
                        .call_async("blob", &[size.into(), seed.into()], CALL)
                        .unwrap();
                    let add = client
                        .call_async("add", &[Value::from(i), Value::from(t)], CALL)
                        .unwrap();
                    calls.push((size, seed, blob, add, i + t));
                }
                for (size, seed, blob, add, sum) in calls {
                    let bytes = match blob.wait().unwrap() {
                        Value::Binary(b) => b,
                        other => panic!("not a binary: {other}"),
                    };
                    assert_eq!(bytes.len() as u64, size);
                    assert!(bytes
                        .iter()
                        .enumerate()
                        .all(|(i, b)| *b == (seed as u8).wrapping_add(i as u8)));
                    assert_eq!(add.wait().unwrap(), Value::from(sum));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// A timeout longer than the clock holds (`Duration::MAX`) means no
/// deadline, for every call form and for the server's drain, not a panic.
#[test]
fn timeouts_longer_than_the_clock_mean_no_deadline() {
    let server = foorpc::Server::builder()
        .router(calc_router())
        .call_timeout(Some(Duration::MAX))
        .drain_timeout(Duration::MAX)
        .bind("tcp://127.0.0.1:0")
        .unwrap()
        .start()
        .unwrap();
    let address = server.local_addr().to_string();
    let client = Client::builder()
        .call_timeout(Some(Duration::MAX))
        .connect(&address)
        .unwrap();
    let two = [Value::from(1), Value::from(1)];
    assert_eq!(
        client.call_value("add", &two, Some(Duration::MAX)).unwrap(),
        Value::from(2)
    );
    let mut pending = client.call_async("add", &two, Some(Duration::MAX)).unwrap();
    let got = pending.wait_for(Duration::MAX).expect("the reply came");
    assert_eq!(got.unwrap(), Value::from(2));
    assert_eq!(client.call::<i64>("add", (2, 3)).unwrap(), 5);
    drop(client);
    server.shutdown(); // drains with no request in flight: returns at once
}
