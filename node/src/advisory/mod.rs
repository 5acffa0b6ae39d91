//! Signed advisories and the quorum that enforces them.
//!
//! The [`AdvisoryBook`] holds the newest advisory of every operator for every package it heard
//! of: this node's own (signed with the operator key, sequence `max(last + 1, now in ms)` made
//! durable before the advisory is published) and everyone else's from gossip, each verified,
//! refused and counted by reason when it is forged, rolled back, expired, dated in the future,
//! oversized or malformed. It is bounded ([`MAX_PER_OPERATOR`], [`MAX_TOTAL`]; operators outside
//! the trust policy are evicted first) and kept in the index's `advisories` tree, so it survives
//! restarts (every entry is verified again when it is loaded).
//!
//! An advisory is *in force* for a version when at least `threshold` distinct trusted operators
//! (this node's own operator counts as trusted) hold an active (neither withdrawn nor expired)
//! advisory whose range covers it. Advisories of other operators are kept and listed, never
//! counted. The book answers the gateway through [`holds::AdvisoryHolds`].
//!
//! - `holds`: the trait the withholding side asks, and its message.
//! - `routes`: the admin API (`POST /-/open-registry/admin/advisory`, `.../withdraw`,
//!   `GET /-/open-registry/advisories`).
//!
//! The gossip task and the DHT puts are `tasks::advisories`.

pub(crate) mod holds;
pub(crate) mod routes;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use nodejs_semver::Range;
use open_registry_protocol::advisory::{
    self, Advisory, AdvisoryGroup, AdvisoryList, AdvisoryView, DEFAULT_LIFETIME_MS, Kind,
    MAX_ADVISORY_LEN,
};
use open_registry_protocol::record::{RecordError, Signable as _, Signed};
use open_registry_protocol::{PackageName, PeerId, Policy};

use crate::clock::Clock;
use crate::records::Identity;
use crate::store::{Index, IndexError};

/// Packages one operator may hold advisories about (withdrawals included, until they expire).
pub(crate) const MAX_PER_OPERATOR: usize = 64;
/// Advisories held at most, every operator together.
pub(crate) const MAX_TOTAL: usize = 10_000;
/// How far in the future an advisory may be dated (clocks differ).
pub(crate) const MAX_SKEW: Duration = Duration::from_secs(300);
/// The signed wire form's fixed part: format byte, public key, signature.
const SIGNED_OVERHEAD: usize = 97;
/// Key prefix of held advisories: `h/` + signer key (32 bytes) + name.
const HELD: &[u8] = b"h/";
/// Key prefix of this operator's last sequence per package: `s/` + name.
const SEQ: &[u8] = b"s/";

/// Why an advisory heard on gossip was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Larger than the format allows.
    Oversized,
    /// Not the format, or breaking its rules.
    Malformed,
    /// The signature does not verify under the signer's key.
    Forged,
    /// Not newer than the one held from the same operator for the package.
    RolledBack,
    /// Past its expiry.
    Expired,
    /// Dated too far in the future.
    Future,
    /// The book (or the operator's share of it) is full.
    Capacity,
}

impl Refusal {
    /// The counter's name.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::Oversized => "oversized",
            Refusal::Malformed => "malformed",
            Refusal::Forged => "forged",
            Refusal::RolledBack => "rolled_back",
            Refusal::Expired => "expired",
            Refusal::Future => "future",
            Refusal::Capacity => "capacity",
        }
    }
}

/// What taking an advisory did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    /// A newer one replaced what was held (or it is the first).
    New,
    /// The one held, heard again.
    Again,
}

/// An advisory held with its signed wire bytes.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub advisory: Advisory,
    pub wire: Vec<u8>,
    /// The advisory's range, parsed once (a verified advisory's range always parses).
    range: Option<Range>,
}

impl Held {
    fn new(advisory: Advisory, wire: Vec<u8>) -> Held {
        let range = Range::parse(&advisory.range).ok();
        Held {
            advisory,
            wire,
            range,
        }
    }
}

/// Why this operator's own advisory could not be signed or withdrawn.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OwnError {
    /// The request breaks the format's rules.
    #[error("{0}")]
    Invalid(String),
    /// Nothing to withdraw.
    #[error("{0}")]
    NotFound(String),
    /// The operator's share of the book is full.
    #[error("this operator already holds advisories about {MAX_PER_OPERATOR} packages")]
    Capacity,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] IndexError),
}

impl From<sled::Error> for OwnError {
    fn from(e: sled::Error) -> OwnError {
        OwnError::Store(e.into())
    }
}

/// What the operator asks to sign.
#[derive(Debug, Clone)]
pub(crate) struct Draft {
    pub name: PackageName,
    pub range: String,
    pub kind: Kind,
    pub reason: String,
    pub url: Option<String>,
}

/// Which of its own advisories the operator withdraws.
#[derive(Debug, Clone)]
pub(crate) enum Which {
    /// The advisory about this package (when a range is given, it must be the advisory's).
    Name(PackageName, Option<String>),
    /// The advisory with this short id.
    Id(String),
}

type ByName = HashMap<PackageName, BTreeMap<PeerId, Held>>;

/// Every operator's newest advisory per package, and the quorum over them.
#[derive(Debug)]
pub(crate) struct AdvisoryBook {
    me: PeerId,
    policy: Policy,
    threshold: usize,
    clock: Clock,
    tree: sled::Tree,
    // A std Mutex: never held across an await.
    held: Mutex<ByName>,
    refused: Mutex<BTreeMap<String, u64>>,
    /// Serialises this operator's own signing (sequence, store, flush).
    own: tokio::sync::Mutex<()>,
}

fn held_key(signer: &PeerId, name: &PackageName) -> Vec<u8> {
    let mut k = HELD.to_vec();
    k.extend_from_slice(signer.key_bytes());
    k.extend_from_slice(name.as_str().as_bytes());
    k
}

fn seq_key(name: &PackageName) -> Vec<u8> {
    let mut k = SEQ.to_vec();
    k.extend_from_slice(name.as_str().as_bytes());
    k
}

impl AdvisoryBook {
    /// The book of operator `me`, trusting `policy`'s operators besides itself and enforcing
    /// what `threshold` of them sign; what the index's `advisories` tree holds is verified
    /// again and loaded (expired and invalid entries are dropped).
    pub(crate) fn open(
        index: &Index,
        me: PeerId,
        policy: Policy,
        threshold: usize,
        clock: Clock,
    ) -> Result<AdvisoryBook, IndexError> {
        let tree = index.tree("advisories")?;
        let now = clock.now_ms();
        let mut held: ByName = HashMap::new();
        let mut dropped = Vec::new();
        for kv in tree.scan_prefix(HELD) {
            let (k, v) = kv?;
            let ok = Signed::from_bytes(&v)
                .ok()
                .and_then(|s| Some((s.signer, s.verify_as::<Advisory>().ok()?)))
                .filter(|(signer, a)| {
                    held_key(signer, &a.get().name) == k.as_ref() && now < a.get().expires_at_ms
                });
            match ok {
                Some((signer, a)) => {
                    held.entry(a.get().name.clone())
                        .or_default()
                        .insert(signer, Held::new(a.get().clone(), v.to_vec()));
                }
                None => dropped.push(k),
            }
        }
        for k in dropped {
            tree.remove(k)?;
        }
        Ok(AdvisoryBook {
            me,
            policy,
            threshold: threshold.max(1),
            clock,
            tree,
            held: Mutex::new(held),
            refused: Mutex::new(BTreeMap::new()),
            own: tokio::sync::Mutex::new(()),
        })
    }

    /// This node's operator.
    pub(crate) fn me(&self) -> PeerId {
        self.me
    }

    /// Whether `p` counts towards the quorum: this node's operator or a trusted one.
    pub(crate) fn trusts(&self, p: &PeerId) -> bool {
        *p == self.me || self.policy.trusts(p)
    }

    /// Everything refused since start, by reason.
    pub(crate) fn refused(&self) -> BTreeMap<String, u64> {
        self.refused.lock().expect("refused poisoned").clone()
    }

    fn refuse(&self, why: Refusal) -> Refusal {
        *self
            .refused
            .lock()
            .expect("refused poisoned")
            .entry(why.label().to_owned())
            .or_default() += 1;
        why
    }

    /// Takes an advisory heard on gossip, if it verifies, is current and is newer than the one
    /// held from its operator for its package. Refusals are counted by reason.
    pub(crate) fn take(&self, wire: &[u8]) -> Result<Taken, Refusal> {
        let r = self.check(wire);
        r.map_err(|why| self.refuse(why))
    }

    fn check(&self, wire: &[u8]) -> Result<Taken, Refusal> {
        if wire.len() > MAX_ADVISORY_LEN + SIGNED_OVERHEAD {
            return Err(Refusal::Oversized);
        }
        let signed = Signed::from_bytes(wire).map_err(|_| Refusal::Malformed)?;
        let signer = signed.signer;
        let a = match signed.verify_as::<Advisory>() {
            Ok(v) => v.get().clone(),
            Err(RecordError::BadSignature | RecordError::BadKey) => return Err(Refusal::Forged),
            Err(_) => return Err(Refusal::Malformed),
        };
        let now = self.clock.now_ms();
        if a.at_ms > now + MAX_SKEW.as_millis() as u64 {
            return Err(Refusal::Future);
        }
        if a.expires_at_ms <= now {
            return Err(Refusal::Expired);
        }
        let mut held = self.held.lock().expect("advisories poisoned");
        self.prune_locked(&mut held, now);
        if let Some(h) = held.get(&a.name).and_then(|m| m.get(&signer)) {
            if h.wire == wire {
                return Ok(Taken::Again);
            }
            if a.seq <= h.advisory.seq {
                return Err(Refusal::RolledBack);
            }
        } else {
            self.make_room(&mut held, &signer)?;
        }
        // Best effort on disk for what others signed (sled flushes on its own); this node's
        // own advisories are flushed before they are published (`sign`).
        if let Err(e) = self.tree.insert(held_key(&signer, &a.name), wire) {
            tracing::warn!(error = %e, "could not store an advisory");
        }
        held.entry(a.name.clone())
            .or_default()
            .insert(signer, Held::new(a, wire.to_vec()));
        Ok(Taken::New)
    }

    /// Whether there is room for one more advisory of `signer` about a package it has none
    /// about yet, and which untrusted advisory must make way for it.
    fn room(
        &self,
        held: &ByName,
        signer: &PeerId,
    ) -> Result<Option<(PackageName, PeerId)>, Refusal> {
        let of_signer = held.values().filter(|m| m.contains_key(signer)).count();
        if of_signer >= MAX_PER_OPERATOR {
            return Err(Refusal::Capacity);
        }
        let total: usize = held.values().map(BTreeMap::len).sum();
        if total < MAX_TOTAL {
            return Ok(None);
        }
        if !self.trusts(signer) {
            return Err(Refusal::Capacity);
        }
        // The untrusted advisory that expires first makes way.
        held.iter()
            .flat_map(|(n, m)| m.iter().map(move |(p, h)| (n, p, h.advisory.expires_at_ms)))
            .filter(|(_, p, _)| !self.trusts(p))
            .min_by_key(|(_, _, e)| *e)
            .map(|(n, p, _)| Some((n.clone(), *p)))
            .ok_or(Refusal::Capacity)
    }

    /// Makes room for one more advisory of `signer` ([`AdvisoryBook::room`]).
    fn make_room(&self, held: &mut ByName, signer: &PeerId) -> Result<(), Refusal> {
        if let Some((name, p)) = self.room(held, signer)? {
            self.remove_locked(held, &name, &p);
        }
        Ok(())
    }

    fn remove_locked(&self, held: &mut ByName, name: &PackageName, p: &PeerId) {
        if let Some(m) = held.get_mut(name) {
            m.remove(p);
            if m.is_empty() {
                held.remove(name);
            }
        }
        if let Err(e) = self.tree.remove(held_key(p, name)) {
            tracing::warn!(error = %e, "could not drop an advisory");
        }
    }

    fn prune_locked(&self, held: &mut ByName, now: u64) {
        let expired: Vec<(PackageName, PeerId)> = held
            .iter()
            .flat_map(|(n, m)| {
                m.iter()
                    .filter(|(_, h)| h.advisory.expires_at_ms <= now)
                    .map(move |(p, _)| (n.clone(), *p))
            })
            .collect();
        for (n, p) in expired {
            self.remove_locked(held, &n, &p);
        }
    }

    /// Drops what expired.
    pub(crate) fn prune(&self) {
        let now = self.clock.now_ms();
        let mut held = self.held.lock().expect("advisories poisoned");
        self.prune_locked(&mut held, now);
    }

    /// Signs this operator's advisory about `d.name` (replacing its earlier one), makes it
    /// durable, and returns it with its wire bytes for publishing.
    pub(crate) async fn sign(
        &self,
        index: &Index,
        identity: &Identity,
        d: Draft,
    ) -> Result<Held, OwnError> {
        let _own = self.own.lock().await;
        let now = self.clock.now_ms();
        let a = Advisory {
            name: d.name,
            range: d.range.trim().to_owned(),
            kind: d.kind,
            reason: d.reason.trim().to_owned(),
            url: d.url.map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()),
            seq: 0,
            at_ms: now,
            expires_at_ms: now + DEFAULT_LIFETIME_MS,
            withdrawn: false,
        };
        if a.reason.is_empty() {
            return Err(OwnError::Invalid(
                "an advisory needs a reason (--reason)".into(),
            ));
        }
        self.sign_own(index, identity, a, now).await
    }

    /// Signs a withdrawal of this operator's advisory (`which`), makes it durable and returns
    /// it for publishing.
    pub(crate) async fn withdraw(
        &self,
        index: &Index,
        identity: &Identity,
        which: Which,
    ) -> Result<Held, OwnError> {
        let _own = self.own.lock().await;
        let now = self.clock.now_ms();
        let current = {
            let held = self.held.lock().expect("advisories poisoned");
            let mine = |(n, m): (&PackageName, &BTreeMap<PeerId, Held>)| {
                m.get(&self.me).map(|h| (n.clone(), h.clone()))
            };
            match &which {
                Which::Name(name, _) => held.get_key_value(name).and_then(mine),
                Which::Id(id) => held
                    .iter()
                    .filter_map(mine)
                    .find(|(_, h)| advisory::short_id(&h.wire) == *id),
            }
        };
        let what = match &which {
            Which::Name(n, _) => n.to_string(),
            Which::Id(id) => format!("id {id}"),
        };
        let Some((_, h)) = current.filter(|(_, h)| h.advisory.active(now)) else {
            return Err(OwnError::NotFound(format!(
                "this operator has no advisory in force about {what}"
            )));
        };
        if let Which::Name(_, Some(range)) = &which
            && range.trim() != h.advisory.range
        {
            return Err(OwnError::Invalid(format!(
                "this operator's advisory about {} covers {:?}, not {range:?}",
                h.advisory.name, h.advisory.range
            )));
        }
        let a = Advisory {
            at_ms: now,
            expires_at_ms: (now + DEFAULT_LIFETIME_MS).max(h.advisory.expires_at_ms),
            withdrawn: true,
            ..h.advisory
        };
        self.sign_own(index, identity, a, now).await
    }

    async fn sign_own(
        &self,
        index: &Index,
        identity: &Identity,
        mut a: Advisory,
        now: u64,
    ) -> Result<Held, OwnError> {
        let sk = seq_key(&a.name);
        let last = self
            .tree
            .get(&sk)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes);
        let held_seq = {
            let held = self.held.lock().expect("advisories poisoned");
            let h = held.get(&a.name).and_then(|m| m.get(&self.me));
            if h.is_none() {
                self.room(&held, &self.me).map_err(|_| OwnError::Capacity)?;
            }
            h.map(|h| h.advisory.seq)
        };
        let last = last.max(held_seq);
        a.seq = last.map_or(now, |l| (l + 1).max(now));
        a.check().map_err(|e| match e {
            RecordError::Malformed(m) => OwnError::Invalid(m),
            e => OwnError::Invalid(e.to_string()),
        })?;
        let wire = a.sign(identity.signing_key()).to_bytes();
        self.tree.insert(&sk, &a.seq.to_be_bytes())?;
        self.tree
            .insert(held_key(&self.me, &a.name), wire.as_slice())?;
        index.flush().await?;
        let h = Held::new(a, wire);
        let mut held = self.held.lock().expect("advisories poisoned");
        if held
            .get(&h.advisory.name)
            .is_none_or(|m| !m.contains_key(&self.me))
        {
            // Checked above; another operator's advisory may have come in since.
            let _ = self.make_room(&mut held, &self.me);
        }
        held.entry(h.advisory.name.clone())
            .or_default()
            .insert(self.me, h.clone());
        tracing::info!(advisory = %h.advisory, "signed an advisory");
        Ok(h)
    }

    /// The wire bytes of this operator's own advisories and withdrawals held now, to publish
    /// again.
    pub(crate) fn own_wires(&self) -> Vec<Vec<u8>> {
        let now = self.clock.now_ms();
        let mut held = self.held.lock().expect("advisories poisoned");
        self.prune_locked(&mut held, now);
        held.values()
            .filter_map(|m| m.get(&self.me).map(|h| h.wire.clone()))
            .collect()
    }

    /// The trusted advisories covering `version` of `name`, if at least `threshold` of them do.
    #[cfg(test)]
    pub(crate) fn in_force(&self, name: &PackageName, version: &str) -> Option<holds::Enforced> {
        let now = self.clock.now_ms();
        let held = self.held.lock().expect("advisories poisoned");
        self.enforced_locked(&held, name, version, now)
    }

    /// The JSON view of `p`'s advisory `h`.
    pub(crate) fn view(&self, p: &PeerId, h: &Held) -> AdvisoryView {
        AdvisoryView {
            id: advisory::short_id(&h.wire),
            operator: p.to_string(),
            trusted: self.trusts(p),
            this_node: *p == self.me,
            name: h.advisory.name.to_string(),
            range: h.advisory.range.clone(),
            kind: h.advisory.kind,
            reason: h.advisory.reason.clone(),
            url: h.advisory.url.clone(),
            seq: h.advisory.seq,
            at_ms: h.advisory.at_ms,
            expires_at_ms: h.advisory.expires_at_ms,
            withdrawn: h.advisory.withdrawn,
            signed: base64::engine::general_purpose::STANDARD.encode(&h.wire),
        }
    }

    /// Everything held, as `GET /-/open-registry/advisories` lists it; `all` adds the
    /// untrusted operators' advisories and the withdrawals.
    pub(crate) fn list(&self, all: bool) -> AdvisoryList {
        let now = self.clock.now_ms();
        let mut held = self.held.lock().expect("advisories poisoned");
        self.prune_locked(&mut held, now);
        let view = |p: &PeerId, h: &Held| self.view(p, h);
        let mut out = AdvisoryList {
            threshold: self.threshold,
            refused: self.refused(),
            ..AdvisoryList::default()
        };
        for (name, m) in held.iter() {
            let active: Vec<(&PeerId, &Held)> =
                m.iter().filter(|(_, h)| h.advisory.active(now)).collect();
            let trusted: Vec<(&PeerId, &Held, Option<&Range>)> = active
                .iter()
                .filter(|(p, _)| self.trusts(p))
                .map(|(p, h)| (*p, *h, h.range.as_ref()))
                .collect();
            let mut ranges: Vec<&str> = trusted
                .iter()
                .map(|(_, h, _)| h.advisory.range.as_str())
                .collect();
            ranges.sort_unstable();
            ranges.dedup();
            for range in ranges {
                let Ok(r) = Range::parse(range) else { continue };
                let signers: Vec<AdvisoryView> = trusted
                    .iter()
                    .filter(|(_, h, theirs)| {
                        h.advisory.range == range || theirs.is_some_and(|t| t.allows_all(&r))
                    })
                    .map(|(p, h, _)| view(p, h))
                    .collect();
                out.advisories.push(AdvisoryGroup {
                    name: name.to_string(),
                    range: range.to_owned(),
                    in_force: signers.len() >= self.threshold,
                    signers,
                });
            }
            if all {
                out.untrusted.extend(
                    active
                        .iter()
                        .filter(|(p, _)| !self.trusts(p))
                        .map(|(p, h)| view(p, h)),
                );
                out.withdrawn.extend(
                    m.iter()
                        .filter(|(_, h)| h.advisory.withdrawn)
                        .map(|(p, h)| view(p, h)),
                );
            }
        }
        out.advisories.sort_by(|a, b| {
            (!a.in_force, &a.name, &a.range).cmp(&(!b.in_force, &b.name, &b.range))
        });
        let key = |v: &AdvisoryView| (v.name.clone(), v.operator.clone());
        out.untrusted.sort_by_key(key);
        out.withdrawn.sort_by_key(key);
        out
    }

    /// The advisory this node's operator holds about `name` with its wire bytes, if any.
    #[cfg(test)]
    pub(crate) fn own(&self, name: &PackageName) -> Option<Held> {
        let held = self.held.lock().expect("advisories poisoned");
        held.get(name).and_then(|m| m.get(&self.me)).cloned()
    }
}
