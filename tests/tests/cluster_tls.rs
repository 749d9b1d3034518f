//! HTTPS in cluster mode, against the fake API server: the `kubernetes.io/tls` Secret a route
//! names is watched by name (listing Secrets is refused, as RBAC restricted to `resourceNames`
//! does), a Secret that appears later gives its host a certificate and clears
//! `ResolvedRefs=False`, and an update of the Secret rotates the certificate of new connections.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use sluice_tests::backend::TestBackend;
use sluice_tests::cluster::{
    ROUTES, Replica, SECRETS, SERVICES, SLICES, condition, service, slice,
};
use sluice_tests::eventually;
use sluice_tests::fake_api::FakeApi;
use sluice_tests::harness::temp_dir;
use sluice_tests::tls::{Ca, Certificate, connect, presented};

const PATIENCE: Duration = Duration::from_secs(10);

fn tls_secret(name: &str, cert: &Certificate) -> Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64(&cert.cert_pem), "tls.key": b64(&cert.key_pem)},
    })
}

fn resolved_refs(api: &FakeApi) -> Option<String> {
    let route = api.get(ROUTES, "default", "shop")?;
    condition(&route, "ResolvedRefs")?["status"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test]
async fn a_tls_secret_is_watched_by_name_served_by_sni_and_rotated() {
    let dir = temp_dir("cluster-tls");
    let ca = Ca::new(&dir);
    let api = FakeApi::start().await;
    let b = TestBackend::start("b").await;
    api.apply(SERVICES, service("b"));
    api.apply(SLICES, slice("b", "b-1", b.addr, true));
    api.apply(
        ROUTES,
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "GatewayRoute",
            "metadata": {"name": "shop", "namespace": "default"},
            "spec": {
                "hostnames": ["shop.test"],
                "tls": [{"secretName": "shop-tls"}],
                "rules": [{"backendRefs": [{"name": "b", "port": 80}]}],
            },
        }),
    );
    let replica = Replica::start(&api, 0, "pod-a").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let https = listener.local_addr().expect("addr");
    tokio::spawn(sluice_proxy::server::serve_tls(
        replica.gateway.clone(),
        listener,
        std::future::pending::<()>(),
    ));
    assert!(
        eventually(PATIENCE, || async {
            resolved_refs(&api).as_deref() == Some("False")
        })
        .await,
        "no Secret yet: ResolvedRefs=False"
    );
    assert!(connect(https, "shop.test", &[&ca.root], &[]).await.is_err());

    let first = ca.issue(&["shop.test"]);
    api.apply(SECRETS, tls_secret("shop-tls", &first));
    assert!(
        eventually(PATIENCE, || async {
            connect(https, "shop.test", &[&ca.root], &[])
                .await
                .is_ok_and(|s| presented(&s) == first.der())
        })
        .await,
        "the Secret's certificate is served"
    );
    assert!(
        eventually(PATIENCE, || async {
            resolved_refs(&api).as_deref() == Some("True")
        })
        .await
    );

    let renewed = ca.issue(&["shop.test"]);
    api.apply(SECRETS, tls_secret("shop-tls", &renewed));
    assert!(
        eventually(PATIENCE, || async {
            connect(https, "shop.test", &[&ca.root], &[])
                .await
                .is_ok_and(|s| presented(&s) == renewed.der())
        })
        .await,
        "an updated Secret rotates the certificate"
    );
}
