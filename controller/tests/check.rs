//! `sluice check` as a user runs it: the real binary on real files.

use std::process::Command;

fn dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-check-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// `sluice check PATH` as a user runs it.
fn sluice_check(path: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check")
        .arg(path)
        .output()
        .expect("run sluice check")
}

const SERVICE: &str =
    "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 80}]\n";

#[test]
fn check_prints_file_object_field_and_reason_and_exits_1() {
    let d = dir("bad");
    std::fs::write(d.join("svc.yaml"), SERVICE).expect("write");
    std::fs::write(
        d.join("routes.yaml"),
        "apiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: shop, namespace: default}\nspec:\n  rules:\n  - matches: [{path: {type: RegularExpression, value: '(unclosed'}}]\n    backendRefs: [{name: web, port: 80}]\n  - backendRefs: [{name: nowhere, port: 80}]\n",
    )
    .expect("write");
    std::fs::write(d.join("broken.yaml"), "apiVersion: v1\nkind: [\n").expect("write");
    let out = sluice_check(&d);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let routes = d.join("routes.yaml").display().to_string();
    assert!(
        stdout.contains(&format!(
            "{routes}: GatewayRoute/default/shop: spec.rules[0].matches[0].path.value: invalid regular expression"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{routes}: GatewayRoute/default/shop: spec.rules[1].backendRefs[0]: Service default/nowhere not found"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("broken.yaml:"),
        "parse errors name the file and line: {stdout}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn check_exits_0_on_clean_manifests() {
    let d = dir("clean");
    std::fs::write(d.join("svc.yaml"), SERVICE).expect("write");
    std::fs::write(
        d.join("route.yaml"),
        "apiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: ok}\nspec:\n  rules:\n  - backendRefs: [{name: web, port: 80}]\n",
    )
    .expect("write");
    let out = sluice_check(&d);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stdout.is_empty());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn examples_pass_check() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let out = sluice_check(&examples);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn run_refuses_unusable_configuration_with_exit_64() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--manifests", "/definitely/not/here"])
        .output()
        .expect("run sluice");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));
}

#[test]
fn cluster_mode_without_a_cluster_says_how_to_run_standalone() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("KUBECONFIG", "/definitely/not/here/kubeconfig")
        .env("HOME", "/definitely/not/here")
        .output()
        .expect("run sluice");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("cannot reach Kubernetes").count(),
        1,
        "said once: {stderr}"
    );
    assert!(
        stderr.contains("KUBECONFIG=/definitely/not/here/kubeconfig"),
        "{stderr}"
    );
    assert!(stderr.contains("--manifests DIR"), "{stderr}");
    assert!(
        stderr.matches("No such file or directory").count() <= 1,
        "the cause once, not the whole chain: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn help_describes_the_commands_for_users() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--help")
        .output()
        .expect("run sluice --help");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("Sluice: a Kubernetes ingress controller and API gateway"),
        "{stdout}"
    );
    assert!(stdout.contains("sluice run --manifests DIR"), "{stdout}");
    assert!(
        !stdout.contains("control plane: resources, compile"),
        "{stdout}"
    );
}

#[test]
fn check_fails_on_a_misspelt_kind_and_on_ingress_that_run_would_skip() {
    let d = dir("kinds");
    std::fs::write(d.join("svc.yaml"), SERVICE).expect("write");
    std::fs::write(
        d.join("route.yaml"),
        "apiVersion: sluice.dev/v1alpha1\nkind: GatewayRotue\nmetadata: {name: shop}\nspec:\n  rules:\n  - backendRefs: [{name: web, port: 80}]\n",
    )
    .expect("write");
    std::fs::write(
        d.join("ingress.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web}\nspec: {}\n",
    )
    .expect("write");
    let out = sluice_check(&d);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let route = d.join("route.yaml").display().to_string();
    assert!(
        stdout.contains(&format!(
            "{route}:2: GatewayRotue/default/shop: kind \"GatewayRotue\" is not one Sluice reads"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("did you mean GatewayRoute?"), "{stdout}");
    assert!(
        stdout.contains("Ingress/default/web: Ingress is not read by Sluice"),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
}

#[test]
fn check_names_the_edge_mistakes_a_browser_or_a_tls_client_would_find_later() {
    let d = dir("edge");
    std::fs::write(d.join("svc.yaml"), SERVICE).expect("write");
    std::fs::write(
        d.join("tls.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata: {name: broken-tls, namespace: default}\ntype: kubernetes.io/tls\nstringData: {tls.crt: not a certificate, tls.key: nor a key}\n",
    )
    .expect("write");
    std::fs::write(
        d.join("routes.yaml"),
        "apiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: shop, namespace: default}\nspec:\n  hostnames: [shop.test]\n  tls: [{secretName: broken-tls}, {hosts: [other.test], secretName: missing-tls}]\n  rules:\n  - name: wild\n    filters: {cors: {allowOrigins: [\"*\"], allowCredentials: true}}\n    backendRefs: [{name: web, port: 80}]\n  - name: origin\n    filters: {cors: {allowOrigins: [\"https://app.example.com/\"]}}\n    backendRefs: [{name: web, port: 80}]\n  - name: cached\n    cache: {maxEntrySize: 1Ti}\n    backendRefs: [{name: web, port: 80}]\n  - name: headers\n    filters: {securityHeaders: {remove: [X-Powered-By]}}\n    backendRefs: [{name: web, port: 80}]\n",
    )
    .expect("write");
    let out = sluice_check(&d);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for expected in [
        "spec.rules[0].filters.cors.allowCredentials: cannot be true with allowOrigins \"*\"",
        "spec.rules[1].filters.cors.allowOrigins[0]: \"https://app.example.com/\" is not an origin",
        "spec.rules[2].cache.maxEntrySize: \"1Ti\" is not a size",
        "spec.rules[3].filters.securityHeaders.remove[0]: \"X-Powered-By\" is not one of the security headers",
        "spec.tls[0].secretName: Secret default/broken-tls: tls.crt",
        "spec.tls[1].secretName: Secret default/missing-tls not found",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_yaml_syntax_error_names_its_line_once() {
    let d = dir("yaml-syntax");
    std::fs::write(
        d.join("bad.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: a\nspec: [\n",
    )
    .expect("write");
    let out = sluice_check(&d);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("invalid YAML"))
        .unwrap_or_default();
    assert!(
        line.contains("bad.yaml:4: invalid YAML: did not find expected ',' or '}'"),
        "{line}"
    );
    assert!(
        !line.contains("at line"),
        "the line is given once, in the prefix: {line}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
