//! Certificates made by a real `openssl`, Secrets holding them, and a rustls client that says
//! which certificate a server presented.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A self-signed certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// `tls.crt`
    pub cert_pem: String,
    /// `tls.key`
    pub key_pem: String,
}

impl Certificate {
    /// A new EC P-256 certificate for `names` (the first is the subject), made by `openssl` in
    /// `dir`.
    pub fn generate(dir: &Path, names: &[&str]) -> Self {
        let tag = format!("{}-{}", names[0].replace('*', "star"), fastrand_suffix());
        let key = dir.join(format!("{tag}.key"));
        let cert = dir.join(format!("{tag}.crt"));
        let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        let status = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "2", "-subj"])
            .arg(format!("/CN={}", names[0]))
            .arg("-addext")
            .arg(format!("subjectAltName={}", san.join(",")))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl not found: install the Debian package openssl (scripts/test.sh does)");
        assert!(status.success(), "openssl req failed");
        Certificate {
            cert_pem: std::fs::read_to_string(cert).expect("read cert"),
            key_pem: std::fs::read_to_string(key).expect("read key"),
        }
    }

    /// The certificate's DER, to compare with what a server presented.
    pub fn der(&self) -> Vec<u8> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .expect("PEM certificate")
            .to_vec()
    }

    /// A `kubernetes.io/tls` Secret `name` in `default` holding it (as `data`, base64).
    pub fn secret(&self, name: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
            b64(&self.cert_pem),
            b64(&self.key_pem)
        )
    }
}

fn fastrand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) * 1000 + u64::from(std::process::id())
}

/// A TLS connection to `addr` with SNI `name`, trusting `roots`, offering `alpn`.
pub async fn connect(
    addr: SocketAddr,
    name: &str,
    roots: &[&Certificate],
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store
            .add(CertificateDer::from(root.der()))
            .expect("a valid root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let server_name = ServerName::try_from(name.to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    connector.connect(server_name, tcp).await
}

/// The leaf certificate the server presented on `stream`.
pub fn presented(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default()
}
