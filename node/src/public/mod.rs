//! The network's operation in public: every node's signed reports and operator statements,
//! kept and added up into one view of the network.
//!
//! - [`Book`]: the newest verified report and statement of every operator heard from (this
//!   node's own included), bounded and expiring, and the count of everything refused.
//! - `report`: [`Reporter`] makes this node's report from its counters every window.
//! - `statement`: [`OwnStatement`] signs the operator's `statement.toml` with a strictly
//!   increasing sequence.
//! - `view`: the [`NetworkView`](open_registry_protocol::network::NetworkView) (trusted totals,
//!   others apart) and its Prometheus gauges.
//!
//! - [`Views`]: that view with what this node withholds added (advisories in force and
//!   pending, versions in their release cooldown), as `network.json` and the gauges serve it.
//!
//! The gossip task that moves reports and statements between nodes is `tasks::public`.

mod report;
mod statement;
#[cfg(test)]
mod tests;
mod view;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use open_registry_protocol::network::{NetworkView, Withholding};
use open_registry_protocol::record::{RecordError, Signed};
use open_registry_protocol::report::{MAX_REPORT_LEN, Report};
use open_registry_protocol::statement::{MAX_STATEMENT_LEN, SignedStatement};
use open_registry_protocol::{PeerId, Policy};

use crate::advisory::AdvisoryBook;
use crate::clock::Clock;
use crate::withhold::Holds;

pub(crate) use report::{Gathered, Reporter};
pub(crate) use statement::OwnStatement;
pub(crate) use view::prometheus;

/// Operators held at most (reports and statements each).
pub(crate) const MAX_OPERATORS: usize = 1024;
/// A report is dropped this many of its windows after it was made.
pub(crate) const EXPIRE_WINDOWS: u64 = 4;
/// A report is online for this many of its windows after it was made.
pub(crate) const ONLINE_WINDOWS: u64 = 2;
/// How far in the future a report or statement may be dated (clocks differ).
pub(crate) const MAX_SKEW: Duration = Duration::from_secs(300);
/// The longest window a report may claim (a longer one would keep a node "online" for long).
pub(crate) const MAX_WINDOW: Duration = Duration::from_secs(3600);
/// A statement not heard again for this long is dropped (nodes gossip theirs every window).
pub(crate) const STATEMENT_KEEP: Duration = Duration::from_secs(24 * 3600);
/// The signed wire form's fixed part: format byte, public key, signature.
const SIGNED_OVERHEAD: usize = 97;

/// Why a report or statement heard on gossip was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Larger than the format allows.
    Oversized,
    /// Not the format.
    Malformed,
    /// The signature does not verify under the signer's key.
    Forged,
    /// Not newer than the one held from the same operator (a replay or a rollback).
    RolledBack,
    /// Too old to say anything about now.
    Expired,
    /// Dated too far in the future.
    Future,
    /// The book is full and the sender is not trusted.
    Capacity,
}

impl Refusal {
    fn label(self) -> &'static str {
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

/// What a statement taken on gossip did to the book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    /// A newer one replaced what was held (or it is the first).
    New,
    /// The one held, heard again.
    Again,
}

/// A value held with its signed wire bytes (served so anyone can check the signature).
#[derive(Debug, Clone)]
pub(crate) struct Held<T> {
    pub value: T,
    pub wire: Vec<u8>,
    /// When it was last heard (unix ms).
    pub heard_ms: u64,
}

/// The newest report and statement of every operator heard from.
#[derive(Debug)]
pub(crate) struct Book {
    me: PeerId,
    policy: Policy,
    clock: Clock,
    // std Mutexes: never held across an await.
    reports: Mutex<HashMap<PeerId, Held<Report>>>,
    statements: Mutex<HashMap<PeerId, Held<SignedStatement>>>,
    refused: Mutex<BTreeMap<String, u64>>,
    /// The window counts of the trusted reports taken since [`Book::drain_window`] last ran
    /// (each report counted once, however often the view is read).
    pending: Mutex<BTreeMap<String, u64>>,
}

/// The history series' window figures of one report: `requests`, `errors`, `bytes` and
/// `packuments_served`.
pub(crate) fn window_figures(r: &Report) -> BTreeMap<String, u64> {
    use open_registry_protocol::report::{ERROR_CLASSES, KEY_WINDOW_BYTES, REQUEST_KINDS};
    [
        ("requests", r.sum("window.requests", &REQUEST_KINDS)),
        ("errors", r.sum("window.errors", &ERROR_CLASSES)),
        ("bytes", r.value(KEY_WINDOW_BYTES)),
        ("packuments_served", r.value("window.requests.packument")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

impl Book {
    /// An empty book for the operator `me`, trusting `policy`'s operators besides itself.
    pub(crate) fn new(me: PeerId, policy: Policy, clock: Clock) -> Book {
        Book {
            me,
            policy,
            clock,
            reports: Mutex::new(HashMap::new()),
            statements: Mutex::new(HashMap::new()),
            refused: Mutex::new(BTreeMap::new()),
            pending: Mutex::new(BTreeMap::new()),
        }
    }

    /// The window figures of every trusted report taken since the last call, summed, and
    /// forgotten (for the network's hourly history).
    pub(crate) fn drain_window(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.pending.lock().expect("pending poisoned"))
    }

    /// This node's operator.
    pub(crate) fn me(&self) -> PeerId {
        self.me
    }

    /// Whether `p` is this node or in its trust policy.
    pub(crate) fn trusts(&self, p: &PeerId) -> bool {
        *p == self.me || self.policy.trusts(p)
    }

    fn refuse(&self, kind: &str, why: Refusal) -> Refusal {
        *self
            .refused
            .lock()
            .expect("refused poisoned")
            .entry(format!("{kind}.{}", why.label()))
            .or_default() += 1;
        why
    }

    /// Takes a report heard on gossip (or made here), if it verifies, is fresh and is newer
    /// than the one held from its operator. Refusals are counted by reason.
    pub(crate) fn take_report(&self, wire: &[u8]) -> Result<PeerId, Refusal> {
        let r = self.check_report(wire);
        r.map_err(|why| self.refuse("report", why))
    }

    fn check_report(&self, wire: &[u8]) -> Result<PeerId, Refusal> {
        if wire.len() > MAX_REPORT_LEN + SIGNED_OVERHEAD {
            return Err(Refusal::Oversized);
        }
        let signed = Signed::from_bytes(wire).map_err(|_| Refusal::Malformed)?;
        let report = match signed.verify_as::<Report>() {
            Ok(v) => v.get().clone(),
            Err(RecordError::BadSignature | RecordError::BadKey) => return Err(Refusal::Forged),
            Err(_) => return Err(Refusal::Malformed),
        };
        if report.window_ms > MAX_WINDOW.as_millis() as u64 {
            return Err(Refusal::Malformed);
        }
        let now = self.clock.now_ms();
        if report.at_ms > now + MAX_SKEW.as_millis() as u64 {
            return Err(Refusal::Future);
        }
        if now > report.at_ms + EXPIRE_WINDOWS * report.window_ms {
            return Err(Refusal::Expired);
        }
        let signer = signed.signer;
        let mut reports = self.reports.lock().expect("reports poisoned");
        reports.retain(|_, h| now <= h.value.at_ms + EXPIRE_WINDOWS * h.value.window_ms);
        match reports.get(&signer) {
            Some(held) if !report.newer_than(&held.value) => return Err(Refusal::RolledBack),
            Some(_) => {}
            None if reports.len() >= MAX_OPERATORS => {
                if !self.trusts(&signer) {
                    return Err(Refusal::Capacity);
                }
                evict_untrusted(&mut reports, |p| self.trusts(p), |h| h.value.at_ms);
            }
            None => {}
        }
        if self.trusts(&signer) {
            let mut pending = self.pending.lock().expect("pending poisoned");
            for (k, v) in window_figures(&report) {
                *pending.entry(k).or_default() += v;
            }
        }
        reports.insert(
            signer,
            Held {
                value: report,
                wire: wire.to_vec(),
                heard_ms: now,
            },
        );
        Ok(signer)
    }

    /// Takes a statement heard on gossip (or signed here), if it verifies and its sequence is
    /// not lower than the one held from its operator (the same one again only refreshes when
    /// it was heard).
    pub(crate) fn take_statement(&self, wire: &[u8]) -> Result<Taken, Refusal> {
        let r = self.check_statement(wire);
        r.map_err(|why| self.refuse("statement", why))
    }

    fn check_statement(&self, wire: &[u8]) -> Result<Taken, Refusal> {
        if wire.len() > MAX_STATEMENT_LEN + SIGNED_OVERHEAD {
            return Err(Refusal::Oversized);
        }
        let signed = Signed::from_bytes(wire).map_err(|_| Refusal::Malformed)?;
        let now = self.clock.now_ms();
        let signer = signed.signer;
        let mut statements = self.statements.lock().expect("statements poisoned");
        // Heard again, byte for byte: no need to verify it twice.
        if let Some(held) = statements.get_mut(&signer)
            && held.wire == wire
        {
            held.heard_ms = now;
            return Ok(Taken::Again);
        }
        let statement = match signed.verify_as::<SignedStatement>() {
            Ok(v) => v.get().clone(),
            Err(RecordError::BadSignature | RecordError::BadKey) => return Err(Refusal::Forged),
            Err(_) => return Err(Refusal::Malformed),
        };
        if statement.at_ms > now + MAX_SKEW.as_millis() as u64 {
            return Err(Refusal::Future);
        }
        let keep = STATEMENT_KEEP.as_millis() as u64;
        statements.retain(|_, h| now <= h.heard_ms + keep);
        match statements.get(&signer) {
            Some(held) if statement.seq <= held.value.seq => return Err(Refusal::RolledBack),
            Some(_) => {}
            None if statements.len() >= MAX_OPERATORS => {
                if !self.trusts(&signer) {
                    return Err(Refusal::Capacity);
                }
                evict_untrusted(&mut statements, |p| self.trusts(p), |h| h.heard_ms);
            }
            None => {}
        }
        statements.insert(
            signer,
            Held {
                value: statement,
                wire: wire.to_vec(),
                heard_ms: now,
            },
        );
        Ok(Taken::New)
    }

    /// The reports held now (expired ones dropped), by operator.
    pub(crate) fn reports(&self) -> Vec<(PeerId, Held<Report>)> {
        let now = self.clock.now_ms();
        let mut reports = self.reports.lock().expect("reports poisoned");
        reports.retain(|_, h| now <= h.value.at_ms + EXPIRE_WINDOWS * h.value.window_ms);
        let mut v: Vec<_> = reports.iter().map(|(p, h)| (*p, h.clone())).collect();
        v.sort_by_key(|(p, _)| p.to_string());
        v
    }

    /// The statements held now, by operator.
    pub(crate) fn statements(&self) -> Vec<(PeerId, Held<SignedStatement>)> {
        let now = self.clock.now_ms();
        let keep = STATEMENT_KEEP.as_millis() as u64;
        let mut statements = self.statements.lock().expect("statements poisoned");
        statements.retain(|p, h| *p == self.me || now <= h.heard_ms + keep);
        let mut v: Vec<_> = statements.iter().map(|(p, h)| (*p, h.clone())).collect();
        v.sort_by_key(|(p, _)| p.to_string());
        v
    }

    /// Everything refused since start, by `kind.reason`.
    pub(crate) fn refused(&self) -> BTreeMap<String, u64> {
        self.refused.lock().expect("refused poisoned").clone()
    }

    /// The network as this node sees it now.
    pub(crate) fn view(&self) -> NetworkView {
        view::build(view::Inputs {
            now_ms: self.clock.now_ms(),
            me: self.me,
            trusts: &|p| self.trusts(p),
            reports: &self.reports(),
            statements: &self.statements(),
            refused: self.refused(),
        })
    }
}

/// The network view as this node serves it: the book's figures and what this node withholds.
#[derive(Debug)]
pub(crate) struct Views {
    /// Every operator's reports and statements.
    pub book: Arc<Book>,
    /// The signed advisories held, and their quorum.
    pub advisories: Arc<AdvisoryBook>,
    /// The release cooldown's held versions.
    pub holds: Arc<Holds>,
}

impl Views {
    /// `network.json`.
    pub(crate) fn network(&self) -> NetworkView {
        let mut v = self.book.view();
        v.withholding = self.withholding();
        v
    }

    /// Advisories in force and pending (trusted signers only), and the cooldown's versions.
    fn withholding(&self) -> Withholding {
        let list = self.advisories.list(false);
        let (in_force, pending) = list.advisories.into_iter().partition(|g| g.in_force);
        Withholding {
            advisory_threshold: list.threshold,
            in_force,
            pending,
            cooldown: self.holds.status(),
        }
    }
}

/// Makes room for one entry: drops the entry of an operator outside the trust policy with the
/// oldest `age`, if there is one.
fn evict_untrusted<T>(
    map: &mut HashMap<PeerId, Held<T>>,
    trusts: impl Fn(&PeerId) -> bool,
    age: impl Fn(&Held<T>) -> u64,
) {
    if let Some(oldest) = map
        .iter()
        .filter(|(p, _)| !trusts(p))
        .min_by_key(|(_, h)| age(h))
        .map(|(p, _)| *p)
    {
        map.remove(&oldest);
    }
}
