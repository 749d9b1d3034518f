//! `crds/` and the Helm chart's copy in `charts/sluice/crds/` must be exactly what the Rust
//! types generate. Regenerate both with
//! `SLUICE_UPDATE_CRDS=1 cargo test -p sluice-controller --test crds`.

use std::path::Path;

#[test]
fn crds_directory_matches_the_rust_types() {
    check_dir("../crds");
}

#[test]
fn the_helm_chart_carries_the_same_crds() {
    check_dir("../charts/sluice/crds");
}

fn check_dir(relative: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let update = std::env::var_os("SLUICE_UPDATE_CRDS").is_some();
    let mut drifted = Vec::new();
    for (file, generated) in sluice_controller::resources::crd_files() {
        let path = dir.join(&file);
        if update {
            std::fs::write(&path, &generated).expect("write CRD");
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(on_disk) if on_disk == generated => {}
            Ok(_) => drifted.push(format!("{file} differs")),
            Err(e) => drifted.push(format!("{file}: {e}")),
        }
    }
    assert!(
        drifted.is_empty(),
        "{relative} drifted from the Rust types ({}); run SLUICE_UPDATE_CRDS=1 cargo test -p sluice-controller --test crds",
        drifted.join(", ")
    );
}

#[test]
fn sluice_crds_prints_every_crd() {
    let yaml = sluice_controller::resources::crds_yaml();
    for name in ["gatewayroutes.sluice.dev", "ratelimitpolicies.sluice.dev"] {
        assert!(yaml.contains(&format!("name: {name}")), "{name} missing");
    }
    for short in ["- gr\n", "- rlp\n"] {
        assert!(yaml.contains(short), "short name {short:?} missing");
    }
    assert_eq!(
        yaml.matches("subresources:\n").count(),
        2,
        "both have a status subresource"
    );
}
