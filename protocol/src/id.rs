//! Content ids of blobs: CIDv1, codec raw (0x55), multihash BLAKE3-256 (0x1e).
//!
//! Every blob the network moves (a tarball, a packument's bytes) is named by the BLAKE3 hash of
//! its bytes wrapped in a CID, so any peer can be asked for it and any answer checked. A
//! [`BlobId`] can only hold that one kind of CID: parsing refuses other codecs and hashes.

use std::fmt;
use std::str::FromStr;

use cid::Cid;
use multihash::Multihash;

/// Multicodec code of raw bytes.
pub const RAW_CODEC: u64 = 0x55;
/// Multihash code of BLAKE3 with a 32-byte digest.
pub const BLAKE3_CODE: u64 = 0x1e;

/// Why a string or byte slice is not a [`BlobId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("not a CID: {0}")]
    Malformed(String),
    #[error("CID is not CIDv1 raw/BLAKE3-256")]
    WrongKind,
}

/// The content id of a blob.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId([u8; 32]);

impl BlobId {
    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// The id whose BLAKE3 digest is `digest`.
    pub fn from_digest(digest: [u8; 32]) -> Self {
        Self(digest)
    }

    /// The BLAKE3 digest.
    pub fn digest(&self) -> &[u8; 32] {
        &self.0
    }

    /// The CID.
    pub fn to_cid(&self) -> Cid {
        let mh = Multihash::<64>::wrap(BLAKE3_CODE, &self.0).expect("32 bytes fit in 64");
        Cid::new_v1(RAW_CODEC, mh)
    }

    /// The CID's binary form (used as the DHT key and in signed records).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_cid().to_bytes()
    }

    /// Parses the binary form.
    pub fn from_bytes(b: &[u8]) -> Result<Self, IdError> {
        let cid = Cid::try_from(b).map_err(|e| IdError::Malformed(e.to_string()))?;
        Self::try_from(cid)
    }

    /// A short form for logs: the last 10 characters of the CID string.
    pub fn short(&self) -> String {
        let s = self.to_string();
        s[s.len() - 10..].to_owned()
    }
}

impl TryFrom<Cid> for BlobId {
    type Error = IdError;
    fn try_from(cid: Cid) -> Result<Self, IdError> {
        let mh = cid.hash();
        if cid.version() != cid::Version::V1
            || cid.codec() != RAW_CODEC
            || mh.code() != BLAKE3_CODE
            || mh.size() != 32
        {
            return Err(IdError::WrongKind);
        }
        let mut d = [0u8; 32];
        d.copy_from_slice(mh.digest());
        Ok(Self(d))
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // CIDv1 renders as multibase base32 lowercase ("bafkr4i...").
        write!(f, "{}", self.to_cid())
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", self.short())
    }
}

impl FromStr for BlobId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let cid = Cid::from_str(s).map_err(|e| IdError::Malformed(e.to_string()))?;
        Self::try_from(cid)
    }
}

impl serde::Serialize for BlobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for BlobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vector() {
        // BLAKE3("") = af1349b9...; the CID is fixed by the spec, so this pins the encoding.
        let id = BlobId::of(b"");
        assert_eq!(
            hex::encode(id.digest()),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        let s = id.to_string();
        assert!(s.starts_with("bafkr4i"), "{s}");
        assert_eq!(s.parse::<BlobId>().unwrap(), id);
        assert_eq!(BlobId::from_bytes(&id.to_bytes()).unwrap(), id);
    }

    #[test]
    fn refuses_other_cids() {
        // A CIDv1 raw sha2-256 id (what IPFS uses by default).
        let sha = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
        assert_eq!(sha.parse::<BlobId>(), Err(IdError::WrongKind));
        assert!("not-a-cid".parse::<BlobId>().is_err());
    }

    proptest! {
        #[test]
        fn round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let id = BlobId::of(&bytes);
            prop_assert_eq!(id.to_string().parse::<BlobId>().unwrap(), id);
            prop_assert_eq!(BlobId::from_bytes(&id.to_bytes()).unwrap(), id);
        }

        #[test]
        fn parsing_garbage_never_panics(s in "\\PC{0,80}", b in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = s.parse::<BlobId>();
            let _ = BlobId::from_bytes(&b);
        }
    }
}
