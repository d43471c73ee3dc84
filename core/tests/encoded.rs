//! Params, results and errors passed as caller-encoded MessagePack bytes
//! (the path the C and Python front ends take).

mod common;

use common::{calc_router, code_message, start_tcp, CALL};
use foorpc::{Client, Error, Execution, Value};

fn encoded(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    foorpc::codec::encode_value(&mut out, v);
    out
}

#[test]
fn encoded_params_reach_the_handler_as_values() {
    let server = start_tcp(calc_router());
    let client = Client::connect(&server.local_addr().to_string()).unwrap();
    let params = encoded(&Value::Array(vec![40.into(), 2.into()]));
    assert_eq!(
        client.call_encoded("add", &params, CALL).unwrap(),
        encoded(&Value::from(42))
    );
    let pending = client.call_async_encoded("add", &params, CALL).unwrap();
    // An encoded call's handle yields the result's bytes too.
    assert_eq!(
        foorpc::encoded_result(pending.wait().unwrap()),
        encoded(&Value::from(42))
    );
    client
        .notify_encoded("log", &encoded(&Value::Array(vec![])))
        .unwrap();
    // Results come back as the exact bytes the server sent, types included.
    let echo = Value::Array(vec![Value::F32(-0.0), Value::Binary(vec![1; 70_000])]);
    let params = encoded(&Value::Array(vec![echo.clone()]));
    assert_eq!(
        client.call_encoded("echo", &params, CALL).unwrap(),
        encoded(&echo)
    );
    // A remote error is still an error; value calls on the connection still decode.
    assert!(matches!(
        client.call_encoded("nope", &encoded(&Value::Array(vec![])), CALL),
        Err(Error::Remote(_))
    ));
    assert_eq!(client.call::<i64>("add", (2, 3)).unwrap(), 5);
}

#[test]
fn invalid_encoded_params_are_refused_before_sending() {
    let server = start_tcp(calc_router());
    let client = Client::connect(&server.local_addr().to_string()).unwrap();
    let not_array = encoded(&Value::from(1));
    let truncated = &encoded(&Value::Array(vec![Value::from("abc")]))[..3];
    let trailing = [0x90, 0x01];
    for bad in [&not_array[..], truncated, &trailing[..], &[][..]] {
        assert!(
            matches!(client.call_encoded("add", bad, CALL), Err(Error::Usage(_))),
            "{bad:?}"
        );
        assert!(matches!(
            client.notify_encoded("x", bad),
            Err(Error::Usage(_))
        ));
    }
    // Nothing reached the wire: the connection is still in step.
    let ok = encoded(&Value::Array(vec![1.into(), 2.into()]));
    assert_eq!(client.call_encoded("add", &ok, CALL).unwrap(), [3]);
}

#[test]
fn responder_sends_encoded_results_and_errors() {
    let mut router = calc_router();
    router.register("raw_ok", Execution::Inline, |req| {
        let bytes = encoded(&Value::Map(vec![(1.into(), Value::F32(1.5))]));
        req.responder.ok_encoded(&bytes).unwrap();
    });
    router.register("raw_err", Execution::Inline, |req| {
        let bytes = encoded(&Value::from("plain string error"));
        req.responder.error_encoded(&bytes).unwrap();
    });
    router.register("raw_bad", Execution::Inline, |req| {
        assert!(matches!(
            req.responder.ok_encoded(&[0x92, 0x01]),
            Err(Error::Usage(_))
        ));
    });
    router.register("raw_nil_err", Execution::Inline, |req| {
        assert!(req.responder.error_encoded(&[0xc0]).is_err());
    });
    let server = start_tcp(router);
    let client = Client::connect(&server.local_addr().to_string()).unwrap();
    assert_eq!(
        client.call_value("raw_ok", &[], CALL).unwrap(),
        Value::Map(vec![(1.into(), Value::F32(1.5))])
    );
    match client.call_value("raw_err", &[], CALL) {
        Err(Error::Remote(e)) => assert_eq!(e, Value::from("plain string error")),
        other => panic!("{other:?}"),
    }
    // Invalid bytes still answer the request, with an error.
    let e = client.call_value("raw_bad", &[], CALL).unwrap_err();
    assert!(code_message(&e).1.contains("invalid MessagePack"), "{e:?}");
    assert!(matches!(
        client.call_value("raw_nil_err", &[], CALL),
        Err(Error::Remote(_))
    ));
    assert_eq!(client.call::<i64>("add", (1, 1)).unwrap(), 2);
}

#[test]
fn encoded_depth_counts_the_message_envelope() {
    let server = start_tcp(calc_router());
    let client = Client::connect(&server.local_addr().to_string()).unwrap();
    let nested = |depth: usize| {
        let mut v = Value::Array(vec![]);
        for _ in 1..depth {
            v = Value::Array(vec![v]);
        }
        encoded(&v)
    };
    let max = foorpc::Limits::default().max_depth;
    // The params array sits at level 2 of the message: max - 1 levels fit.
    let fits = nested(max - 1);
    assert!(client.call_encoded("echo", &fits, CALL).is_ok());
    assert!(matches!(
        client.call_encoded("echo", &nested(max), CALL),
        Err(Error::Usage(_))
    ));
    assert!(client.call_encoded("echo", &fits, CALL).is_ok());
}

/// Large encoded params and results go out straight from the caller's
/// buffer when nothing else is queued, and are copied only when the socket
/// cannot take them at once: from many threads, every byte must arrive.
#[test]
fn large_encoded_params_and_results_arrive_whole() {
    let mut router = calc_router();
    router.register("reencode", Execution::Inline, |req| {
        let bytes = encoded(&req.params[0]);
        let _ = req.responder.ok_encoded(&bytes);
    });
    let server = start_tcp(router);
    let client = Client::connect(&server.local_addr().to_string()).unwrap();
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                for i in 0..12u8 {
                    let size = [3usize, 70_000, 1 << 20, 300_000][usize::from(i % 4)];
                    let blob = Value::Binary((0..size).map(|k| (k as u8) ^ t ^ i).collect());
                    let params = encoded(&Value::Array(vec![blob.clone()]));
                    let method = if i % 2 == 0 { "echo" } else { "reencode" };
                    let got = client.call_encoded(method, &params, CALL).unwrap();
                    assert_eq!(got, encoded(&blob), "{method} of {size} bytes");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Large str and bin values, alone, last or first in an array, arrive whole
/// as params and as results, whether the result is asked for as a value or
/// as bytes (the large-read path of both ends).
#[test]
fn large_bodies_that_end_a_message_arrive_whole() {
    let server = start_tcp(calc_router());
    let client = Client::connect(&server.local_addr().to_string()).unwrap();
    for size in [70_000usize, 300_000, 1 << 20] {
        let blob = Value::Binary((0..size).map(|k| (k % 251) as u8).collect());
        let text = Value::from("ü".repeat(size / 2));
        for value in [
            blob.clone(),
            text.clone(),
            Value::Array(vec![Value::from(7), blob.clone()]),
            Value::Array(vec![text.clone(), blob.clone()]),
            Value::Array(vec![blob.clone(), Value::from(7)]),
        ] {
            let got = client
                .call_value("echo", std::slice::from_ref(&value), CALL)
                .unwrap();
            assert!(got == value, "echo of {size} bytes as a value");
            let params = encoded(&Value::Array(vec![value.clone()]));
            let raw = client.call_encoded("echo", &params, CALL).unwrap();
            assert_eq!(raw, encoded(&value), "echo of {size} bytes as bytes");
        }
    }
}
