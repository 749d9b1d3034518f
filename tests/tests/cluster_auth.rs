//! Authentication in cluster mode, against the fake API server: the Secrets routes reference
//! are watched one by one (the fake refuses to list Secrets without a name, as RBAC restricted
//! to `resourceNames` does), a Secret that appears later turns its route from failing closed to
//! serving, and editing it rotates keys.

use std::time::Duration;

use http::Request;
use http_body_util::Full;
use serde_json::json;
use sluice_tests::backend::TestBackend;
use sluice_tests::client::{self, send};
use sluice_tests::cluster::{
    ROUTES, Replica, SECRETS, SERVICES, SLICES, condition, secret, service, slice,
};
use sluice_tests::eventually;
use sluice_tests::fake_api::FakeApi;

const PATIENCE: Duration = Duration::from_secs(10);

async fn status_with_key(replica: &Replica, key: Option<&str>) -> u16 {
    let c = client::http1();
    let mut b = Request::get(format!("http://{}/p", replica.addr)).header("host", "h");
    if let Some(key) = key {
        b = b.header("x-api-key", key);
    }
    send(&c, b.body(Full::default()).expect("request"))
        .await
        .map_or(0, |r| r.status.as_u16())
}

fn api_key_route() -> serde_json::Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "GatewayRoute",
        "metadata": {"name": "partners", "namespace": "default"},
        "spec": {"rules": [{
            "authentication": {"apiKey": {"secretRefs": [{"name": "partner-keys"}]}},
            "backendRefs": [{"name": "b", "port": 80}],
        }]},
    })
}

fn resolved_refs(api: &FakeApi) -> Option<(String, String)> {
    let route = api.get(ROUTES, "default", "partners")?;
    let c = condition(&route, "ResolvedRefs")?;
    Some((
        c["status"].as_str()?.to_owned(),
        c["message"].as_str()?.to_owned(),
    ))
}

#[tokio::test]
async fn a_secret_that_appears_later_turns_its_route_from_refusing_to_serving_and_rotates() {
    let api = FakeApi::start().await;
    let b = TestBackend::start("b").await;
    api.apply(SERVICES, service("b"));
    api.apply(SLICES, slice("b", "b-1", b.addr, true));
    api.apply(ROUTES, api_key_route());
    let replica = Replica::start(&api, 0, "pod-a").await;

    // No Secret yet: the rule is programmed but refuses (fail closed), and says why.
    assert!(
        eventually(PATIENCE, || async {
            resolved_refs(&api).is_some_and(|(s, m)| {
                s == "False" && m.contains("Secret default/partner-keys not found")
            })
        })
        .await,
        "{:?}",
        resolved_refs(&api)
    );
    assert_eq!(status_with_key(&replica, Some("k-one")).await, 503);
    assert_eq!(b.hits(), 0);

    api.apply(SECRETS, secret("partner-keys", &[("acme", "k-one")]));
    assert!(
        eventually(PATIENCE, || async {
            status_with_key(&replica, Some("k-one")).await == 200
        })
        .await
    );
    assert!(
        eventually(PATIENCE, || async {
            resolved_refs(&api).is_some_and(|(s, _)| s == "True")
        })
        .await
    );
    assert_eq!(status_with_key(&replica, Some("k-two")).await, 401);

    // Rotation: an edit of the Secret replaces the key at the next snapshot.
    api.apply(SECRETS, secret("partner-keys", &[("acme", "k-two")]));
    assert!(
        eventually(PATIENCE, || async {
            status_with_key(&replica, Some("k-two")).await == 200
        })
        .await
    );
    assert_eq!(status_with_key(&replica, Some("k-one")).await, 401);

    // A Secret no route names is never read: another Secret's change triggers nothing.
    let generation = replica.generation();
    api.apply(SECRETS, secret("unrelated", &[("x", "y")]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(replica.generation(), generation);
}
