//! What the fuzz targets share: turning fuzzer bytes into the inputs the gateway sees.

use std::collections::HashSet;

use http::{HeaderMap, HeaderName, HeaderValue};
use sluice_controller::compile::{Inputs, ObjectRef};
use sluice_controller::sources::manifests::Object;

/// What the sources hand the compiler for `objects`: each object once, the first copy of one
/// defined twice (the API server cannot hold two; standalone mode keeps the first and reports
/// the rest). The compiler is not asked to choose between two copies.
pub fn inputs(objects: &[(ObjectRef, Object)]) -> Inputs {
    let mut seen = HashSet::new();
    let mut inputs = Inputs::default();
    for (object_ref, object) in objects {
        if seen.insert(object_ref) {
            inputs.push(object);
        }
    }
    inputs
}

/// `name: value` lines (LF-separated) as a header map, the way an HTTP parser would hand them
/// over: lines that are not a valid name and value are left out, as the parser would refuse
/// them before the gateway sees them.
pub fn header_map(bytes: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in bytes.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    map
}

/// Splits `data` at the first `sep`: (before, after); all of it before when there is none.
pub fn split_once(data: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == sep) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
