//! foorpc's Rust conformance client: runs the named cases against any
//! conformance server and prints `PASS name` / `FAIL name: why` per case, then
//! `N passed, N failed`. Exit status 0 only when every case passed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foorpc::{Client, Error, Execution, Router, Value};

type CaseResult = Result<(), String>;
/// A named conformance case, run against the server at the given address.
type Case = (&'static str, fn(&str) -> CaseResult);

const CASES: &[Case] = &[
    ("empty_call", empty_call),
    ("add", add),
    ("echo_each_type", echo_each_type),
    ("large_echo", large_echo),
    ("unknown_method", unknown_method),
    ("fail_error_shape", fail_error_shape),
    ("notification_order", notification_order),
    ("pipelined_out_of_order", pipelined_out_of_order),
    ("concurrent_1000", concurrent_1000),
    ("timeout_on_sleeping_server", timeout_on_sleeping_server),
    ("server_to_client_call", server_to_client_call),
    ("disconnect_mid_call", disconnect_mid_call),
];

fn main() {
    let args = foorpc_interop::parse_args("conformance_client");
    let selected: Vec<&Case> = match &args.cases {
        None => CASES.iter().collect(),
        Some(names) => names
            .iter()
            .map(|n| {
                CASES.iter().find(|(c, _)| c == n).unwrap_or_else(|| {
                    eprintln!("unknown case {n}");
                    std::process::exit(2)
                })
            })
            .collect(),
    };
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in selected {
        match case(&args.address) {
            Ok(()) => {
                passed += 1;
                println!("PASS {name}");
            }
            Err(why) => {
                failed += 1;
                println!("FAIL {name}: {why}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

fn connect(address: &str) -> Result<Client, String> {
    Client::connect(address).map_err(|e| format!("connect: {e}"))
}

fn call(c: &Client, method: &str, params: &[Value]) -> Result<Value, String> {
    c.call_value(method, params, Some(Duration::from_secs(30)))
        .map_err(|e| format!("{method}: {e}"))
}

fn expect(what: &str, got: Value, want: Value) -> CaseResult {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got}, want {want}"))
    }
}

fn encoded(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    foorpc::codec::encode_value(&mut out, v);
    out
}

fn empty_call(addr: &str) -> CaseResult {
    let c = connect(addr)?;
    expect(
        "get_notifications()",
        call(&c, "get_notifications", &[])?,
        Value::Array(vec![]),
    )
}

fn add(addr: &str) -> CaseResult {
    let c = connect(addr)?;
    for (a, b) in [(1i64, 2i64), (-5, 3), (1 << 40, 1)] {
        let got = call(&c, "add", &[a.into(), b.into()])?;
        expect(&format!("add({a}, {b})"), got, (a + b).into())?;
    }
    Ok(())
}

fn echo_each_type(addr: &str) -> CaseResult {
    let c = connect(addr)?;
    for (name, v) in foorpc_interop::echo_values() {
        let got = call(&c, "echo", std::slice::from_ref(&v))?;
        // Byte comparison: exact type and encoding, and nan equals itself.
        if encoded(&got) != encoded(&v) {
            return Err(format!("echo {name}: sent {v}, got {got}"));
        }
    }
    Ok(())
}

fn large_echo(addr: &str) -> CaseResult {
    let c = connect(addr)?;
    let big = Value::Binary((0..4 << 20).map(|i: u32| (i * 7) as u8).collect());
    let got = call(&c, "echo", std::slice::from_ref(&big))?;
    if got != big {
        return Err("4 MiB bin came back different".into());
    }
    Ok(())
}

fn remote_error(r: Result<Value, Error>) -> Result<Value, String> {
    match r {
        Err(Error::Remote(e)) => Ok(e),
        other => Err(format!("expected an error reply, got {other:?}")),
    }
}

fn unknown_method(addr: &str) -> CaseResult {
    let c = connect(addr)?;
    remote_error(c.call_value("no_such_method", &[], None))?;
    // The connection still works.
    expect(
        "add after error",
        call(&c, "add", &[1.into(), 1.into()])?,
        2.into(),
    )
}

fn fail_error_shape(addr: &str) -> CaseResult {
    let c = connect(addr)?;
    let e = remote_error(c.call_value("fail", &["boom".into()], None))?;
    match e.as_array().map(Vec::as_slice) {
        Some([code, msg]) if code.is_i64() || code.is_u64() => match msg.as_str() {
            Some(m) if m.contains("boom") => Ok(()),
            _ => Err(format!("message does not carry 'boom': {e}")),
        },
        _ => Err(format!("error is not [code, message]: {e}")),
    }
}

fn notification_order(addr: &str) -> CaseResult {
    let c = connect(addr)?;
    for i in 1..=5 {
        c.notify("note", &[i.into()]).map_err(|e| e.to_string())?;
    }
    let want = Value::Array(
        (1..=5)
            .map(|i| Value::Array(vec!["note".into(), Value::Array(vec![i.into()])]))
            .collect(),
    );
    expect(
        "get_notifications()",
        call(&c, "get_notifications", &[])?,
        want,
    )
}

fn pipelined_out_of_order(addr: &str) -> CaseResult {
    let c = connect(addr)?;
    let order = Arc::new(Mutex::new(Vec::new()));
    let calls: [(&str, Vec<Value>); 3] = [
        ("sleep_ms", vec![300.into()]),
        ("sleep_ms", vec![10.into()]),
        ("add", vec![1.into(), 2.into()]),
    ];
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, (method, params)) in calls.iter().enumerate() {
        let pending = c
            .call_async(method, params, Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let (order, tx) = (order.clone(), tx.clone());
        pending.on_complete(move |r| {
            order.lock().unwrap().push(i);
            let _ = tx.send((i, r));
        });
    }
    let mut results = [Value::Nil, Value::Nil, Value::Nil];
    for _ in 0..3 {
        let (i, r) = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "replies did not arrive")?;
        results[i] = r.map_err(|e| e.to_string())?;
    }
    let want = [Value::from(300), Value::from(10), Value::from(3)];
    if results != want {
        return Err(format!("results {results:?}, want {want:?}"));
    }
    let order = order.lock().unwrap().clone();
    if order != [2, 1, 0] {
        return Err(format!(
            "replies arrived in order {order:?}, want [2, 1, 0]"
        ));
    }
    Ok(())
}

fn concurrent_1000(addr: &str) -> CaseResult {
    let c = connect(addr)?;
    let pending = (0..1000i64)
        .map(|i| c.call_async("add", &[i.into(), i.into()], Some(Duration::from_secs(30))))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    for (i, p) in pending.into_iter().enumerate() {
        expect(
            &format!("add({i}, {i})"),
            p.wait().map_err(|e| e.to_string())?,
            (2 * i as i64).into(),
        )?;
    }
    Ok(())
}

fn timeout_on_sleeping_server(addr: &str) -> CaseResult {
    let c = connect(addr)?;
    let start = Instant::now();
    match c.call_value("sleep_ms", &[2000.into()], Some(Duration::from_millis(200))) {
        Err(Error::Timeout) => {}
        other => return Err(format!("expected a timeout, got {other:?}")),
    }
    let took = start.elapsed();
    if took > Duration::from_millis(1500) {
        return Err(format!("timeout of 200 ms took {took:?}"));
    }
    expect(
        "add after timeout",
        call(&c, "add", &[1.into(), 1.into()])?,
        2.into(),
    )
}

fn server_to_client_call(addr: &str) -> CaseResult {
    let mut router = Router::new();
    router.typed("mul", Execution::Inline, |(a, b): (i64, i64)| Ok(a * b));
    let c = Client::builder()
        .router(router)
        .connect(addr)
        .map_err(|e| format!("connect: {e}"))?;
    let got = call(
        &c,
        "call_back",
        &["mul".into(), Value::Array(vec![6.into(), 7.into()])],
    )?;
    expect("call_back(mul, [6, 7])", got, 42.into())?;
    // A method the client lacks: the server relays the client's error reply.
    remote_error(c.call_value(
        "call_back",
        &["no_such_client_method".into(), Value::Array(vec![])],
        None,
    ))
    .map(|_| ())
}

fn disconnect_mid_call(addr: &str) -> CaseResult {
    let c = connect(addr)?;
    let start = Instant::now();
    match c.call_value("disconnect", &[], Some(Duration::from_secs(10))) {
        Err(Error::ConnectionLost(_)) => {}
        other => return Err(format!("expected a lost connection, got {other:?}")),
    }
    if start.elapsed() > Duration::from_secs(2) {
        return Err(format!("noticed only after {:?}", start.elapsed()));
    }
    Ok(())
}
