//! `limits={...}`: the limits a Python client or server applies to its peers
//! (the core's `foorpc::Limits`), given by field name.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

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

/// The default limits, by name (exported as `foorpc.DEFAULT_LIMITS`).
pub fn defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let mut limits = foorpc::Limits::default();
    let out = PyDict::new(py);
    for (name, field) in FIELDS {
        out.set_item(name, *field(&mut limits))?;
    }
    Ok(out)
}

/// The defaults with the entries of `given` (a dict of name -> int >= 1)
/// in their place; an unknown name or a bad value raises.
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
        let n = value
            .extract::<u64>()
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n >= 1)
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "limits[{name:?}]: expected an int >= 1, got {value}"
                ))
            })?;
        *field(&mut limits) = n;
    }
    Ok(limits)
}
