//! Operator identities: an ed25519 public key and the libp2p PeerId that names it.
//!
//! An operator's one key signs its records and is its node's libp2p identity, so the PeerId a
//! node connects with is the signer of what it serves. The PeerId of an ed25519 key is computed
//! here without libp2p: the identity multihash (code 0x00) of the key's protobuf encoding
//! (`08 01 12 20 <32-byte key>`), in base58btc — the familiar `12D3KooW...` strings.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::VerifyingKey;

/// Protobuf prefix of an ed25519 `PublicKey` message: field 1 (type) = 1, field 2 (data), 32 bytes.
const PROTOBUF_ED25519: [u8; 4] = [0x08, 0x01, 0x12, 0x20];
/// Identity multihash header for the 36-byte protobuf key.
const IDENTITY_MULTIHASH: [u8; 2] = [0x00, 0x24];

/// Why a string is not an operator id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdError {
    #[error("{0:?} is not a base58 PeerId")]
    Encoding(String),
    #[error("{0:?} is not the PeerId of an ed25519 key")]
    NotEd25519(String),
}

/// An operator: an ed25519 public key, displayed as its PeerId.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId([u8; 32]);

impl PeerId {
    /// The operator holding `key`.
    pub fn from_public_key(key: &VerifyingKey) -> Self {
        Self(key.to_bytes())
    }

    /// From raw public key bytes (validated as a curve point).
    pub fn from_key_bytes(b: &[u8; 32]) -> Result<Self, PeerIdError> {
        VerifyingKey::from_bytes(b)
            .map(|k| Self(k.to_bytes()))
            .map_err(|_| PeerIdError::NotEd25519(hex::encode(b)))
    }

    /// The public key bytes.
    pub fn key_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The public key.
    pub fn public_key(&self) -> VerifyingKey {
        VerifyingKey::from_bytes(&self.0).expect("validated on construction")
    }

    /// The libp2p PeerId bytes (identity multihash of the protobuf-encoded key).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(38);
        v.extend_from_slice(&IDENTITY_MULTIHASH);
        v.extend_from_slice(&PROTOBUF_ED25519);
        v.extend_from_slice(&self.0);
        v
    }

    /// Parses PeerId bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self, PeerIdError> {
        let bad = || PeerIdError::NotEd25519(bs58::encode(b).into_string());
        let key = b
            .strip_prefix(&IDENTITY_MULTIHASH[..])
            .and_then(|r| r.strip_prefix(&PROTOBUF_ED25519[..]))
            .ok_or_else(bad)?;
        let key: [u8; 32] = key.try_into().map_err(|_| bad())?;
        Self::from_key_bytes(&key).map_err(|_| bad())
    }

    /// A short form for logs: the last 8 characters.
    pub fn short(&self) -> String {
        let s = self.to_string();
        s[s.len() - 8..].to_owned()
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.to_bytes()).into_string())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.short())
    }
}

impl FromStr for PeerId {
    type Err = PeerIdError;
    fn from_str(s: &str) -> Result<Self, PeerIdError> {
        let b = bs58::decode(s.trim())
            .into_vec()
            .map_err(|_| PeerIdError::Encoding(s.to_owned()))?;
        Self::from_bytes(&b).map_err(|_| PeerIdError::NotEd25519(s.to_owned()))
    }
}

impl serde::Serialize for PeerId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PeerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    #[test]
    fn peer_id_of_a_fixed_key() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let id = PeerId::from_public_key(&key.verifying_key());
        let s = id.to_string();
        assert!(s.starts_with("12D3KooW"), "{s}");
        assert_eq!(s.parse::<PeerId>().unwrap(), id);
        assert_eq!(PeerId::from_bytes(&id.to_bytes()).unwrap(), id);
    }

    #[test]
    fn refuses_other_ids() {
        assert!("not-base58-0OIl".parse::<PeerId>().is_err());
        // A valid base58 string that is not an ed25519 identity multihash.
        assert!(
            "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
                .parse::<PeerId>()
                .is_err()
        );
    }
}
