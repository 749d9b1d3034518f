//! An in-process gateway serving a real, watched manifest directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sluice_controller::reconcile::Debounce;
use sluice_controller::sources::dir::DirSource;
use sluice_proxy::{Gateway, ProxyConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A running gateway with its manifest directory.
pub struct TestGateway {
    /// Proxy address.
    pub addr: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// The gateway itself, for swapping snapshots directly.
    pub gateway: Arc<Gateway>,
    /// The watched directory.
    pub dir: PathBuf,
    stop: watch::Sender<bool>,
    serve: Option<JoinHandle<()>>,
}

/// A fresh empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sluice-it-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

impl TestGateway {
    /// Writes `files` into a new directory and starts a gateway on it.
    pub async fn start(files: &[(&str, String)]) -> Self {
        Self::start_with(files, ProxyConfig::default()).await
    }

    /// Like [`TestGateway::start`] with proxy settings (and no access log).
    pub async fn start_with(files: &[(&str, String)], config: ProxyConfig) -> Self {
        Self::start_logging(files, config, None).await
    }

    /// Like [`TestGateway::start`], with the access log written to the returned capture.
    pub async fn start_with_access_log(
        files: &[(&str, String)],
        config: ProxyConfig,
    ) -> (Self, LogCapture) {
        let capture = LogCapture::default();
        let gw = Self::start_logging(files, config, Some(Box::new(capture.clone()))).await;
        (gw, capture)
    }

    async fn start_logging(
        files: &[(&str, String)],
        config: ProxyConfig,
        access_log: Option<sluice_proxy::access_log::Sink>,
    ) -> Self {
        // `SLUICE_LOG=debug cargo test ...` shows the gateway's logs for a failing test.
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let dir = temp_dir("gw");
        for (name, content) in files {
            write(&dir, name, content);
        }
        let gateway = Gateway::with_access_log(config, access_log);
        let mut source = DirSource::new(dir.clone(), Vec::new(), gateway.clone());
        let dir_watch = source
            .start_watching()
            .expect("watch the manifest directory");
        source.reload();
        let Listening {
            addr,
            admin,
            stop,
            stop_rx,
            serve,
        } = serve_in_background(&gateway).await;
        tokio::spawn(source.run(dir_watch, QUICK_DEBOUNCE, stopped(stop_rx)));
        TestGateway {
            addr,
            admin,
            gateway,
            dir,
            stop,
            serve: Some(serve),
        }
    }
}

/// An access log written to memory, for tests to read.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<std::sync::Mutex<Vec<u8>>>);

impl LogCapture {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log")).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Debounce for tests: a change is picked up within milliseconds.
pub const QUICK_DEBOUNCE: Debounce = Debounce {
    holdoff: Duration::from_millis(5),
    max_delay: Duration::from_millis(50),
};

/// A gateway's proxy and admin listeners on ephemeral loopback ports, served in the background.
pub struct Listening {
    /// Proxy address.
    pub addr: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// Set to true to stop both listeners (the proxy drains first).
    pub stop: watch::Sender<bool>,
    /// The same flag, for other tasks to stop with.
    pub stop_rx: watch::Receiver<bool>,
    /// The proxy listener's task; it ends once drained.
    pub serve: JoinHandle<()>,
}

/// Binds and serves `gateway`'s proxy and admin listeners until the returned flag is set.
pub async fn serve_in_background(gateway: &Arc<Gateway>) -> Listening {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let addr = listener.local_addr().expect("proxy addr");
    let admin = admin_listener.local_addr().expect("admin addr");
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(sluice_proxy::admin::serve_admin(
        gateway.clone(),
        admin_listener,
        stopped(stop_rx.clone()),
    ));
    let serve = tokio::spawn(sluice_proxy::serve(
        gateway.clone(),
        listener,
        stopped(stop_rx.clone()),
    ));
    Listening {
        addr,
        admin,
        stop,
        stop_rx,
        serve,
    }
}

/// Resolves once `rx` turns true.
pub async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

impl TestGateway {
    /// Writes (or replaces) a manifest file in the watched directory, atomically.
    pub fn write(&self, name: &str, content: &str) {
        write(&self.dir, name, content);
    }

    /// Serves HTTPS (the snapshot's certificates) on a new ephemeral port, until the gateway
    /// stops; returns its address.
    pub async fn serve_tls(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind https");
        let addr = listener.local_addr().expect("https addr");
        tokio::spawn(sluice_proxy::server::serve_tls(
            self.gateway.clone(),
            listener,
            stopped(self.stop.subscribe()),
        ));
        addr
    }

    /// The sum of the gateway's samples of counter `name` whose labels include every one of
    /// `labels` (`("code", "4xx")`), read from its Prometheus text.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = String::from_utf8(self.gateway.metrics().render()).expect("utf-8 metrics");
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{'))
            })
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Generation of the snapshot being served.
    pub fn generation(&self) -> u64 {
        self.gateway.snapshot().generation
    }

    /// Asks the gateway to stop (as SIGTERM does) and waits until it has drained.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(serve) = self.serve.take() {
            let _ = serve.await;
        }
    }

    /// Starts shutting down without waiting.
    pub fn begin_shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits for the proxy listener task to finish (after [`TestGateway::begin_shutdown`]).
    pub async fn wait_stopped(&mut self) {
        if let Some(serve) = self.serve.take() {
            let _ = serve.await;
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes through a temporary file and a rename, as editors and `kubectl cp` do, so the
/// watcher never reads half a file.
pub fn write(dir: &Path, name: &str, content: &str) {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create parent");
    }
    let tmp = dir.join(format!(".{}.tmp", name.replace('/', "_")));
    std::fs::write(&tmp, content).expect("write manifest");
    std::fs::rename(&tmp, &path).expect("rename manifest");
}
