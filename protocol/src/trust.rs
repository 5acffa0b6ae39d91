//! The trust policy: which signed records a node or the `verify` CLI believes.
//!
//! Metadata that did not come straight from the upstream is accepted only when at least
//! `threshold` trusted operators signed records that agree on it. Each way a record can fail is
//! a distinct [`TrustError`], named after the attack it stops (The Update Framework's names):
//! an unknown signer or a bad signature (forgery), a sequence number older than one already seen
//! (rollback), a record past its expiry (freeze), a packument or tarball whose bytes do not match
//! the record (mix-and-match, tampering).

use std::collections::BTreeSet;

use crate::id::BlobId;
use crate::integrity::{Integrity, Verifier};
use crate::name::PackageName;
use crate::peer::PeerId;
use crate::record::{Record, RecordError, Signed, Verified};

/// Why a record, packument or tarball was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("signed by {0}, which is not a trusted operator")]
    UnknownSigner(PeerId),
    #[error("forged: {0}")]
    Forged(RecordError),
    #[error("record is about {found}, not {expected}")]
    WrongPackage { expected: String, found: String },
    #[error("rollback: {signer} record has sequence {got}, but {seen} was already seen")]
    Rollback { signer: PeerId, seen: u64, got: u64 },
    #[error("frozen: {signer} record expired at {expired_at} (unix ms)")]
    Expired { signer: PeerId, expired_at: u64 },
    #[error("mix-and-match: packument bytes have id {actual}, the record names {expected}")]
    PackumentMismatch { expected: BlobId, actual: BlobId },
    #[error("version {0} is not in the signed record")]
    UnknownVersion(String),
    #[error("tarball of {version} does not match the record's integrity: {detail}")]
    IntegrityMismatch { version: String, detail: String },
    #[error("tarball of {version} has id {actual}, the record names {expected}")]
    TarballMismatch {
        version: String,
        expected: BlobId,
        actual: BlobId,
    },
    #[error("integrity of {version} differs: {integrity:?} here, {signed:?} in the record")]
    Disagrees {
        version: String,
        integrity: String,
        signed: String,
    },
    #[error("cannot check the record: {0}")]
    Unchecked(String),
    #[error("only {have} of the {need} trusted signatures required ({})", reasons.join("; "))]
    BelowThreshold {
        need: usize,
        have: usize,
        reasons: Vec<String>,
    },
}

/// Trusted operators and how many must agree.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    trusted: BTreeSet<PeerId>,
    threshold: usize,
}

impl Policy {
    /// Trust `trusted`, requiring `threshold` (at least 1) of them to agree.
    pub fn new(trusted: impl IntoIterator<Item = PeerId>, threshold: usize) -> Policy {
        Policy {
            trusted: trusted.into_iter().collect(),
            threshold: threshold.max(1),
        }
    }

    /// The trusted operators.
    pub fn trusted(&self) -> &BTreeSet<PeerId> {
        &self.trusted
    }

    /// How many must agree.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// Whether `p` is trusted.
    pub fn trusts(&self, p: &PeerId) -> bool {
        self.trusted.contains(p)
    }

    /// Checks one signed record about `name` at time `now` (unix ms), given the highest sequence
    /// already seen from its signer for that name.
    pub fn check(
        &self,
        signed: &Signed,
        name: &PackageName,
        now: u64,
        seen: Option<u64>,
    ) -> Result<Verified<Record>, TrustError> {
        if !self.trusts(&signed.signer) {
            return Err(TrustError::UnknownSigner(signed.signer));
        }
        let v = signed.verify().map_err(TrustError::Forged)?;
        let r = v.get();
        if r.name != *name {
            return Err(TrustError::WrongPackage {
                expected: name.to_string(),
                found: r.name.to_string(),
            });
        }
        if let Some(seen) = seen
            && r.seq < seen
        {
            return Err(TrustError::Rollback {
                signer: signed.signer,
                seen,
                got: r.seq,
            });
        }
        if r.expires_at <= now {
            return Err(TrustError::Expired {
                signer: signed.signer,
                expired_at: r.expires_at,
            });
        }
        Ok(v)
    }

    /// The records (at most one per signer) that pass [`Policy::check`] and satisfy `agrees`;
    /// an error unless at least `threshold` distinct trusted signers remain.
    pub fn quorum(
        &self,
        signed: &[Signed],
        name: &PackageName,
        now: u64,
        seen: impl Fn(&PeerId) -> Option<u64>,
        agrees: impl Fn(&Verified<Record>) -> Result<(), TrustError>,
    ) -> Result<Vec<Verified<Record>>, TrustError> {
        let mut ok: Vec<Verified<Record>> = Vec::new();
        let mut failures = Vec::new();
        for s in signed {
            if ok.iter().any(|v| v.signer() == &s.signer) {
                continue;
            }
            match self
                .check(s, name, now, seen(&s.signer))
                .and_then(|v| agrees(&v).map(|()| v))
            {
                Ok(v) => ok.push(v),
                Err(e) => failures.push(e),
            }
        }
        if ok.len() >= self.threshold {
            return Ok(ok);
        }
        if ok.is_empty() && failures.len() == 1 {
            return Err(failures.remove(0));
        }
        Err(TrustError::BelowThreshold {
            need: self.threshold,
            have: ok.len(),
            reasons: if failures.is_empty() {
                vec!["no signed records".into()]
            } else {
                failures.iter().map(ToString::to_string).collect()
            },
        })
    }
}

impl Verified<Record> {
    /// Mix-and-match check: the packument bytes must be the ones the record names.
    pub fn check_packument(&self, bytes: &[u8]) -> Result<(), TrustError> {
        let actual = BlobId::of(bytes);
        if actual != self.get().packument {
            return Err(TrustError::PackumentMismatch {
                expected: self.get().packument,
                actual,
            });
        }
        Ok(())
    }

    /// Checks tarball bytes of `version` against the record: its integrity, and its CID when the
    /// record names one. Returns the tarball's id.
    pub fn check_tarball(&self, version: &str, bytes: &[u8]) -> Result<BlobId, TrustError> {
        let mut v = self.tarball_verifier(version)?;
        v.update(bytes);
        self.finish_tarball(version, v)
    }

    /// A streaming verifier for a tarball of `version`; finish with [`Self::finish_tarball`].
    pub fn tarball_verifier(&self, version: &str) -> Result<Verifier, TrustError> {
        let e = self
            .get()
            .versions
            .get(version)
            .ok_or_else(|| TrustError::UnknownVersion(version.to_owned()))?;
        let i = Integrity::parse(&e.integrity).map_err(|err| TrustError::IntegrityMismatch {
            version: version.to_owned(),
            detail: err.to_string(),
        })?;
        Ok(Verifier::new(i))
    }

    /// Completes [`Self::tarball_verifier`].
    pub fn finish_tarball(&self, version: &str, v: Verifier) -> Result<BlobId, TrustError> {
        let id = v.finish().map_err(|e| TrustError::IntegrityMismatch {
            version: version.to_owned(),
            detail: e.to_string(),
        })?;
        if let Some(expected) = self.get().versions.get(version).and_then(|e| e.tarball)
            && expected != id
        {
            return Err(TrustError::TarballMismatch {
                version: version.to_owned(),
                expected,
                actual: id,
            });
        }
        Ok(id)
    }

    /// Whether the record attests `integrity` for `version` (the npm metadata agrees).
    pub fn check_integrity(&self, version: &str, integrity: &str) -> Result<(), TrustError> {
        let e = self
            .get()
            .versions
            .get(version)
            .ok_or_else(|| TrustError::UnknownVersion(version.to_owned()))?;
        if e.integrity != integrity {
            return Err(TrustError::Disagrees {
                version: version.to_owned(),
                integrity: integrity.to_owned(),
                signed: e.integrity.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::VersionEntry;
    use ed25519_dalek::SigningKey;
    use std::collections::BTreeMap;

    const NOW: u64 = 1_700_000_100_000;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn pid(n: u8) -> PeerId {
        PeerId::from_public_key(&key(n).verifying_key())
    }

    fn record(seq: u64, packument: &[u8]) -> Record {
        let mut versions = BTreeMap::new();
        versions.insert(
            "1.0.0".to_owned(),
            VersionEntry {
                integrity: Integrity::sha512_sri(b"tgz"),
                tarball: Some(BlobId::of(b"tgz")),
            },
        );
        Record {
            name: PackageName::parse("pkg").unwrap(),
            seq,
            fetched_at: NOW - 100_000,
            expires_at: NOW + 100_000,
            packument: BlobId::of(packument),
            versions,
        }
    }

    fn name() -> PackageName {
        PackageName::parse("pkg").unwrap()
    }

    #[test]
    fn accepts_a_good_record() {
        let p = Policy::new([pid(1)], 1);
        let v = p
            .check(&record(5, b"doc").sign(&key(1)), &name(), NOW, Some(5))
            .unwrap();
        v.check_packument(b"doc").unwrap();
        assert_eq!(
            v.check_tarball("1.0.0", b"tgz").unwrap(),
            BlobId::of(b"tgz")
        );
        v.check_integrity("1.0.0", &Integrity::sha512_sri(b"tgz"))
            .unwrap();
    }

    #[test]
    fn each_attack_has_its_own_error() {
        let p = Policy::new([pid(1)], 1);
        let good = record(5, b"doc").sign(&key(1));
        // R3: unknown signer.
        let e = p.check(&record(5, b"doc").sign(&key(9)), &name(), NOW, None);
        assert_eq!(e, Err(TrustError::UnknownSigner(pid(9))));
        // R3: forged (bytes altered after signing).
        let mut forged = good.clone();
        let last = forged.body.len() - 1;
        forged.body[last] ^= 1;
        assert!(matches!(
            p.check(&forged, &name(), NOW, None),
            Err(TrustError::Forged(RecordError::BadSignature))
        ));
        // R4: rollback.
        assert!(matches!(
            p.check(&good, &name(), NOW, Some(6)),
            Err(TrustError::Rollback {
                seen: 6,
                got: 5,
                ..
            })
        ));
        // R5: freeze.
        assert!(matches!(
            p.check(&good, &name(), NOW + 200_000, None),
            Err(TrustError::Expired { .. })
        ));
        // Wrong package.
        assert!(matches!(
            p.check(&good, &PackageName::parse("other").unwrap(), NOW, None),
            Err(TrustError::WrongPackage { .. })
        ));
        let v = p.check(&good, &name(), NOW, None).unwrap();
        // R6: mix-and-match.
        assert!(matches!(
            v.check_packument(b"another revision"),
            Err(TrustError::PackumentMismatch { .. })
        ));
        // Tarball bytes that do not match.
        assert!(matches!(
            v.check_tarball("1.0.0", b"tgz!"),
            Err(TrustError::IntegrityMismatch { .. })
        ));
        assert!(matches!(
            v.check_tarball("9.9.9", b"tgz"),
            Err(TrustError::UnknownVersion(_))
        ));
        assert!(matches!(
            v.check_integrity("1.0.0", "sha512-other"),
            Err(TrustError::Disagrees { .. })
        ));
    }

    #[test]
    fn tarball_id_must_match_when_named() {
        let mut r = record(1, b"doc");
        // Integrity of the bytes matches, but the record names another tarball id.
        r.versions.get_mut("1.0.0").unwrap().tarball = Some(BlobId::of(b"not it"));
        let p = Policy::new([pid(1)], 1);
        let v = p.check(&r.sign(&key(1)), &name(), NOW, None).unwrap();
        assert!(matches!(
            v.check_tarball("1.0.0", b"tgz"),
            Err(TrustError::TarballMismatch { .. })
        ));
    }

    #[test]
    fn quorum_counts_distinct_agreeing_signers() {
        let p = Policy::new([pid(1), pid(2), pid(3)], 2);
        let doc = BlobId::of(b"doc");
        let agrees = |v: &Verified<Record>| {
            if v.get().packument == doc {
                Ok(())
            } else {
                Err(TrustError::PackumentMismatch {
                    expected: v.get().packument,
                    actual: doc,
                })
            }
        };
        let one = vec![
            record(1, b"doc").sign(&key(1)),
            record(2, b"doc").sign(&key(1)),
        ];
        let e = p.quorum(&one, &name(), NOW, |_| None, agrees).unwrap_err();
        assert!(
            matches!(
                e,
                TrustError::BelowThreshold {
                    need: 2,
                    have: 1,
                    ..
                }
            ),
            "{e}"
        );
        let two = vec![
            record(1, b"doc").sign(&key(1)),
            record(7, b"other").sign(&key(3)),
            record(1, b"doc").sign(&key(2)),
            record(1, b"doc").sign(&key(8)),
        ];
        let ok = p.quorum(&two, &name(), NOW, |_| None, agrees).unwrap();
        assert_eq!(ok.len(), 2);
        // With threshold 1 and a single bad record, the specific reason comes through.
        let p1 = Policy::new([pid(1)], 1);
        let e = p1
            .quorum(
                &[record(1, b"doc").sign(&key(1))],
                &name(),
                NOW,
                |_| Some(4),
                agrees,
            )
            .unwrap_err();
        assert!(matches!(e, TrustError::Rollback { .. }), "{e}");
    }
}
