//! Output: leader election, which decides only who writes status (every replica serves). On a
//! `coordination.k8s.io/v1` Lease, the way client-go does it: read the
//! Lease, and renew or take it over with an update that carries the `resourceVersion` read, so
//! that of two replicas racing for it exactly one wins (the other gets 409 Conflict).
//!
//! Expiry is judged by this replica's own clock from when it last saw the Lease change, never
//! by comparing the holder's timestamps with ours, so clock skew between nodes cannot make two
//! leaders. A leader that cannot renew steps down before its Lease could expire for others.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;

/// Where the Lease lives and how it is held.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Namespace of the Lease (the pod's).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a Lease lasts without renewal.
    pub lease_duration: Duration,
    /// How often the Lease is read and renewed.
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// client-go's defaults: a 15 s Lease, tried every 2 s.
    pub fn new(namespace: String, identity: String) -> Self {
        LeaderConfig {
            namespace,
            name: "sluice-leader".to_owned(),
            identity,
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(2),
        }
    }

    /// A leader steps down when it has not renewed for this long: two thirds of the Lease, so
    /// it stops acting before anyone else may take over.
    fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }
}

/// What this replica last saw of the Lease, and when (by its own clock).
struct Observed {
    record: (Option<String>, Option<MicroTime>, Option<i32>),
    at: Instant,
}

/// Runs the election until `shutdown` turns true, then releases the Lease if held. The returned
/// channel says whether this replica leads now; the task ends once the Lease is released.
pub fn spawn(
    client: Client,
    config: LeaderConfig,
    mut shutdown: watch::Receiver<bool>,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        let mut observed: Option<Observed> = None;
        // When the last successful renewal was *sent*: the Lease runs from then, whatever the
        // answer's delay, so leadership is never counted from a later instant than it began.
        let mut renewed_at: Option<Instant> = None;
        let set = |leading: bool| {
            if *tx.borrow() != leading {
                tracing::info!(identity = %config.identity, leading, "leadership changed");
                let _ = tx.send(leading);
            }
        };
        loop {
            let sent = Instant::now();
            // An attempt may not outlive the retry period: the client's own retries (429,
            // 503) would otherwise stretch one attempt past the Lease.
            let attempt = tokio::time::timeout(
                config.retry_period,
                try_acquire_or_renew(&api, &config, &mut observed),
            )
            .await;
            match attempt {
                Ok(Ok(true)) => renewed_at = Some(sent),
                Ok(Ok(false)) => renewed_at = None,
                Ok(Err(e)) => {
                    tracing::warn!(lease = %config.name, error = %e, "cannot read or renew the leader Lease");
                }
                Err(_) => {
                    tracing::warn!(lease = %config.name, "leader Lease request timed out");
                }
            }
            let deadline = renewed_at.map(|t| t + config.renew_deadline());
            set(deadline.is_some_and(|d| Instant::now() < d));
            let next_try = tokio::time::sleep(config.retry_period.saturating_sub(sent.elapsed()));
            tokio::pin!(next_try);
            loop {
                tokio::select! {
                    () = &mut next_try => break,
                    // Step down the moment the renew deadline passes, not at the next attempt.
                    () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if *tx.borrow() => {
                        set(false);
                    }
                    () = until_stopped(&mut shutdown) => {
                        if *tx.borrow() {
                            set(false);
                            release(&api, &config).await;
                        }
                        return;
                    }
                }
            }
        }
    });
    (rx, task)
}

/// Resolves when `stop` turns true (or its sender is gone), holding no borrow of it.
pub(crate) async fn until_stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaderConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let duration_secs = i32::try_from(config.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let record = (
        holder.clone(),
        spec.renew_time.clone(),
        spec.lease_transitions,
    );
    if observed.as_ref().is_none_or(|o| o.record != record) {
        *observed = Some(Observed {
            record,
            at: Instant::now(),
        });
    }
    let held_by_me = holder.as_deref() == Some(config.identity.as_str());
    let lease_for = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(config.lease_duration, Duration::from_secs);
    let expired = holder.is_none()
        || observed
            .as_ref()
            .is_some_and(|o| o.at.elapsed() >= lease_for);
    if !held_by_me && !expired {
        return Ok(false);
    }
    let transitions = spec.lease_transitions.unwrap_or(0);
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(duration_secs),
        acquire_time: if held_by_me {
            spec.acquire_time
        } else {
            Some(now())
        },
        renew_time: Some(now()),
        lease_transitions: Some(if held_by_me {
            transitions
        } else {
            transitions + 1
        }),
        ..spec
    });
    // The update carries the resourceVersion we read: if anyone wrote in between, 409.
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up so another replica takes over at its next try instead of waiting out the
/// Lease.
async fn release(api: &Api<Lease>, config: &LeaderConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => tracing::info!(lease = %config.name, "released the leader Lease"),
        Err(e) => {
            tracing::warn!(lease = %config.name, error = %e, "could not release the leader Lease")
        }
    }
}
