//! Python objects <-> MessagePack values (`foorpc::Value`).
//!
//! Exact built-in types are tried first (the common case), subclasses and
//! the foorpc types (`Float32`, `ExtType`) after. Nesting is bounded by
//! [`MAX_DEPTH`].

use foorpc::Value;
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple, PyType,
};

/// Deepest nesting of lists, tuples and dicts that is converted.
pub const MAX_DEPTH: usize = 128;

struct Types {
    float32: Py<PyType>,
    ext_type: Py<PyType>,
    memoryview: Py<PyType>,
}

static TYPES: PyOnceLock<Types> = PyOnceLock::new();

fn types(py: Python<'_>) -> PyResult<&Types> {
    TYPES.get_or_try_init(py, || {
        let m = py.import("foorpc._types")?;
        let builtins = py.import("builtins")?;
        Ok(Types {
            float32: m.getattr("Float32")?.cast_into::<PyType>()?.unbind(),
            ext_type: m.getattr("ExtType")?.cast_into::<PyType>()?.unbind(),
            memoryview: builtins
                .getattr("memoryview")?
                .cast_into::<PyType>()?
                .unbind(),
        })
    })
}

/// Converts the items of a tuple of arguments into a params array.
pub fn params(args: &Bound<'_, PyTuple>) -> PyResult<Vec<Value>> {
    args.iter().map(|a| to_value(&a, 0)).collect()
}

/// Converts a Python object into a MessagePack value.
pub fn to_value(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    if obj.is_none() {
        return Ok(Value::Nil);
    }
    if let Ok(b) = obj.cast_exact::<PyBool>() {
        return Ok(Value::Boolean(b.is_true()));
    }
    if obj.is_exact_instance_of::<PyInt>() {
        return int_value(obj);
    }
    if let Ok(f) = obj.cast_exact::<PyFloat>() {
        return Ok(Value::F64(f.value()));
    }
    if let Ok(s) = obj.cast_exact::<PyString>() {
        return str_value(s);
    }
    if let Ok(b) = obj.cast_exact::<PyBytes>() {
        return Ok(Value::Binary(b.as_bytes().to_vec()));
    }
    if let Ok(l) = obj.cast_exact::<PyList>() {
        return list_value(l.iter(), l.len(), depth);
    }
    if let Ok(t) = obj.cast_exact::<PyTuple>() {
        return list_value(t.iter(), t.len(), depth);
    }
    if let Ok(d) = obj.cast_exact::<PyDict>() {
        return dict_value(d, depth);
    }
    slow_value(obj, depth)
}

fn slow_value(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    let py = obj.py();
    let t = types(py)?;
    if obj.is_instance(t.float32.bind(py))? {
        return Ok(Value::F32(obj.extract::<f64>()? as f32));
    }
    if obj.is_instance(t.ext_type.bind(py))? {
        let (code, data): (i64, Bound<'_, PyAny>) = obj.extract()?;
        let code = i8::try_from(code).map_err(|_| {
            PyOverflowError::new_err(format!("ExtType code {code} is outside -128..127"))
        })?;
        return Ok(Value::Ext(code, bytes_of(&data)?));
    }
    if obj.is_instance_of::<PyBool>() {
        return Ok(Value::Boolean(obj.is_truthy()?));
    }
    if obj.is_instance_of::<PyInt>() {
        return int_value(obj);
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(Value::F64(f.value()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return str_value(s);
    }
    if obj.is_instance_of::<PyBytes>()
        || obj.is_instance_of::<PyByteArray>()
        || obj.is_instance(t.memoryview.bind(py))?
    {
        return Ok(Value::Binary(bytes_of(obj)?));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        return list_value(l.iter(), l.len(), depth);
    }
    if let Ok(tu) = obj.cast::<PyTuple>() {
        return list_value(tu.iter(), tu.len(), depth);
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        return dict_value(d, depth);
    }
    let name = obj
        .get_type()
        .fully_qualified_name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    Err(PyTypeError::new_err(format!(
        "cannot send a value of type {name} with foorpc (supported: None, bool, int, float, \
         str, bytes, bytearray, memoryview, list, tuple, dict, foorpc.Float32, foorpc.ExtType)"
    )))
}

fn bytes_of(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(b.to_vec());
    }
    // memoryview and other buffers: bytes(obj) copies the buffer.
    let b = obj.py().get_type::<PyBytes>().call1((obj,))?;
    Ok(b.cast_into::<PyBytes>()?.as_bytes().to_vec())
}

fn int_value(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    if let Ok(i) = obj.extract::<i64>() {
        return Ok(Value::from(i));
    }
    if let Ok(u) = obj.extract::<u64>() {
        return Ok(Value::from(u));
    }
    Err(PyOverflowError::new_err(format!(
        "int {} does not fit in MessagePack (int64 or uint64 range)",
        obj.repr()
            .map(|r| r.to_string())
            .unwrap_or_else(|_| "?".into())
    )))
}

fn str_value(s: &Bound<'_, PyString>) -> PyResult<Value> {
    match s.to_cow() {
        Ok(c) => Ok(Value::String(c.into_owned().into())),
        Err(_) => {
            // Lone surrogates from `surrogateescape` stand for raw bytes that
            // were not valid UTF-8: send those bytes back as they came.
            let b = s.call_method1("encode", ("utf-8", "surrogateescape"))?;
            let bytes = b.cast_into::<PyBytes>()?.as_bytes().to_vec();
            Ok(raw_str(bytes))
        }
    }
}

/// A MessagePack str holding `bytes`, valid UTF-8 or not.
pub fn raw_str(bytes: Vec<u8>) -> Value {
    match String::from_utf8(bytes) {
        Ok(s) => Value::String(s.into()),
        Err(e) => {
            let bytes = e.into_bytes();
            // rmpv has no public constructor for a str holding invalid UTF-8,
            // but its decoder builds one that keeps the raw bytes.
            let mut buf = Vec::with_capacity(bytes.len() + 5);
            rmp::encode::write_str_len(&mut buf, bytes.len() as u32)
                .expect("writing to a Vec cannot fail");
            buf.extend_from_slice(&bytes);
            rmpv::decode::read_value(&mut buf.as_slice()).unwrap_or(Value::Binary(bytes))
        }
    }
}

fn list_value<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    len: usize,
    depth: usize,
) -> PyResult<Value> {
    let depth = check_depth(depth)?;
    let mut out = Vec::with_capacity(len);
    for item in items {
        out.push(to_value(&item, depth)?);
    }
    Ok(Value::Array(out))
}

fn dict_value(d: &Bound<'_, PyDict>, depth: usize) -> PyResult<Value> {
    let depth = check_depth(depth)?;
    let mut out = Vec::with_capacity(d.len());
    for (k, v) in d.iter() {
        out.push((to_value(&k, depth)?, to_value(&v, depth)?));
    }
    Ok(Value::Map(out))
}

fn check_depth(depth: usize) -> PyResult<usize> {
    if depth >= MAX_DEPTH {
        return Err(PyValueError::new_err(format!(
            "value nested more than {MAX_DEPTH} levels deep"
        )));
    }
    Ok(depth + 1)
}

/// Converts a MessagePack value into a Python object.
pub fn to_py(py: Python<'_>, value: Value) -> PyResult<Bound<'_, PyAny>> {
    to_py_inner(py, value, false)
}

fn to_py_inner(py: Python<'_>, value: Value, key: bool) -> PyResult<Bound<'_, PyAny>> {
    Ok(match value {
        Value::Nil => py.None().into_bound(py),
        Value::Boolean(b) => PyBool::new(py, b).to_owned().into_any(),
        Value::Integer(i) => match i.as_i64() {
            Some(n) => n.into_pyobject(py)?.into_any(),
            None => i.as_u64().unwrap_or(0).into_pyobject(py)?.into_any(),
        },
        Value::F64(f) => PyFloat::new(py, f).into_any(),
        Value::F32(f) => types(py)?.float32.bind(py).call1((f as f64,))?,
        Value::String(s) => {
            if let Some(st) = s.as_str() {
                PyString::new(py, st).into_any()
            } else {
                let raw = PyBytes::new(py, s.as_bytes());
                PyString::from_encoded_object(&raw, Some(c"utf-8"), Some(c"surrogateescape"))?
                    .into_any()
            }
        }
        Value::Binary(b) => PyBytes::new(py, &b).into_any(),
        Value::Array(items) => {
            let items = items
                .into_iter()
                .map(|v| to_py_inner(py, v, key))
                .collect::<PyResult<Vec<_>>>()?;
            if key {
                // A list cannot be a dict key; an array used as a map key becomes a tuple.
                PyTuple::new(py, items)?.into_any()
            } else {
                PyList::new(py, items)?.into_any()
            }
        }
        Value::Map(entries) => {
            let d = PyDict::new(py);
            for (k, v) in entries {
                d.set_item(to_py_inner(py, k, true)?, to_py_inner(py, v, false)?)?;
            }
            d.into_any()
        }
        Value::Ext(code, data) => types(py)?
            .ext_type
            .bind(py)
            .call1((code, PyBytes::new(py, &data)))?,
    })
}
