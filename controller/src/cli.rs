//! The `sluice` command line: `run`, `check`, `crds`, `version`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use sluice_proxy::limit::{SharedStoreConfig, TrustedProxies};
use sluice_proxy::{Gateway, ProxyConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::compile::compile;
use crate::reconcile::Debounce;
use crate::resources::{crds_yaml, parse_duration, parse_size};
use crate::sources::cluster::{self, ClusterOptions, leader::LeaderConfig};
use crate::sources::dir::DirSource;
use crate::sources::manifests::ManifestSet;

/// Exit status for unusable configuration (sysexits' EX_USAGE).
const EXIT_USAGE: u8 = 64;

/// Sluice: a Kubernetes ingress controller and API gateway.
#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: a Kubernetes ingress controller and API gateway",
    long_about = "Sluice: a Kubernetes ingress controller and API gateway.\n\n\
        `sluice run --manifests DIR` serves the GatewayRoutes, Services, EndpointSlices and \
        Secrets in DIR (standalone mode; edits apply on save). `sluice run` alone watches the \
        cluster (in a pod, or with KUBECONFIG). `sluice check DIR` reports every problem in \
        manifests before you apply them."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(
        long,
        env = "SLUICE_LOG_FORMAT",
        value_enum,
        default_value = "json",
        global = true
    )]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Run(Box<RunArgs>),
    /// Compile manifests offline and print every problem; exit 1 if there is any.
    Check {
        /// Files or directories of manifests.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print the CRD YAML.
    Crds,
    /// Print the version.
    Version,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Serve the manifests in this directory instead of watching a cluster.
    #[arg(long, env = "SLUICE_MANIFESTS")]
    manifests: Option<PathBuf>,
    /// Proxy listen address.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// HTTPS listen address, with the certificates of the routes' `tls` Secrets [default:
    /// 0.0.0.0:8443 once a route has `tls`].
    #[arg(long, env = "SLUICE_LISTEN_TLS")]
    listen_tls: Option<SocketAddr>,
    /// The port `httpsRedirect` sends browsers to (443 leaves it out of the URL; behind a
    /// Service mapping 443 to the pod's --listen-tls, keep 443).
    #[arg(long, env = "SLUICE_HTTPS_REDIRECT_PORT", default_value_t = 443)]
    https_redirect_port: u16,
    /// Memory for the response cache of every rule with `cache` (64Mi, 1Gi, ...).
    #[arg(long, env = "SLUICE_CACHE_SIZE", default_value = "64Mi", value_parser = cache_size_arg)]
    cache_size: u64,
    /// Send one span per request to this OTLP/HTTP collector (http://collector:4318); off by
    /// default.
    #[arg(long, env = "SLUICE_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Admin listen address [default: 127.0.0.1:9901, or 0.0.0.0:9901 inside a cluster].
    #[arg(long, env = "SLUICE_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Worker threads [default: the number of cores].
    #[arg(long, env = "SLUICE_WORKERS")]
    workers: Option<usize>,
    /// Redis for `Global` rate limits: redis://host:port/db (rediss:// is not built in).
    #[arg(long, env = "SLUICE_REDIS")]
    redis: Option<String>,
    /// Password for --redis; prefer the environment variable (from a Secret) to the flag.
    #[arg(long, env = "SLUICE_REDIS_PASSWORD", hide_env_values = true)]
    redis_password: Option<String>,
    /// Longest a rate-limit check may wait for Redis before the failureMode decides.
    #[arg(long, env = "SLUICE_REDIS_TIMEOUT", default_value = "50ms", value_parser = duration_arg)]
    redis_timeout: Duration,
    /// Peers whose X-Forwarded-For names the client (CIDRs or addresses, comma-separated);
    /// by default none: the socket peer is the client.
    #[arg(long, env = "SLUICE_TRUSTED_PROXIES", default_value = "", value_parser = trusted_proxies_arg)]
    trusted_proxies: TrustedProxies,
    /// Most client keys one Local rate limit tracks; beyond it the key nearest to a full
    /// bucket is forgotten.
    #[arg(long, env = "SLUICE_LIMIT_KEYS", default_value_t = 100_000)]
    limit_keys: usize,
    /// Largest request body buffered so that a retry can send it again (64Ki, 1Mi, ...; at
    /// most 16Mi); a larger body is streamed and not retried once it reached a backend.
    #[arg(long, env = "SLUICE_RETRY_BUFFER", default_value = "64Ki", value_parser = size_arg)]
    retry_buffer: u64,
    /// Most connections each proxy listener holds open (0: no cap); past it a new connection
    /// gets a 503 with Retry-After (plain HTTP) or is closed (HTTPS).
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS", default_value_t = 20_000)]
    max_connections: usize,
    /// Most requests waiting for their response head at once (0: no cap); past it a request
    /// gets a 503 with Retry-After at once.
    #[arg(long, env = "SLUICE_MAX_REQUESTS_IN_FLIGHT", default_value_t = 10_000)]
    max_requests_in_flight: usize,
    /// Only serve objects in this namespace (repeatable).
    #[arg(long = "namespace", env = "SLUICE_NAMESPACE", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "SLUICE_DRAIN_TIMEOUT", default_value = "25s", value_parser = duration_arg)]
    drain_timeout: Duration,
    /// Access log: one JSON line per request on stdout, or off.
    #[arg(long, env = "SLUICE_ACCESS_LOG", value_enum, default_value = "json")]
    access_log: AccessLog,
    /// Share of requests logged (0.01: one in a hundred); every 5xx is logged whatever it is.
    #[arg(long, env = "SLUICE_ACCESS_LOG_SAMPLE", default_value_t = 1.0, value_parser = share_arg)]
    access_log_sample: f64,
}

fn share_arg(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a share between 0 and 1, such as 0.1")),
    }
}

fn cache_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).ok_or_else(|| format!("{s:?} is not a size like 64Mi, 1Gi or 65536"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AccessLog {
    Json,
    Off,
}

fn trusted_proxies_arg(s: &str) -> Result<TrustedProxies, String> {
    TrustedProxies::parse(s)
}

/// Largest `--retry-buffer`: every request in flight on a retried rule may hold this much.
const MAX_RETRY_BUFFER: u64 = 16 << 20;

fn size_arg(s: &str) -> Result<u64, String> {
    let size =
        parse_size(s).ok_or_else(|| format!("{s:?} is not a size like 64Ki, 1Mi or 65536"))?;
    if size > MAX_RETRY_BUFFER {
        return Err(format!("{s:?} is more than 16Mi"));
    }
    Ok(size)
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration like 25s or 500ms"))
}

impl Cli {
    /// Parses the command line and runs the command.
    pub fn parse_and_run() -> ExitCode {
        let cli = Cli::parse();
        init_logging(cli.log_format);
        match cli.command {
            Command::Run(args) => run(*args),
            Command::Check { paths } => check(&paths),
            Command::Crds => {
                print!("{}", crds_yaml());
                ExitCode::SUCCESS
            }
            Command::Version => {
                println!("sluice {}", env!("CARGO_PKG_VERSION"));
                ExitCode::SUCCESS
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Plain => builder.init(),
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("sluice: {message}");
    ExitCode::from(EXIT_USAGE)
}

fn run(args: RunArgs) -> ExitCode {
    if let Some(store) = shared_store(&args)
        && let Err(e) = store.check_url()
    {
        return usage_error(&format!("--redis: {e}"));
    }
    if args.redis_password.is_some() && args.redis.is_none() {
        return usage_error("--redis-password needs --redis");
    }
    if args.limit_keys == 0 {
        return usage_error("--limit-keys must be at least 1");
    }
    if let Some(manifests) = &args.manifests
        && !manifests.is_dir()
    {
        return usage_error(&format!(
            "--manifests {}: not a directory",
            manifests.display()
        ));
    }
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if workers == 0 {
        return usage_error("--workers must be at least 1");
    }
    // One worker needs no work-stealing scheduler: the current-thread one skips its
    // cross-thread queues and wake-ups. Blocking work (compile) still goes to the blocking pool.
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.manifests.clone() {
        Some(manifests) => runtime.block_on(run_standalone(args, manifests)),
        None => runtime.block_on(run_cluster(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, in words: error chains that repeat their sources (kube's do) are cut to
            // the outermost message and the root cause.
            let outer = e.to_string();
            let root = e.root_cause().to_string();
            if outer.contains(&root) {
                eprintln!("sluice: {outer}");
            } else {
                eprintln!("sluice: {outer}: {root}");
            }
            ExitCode::FAILURE
        }
    }
}

/// What every mode starts with: the gateway, its proxy listener, the admin listener already
/// serving, and the stop flag that SIGTERM or Ctrl-C sets.
struct Serving {
    gateway: Arc<Gateway>,
    proxy_listener: TcpListener,
    admin_listen: SocketAddr,
    stop: watch::Receiver<bool>,
    /// The HTTPS listener's task, awaited after the plain one drained.
    https: tokio::task::JoinHandle<()>,
}

async fn bind(args: &RunArgs) -> anyhow::Result<Serving> {
    let admin_listen = args.admin_listen.unwrap_or_else(|| {
        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        let ip = if in_cluster {
            [0, 0, 0, 0]
        } else {
            [127, 0, 0, 1]
        };
        SocketAddr::from((ip, 9901))
    });
    let gateway = Gateway::new(ProxyConfig {
        drain_timeout: args.drain_timeout,
        access_log: args.access_log == AccessLog::Json,
        trusted_proxies: Arc::new(args.trusted_proxies.clone()),
        shared_store: shared_store(args),
        limit_keys: args.limit_keys,
        retry_buffer: args.retry_buffer,
        cache_size: args.cache_size,
        otlp_endpoint: args.otlp_endpoint.clone(),
        access_log_sample: args.access_log_sample,
        https_redirect_port: args.https_redirect_port,
        max_connections: args.max_connections,
        max_requests_in_flight: args.max_requests_in_flight,
        ..ProxyConfig::default()
    });
    // A configuration mistake is said at start, not found in the collector's silence.
    if let Some(e) = gateway.exporter_error() {
        anyhow::bail!("{e}");
    }
    let proxy_listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let admin_listener = TcpListener::bind(admin_listen)
        .await
        .with_context(|| format!("cannot listen on {admin_listen} (admin)"))?;
    let stop = stop_on_signal();
    let https = tokio::spawn(serve_https(gateway.clone(), args.listen_tls, stop.clone()));
    // /readyz answers 503 until the first snapshot is installed, so the admin listener can
    // serve from the start.
    tokio::spawn(sluice_proxy::admin::serve_admin(
        gateway.clone(),
        admin_listener,
        stopped(stop.clone()),
    ));
    Ok(Serving {
        gateway,
        proxy_listener,
        admin_listen,
        stop,
        https,
    })
}

/// The HTTPS listener: on `--listen-tls`, or on 0.0.0.0:8443 from the first snapshot with a
/// certificate. It drains with the plain listener.
async fn serve_https(
    gateway: Arc<Gateway>,
    listen: Option<SocketAddr>,
    stop: watch::Receiver<bool>,
) {
    let addr = match listen {
        Some(addr) => addr,
        None => {
            let mut stop_wait = stop.clone();
            tokio::select! {
                () = gateway.wait_for_certificates() => {}
                _ = stop_wait.wait_for(|s| *s) => return,
            }
            SocketAddr::from(([0, 0, 0, 0], 8443))
        }
    };
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen_tls = %addr, error = %e, "cannot listen for HTTPS; serving plain HTTP only");
            return;
        }
    };
    tracing::info!(listen_tls = %addr, "serving HTTPS");
    sluice_proxy::server::serve_tls(gateway, listener, stopped(stop)).await;
}

fn shared_store(args: &RunArgs) -> Option<SharedStoreConfig> {
    args.redis.as_ref().map(|url| SharedStoreConfig {
        url: url.clone(),
        password: args.redis_password.clone(),
        timeout: args.redis_timeout,
    })
}

/// A stop flag that turns true on SIGTERM or Ctrl-C.
fn stop_on_signal() -> watch::Receiver<bool> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    });
    stop_rx
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn run_cluster(args: RunArgs) -> anyhow::Result<()> {
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(e) => {
            let root = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                .last()
                .map(ToString::to_string)
                .unwrap_or_default();
            let looked = match std::env::var("KUBECONFIG") {
                Ok(path) => format!("KUBECONFIG={path}"),
                Err(_) => "no in-cluster service account and no ~/.kube/config".to_owned(),
            };
            anyhow::bail!(
                "cannot reach Kubernetes ({looked}: {root}). To serve a directory of manifests \
                 instead, pass --manifests DIR; to use a cluster, run in a pod or set KUBECONFIG"
            );
        }
    };
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let lease_namespace =
        std::env::var("POD_NAMESPACE").unwrap_or_else(|_| client.default_namespace().to_owned());
    let Serving {
        gateway,
        proxy_listener,
        admin_listen,
        stop,
        https,
    } = bind(&args).await?;
    let options = ClusterOptions {
        namespaces: args.namespaces.clone(),
        debounce: Debounce::default(),
        leader: LeaderConfig::new(lease_namespace, identity),
    };
    tracing::info!(
        listen = %args.listen,
        admin = %admin_listen,
        namespaces = ?args.namespaces,
        identity = %options.leader.identity,
        "sluice is starting in cluster mode"
    );
    let controller = tokio::spawn(cluster::run(client, gateway.clone(), options, stop.clone()));
    sluice_proxy::serve(gateway.clone(), proxy_listener, stopped(stop)).await;
    let _ = https.await;
    gateway.close_access_log();
    // Let the election release the Lease before the process exits.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), controller).await;
    Ok(())
}

async fn run_standalone(args: RunArgs, manifests: PathBuf) -> anyhow::Result<()> {
    let Serving {
        gateway,
        proxy_listener,
        admin_listen,
        stop: stop_rx,
        https,
    } = bind(&args).await?;

    let mut source = DirSource::new(manifests.clone(), args.namespaces, gateway.clone());
    let dir_watch = source
        .start_watching()
        .with_context(|| format!("cannot watch {}", manifests.display()))?;
    let source = crate::compile_thread::run(move || {
        source.reload();
        source
    })
    .await
    .map_err(|e| anyhow::anyhow!("initial load failed: {e}"))?;

    let watch_stop = stopped(stop_rx.clone());
    tokio::spawn(source.run(dir_watch, Debounce::default(), watch_stop));
    tracing::info!(
        listen = %args.listen,
        admin = %admin_listen,
        manifests = %manifests.display(),
        "sluice is serving"
    );
    sluice_proxy::serve(Arc::clone(&gateway), proxy_listener, stopped(stop_rx)).await;
    let _ = https.await;
    gateway.close_access_log();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// `sluice check`: the same load and compile as `run`, printing every problem as
/// `file: kind/namespace/name: field: reason`.
fn check(paths: &[PathBuf]) -> ExitCode {
    let mut set = ManifestSet::default();
    let refresh = set.refresh(paths);
    let (mut inputs, duplicates) = set.inputs(&[]);
    // `check` judges manifests, not a deployment: it assumes the Redis a Global policy needs.
    inputs.shared_store = true;
    let compiled = compile(&inputs, 1, None);
    let mut problems = 0;
    for e in refresh
        .errors
        .iter()
        .chain(&refresh.notices)
        .chain(&duplicates)
    {
        println!("{e}");
        problems += 1;
    }
    for d in &compiled.diagnostics {
        let file = set
            .origin(&d.object)
            .map_or_else(|| "?".to_owned(), |p| p.display().to_string());
        println!("{file}: {d}");
        problems += 1;
    }
    eprintln!(
        "{} object(s), {} route(s), {} rule(s) accepted, {problems} problem(s)",
        set.len(),
        inputs.routes.len(),
        compiled.snapshot.rules.len()
    );
    if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_kubernetes_suffixes_and_refuse_nonsense() {
        assert_eq!(parse_size("65536"), Some(65536));
        assert_eq!(parse_size("64Ki"), Some(64 * 1024));
        assert_eq!(parse_size("1Mi"), Some(1 << 20));
        assert_eq!(parse_size("2k"), Some(2000));
        for bad in ["", "Ki", "64KB", "-1", "1.5Mi", "64 Ki"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
        assert!(size_arg("16Mi").is_ok());
        assert!(size_arg("17Mi").is_err());
        assert_eq!(parse_size("99999999999999Gi"), None, "overflow");
    }
}
