//! Certificates issued by a real `openssl` CA, Secrets holding them, and a rustls client that says
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

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// `tls.crt`
    pub cert_pem: String,
    /// `tls.key`
    pub key_pem: String,
}

/// A certificate authority made by `openssl`, to issue server certificates that a client
/// trusting it accepts (webpki refuses a self-signed certificate as a server's).
pub struct Ca {
    /// The CA's own certificate: the root a client trusts.
    pub root: Certificate,
    dir: std::path::PathBuf,
    key: std::path::PathBuf,
    cert: std::path::PathBuf,
}

fn openssl(args: &[&std::ffi::OsStr]) {
    let status = Command::new("openssl")
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl not found: install the Debian package openssl (scripts/test.sh does)");
    assert!(status.success(), "openssl {args:?} failed");
}

impl Ca {
    /// A new EC P-256 CA in `dir`.
    pub fn new(dir: &Path) -> Self {
        let tag = unique();
        let key = dir.join(format!("ca-{tag}.key"));
        let cert = dir.join(format!("ca-{tag}.crt"));
        openssl(&[
            "req".as_ref(),
            "-x509".as_ref(),
            "-newkey".as_ref(),
            "ec".as_ref(),
            "-pkeyopt".as_ref(),
            "ec_paramgen_curve:P-256".as_ref(),
            "-nodes".as_ref(),
            "-days".as_ref(),
            "2".as_ref(),
            "-subj".as_ref(),
            "/CN=Sluice Test CA".as_ref(),
            "-addext".as_ref(),
            "basicConstraints=critical,CA:TRUE".as_ref(),
            "-addext".as_ref(),
            "keyUsage=critical,keyCertSign,cRLSign".as_ref(),
            "-keyout".as_ref(),
            key.as_os_str(),
            "-out".as_ref(),
            cert.as_os_str(),
        ]);
        Ca {
            root: Certificate {
                cert_pem: std::fs::read_to_string(&cert).expect("read CA cert"),
                key_pem: std::fs::read_to_string(&key).expect("read CA key"),
            },
            dir: dir.to_owned(),
            key,
            cert,
        }
    }

    /// A server certificate for `names` (the first is the subject), signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Certificate {
        let tag = unique();
        let key = self.dir.join(format!("leaf-{tag}.key"));
        let csr = self.dir.join(format!("leaf-{tag}.csr"));
        let cert = self.dir.join(format!("leaf-{tag}.crt"));
        let ext = self.dir.join(format!("leaf-{tag}.ext"));
        let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
                san.join(",")
            ),
        )
        .expect("write extensions");
        let subject = format!("/CN={}", names[0]);
        openssl(&[
            "req".as_ref(),
            "-new".as_ref(),
            "-newkey".as_ref(),
            "ec".as_ref(),
            "-pkeyopt".as_ref(),
            "ec_paramgen_curve:P-256".as_ref(),
            "-nodes".as_ref(),
            "-subj".as_ref(),
            subject.as_ref(),
            "-keyout".as_ref(),
            key.as_os_str(),
            "-out".as_ref(),
            csr.as_os_str(),
        ]);
        openssl(&[
            "x509".as_ref(),
            "-req".as_ref(),
            "-in".as_ref(),
            csr.as_os_str(),
            "-CA".as_ref(),
            self.cert.as_os_str(),
            "-CAkey".as_ref(),
            self.key.as_os_str(),
            "-set_serial".as_ref(),
            tag.to_string().as_ref(),
            "-days".as_ref(),
            "2".as_ref(),
            "-extfile".as_ref(),
            ext.as_os_str(),
            "-out".as_ref(),
            cert.as_os_str(),
        ]);
        Certificate {
            cert_pem: std::fs::read_to_string(cert).expect("read cert"),
            key_pem: std::fs::read_to_string(key).expect("read key"),
        }
    }
}

impl Certificate {
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

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed) * 100_000 + u64::from(std::process::id() % 100_000)
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
