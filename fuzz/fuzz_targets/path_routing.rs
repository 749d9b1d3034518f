//! Route matching on the normalised path, and the path the backend then receives. The
//! properties the gateway's security rests on: normalisation is idempotent; the backend gets a
//! path that is already normal (it cannot read it as another path than the one matched); with
//! no rewrite it gets exactly the path that was matched, and matching what it got finds the
//! same rule; a prefix matches only on a segment boundary; the query is passed as sent.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use http::{HeaderMap, Method, Uri};
use libfuzzer_sys::fuzz_target;
use sluice_controller::compile::compile;
use sluice_controller::sources::manifests::parse_file;
use sluice_proxy::Snapshot;
use sluice_proxy::path::normalize;
use sluice_proxy::router::{PathMatch, RequestView};

const ROUTES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: app, namespace: default}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app
  namespace: default
  labels: {kubernetes.io/service-name: app}
addressType: IPv4
ports: [{name: http, port: 9000}]
endpoints: [{addresses: ["127.0.0.1"], conditions: {ready: true}}]
---
apiVersion: sluice.dev/v1alpha1
kind: GatewayRoute
metadata: {name: app, namespace: default}
spec:
  hostnames: ["fuzz.example"]
  rules:
  - name: api
    matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: app, port: 80}]
  - name: admin
    matches: [{path: {type: PathPrefix, value: /api/admin}}]
    backendRefs: [{name: app, port: 80}]
  - name: login
    matches: [{path: {type: Exact, value: /login}}]
    backendRefs: [{name: app, port: 80}]
  - name: items
    matches: [{path: {type: RegularExpression, value: "/v[0-9]+/items/[^/]*"}}]
    backendRefs: [{name: app, port: 80}]
  - name: old
    matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
    backendRefs: [{name: app, port: 80}]
  - name: root
    matches: [{path: {type: PathPrefix, value: /r}}]
    filters:
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
    backendRefs: [{name: app, port: 80}]
  - name: static
    matches: [{path: {type: PathPrefix, value: /static}}]
    filters:
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /index.html}}
    backendRefs: [{name: app, port: 80}]
---
apiVersion: sluice.dev/v1alpha1
kind: GatewayRoute
metadata: {name: fallback, namespace: default}
spec:
  rules:
  - name: all
    matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: app, port: 80}]
"#;

fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let objects = parse_file(Path::new("routes.yaml"), ROUTES).expect("the routes load");
        let inputs = sluice_fuzz::inputs(&objects);
        let compiled = compile(&inputs, 1, None);
        assert!(
            compiled.diagnostics.is_empty(),
            "{:?}",
            compiled.diagnostics
        );
        compiled.snapshot
    })
}

fuzz_target!(|data: &[u8]| {
    // What hyper hands the gateway: a request target it could parse.
    let Ok(uri) = Uri::try_from(data) else {
        return;
    };
    let Ok(path) = normalize(uri.path()) else {
        return;
    };
    let again = normalize(&path).expect("a normal path normalises");
    assert_eq!(again, path, "normalisation is idempotent");

    let snapshot = snapshot();
    let (get, headers) = (Method::GET, HeaderMap::new());
    let mut view = RequestView {
        host: "fuzz.example",
        path: &path,
        query: uri.query(),
        method: &get,
        headers: &headers,
    };
    let candidate = snapshot
        .router
        .find(&view)
        .expect("the fallback matches every path");
    match &candidate.path {
        PathMatch::Exact(p) => assert_eq!(**p, *path),
        PathMatch::Prefix(p) => assert!(
            &**p == "/"
                || path
                    .strip_prefix(&**p)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            "prefix {p} matched {path} off a segment boundary"
        ),
        PathMatch::Regex(r) => assert!(r.is_match(&path)),
    }
    let rule = snapshot.rule(candidate.rule);
    let Some(forwarded) = sluice_proxy::fuzzing::upstream_path(&uri, &path, rule, candidate) else {
        return; // a rewrite that is no valid URI is a 400
    };
    let sent = forwarded.path();
    assert_eq!(
        normalize(sent).ok().as_deref(),
        Some(sent),
        "the backend gets a normal path (matched {path})"
    );
    assert_eq!(
        forwarded.query().filter(|q| !q.is_empty()),
        uri.query().filter(|q| !q.is_empty()),
        "the query is passed as sent"
    );
    if rule.policy.rewrite.is_none() {
        assert_eq!(
            sent, &*path,
            "without a rewrite the backend gets the matched path"
        );
        view.path = sent;
        let rematched = snapshot.router.find(&view).expect("matches");
        assert_eq!(rematched.rule, candidate.rule);
    }
});
