//! Global buckets in Redis, shared by every replica: one script call per check, atomic on the
//! server, with the server's clock (replicas' clocks may disagree; Redis has one).
//!
//! The connection is one multiplexed connection per process, made lazily and remade by the
//! client library after a failure; every call is bounded by a short timeout, so a Redis that
//! stops answering costs a request that much and never hangs it.

use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Decision, Rate};

/// GCRA over one key, in microseconds of the server's clock. `ARGV[1]` is the emission interval
/// (period / requests), `ARGV[2]` the capacity (requests + burst). Returns `{allowed, remaining,
/// reset_us, retry_after_us}`. Integers throughout (exact in Lua's doubles up to 2^53 µs).
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + interval
local allow_at = next_tat - interval * capacity
if allow_at > now then
  return {0, 0, tat - now, allow_at - now}
end
redis.call('SET', KEYS[1], next_tat, 'PX', math.ceil((next_tat - now) / 1000))
return {1, math.floor((now - allow_at) / interval), next_tat - now, 0}
";

/// Where the shared store is and how long a call may take.
#[derive(Debug, Clone)]
pub struct SharedStoreConfig {
    /// `redis://host:port/db` (or `redis+unix://`; TLS `rediss://` is not built in).
    pub url: String,
    /// Password for `AUTH`, kept out of the URL so that it can come from a Secret.
    pub password: Option<String>,
    /// One check, including (re)connecting.
    pub timeout: Duration,
}

impl SharedStoreConfig {
    /// Whether `url` is a Redis URL the client can use, with the reason when not.
    pub fn check_url(&self) -> Result<(), String> {
        redis::IntoConnectionInfo::into_connection_info(self.url.as_str())
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// Why a check could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// No answer within the timeout.
    Timeout,
    /// Connecting failed or the connection broke.
    Connection,
    /// Redis answered with an error, or with something that is not the script's answer.
    Reply,
}

impl StoreError {
    fn label(self) -> &'static str {
        match self {
            StoreError::Timeout => "timeout",
            StoreError::Connection => "connection",
            StoreError::Reply => "reply",
        }
    }
}

/// The connection to the shared store and its metrics.
pub struct SharedStore {
    connection: ConnectionManager,
    script: redis::Script,
    timeout: Duration,
    latency: Histogram,
    errors: IntCounterVec,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SharedStore {
    /// A store for `config`, connecting on first use (Redis need not be up yet); registers its
    /// metrics in `registry`. Must be called inside a tokio runtime.
    pub fn new(config: &SharedStoreConfig, registry: &Registry) -> Result<Self, String> {
        let mut info = redis::IntoConnectionInfo::into_connection_info(config.url.as_str())
            .map_err(|e| format!("--redis: {e}"))?;
        if let Some(password) = &config.password {
            let redis = info.redis_settings().clone().set_password(password.clone());
            info = info.set_redis_settings(redis);
        }
        let client = redis::Client::open(info).map_err(|e| format!("--redis: {e}"))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            // Reconnection is retried by later checks; one attempt per failure keeps a dead
            // Redis from piling up connection attempts.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| format!("--redis: {e}"))?;
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "sluice_redis_request_duration_seconds",
                "Time of one rate-limit check against Redis, answered or not",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            ]),
        )
        .map_err(|e| e.to_string())?;
        let errors = IntCounterVec::new(
            Opts::new(
                "sluice_redis_errors_total",
                "Rate-limit checks against Redis that failed, by kind (timeout, connection, reply)",
            ),
            &["kind"],
        )
        .map_err(|e| e.to_string())?;
        for kind in ["timeout", "connection", "reply"] {
            errors.with_label_values(&[kind]);
        }
        registry
            .register(Box::new(latency.clone()))
            .and_then(|()| registry.register(Box::new(errors.clone())))
            .map_err(|e| e.to_string())?;
        Ok(SharedStore {
            connection,
            script: redis::Script::new(GCRA),
            timeout: config.timeout,
            latency,
            errors,
        })
    }

    /// Takes one request from the bucket at `key`. The script is sent by its SHA1 and loaded
    /// only when Redis does not know it (after a restart, say).
    pub async fn check(&self, key: &[u8], rate: &Rate) -> Result<Decision, StoreError> {
        let started = Instant::now();
        let mut connection = self.connection.clone();
        let interval_us = rate.interval().as_micros().max(1);
        let call = async {
            self.script
                .key(key)
                .arg(u64::try_from(interval_us).unwrap_or(u64::MAX))
                .arg(rate.capacity())
                .invoke_async::<(i64, i64, i64, i64)>(&mut connection)
                .await
        };
        let result = match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(StoreError::Timeout),
            Ok(Err(e)) if e.is_timeout() => Err(StoreError::Timeout),
            Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() => {
                Err(StoreError::Connection)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "redis rate-limit check failed");
                Err(StoreError::Reply)
            }
            Ok(Ok(reply)) => Ok(Decision::from_gcra_reply(reply)),
        };
        self.latency.observe(started.elapsed().as_secs_f64());
        if let Err(e) = result {
            self.errors.with_label_values(&[e.label()]).inc();
        }
        result
    }

    /// `GET key` for the shared response cache, bounded by the store's timeout.
    pub async fn get_bytes(&self, key: &[u8]) -> Result<Option<bytes::Bytes>, StoreError> {
        let mut connection = self.connection.clone();
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        let call = cmd.query_async::<Option<Vec<u8>>>(&mut connection);
        bounded(self.timeout, call)
            .await
            .map(|v| v.map(bytes::Bytes::from))
    }

    /// `SET key value PX ttl` for the shared response cache, bounded by the store's timeout.
    pub async fn set_bytes(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(value)
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis().max(1)).unwrap_or(u64::MAX));
        let call = cmd.query_async::<()>(&mut connection);
        bounded(self.timeout, call).await
    }
}

async fn bounded<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(StoreError::Timeout),
        Ok(Err(e)) if e.is_timeout() => Err(StoreError::Timeout),
        Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() => Err(StoreError::Connection),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "redis cache call failed");
            Err(StoreError::Reply)
        }
        Ok(Ok(v)) => Ok(v),
    }
}

impl Decision {
    /// The GCRA script's reply, `{allowed, remaining, reset_us, retry_us}`. Whatever Redis
    /// sends (a tampered script, a proxy in between), out-of-range numbers read as zero rather
    /// than wrap.
    pub fn from_gcra_reply((allowed, remaining, reset_us, retry_us): (i64, i64, i64, i64)) -> Self {
        Decision {
            allowed: allowed == 1,
            remaining: u64::try_from(remaining).unwrap_or(0),
            reset: micros(reset_us),
            retry_after: micros(retry_us),
        }
    }
}

fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}
