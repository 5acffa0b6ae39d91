//! Holding versions back: which versions of a package this node does not serve yet (or at
//! all), and why.
//!
//! Two reasons hold a version ([`Hold`]): the **release cooldown** (`min_release_age`: a
//! version published less than that long ago, by the packument's `time`, is treated as not yet
//! released; names and scopes in `cooldown_exempt` are never held by it), and an **advisory**
//! in force ([`AdvisoryHolds`], implemented by the advisories; none yet). Pins never override a
//! hold: a held version may be stored, but it is not served.
//!
//! [`Holds::apply`] turns a packument revision into the one the gateway serves: the held
//! versions removed (by [`open_registry_protocol::withhold`], dist-tags moved down, and listed
//! in `policyRestrictions` with their messages so that npm prints why), a new id, and the list
//! the gateway answers 451 from. [`Holds::hold_of`] is the same decision for one
//! version, which the tarball path asks.
//!
//! **Cost.** Per request: a binary search over the revision's release times (sorted once per
//! revision and cached by its id), the advisory lookup, and a hash of the held set. The
//! filtered documents are cached under (revision id, hash of the held set), bounded in bytes,
//! so a hot packument is filtered once per change of what is held. The held set changes when a
//! cooldown ends, so an entry is also recomputed once the earliest `until_ms` it was built for
//! has passed.
//!
//! **Publish times.** A version's age is its `time[version]`; when the packument has none for
//! it, the first time this node saw the version ([`FirstSeen`], the `first_seen` sled tree),
//! noted when a revision is stored (and, for a revision stored before the cooldown was
//! configured, when the holds first read it). The status says how often that was used.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use open_registry_gateway::{self as gateway, Packument, Withheld};
use open_registry_protocol::status::{COOLDOWN_KEPT, CooldownHeld, CooldownStatus};
use open_registry_protocol::withhold::{format_utc, release_times, withhold_with_notice};
use open_registry_protocol::{BlobId, PackageName};
use quick_cache::sync::Cache;

use crate::clock::Clock;
use crate::config::units::format_duration;
use crate::store::{Index, IndexError};

/// Why a version is held back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Hold {
    /// Published less than `min_release_age` ago: released at `until_ms` (unix ms).
    Cooldown { until_ms: u64 },
    /// An advisory in force names it; the message says which and who signed it.
    Advisory { message: String },
}

/// The advisories in force, as the holds ask them.
pub(crate) trait AdvisoryHolds: Send + Sync + std::fmt::Debug {
    /// Of `versions` (every version of `name`'s current packument), those an advisory in force
    /// takes down, each with the message a client is shown: `(version, message)`.
    fn holds(&self, name: &PackageName, versions: &[&str]) -> Vec<(String, String)>;

    /// Whether any advisory at all names `name` (a cheap check: when none does, nothing about
    /// the package is looked up or filtered).
    fn may_hold(&self, name: &PackageName) -> bool {
        let _ = name;
        true
    }
}

/// The release cooldown's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cooldown {
    /// `min_release_age`.
    pub(crate) min_age: Duration,
    /// `cooldown_exempt`: exact names, and scopes (`@scope/*`, kept without `@` and `/*`).
    names: HashSet<String>,
    scopes: HashSet<String>,
}

impl Cooldown {
    /// A cooldown of `min_age` that exempts `exempt` (names, or `@scope/*`; see
    /// [`check_exempt`]; entries that are neither are ignored).
    pub(crate) fn new(min_age: Duration, exempt: &[String]) -> Cooldown {
        let mut names = HashSet::new();
        let mut scopes = HashSet::new();
        for e in exempt {
            match e.trim().strip_suffix("/*") {
                Some(scope) => scopes.insert(scope.trim_start_matches('@').to_owned()),
                None => names.insert(e.trim().to_owned()),
            };
        }
        Cooldown {
            min_age,
            names,
            scopes,
        }
    }

    /// Whether `name` is exempt.
    pub(crate) fn exempts(&self, name: &PackageName) -> bool {
        self.names.contains(name.as_str()) || name.scope().is_some_and(|s| self.scopes.contains(s))
    }
}

/// Checks one `cooldown_exempt` entry: a package name, or a scope as `@scope/*`.
pub(crate) fn check_exempt(entry: &str) -> Result<(), String> {
    let e = entry.trim();
    if let Some(scope) = e.strip_suffix("/*") {
        // A scope is valid when a package in it would be.
        return match scope.strip_prefix('@') {
            Some(s) if !s.is_empty() && PackageName::parse(&format!("{scope}/x")).is_ok() => Ok(()),
            _ => Err(format!(
                "cooldown_exempt entry {entry:?} is not a scope (write it as @scope/*)"
            )),
        };
    }
    PackageName::parse(e)
        .map(|_| ())
        .map_err(|err| format!("cooldown_exempt entry {entry:?} is not a package name: {err}"))
}

/// When this node first saw each version that its packument gives no publish time for: the
/// `first_seen` tree, keyed `NAME \0 VERSION`, valued the unix ms (8 bytes, big-endian).
#[derive(Debug)]
pub(crate) struct FirstSeen {
    tree: sled::Tree,
}

impl FirstSeen {
    /// The tree in the store's index.
    pub(crate) fn open(index: &Index) -> Result<FirstSeen, IndexError> {
        Ok(FirstSeen {
            tree: index.tree("first_seen")?,
        })
    }

    fn key(name: &PackageName, version: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(name.as_str().len() + 1 + version.len());
        k.extend_from_slice(name.as_str().as_bytes());
        k.push(0);
        k.extend_from_slice(version.as_bytes());
        k
    }

    /// The first-seen time of each of `versions`, noting `now` for those not seen before (one
    /// lookup each, one batch write). The work is linear in `versions`, once per revision.
    pub(crate) fn note(
        &self,
        name: &PackageName,
        versions: &[&str],
        now: u64,
    ) -> Result<Vec<u64>, sled::Error> {
        let mut batch = sled::Batch::default();
        let mut fresh = false;
        let mut out = Vec::with_capacity(versions.len());
        for v in versions {
            let key = Self::key(name, v);
            match self.tree.get(&key)? {
                Some(t) if t.len() == 8 => {
                    out.push(u64::from_be_bytes(t.as_ref().try_into().expect("8 bytes")));
                }
                _ => {
                    batch.insert(key, now.to_be_bytes().to_vec());
                    fresh = true;
                    out.push(now);
                }
            }
        }
        if fresh {
            self.tree.apply_batch(batch)?;
        }
        Ok(out)
    }

    /// Notes the versions of a stored revision that have no publish time, off the async
    /// workers. A failure is logged: the holds note them again when they read the revision.
    pub(crate) async fn note_revision(&self, name: &PackageName, bytes: &Bytes, now: u64) {
        let (n, b, this) = (name.clone(), bytes.clone(), self.tree.clone());
        let done = tokio::task::spawn_blocking(move || {
            let times = release_times(&n, &b).map_err(|e| e.to_string())?;
            let missing: Vec<&str> = times
                .iter()
                .filter(|(_, t)| t.is_none())
                .map(|(v, _)| v.as_str())
                .collect();
            if missing.is_empty() {
                return Ok(0);
            }
            FirstSeen { tree: this }
                .note(&n, &missing, now)
                .map(|_| missing.len())
                .map_err(|e| e.to_string())
        })
        .await;
        match done {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                tracing::debug!(%name, versions = n, "noted versions without a publish time")
            }
            Ok(Err(e)) => tracing::warn!(%name, error = %e, "could not note first-seen times"),
            Err(e) => tracing::warn!(%name, error = %e, "noting first-seen times failed"),
        }
    }
}

/// A revision's versions and when each was published.
#[derive(Debug)]
struct Releases {
    /// Every version, in document order.
    versions: Vec<String>,
    /// `(published ms, index into versions, counted from first sight)`, oldest first.
    by_time: Vec<(u64, u32, bool)>,
}

impl Releases {
    fn weight(&self) -> u64 {
        self.versions
            .iter()
            .map(|v| v.len() as u64 + 40)
            .sum::<u64>()
            + 64
    }
}

/// One held version, with what its message needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Held {
    version: String,
    hold: Hold,
    from_first_seen: bool,
}

/// A filtered revision: what the gateway serves while this set is held.
#[derive(Debug)]
struct Filtered {
    /// The held set it was built for (checked on a hit: the key is only a hash of it).
    held: Vec<Held>,
    id: BlobId,
    bytes: Bytes,
    withheld: Vec<Withheld>,
    /// The earliest end of a cooldown in `held`: past it, the held set is different.
    valid_until: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct ReleasesWeight;

impl quick_cache::Weighter<BlobId, Arc<Releases>> for ReleasesWeight {
    fn weight(&self, _: &BlobId, v: &Arc<Releases>) -> u64 {
        v.weight()
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct FilteredWeight;

impl quick_cache::Weighter<(BlobId, u64), Arc<Filtered>> for FilteredWeight {
    fn weight(&self, _: &(BlobId, u64), v: &Arc<Filtered>) -> u64 {
        let w: usize = v
            .withheld
            .iter()
            .map(|w| w.version.len() * 2 + w.message.len() + 64)
            .sum();
        (v.bytes.len() + w + 128) as u64
    }
}

/// The release times cached per revision, at most.
const RELEASES_BYTES: u64 = 4 << 20;

/// How many held versions the status keeps track of.
const RECENT_KEPT: usize = 256;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Holds {
    cooldown: Option<Cooldown>,
    advisory: Option<Arc<dyn AdvisoryHolds>>,
    first_seen: Option<Arc<FirstSeen>>,
    clock: Clock,
    releases: Cache<BlobId, Arc<Releases>, ReleasesWeight>,
    filtered: Cache<(BlobId, u64), Arc<Filtered>, FilteredWeight>,
    /// Versions held by the cooldown lately, for the status: (name, version) → (until, from
    /// first sight). std Mutex: never held across an await.
    recent: Mutex<HashMap<(String, String), (u64, bool)>>,
    first_seen_used: AtomicU64,
}

impl Holds {
    /// Holds for the cooldown (if any) and the advisories (if any), reading publish times the
    /// packuments lack from `first_seen`, on `clock`; the filtered documents cached take at most
    /// `filtered_bytes`.
    pub(crate) fn new(
        cooldown: Option<Cooldown>,
        advisory: Option<Arc<dyn AdvisoryHolds>>,
        first_seen: Option<Arc<FirstSeen>>,
        clock: Clock,
        filtered_bytes: u64,
    ) -> Holds {
        let one_shard = |bytes: u64| {
            quick_cache::OptionsBuilder::new()
                .estimated_items_capacity(64)
                .weight_capacity(bytes)
                // One shard: a filtered packument can be megabytes (see the hot cache).
                .shards(1)
                .build()
                .expect("valid cache options")
        };
        Holds {
            cooldown: cooldown.filter(|c| !c.min_age.is_zero()),
            advisory,
            first_seen,
            clock,
            releases: Cache::with_options(
                one_shard(RELEASES_BYTES),
                ReleasesWeight,
                Default::default(),
                Default::default(),
            ),
            filtered: Cache::with_options(
                one_shard(filtered_bytes.max(1 << 20)),
                FilteredWeight,
                Default::default(),
                Default::default(),
            ),
            recent: Mutex::new(HashMap::new()),
            first_seen_used: AtomicU64::new(0),
        }
    }

    /// Whether anything can hold a version of `name` (the fast path skips everything else).
    pub(crate) fn applies_to(&self, name: &PackageName) -> bool {
        self.cooling(name).is_some() || self.advisory.as_ref().is_some_and(|a| a.may_hold(name))
    }

    /// Whether the version search shows as `name`'s latest, published at `date` (ISO 8601, as
    /// the search index has it), may be held: an advisory names the package, or the cooldown
    /// applies and the date is unknown or within it. Otherwise search shows it as it is.
    pub(crate) fn may_hold_latest(&self, name: &PackageName, date: Option<&str>) -> bool {
        if self.advisory.as_ref().is_some_and(|a| a.may_hold(name)) {
            return true;
        }
        let Some(c) = self.cooling(name) else {
            return false;
        };
        let cutoff = self
            .clock
            .now_ms()
            .saturating_sub(c.min_age.as_millis() as u64);
        date.and_then(open_registry_protocol::npm_sig::parse_iso8601_ms)
            .and_then(|ms| u64::try_from(ms).ok())
            .is_none_or(|published| published > cutoff)
    }

    /// The cooldown, unless `name` is exempt from it.
    fn cooling(&self, name: &PackageName) -> Option<&Cooldown> {
        self.cooldown.as_ref().filter(|c| !c.exempts(name))
    }

    /// The packument the gateway serves for revision `p`: the held versions withheld (a new id
    /// and bytes, and the [`Packument::withheld`] list), or `p` itself when nothing is held.
    pub(crate) async fn apply(
        &self,
        name: &PackageName,
        mut p: Packument,
    ) -> Result<Packument, gateway::Error> {
        if !self.applies_to(name) {
            return Ok(p);
        }
        let held = self.held(name, &p).await?;
        if held.is_empty() {
            return Ok(p);
        }
        let now = self.clock.now_ms();
        let key = (p.id, hash_of(&held));
        // Concurrent misses of one key wait for the first to filter (a failure lets the next
        // one try).
        let f = match self.filtered.get_value_or_guard_async(&key).await {
            Ok(f) if f.held == held && now < f.valid_until => f,
            // Another held set under the same hash, or past its time: filtered anew.
            Ok(_) => {
                let f = Arc::new(self.filter(name, &p, held).await?);
                self.filtered.insert(key, f.clone());
                self.note_recent(name, &f.held);
                f
            }
            Err(guard) => {
                let f = Arc::new(self.filter(name, &p, held).await?);
                let _ = guard.insert(f.clone());
                self.note_recent(name, &f.held);
                f
            }
        };
        p.id = f.id;
        p.bytes = f.bytes.clone();
        p.withheld = f.withheld.clone();
        Ok(p)
    }

    /// Why `version` of revision `p` is held, as the message a client is shown; `None` when it
    /// is served.
    pub(crate) async fn hold_of(
        &self,
        name: &PackageName,
        p: &Packument,
        version: &str,
    ) -> Result<Option<String>, gateway::Error> {
        if !self.applies_to(name) {
            return Ok(None);
        }
        let held = self.held(name, p).await?;
        Ok(held
            .iter()
            .find(|h| h.version == version)
            .map(|h| self.message(name, h)))
    }

    /// The cooldown's part of the status, when a cooldown is configured.
    pub(crate) fn status(&self) -> Option<CooldownStatus> {
        let c = self.cooldown.as_ref()?;
        let now = self.clock.now_ms();
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let mut held: Vec<CooldownHeld> = recent
            .iter()
            .filter(|(_, (until, _))| *until > now)
            .map(|((name, version), (until, fs))| CooldownHeld {
                name: name.clone(),
                version: version.clone(),
                until_ms: *until,
                from_first_seen: *fs,
            })
            .collect();
        held.sort_by(|a, b| {
            (b.until_ms, &a.name, &a.version).cmp(&(a.until_ms, &b.name, &b.version))
        });
        held.truncate(COOLDOWN_KEPT);
        Some(CooldownStatus {
            min_release_age_secs: c.min_age.as_secs(),
            held,
            first_seen_used: self.first_seen_used.load(Relaxed),
        })
    }

    /// The held versions of revision `p`, in a canonical order (by version string).
    async fn held(&self, name: &PackageName, p: &Packument) -> Result<Vec<Held>, gateway::Error> {
        let releases = self.releases(name, p).await?;
        let mut held: HashMap<&str, Held> = HashMap::new();
        if let Some(c) = self.cooling(name) {
            let min_age = c.min_age.as_millis() as u64;
            let cutoff = self.clock.now_ms().saturating_sub(min_age);
            // Published after the cutoff: still cooling down.
            let from = releases.by_time.partition_point(|(t, _, _)| *t <= cutoff);
            for (t, i, fs) in &releases.by_time[from..] {
                let version = &releases.versions[*i as usize];
                held.insert(
                    version.as_str(),
                    Held {
                        version: version.clone(),
                        hold: Hold::Cooldown {
                            until_ms: t.saturating_add(min_age),
                        },
                        from_first_seen: *fs,
                    },
                );
            }
        }
        if let Some(a) = &self.advisory {
            let versions: Vec<&str> = releases.versions.iter().map(String::as_str).collect();
            for (version, message) in a.holds(name, &versions) {
                // An advisory outranks a cooldown: its message is the one shown.
                let Some(v) = versions.iter().find(|v| **v == version) else {
                    continue;
                };
                held.insert(
                    *v,
                    Held {
                        version,
                        hold: Hold::Advisory { message },
                        from_first_seen: false,
                    },
                );
            }
        }
        let mut held: Vec<Held> = held.into_values().collect();
        held.sort_by(|a, b| a.version.cmp(&b.version));
        Ok(held)
    }

    /// The release times of revision `p`, read once per revision.
    async fn releases(
        &self,
        name: &PackageName,
        p: &Packument,
    ) -> Result<Arc<Releases>, gateway::Error> {
        if let Some(r) = self.releases.get(&p.id) {
            return Ok(r);
        }
        let (n, b) = (name.clone(), p.bytes.clone());
        let first_seen = self.first_seen.clone();
        let now = self.clock.now_ms();
        let (r, used) = tokio::task::spawn_blocking(move || -> Result<_, String> {
            let times = release_times(&n, &b).map_err(|e| e.to_string())?;
            let missing: Vec<&str> = times
                .iter()
                .filter(|(_, t)| t.is_none())
                .map(|(v, _)| v.as_str())
                .collect();
            let seen = match (&first_seen, missing.is_empty()) {
                (_, true) => Vec::new(),
                (Some(f), false) => f.note(&n, &missing, now).map_err(|e| e.to_string())?,
                // Nowhere to remember them: seen now, every time the revision is read.
                (None, false) => vec![now; missing.len()],
            };
            let used = seen.len() as u64;
            let mut seen = seen.into_iter();
            let mut by_time = Vec::with_capacity(times.len());
            let mut versions = Vec::with_capacity(times.len());
            for (i, (v, t)) in times.into_iter().enumerate() {
                let (t, fs) = match t {
                    Some(t) => (t, false),
                    None => (seen.next().unwrap_or(now), true),
                };
                by_time.push((t, i as u32, fs));
                versions.push(v);
            }
            by_time.sort_unstable();
            Ok((Releases { versions, by_time }, used))
        })
        .await
        .map_err(|e| gateway::Error::Internal(format!("reading release times: {e}")))?
        .map_err(|e| gateway::Error::Internal(format!("release times of {name}: {e}")))?;
        if used > 0 {
            self.first_seen_used.fetch_add(used, Relaxed);
        }
        let r = Arc::new(r);
        self.releases.insert(p.id, r.clone());
        Ok(r)
    }

    /// Withholds `held` from revision `p`, off the async workers.
    async fn filter(
        &self,
        name: &PackageName,
        p: &Packument,
        held: Vec<Held>,
    ) -> Result<Filtered, gateway::Error> {
        let withheld: Vec<Withheld> = held
            .iter()
            .map(|h| Withheld {
                version: h.version.clone(),
                message: self.message(name, h),
            })
            .collect();
        let notice = Withheld::notice(&withheld);
        let set: HashSet<String> = held.iter().map(|h| h.version.clone()).collect();
        let (n, b) = (name.clone(), p.bytes.clone());
        let out = tokio::task::spawn_blocking(move || {
            withhold_with_notice(&n, &b, &|v| set.contains(v), Some(&notice)).map(|o| {
                o.map(|bytes| {
                    let id = BlobId::of(&bytes);
                    (id, Bytes::from(bytes))
                })
            })
        })
        .await
        .map_err(|e| gateway::Error::Internal(format!("withholding versions: {e}")))?
        .map_err(|e| gateway::Error::Internal(format!("withholding versions of {name}: {e}")))?;
        let (id, bytes) = out.unwrap_or_else(|| (p.id, p.bytes.clone()));
        let valid_until = held
            .iter()
            .filter_map(|h| match h.hold {
                Hold::Cooldown { until_ms } => Some(until_ms),
                Hold::Advisory { .. } => None,
            })
            .min()
            .unwrap_or(u64::MAX);
        Ok(Filtered {
            held,
            id,
            bytes,
            withheld,
            valid_until,
        })
    }

    /// What a client is told about a held version.
    fn message(&self, name: &PackageName, h: &Held) -> String {
        match &h.hold {
            Hold::Advisory { message } => message.clone(),
            Hold::Cooldown { until_ms } => {
                let age = self
                    .cooldown
                    .as_ref()
                    .map_or_else(String::new, |c| format_duration(c.min_age));
                // Shown to the second, rounded up: the version is served from that second on.
                let until = format_utc(until_ms.div_ceil(1000) * 1000);
                let first = if h.from_first_seen {
                    "; the upstream gives no publish time for it, so its age counts from when \
                     this node first saw it"
                } else {
                    ""
                };
                format!(
                    "{name}@{} is in its release cooldown until {until} (min_release_age {age} on \
                     this registry{first})",
                    h.version
                )
            }
        }
    }

    /// Remembers the cooldown holds of a freshly filtered revision for the status.
    fn note_recent(&self, name: &PackageName, held: &[Held]) {
        let now = self.clock.now_ms();
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        for h in held {
            if let Hold::Cooldown { until_ms } = h.hold {
                recent.insert(
                    (name.to_string(), h.version.clone()),
                    (until_ms, h.from_first_seen),
                );
            }
        }
        if recent.len() > RECENT_KEPT {
            recent.retain(|_, (until, _)| *until > now);
        }
        while recent.len() > RECENT_KEPT {
            let Some(oldest) = recent
                .iter()
                .min_by_key(|(_, (until, _))| *until)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            recent.remove(&oldest);
        }
    }
}

/// A hash of a held set (the filtered cache's key; a hit compares the set itself).
fn hash_of(held: &[Held]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    held.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use open_registry_protocol::withhold::format_utc;
    use serde_json::{Value, json};

    const HOUR: u64 = 3_600_000;

    fn name(s: &str) -> PackageName {
        PackageName::parse(s).unwrap()
    }

    /// A packument of `n` with `versions` published at the given times (ms; `None`: no `time`).
    fn packument(n: &str, versions: &[(&str, Option<u64>)], latest: &str) -> Packument {
        let mut vs = serde_json::Map::new();
        let mut time = serde_json::Map::new();
        for (v, t) in versions {
            vs.insert(
                (*v).into(),
                json!({"name": n, "version": v, "dist": {"integrity": "sha512-AA=="}}),
            );
            if let Some(t) = t {
                let iso = format_utc(*t);
                time.insert((*v).into(), json!(iso));
            }
        }
        let doc = json!({"name": n, "dist-tags": {"latest": latest}, "time": time, "versions": vs});
        let bytes = Bytes::from(serde_json::to_vec(&doc).unwrap());
        Packument::new(BlobId::of(&bytes), bytes)
    }

    fn doc(p: &Packument) -> Value {
        serde_json::from_slice(&p.bytes).unwrap()
    }

    fn holds(clock: &Clock, exempt: &[&str], advisory: Option<Arc<dyn AdvisoryHolds>>) -> Holds {
        let exempt: Vec<String> = exempt.iter().map(|s| (*s).to_owned()).collect();
        Holds::new(
            Some(Cooldown::new(Duration::from_secs(3600), &exempt)),
            advisory,
            None,
            clock.clone(),
            8 << 20,
        )
    }

    #[test]
    fn exemptions_by_name_and_scope() {
        let c = Cooldown::new(
            Duration::from_secs(1),
            &["typescript".into(), "@my-org/*".into()],
        );
        assert!(c.exempts(&name("typescript")));
        assert!(c.exempts(&name("@my-org/lib")));
        assert!(!c.exempts(&name("@other/lib")));
        assert!(!c.exempts(&name("typescript-eslint")));
        for ok in ["typescript", "@my-org/*", "@s/p"] {
            assert!(check_exempt(ok).is_ok(), "{ok}");
        }
        for bad in ["Bad Name", "@/*", "my-org/*", ""] {
            assert!(check_exempt(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn recent_versions_are_withheld_until_their_cooldown_ends() {
        let clock = Clock::manual();
        // `time` is written to the second.
        let now = clock.now_ms() / 1000 * 1000;
        let h = holds(&clock, &[], None);
        let n = name("@s/p");
        let p = packument(
            "@s/p",
            &[
                ("1.0.0", Some(now - 72 * HOUR)),
                ("1.0.1", Some(now - 60_000)),
            ],
            "1.0.1",
        );
        let served = h.apply(&n, p.clone()).await.unwrap();
        assert_ne!(served.id, p.id);
        assert_eq!(served.id, BlobId::of(&served.bytes));
        let d = doc(&served);
        assert!(d["versions"].get("1.0.1").is_none());
        assert!(d["time"].get("1.0.1").is_none());
        assert_eq!(d["dist-tags"]["latest"], "1.0.0");
        let until = now - 60_000 + HOUR;
        let message = format!(
            "@s/p@1.0.1 is in its release cooldown until {} (min_release_age 1h on this registry)",
            format_utc(until)
        );
        assert_eq!(
            served.withheld,
            vec![Withheld {
                version: "1.0.1".into(),
                message: message.clone()
            }]
        );
        assert_eq!(d["policyRestrictions"]["message"], message.as_str());
        assert_eq!(h.hold_of(&n, &p, "1.0.1").await.unwrap(), Some(message));
        assert_eq!(h.hold_of(&n, &p, "1.0.0").await.unwrap(), None);
        // A second request is a cache hit: the same filtered revision.
        let again = h.apply(&n, p.clone()).await.unwrap();
        assert_eq!(again.id, served.id);
        let status = h.status().unwrap();
        assert_eq!(status.min_release_age_secs, 3600);
        assert_eq!(status.held.len(), 1);
        assert_eq!(
            (
                status.held[0].name.as_str(),
                status.held[0].version.as_str()
            ),
            ("@s/p", "1.0.1")
        );
        assert_eq!(status.held[0].until_ms, until);
        // Just before the end it is still held; at the end it is served.
        clock.advance(Duration::from_millis(until - clock.now_ms() - 1));
        assert_eq!(h.apply(&n, p.clone()).await.unwrap().id, served.id);
        clock.advance(Duration::from_millis(1));
        let released = h.apply(&n, p.clone()).await.unwrap();
        assert_eq!(released.id, p.id);
        assert!(released.withheld.is_empty());
        assert_eq!(h.hold_of(&n, &p, "1.0.1").await.unwrap(), None);
        assert!(h.status().unwrap().held.is_empty());
    }

    #[tokio::test]
    async fn exempt_packages_and_no_cooldown_pass_untouched() {
        let clock = Clock::manual();
        let now = clock.now_ms();
        let p = packument("@my-org/lib", &[("2.0.0", Some(now))], "2.0.0");
        let h = holds(&clock, &["@my-org/*"], None);
        let n = name("@my-org/lib");
        assert!(!h.applies_to(&n));
        let served = h.apply(&n, p.clone()).await.unwrap();
        assert_eq!(served.id, p.id);
        let off = Holds::new(None, None, None, clock.clone(), 1 << 20);
        assert!(!off.applies_to(&n));
        assert!(off.status().is_none());
        let zero = Holds::new(
            Some(Cooldown::new(Duration::ZERO, &[])),
            None,
            None,
            clock,
            1 << 20,
        );
        assert!(zero.status().is_none());
    }

    #[derive(Debug)]
    struct Takedown;

    impl AdvisoryHolds for Takedown {
        fn holds(&self, name: &PackageName, versions: &[&str]) -> Vec<(String, String)> {
            versions
                .iter()
                .filter(|v| v.starts_with("1.0."))
                .map(|v| ((*v).to_owned(), format!("{name}@{v} is malware (advisory)")))
                .collect()
        }
    }

    #[tokio::test]
    async fn advisories_hold_too_and_outrank_the_cooldown() {
        let clock = Clock::manual();
        let now = clock.now_ms();
        let h = holds(&clock, &["p"], Some(Arc::new(Takedown)));
        let n = name("p");
        // Exempt from the cooldown, but not from advisories.
        assert!(h.applies_to(&n));
        let p = packument(
            "p",
            &[
                ("0.9.0", Some(now - 72 * HOUR)),
                ("1.0.0", Some(now - 72 * HOUR)),
                ("1.0.1", Some(now)),
            ],
            "1.0.1",
        );
        let served = h.apply(&n, p.clone()).await.unwrap();
        let d = doc(&served);
        assert_eq!(d["dist-tags"]["latest"], "0.9.0");
        let versions: Vec<&str> = served.withheld.iter().map(|w| w.version.as_str()).collect();
        assert_eq!(versions, ["1.0.0", "1.0.1"]);
        assert_eq!(
            h.hold_of(&n, &p, "1.0.1").await.unwrap().as_deref(),
            Some("p@1.0.1 is malware (advisory)")
        );
        // Both reasons: the advisory's message is the one shown.
        let h = holds(&clock, &[], Some(Arc::new(Takedown)));
        assert_eq!(
            h.hold_of(&n, &p, "1.0.1").await.unwrap().as_deref(),
            Some("p@1.0.1 is malware (advisory)")
        );
    }

    #[tokio::test]
    async fn versions_without_a_time_age_from_first_sight_which_persists() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual();
        let index = Index::open(dir.path(), clock.clone()).unwrap();
        let first_seen = Arc::new(FirstSeen::open(&index).unwrap());
        let n = name("notime");
        let p = packument("notime", &[("1.0.0", None), ("1.0.1", None)], "1.0.1");
        // The fetcher notes 1.0.0 when it stores an older revision...
        let seen_at = clock.now_ms();
        let older = packument("notime", &[("1.0.0", None)], "1.0.0");
        first_seen.note_revision(&n, &older.bytes, seen_at).await;
        // ...and 1.0.1 appears half an hour later.
        clock.advance(Duration::from_secs(1800));
        let h = Holds::new(
            Some(Cooldown::new(Duration::from_secs(3600), &[])),
            None,
            Some(first_seen.clone()),
            clock.clone(),
            8 << 20,
        );
        let served = h.apply(&n, p.clone()).await.unwrap();
        let versions: Vec<&str> = served.withheld.iter().map(|w| w.version.as_str()).collect();
        assert_eq!(versions, ["1.0.0", "1.0.1"]);
        assert!(
            served.withheld[0].message.contains("first saw it"),
            "{:?}",
            served.withheld
        );
        let status = h.status().unwrap();
        assert_eq!(status.first_seen_used, 2);
        assert!(status.held.iter().all(|s| s.from_first_seen));
        // Most recently published first.
        assert_eq!(status.held[0].version, "1.0.1");
        assert_eq!(status.held[1].until_ms, seen_at + HOUR);
        // The times are kept: another reader (a restarted node) sees the same ones.
        let again = FirstSeen::open(&index).unwrap();
        let t = again.note(&n, &["1.0.0", "1.0.1"], u64::MAX).unwrap();
        assert_eq!(t, vec![seen_at, seen_at + 1_800_000]);
        clock.advance(Duration::from_secs(1800));
        let d = doc(&h.apply(&n, p.clone()).await.unwrap());
        assert!(d["versions"].get("1.0.0").is_some());
        assert!(d["versions"].get("1.0.1").is_none());
        assert_eq!(d["dist-tags"]["latest"], "1.0.0");
    }

    #[tokio::test]
    async fn the_status_keeps_the_most_recent_holds() {
        let clock = Clock::manual();
        let now = clock.now_ms();
        let h = holds(&clock, &[], None);
        for i in 0..40u64 {
            let n = format!("p{i}");
            let p = packument(&n, &[("1.0.0", Some(now - i * 1000))], "1.0.0");
            h.apply(&name(&n), p).await.unwrap();
        }
        let s = h.status().unwrap();
        assert_eq!(s.held.len(), COOLDOWN_KEPT);
        assert_eq!(s.held[0].name, "p0");
        assert!(s.held.windows(2).all(|w| w[0].until_ms >= w[1].until_ms));
    }
}
