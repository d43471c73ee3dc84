//! `limits={...}`: the limits a Python client or server applies to its peers
//! (the core's `foorpc::Limits`), given by field name.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyMappingProxy};

type Field = fn(&mut foorpc::Limits) -> &mut usize;

/// Every limit, by the name `limits=` takes.
const FIELDS: [(&str, Field); 7] = [
    ("max_message_size", |l| &mut l.max_message_size),
    ("max_decoded_size", |l| &mut l.max_decoded_size),
    ("max_depth", |l| &mut l.max_depth),
    ("max_in_flight", |l| &mut l.max_in_flight),
    ("max_connections", |l| &mut l.max_connections),
    ("max_write_backlog", |l| &mut l.max_write_backlog),
    ("max_request_backlog", |l| &mut l.max_request_backlog),
];

/// The default limits, by name: a read-only mapping (exported as
/// `foorpc.DEFAULT_LIMITS`; changing it would change nothing).
pub fn defaults(py: Python<'_>) -> PyResult<Bound<'_, PyMappingProxy>> {
    let mut limits = foorpc::Limits::default();
    let out = PyDict::new(py);
    for (name, field) in FIELDS {
        out.set_item(name, *field(&mut limits))?;
    }
    Ok(PyMappingProxy::new(py, out.as_mapping()))
}

/// The defaults with the entries of `given` (a dict of name -> int >= 1)
/// in their place. An unknown name or a value below 1 raises ValueError, a
/// value that is not an int (a bool included) TypeError.
pub fn from_dict(given: Option<&Bound<'_, PyDict>>) -> PyResult<foorpc::Limits> {
    let mut limits = foorpc::Limits::default();
    for (key, value) in given.into_iter().flat_map(|d| d.iter()) {
        let name: String = key
            .extract()
            .map_err(|_| PyTypeError::new_err("limits: keys must be str"))?;
        let Some((_, field)) = FIELDS.iter().find(|(n, _)| *n == name) else {
            let known: Vec<&str> = FIELDS.iter().map(|(n, _)| *n).collect();
            return Err(PyValueError::new_err(format!(
                "limits: unknown limit {name:?} (known: {})",
                known.join(", ")
            )));
        };
        if !value.is_instance_of::<PyInt>() || value.is_instance_of::<PyBool>() {
            return Err(PyTypeError::new_err(format!(
                "limits[{name:?}]: expected an int, got {}",
                value.get_type().name()?
            )));
        }
        // Larger than a usize holds: the largest (no limit).
        let n = match value.extract::<u64>() {
            Ok(n) => usize::try_from(n).unwrap_or(usize::MAX),
            Err(_) if value.gt(0)? => usize::MAX,
            Err(_) => 0,
        };
        if n == 0 {
            return Err(PyValueError::new_err(format!(
                "limits[{name:?}] must be >= 1, got {}",
                value.repr()?
            )));
        }
        *field(&mut limits) = n;
    }
    Ok(limits)
}
