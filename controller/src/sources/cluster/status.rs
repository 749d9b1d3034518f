//! Output: status conditions on GatewayRoutes and RateLimitPolicies, written by the leader only
//! and only when they change. It reads what a reconcile published and writes to the API server;
//! nothing here feeds back into compile or the proxy.

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition as KubeCondition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::compile::{FastMap, ObjectRef, StatusReport};
use crate::resources::ObjectStatus;

/// The snapshot a set of reports was compiled into, and when it went live.
#[derive(Debug, Clone, Copy)]
pub struct LiveSnapshot {
    /// Snapshot generation.
    pub generation: u64,
    /// When it was installed.
    pub at: Timestamp,
    /// From the oldest change it includes to its installation, in milliseconds.
    pub propagation_ms: u64,
}

/// The status to write for `report`, given what the object carries now.
///
/// `Programmed` says which snapshot first served this generation of the object and when; it is
/// kept as is while the generation stays the same, so later snapshots (an endpoint flip, another
/// route's change, another replica taking over) do not rewrite every object's status.
pub fn desired_status(
    report: &StatusReport,
    current: Option<&ObjectStatus>,
    live: &LiveSnapshot,
    not_programmed_reason: &'static str,
) -> ObjectStatus {
    let generation = report.observed_generation;
    let accepted = report.condition("Accepted").is_some_and(|c| c.status);
    let mut conditions: Vec<KubeCondition> = report
        .conditions
        .iter()
        .map(|c| KubeCondition {
            type_: c.type_.to_owned(),
            status: if c.status { "True" } else { "False" }.to_owned(),
            reason: c.reason.to_owned(),
            message: truncate(&c.message),
            observed_generation: generation,
            last_transition_time: Time(live.at),
        })
        .collect();
    let previous_programmed = current
        .filter(|s| s.observed_generation == generation)
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Programmed"))
        .filter(|c| c.status == "True");
    conditions.push(match (accepted, previous_programmed) {
        (true, Some(kept)) => kept.clone(),
        (true, None) => KubeCondition {
            type_: "Programmed".to_owned(),
            status: "True".to_owned(),
            reason: "Programmed".to_owned(),
            message: format!(
                "generation {} serving since snapshot {} at {} ({} ms after the change was seen)",
                generation.unwrap_or_default(),
                live.generation,
                live.at,
                live.propagation_ms
            ),
            observed_generation: generation,
            last_transition_time: Time(live.at),
        },
        (false, _) => KubeCondition {
            type_: "Programmed".to_owned(),
            status: "False".to_owned(),
            reason: not_programmed_reason.to_owned(),
            message: "not serving: see the Accepted condition".to_owned(),
            observed_generation: generation,
            last_transition_time: Time(live.at),
        },
    });
    // A condition whose status did not flip keeps its transition time (Kubernetes API
    // conventions), which also keeps an unchanged status byte-for-byte equal.
    if let Some(current) = current {
        for c in &mut conditions {
            if let Some(old) = current
                .conditions
                .iter()
                .find(|o| o.type_ == c.type_ && o.status == c.status)
            {
                c.last_transition_time = old.last_transition_time.clone();
            }
        }
    }
    ObjectStatus {
        observed_generation: generation,
        conditions,
    }
}

/// Kubernetes caps condition messages at 32768 bytes.
fn truncate(message: &str) -> String {
    const MAX: usize = 32 * 1024 - 16;
    if message.len() <= MAX {
        return message.to_owned();
    }
    let mut end = MAX;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// A status this replica wrote, for the object's generation and uid (a deleted and recreated
/// object of the same name is another object).
type Written = (Option<i64>, Option<String>, ObjectStatus);

/// What this replica knows of one object's status.
#[derive(Default)]
struct Known {
    /// The address of the report whose status was last found on the object (or written to
    /// it): its key in [`Memory::settled`].
    settled: Option<usize>,
    /// What this replica last wrote. The stores see our writes only when their watch event
    /// arrives; until then this is the truth, so a second trigger in between does not write the
    /// same status again.
    written: Option<Written>,
    /// The pass that last looked the object up (one that found its report settled marks that
    /// report instead).
    seen: u64,
}

/// A report whose status is on its object, and the last pass that saw it.
struct Settled {
    kind: &'static str,
    /// Held, so that its address cannot be reused by another report.
    _report: Arc<StatusReport>,
    seen: u64,
}

/// What this replica knows of the statuses of objects.
#[derive(Default)]
struct Memory {
    /// By kind, then by object.
    known: FastMap<&'static str, FastMap<ObjectRef, Known>>,
    /// The settled reports by address. Compile hands an unchanged object's report on as the
    /// same `Arc`, so with 10,000 routes a pass after a change to one looks up 10,000 addresses
    /// (no name is hashed, no report read) and one object. (Looking up each report's object
    /// by name took 3-5 ms of a proxy worker per route change.)
    settled: FastMap<usize, Settled>,
    /// The number of the last pass.
    pass: u64,
}

impl Memory {
    /// Records that this replica wrote `written` to `report`'s object: the report is settled.
    fn wrote(&mut self, report: Arc<StatusReport>, written: Written) {
        let k = known_of(&mut self.known, &report.object);
        k.written = Some(written);
        settle(&mut self.settled, k, report, self.pass);
    }
}

/// What this replica knows of `object`, made empty if it knew nothing.
fn known_of<'m>(
    known: &'m mut FastMap<&'static str, FastMap<ObjectRef, Known>>,
    object: &ObjectRef,
) -> &'m mut Known {
    known
        .entry(object.kind)
        .or_default()
        .entry(object.clone())
        .or_default()
}

fn address(report: &Arc<StatusReport>) -> usize {
    Arc::as_ptr(report) as usize
}

/// Records that `report`'s status is on its object (`known`), in place of the one that was.
fn settle(
    settled: &mut FastMap<usize, Settled>,
    known: &mut Known,
    report: Arc<StatusReport>,
    seen: u64,
) {
    let at = address(&report);
    if let Some(old) = known.settled.replace(at)
        && old != at
    {
        settled.remove(&old);
    }
    settled.insert(
        at,
        Settled {
            kind: report.object.kind,
            _report: report,
            seen,
        },
    );
}

/// Writes statuses and events.
pub struct StatusWriter {
    client: Client,
    recorder: Recorder,
    memory: std::sync::Mutex<Memory>,
}

/// How many status writes are in flight at once: enough to finish 10,000 first writes in
/// seconds, few enough not to trip API priority and fairness.
const CONCURRENT_WRITES: usize = 8;

impl StatusWriter {
    /// A writer acting as `pod` of controller `sluice`.
    pub fn new(client: Client, pod: &str) -> Self {
        let reporter = kube::runtime::events::Reporter {
            controller: "sluice".to_owned(),
            instance: Some(pod.to_owned()),
        };
        StatusWriter {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            memory: std::sync::Mutex::new(Memory::default()),
        }
    }

    /// Drops the memory of past writes (when another replica may have written since).
    pub fn forget(&self) {
        *self.lock_memory() = Memory::default();
    }

    fn lock_memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the status of every object of kind `K` in `reports` whose status differs from
    /// its current one (`object` finds it by namespace and name); returns how many were
    /// written. A report already settled costs one lookup; only the others are compared.
    pub async fn write<K>(
        &self,
        object: impl Fn(&str, &str) -> Option<Arc<K>>,
        reports: &[Arc<StatusReport>],
        live: &LiveSnapshot,
        not_programmed_reason: &'static str,
        leading: &tokio::sync::watch::Receiver<bool>,
    ) -> usize
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
        K: Clone + DeserializeOwned + Serialize + std::fmt::Debug + HasStatus,
    {
        let kind = K::kind(&());
        let work: Vec<(Arc<K>, Arc<StatusReport>, ObjectStatus)> = {
            let mut guard = self.lock_memory();
            let Memory {
                known,
                settled,
                pass,
            } = &mut *guard;
            *pass += 1;
            let pass = *pass;
            // Objects of this kind that some report names; when that is all of them, none is
            // gone.
            let mut present = 0;
            let mut work = Vec::new();
            for r in reports {
                if let Some(s) = settled.get_mut(&address(r)) {
                    if *s.kind == *kind {
                        s.seen = pass;
                        present += 1;
                    }
                    continue;
                }
                if *r.object.kind != *kind {
                    continue;
                }
                let Some(object) = object(&r.object.namespace, &r.object.name) else {
                    continue;
                };
                // A newer generation is on its way through compile; its own write follows.
                if object.meta().generation != r.observed_generation {
                    continue;
                }
                let k = known_of(known, &r.object);
                k.seen = pass;
                present += 1;
                // The report that was settled is not this one any more.
                if let Some(old) = k.settled.take() {
                    settled.remove(&old);
                }
                let ours = k
                    .written
                    .as_ref()
                    .filter(|(generation, uid, _)| {
                        *generation == r.observed_generation && *uid == object.meta().uid
                    })
                    .map(|(_, _, status)| status);
                let current = ours.or_else(|| object.status());
                let next = desired_status(r, current, live, not_programmed_reason);
                if current == Some(&next) {
                    settle(settled, k, Arc::clone(r), pass);
                } else {
                    work.push((object, Arc::clone(r), next));
                }
            }
            // Forget objects of this kind that are gone.
            if let Some(known) = known.get_mut(&*kind)
                && known.len() != present
            {
                known.retain(|_, k| {
                    let here = k.seen == pass
                        || k.settled
                            .is_some_and(|a| settled.get(&a).is_some_and(|s| s.seen == pass));
                    if !here && let Some(a) = k.settled {
                        settled.remove(&a);
                    }
                    here
                });
            }
            work
        };
        futures_util::stream::iter(work)
            // Stop issuing writes the moment this replica stops leading.
            .take_while(|_| std::future::ready(*leading.borrow()))
            .map(|(object, report, status)| self.write_one(object, report, status))
            .buffer_unordered(CONCURRENT_WRITES)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await
    }

    async fn write_one<K>(
        &self,
        object: Arc<K>,
        report: Arc<StatusReport>,
        status: ObjectStatus,
    ) -> bool
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
        K: Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    {
        let namespace = object.namespace().unwrap_or_default();
        let name = object.name_any();
        let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
        let patch = serde_json::json!({ "status": &status });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => self.lock_memory().wrote(
                report,
                (
                    object.meta().generation,
                    object.meta().uid.clone(),
                    status.clone(),
                ),
            ),
            // Deleted since compile: nothing to report on.
            Err(kube::Error::Api(e)) if e.code == 404 => return false,
            Err(e) => {
                tracing::warn!(kind = %K::kind(&()), namespace, name, error = %e, "status write failed; retrying at the next compile");
                return false;
            }
        }
        if let Some(problem) = status.conditions.iter().find(|c| {
            (c.type_ == "Accepted" && c.status == "False") || c.type_ == "PartiallyInvalid"
        }) {
            let event = Event {
                type_: EventType::Warning,
                reason: "Rejected".to_owned(),
                note: Some(truncate_event(&problem.message)),
                action: "Compile".to_owned(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
                tracing::debug!(namespace, name, error = %e, "event not recorded");
            }
        }
        true
    }
}

/// Event notes are capped at 1 KiB.
fn truncate_event(message: &str) -> String {
    let mut end = message.len().min(1000);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_owned()
}

/// Resources whose status is an [`ObjectStatus`].
pub trait HasStatus {
    /// The current status.
    fn status(&self) -> Option<&ObjectStatus>;
}

impl HasStatus for crate::resources::GatewayRoute {
    fn status(&self) -> Option<&ObjectStatus> {
        self.status.as_deref()
    }
}

impl HasStatus for crate::resources::RateLimitPolicy {
    fn status(&self) -> Option<&ObjectStatus> {
        self.status.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{Condition, ObjectRef};
    use crate::resources::BoxedStatus;

    fn report(generation: i64, accepted: bool) -> StatusReport {
        StatusReport {
            object: ObjectRef {
                kind: "GatewayRoute",
                namespace: "ns".to_owned(),
                name: "r".to_owned(),
            },
            observed_generation: Some(generation),
            conditions: vec![
                Condition::new("Accepted", accepted, "Accepted", "1 of 1 rules accepted"),
                Condition::new("ResolvedRefs", true, "ResolvedRefs", "ok"),
            ],
        }
    }

    fn live(generation: u64, second: i64) -> LiveSnapshot {
        LiveSnapshot {
            generation,
            at: Timestamp::from_second(1_800_000_000 + second).expect("timestamp"),
            propagation_ms: 7,
        }
    }

    fn condition<'a>(s: &'a ObjectStatus, type_: &str) -> &'a KubeCondition {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition present")
    }

    #[test]
    fn programmed_names_the_snapshot_and_time_the_generation_went_live() {
        let s = desired_status(&report(3, true), None, &live(17, 0), "Invalid");
        let p = condition(&s, "Programmed");
        assert_eq!(p.status, "True");
        assert!(
            p.message.contains("generation 3 serving since snapshot 17"),
            "{}",
            p.message
        );
        assert!(p.message.contains("7 ms"), "{}", p.message);
        assert_eq!(s.observed_generation, Some(3));
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );
    }

    #[test]
    fn a_later_snapshot_does_not_change_an_unchanged_status() {
        let first = desired_status(&report(3, true), None, &live(17, 0), "Invalid");
        let again = desired_status(&report(3, true), Some(&first), &live(40, 60), "Invalid");
        assert_eq!(first, again, "no write for a status that did not change");
    }

    #[test]
    fn a_new_generation_is_reprogrammed_and_flips_keep_transition_times_right() {
        let first = desired_status(&report(3, true), None, &live(17, 0), "Invalid");
        let rejected = desired_status(&report(4, false), Some(&first), &live(18, 5), "Invalid");
        let accepted = condition(&rejected, "Accepted");
        assert_eq!(accepted.status, "False");
        assert_eq!(accepted.last_transition_time, Time(live(18, 5).at));
        assert_eq!(condition(&rejected, "Programmed").status, "False");
        assert_eq!(
            condition(&rejected, "ResolvedRefs").last_transition_time,
            Time(live(17, 0).at),
            "unchanged condition keeps its transition time"
        );
        let back = desired_status(&report(5, true), Some(&rejected), &live(19, 9), "Invalid");
        assert!(
            condition(&back, "Programmed")
                .message
                .contains("generation 5 serving since snapshot 19")
        );
    }

    #[tokio::test]
    async fn a_settled_report_is_not_looked_at_again_and_gone_objects_are_forgotten() {
        // Nothing here is written (every status is already on its object): no request is made.
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("uri"));
        let writer = StatusWriter::new(Client::try_from(config).expect("client"), "pod");
        let (_, leading) = tokio::sync::watch::channel(true);
        let live = live(17, 0);
        let mut route: crate::resources::GatewayRoute = serde_yaml::from_str(
            "apiVersion: sluice.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: r, namespace: ns, generation: 3}\nspec: {rules: []}",
        )
        .expect("route");
        route.status = Some(BoxedStatus(Box::new(desired_status(
            &report(3, true),
            None,
            &live,
            "Invalid",
        ))));
        let route = Arc::new(route);
        let looked = std::cell::Cell::new(0);
        let lookup = |_: &str, _: &str| {
            looked.set(looked.get() + 1);
            Some(Arc::clone(&route))
        };
        let pass = async |reports: &[Arc<StatusReport>]| {
            writer
                .write(lookup, reports, &live, "Invalid", &leading)
                .await
        };
        let reports = vec![Arc::new(report(3, true))];
        assert_eq!(pass(&reports).await, 0);
        assert_eq!(looked.get(), 1);
        assert_eq!(pass(&reports).await, 0);
        assert_eq!(looked.get(), 1, "the same report again is settled");
        // An equal report compiled anew is another report: looked at once.
        assert_eq!(pass(&[Arc::new(report(3, true))]).await, 0);
        assert_eq!(looked.get(), 2);
        // Of two settled objects, the one a pass leaves out is forgotten (and its report let
        // go); the other stays settled.
        let kept = Arc::new(report(3, true));
        let mut other = report(3, true);
        other.object.name = "s".to_owned();
        pass(&[Arc::clone(&kept), Arc::new(other)]).await;
        assert_eq!(looked.get(), 4);
        pass(std::slice::from_ref(&kept)).await;
        assert_eq!(looked.get(), 4, "the one left is still settled");
        {
            let memory = writer.lock_memory();
            assert_eq!(memory.known["GatewayRoute"].len(), 1);
            assert_eq!(memory.settled.len(), 1);
        }
        // A pass without the object forgets it.
        pass(&[]).await;
        let memory = writer.lock_memory();
        assert!(memory.known.values().all(FastMap::is_empty));
        assert!(memory.settled.is_empty(), "no report is held for it");
    }
}
