//! Shared pieces of the Rust conformance server and client: argument parsing
//! and the values `echo_each_type` sends.

use foorpc::Value;

/// The address given as `--port N` (on 127.0.0.1) or `--unix PATH`, plus
/// `--cases a,b` when present.
pub struct Args {
    pub address: String,
    pub cases: Option<Vec<String>>,
}

/// Parses `(--port N | --unix PATH) [--cases a,b,...]`; exits with usage on error.
pub fn parse_args(program: &str) -> Args {
    let usage = || -> ! {
        eprintln!("usage: {program} (--port N | --unix PATH) [--cases a,b,...]");
        std::process::exit(2)
    };
    let mut address = None;
    let mut cases = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--port" => address = Some(format!("tcp://127.0.0.1:{value}")),
            "--unix" => address = Some(format!("unix://{value}")),
            "--cases" => cases = Some(value.split(',').map(str::to_owned).collect()),
            _ => usage(),
        }
    }
    Args {
        address: address.unwrap_or_else(|| usage()),
        cases,
    }
}

/// Every MessagePack type at its encoding boundaries, for `echo_each_type`.
pub fn echo_values() -> Vec<(String, Value)> {
    let mut v: Vec<(String, Value)> = vec![
        ("nil".into(), Value::Nil),
        ("true".into(), Value::Boolean(true)),
        ("false".into(), Value::Boolean(false)),
    ];
    let uints: [u64; 11] = [
        0,
        127,
        128,
        255,
        256,
        65535,
        65536,
        u32::MAX as u64,
        u32::MAX as u64 + 1,
        i64::MAX as u64 + 1,
        u64::MAX,
    ];
    v.extend(uints.iter().map(|&u| (format!("uint {u}"), Value::from(u))));
    let ints: [i64; 11] = [
        -1,
        -32,
        -33,
        -128,
        -129,
        -32768,
        -32769,
        i32::MIN as i64,
        i32::MIN as i64 - 1,
        i64::MIN + 1,
        i64::MIN,
    ];
    v.extend(ints.iter().map(|&i| (format!("int {i}"), Value::from(i))));
    for f in [1.5f32, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
        v.push((format!("float32 {f}"), Value::F32(f)));
    }
    for f in [0.1f64, -0.0, f64::INFINITY, f64::NAN] {
        v.push((format!("float64 {f}"), Value::F64(f)));
    }
    let invalid_utf8 = rmpv::decode::read_value(&mut &[0xa4, 0xff, 0xfe, b'a', b'b'][..])
        .expect("a str holding invalid UTF-8");
    v.extend([
        ("str empty".into(), Value::from("")),
        ("str ascii".into(), Value::from("hello")),
        ("str non-BMP".into(), Value::from("😀𝄞 ünï")),
        ("str 40 bytes".into(), Value::from("x".repeat(40))),
        ("str 300 bytes".into(), Value::from("y".repeat(300))),
        ("str invalid UTF-8".into(), invalid_utf8),
        ("bin empty".into(), Value::Binary(vec![])),
        (
            "bin 1000".into(),
            Value::Binary((0..1000).map(|i| i as u8).collect()),
        ),
        ("array empty".into(), Value::Array(vec![])),
        (
            "array nested".into(),
            Value::Array(vec![
                Value::from(1),
                Value::Array(vec![Value::Array(vec![]), Value::from("a")]),
            ]),
        ),
        (
            "array 20".into(),
            Value::Array((0..20).map(Value::from).collect()),
        ),
        ("map empty".into(), Value::Map(vec![])),
        (
            "map nested".into(),
            Value::Map(vec![(
                Value::from("a"),
                Value::Map(vec![(Value::from("b"), Value::Array(vec![Value::Nil]))]),
            )]),
        ),
        (
            "map non-string keys".into(),
            Value::Map(vec![
                (Value::from(1), Value::from("one")),
                (Value::Binary(vec![1, 2]), Value::Boolean(true)),
                (Value::Nil, Value::from(-1)),
            ]),
        ),
        ("ext 5".into(), Value::Ext(5, vec![1, 2, 3])),
        ("ext -1 fixext4".into(), Value::Ext(-1, vec![0, 0, 0, 1])),
    ]);
    v
}
