//! Inputs at scale for the compile bench and the memory example: `SERVICES` Services of
//! `ENDPOINTS_PER_SERVICE` endpoints (one in ten not ready), and `routes` routes spread over
//! them, one in ten with a hostname and one in a hundred with an extra regex match.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sluice_controller::compile::Inputs;
use sluice_controller::resources::*;

pub const SERVICES: usize = 2_000;
pub const ENDPOINTS_PER_SERVICE: usize = 50;

fn meta(name: String, labels: Option<(&str, String)>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some("bench".to_owned()),
        labels: labels.map(|(k, v)| [(k.to_owned(), v)].into_iter().collect()),
        ..ObjectMeta::default()
    }
}

pub fn inputs(routes: usize) -> Inputs {
    let mut inputs = Inputs::default();
    for s in 0..SERVICES {
        inputs.services.push(Arc::new(Service {
            metadata: meta(format!("svc{s}"), None),
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    name: Some("http".to_owned()),
                    port: 80,
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }));
        inputs.slices.push(Arc::new(EndpointSlice {
            metadata: meta(
                format!("svc{s}-a"),
                Some(("kubernetes.io/service-name", format!("svc{s}"))),
            ),
            address_type: "IPv4".to_owned(),
            ports: Some(vec![EndpointPort {
                name: Some("http".to_owned()),
                port: Some(8080),
                ..EndpointPort::default()
            }]),
            endpoints: Some(
                (0..ENDPOINTS_PER_SERVICE)
                    .map(|e| Endpoint {
                        addresses: vec![format!("10.{}.{}.{}", s / 250, s % 250, e + 1)],
                        conditions: Some(EndpointConditions {
                            ready: Some(e % 10 != 0),
                            ..EndpointConditions::default()
                        }),
                        ..Endpoint::default()
                    })
                    .collect(),
            ),
        }));
    }
    for r in 0..routes {
        let mut spec = GatewayRouteSpec {
            hostnames: if r % 10 == 0 {
                vec![format!("r{r}.example.com").into()]
            } else {
                vec![]
            },
            tls: vec![],
            https_redirect: None,
            authentication: None,
            rules: vec![RouteRule {
                name: Some("main".into()),
                matches: vec![RouteMatch {
                    path: Some(PathMatch {
                        match_type: PathMatchType::PathPrefix,
                        value: format!("/api/r{r}").into(),
                    }),
                    ..RouteMatch::default()
                }],
                filters: None,
                backend_refs: vec![BackendRef {
                    name: format!("svc{}", r % SERVICES).into(),
                    port: 80,
                    weight: None,
                }],
                timeouts: None,
                authentication: None,
                authorization: None,
                load_balancer: None,
                retry: None,
                health_check: None,
                circuit_breaker: None,
                cache: None,
            }],
        };
        if r % 100 == 0 {
            spec.rules[0].matches.push(RouteMatch {
                path: Some(PathMatch {
                    match_type: PathMatchType::RegularExpression,
                    value: format!("/re{r}/[0-9]+").into(),
                }),
                ..RouteMatch::default()
            });
        }
        let mut route = GatewayRoute::new(&format!("route{r}"), spec);
        route.metadata.namespace = Some("bench".to_owned());
        inputs.routes.push(Arc::new(route));
    }
    inputs
}
