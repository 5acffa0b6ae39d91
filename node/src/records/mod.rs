//! Signed mirror records, as a node keeps them: signing its own, storing everyone's.
//!
//! The node signs a new record each time it ingests or revalidates a packument from the
//! upstream, and again when it stores a tarball (the record then names the tarball's CID).
//! Sequence numbers are `max(last + 1, now in ms)` and the last one is flushed to sled before the
//! record is published, so they strictly increase per name even across restarts and crashes.
//!
//! Trees: `records` (name, 0x00, signer key → the signed record's wire bytes; the newest per
//! signer), `record_blobs` (the blob id of those wire bytes → the bytes, so peers can fetch a
//! record by the id a DHT pointer names), `record_seq` (name → our last sequence),
//! `record_seen` (name, 0x00, signer key → highest sequence seen, for rollback checks).

pub(crate) mod identity;
mod tarballs;

use std::collections::HashMap;
use std::time::Duration;

use open_registry_protocol::packument::DistRef;
use open_registry_protocol::record::{
    Record, RecordError, Signed, VersionEntry, attested_integrity,
};
use open_registry_protocol::{BlobId, PackageName, PeerId};
use tokio::sync::Mutex;

pub use identity::{Identity, KEY_FILE};

/// Why a record was not signed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SignError {
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The packument's contents do not fit a record (too many versions, a string too long
    /// for the encoding): it is served unsigned.
    #[error("the record would not fit its encoding: {0}")]
    Unsignable(#[from] RecordError),
}

use crate::clock::Clock;
use crate::store::{Index, IndexError};

/// The signer and record store of one node.
#[derive(Debug)]
pub(crate) struct Records {
    identity: Identity,
    ttl: Duration,
    clock: Clock,
    records: sled::Tree,
    blobs: sled::Tree,
    seqs: sled::Tree,
    seen: sled::Tree,
    /// Serializes signing: each signature reads and bumps a sequence number, and a re-signature
    /// reads the record it changes. tokio Mutex: held across the flush that makes the new
    /// sequence durable.
    signing: Mutex<()>,
    /// Version → tarball id per package, as the stored records name them (decoded once).
    tarballs: tarballs::TarballIds,
}

fn key(name: &PackageName, signer: &PeerId) -> Vec<u8> {
    let mut k = name.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(signer.key_bytes());
    k
}

fn prefix(name: &PackageName) -> Vec<u8> {
    let mut k = name.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

impl Records {
    /// Opens the record trees in the node's index; sequences are read off `clock`.
    pub(crate) fn open(
        index: &Index,
        identity: Identity,
        ttl: Duration,
        clock: Clock,
    ) -> Result<Records, IndexError> {
        Ok(Records {
            identity,
            ttl,
            clock,
            records: index.tree("records")?,
            blobs: index.tree("record_blobs")?,
            seqs: index.tree("record_seq")?,
            seen: index.tree("record_seen")?,
            signing: Mutex::new(()),
            tarballs: tarballs::TarballIds::default(),
        })
    }

    /// This node's operator id.
    pub(crate) fn signer(&self) -> PeerId {
        self.identity.peer_id()
    }

    /// Signs and stores a record for a packument revision. `dists` is the packument's tarball
    /// index; `tarball` looks up the CID of a stored tarball file.
    pub(crate) async fn sign_packument(
        &self,
        index: &Index,
        name: &PackageName,
        packument: BlobId,
        dists: &HashMap<String, DistRef>,
        fetched_at: u64,
    ) -> Result<Signed, SignError> {
        // Under the signing lock, so that the tarball ids read here cannot be overtaken by a
        // concurrent `add_tarball` signing from an older record.
        let _guard = self.signing.lock().await;
        let mut versions = std::collections::BTreeMap::new();
        for (file, d) in dists {
            let Some(integrity) = attested_integrity(d) else {
                continue;
            };
            let tarball = index.tarball(name, file)?;
            versions.insert(d.version.clone(), VersionEntry { integrity, tarball });
        }
        let record = Record {
            name: name.clone(),
            seq: 0,
            fetched_at,
            expires_at: fetched_at + self.ttl.as_millis() as u64,
            packument,
            versions,
        };
        self.publish(index, record).await
    }

    /// Re-signs our newest record for `name` so that it names the stored tarball of `version`.
    /// Nothing happens when there is no record or it already names that tarball.
    pub(crate) async fn add_tarball(
        &self,
        index: &Index,
        name: &PackageName,
        version: &str,
        id: BlobId,
    ) -> Result<Option<Signed>, SignError> {
        // Read, change and sign under one lock: two tarballs of one package stored at once
        // must both end up in the record (the second signature starts from the first).
        let _guard = self.signing.lock().await;
        let Some(ours) = self.own_record(name)? else {
            return Ok(None);
        };
        let mut record = ours;
        match record.versions.get_mut(version) {
            Some(e) if e.tarball != Some(id) => e.tarball = Some(id),
            _ => return Ok(None),
        }
        self.publish(index, record).await.map(Some)
    }

    /// Our newest record for `name`, decoded (our own bytes: read without re-verifying).
    pub(crate) fn own_record(&self, name: &PackageName) -> Result<Option<Record>, IndexError> {
        let Some(b) = self.records.get(key(name, &self.signer()))? else {
            return Ok(None);
        };
        let decoded = Signed::from_bytes(&b).and_then(|s| Record::decode(&s.body));
        match decoded {
            Ok(r) => Ok(Some(r)),
            // A damaged record of ours is replaced by the next signature, not trusted.
            Err(e) => {
                tracing::warn!(%name, error = %e, "stored record is damaged");
                Ok(None)
            }
        }
    }

    /// Signs `record` with the next sequence number and stores it. The caller holds the
    /// signing lock from before it read anything the record is built from.
    async fn publish(&self, index: &Index, mut record: Record) -> Result<Signed, SignError> {
        // Before a sequence number is spent: a record that cannot be encoded is never signed.
        record.check()?;
        let last = self
            .seqs
            .get(record.name.as_str())
            .map_err(IndexError::from)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        record.seq = (last + 1).max(self.clock.now_ms());
        // The sequence is durable before any record carrying it exists.
        self.seqs
            .insert(record.name.as_str(), &record.seq.to_be_bytes())
            .map_err(IndexError::from)?;
        index.flush().await?;
        let signed = record.try_sign(self.identity.signing_key())?;
        self.put(&record.name, &signed)?;
        index.flush().await?;
        tracing::debug!(name = %record.name, seq = record.seq, "signed record");
        Ok(signed)
    }

    /// Every stored record for `name` (ours and, once received, other operators'), as they are
    /// on disk: readers verify them.
    pub(crate) fn list(&self, name: &PackageName) -> Result<Vec<Signed>, IndexError> {
        let mut out = Vec::new();
        for kv in self.records.scan_prefix(prefix(name)) {
            let (_, v) = kv?;
            match Signed::from_bytes(&v) {
                Ok(s) => out.push(s),
                Err(e) => tracing::warn!(%name, error = %e, "unreadable stored record skipped"),
            }
        }
        Ok(out)
    }

    /// The JSON document served at `/-/open-registry/records/<name>`.
    pub(crate) fn document(&self, name: &PackageName) -> Result<Option<Vec<u8>>, IndexError> {
        let list = self.list(name)?;
        if list.is_empty() {
            return Ok(None);
        }
        let doc = serde_json::json!({
            "name": name.as_str(),
            "records": list.iter().map(Signed::to_json).collect::<Vec<_>>(),
        });
        Ok(Some(serde_json::to_vec(&doc).expect("json encodes")))
    }

    /// The highest sequence seen from `signer` for `name`.
    pub(crate) fn seen(
        &self,
        name: &PackageName,
        signer: &PeerId,
    ) -> Result<Option<u64>, IndexError> {
        Ok(self
            .seen
            .get(key(name, signer))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes))
    }

    /// Stores another operator's record that the caller verified under the trust policy, and
    /// remembers its sequence for rollback checks. Older records than the stored one are ignored.
    pub(crate) async fn store_verified(
        &self,
        index: &Index,
        signed: &Signed,
        seq: u64,
        name: &PackageName,
    ) -> Result<bool, IndexError> {
        if self.seen(name, &signed.signer)?.is_some_and(|s| s >= seq) {
            return Ok(false);
        }
        self.seen
            .insert(key(name, &signed.signer), &seq.to_be_bytes())?;
        self.put(name, signed)?;
        index.flush().await?;
        Ok(true)
    }

    /// Stores `signed` as the newest record of its signer for `name`, and its wire bytes under
    /// their blob id (dropping the replaced record's).
    fn put(&self, name: &PackageName, signed: &Signed) -> Result<(), IndexError> {
        let wire = signed.to_bytes();
        let id = BlobId::of(&wire);
        if let Some(old) = self
            .records
            .insert(key(name, &signed.signer), wire.clone())?
        {
            self.blobs.remove(BlobId::of(&old).to_bytes())?;
        }
        self.blobs.insert(id.to_bytes(), wire)?;
        self.tarballs.changed(name);
        Ok(())
    }

    /// A stored record's wire bytes, by their blob id (what DHT pointers name).
    pub(crate) fn blob(&self, id: &BlobId) -> Result<Option<Vec<u8>>, IndexError> {
        Ok(self.blobs.get(id.to_bytes())?.map(|v| v.to_vec()))
    }

    /// Our own newest record of every package (to republish their pointers after a restart).
    pub(crate) fn own_latest(&self) -> Result<Vec<Signed>, IndexError> {
        let me = self.signer();
        let mut out = Vec::new();
        for kv in self.records.iter() {
            let (k, v) = kv?;
            if k.ends_with(me.key_bytes())
                && let Ok(s) = Signed::from_bytes(&v)
                && s.signer == me
            {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// The tarball id that stored records (ours, or trusted operators' verified ones) name for
    /// `version` of `name`, if any.
    pub(crate) fn tarball_id(
        &self,
        name: &PackageName,
        version: &str,
    ) -> Result<Option<BlobId>, IndexError> {
        let ids = self.tarballs.get_or_build(name, || self.list(name))?;
        Ok(ids.get(version).copied())
    }

    /// This node's identity (it signs records and DHT pointers).
    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::now_ms;
    use open_registry_protocol::{Integrity, Policy};

    fn dists() -> HashMap<String, DistRef> {
        let mut m = HashMap::new();
        m.insert(
            "p-1.0.0.tgz".to_owned(),
            DistRef {
                version: "1.0.0".into(),
                integrity: Some(Integrity::sha512_sri(b"one")),
                shasum: None,
                tarball: None,
            },
        );
        m.insert(
            "p-0.1.0.tgz".to_owned(),
            DistRef {
                version: "0.1.0".into(),
                integrity: None,
                shasum: Some(Integrity::sha1_hex(b"old")),
                tarball: None,
            },
        );
        m
    }

    #[tokio::test]
    async fn signs_increasing_records_that_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let name = PackageName::parse("p").unwrap();
        let id = Identity::from_seed([5; 32]);
        let policy = Policy::new([id.peer_id()], 1);
        let first_seq;
        {
            let index = Index::open(&dir.path().join("db"), crate::clock::Clock::system()).unwrap();
            let r = Records::open(
                &index,
                id.clone(),
                Duration::from_secs(3600),
                Clock::system(),
            )
            .unwrap();
            let s1 = r
                .sign_packument(&index, &name, BlobId::of(b"doc"), &dists(), now_ms())
                .await
                .unwrap();
            let v1 = policy.check(&s1, &name, now_ms(), None).unwrap();
            first_seq = v1.get().seq;
            assert_eq!(v1.get().versions.len(), 2);
            assert_eq!(
                v1.get().versions["0.1.0"].integrity,
                format!("sha1-{}", {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD
                        .encode(hex::decode(Integrity::sha1_hex(b"old")).unwrap())
                })
            );
            // Read (and cached) before the tarball is stored: no id yet.
            assert_eq!(r.tarball_id(&name, "1.0.0").unwrap(), None);
            // Storing a tarball re-signs with its CID and a higher sequence.
            let s2 = r
                .add_tarball(&index, &name, "1.0.0", BlobId::of(b"one"))
                .await
                .unwrap()
                .unwrap();
            let v2 = policy.check(&s2, &name, now_ms(), Some(first_seq)).unwrap();
            assert!(v2.get().seq > first_seq);
            assert_eq!(
                v2.check_tarball("1.0.0", b"one").unwrap(),
                BlobId::of(b"one")
            );
            assert_eq!(
                r.tarball_id(&name, "1.0.0").unwrap(),
                Some(BlobId::of(b"one")),
                "the re-signed record's tarball is not seen"
            );
            assert!(
                r.add_tarball(&index, &name, "1.0.0", BlobId::of(b"one"))
                    .await
                    .unwrap()
                    .is_none()
            );
            assert_eq!(r.list(&name).unwrap().len(), 1);
        }
        let index = Index::open(&dir.path().join("db"), crate::clock::Clock::system()).unwrap();
        let r = Records::open(&index, id, Duration::from_secs(3600), Clock::system()).unwrap();
        let s3 = r
            .sign_packument(&index, &name, BlobId::of(b"doc2"), &dists(), 0)
            .await
            .unwrap();
        let seq3 = s3.verify().unwrap().get().seq;
        assert!(seq3 > first_seq + 1, "sequence went back after restart");
        let doc: serde_json::Value =
            serde_json::from_slice(&r.document(&name).unwrap().unwrap()).unwrap();
        assert_eq!(doc["records"].as_array().unwrap().len(), 1);
        assert!(
            r.document(&PackageName::parse("q").unwrap())
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn tarballs_stored_at_once_all_end_up_in_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("db"), crate::clock::Clock::system()).unwrap();
        let r = Records::open(
            &index,
            Identity::from_seed([3; 32]),
            Duration::from_secs(60),
            Clock::system(),
        )
        .unwrap();
        let name = PackageName::parse("many").unwrap();
        let versions: Vec<String> = (0..8).map(|i| format!("1.0.{i}")).collect();
        let dists: HashMap<String, DistRef> = versions
            .iter()
            .map(|v| {
                let d = DistRef {
                    version: v.clone(),
                    integrity: Some(Integrity::sha512_sri(v.as_bytes())),
                    shasum: None,
                    tarball: None,
                };
                (format!("many-{v}.tgz"), d)
            })
            .collect();
        r.sign_packument(&index, &name, BlobId::of(b"doc"), &dists, now_ms())
            .await
            .unwrap();
        // Every re-signature reads the record before it waits for the others: each must start
        // from the one signed before it, or all but the last tarball are lost.
        let signed = futures::future::join_all(
            versions
                .iter()
                .map(|v| r.add_tarball(&index, &name, v, BlobId::of(v.as_bytes()))),
        )
        .await;
        assert!(signed.iter().all(|s| matches!(s, Ok(Some(_)))));
        let record = r.own_record(&name).unwrap().unwrap();
        for v in &versions {
            assert_eq!(
                record.versions[v].tarball,
                Some(BlobId::of(v.as_bytes())),
                "{v} lost from the record"
            );
        }
    }

    #[tokio::test]
    async fn foreign_records_keep_the_newest_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("db"), crate::clock::Clock::system()).unwrap();
        let r = Records::open(
            &index,
            Identity::from_seed([1; 32]),
            Duration::from_secs(60),
            Clock::system(),
        )
        .unwrap();
        let other = Identity::from_seed([2; 32]);
        let name = PackageName::parse("p").unwrap();
        let rec = |seq| Record {
            name: name.clone(),
            seq,
            fetched_at: 0,
            expires_at: u64::MAX,
            packument: BlobId::of(b"d"),
            versions: Default::default(),
        };
        let s5 = rec(5).sign(other.signing_key());
        assert!(r.store_verified(&index, &s5, 5, &name).await.unwrap());
        let s4 = rec(4).sign(other.signing_key());
        assert!(!r.store_verified(&index, &s4, 4, &name).await.unwrap());
        assert_eq!(r.seen(&name, &other.peer_id()).unwrap(), Some(5));
        assert_eq!(r.list(&name).unwrap(), vec![s5]);
    }
}
