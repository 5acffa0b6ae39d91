//! Signed pointers: what the DHT holds so that a package's newest records can be found by name.
//!
//! A record lists every version of a package and can be large; the DHT holds small values
//! (libp2p Kademlia caps messages at a few KiB). So each operator publishes, under a key made
//! of the package name and its own id, a small signed [`Pointer`]: "my newest record for this
//! name has sequence `seq` and is the blob `record`". A node looking for a package asks the DHT
//! for the pointer of each operator it trusts, then fetches the record blob by its CID from
//! whoever provides it, and verifies the record itself. The pointer only saves a lookup; nothing
//! is trusted because a pointer said so.

use std::fmt;

use crate::id::BlobId;
use crate::name::PackageName;
use crate::peer::PeerId;
use crate::record::{RecordError, Signable, Signed, Verified};

/// Domain of pointer signatures.
pub const POINTER_DOMAIN: &[u8] = b"open-registry/pointer/v1\n";
/// Prefix of DHT keys holding pointers.
pub const KEY_PREFIX: &str = "/open-registry/records/v1/";

/// An operator's pointer to its newest record for a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    /// The package.
    pub name: PackageName,
    /// The record's sequence number.
    pub seq: u64,
    /// When the record expires (unix ms); the pointer is worthless after it.
    pub expires_at: u64,
    /// The blob id of the signed record's wire bytes.
    pub record: BlobId,
}

impl Signable for Pointer {
    const DOMAIN: &'static [u8] = POINTER_DOMAIN;

    fn encode(&self) -> Vec<u8> {
        let name = self.name.as_str().as_bytes();
        let mut out = Vec::with_capacity(1 + 2 + name.len() + 16 + 36);
        out.push(1);
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        out.extend_from_slice(&self.record.to_bytes());
        out
    }

    fn decode(b: &[u8]) -> Result<Self, RecordError> {
        let bad = |s: &str| RecordError::Malformed(format!("pointer: {s}"));
        let (&fmt, rest) = b.split_first().ok_or_else(|| bad("empty"))?;
        if fmt != 1 || rest.len() < 2 {
            return Err(bad("unknown format"));
        }
        let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let rest = &rest[2..];
        if rest.len() != n + 16 + 36 {
            return Err(bad("wrong length"));
        }
        let name = std::str::from_utf8(&rest[..n]).map_err(|_| bad("name is not UTF-8"))?;
        let name = PackageName::parse(name).map_err(|e| bad(&e.to_string()))?;
        let u64_at = |i: usize| u64::from_be_bytes(rest[i..i + 8].try_into().expect("8 bytes"));
        Ok(Pointer {
            name,
            seq: u64_at(n),
            expires_at: u64_at(n + 8),
            record: BlobId::from_bytes(&rest[n + 16..]).map_err(|e| bad(&e.to_string()))?,
        })
    }
}

/// The DHT key under which `signer` publishes its pointer for `name`.
pub fn dht_key(name: &PackageName, signer: &PeerId) -> Vec<u8> {
    format!("{KEY_PREFIX}{name}/{signer}").into_bytes()
}

/// Domain prefix of package provider keys (see [`provider_key`]).
pub const PROVIDER_KEY_DOMAIN: &[u8] = b"open-registry/providers/v1\n";

/// The DHT key under which a node that holds blobs of package `name` (its packument, tarballs,
/// records) announces itself as a provider: one provider record per package, not per blob.
///
/// It is the blob id (raw CID, BLAKE3) of [`PROVIDER_KEY_DOMAIN`] followed by the name's UTF-8
/// bytes: shaped like any blob id, so every node's provider-record filter (blob CIDs only)
/// stores it, and domain-separated, so no tarball, packument or record can have it as its id
/// unless someone stores exactly those bytes (harmless: the key only names who to ask).
pub fn provider_key(name: &PackageName) -> BlobId {
    let mut b = Vec::with_capacity(PROVIDER_KEY_DOMAIN.len() + name.as_str().len());
    b.extend_from_slice(PROVIDER_KEY_DOMAIN);
    b.extend_from_slice(name.as_str().as_bytes());
    BlobId::of(&b)
}

/// Parses a DHT key back into (name, signer).
pub fn parse_dht_key(key: &[u8]) -> Option<(PackageName, PeerId)> {
    let s = std::str::from_utf8(key).ok()?.strip_prefix(KEY_PREFIX)?;
    let (name, signer) = s.rsplit_once('/')?;
    Some((PackageName::parse(name).ok()?, signer.parse().ok()?))
}

/// Why a DHT value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointerError {
    #[error("not a pointer key")]
    Key,
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("pointer is signed by {found}, but stored under {expected}'s key")]
    WrongSigner { expected: PeerId, found: PeerId },
    #[error("pointer is for {found}, but stored under {expected}")]
    WrongName { expected: String, found: String },
    #[error("pointer expired")]
    Expired,
}

/// Validates a DHT key/value pair before it is stored or believed: the value must be a pointer
/// correctly signed by the operator named in the key, for the package named in the key, and
/// not expired at `now` (unix ms).
pub fn validate(key: &[u8], value: &[u8], now: u64) -> Result<Verified<Pointer>, PointerError> {
    let (name, signer) = parse_dht_key(key).ok_or(PointerError::Key)?;
    let signed = Signed::from_bytes(value)?;
    if signed.signer != signer {
        return Err(PointerError::WrongSigner {
            expected: signer,
            found: signed.signer,
        });
    }
    let v = signed.verify_as::<Pointer>()?;
    if v.get().name != name {
        return Err(PointerError::WrongName {
            expected: name.to_string(),
            found: v.get().name.to_string(),
        });
    }
    if v.get().expires_at <= now {
        return Err(PointerError::Expired);
    }
    Ok(v)
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{} → {}", self.name, self.seq, self.record.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;
    use ed25519_dalek::SigningKey;

    #[test]
    fn provider_keys_have_a_fixed_derivation() {
        // The vectors of docs/protocol.md ("What a node announces"): binary CIDs, hex.
        let key = provider_key(&PackageName::parse("left-pad").unwrap());
        assert_eq!(
            hex(&key.to_bytes()),
            "01551e20da270404c2964add40b6fdb6e97be0afd03f5727b2c8f88af4f1c8cc77fa7390"
        );
        let scoped = provider_key(&PackageName::parse("@types/node").unwrap());
        assert_eq!(
            hex(&scoped.to_bytes()),
            "01551e20cb95c452f76b34e055225c23a020bfa921cf8a2c643950fea22c113feac19fd3"
        );
        assert_eq!(key, BlobId::of(b"open-registry/providers/v1\nleft-pad"));
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn pointer() -> Pointer {
        Pointer {
            name: PackageName::parse("@s/p").unwrap(),
            seq: 9,
            expires_at: 2_000,
            record: BlobId::of(b"record"),
        }
    }

    #[test]
    fn round_trip_and_validate() {
        let key = SigningKey::from_bytes(&[4; 32]);
        let me = PeerId::from_public_key(&key.verifying_key());
        let p = pointer();
        assert_eq!(Pointer::decode(&p.encode()).unwrap(), p);
        let k = dht_key(&p.name, &me);
        assert_eq!(parse_dht_key(&k), Some((p.name.clone(), me)));
        let wire = p.sign(&key).to_bytes();
        assert_eq!(validate(&k, &wire, 1_000).unwrap().get(), &p);
        assert_eq!(validate(&k, &wire, 2_000), Err(PointerError::Expired));
    }

    #[test]
    fn refuses_impostors_and_other_kinds() {
        let key = SigningKey::from_bytes(&[4; 32]);
        let other = SigningKey::from_bytes(&[5; 32]);
        let me = PeerId::from_public_key(&key.verifying_key());
        let p = pointer();
        // Someone else's pointer under my key.
        let k = dht_key(&p.name, &me);
        assert!(matches!(
            validate(&k, &p.sign(&other).to_bytes(), 0),
            Err(PointerError::WrongSigner { .. })
        ));
        // My pointer for another package under this package's key.
        let mut q = p.clone();
        q.name = PackageName::parse("other").unwrap();
        assert!(matches!(
            validate(&k, &q.sign(&key).to_bytes(), 0),
            Err(PointerError::WrongName { .. })
        ));
        // A record signature is not a pointer signature (domain separation), even over the
        // same bytes.
        let mut s = p.sign(&key);
        let record_sig = {
            let msg = crate::record::signed_message(Record::DOMAIN, &s.body);
            use ed25519_dalek::Signer as _;
            key.sign(&msg).to_bytes()
        };
        s.signature = record_sig;
        assert!(matches!(
            validate(&k, &s.to_bytes(), 0),
            Err(PointerError::Record(RecordError::BadSignature))
        ));
        assert_eq!(validate(b"/elsewhere", &[], 0), Err(PointerError::Key));
    }
}
