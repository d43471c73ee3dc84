//! Helpers shared by the fuzz targets.

// Each target uses only some of these.
#![allow(dead_code)]

use foorpc::codec::{DecodeError, DECODED_VALUE_SIZE};
use foorpc::{Message, Value};

/// Decoded cost and depth of a value, as `Limits` count them: each array
/// element and map key or value costs `DECODED_VALUE_SIZE`, each str, bin and
/// ext its length; an array or map is one level deeper than its items.
pub fn cost_depth(v: &Value) -> (usize, usize) {
    let children: Vec<&Value> = match v {
        Value::Array(items) => items.iter().collect(),
        Value::Map(entries) => entries.iter().flat_map(|(k, v)| [k, v]).collect(),
        Value::String(s) => return (s.as_bytes().len(), 0),
        Value::Binary(b) => return (b.len(), 0),
        Value::Ext(_, data) => return (data.len(), 0),
        _ => return (0, 0),
    };
    children.iter().fold(
        (children.len() * DECODED_VALUE_SIZE, 1),
        |(cost, depth), x| {
            let (c, d) = cost_depth(x);
            (cost + c, depth.max(d + 1))
        },
    )
}

/// Values equal, floats compared bitwise (so NaN equals itself), strs by
/// their bytes (invalid UTF-8 included).
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| same(ka, kb) && same(va, vb))
        }
        (Value::String(x), Value::String(y)) => x.as_bytes() == y.as_bytes(),
        _ => a == b,
    }
}

/// The message as the `Value` it travels as.
pub fn envelope(msg: &Message) -> Value {
    match msg {
        Message::Request {
            msgid,
            method,
            params,
        } => Value::Array(vec![
            0.into(),
            (*msgid).into(),
            method.as_str().into(),
            Value::Array(params.clone()),
        ]),
        Message::Response {
            msgid,
            error,
            result,
        } => Value::Array(vec![
            1.into(),
            (*msgid).into(),
            error.clone(),
            result.clone(),
        ]),
        Message::Notification { method, params } => Value::Array(vec![
            2.into(),
            method.as_str().into(),
            Value::Array(params.clone()),
        ]),
    }
}

/// True for the errors that report a limit.
pub fn is_limit_error(e: &DecodeError) -> bool {
    matches!(
        e,
        DecodeError::TooLarge { .. }
            | DecodeError::TooDeep { .. }
            | DecodeError::TooLargeDecoded { .. }
    )
}
