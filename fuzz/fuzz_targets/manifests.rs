//! Manifest parsing and compile: YAML of every kind Sluice reads (GatewayRoute,
//! RateLimitPolicy, Service, EndpointSlice, Secret), as a user or the API server hands it over.
//! Whatever the text, loading either fails with an error that names the file, or compiles;
//! a compile names the object and field of every problem, and compiling the same inputs again
//! gives the same snapshot shape.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sluice_controller::compile::compile;
use sluice_controller::sources::manifests::parse_file;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let objects = match parse_file(Path::new("fuzz.yaml"), text) {
        Ok(objects) => objects,
        Err(e) => {
            assert_eq!(e.path, Path::new("fuzz.yaml"));
            assert!(!e.message.is_empty(), "a load error says what is wrong");
            return;
        }
    };
    let inputs = sluice_fuzz::inputs(&objects);
    let first = compile(&inputs, 1, None);
    for d in &first.diagnostics {
        assert!(!d.reason.is_empty(), "a diagnostic says what is wrong: {d}");
    }
    let again = compile(&inputs, 2, Some(&first.snapshot));
    assert_eq!(first.snapshot.rules.len(), again.snapshot.rules.len());
    assert_eq!(first.diagnostics.len(), again.diagnostics.len());
});
