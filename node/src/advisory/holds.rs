//! What the withholding side of the gateway asks: which versions of a package are taken down
//! by advisories in force, and the message a client is given for each (npm prints it).

use open_registry_protocol::advisory::Advisory;
use open_registry_protocol::{PackageName, PeerId};

use super::{AdvisoryBook, ByName, Held};
use crate::withhold::AdvisoryHolds;

/// A version withheld by quorum: the trusted advisories that cover it.
#[derive(Debug, Clone)]
pub(crate) struct Enforced {
    /// The covering advisories, this node's own first, then by signer.
    pub by: Vec<(PeerId, Advisory)>,
}

impl AdvisoryBook {
    /// The trusted advisories covering `version` of `name` at `now`, if at least `threshold`
    /// of them do.
    pub(super) fn enforced_locked(
        &self,
        held: &ByName,
        name: &PackageName,
        version: &str,
        now: u64,
    ) -> Option<Enforced> {
        let m = held.get(name)?;
        // Versions that are not semver are never covered.
        let version = nodejs_semver::Version::parse(version).ok()?;
        let mut by: Vec<(PeerId, Advisory)> = m
            .iter()
            .filter(|(p, h)| self.trusts(p) && h.advisory.active(now) && h.covers(&version))
            .map(|(p, h)| (*p, h.advisory.clone()))
            .collect();
        if by.len() < self.threshold {
            return None;
        }
        by.sort_by_key(|(p, _)| (*p != self.me, *p));
        Some(Enforced { by })
    }
}

impl Held {
    /// Whether the advisory covers `version` ([`Advisory::covers`], with the parsed range).
    pub(crate) fn covers(&self, version: &nodejs_semver::Version) -> bool {
        self.range
            .as_ref()
            .is_some_and(|r| r.satisfies_with_prerelease(version, true))
    }
}

impl AdvisoryHolds for AdvisoryBook {
    fn holds(&self, name: &PackageName, versions: &[&str]) -> Vec<(String, String)> {
        let now = self.clock.now_ms();
        let held = self.held.lock().expect("advisories poisoned");
        if !held.contains_key(name) {
            return Vec::new();
        }
        versions
            .iter()
            .filter_map(|v| {
                let e = self.enforced_locked(&held, name, v, now)?;
                Some(((*v).to_owned(), message(name, v, &e)))
            })
            .collect()
    }

    fn may_hold(&self, name: &PackageName) -> bool {
        self.held
            .lock()
            .expect("advisories poisoned")
            .contains_key(name)
    }
}

/// "NAME@VERSION is taken down on this registry: KIND — REASON (advisory signed by A, B; URL)":
/// the kind and reason of the first covering advisory (this node's own first), every signer,
/// and the first URL given.
pub(crate) fn message(name: &PackageName, version: &str, e: &Enforced) -> String {
    let Some((_, first)) = e.by.first() else {
        return format!("{name}@{version} is taken down on this registry");
    };
    let signers: Vec<String> = e.by.iter().map(|(p, _)| p.to_string()).collect();
    let url =
        e.by.iter()
            .find_map(|(_, a)| a.url.as_deref())
            .map(|u| format!("; {u}"))
            .unwrap_or_default();
    format!(
        "{name}@{version} is taken down on this registry: {} — {} (advisory signed by {}{url})",
        first.kind,
        first.reason,
        signers.join(", ")
    )
}
