//! Signed mirror records: what an operator attests about one package.
//!
//! A [`Record`] says: "at `fetched_at` I mirrored package `name`; its packument bytes have CID
//! `packument`; version V has npm integrity I and (once I stored it) tarball CID T; believe this
//! until `expires_at`; it is my `seq`-th statement about this name." Records are small (a few
//! dozen bytes per version): packuments and tarballs travel as blobs, named by the CIDs here.
//!
//! The encoding is deterministic (one record, one byte string: fixed-width big-endian integers,
//! length-prefixed strings, versions sorted and unique) and what is signed is a domain-separation
//! prefix followed by those bytes, so a signature over a record can never be confused with a
//! signature over anything else. docs/protocol.md specifies the format with test vectors.
//!
//! Invariant: a [`Verified<Record>`] can only be obtained from [`Signed::verify`], which checks
//! the ed25519 signature with `verify_strict` and then parses the record from the verified bytes;
//! nothing else can be read as trusted.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey};

use crate::id::BlobId;
use crate::integrity::Integrity;
use crate::name::PackageName;
use crate::packument::DistRef;
use crate::peer::PeerId;

/// Prefix of every signed message: the domain, so signatures cannot be replayed elsewhere.
pub const DOMAIN: &[u8] = b"open-registry/record/v1\n";
/// The format byte that starts an encoded record.
pub const FORMAT: u8 = 1;
/// Most versions one record may list.
pub const MAX_VERSIONS: u32 = 100_000;
/// Largest encoded record accepted.
pub const MAX_RECORD_LEN: usize = 16 << 20;
/// Longest string (name, version, integrity) a record may hold: lengths are encoded as u16.
pub const MAX_STR_LEN: usize = u16::MAX as usize;
/// Length of a CID as encoded here (CIDv1 raw BLAKE3-256).
const CID_LEN: usize = 36;

/// What one version is attested to be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VersionEntry {
    /// npm integrity (SRI), as in `dist.integrity`, or `sha1-<base64>` from `dist.shasum`.
    pub integrity: String,
    /// The tarball's CID, once the signer stored and verified it.
    pub tarball: Option<BlobId>,
}

/// An operator's statement about a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The package.
    pub name: PackageName,
    /// Strictly increasing per signer and name.
    pub seq: u64,
    /// When the signer fetched the packument (unix ms).
    pub fetched_at: u64,
    /// When this record stops being valid (unix ms).
    pub expires_at: u64,
    /// The CID of the packument bytes.
    pub packument: BlobId,
    /// Version → entry.
    pub versions: BTreeMap<String, VersionEntry>,
}

/// Why bytes are not a valid record or signed record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record is malformed: {0}")]
    Malformed(String),
    #[error("record is signed by a key that is not a valid ed25519 key")]
    BadKey,
    #[error("record signature is invalid (forged or altered)")]
    BadSignature,
    /// The record does not fit the encoding (a string over [`MAX_STR_LEN`] bytes, an empty
    /// version, more than [`MAX_VERSIONS`] versions, more than [`MAX_RECORD_LEN`] bytes): it
    /// cannot be signed, as `decode` would refuse its bytes.
    #[error("record cannot be encoded: {0}")]
    Unencodable(String),
}

fn malformed(s: impl Into<String>) -> RecordError {
    RecordError::Malformed(s.into())
}

/// The integrity string a record attests for a version: `dist.integrity` verbatim, or the sha1
/// `dist.shasum` as an SRI string (`sha1-<base64>`). `None` when the metadata promises nothing
/// verifiable.
pub fn attested_integrity(d: &DistRef) -> Option<String> {
    Integrity::for_dist(d.integrity.as_deref(), d.shasum.as_deref())
        .ok()
        .map(|i| match &d.integrity {
            Some(s) if !s.trim().is_empty() => s.clone(),
            _ => i.to_string(),
        })
}

impl Record {
    /// Whether the record fits the encoding, so that [`Record::decode`] accepts what
    /// [`Record::encode`] makes of it. Everything built from untrusted input (a packument)
    /// must pass this (or go through [`Record::try_encode`] / [`Record::try_sign`]).
    pub fn check(&self) -> Result<(), RecordError> {
        let unencodable = |s: String| Err(RecordError::Unencodable(s));
        if self.name.as_str().len() > MAX_STR_LEN {
            return unencodable("the package name is too long".into());
        }
        if self.versions.len() > MAX_VERSIONS as usize {
            return unencodable(format!(
                "{} versions, more than the {MAX_VERSIONS} a record may list",
                self.versions.len()
            ));
        }
        let mut len = 1 + 2 + self.name.as_str().len() + 8 * 3 + CID_LEN + 4;
        for (v, e) in &self.versions {
            if v.is_empty() {
                return unencodable("an empty version".into());
            }
            if v.len() > MAX_STR_LEN {
                return unencodable(format!(
                    "a version of {} bytes (at most {MAX_STR_LEN})",
                    v.len()
                ));
            }
            if e.integrity.len() > MAX_STR_LEN {
                return unencodable(format!(
                    "version {v:.40}: an integrity string of {} bytes (at most {MAX_STR_LEN})",
                    e.integrity.len()
                ));
            }
            len += 2 + v.len() + 2 + e.integrity.len() + 1 + e.tarball.map_or(0, |_| CID_LEN);
        }
        if len > MAX_RECORD_LEN {
            return unencodable(format!(
                "{len} bytes, more than the {MAX_RECORD_LEN} a record may take"
            ));
        }
        Ok(())
    }

    /// The canonical encoding, or why the record does not fit it ([`Record::check`]).
    pub fn try_encode(&self) -> Result<Vec<u8>, RecordError> {
        self.check()?;
        Ok(self.encode_checked())
    }

    /// Signs the record with `key`, or says why it cannot be ([`Record::check`]).
    pub fn try_sign(&self, key: &SigningKey) -> Result<Signed, RecordError> {
        self.check()?;
        Ok(Signable::sign(self, key))
    }

    /// The canonical encoding. For a record that passes [`Record::check`]; for one that does
    /// not it is empty, which [`Record::decode`] refuses, never a panic nor bytes that decode
    /// to another record. Use [`Record::try_encode`] on records built from untrusted input.
    pub fn encode(&self) -> Vec<u8> {
        self.try_encode().unwrap_or_default()
    }

    fn encode_checked(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.versions.len() * 140);
        out.push(FORMAT);
        put_str16(&mut out, self.name.as_str());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.fetched_at.to_be_bytes());
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        out.extend_from_slice(&self.packument.to_bytes());
        out.extend_from_slice(&(self.versions.len() as u32).to_be_bytes());
        // BTreeMap iterates in byte order of the keys: the canonical order.
        for (v, e) in &self.versions {
            put_str16(&mut out, v);
            put_str16(&mut out, &e.integrity);
            match &e.tarball {
                Some(id) => {
                    out.push(1);
                    out.extend_from_slice(&id.to_bytes());
                }
                None => out.push(0),
            }
        }
        out
    }

    /// Parses the canonical encoding; anything else (trailing bytes, unsorted or duplicate
    /// versions, bad names or ids) is refused, so decoding and encoding are inverse.
    pub fn decode(b: &[u8]) -> Result<Record, RecordError> {
        if b.len() > MAX_RECORD_LEN {
            return Err(malformed("record too large"));
        }
        let mut r = Reader(b);
        if r.u8()? != FORMAT {
            return Err(malformed("unknown record format"));
        }
        let name = PackageName::parse(r.str16()?).map_err(|e| malformed(e.to_string()))?;
        let seq = r.u64()?;
        let fetched_at = r.u64()?;
        let expires_at = r.u64()?;
        let packument = r.cid()?;
        let n = r.u32()?;
        if n > MAX_VERSIONS {
            return Err(malformed("too many versions"));
        }
        let mut versions = BTreeMap::new();
        let mut last: Option<&str> = None;
        for _ in 0..n {
            let v = r.str16()?;
            if v.is_empty() || last.is_some_and(|l| l.as_bytes() >= v.as_bytes()) {
                return Err(malformed("versions are not sorted and unique"));
            }
            last = Some(v);
            let integrity = r.str16()?.to_owned();
            let tarball = match r.u8()? {
                0 => None,
                1 => Some(r.cid()?),
                _ => return Err(malformed("bad tarball flag")),
            };
            versions.insert(v.to_owned(), VersionEntry { integrity, tarball });
        }
        if !r.0.is_empty() {
            return Err(malformed("trailing bytes"));
        }
        Ok(Record {
            name,
            seq,
            fetched_at,
            expires_at,
            packument,
            versions,
        })
    }

    /// Signs the record with `key`. For records known to pass [`Record::check`] (tests, records
    /// decoded from valid bytes); others get [`Record::try_sign`].
    pub fn sign(&self, key: &SigningKey) -> Signed {
        Signable::sign(self, key)
    }
}

/// Something an operator signs: a canonical encoding and the domain that separates its
/// signatures from every other kind's.
pub trait Signable: Sized {
    /// The prefix of the signed message.
    const DOMAIN: &'static [u8];
    /// The canonical encoding.
    fn encode(&self) -> Vec<u8>;
    /// Parses the canonical encoding, refusing anything else.
    fn decode(b: &[u8]) -> Result<Self, RecordError>;
    /// Signs with `key`.
    fn sign(&self, key: &SigningKey) -> Signed {
        let body = self.encode();
        let signature = key.sign(&signed_message(Self::DOMAIN, &body)).to_bytes();
        Signed {
            signer: PeerId::from_public_key(&key.verifying_key()),
            signature,
            body,
        }
    }
}

impl Signable for Record {
    const DOMAIN: &'static [u8] = DOMAIN;
    fn encode(&self) -> Vec<u8> {
        Record::encode(self)
    }
    fn decode(b: &[u8]) -> Result<Self, RecordError> {
        Record::decode(b)
    }
}

/// The exact bytes an operator signs: the domain followed by the encoding.
pub fn signed_message(domain: &[u8], body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain.len() + body.len());
    m.extend_from_slice(domain);
    m.extend_from_slice(body);
    m
}

/// A u16 length and the string. [`Record::check`] has made sure it fits; a longer one would be
/// cut (never a panic), which `encode` does not let happen.
fn put_str16(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(MAX_STR_LEN)];
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.0.len() < n {
            return Err(malformed("record is truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn str16(&mut self) -> Result<&'a str, RecordError> {
        let n = u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes"));
        std::str::from_utf8(self.take(n as usize)?).map_err(|_| malformed("string is not UTF-8"))
    }
    fn cid(&mut self) -> Result<BlobId, RecordError> {
        BlobId::from_bytes(self.take(CID_LEN)?).map_err(|e| malformed(e.to_string()))
    }
}

/// A record as it travels: the encoded body, its signer and signature. Not yet trusted.
#[derive(Clone, PartialEq, Eq)]
pub struct Signed {
    /// Who claims to have signed it.
    pub signer: PeerId,
    /// The ed25519 signature over [`signed_message`]`(body)`.
    pub signature: [u8; 64],
    /// The encoded record.
    pub body: Vec<u8>,
}

impl fmt::Debug for Signed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed")
            .field("signer", &self.signer)
            .field("len", &self.body.len())
            .finish()
    }
}

/// A record whose signature checked out. Only [`Signed::verify`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified<T> {
    signer: PeerId,
    value: T,
}

impl<T> Verified<T> {
    /// Who signed it.
    pub fn signer(&self) -> &PeerId {
        &self.signer
    }

    /// The verified value.
    pub fn get(&self) -> &T {
        &self.value
    }
}

impl Signed {
    /// Checks the signature (ed25519 `verify_strict`) and parses the record from the verified
    /// bytes. Trust decisions (is this signer trusted, is it fresh, is it newer) are the
    /// [`crate::trust`] policy's.
    pub fn verify(&self) -> Result<Verified<Record>, RecordError> {
        self.verify_as::<Record>()
    }

    /// [`Signed::verify`] for any [`Signable`] kind: the signature is checked over that kind's
    /// domain, then the value is parsed from the verified bytes.
    pub fn verify_as<T: Signable>(&self) -> Result<Verified<T>, RecordError> {
        let key = self.signer.public_key();
        let sig = Signature::from_bytes(&self.signature);
        key.verify_strict(&signed_message(T::DOMAIN, &self.body), &sig)
            .map_err(|_| RecordError::BadSignature)?;
        Ok(Verified {
            signer: self.signer,
            value: T::decode(&self.body)?,
        })
    }

    /// The binary wire form: format byte 1, the 32-byte public key, the 64-byte signature, the
    /// body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(97 + self.body.len());
        v.push(FORMAT);
        v.extend_from_slice(self.signer.key_bytes());
        v.extend_from_slice(&self.signature);
        v.extend_from_slice(&self.body);
        v
    }

    /// Parses the binary wire form (the signature is not checked here).
    pub fn from_bytes(b: &[u8]) -> Result<Signed, RecordError> {
        if b.len() < 97 || b[0] != FORMAT {
            return Err(malformed(
                "signed record is truncated or of an unknown format",
            ));
        }
        if b.len() > MAX_RECORD_LEN + 97 {
            return Err(malformed("signed record too large"));
        }
        let key: [u8; 32] = b[1..33].try_into().expect("32 bytes");
        Ok(Signed {
            signer: PeerId::from_key_bytes(&key).map_err(|_| RecordError::BadKey)?,
            signature: b[33..97].try_into().expect("64 bytes"),
            body: b[97..].to_vec(),
        })
    }

    /// The JSON form served over HTTP.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "signer": self.signer.to_string(),
            "signature": B64.encode(self.signature),
            "record": B64.encode(&self.body),
        })
    }

    /// Parses the JSON form (the signature is not checked here).
    pub fn from_json(v: &serde_json::Value) -> Result<Signed, RecordError> {
        let field = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .ok_or_else(|| malformed(format!("signed record has no {k:?}")))
        };
        let signer = field("signer")?
            .parse::<PeerId>()
            .map_err(|_| RecordError::BadKey)?;
        let signature: [u8; 64] = B64
            .decode(field("signature")?)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| malformed("signature is not 64 base64 bytes"))?;
        let body = B64
            .decode(field("record")?)
            .map_err(|_| malformed("record is not base64"))?;
        Ok(Signed {
            signer,
            signature,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample(seq: u64) -> Record {
        let mut versions = BTreeMap::new();
        versions.insert(
            "1.0.0".to_owned(),
            VersionEntry {
                integrity: crate::Integrity::sha512_sri(b"tarball 1"),
                tarball: Some(BlobId::of(b"tarball 1")),
            },
        );
        versions.insert(
            "2.0.0-beta.1".to_owned(),
            VersionEntry {
                integrity: "sha1-AAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned(),
                tarball: None,
            },
        );
        Record {
            name: PackageName::parse("@demo/pkg").unwrap(),
            seq,
            fetched_at: 1_700_000_000_000,
            expires_at: 1_700_604_800_000,
            packument: BlobId::of(b"packument"),
            versions,
        }
    }

    #[test]
    fn round_trip_and_verify() {
        let key = SigningKey::from_bytes(&[1u8; 32]);
        let r = sample(3);
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        let s = r.sign(&key);
        let v = s.verify().unwrap();
        assert_eq!(v.get(), &r);
        assert_eq!(v.signer(), &PeerId::from_public_key(&key.verifying_key()));
        assert_eq!(Signed::from_bytes(&s.to_bytes()).unwrap(), s);
        assert_eq!(Signed::from_json(&s.to_json()).unwrap(), s);
    }

    #[test]
    fn any_flipped_bit_breaks_the_signature() {
        let s = sample(1).sign(&SigningKey::from_bytes(&[2u8; 32]));
        for i in 0..s.body.len() {
            let mut t = s.clone();
            t.body[i] ^= 0x01;
            assert!(t.verify().is_err(), "flip at {i} accepted");
        }
        let mut t = s.clone();
        t.signature[10] ^= 0x80;
        assert_eq!(t.verify(), Err(RecordError::BadSignature));
        // Someone else's key over the same bytes: forged.
        let mut t = s.clone();
        t.signer = PeerId::from_public_key(&SigningKey::from_bytes(&[3u8; 32]).verifying_key());
        assert_eq!(t.verify(), Err(RecordError::BadSignature));
    }

    #[test]
    fn non_canonical_encodings_are_refused() {
        let mut b = sample(1).encode();
        b.push(0);
        assert!(Record::decode(&b).is_err());
        // Swap the two versions' order by re-encoding by hand: decode refuses unsorted input.
        let r = sample(1);
        let mut out = Vec::new();
        out.push(FORMAT);
        put_str16(&mut out, r.name.as_str());
        for n in [r.seq, r.fetched_at, r.expires_at] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(&r.packument.to_bytes());
        out.extend_from_slice(&2u32.to_be_bytes());
        for v in ["2.0.0", "1.0.0"] {
            put_str16(&mut out, v);
            put_str16(&mut out, "sha512-x");
            out.push(0);
        }
        assert!(Record::decode(&out).is_err());
    }

    fn with_version(version: String, integrity: String) -> Record {
        let mut r = sample(1);
        r.versions.insert(
            version,
            VersionEntry {
                integrity,
                tarball: None,
            },
        );
        r
    }

    #[test]
    fn strings_that_do_not_fit_are_an_error_not_a_panic() {
        let key = SigningKey::from_bytes(&[4u8; 32]);
        let long = "9".repeat(MAX_STR_LEN + 1);
        for r in [
            with_version(long.clone(), "sha512-x".into()),
            with_version("3.0.0".into(), long.clone()),
            with_version(String::new(), "sha512-x".into()),
        ] {
            assert!(matches!(r.check(), Err(RecordError::Unencodable(_))));
            assert!(matches!(r.try_encode(), Err(RecordError::Unencodable(_))));
            assert!(matches!(r.try_sign(&key), Err(RecordError::Unencodable(_))));
            // The infallible form does not panic either, and what it makes is refused.
            assert!(Record::decode(&r.encode()).is_err());
        }
        // Exactly at the limit still fits and round-trips.
        let r = with_version("3.0.0".into(), "a".repeat(MAX_STR_LEN));
        let b = r.try_encode().unwrap();
        assert_eq!(Record::decode(&b).unwrap(), r);
        r.try_sign(&key).unwrap().verify().unwrap();
    }

    #[test]
    fn too_many_versions_or_bytes_are_an_error() {
        let mut r = sample(1);
        r.versions = (0..=MAX_VERSIONS)
            .map(|i| {
                (
                    format!("{i}.0.0"),
                    VersionEntry {
                        integrity: String::new(),
                        tarball: None,
                    },
                )
            })
            .collect();
        assert!(matches!(r.check(), Err(RecordError::Unencodable(_))));
        r.versions.pop_last();
        r.check().unwrap();
        // Fewer versions, but over MAX_RECORD_LEN in all.
        let mut r = sample(1);
        r.versions = (0..300)
            .map(|i| {
                (
                    format!("{i}.0.0"),
                    VersionEntry {
                        integrity: "i".repeat(60_000),
                        tarball: None,
                    },
                )
            })
            .collect();
        assert!(matches!(r.check(), Err(RecordError::Unencodable(_))));
        assert!(Record::decode(&r.encode()).is_err());
    }

    proptest! {
        /// Whatever strings a record holds, `try_encode` either refuses it or makes bytes that
        /// decode back to it; nothing panics.
        #[test]
        fn any_strings_encode_exactly_or_are_refused(
            version in proptest::collection::vec(any::<char>(), 0..4).prop_map(String::from_iter),
            v_len in prop_oneof![Just(0usize), 65_530usize..65_540],
            i_len in prop_oneof![Just(0usize), 65_530usize..65_540],
        ) {
            let r = with_version(format!("{version}{}", "1".repeat(v_len)), "s".repeat(i_len));
            match r.try_encode() {
                Ok(b) => prop_assert_eq!(Record::decode(&b).unwrap(), r),
                Err(e) => {
                    prop_assert!(matches!(e, RecordError::Unencodable(_)));
                    prop_assert!(Record::decode(&r.encode()).is_err());
                }
            }
        }

        #[test]
        fn encoding_is_deterministic_and_invertible(
            seq in any::<u64>(),
            t in any::<u64>(),
            vs in proptest::collection::btree_map("[0-9a-z.+-]{1,20}", ("[a-zA-Z0-9+/=-]{0,90}", any::<Option<[u8; 4]>>()), 0..20),
        ) {
            let versions = vs.into_iter().map(|(k, (i, t))| (k, VersionEntry {
                integrity: i,
                tarball: t.map(|b| BlobId::of(&b)),
            })).collect();
            let r = Record { name: PackageName::parse("x").unwrap(), seq, fetched_at: t, expires_at: t, packument: BlobId::of(b""), versions };
            let b = r.encode();
            prop_assert_eq!(&Record::decode(&b).unwrap(), &r);
            prop_assert_eq!(Record::decode(&b).unwrap().encode(), b);
        }

        #[test]
        fn decoding_garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Record::decode(&b);
            let _ = Signed::from_bytes(&b);
        }
    }
}
