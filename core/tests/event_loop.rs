//! A client driven by the program's own event loop (`Peer::drive_from_event_loop`):
//! a small poll(2) loop here plays asyncio's part. Callbacks run inside
//! `read_ready`/`expire_calls` on this thread, writes wait for `flush`, no
//! thread reads for the client, and timeouts fire from `expire_calls`.

mod common;

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use foorpc::{Client, Error, Execution, Router, Server, Value};

type Outcomes = Arc<Mutex<Vec<(u32, foorpc::Result<Value>)>>>;

/// Starts `add(i, 1)` with a callback that records its outcome and the thread it ran on.
fn start_add(
    client: &Client,
    i: i64,
    timeout: Option<Duration>,
    out: &Outcomes,
    threads: &Arc<Mutex<Vec<thread::ThreadId>>>,
) -> u32 {
    let call = client
        .call_async("add", &[Value::from(i), Value::from(1)], timeout)
        .unwrap();
    let msgid = call.msgid();
    let (out, threads) = (out.clone(), threads.clone());
    call.on_complete(move |r| {
        threads.lock().unwrap().push(thread::current().id());
        out.lock().unwrap().push((msgid, r));
    });
    msgid
}

/// A server with `router` and a client handed to the test's event loop.
fn loop_driven(router: Router) -> (Server, Client) {
    let server = start_tcp(router);
    let client = Client::connect(&server.local_addr().to_string()).unwrap();
    client.drive_from_event_loop().unwrap();
    (server, client)
}

#[test]
fn calls_complete_on_the_loop_thread() {
    let (_server, client) = loop_driven(calc_router());
    let out: Outcomes = Arc::default();
    let threads = Arc::default();

    client.cork();
    let ids: Vec<u32> = (0..100)
        .map(|i| start_add(&client, i, CALL, &out, &threads))
        .collect();
    client.uncork();
    client.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.lock().unwrap().len() < 100 && Instant::now() < deadline {
        loop_once(&client, Duration::from_millis(100)).unwrap();
    }
    let mut got = out.lock().unwrap().clone();
    got.sort_by_key(|(id, _)| *id);
    assert_eq!(got.len(), 100);
    for ((id, r), (i, want)) in got.iter().zip(ids.iter().enumerate()) {
        assert_eq!(id, want);
        assert_eq!(r.as_ref().unwrap(), &Value::from(i as i64 + 1));
    }
    let me = thread::current().id();
    assert!(threads.lock().unwrap().iter().all(|t| *t == me));
    assert_eq!(client.pending_calls(), 0);
}

#[test]
fn timeouts_fire_from_expire_calls() {
    let (_server, client) = loop_driven(calc_router());
    let out: Outcomes = Arc::default();
    let threads = Arc::default();
    let call = client
        .call_async(
            "sleep_ms",
            &[Value::from(2000)],
            Some(Duration::from_millis(100)),
        )
        .unwrap();
    let o = out.clone();
    call.on_complete(move |r| o.lock().unwrap().push((0, r)));
    start_add(&client, 1, Some(Duration::from_secs(30)), &out, &threads);
    client.flush().unwrap();

    // Nobody but this loop enforces the deadline: it passes unnoticed...
    thread::sleep(Duration::from_millis(150));
    assert!(out.lock().unwrap().iter().all(|(id, _)| *id != 0));
    // ...until the loop expires calls, which reports the next deadline.
    let next = client.expire_calls(Instant::now());
    assert!(next.is_some_and(|n| n > Instant::now() + Duration::from_secs(20)));
    assert!(out
        .lock()
        .unwrap()
        .iter()
        .any(|(id, r)| *id == 0 && matches!(r, Err(Error::Timeout))));
}

#[test]
fn large_writes_wait_for_flush() {
    let (_server, client) = loop_driven(calc_router());
    let payload = Value::Binary(vec![7; 16 << 20]);
    let call = client
        .call_async("echo", std::slice::from_ref(&payload), CALL)
        .unwrap();
    // 16 MiB does not fit the socket buffers: the rest waits for the loop.
    assert!(client.wants_write());
    let got: Arc<Mutex<Option<foorpc::Result<Value>>>> = Arc::default();
    let g = got.clone();
    call.on_complete(move |r| *g.lock().unwrap() = Some(r));
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.lock().unwrap().is_none() && Instant::now() < deadline {
        loop_once(&client, Duration::from_millis(100)).unwrap();
    }
    assert_eq!(got.lock().unwrap().take().unwrap().unwrap(), payload);
    assert!(!client.wants_write());
}

#[test]
fn a_closed_peer_fails_pending_calls_in_read_ready() {
    let mut router = calc_router();
    router.notification("hang_up", Execution::Inline, |n| n.peer.close());
    let (_server, client) = loop_driven(router);
    let out: Outcomes = Arc::default();
    let call = client
        .call_async("sleep_ms", &[Value::from(1500)], CALL)
        .unwrap();
    let o = out.clone();
    call.on_complete(move |r| o.lock().unwrap().push((0, r)));
    client.notify("hang_up", &[]).unwrap();
    client.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut closed = None;
    while closed.is_none() && Instant::now() < deadline {
        if let Err(e) = loop_once(&client, Duration::from_millis(100)) {
            closed = Some(e);
        }
    }
    assert!(matches!(closed, Some(Error::ConnectionLost(_))));
    let got = out.lock().unwrap();
    assert!(matches!(
        got.as_slice(),
        [(_, Err(Error::ConnectionLost(_)))]
    ));
}

#[test]
fn only_a_client_without_handlers_can_be_loop_driven() {
    let server = start_tcp(calc_router());
    let mut router = Router::new();
    router.method_inline("ping", |_| Ok(Value::Nil));
    let client = Client::builder()
        .router(router)
        .connect(&server.local_addr().to_string())
        .unwrap();
    assert!(matches!(
        client.drive_from_event_loop(),
        Err(Error::Usage(_))
    ));
}

#[test]
fn blocking_waits_are_refused_on_a_loop_driven_client() {
    let (_server, client) = loop_driven(calc_router());
    let add = [Value::from(1), Value::from(2)];
    assert!(matches!(
        client.call_value("add", &add, CALL),
        Err(Error::Usage(_))
    ));
    let call = client.call_async("add", &add, CALL).unwrap();
    assert!(matches!(call.wait(), Err(Error::Usage(_))));
    assert_eq!(client.pending_calls(), 0);
}

#[test]
fn an_unmatched_uncork_does_not_hold_writes_back() {
    let (_server, client) = loop_driven(calc_router());
    client.uncork(); // no cork to end: must not wrap around into "corked"
    let out: Outcomes = Arc::default();
    let threads = Arc::default();
    start_add(&client, 41, CALL, &out, &threads);
    assert!(
        !client.wants_write(),
        "the request should have been written at once"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.lock().unwrap().is_empty() && Instant::now() < deadline {
        loop_once(&client, Duration::from_millis(100)).unwrap();
    }
    assert_eq!(out.lock().unwrap()[0].1.as_ref().unwrap(), &Value::from(42));
}
