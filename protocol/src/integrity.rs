//! npm integrity: Subresource Integrity strings (`sha512-<base64>`) and legacy sha1 shasums,
//! and a streaming [`Verifier`] that checks them and computes the blob's [`BlobId`] in one pass.
//!
//! As in npm (ssri), when an integrity string lists several algorithms only the strongest one is
//! checked, and any of its digests may match. A version with no integrity falls back to its
//! `shasum`; a version with neither cannot be verified and is refused.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha1::Digest as _;

use crate::id::BlobId;

/// A hash algorithm npm integrity strings use, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algo {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Algo {
    fn from_prefix(s: &str) -> Option<Self> {
        Some(match s {
            "sha1" => Algo::Sha1,
            "sha256" => Algo::Sha256,
            "sha384" => Algo::Sha384,
            "sha512" => Algo::Sha512,
            _ => return None,
        })
    }

    /// The SRI prefix.
    pub fn name(self) -> &'static str {
        match self {
            Algo::Sha1 => "sha1",
            Algo::Sha256 => "sha256",
            Algo::Sha384 => "sha384",
            Algo::Sha512 => "sha512",
        }
    }
}

/// Why integrity metadata was refused or did not match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntegrityError {
    #[error("no integrity or shasum in the metadata; the tarball cannot be verified")]
    Missing,
    #[error("integrity string {0:?} has no supported hash")]
    Unsupported(String),
    #[error("{algo} mismatch: expected {expected}, got {actual}")]
    Mismatch {
        algo: &'static str,
        expected: String,
        actual: String,
    },
    #[error("content id mismatch: expected {expected}, got {actual}")]
    IdMismatch { expected: String, actual: String },
}

/// The digests that an integrity string or shasum promises, reduced to the strongest algorithm.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Integrity {
    algo: Algo,
    digests: Vec<Vec<u8>>,
}

impl Integrity {
    /// Parses an SRI string such as `sha512-... sha1-...`; unknown algorithms and options are
    /// ignored, as ssri does.
    pub fn parse(sri: &str) -> Result<Self, IntegrityError> {
        let mut best: Option<Integrity> = None;
        for token in sri.split_ascii_whitespace() {
            let Some((algo, rest)) = token.split_once('-') else {
                continue;
            };
            let Some(algo) = Algo::from_prefix(algo) else {
                continue;
            };
            let b64 = rest.split('?').next().unwrap_or_default();
            let Ok(digest) = B64.decode(b64) else {
                continue;
            };
            if digest.len() != digest_len(algo) {
                continue;
            }
            match &mut best {
                Some(b) if b.algo == algo => b.digests.push(digest),
                Some(b) if b.algo > algo => {}
                _ => {
                    best = Some(Integrity {
                        algo,
                        digests: vec![digest],
                    })
                }
            }
        }
        best.ok_or_else(|| IntegrityError::Unsupported(sri.to_owned()))
    }

    /// A sha1 shasum in hex, as `dist.shasum` holds it.
    pub fn from_shasum(hex_sum: &str) -> Result<Self, IntegrityError> {
        match hex::decode(hex_sum.trim()) {
            Ok(d) if d.len() == 20 => Ok(Integrity {
                algo: Algo::Sha1,
                digests: vec![d],
            }),
            _ => Err(IntegrityError::Unsupported(hex_sum.to_owned())),
        }
    }

    /// What npm checks for a version: `dist.integrity` when present, else `dist.shasum`.
    pub fn for_dist(integrity: Option<&str>, shasum: Option<&str>) -> Result<Self, IntegrityError> {
        match (integrity, shasum) {
            (Some(i), _) if !i.trim().is_empty() => Self::parse(i),
            (_, Some(s)) if !s.trim().is_empty() => Self::from_shasum(s),
            _ => Err(IntegrityError::Missing),
        }
    }

    /// The sha512 SRI string of `bytes` (what npm writes for new tarballs).
    pub fn sha512_sri(bytes: &[u8]) -> String {
        format!("sha512-{}", B64.encode(sha2::Sha512::digest(bytes)))
    }

    /// The sha1 shasum of `bytes` in hex.
    pub fn sha1_hex(bytes: &[u8]) -> String {
        hex::encode(sha1::Sha1::digest(bytes))
    }

    /// The algorithm that is checked.
    pub fn algo(&self) -> Algo {
        self.algo
    }

    /// Checks `bytes` in one go.
    pub fn check(&self, bytes: &[u8]) -> Result<BlobId, IntegrityError> {
        let mut v = Verifier::new(self.clone());
        v.update(bytes);
        v.finish()
    }
}

impl fmt::Display for Integrity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .digests
            .iter()
            .map(|d| format!("{}-{}", self.algo.name(), B64.encode(d)))
            .collect();
        f.write_str(&parts.join(" "))
    }
}

impl fmt::Debug for Integrity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Integrity({self})")
    }
}

fn digest_len(algo: Algo) -> usize {
    match algo {
        Algo::Sha1 => 20,
        Algo::Sha256 => 32,
        Algo::Sha384 => 48,
        Algo::Sha512 => 64,
    }
}

enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

/// Checks a blob as its bytes stream past: the npm integrity it was promised, and its BLAKE3
/// content id, in a single pass. Blobs without npm integrity (packuments) are only addressed
/// ([`Verifier::id_only`]).
pub struct Verifier {
    expected: Option<Integrity>,
    hasher: Option<Hasher>,
    blake3: blake3::Hasher,
    len: u64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("expected", &self.expected)
            .field("len", &self.len)
            .finish()
    }
}

impl Verifier {
    /// Starts a verification against `expected`.
    pub fn new(expected: Integrity) -> Self {
        let hasher = match expected.algo {
            Algo::Sha1 => Hasher::Sha1(Default::default()),
            Algo::Sha256 => Hasher::Sha256(Default::default()),
            Algo::Sha384 => Hasher::Sha384(Default::default()),
            Algo::Sha512 => Hasher::Sha512(Default::default()),
        };
        Self {
            expected: Some(expected),
            hasher: Some(hasher),
            blake3: blake3::Hasher::new(),
            len: 0,
        }
    }

    /// Starts computing a content id only: nothing to check but the id itself.
    pub fn id_only() -> Self {
        Self {
            expected: None,
            hasher: None,
            blake3: blake3::Hasher::new(),
            len: 0,
        }
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        match &mut self.hasher {
            Some(Hasher::Sha1(h)) => h.update(bytes),
            Some(Hasher::Sha256(h)) => h.update(bytes),
            Some(Hasher::Sha384(h)) => h.update(bytes),
            Some(Hasher::Sha512(h)) => h.update(bytes),
            None => {}
        }
        self.blake3.update(bytes);
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks the integrity and returns the content id of everything fed.
    pub fn finish(self) -> Result<BlobId, IntegrityError> {
        let actual: Option<Vec<u8>> = self.hasher.map(|h| match h {
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha384(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        });
        if let (Some(expected), Some(actual)) = (&self.expected, actual)
            && !expected.digests.contains(&actual)
        {
            return Err(IntegrityError::Mismatch {
                algo: expected.algo.name(),
                expected: expected.to_string(),
                actual: format!("{}-{}", expected.algo.name(), B64.encode(&actual)),
            });
        }
        Ok(BlobId::from_digest(*self.blake3.finalize().as_bytes()))
    }

    /// Like [`finish`](Self::finish), and also requires the content id to be `id`.
    pub fn finish_as(self, id: &BlobId) -> Result<BlobId, IntegrityError> {
        let got = self.finish()?;
        if got != *id {
            return Err(IntegrityError::IdMismatch {
                expected: id.to_string(),
                actual: got.to_string(),
            });
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO_SHA512: &str = "sha512-MJ7MSJwS1utMxA9QyQLytNDtd+5RGnx6m808qG1M2G+YndNbxf9JlnDaNCVbRbDP2DDoH2Bdz33FVC6TrpzXbw==";

    #[test]
    fn sri_of_known_input() {
        assert_eq!(Integrity::sha512_sri(b"hello world"), HELLO_SHA512);
        assert_eq!(
            Integrity::sha1_hex(b"hello world"),
            "2aae6c35c94fcfb415dbe95f408b9ce91ee846ed"
        );
    }

    #[test]
    fn checks_sha512_and_sha1() {
        let i = Integrity::parse(HELLO_SHA512).unwrap();
        assert_eq!(i.check(b"hello world").unwrap(), BlobId::of(b"hello world"));
        assert!(matches!(
            i.check(b"hello worle"),
            Err(IntegrityError::Mismatch { .. })
        ));
        let s = Integrity::from_shasum("2aae6c35c94fcfb415dbe95f408b9ce91ee846ed").unwrap();
        assert!(s.check(b"hello world").is_ok());
        assert!(s.check(b"").is_err());
    }

    #[test]
    fn strongest_algorithm_wins() {
        let sri = format!("sha1-AAAAAAAAAAAAAAAAAAAAAAAAAAA= {HELLO_SHA512}?opt bogus-xyz");
        let i = Integrity::parse(&sri).unwrap();
        assert_eq!(i.algo(), Algo::Sha512);
        assert!(i.check(b"hello world").is_ok());
    }

    #[test]
    fn dist_fallback_and_missing() {
        let i =
            Integrity::for_dist(None, Some("2aae6c35c94fcfb415dbe95f408b9ce91ee846ed")).unwrap();
        assert_eq!(i.algo(), Algo::Sha1);
        assert_eq!(
            Integrity::for_dist(None, None),
            Err(IntegrityError::Missing)
        );
        assert!(Integrity::parse("md5-abc").is_err());
        assert!(Integrity::parse("sha512-notbase64!!").is_err());
    }

    #[test]
    fn streaming_equals_one_shot_and_checks_id() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let i = Integrity::parse(&Integrity::sha512_sri(&data)).unwrap();
        let mut v = Verifier::new(i.clone());
        for chunk in data.chunks(777) {
            v.update(chunk);
        }
        assert_eq!(v.len(), data.len() as u64);
        assert_eq!(v.finish_as(&BlobId::of(&data)).unwrap(), BlobId::of(&data));
        let mut v = Verifier::new(i);
        v.update(&data);
        assert!(matches!(
            v.finish_as(&BlobId::of(b"other")),
            Err(IntegrityError::IdMismatch { .. })
        ));
        let mut v = Verifier::id_only();
        v.update(&data);
        assert_eq!(v.finish().unwrap(), BlobId::of(&data));
    }
}
