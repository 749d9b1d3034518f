//! Golden compile tests: every `compile/<case>.in.yaml` is loaded and compiled as `sluice
//! check` does, and what comes out (rules with their steps and backends, the identity headers,
//! statuses, diagnostics) must equal `compile/<case>.out.yaml`. Regenerate the outputs after an
//! intended change with `SLUICE_UPDATE_GOLDEN=1 cargo test -p sluice-controller --test golden`
//! and read the diff.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sluice_controller::compile::compile;
use sluice_controller::sources::manifests::ManifestSet;

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compile");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/compile exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    cases.sort();
    cases
}

/// What a compile of `input` produced, as stable, readable YAML.
fn render(input: &Path) -> String {
    let mut set = ManifestSet::default();
    let refresh = set.refresh(&[input.to_owned()]);
    assert!(refresh.errors.is_empty(), "{:?}", refresh.errors);
    let (inputs, _) = set.inputs(&[]);
    let compiled = compile(&inputs, 1, None);
    let rules: Vec<Value> = compiled
        .snapshot
        .rules
        .iter()
        .map(|r| serde_json::to_value(&**r).expect("rule serialises"))
        .collect();
    let statuses: Vec<Value> = compiled
        .statuses
        .iter()
        .map(|s| {
            json!({
                "object": s.object.to_string(),
                "observedGeneration": s.observed_generation,
                "conditions": s.conditions.iter().map(|c| json!({
                    "type": c.type_,
                    "status": c.status,
                    "reason": c.reason,
                    "message": c.message,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let diagnostics: Vec<String> = compiled
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect();
    let identity_headers: Vec<&str> = compiled
        .snapshot
        .identity_headers
        .iter()
        .map(|h| h.as_str())
        .collect();
    let out = json!({
        "rules": rules,
        "certificates": compiled.snapshot.tls,
        "identityHeaders": identity_headers,
        "statuses": statuses,
        "diagnostics": diagnostics,
    });
    serde_yaml::to_string(&out).expect("yaml")
}

#[test]
fn compile_outputs_match_the_golden_files() {
    let update = std::env::var_os("SLUICE_UPDATE_GOLDEN").is_some();
    let cases = cases();
    assert!(!cases.is_empty(), "no golden cases found");
    let mut differ = Vec::new();
    for input in cases {
        let output = PathBuf::from(input.to_string_lossy().replace(".in.yaml", ".out.yaml"));
        let rendered = render(&input);
        if update {
            std::fs::write(&output, &rendered).expect("write golden output");
            continue;
        }
        match std::fs::read_to_string(&output) {
            Ok(expected) if expected == rendered => {}
            Ok(expected) => differ.push(format!(
                "{}:\n--- expected\n{expected}\n--- got\n{rendered}",
                output.display()
            )),
            Err(e) => differ.push(format!("{}: {e}", output.display())),
        }
    }
    assert!(
        differ.is_empty(),
        "compile output changed; if intended, run SLUICE_UPDATE_GOLDEN=1 cargo test -p sluice-controller --test golden\n{}",
        differ.join("\n")
    );
}
