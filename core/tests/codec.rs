//! The shared protocol vectors (tests/vectors/messages.json) and the decoder's
//! behaviour on streams: any split, concatenation, limits.

use foorpc::codec::{self, DecodeError, Decoder};
use foorpc::{Limits, Message, Value};

mod common;
use common::same_message;
use serde_json::Value as Json;

fn vectors() -> Json {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/vectors/messages.json"
    );
    let text = std::fs::read_to_string(path).expect("read messages.json");
    serde_json::from_str(&text).expect("parse messages.json")
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    assert!(s.len() % 2 == 0, "odd hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn str_field<'a>(j: &'a Json, key: &str) -> &'a str {
    j[key].as_str().unwrap_or_else(|| panic!("{key} in {j}"))
}

/// A tagged JSON value (see the file's comment) as the exact `Value`.
fn value(j: &Json) -> Value {
    let obj = j.as_object().expect("tagged value");
    assert_eq!(obj.len(), 1, "one tag per value: {j}");
    let (tag, x) = obj.iter().next().unwrap();
    match tag.as_str() {
        "nil" => Value::Nil,
        "bool" => Value::Boolean(x.as_bool().unwrap()),
        "uint" => Value::from(x.as_str().unwrap().parse::<u64>().unwrap()),
        "int" => {
            let n = x.as_str().unwrap().parse::<i64>().unwrap();
            assert!(n < 0, "int is for negative values: {j}");
            Value::from(n)
        }
        "f32" => Value::F32(x.as_str().unwrap().parse().unwrap()),
        "f64" => Value::F64(x.as_str().unwrap().parse().unwrap()),
        "str" => Value::from(x.as_str().unwrap()),
        "str_bytes" => {
            // Build the invalid-UTF-8 string the way a decoder sees it.
            let bytes = unhex(x.as_str().unwrap());
            let mut enc = vec![0xdb];
            enc.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            enc.extend_from_slice(&bytes);
            let v = rmpv::decode::read_value(&mut enc.as_slice()).unwrap();
            assert!(matches!(&v, Value::String(s) if s.is_err()), "{j}");
            v
        }
        "bin" => Value::Binary(unhex(x.as_str().unwrap())),
        "array" => Value::Array(x.as_array().unwrap().iter().map(value).collect()),
        "map" => Value::Map(
            x.as_array()
                .unwrap()
                .iter()
                .map(|kv| (value(&kv[0]), value(&kv[1])))
                .collect(),
        ),
        "ext" => {
            let ty = x[0].as_i64().unwrap();
            Value::Ext(ty as i8, unhex(x[1].as_str().unwrap()))
        }
        other => panic!("unknown tag {other}"),
    }
}

fn params(j: &Json) -> Vec<Value> {
    j.as_array().expect("params").iter().map(value).collect()
}

fn message(j: &Json) -> Message {
    if let Some(r) = j.get("request") {
        Message::Request {
            msgid: r["msgid"].as_u64().unwrap() as u32,
            method: str_field(r, "method").to_owned(),
            params: params(&r["params"]),
        }
    } else if let Some(r) = j.get("response") {
        Message::Response {
            msgid: r["msgid"].as_u64().unwrap() as u32,
            error: value(&r["error"]),
            result: value(&r["result"]),
        }
    } else if let Some(n) = j.get("notification") {
        Message::Notification {
            method: str_field(n, "method").to_owned(),
            params: params(&n["params"]),
        }
    } else {
        panic!("unknown message {j}")
    }
}

struct Valid {
    name: String,
    bytes: Vec<u8>,
    message: Message,
    canonical: bool,
}

fn valid_vectors() -> Vec<Valid> {
    let all = vectors();
    let list = all["valid"].as_array().expect("valid list");
    assert!(list.len() > 50, "vectors missing");
    list.iter()
        .map(|v| Valid {
            name: str_field(v, "name").to_owned(),
            bytes: unhex(str_field(v, "hex")),
            message: message(&v["message"]),
            canonical: v.get("canonical").and_then(Json::as_bool).unwrap_or(true),
        })
        .collect()
}

fn decode_all(bytes: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
    Decoder::new(&Limits::default()).decode(bytes)
}

#[test]
fn valid_vectors_decode_exactly() {
    for v in valid_vectors() {
        let (msg, n) = decode_all(&v.bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", v.name))
            .unwrap_or_else(|| panic!("{}: incomplete", v.name));
        assert_eq!(n, v.bytes.len(), "{}", v.name);
        assert!(
            same_message(&msg, &v.message),
            "{}:\n got      {msg:?}\n expected {:?}",
            v.name,
            v.message
        );
    }
}

#[test]
fn valid_vectors_encode_exactly() {
    let mut checked = 0;
    for v in valid_vectors().into_iter().filter(|v| v.canonical) {
        let mut out = vec![0xee]; // encode appends
        codec::encode(&v.message, &mut out);
        assert_eq!(out[0], 0xee);
        assert_eq!(out[1..], v.bytes[..], "{}", v.name);
        // Decoded values re-encode byte-exactly too (invalid UTF-8 included).
        let (decoded, _) = decode_all(&v.bytes).unwrap().unwrap();
        let mut again = Vec::new();
        codec::encode(&decoded, &mut again);
        assert_eq!(again, v.bytes, "{} (re-encoded)", v.name);
        checked += 1;
    }
    assert!(checked > 50);
}

#[test]
fn specialised_encoders_match_encode() {
    for v in valid_vectors().into_iter().filter(|v| v.canonical) {
        let mut out = Vec::new();
        match &v.message {
            Message::Request {
                msgid,
                method,
                params,
            } => codec::encode_request(&mut out, *msgid, method, params),
            Message::Response {
                msgid,
                error,
                result,
            } => codec::encode_response(&mut out, *msgid, error, result),
            Message::Notification { method, params } => {
                codec::encode_notification(&mut out, method, params)
            }
        }
        assert_eq!(out, v.bytes, "{}", v.name);
    }
}

#[test]
fn valid_vectors_one_byte_at_a_time() {
    for v in valid_vectors() {
        let mut d = Decoder::new(&Limits::default());
        for cut in 0..v.bytes.len() {
            assert_eq!(d.decode(&v.bytes[..cut]), Ok(None), "{} cut {cut}", v.name);
        }
        let (msg, n) = d.decode(&v.bytes).unwrap().unwrap();
        assert_eq!(n, v.bytes.len(), "{}", v.name);
        assert!(same_message(&msg, &v.message), "{}", v.name);
    }
}

#[test]
fn concatenated_vectors_decode_in_turn() {
    let vs = valid_vectors();
    // Every vector followed by the next one, and all of them in one stream,
    // on one decoder (the state resets after each message).
    let mut d = Decoder::new(&Limits::default());
    for pair in vs.windows(2) {
        let buf = [pair[0].bytes.as_slice(), &pair[1].bytes].concat();
        let (m1, n1) = d.decode(&buf).unwrap().unwrap();
        assert_eq!(n1, pair[0].bytes.len(), "{}", pair[0].name);
        assert!(same_message(&m1, &pair[0].message));
        let (m2, n2) = d.decode(&buf[n1..]).unwrap().unwrap();
        assert_eq!(n2, pair[1].bytes.len(), "{}", pair[1].name);
        assert!(same_message(&m2, &pair[1].message));
    }
    let stream: Vec<u8> = vs.iter().flat_map(|v| v.bytes.clone()).collect();
    // Fed in odd-sized pieces, as a socket would deliver them.
    let mut pending = Vec::new();
    let mut got = Vec::new();
    for piece in stream.chunks(7) {
        pending.extend_from_slice(piece);
        while let Some((msg, n)) = d.decode(&pending).unwrap() {
            got.push(msg);
            pending.drain(..n);
        }
    }
    assert!(pending.is_empty());
    assert_eq!(got.len(), vs.len());
    for (msg, v) in got.iter().zip(&vs) {
        assert!(same_message(msg, &v.message), "{}", v.name);
    }
}

#[test]
fn invalid_vectors_are_rejected() {
    let all = vectors();
    let list = all["invalid"].as_array().expect("invalid list");
    assert!(list.len() >= 10);
    for v in list {
        let name = str_field(v, "name");
        let bytes = unhex(str_field(v, "hex"));
        let want_msgid = v["msgid"].as_u64().map(|n| n as u32);
        let err = decode_all(&bytes)
            .err()
            .unwrap_or_else(|| panic!("{name}: accepted"));
        let kind = match &err {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::TooDeep { .. } => "too_deep",
            DecodeError::TooLargeDecoded { .. } => "too_large_decoded",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::Invalid { .. } => "invalid",
        };
        assert_eq!(kind, str_field(v, "error"), "{name}: {err}");
        if let DecodeError::Invalid { msgid, .. } = &err {
            assert_eq!(*msgid, want_msgid, "{name}: {err}");
        } else {
            assert_eq!(want_msgid, None, "{name}");
        }
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn big_bin_in_64k_pieces_decodes_once_at_the_end() {
    let payload: Vec<u8> = (0..4 << 20).map(|i: u32| i as u8).collect();
    let mut bytes = Vec::new();
    codec::encode_request(&mut bytes, 9, "upload", &[Value::Binary(payload.clone())]);
    let mut d = Decoder::new(&Limits::default());
    let mut len = 0;
    let mut result = None;
    for piece in bytes.chunks(64 * 1024) {
        len += piece.len();
        assert!(result.is_none(), "decoded before the last piece");
        result = d.decode(&bytes[..len]).unwrap();
    }
    let (msg, n) = result.expect("decoded at the end");
    assert_eq!(n, bytes.len());
    match msg {
        Message::Request {
            msgid: 9,
            method,
            params,
        } => {
            assert_eq!(method, "upload");
            assert!(matches!(&params[..], [Value::Binary(b)] if *b == payload));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn many_small_elements_in_pieces() {
    // 200k strs: the scan resumes where it stopped instead of restarting.
    let items: Vec<Value> = (0..200_000).map(|i| Value::from(format!("s{i}"))).collect();
    let mut bytes = Vec::new();
    codec::encode_notification(&mut bytes, "bulk", &items);
    let mut d = Decoder::new(&Limits::default());
    let mut done = None;
    for end in (1024..bytes.len()).step_by(1024).chain([bytes.len()]) {
        assert!(done.is_none());
        done = d.decode(&bytes[..end]).unwrap();
    }
    let (msg, n) = done.unwrap();
    assert_eq!(n, bytes.len());
    assert!(matches!(msg, Message::Notification { params, .. } if params.len() == 200_000));
}

#[test]
fn huge_declared_lengths_fail_before_the_data() {
    let prefix = [0x94, 0x00, 0x01, 0xa1, b'm', 0x91];
    let limit = Limits::default().max_message_size;
    let over = (limit as u32).to_be_bytes(); // header + this many bytes > limit
    for header in [
        [&[0xc6][..], &over].concat(),                             // bin32
        [&[0xdb][..], &over].concat(),                             // str32
        [&[0xc9][..], &over, &[1]].concat(),                       // ext32
        [&[0xdd][..], &over].concat(),                             // array32
        [&[0xdf][..], &(limit as u32 / 2).to_be_bytes()].concat(), // map32
    ] {
        let bytes = [&prefix[..], &header].concat();
        assert_eq!(
            decode_all(&bytes),
            Err(DecodeError::TooLarge { limit }),
            "{header:x?}"
        );
        // A length cut short is just incomplete.
        assert_eq!(decode_all(&bytes[..prefix.len() + 2]), Ok(None));
    }
    // The message array itself declaring too many elements.
    assert_eq!(
        decode_all(&[0xdd, 0xff, 0xff, 0xff, 0xff]),
        Err(DecodeError::TooLarge { limit })
    );
}

#[test]
fn custom_max_message_size() {
    let limits = Limits {
        max_message_size: 1000,
        ..Limits::default()
    };
    let make = |n: usize| {
        let mut out = Vec::new();
        codec::encode_request(&mut out, 1, "m", &[Value::from("x".repeat(n))]);
        out
    };
    // 94 00 01 a1 6d 91 + da nn nn: 9 bytes of envelope.
    let fits = make(1000 - 9);
    assert_eq!(fits.len(), 1000);
    let r = Decoder::new(&limits).decode(&fits).unwrap().unwrap();
    assert_eq!(r.1, 1000);
    let over = make(1000 - 8);
    assert_eq!(
        Decoder::new(&limits).decode(&over[..9]),
        Err(DecodeError::TooLarge { limit: 1000 })
    );
    // Many small elements whose sum is over the limit fail as soon as the
    // scan can tell, long before 1000 elements arrive.
    let mut many = Vec::new();
    codec::encode_notification(&mut many, "m", &vec![Value::from(1); 2000]);
    assert_eq!(
        Decoder::new(&limits).decode(&many[..8]),
        Err(DecodeError::TooLarge { limit: 1000 })
    );
    // The limit applies to a message after a returned one the same way.
    let mut d = Decoder::new(&limits);
    let two = [fits.as_slice(), &over].concat();
    assert_eq!(d.decode(&two).unwrap().unwrap().1, 1000);
    assert_eq!(
        d.decode(&two[1000..]),
        Err(DecodeError::TooLarge { limit: 1000 })
    );
}

#[test]
fn custom_max_decoded_size() {
    const V: usize = codec::DECODED_VALUE_SIZE;
    // The request envelope's four elements, the method name "m", and the
    // params array's elements.
    let cost = |params: usize| 4 * V + 1 + params * V;
    let limits = Limits {
        max_decoded_size: cost(100),
        ..Limits::default()
    };
    let nils = |n: usize| {
        let mut out = Vec::new();
        codec::encode_request(&mut out, 1, "m", &vec![Value::Nil; n]);
        out
    };
    // 100 nils take 100 values: at the limit, accepted.
    let fits = nils(100);
    let (msg, used) = Decoder::new(&limits).decode(&fits).unwrap().unwrap();
    assert_eq!(used, fits.len());
    assert!(matches!(msg, Message::Request { params, .. } if params.len() == 100));
    // 101 nils: refused from the params array's header alone (8 bytes),
    // before any of them has arrived.
    let over = nils(101);
    assert_eq!(
        Decoder::new(&limits).decode(&over[..8]),
        Err(DecodeError::TooLargeDecoded { limit: cost(100) })
    );
    // str, bin and ext count their bytes: one bin of 101 * V bytes in place
    // of the nils is over the limit too, while its encoding is far below
    // max_message_size.
    let mut bin = Vec::new();
    codec::encode_request(&mut bin, 1, "m", &[Value::Binary(vec![7; 101 * V])]);
    assert_eq!(
        Decoder::new(&limits).decode(&bin),
        Err(DecodeError::TooLargeDecoded { limit: cost(100) })
    );
    // Below what a one-pass path may cost, even the smallest request goes
    // through the counting scan: add(1, 2) costs 6 values and 3 bytes.
    let tiny = Limits {
        max_decoded_size: 6 * V + 2,
        ..Limits::default()
    };
    let mut add = Vec::new();
    codec::encode_request(&mut add, 1, "add", &[Value::from(1), Value::from(2)]);
    assert_eq!(
        Decoder::new(&tiny).decode(&add),
        Err(DecodeError::TooLargeDecoded { limit: 6 * V + 2 })
    );
    let enough = Limits {
        max_decoded_size: 6 * V + 3,
        ..tiny
    };
    assert!(Decoder::new(&enough).decode(&add).unwrap().is_some());
    // check_encoded counts the same way (the value alone, without the
    // envelope), so that pre-encoded params a peer would refuse are refused.
    let params = &fits[5..]; // after 94 00 01 a1 6d
    assert_eq!(
        codec::check_encoded(
            params,
            &Limits {
                max_decoded_size: 100 * V - 1,
                ..Limits::default()
            },
            true
        ),
        Err(DecodeError::TooLargeDecoded { limit: 100 * V - 1 })
    );
    assert_eq!(
        codec::check_encoded(
            params,
            &Limits {
                max_decoded_size: 100 * V,
                ..Limits::default()
            },
            true
        ),
        Ok(())
    );
}

fn nested(levels: usize) -> Value {
    (0..levels).fold(Value::Nil, |v, _| Value::Array(vec![v]))
}

#[test]
fn depth_at_the_limit_passes_one_more_fails() {
    for max_depth in [3, 5, 128] {
        let limits = Limits {
            max_depth,
            ..Limits::default()
        };
        // The message array is level 1 and params level 2.
        let mut ok = Vec::new();
        codec::encode_request(&mut ok, 1, "m", &[nested(max_depth - 2)]);
        let mut d = Decoder::new(&limits);
        assert!(d.decode(&ok).unwrap().is_some(), "depth {max_depth}");
        let mut deep = Vec::new();
        codec::encode_request(&mut deep, 1, "m", &[nested(max_depth - 1)]);
        assert_eq!(
            Decoder::new(&limits).decode(&deep),
            Err(DecodeError::TooDeep { limit: max_depth })
        );
        // Maps count as levels too.
        let mut map = Vec::new();
        let inner = Value::Map(vec![(Value::Nil, nested(max_depth - 3))]);
        codec::encode_request(&mut map, 1, "m", &[inner]);
        assert!(Decoder::new(&limits).decode(&map).unwrap().is_some());
    }
}

#[test]
fn errors_display_clearly() {
    assert_eq!(
        DecodeError::TooLarge { limit: 67108864 }.to_string(),
        "message exceeds the 67108864-byte limit"
    );
    let err = decode_all(&[0x94, 0x00, 0x07, 0xa1, b'm', 0x01]).unwrap_err();
    assert_eq!(
        err,
        DecodeError::Invalid {
            msgid: Some(7),
            reason: "params must be an array, got an integer".into()
        }
    );
    let _: &dyn std::error::Error = &err;
}
