//! Asynchronous calls: wait, polling with wait_for, completion callbacks,
//! `.await` without any async runtime, timeouts, many calls in flight.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use foorpc::{Client, Error, Execution, Router, Server, Value};

/// calc_router plus `block`, which answers only once the gate opens.
fn router_with_gate(gate: &Gate) -> Router {
    let mut router = calc_router();
    let g = gate.clone();
    router.register("block", Execution::Pool, move |req| {
        g.wait(Duration::from_secs(20));
        req.responder.ok(Value::from("unblocked"));
    });
    router
}

fn setup() -> (Server, Client, Gate) {
    let gate = Gate::new();
    let server = start_tcp(router_with_gate(&gate));
    let client = Client::connect(&server.local_addr().to_string()).unwrap();
    (server, client, gate)
}

fn add_params(a: i64, b: i64) -> [Value; 2] {
    [Value::from(a), Value::from(b)]
}

#[test]
fn wait_returns_the_reply() {
    let (_server, client, _gate) = setup();
    let a = client.call_async("add", &add_params(1, 2), CALL).unwrap();
    let b = client.call_async("add", &add_params(3, 4), CALL).unwrap();
    assert_ne!(a.msgid(), b.msgid());
    assert_eq!(b.wait().unwrap(), Value::from(7));
    assert_eq!(a.wait().unwrap(), Value::from(3));
    assert_eq!(client.pending_calls(), 0);
}

/// Polling with a zero wait never blocks and eventually sees the reply.
#[test]
fn wait_for_zero_polls() {
    let (_server, client, gate) = setup();
    let mut call = client.call_async("block", &[], CALL).unwrap();
    // Not there yet: zero wait returns at once with None.
    for _ in 0..5 {
        let start = Instant::now();
        assert!(call.wait_for(Duration::ZERO).is_none());
        assert!(start.elapsed() < Duration::from_secs(1));
    }
    gate.open();
    let deadline = Instant::now() + PROMPT;
    let result = loop {
        if let Some(r) = call.wait_for(Duration::ZERO) {
            break r;
        }
        assert!(Instant::now() < deadline, "polling never saw the reply");
        std::thread::sleep(Duration::from_millis(2));
    };
    assert_eq!(result.unwrap(), Value::from("unblocked"));
    // The handle is spent.
    assert!(matches!(
        call.wait_for(Duration::ZERO),
        Some(Err(Error::Usage(_)))
    ));
    // A quick call polled the same way.
    let mut call = client.call_async("add", &add_params(5, 6), CALL).unwrap();
    let deadline = Instant::now() + PROMPT;
    let result = loop {
        if let Some(r) = call.wait_for(Duration::ZERO) {
            break r;
        }
        assert!(Instant::now() < deadline, "polling never saw the reply");
        std::thread::yield_now();
    };
    assert_eq!(result.unwrap(), Value::from(11));
}

/// Waiting a bounded while: None when the reply is late, then the reply.
#[test]
fn wait_for_with_a_limit() {
    let (_server, client, gate) = setup();
    let mut call = client.call_async("block", &[], CALL).unwrap();
    assert!(call.wait_for(Duration::from_millis(50)).is_none());
    gate.open();
    let r = call.wait_for(PROMPT).expect("reply within the limit");
    assert_eq!(r.unwrap(), Value::from("unblocked"));
}

#[test]
fn on_complete_runs_the_callback() {
    let (_server, client, gate) = setup();
    let (tx, rx) = mpsc::channel();
    for i in 0..10i64 {
        let tx = tx.clone();
        client
            .call_async("add", &add_params(i, 100), CALL)
            .unwrap()
            .on_complete(move |r| tx.send((i, r)).unwrap());
    }
    let tx2 = tx.clone();
    client
        .call_async("block", &[], CALL)
        .unwrap()
        .on_complete(move |r| tx2.send((-1, r)).unwrap());
    let mut seen = Vec::new();
    for _ in 0..10 {
        let (i, r) = rx.recv_timeout(PROMPT).expect("callback never ran");
        assert_eq!(r.unwrap(), Value::from(i + 100));
        seen.push(i);
    }
    seen.sort();
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    // The blocked call's callback has not run yet; it runs once answered.
    assert!(rx.try_recv().is_err());
    gate.open();
    let (i, r) = rx.recv_timeout(PROMPT).unwrap();
    assert_eq!((i, r.unwrap()), (-1, Value::from("unblocked")));
    // A callback set after the reply is already known runs at once.
    let call = client.call_async("add", &add_params(1, 1), CALL).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    call.on_complete(move |r| tx.send((2, r)).unwrap());
    assert_eq!(rx.recv_timeout(PROMPT).unwrap().1.unwrap(), Value::from(2));
}

#[test]
fn await_without_a_runtime() {
    let (_server, client, gate) = setup();
    let c = client.clone();
    let out = block_on(
        async move {
            let a = c.call_async("add", &add_params(1, 2), CALL)?.await?;
            let b = c
                .call_async("add", &[a.clone(), Value::from(10)], CALL)?
                .await?;
            Ok::<_, Error>((a, b))
        },
        PROMPT,
    )
    .expect("the future never completed");
    assert_eq!(out.unwrap(), (Value::from(3), Value::from(13)));

    // A future that is pending at first and woken later.
    let call = client.call_async("block", &[], CALL).unwrap();
    let opener = {
        let gate = gate.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            gate.open();
        })
    };
    let r = block_on(call, PROMPT).expect("the waker was never called");
    assert_eq!(r.unwrap(), Value::from("unblocked"));
    opener.join().unwrap();
}

#[test]
fn async_timeouts_fire() {
    let (_server, client, gate) = setup();
    let t = Some(Duration::from_millis(200));

    // Callback
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    client
        .call_async("block", &[], t)
        .unwrap()
        .on_complete(move |r| tx.send(r).unwrap());
    let r = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the callback never ran: no timeout fired");
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(5));

    // Future
    let call = client.call_async("block", &[], t).unwrap();
    let r = block_on(call, Duration::from_secs(5)).expect("the future never timed out");
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");

    // wait
    let call = client.call_async("block", &[], t).unwrap();
    assert!(matches!(call.wait(), Err(Error::Timeout)));

    // wait_for: a long wait ends at the call's deadline.
    let mut call = client.call_async("block", &[], t).unwrap();
    let start = Instant::now();
    assert!(matches!(
        call.wait_for(Duration::from_secs(20)),
        Some(Err(Error::Timeout))
    ));
    assert!(start.elapsed() < Duration::from_secs(5));

    assert_eq!(client.pending_calls(), 0, "timed-out calls were forgotten");
    gate.open();
    // Late replies to forgotten calls are ignored; the connection works.
    assert_eq!(
        client.call_value("add", &add_params(2, 2), CALL).unwrap(),
        Value::from(4)
    );
}

/// 1000 calls in flight on one connection, collected in reverse order.
#[test]
fn thousand_calls_in_flight_waited_in_reverse() {
    let (_server, client, _gate) = setup();
    let calls: Vec<_> = (0..1000i64)
        .map(|i| {
            client
                .call_async("add", &add_params(i, 1_000_000), CALL)
                .unwrap()
        })
        .collect();
    let mut ids: Vec<u32> = calls.iter().map(|c| c.msgid()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 1000, "msgids of calls in flight are unique");
    for (i, call) in calls.into_iter().enumerate().rev() {
        assert_eq!(call.wait().unwrap(), Value::from(i as i64 + 1_000_000));
    }
    assert_eq!(client.pending_calls(), 0);
}

/// Dropping a handle forgets the call; its late reply is ignored.
#[test]
fn dropped_handle_forgets_the_call() {
    let (_server, client, gate) = setup();
    let call = client.call_async("block", &[], CALL).unwrap();
    assert_eq!(client.pending_calls(), 1);
    drop(call);
    assert_eq!(client.pending_calls(), 0);
    gate.open();
    assert_eq!(
        client.call_value("add", &add_params(3, 3), CALL).unwrap(),
        Value::from(6)
    );
}

/// A completion callback may run on a caller's thread that is reading the
/// connection for its own blocking call. A blocking call on the same
/// connection from that callback would wait for that very thread: it fails
/// at once with a usage error instead of hanging until its timeout.
#[test]
fn a_blocking_call_from_a_callback_on_the_reading_thread_fails_at_once() {
    let (gate, second) = (Gate::new(), Gate::new());
    let mut router = router_with_gate(&gate);
    let g = second.clone();
    router.register("block_then_add", Execution::Pool, move |req| {
        g.wait(Duration::from_secs(20));
        let sum: i64 = req.params.iter().filter_map(Value::as_i64).sum();
        req.responder.ok(Value::from(sum));
    });
    let server = start_tcp(router);
    let client = Client::connect(&server.local_addr().to_string()).unwrap();
    let leader = client.clone();
    let blocked =
        std::thread::spawn(move || leader.call_value("block", &[], Some(Duration::from_secs(10))));
    std::thread::sleep(Duration::from_millis(100)); // it now reads the socket
    let (tx, rx) = mpsc::channel();
    let nested = client.clone();
    let call = client
        .call_async(
            "block_then_add",
            &add_params(1, 2),
            Some(Duration::from_secs(10)),
        )
        .unwrap();
    // Its reply comes only once the callback is set, so the thread reading
    // for the blocked call (not this one) runs the callback.
    call.on_complete(move |outcome| {
        let inner = nested.call_value("add", &add_params(2, 2), Some(Duration::from_secs(10)));
        let _ = tx.send((outcome, inner));
    });
    second.open();
    let (outcome, inner) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the callback's blocking call hung");
    assert_eq!(outcome.unwrap(), Value::from(3));
    assert!(matches!(inner, Err(Error::Usage(_))), "{inner:?}");
    gate.open();
    assert_eq!(blocked.join().unwrap().unwrap(), Value::from("unblocked"));
    // Outside a callback, blocking calls work as before.
    assert_eq!(client.call::<i64>("add", (2, 2)).unwrap(), 4);
}

/// Dropping the last `Client` lets the calls already made finish: a
/// completion callback and a waited handle both get their replies, and the
/// connection closes once they are done.
#[test]
fn calls_made_before_the_client_is_dropped_get_their_replies() {
    let (server, client, gate) = setup();
    let (tx, rx) = mpsc::channel();
    client
        .call_async("block", &[], CALL)
        .unwrap()
        .on_complete(move |r| tx.send(r).unwrap());
    let waited = client.call_async("block", &[], CALL).unwrap();
    let peer = client.peer().clone();
    drop(client);
    assert!(!peer.is_closed(), "closed with two calls in flight");
    gate.open();
    let by_callback = rx.recv_timeout(PROMPT).expect("the callback never ran");
    assert_eq!(by_callback.unwrap(), Value::from("unblocked"));
    assert_eq!(waited.wait().unwrap(), Value::from("unblocked"));
    assert!(
        eventually(PROMPT, || peer.is_closed()
            && server.connection_count() == 0),
        "the connection stayed open after its last call"
    );
}

/// Without calls in flight, dropping the last `Client` closes at once; with
/// some, their timeout still ends them (and then the connection).
#[test]
fn a_dropped_client_closes_when_idle_or_when_its_calls_time_out() {
    let (server, client, _gate) = setup();
    let peer = client.peer().clone();
    drop(client);
    assert!(peer.is_closed());

    let client = Client::connect(&server.local_addr().to_string()).unwrap();
    let (tx, rx) = mpsc::channel();
    client
        .call_async("block", &[], Some(Duration::from_millis(200)))
        .unwrap()
        .on_complete(move |r| tx.send(r).unwrap());
    let peer = client.peer().clone();
    drop(client);
    let outcome = rx.recv_timeout(PROMPT).expect("the callback never ran");
    assert!(matches!(outcome, Err(Error::Timeout)), "{outcome:?}");
    assert!(eventually(PROMPT, || peer.is_closed()));
}
