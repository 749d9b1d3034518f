//! API keys: a consumer name per key, read from the rule's Secrets at compile time and kept
//! only as SHA-256 digests, so the snapshot (and `/debug/snapshot`) never holds a key.

use std::sync::Arc;

use ring::digest::{SHA256, digest};
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::CredentialFrom;
use crate::error::ProxyError;

/// Longest API key looked at; longer values are refused without hashing them.
const MAX_KEY_LEN: usize = 4096;

/// The API keys a rule accepts.
#[derive(Debug, Serialize)]
pub struct ApiKeys {
    /// Where the key is read from.
    pub from: CredentialFrom,
    /// SHA-256 of each key, with its consumer.
    #[serde(skip)]
    keys: Box<[([u8; 32], Arc<str>)]>,
    /// Number of keys (what `/debug/snapshot` shows instead of them).
    pub key_count: usize,
    /// Some Secret named by the rule is missing or unusable: its consumers' keys are unknown,
    /// so an unknown key may be one of them and the rule fails closed (503) rather than 401.
    pub incomplete: bool,
}

impl ApiKeys {
    /// Keys from `(consumer, key)` pairs. `incomplete` says a referenced Secret could not be read.
    pub fn new(
        from: CredentialFrom,
        pairs: impl IntoIterator<Item = (Arc<str>, Vec<u8>)>,
        incomplete: bool,
    ) -> Self {
        let keys: Box<[_]> = pairs
            .into_iter()
            .map(|(consumer, key)| (hash(&key), consumer))
            .collect();
        ApiKeys {
            from,
            key_count: keys.len(),
            keys,
            incomplete,
        }
    }

    /// True when at least one key could be accepted.
    pub fn usable(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The consumer whose key `presented` is. Every stored digest is compared, in constant time,
    /// so the time taken says nothing about which key (or how much of one) matched.
    pub fn check(&self, presented: &[u8]) -> Result<&Arc<str>, ProxyError> {
        if presented.len() > MAX_KEY_LEN {
            return Err(ProxyError::Unauthorized("API key too long"));
        }
        let digest = hash(presented);
        let mut found = None;
        for (stored, consumer) in self.keys.iter() {
            if bool::from(stored.ct_eq(&digest)) {
                found = Some(consumer);
            }
        }
        match found {
            Some(consumer) => Ok(consumer),
            None if self.incomplete => {
                Err(ProxyError::AuthUnavailable("an API key Secret is missing"))
            }
            None => Err(ProxyError::Unauthorized("unknown API key")),
        }
    }
}

fn hash(key: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, key).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(incomplete: bool) -> ApiKeys {
        ApiKeys::new(
            CredentialFrom::QueryParam("k".into()),
            [
                (Arc::from("partner-a"), b"key-a".to_vec()),
                (Arc::from("partner-b"), b"key-b".to_vec()),
            ],
            incomplete,
        )
    }

    #[test]
    fn a_known_key_names_its_consumer_and_others_are_refused() {
        let k = keys(false);
        assert_eq!(&**k.check(b"key-b").expect("known"), "partner-b");
        assert!(matches!(
            k.check(b"key-c"),
            Err(ProxyError::Unauthorized(_))
        ));
        assert!(matches!(k.check(b"key-"), Err(ProxyError::Unauthorized(_))));
        assert!(matches!(
            k.check(&vec![b'x'; MAX_KEY_LEN + 1]),
            Err(ProxyError::Unauthorized(_))
        ));
    }

    #[test]
    fn with_a_secret_missing_an_unknown_key_fails_closed() {
        let k = keys(true);
        assert!(k.check(b"key-a").is_ok());
        assert!(matches!(
            k.check(b"nope"),
            Err(ProxyError::AuthUnavailable(_))
        ));
    }

    #[test]
    fn keys_are_not_kept_in_the_clear() {
        let k = keys(false);
        let shown = format!("{k:?}{}", serde_json::to_string(&k).expect("json"));
        assert!(!shown.contains("key-a"), "{shown}");
    }
}
