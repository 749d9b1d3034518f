//! HTTPS termination: certificates chosen by SNI from the live snapshot (exact name, then the
//! wildcard of its parent), TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`.
//!
//! The resolver reads the certificate set at each handshake, so a Secret rotated in a new
//! snapshot serves new connections at once while open ones keep the session they made.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;

use crate::FastMap;

/// The certificates of a snapshot, by host.
#[derive(Default)]
pub struct Certificates {
    exact: FastMap<Box<str>, Served>,
    /// `*.example.com` stored as `example.com`.
    wildcard: FastMap<Box<str>, Served>,
}

#[derive(Clone)]
struct Served {
    key: Arc<CertifiedKey>,
    /// `namespace/name` of the Secret, for `/debug/snapshot`.
    secret: Arc<str>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("exact", &self.exact.len())
            .field("wildcard", &self.wildcard.len())
            .finish()
    }
}

impl Serialize for Certificates {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut hosts: Vec<(String, &str)> = self
            .exact
            .iter()
            .map(|(h, c)| (h.to_string(), &*c.secret))
            .chain(
                self.wildcard
                    .iter()
                    .map(|(h, c)| (format!("*.{h}"), &*c.secret)),
            )
            .collect();
        hosts.sort();
        s.collect_map(hosts)
    }
}

impl Certificates {
    /// Adds `key` for `host` (`name` or `*.suffix`); the first certificate given for a host
    /// keeps it. Returns false when the host already had one.
    pub fn insert(&mut self, host: &str, key: Arc<CertifiedKey>, secret: Arc<str>) -> bool {
        let host = host.to_ascii_lowercase();
        let (map, name) = match host.strip_prefix("*.") {
            Some(suffix) => (&mut self.wildcard, suffix.to_owned()),
            None => (&mut self.exact, host),
        };
        if map.contains_key(name.as_str()) {
            return false;
        }
        map.insert(name.into(), Served { key, secret });
        true
    }

    /// True when no host has a certificate.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    /// The certificate for an SNI name: exact, then the wildcard of its parent domain (one
    /// label, as RFC 6125 wildcards match).
    pub fn find(&self, sni: &str) -> Option<&Arc<CertifiedKey>> {
        let sni = sni.trim_end_matches('.');
        let lower;
        let sni = if sni.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = sni.to_ascii_lowercase();
            lower.as_str()
        } else {
            sni
        };
        if let Some(c) = self.exact.get(sni) {
            return Some(&c.key);
        }
        let (_, parent) = sni.split_once('.')?;
        self.wildcard.get(parent).map(|c| &c.key)
    }
}

/// A certificate and key from the PEM of a `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`):
/// the chain leaf first, the key PKCS#8, PKCS#1 or SEC1. The error says what is wrong.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt is not PEM certificates: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("tls.key is not a PEM private key: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("tls.key cannot be used: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        // A leaf whose key type the check cannot read is let through; a mismatch is not.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        Err(e) => Err(format!(
            "tls.key does not belong to the certificate in tls.crt: {e}"
        )),
    }
}

/// Picks the certificate of each handshake from the live set.
#[derive(Debug)]
pub struct SniResolver {
    live: Arc<ArcSwap<Certificates>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // No SNI (a client connecting by IP address): no certificate, the handshake fails; the
        // gateway cannot know which of its hosts was meant.
        let name = hello.server_name()?;
        self.live.load().find(name).cloned()
    }
}

/// The server side of TLS for `live`'s certificates.
pub fn server_config(live: Arc<ArcSwap<Certificates>>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { live }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_pem_says_which_part_is_wrong() {
        let e = certified_key(b"not pem", b"not pem")
            .err()
            .unwrap_or_default();
        assert!(e.contains("tls.crt"), "{e}");
    }
}
