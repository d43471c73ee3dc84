//! Either side calls the other: a server handler calls back into its client
//! in the middle of the client's call, and notifies it.

mod common;

use std::sync::{mpsc, Mutex};
use std::time::Duration;

use common::*;
use foorpc::{Client, ClientBuilder, Error, Execution, Router, Server, Value};

/// Server methods that call back into the client that called them.
fn server_router() -> Router {
    let mut r = calc_router();
    // square_via_client(x) = client's mul(x, x) + 1
    r.register("square_via_client", Execution::Pool, |req| {
        let x = req.params.first().cloned().unwrap_or(Value::Nil);
        let r = req
            .peer
            .call_value("mul", &[x.clone(), x], Some(Duration::from_secs(10)))
            .map(|v| Value::from(v.as_i64().unwrap() + 1));
        req.responder.respond(r);
    });
    // Notifies the client, then answers.
    r.register("notify_me", Execution::Pool, |req| {
        for i in 0..3 {
            req.peer
                .notify("event", &[Value::from("tick"), Value::from(i)])
                .unwrap();
        }
        req.responder.ok(Value::from("notified"));
    });
    // Inline handler that (wrongly) makes a blocking call: must not deadlock.
    r.register("blocking_from_inline", Execution::Inline, |req| {
        let r = req
            .peer
            .call_value("mul", &[Value::from(2), Value::from(3)], CALL);
        let answer = match r {
            Err(Error::Usage(m)) => Value::from(format!("usage: {m}")),
            other => Value::from(format!("unexpected: {other:?}")),
        };
        req.responder.ok(answer);
    });
    // Inline handler done right: an async call back, answered from its callback.
    r.register("async_from_inline", Execution::Inline, |req| {
        let x = req.params.first().cloned().unwrap_or(Value::Nil);
        let responder = req.responder;
        match req
            .peer
            .call_async("mul", &[x, Value::from(10)], Some(Duration::from_secs(10)))
        {
            Ok(call) => call.on_complete(move |r| responder.respond(r)),
            Err(e) => responder.respond(Err(e)),
        }
    });
    r
}

/// A client whose router offers `mul`, `add_via_server` and an `event` notification handler.
fn callback_client(server: &Server) -> (Client, mpsc::Receiver<Vec<Value>>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let mut router = Router::new();
    router.typed("mul", Execution::Inline, |(a, b): (i64, i64)| Ok(a * b));
    // A client-side pool handler that itself calls the server (nested).
    router.register("add_via_server", Execution::Pool, |req| {
        let r = req
            .peer
            .call_value("add", &req.params, Some(Duration::from_secs(10)));
        req.responder.respond(r);
    });
    router.notification("event", Execution::Inline, move |n| {
        tx.lock().unwrap().send(n.params).unwrap();
    });
    let client = ClientBuilder::default()
        .router(router)
        .connect(&server.local_addr().to_string())
        .unwrap();
    (client, rx)
}

#[test]
fn server_calls_back_into_the_client_during_its_call() {
    let server = start_tcp(server_router());
    let (client, _events) = callback_client(&server);
    for x in [0i64, 3, -7, 1000] {
        let v: i64 = client.call("square_via_client", (x,)).unwrap();
        assert_eq!(v, x * x + 1);
    }
    // Several threads at once, each with its own callback in flight.
    std::thread::scope(|s| {
        for t in 0..4i64 {
            let client = client.clone();
            s.spawn(move || {
                for i in 0..50 {
                    let x = t * 1000 + i;
                    let v: i64 = client.call("square_via_client", (x,)).unwrap();
                    assert_eq!(v, x * x + 1);
                }
            });
        }
    });
}

#[test]
fn server_calls_back_over_unix_sockets() {
    let dir = TempDir::new("sym");
    let (address, _) = dir.socket("sym.sock");
    let server = start(server_router(), &address);
    let (client, _events) = callback_client(&server);
    assert_eq!(client.call::<i64>("square_via_client", (12,)).unwrap(), 145);
}

#[test]
fn server_notification_reaches_the_client() {
    let server = start_tcp(server_router());
    let (client, events) = callback_client(&server);
    assert_eq!(client.call::<String>("notify_me", ()).unwrap(), "notified");
    for i in 0..3 {
        let params = events.recv_timeout(PROMPT).expect("notification lost");
        assert_eq!(params, vec![Value::from("tick"), Value::from(i)]);
    }
}

/// A server-side handler calls the client, whose handler calls the server
/// again, all while the client's original call is pending.
#[test]
fn nested_calls_in_both_directions() {
    let mut router = server_router();
    router.register("relay", Execution::Pool, |req| {
        let r = req
            .peer
            .call_value("add_via_server", &req.params, Some(Duration::from_secs(10)));
        req.responder.respond(r);
    });
    let server = start_tcp(router);
    let (client, _events) = callback_client(&server);
    assert_eq!(client.call::<i64>("relay", (40, 2)).unwrap(), 42);
}

#[test]
fn blocking_call_from_an_inline_handler_is_a_usage_error() {
    let server = start_tcp(server_router());
    let (client, _events) = callback_client(&server);
    let answer: String = client
        .call_timeout("blocking_from_inline", (), Some(Duration::from_secs(10)))
        .unwrap();
    assert!(answer.starts_with("usage: "), "{answer}");
    assert!(answer.contains("deadlock"), "{answer}");
    // The connection and the server's I/O thread are fine.
    assert_eq!(client.call::<i64>("add", (1, 2)).unwrap(), 3);
    // The non-blocking way works from an inline handler.
    assert_eq!(client.call::<i64>("async_from_inline", (7,)).unwrap(), 70);
}

/// The same rule on the client's side: its inline handlers run on the
/// client's I/O thread, so a blocking call there is refused too.
#[test]
fn blocking_call_from_a_client_inline_handler_is_a_usage_error() {
    let mut srv = calc_router();
    srv.register("ask_client", Execution::Pool, |req| {
        let r = req
            .peer
            .call_value("try_block", &[], Some(Duration::from_secs(10)));
        req.responder.respond(r);
    });
    let server = start_tcp(srv);
    let mut router = Router::new();
    router.register("try_block", Execution::Inline, |req| {
        let r = req
            .peer
            .call_value("add", &[Value::from(1), Value::from(1)], CALL);
        req.responder
            .ok(Value::from(matches!(r, Err(Error::Usage(_)))));
    });
    let client = ClientBuilder::default()
        .router(router)
        .connect(&server.local_addr().to_string())
        .unwrap();
    assert!(client.call::<bool>("ask_client", ()).unwrap());
}

/// A client without handlers answers a server's request with an error
/// rather than leaving the server's handler waiting.
#[test]
fn client_without_handlers_answers_unknown_method() {
    let mut srv = calc_router();
    srv.register("ask_client", Execution::Pool, |req| {
        let r = req
            .peer
            .call_value("mul", &[], Some(Duration::from_secs(10)));
        req.responder.ok(Value::from(format!("{r:?}")));
    });
    let server = start_tcp(srv);
    let client = Client::connect(&server.local_addr().to_string()).unwrap();
    let answer: String = client.call("ask_client", ()).unwrap();
    assert!(answer.contains("unknown method: mul"), "{answer}");
}
