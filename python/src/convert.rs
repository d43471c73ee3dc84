//! Python objects -> MessagePack bytes (encoded here, no `foorpc::Value` on
//! the way out) and MessagePack values (`foorpc::Value`) -> Python objects.
//!
//! Exact built-in types are tried first (the common case), subclasses and
//! the foorpc types (`Float32`, `ExtType`) after. Nesting is bounded by
//! [`MAX_DEPTH`].

use std::cell::Cell;

use foorpc::codec::{write_int, write_uint};
use foorpc::Value;
use pyo3::exceptions::{PyOverflowError, PyRuntimeError, PyTypeError, PyValueError};
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

/// Buffers bigger than this are freed after use instead of kept for the
/// next call on the same thread.
const KEEP_BUFFER: usize = 2 * 1024 * 1024;

thread_local! {
    static BUFFER: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` with this thread's (empty) encoding buffer. The buffer is taken
/// out of the thread-local while `f` runs, so a nested use (Python code run
/// by `f` that calls again) just gets a fresh one.
pub fn with_buffer<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    let mut buf = BUFFER.with(Cell::take);
    buf.clear();
    let r = f(&mut buf);
    if buf.capacity() <= KEEP_BUFFER {
        buf.clear();
        BUFFER.with(|b| b.set(buf));
    }
    r
}

/// Appends a tuple of arguments as one MessagePack params array.
pub fn encode_params(args: &Bound<'_, PyTuple>, out: &mut Vec<u8>) -> PyResult<()> {
    encode_params_from(args.iter(), out)
}

/// [`encode_params`] for arguments that are not in a tuple.
pub fn encode_params_from<'py>(
    args: impl ExactSizeIterator<Item = Bound<'py, PyAny>>,
    out: &mut Vec<u8>,
) -> PyResult<()> {
    write_array_len(out, args.len())?;
    for a in args {
        encode(&a, out, 0)?;
    }
    Ok(())
}

/// Appends the MessagePack encoding of a Python object, in the smallest
/// form (the bytes `foorpc::codec::encode_value` writes for the same value).
///
/// On error `out` holds a partial encoding: callers discard it.
pub fn encode(obj: &Bound<'_, PyAny>, out: &mut Vec<u8>, depth: usize) -> PyResult<()> {
    if obj.is_none() {
        out.push(0xc0);
        return Ok(());
    }
    if let Ok(b) = obj.cast_exact::<PyBool>() {
        out.push(if b.is_true() { 0xc3 } else { 0xc2 });
        return Ok(());
    }
    if obj.is_exact_instance_of::<PyInt>() {
        return encode_int(obj, out);
    }
    if let Ok(f) = obj.cast_exact::<PyFloat>() {
        write_f64(out, f.value());
        return Ok(());
    }
    if let Ok(s) = obj.cast_exact::<PyString>() {
        return encode_str(s, out);
    }
    if let Ok(b) = obj.cast_exact::<PyBytes>() {
        return write_bin(out, b.as_bytes());
    }
    if let Ok(l) = obj.cast_exact::<PyList>() {
        return encode_array(l.iter(), l.len(), out, depth);
    }
    if let Ok(t) = obj.cast_exact::<PyTuple>() {
        return encode_array(t.iter(), t.len(), out, depth);
    }
    if let Ok(d) = obj.cast_exact::<PyDict>() {
        return encode_map(d, out, depth);
    }
    encode_slow(obj, out, depth)
}

fn encode_slow(obj: &Bound<'_, PyAny>, out: &mut Vec<u8>, depth: usize) -> PyResult<()> {
    let py = obj.py();
    let t = types(py)?;
    if obj.is_instance(t.float32.bind(py))? {
        let wide = obj.extract::<f64>()?;
        let f = wide as f32;
        // Rounded to the nearest float32; a finite value beyond its range
        // would go out as inf, so it is refused, as out-of-range ints are.
        if f.is_infinite() && wide.is_finite() {
            return Err(PyOverflowError::new_err(format!(
                "Float32({wide:?}) is outside the float32 range (magnitude at most {:e})",
                f32::MAX
            )));
        }
        out.push(0xca);
        out.extend_from_slice(&f.to_be_bytes());
        return Ok(());
    }
    if obj.is_instance(t.ext_type.bind(py))? {
        let (code, data): (i64, Bound<'_, PyAny>) = obj.extract()?;
        let code = i8::try_from(code).map_err(|_| {
            PyOverflowError::new_err(format!("ExtType code {code} is outside -128..127"))
        })?;
        return write_ext(out, code, &bytes_of(&data)?);
    }
    if obj.is_instance_of::<PyBool>() {
        out.push(if obj.is_truthy()? { 0xc3 } else { 0xc2 });
        return Ok(());
    }
    if obj.is_instance_of::<PyInt>() {
        return encode_int(obj, out);
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        write_f64(out, f.value());
        return Ok(());
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return encode_str(s, out);
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return write_bin(out, b.as_bytes());
    }
    if obj.is_instance_of::<PyByteArray>() || obj.is_instance(t.memoryview.bind(py))? {
        return write_bin(out, &bytes_of(obj)?);
    }
    if let Ok(l) = obj.cast::<PyList>() {
        return encode_array(l.iter(), l.len(), out, depth);
    }
    if let Ok(tu) = obj.cast::<PyTuple>() {
        return encode_array(tu.iter(), tu.len(), out, depth);
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        return encode_map(d, out, depth);
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

fn encode_int(obj: &Bound<'_, PyAny>, out: &mut Vec<u8>) -> PyResult<()> {
    // Non-negative integers take the uint forms, negative ones the int forms.
    if let Ok(i) = obj.extract::<i64>() {
        write_int(out, i);
        return Ok(());
    }
    if let Ok(u) = obj.extract::<u64>() {
        write_uint(out, u);
        return Ok(());
    }
    Err(PyOverflowError::new_err(format!(
        "int {} does not fit in MessagePack (int64 or uint64 range)",
        obj.repr()
            .map(|r| r.to_string())
            .unwrap_or_else(|_| "?".into())
    )))
}

fn encode_str(s: &Bound<'_, PyString>, out: &mut Vec<u8>) -> PyResult<()> {
    match s.to_cow() {
        Ok(c) => write_str(out, c.as_bytes()),
        Err(_) => {
            // Lone surrogates from `surrogateescape` stand for raw bytes that
            // were not valid UTF-8: send those bytes back as they came.
            let b = s.call_method1("encode", ("utf-8", "surrogateescape"))?;
            write_str(out, b.cast_into::<PyBytes>()?.as_bytes())
        }
    }
}

fn encode_array<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    len: usize,
    out: &mut Vec<u8>,
    depth: usize,
) -> PyResult<()> {
    let depth = check_depth(depth)?;
    write_array_len(out, len)?;
    let mut n = 0;
    for item in items {
        n += 1;
        if n > len {
            break;
        }
        encode(&item, out, depth)?;
    }
    if n != len {
        return Err(PyRuntimeError::new_err(
            "a list changed size while it was being sent",
        ));
    }
    Ok(())
}

fn encode_map(d: &Bound<'_, PyDict>, out: &mut Vec<u8>, depth: usize) -> PyResult<()> {
    let depth = check_depth(depth)?;
    let len = d.len();
    if len < 16 {
        out.push(0x80 | len as u8);
    } else {
        write_len16_32(out, len, 0xde, 0xdf)?;
    }
    let mut n = 0;
    for (k, v) in d.iter() {
        n += 1;
        if n > len {
            break;
        }
        encode(&k, out, depth)?;
        encode(&v, out, depth)?;
    }
    if n != len {
        return Err(PyRuntimeError::new_err(
            "a dict changed size while it was being sent",
        ));
    }
    Ok(())
}

// The writers below produce the same (smallest) forms as
// `foorpc::codec::encode_value`; integers use the core's own writers.

fn write_f64(out: &mut Vec<u8>, f: f64) {
    out.push(0xcb);
    out.extend_from_slice(&f.to_be_bytes());
}

/// Appends a str header and the bytes (valid UTF-8 or not).
pub fn write_str(out: &mut Vec<u8>, s: &[u8]) -> PyResult<()> {
    if s.len() < 32 {
        out.push(0xa0 | s.len() as u8);
    } else {
        write_len(out, s.len(), [0xd9, 0xda, 0xdb])?;
    }
    out.extend_from_slice(s);
    Ok(())
}

fn write_bin(out: &mut Vec<u8>, b: &[u8]) -> PyResult<()> {
    write_len(out, b.len(), [0xc4, 0xc5, 0xc6])?;
    out.extend_from_slice(b);
    Ok(())
}

fn write_ext(out: &mut Vec<u8>, code: i8, data: &[u8]) -> PyResult<()> {
    match data.len() {
        1 => out.push(0xd4),
        2 => out.push(0xd5),
        4 => out.push(0xd6),
        8 => out.push(0xd7),
        16 => out.push(0xd8),
        n => write_len(out, n, [0xc7, 0xc8, 0xc9])?,
    }
    out.push(code as u8);
    out.extend_from_slice(data);
    Ok(())
}

fn write_array_len(out: &mut Vec<u8>, n: usize) -> PyResult<()> {
    if n < 16 {
        out.push(0x90 | n as u8);
        Ok(())
    } else {
        write_len16_32(out, n, 0xdc, 0xdd)
    }
}

/// Length header with 8-, 16- and 32-bit forms (bin, str8+, ext).
fn write_len(out: &mut Vec<u8>, n: usize, markers: [u8; 3]) -> PyResult<()> {
    if n <= usize::from(u8::MAX) {
        out.extend_from_slice(&[markers[0], n as u8]);
        Ok(())
    } else {
        write_len16_32(out, n, markers[1], markers[2])
    }
}

fn write_len16_32(out: &mut Vec<u8>, n: usize, m16: u8, m32: u8) -> PyResult<()> {
    if n <= usize::from(u16::MAX) {
        out.push(m16);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        let n = u32::try_from(n).map_err(|_| {
            PyValueError::new_err(format!(
                "{n} bytes or items is more than MessagePack can hold (2**32 - 1)"
            ))
        })?;
        out.push(m32);
        out.extend_from_slice(&n.to_be_bytes());
    }
    Ok(())
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
            let n = entries.len();
            let d = PyDict::new(py);
            for (k, v) in entries {
                d.set_item(to_py_inner(py, k, true)?, to_py_inner(py, v, false)?)?;
            }
            check_map_len(&d, n)?;
            d.into_any()
        }
        Value::Ext(code, data) => types(py)?
            .ext_type
            .bind(py)
            .call1((code, PyBytes::new(py, &data)))?,
    })
}

/// Converts a result delivered by an `*_encoded` call (its MessagePack
/// bytes) into a Python object, then hands the bytes back for reuse.
pub fn result_to_py(py: Python<'_>, result: Value) -> PyResult<Bound<'_, PyAny>> {
    let bytes = foorpc::encoded_result(result);
    let obj = decode_to_py(py, &bytes);
    foorpc::recycle(bytes);
    obj
}

/// Converts the MessagePack bytes of one value (a result as it came off the
/// wire) straight into a Python object: no `Value` tree in between. The same
/// mapping as [`to_py`].
pub fn decode_to_py<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let mut r = Decode { buf: bytes, pos: 0 };
    let obj = r.value(py, false, 0)?;
    if r.pos != bytes.len() {
        return Err(PyValueError::new_err("bytes follow the MessagePack value"));
    }
    Ok(obj)
}

struct Decode<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// A map whose keys are equal in Python (a repeated key, or 1, 1.0 and
/// True, or 0.0 and -0.0) would lose entries as a dict: an error, not a
/// silently smaller value.
fn check_map_len(d: &Bound<'_, PyDict>, n: usize) -> PyResult<()> {
    if d.len() == n {
        return Ok(());
    }
    Err(PyValueError::new_err(format!(
        "a MessagePack map of {n} entries has keys that are equal in Python \
         (a dict would keep {} of them)",
        d.len()
    )))
}

fn truncated() -> PyErr {
    PyValueError::new_err("truncated MessagePack value")
}

impl<'a> Decode<'a> {
    fn take(&mut self, n: usize) -> PyResult<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(truncated)?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn uint(&mut self, width: usize) -> PyResult<u64> {
        Ok(self
            .take(width)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn int(&mut self, width: usize) -> PyResult<i64> {
        let u = self.uint(width)?;
        let shift = 64 - 8 * width as u32;
        Ok(((u << shift) as i64) >> shift)
    }

    fn value<'py>(
        &mut self,
        py: Python<'py>,
        key: bool,
        depth: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let b = self.take(1)?[0];
        let obj = match b {
            0x00..=0x7f => i64::from(b).into_pyobject(py)?.into_any(),
            0xe0..=0xff => i64::from(b as i8).into_pyobject(py)?.into_any(),
            0xc0 => py.None().into_bound(py),
            0xc2 => PyBool::new(py, false).to_owned().into_any(),
            0xc3 => PyBool::new(py, true).to_owned().into_any(),
            0xcc => self.uint(1)?.into_pyobject(py)?.into_any(),
            0xcd => self.uint(2)?.into_pyobject(py)?.into_any(),
            0xce => self.uint(4)?.into_pyobject(py)?.into_any(),
            0xcf => self.uint(8)?.into_pyobject(py)?.into_any(),
            0xd0 => self.int(1)?.into_pyobject(py)?.into_any(),
            0xd1 => self.int(2)?.into_pyobject(py)?.into_any(),
            0xd2 => self.int(4)?.into_pyobject(py)?.into_any(),
            0xd3 => self.int(8)?.into_pyobject(py)?.into_any(),
            0xca => {
                let f = f32::from_bits(self.uint(4)? as u32);
                types(py)?.float32.bind(py).call1((f as f64,))?
            }
            0xcb => PyFloat::new(py, f64::from_bits(self.uint(8)?)).into_any(),
            0xa0..=0xbf => self.str(py, usize::from(b & 0x1f))?,
            0xd9 => {
                let n = self.uint(1)? as usize;
                self.str(py, n)?
            }
            0xda => {
                let n = self.uint(2)? as usize;
                self.str(py, n)?
            }
            0xdb => {
                let n = self.uint(4)? as usize;
                self.str(py, n)?
            }
            0xc4..=0xc6 => {
                let n = self.uint(1 << (b - 0xc4))? as usize;
                PyBytes::new(py, self.take(n)?).into_any()
            }
            0x90..=0x9f => self.array(py, usize::from(b & 0x0f), key, depth)?,
            0xdc => {
                let n = self.uint(2)? as usize;
                self.array(py, n, key, depth)?
            }
            0xdd => {
                let n = self.uint(4)? as usize;
                self.array(py, n, key, depth)?
            }
            0x80..=0x8f => self.map(py, usize::from(b & 0x0f), depth)?,
            0xde => {
                let n = self.uint(2)? as usize;
                self.map(py, n, depth)?
            }
            0xdf => {
                let n = self.uint(4)? as usize;
                self.map(py, n, depth)?
            }
            0xd4..=0xd8 => {
                let n = 1usize << (b - 0xd4);
                self.ext(py, n)?
            }
            0xc7..=0xc9 => {
                let n = self.uint(1 << (b - 0xc7))? as usize;
                self.ext(py, n)?
            }
            0xc1 => return Err(PyValueError::new_err("reserved MessagePack byte 0xc1")),
        };
        Ok(obj)
    }

    fn str<'py>(&mut self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyAny>> {
        let raw = self.take(n)?;
        Ok(match std::str::from_utf8(raw) {
            Ok(st) => PyString::new(py, st).into_any(),
            // Invalid UTF-8 round-trips through surrogate escapes.
            Err(_) => PyString::from_encoded_object(
                &PyBytes::new(py, raw),
                Some(c"utf-8"),
                Some(c"surrogateescape"),
            )?
            .into_any(),
        })
    }

    fn array<'py>(
        &mut self,
        py: Python<'py>,
        n: usize,
        key: bool,
        depth: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let depth = check_depth(depth)?;
        // Each element takes a byte at least: a count beyond the input is bogus.
        if n > self.buf.len() - self.pos {
            return Err(truncated());
        }
        let items = (0..n)
            .map(|_| self.value(py, key, depth))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(if key {
            // A list cannot be a dict key; an array used as a map key becomes a tuple.
            PyTuple::new(py, items)?.into_any()
        } else {
            PyList::new(py, items)?.into_any()
        })
    }

    fn map<'py>(&mut self, py: Python<'py>, n: usize, depth: usize) -> PyResult<Bound<'py, PyAny>> {
        let depth = check_depth(depth)?;
        if n > self.buf.len() - self.pos {
            return Err(truncated());
        }
        let d = PyDict::new(py);
        for _ in 0..n {
            let k = self.value(py, true, depth)?;
            let v = self.value(py, false, depth)?;
            d.set_item(k, v)?;
        }
        check_map_len(&d, n)?;
        Ok(d.into_any())
    }

    fn ext<'py>(&mut self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyAny>> {
        let code = self.take(1)?[0] as i8;
        let data = self.take(n)?;
        types(py)?
            .ext_type
            .bind(py)
            .call1((code, PyBytes::new(py, data)))
    }
}
