use std::fs;

use super::*;

const ROUTE: &str = "apiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: r1}\nspec:\n  rules:\n  - backendRefs: [{name: s, port: 80}]\n";

#[test]
fn multi_document_files_load_every_known_kind_and_skip_others() {
    let text = format!(
        "{ROUTE}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ignored}}\n---\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: other}}\nspec: {{ports: [{{port: 80}}]}}\n"
    );
    let objects = parse_file(Path::new("f.yaml"), &text).expect("parses");
    let names: Vec<String> = objects.iter().map(|(o, _)| o.to_string()).collect();
    assert_eq!(names, ["GatewayRoute/default/r1", "Service/other/s"]);
    match &objects[0].1 {
        Object::Route(r) => assert_eq!(r.metadata.namespace.as_deref(), Some("default")),
        other => panic!("expected a route, got {other:?}"),
    }
}

#[test]
fn unknown_fields_are_errors_with_file_line_and_object() {
    let text = format!(
        "{ROUTE}---\n{}",
        ROUTE
            .replace("r1", "r2")
            .replace("  - backendRefs", "  - retries: 3\n    backendRefs")
    );
    let e = parse_file(Path::new("routes/a.yaml"), &text).expect_err("unknown field");
    assert_eq!(
        e.object.as_ref().map(ToString::to_string).as_deref(),
        Some("GatewayRoute/default/r2")
    );
    assert!(
        e.message.contains("unknown field `retries`"),
        "{}",
        e.message
    );
    assert_eq!(e.line, Some(13), "line within the whole file: {e}");
    assert!(
        e.to_string()
            .starts_with("routes/a.yaml:13: GatewayRoute/default/r2: "),
        "{e}"
    );
}

#[test]
fn invalid_yaml_reports_the_line() {
    let e = parse_file(Path::new("bad.yaml"), "apiVersion: v1\nkind: [unclosed\n")
        .expect_err("bad yaml");
    assert!(e.message.starts_with("invalid YAML"), "{}", e.message);
    assert!(e.line.is_some());
}

#[test]
fn wrong_enum_values_and_missing_names_are_errors() {
    let e = parse_file(
        Path::new("x.yaml"),
        &ROUTE.replace(
            "  - backendRefs",
            "  - matches: [{path: {type: Glob, value: /}}]\n    backendRefs",
        ),
    )
    .expect_err("bad enum");
    assert!(
        e.message.contains("unknown variant `Glob`"),
        "{}",
        e.message
    );
    let e = parse_file(
        Path::new("x.yaml"),
        &ROUTE.replace("metadata: {name: r1}", "metadata: {}"),
    )
    .expect_err("no name");
    assert!(e.message.contains("metadata.name"), "{}", e.message);
    let e = parse_file(Path::new("x.yaml"), &ROUTE.replace("v1alpha1", "v9")).expect_err("version");
    assert!(e.message.contains("not supported"), "{}", e.message);
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-manifests-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("nested")).expect("temp dir");
    dir
}

#[test]
fn a_broken_file_keeps_what_it_held_before() {
    let dir = temp_dir("broken");
    let file = dir.join("nested/route.yaml");
    fs::write(&file, ROUTE).expect("write");
    fs::write(dir.join(".hidden.yaml"), "not: [valid").expect("write");
    fs::write(dir.join("notes.txt"), "ignored").expect("write");
    let mut set = ManifestSet::default();
    let first = set.refresh(std::slice::from_ref(&dir));
    assert!(
        first.changed && first.errors.is_empty(),
        "{:?}",
        first.errors
    );
    assert_eq!(set.len(), 1);

    fs::write(
        &file,
        "apiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: r1}\nspec: [oops",
    )
    .expect("write");
    let second = set.refresh(std::slice::from_ref(&dir));
    assert_eq!(second.errors.len(), 1);
    assert!(second.errors[0].path.ends_with("nested/route.yaml"));
    assert!(!second.changed);
    assert_eq!(
        set.inputs(&[]).0.routes.len(),
        1,
        "the previous route is still there"
    );

    fs::remove_file(&file).expect("remove");
    let third = set.refresh(std::slice::from_ref(&dir));
    assert!(third.changed);
    assert!(set.is_empty());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn unchanged_files_are_not_reported_as_changes() {
    let dir = temp_dir("unchanged");
    fs::write(dir.join("r.yaml"), ROUTE).expect("write");
    let mut set = ManifestSet::default();
    assert!(set.refresh(std::slice::from_ref(&dir)).changed);
    assert!(!set.refresh(std::slice::from_ref(&dir)).changed);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_file_unchanged_since_it_settled_is_not_read_again() {
    let dir = temp_dir("settled");
    fs::write(dir.join("a.yaml"), ROUTE).expect("write");
    fs::write(dir.join("b.yaml"), ROUTE.replace("r1", "r2")).expect("write");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut set = ManifestSet::with_margin(std::time::Duration::from_millis(10));
    let first = set.refresh(std::slice::from_ref(&dir));
    assert_eq!((first.read, first.changed), (2, true));
    let second = set.refresh(std::slice::from_ref(&dir));
    assert_eq!(
        (second.read, second.changed),
        (0, false),
        "neither file is read"
    );
    fs::write(dir.join("b.yaml"), ROUTE.replace("r1", "r3")).expect("write");
    let third = set.refresh(std::slice::from_ref(&dir));
    assert_eq!(
        (third.read, third.changed),
        (1, true),
        "only the edited file is read"
    );
    let names: Vec<_> = set
        .inputs(&[])
        .0
        .routes
        .iter()
        .map(|r| r.metadata.name.clone())
        .collect();
    assert_eq!(names, [Some("r1".to_owned()), Some("r3".to_owned())]);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_file_changed_just_before_it_was_read_is_read_again() {
    let dir = temp_dir("racy");
    fs::write(dir.join("a.yaml"), ROUTE).expect("write");
    let mut set = ManifestSet::default();
    assert_eq!(set.refresh(std::slice::from_ref(&dir)).read, 1);
    // Its change is within the margin of the read: a same-size write could share the stamp.
    let again = set.refresh(std::slice::from_ref(&dir));
    assert_eq!((again.read, again.changed), (1, false));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_rewrite_with_the_same_content_changes_nothing() {
    let dir = temp_dir("same-content");
    fs::write(dir.join("a.yaml"), ROUTE).expect("write");
    let mut set = ManifestSet::with_margin(std::time::Duration::ZERO);
    assert!(set.refresh(std::slice::from_ref(&dir)).changed);
    // A new file with the same bytes, renamed over the old one, as editors and kubectl do.
    fs::write(dir.join(".a.yaml.tmp"), ROUTE).expect("write");
    fs::rename(dir.join(".a.yaml.tmp"), dir.join("a.yaml")).expect("rename");
    let refresh = set.refresh(std::slice::from_ref(&dir));
    assert_eq!((refresh.read, refresh.changed), (1, false));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn patched_inputs_hold_the_objects_listed_afresh() {
    let dir = temp_dir("patched-inputs");
    let addresses = |inputs: &Inputs| {
        let mut a: Vec<usize> = inputs
            .routes
            .iter()
            .map(|r| Arc::as_ptr(r) as usize)
            .collect();
        a.sort_unstable();
        a
    };
    for name in ["a", "b", "c"] {
        fs::write(dir.join(format!("{name}.yaml")), ROUTE.replace("r1", name)).expect("write");
    }
    let mut set = ManifestSet::with_margin(std::time::Duration::ZERO);
    set.refresh(std::slice::from_ref(&dir));
    let (inputs, _) = set.take_inputs(&[]);
    assert_eq!(inputs.routes.len(), 3);
    set.keep_inputs(&[], inputs);
    // One file edited, one removed, one added.
    fs::write(
        dir.join("a.yaml"),
        ROUTE.replace("r1", "a").replace("port: 80", "port: 81"),
    )
    .expect("write");
    fs::remove_file(dir.join("b.yaml")).expect("remove");
    fs::write(dir.join("d.yaml"), ROUTE.replace("r1", "d")).expect("write");
    set.refresh(std::slice::from_ref(&dir));
    let (patched, _) = set.take_inputs(&[]);
    assert_eq!(addresses(&patched), addresses(&set.inputs(&[]).0));
    assert_eq!(patched.routes.len(), 3);
    set.keep_inputs(&[], patched);
    // A duplicate makes the next inputs a listing afresh, which reports it.
    fs::write(dir.join("e.yaml"), ROUTE.replace("r1", "d")).expect("write");
    set.refresh(std::slice::from_ref(&dir));
    let (again, duplicates) = set.take_inputs(&[]);
    assert_eq!(duplicates.len(), 1);
    assert_eq!(addresses(&again), addresses(&set.inputs(&[]).0));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn duplicates_across_files_keep_the_first_and_are_reported() {
    let dir = temp_dir("dups");
    fs::write(dir.join("a.yaml"), ROUTE).expect("write");
    fs::write(dir.join("b.yaml"), ROUTE).expect("write");
    let mut set = ManifestSet::default();
    set.refresh(std::slice::from_ref(&dir));
    let (inputs, duplicates) = set.inputs(&[]);
    assert_eq!(inputs.routes.len(), 1);
    assert_eq!(duplicates.len(), 1);
    assert!(duplicates[0].path.ends_with("b.yaml"));
    assert!(duplicates[0].message.contains("a.yaml"));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn namespaces_filter_the_inputs() {
    let dir = temp_dir("ns");
    fs::write(
        dir.join("a.yaml"),
        format!(
            "{ROUTE}---\n{}",
            ROUTE.replace("{name: r1}", "{name: r2, namespace: shop}")
        ),
    )
    .expect("write");
    let mut set = ManifestSet::default();
    set.refresh(std::slice::from_ref(&dir));
    assert_eq!(set.inputs(&["shop".to_owned()]).0.routes.len(), 1);
    assert_eq!(set.inputs(&[]).0.routes.len(), 2);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_same_length_edit_in_the_same_instant_is_seen() {
    let dir = temp_dir("same-length");
    let file = dir.join("r.yaml");
    fs::write(&file, ROUTE).expect("write");
    let mut set = ManifestSet::default();
    set.refresh(std::slice::from_ref(&dir));
    let mtime = fs::metadata(&file)
        .and_then(|m| m.modified())
        .expect("mtime");
    fs::write(&file, ROUTE.replace("port: 80", "port: 81")).expect("write");
    // Same size, and the clock put back: only the content tells the edit apart.
    fs::File::options()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_modified(mtime))
        .expect("set mtime");
    assert!(set.refresh(std::slice::from_ref(&dir)).changed);
    let (inputs, _) = set.inputs(&[]);
    assert_eq!(inputs.routes[0].spec.rules[0].backend_refs[0].port, 81);
    let _ = fs::remove_dir_all(&dir);
}

#[cfg(unix)]
#[test]
fn a_symlink_back_up_the_tree_does_not_loop() {
    let dir = temp_dir("symlink-loop");
    fs::create_dir_all(dir.join("sub")).expect("mkdir");
    fs::write(dir.join("sub/r.yaml"), ROUTE).expect("write");
    std::os::unix::fs::symlink(&dir, dir.join("sub/up")).expect("symlink");
    let files = yaml_files(&dir).expect("walks");
    assert_eq!(files.len(), 1, "{files:?}");
    let _ = fs::remove_dir_all(&dir);
}

fn notices(text: &str) -> Vec<String> {
    let mut notices = Vec::new();
    parse_file_noting(Path::new("m/x.yaml"), text, &mut notices).expect("parses");
    notices.iter().map(ToString::to_string).collect()
}

#[test]
fn a_misspelt_kind_of_ours_is_noticed_with_its_line_and_a_suggestion() {
    let text = format!(
        "{ROUTE}---\n{}",
        ROUTE.replace("kind: GatewayRoute", "kind: GatewayRotue")
    );
    assert_eq!(
        notices(&text),
        [
            "m/x.yaml:9: GatewayRotue/default/r1: kind \"GatewayRotue\" is not one Sluice reads \
             (its kinds are GatewayRoute and RateLimitPolicy, in sluice.dev/v1alpha1); did you mean GatewayRoute?"
        ]
    );
    // Near misses in any group, and unknown kinds in ours, are noticed too.
    let plural = ROUTE
        .replace("apiVersion: sluice.dev/v1alpha1", "apiVersion: v1")
        .replace("kind: GatewayRoute", "kind: gatewayroutes");
    assert!(
        notices(&plural)[0].ends_with("did you mean GatewayRoute?"),
        "{:?}",
        notices(&plural)
    );
    let unknown = ROUTE.replace("kind: GatewayRoute", "kind: TrafficPolicy");
    let n = notices(&unknown);
    assert_eq!(n.len(), 1);
    assert!(
        n[0].contains("kind \"TrafficPolicy\" is not one Sluice reads")
            && !n[0].contains("did you mean"),
        "{n:?}"
    );
}

#[test]
fn a_comment_before_the_first_separator_does_not_shift_the_line() {
    let text = "# shop routes\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web}\n";
    assert_eq!(notices(text).len(), 1);
    assert!(
        notices(text)[0].starts_with("m/x.yaml:4: Ingress/default/web"),
        "{:?}",
        notices(text)
    );
}

#[test]
fn ingress_and_httproute_are_noticed_and_point_to_the_readme() {
    let text = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web, namespace: shop}\nspec: {}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web}\nspec: {}\n";
    assert_eq!(
        notices(text),
        [
            "m/x.yaml:2: Ingress/shop/web: Ingress is not read by Sluice; write the same routes as a GatewayRoute (README: \"Coming from Ingress or HTTPRoute\")",
            "m/x.yaml:7: HTTPRoute/default/web: HTTPRoute is not read by Sluice; write the same routes as a GatewayRoute (README: \"Coming from Ingress or HTTPRoute\")",
        ]
    );
}

#[test]
fn other_kinds_are_skipped_quietly() {
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\n";
    assert!(notices(text).is_empty());
    assert_eq!(edit_distance("GatewayRoute", "GatewayRoute"), 0);
    assert_eq!(edit_distance("gatewayrotue", "gatewayroute"), 2);
    assert!(!near_miss("Route", "GatewayRoute"));
}

#[test]
fn type_errors_carry_the_line_the_field_path_and_no_rust_names() {
    let two_rules = "apiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: a}\nspec:\n  rules:\n  - backendRefs: [{name: s, port: 80}]\n  - backendRefs: [{name: s, port: 80}]\n    filters: 3\n";
    let e = parse_file(Path::new("r.yaml"), two_rules).expect_err("filters must be a mapping");
    assert_eq!(
        e.to_string(),
        "r.yaml:8: GatewayRoute/default/a: spec.rules[1].filters: invalid type: integer `3`, expected a mapping of fields"
    );
    let port = "apiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: a}\nspec:\n  rules:\n  - backendRefs: [{name: s, port: \"x\"}]\n";
    let e = parse_file(Path::new("r.yaml"), port).expect_err("port must be a number");
    assert_eq!(
        e.to_string(),
        "r.yaml:6: GatewayRoute/default/a: spec.rules[0].backendRefs[0].port: invalid type: string \"x\", expected an integer"
    );
    let listed = "apiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: a}\nspec:\n  rules:\n  - backendRefs: [{name: s, port: 80}]\n    timeouts:\n      request: [5s]\n";
    let e = parse_file(Path::new("r.yaml"), listed).expect_err("a list is no duration");
    assert!(
        e.to_string().ends_with(
            "spec.rules[0].timeouts.request: sequence is not a duration: write one as a string such as \"5s\", \"250ms\" or \"1m30s\""
        ),
        "{e}"
    );
}

#[test]
fn a_duration_written_as_a_number_loads_and_is_judged_by_compile() {
    let text = ROUTE.replace(
        "  - backendRefs: [{name: s, port: 80}]\n",
        "  - backendRefs: [{name: s, port: 80}]\n    timeouts: {request: 5}\n",
    );
    let objects = parse_file(Path::new("r.yaml"), &text).expect("the scalar reads as a string");
    let Object::Route(route) = &objects[0].1 else {
        panic!("a route");
    };
    let timeouts = route.spec.rules[0].timeouts.as_ref().expect("timeouts");
    assert_eq!(timeouts.request.as_deref(), Some("5"));
}

#[test]
fn user_words_replace_rust_type_names() {
    assert_eq!(
        user_words("invalid type: map, expected u16", "spec.x"),
        "invalid type: map, expected an integer"
    );
    assert_eq!(
        user_words(
            "invalid type: string \"a\", expected struct RouteFilters",
            "spec.rules[0].filters"
        ),
        "invalid type: string \"a\", expected a mapping of fields"
    );
}
