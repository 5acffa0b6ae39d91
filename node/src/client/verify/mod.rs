//! `open-registry verify`: check packages, or a whole lockfile, through a gateway.
//!
//! For every package version it checks three independent things:
//! 1. **integrity**: the tarball's bytes match the integrity in the metadata (and in the
//!    lockfile, when one is given);
//! 2. **npm registry signature**: `dist.signatures` verify under the registry keys the operator
//!    pinned (`keys.json` in the data dir, or `--keys`), never keys the gateway hands out;
//! 3. **operator records**: at least `threshold` trusted operators signed records that agree on
//!    the version's integrity and tarball, that are unexpired, not rolled back, and whose
//!    packument CID matches the packument bytes (fetched by CID and hashed here).
//!
//! A fourth check comes from the registry itself: an Open-Registry node lists the advisories in
//! force (`GET /-/open-registry/advisories`, fetched once per session); a version one of them
//! covers fails, with the advisory's kind, reason, signers and URL. A version the registry
//! withholds (it answers 451: an advisory, or its release cooldown) fails with the registry's
//! message. A registry without the list is `advisories: not checked`, not a failure.
//!
//! A check that cannot be made is reported as not checked, with why, and is not a failure:
//! signatures without pinned keys (`not checked: no pinned keys`; a version is `unsigned` only
//! when the registry published no signature for it), operator records when no operator is
//! trusted (`not checked: no trusted operators`; the command's `--require-operators` makes that
//! an error). So `verify` works against any registry URL out of the box.
//!
//! Nothing the gateway says is trusted: every answer is checked against pinned keys, trusted
//! operator keys or hashes computed here. Sequence numbers seen are remembered in the data dir
//! (`verify-seen.json`) so a later rollback is caught.

mod table;
mod targets;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use open_registry_protocol::advisory::{self, AdvisoryGroup, AdvisoryList};
use open_registry_protocol::npm_sig::Keys;
use open_registry_protocol::packument::{self as doc, DistRef};
use open_registry_protocol::record::{Signed, attested_integrity};
use open_registry_protocol::{BlobId, Integrity, PackageName, Policy, TrustError, Verifier};
use serde::Serialize;
use serde_json::Value;

pub(crate) use table::{load_keys, render_table, trusted};
pub(crate) use targets::{lockfile_targets, targets_for_spec};

use super::{ClientError, NodeClient};
use crate::clock::now_ms;

/// The file remembering the highest record sequence seen per package and signer.
pub(crate) const SEEN_FILE: &str = "verify-seen.json";
/// The signature check without pinned keys, for a version the registry signed.
pub(crate) const NO_KEYS: &str = "not checked: no pinned keys";
/// The signature check without pinned keys, for a version with no signatures at all.
pub(crate) const UNSIGNED: &str = "unsigned: the registry published no signatures for this version";
/// The operator check when no operator is trusted.
pub(crate) const NO_OPERATORS: &str = "not checked: no trusted operators";
/// The advisory check when the registry lists no advisories (not an Open-Registry node).
pub(crate) const NO_ADVISORIES: &str = "not checked: the registry lists no advisories";
/// The other checks of a version an advisory in force covers.
const TAKEN_DOWN: &str = "skipped: taken down by an advisory in force";
/// How many packages are checked at once.
const CONCURRENCY: usize = 8;
/// How long one document or tarball may take to arrive.
const FETCH_TIMEOUT: Duration = Duration::from_secs(300);

/// What to check and against what.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// The gateway's URL, without a trailing slash.
    pub registry: String,
    /// Pinned registry keys, if any.
    pub keys: Option<Keys>,
    /// Trusted operators and threshold; `None`: operator records are not checked.
    pub policy: Option<Policy>,
    /// Where `verify-seen.json` lives (no rollback memory without one).
    pub state_dir: Option<PathBuf>,
}

/// One package version to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub name: PackageName,
    pub version: String,
    /// The integrity a lockfile pins, if checking a lockfile.
    pub locked: Option<String>,
}

/// The outcome of one of the three checks.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Check {
    /// Passed; the detail says how (key ids, signers).
    Ok(String),
    /// Not checked, and that is not a failure; the detail says why (`not checked: ...`, or
    /// `unsigned: ...` for a version the registry signed nothing for).
    Skipped(String),
    /// Failed, with the reason.
    Failed(String),
}

impl Check {
    fn failed(&self) -> bool {
        matches!(self, Check::Failed(_))
    }
    fn word(&self) -> &'static str {
        match self {
            Check::Ok(_) => "ok",
            Check::Skipped(_) => "-",
            Check::Failed(_) => "FAIL",
        }
    }
}

/// The result for one package version.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub name: String,
    pub version: String,
    pub ok: bool,
    pub integrity: Check,
    pub signature: Check,
    pub operators: Check,
    /// Advisories in force, and the registry withholding the version (451).
    pub advisory: Check,
}

impl Report {
    /// The first failure, in words.
    pub(crate) fn reason(&self) -> Option<String> {
        [
            ("advisory", &self.advisory),
            ("integrity", &self.integrity),
            ("npm signature", &self.signature),
            ("operator records", &self.operators),
        ]
        .into_iter()
        .find_map(|(what, c)| match c {
            Check::Failed(r) => Some(format!("{what}: {r}")),
            _ => None,
        })
    }
}

/// How a withheld version's failure starts.
const WITHHELD: &str = "withheld by the registry (451): ";

/// The registry's message, when `e` is its 451 (a withheld version).
fn withheld(e: &anyhow::Error) -> Option<String> {
    e.chain()
        .find_map(|c| c.downcast_ref::<ClientError>())
        .and_then(|c| match c {
            ClientError::Status {
                status: 451,
                message,
            } => Some(format!("{WITHHELD}{message}")),
            _ => None,
        })
}

/// The failure line for `t` if one of `groups` (in force) covers it: kind, reason, signers (a
/// signer whose signed advisory does not verify is marked so) and URL.
pub(crate) fn in_force_for(groups: &[AdvisoryGroup], t: &Target, now: u64) -> Option<String> {
    let version = nodejs_semver::Version::parse(&t.version).ok()?;
    let g = groups.iter().find(|g| {
        g.in_force
            && g.name == t.name.as_str()
            && advisory::parse_range(&g.range)
                .is_ok_and(|r| r.satisfies_with_prerelease(&version, true))
    })?;
    let signers: Vec<String> = g
        .signers
        .iter()
        .map(|s| {
            let genuine = s
                .operator
                .parse()
                .ok()
                .zip(
                    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &s.signed)
                        .ok(),
                )
                .is_some_and(|(peer, wire)| {
                    advisory::validate(&advisory::dht_key(&t.name, &peer), &wire, now).is_ok()
                });
            let url = s
                .url
                .as_deref()
                .map(|u| format!(", {u}"))
                .unwrap_or_default();
            let forged = if genuine {
                ""
            } else {
                "; its signature does not verify"
            };
            format!("{} ({}: {}{url}{forged})", s.operator, s.kind, s.reason)
        })
        .collect();
    Some(format!(
        "taken down by advisory {}@{} in force, signed by {}",
        g.name,
        g.range,
        signers.join(", ")
    ))
}

type Seen = BTreeMap<String, BTreeMap<String, u64>>;

/// A verification session: the gateway and per-package caches.
#[derive(Debug)]
pub(crate) struct Verify {
    opts: Options,
    node: NodeClient,
    docs: tokio::sync::Mutex<HashMap<PackageName, Arc<Value>>>,
    records: tokio::sync::Mutex<HashMap<PackageName, Arc<Vec<Signed>>>>,
    seen: Mutex<Seen>,
    /// The registry's advisories in force, fetched once; `Err`: why they are not checked.
    advisories: tokio::sync::OnceCell<Result<Vec<AdvisoryGroup>, String>>,
}

impl Verify {
    /// A session with `opts`.
    pub(crate) fn new(opts: Options) -> anyhow::Result<Verify> {
        let seen = match &opts.state_dir {
            Some(d) => match std::fs::read(d.join(SEEN_FILE)) {
                Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
                Err(_) => Seen::default(),
            },
            None => Seen::default(),
        };
        Ok(Verify {
            node: NodeClient::new(&opts.registry, None)?,
            opts,
            docs: Default::default(),
            records: Default::default(),
            seen: Mutex::new(seen),
            advisories: Default::default(),
        })
    }

    /// `GET path` from the gateway, as JSON (npm's full documents for packuments).
    async fn get(&self, path: &str) -> Result<reqwest::Response, ClientError> {
        self.node.get(path, "application/json", FETCH_TIMEOUT).await
    }

    pub(super) async fn packument(&self, name: &PackageName) -> anyhow::Result<Arc<Value>> {
        if let Some(d) = self.docs.lock().await.get(name) {
            return Ok(d.clone());
        }
        let bytes = self
            .get(&name.url_segment())
            .await
            .with_context(|| format!("{}/{}", self.opts.registry, name.url_segment()))?
            .bytes()
            .await?;
        let d = Arc::new(doc::parse(name, &bytes)?);
        self.docs.lock().await.insert(name.clone(), d.clone());
        Ok(d)
    }

    async fn signed_records(&self, name: &PackageName) -> anyhow::Result<Arc<Vec<Signed>>> {
        if let Some(r) = self.records.lock().await.get(name) {
            return Ok(r.clone());
        }
        let path = format!("-/open-registry/records/{}", name.url_segment());
        let list = match self.get(&path).await {
            Ok(r) => {
                let v: Value = serde_json::from_slice(&r.bytes().await?)?;
                v.get("records")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|s| Signed::from_json(s).ok()).collect())
                    .unwrap_or_default()
            }
            Err(e) if e.status() == Some(404) => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("{}/{path}", self.opts.registry)),
        };
        let list = Arc::new(list);
        self.records.lock().await.insert(name.clone(), list.clone());
        Ok(list)
    }

    /// Checks one target.
    pub(crate) async fn check(&self, t: &Target) -> Report {
        let mut report = Report {
            name: t.name.to_string(),
            version: t.version.clone(),
            ok: false,
            integrity: Check::Skipped("not checked".into()),
            signature: Check::Skipped("not checked".into()),
            operators: Check::Skipped("not checked".into()),
            advisory: Check::Skipped("not checked".into()),
        };
        report.advisory = self.advisory_check(t).await;
        if report.advisory.failed() {
            for c in [
                &mut report.integrity,
                &mut report.signature,
                &mut report.operators,
            ] {
                *c = Check::Skipped(TAKEN_DOWN.into());
            }
        } else if let Err(e) = self.check_into(t, &mut report).await {
            match withheld(&e) {
                Some(m) => report.advisory = Check::Failed(m),
                None => report.integrity = Check::Failed(format!("{e:#}")),
            }
        }
        if let Check::Failed(e) = &report.integrity
            && e.starts_with(WITHHELD)
        {
            report.advisory = report.integrity.clone();
            report.integrity = Check::Skipped("not checked: withheld by the registry".into());
        }
        report.ok = !(report.integrity.failed()
            || report.signature.failed()
            || report.operators.failed()
            || report.advisory.failed());
        report
    }

    /// The registry's advisories in force (fetched on first use), or why there are none.
    async fn advisories(&self) -> &Result<Vec<AdvisoryGroup>, String> {
        self.advisories
            .get_or_init(|| async {
                let path = "-/open-registry/advisories";
                match self.get(path).await {
                    Ok(r) => {
                        let bytes = r
                            .bytes()
                            .await
                            .map_err(|e| format!("{NO_ADVISORIES} ({e})"))?;
                        let list: AdvisoryList = serde_json::from_slice(&bytes)
                            .map_err(|_| format!("{NO_ADVISORIES} (not an advisory list)"))?;
                        Ok(list.advisories.into_iter().filter(|g| g.in_force).collect())
                    }
                    Err(e) => Err(format!("{NO_ADVISORIES} ({e})")),
                }
            })
            .await
    }

    /// Fails `t` when an advisory in force covers it.
    async fn advisory_check(&self, t: &Target) -> Check {
        let groups = match self.advisories().await {
            Ok(g) => g,
            Err(why) => return Check::Skipped(why.clone()),
        };
        match in_force_for(groups, t, now_ms()) {
            Some(line) => Check::Failed(line),
            None => Check::Ok(format!("{} in force, none covers it", groups.len())),
        }
    }

    async fn check_into(&self, t: &Target, report: &mut Report) -> anyhow::Result<()> {
        let packument = self.packument(&t.name).await?;
        let vdoc = packument.pointer(&format!(
            "/versions/{}",
            t.version.replace('~', "~0").replace('/', "~1")
        ));
        let vdoc = match vdoc {
            Some(d) => d,
            None => {
                // Withheld versions are absent from packuments; asked for by name, the
                // registry says why (451).
                let path = format!("{}/{}", t.name.url_segment(), t.version);
                if let Err(e) = self.get(&path).await
                    && e.status() == Some(451)
                {
                    return Err(e.into());
                }
                anyhow::bail!("version {} is not in the metadata", t.version)
            }
        };
        let dist_s = |k: &str| vdoc.pointer(&format!("/dist/{k}")).and_then(Value::as_str);
        let dist = DistRef {
            version: t.version.clone(),
            integrity: dist_s("integrity").map(str::to_owned),
            shasum: dist_s("shasum").map(str::to_owned),
            tarball: dist_s("tarball").map(str::to_owned),
        };
        let meta_integrity = attested_integrity(&dist)
            .ok_or_else(|| anyhow::anyhow!("the metadata has no integrity for {}", t.version))?;

        // 1. npm's registry signature over the metadata, under pinned keys only. Without keys a
        // signed version is "not checked", never "unsigned".
        let signatures = vdoc
            .pointer("/dist/signatures")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty());
        report.signature = match &self.opts.keys {
            Some(keys) if !keys.is_empty() => {
                let published = packument
                    .pointer(&format!("/time/{}", t.version))
                    .and_then(Value::as_str);
                match keys.verify(
                    t.name.as_str(),
                    &t.version,
                    dist.integrity.as_deref().unwrap_or(&meta_integrity),
                    vdoc.pointer("/dist/signatures"),
                    published,
                ) {
                    Ok(ids) => Check::Ok(ids.join(",")),
                    Err(e) => Check::Failed(e.to_string()),
                }
            }
            _ if signatures.is_some() => Check::Skipped(NO_KEYS.into()),
            _ => Check::Skipped(UNSIGNED.into()),
        };

        // 2. Integrity of the bytes (lockfile and metadata). A gateway that refuses to serve
        // them (it found them corrupt) fails this check, not the others.
        let file = dist
            .tarball
            .as_deref()
            .and_then(doc::tarball_file_of)
            .unwrap_or_else(|| format!("{}-{}.tgz", t.name.unscoped(), t.version));
        let id = match self.tarball(t, &file, &meta_integrity).await {
            Ok((id, check)) => {
                report.integrity = check;
                id
            }
            Err(e) => {
                report.integrity = Check::Failed(withheld(&e).unwrap_or_else(|| format!("{e:#}")));
                None
            }
        };

        // 3. Operator records.
        report.operators = match &self.opts.policy {
            None => Check::Skipped(NO_OPERATORS.into()),
            Some(policy) => match self.operators(policy, t, &meta_integrity, id).await {
                Ok(c) => c,
                Err(e) => Check::Failed(e.to_string()),
            },
        };
        Ok(())
    }

    /// Streams the tarball through verifiers for the metadata's and the lockfile's integrity.
    async fn tarball(
        &self,
        t: &Target,
        file: &str,
        meta: &str,
    ) -> anyhow::Result<(Option<BlobId>, Check)> {
        let path = format!("{}/-/{file}", t.name);
        let r = self
            .get(&path)
            .await
            .with_context(|| format!("{}/{path}", self.opts.registry))?;
        let meta_v = Integrity::parse(meta).map(Verifier::new);
        let lock_v = t
            .locked
            .as_deref()
            .map(|l| Integrity::parse(l).map(Verifier::new));
        let (mut meta_v, mut lock_v) = match (meta_v, lock_v) {
            (Ok(m), Some(Ok(l))) => (m, Some(l)),
            (Ok(m), None) => (m, None),
            (Err(e), _) => return Ok((None, Check::Failed(format!("metadata integrity: {e}")))),
            (_, Some(Err(e))) => {
                return Ok((None, Check::Failed(format!("lockfile integrity: {e}"))));
            }
        };
        let mut body = r.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.context("reading the tarball")?;
            meta_v.update(&chunk);
            if let Some(l) = lock_v.as_mut() {
                l.update(&chunk);
            }
        }
        if let Some(l) = lock_v
            && let Err(e) = l.finish()
        {
            return Ok((
                None,
                Check::Failed(format!("tarball does not match the lockfile: {e}")),
            ));
        }
        match meta_v.finish() {
            Ok(id) => Ok((Some(id), Check::Ok(meta.to_owned()))),
            Err(e) => Ok((
                None,
                Check::Failed(format!("tarball does not match the metadata: {e}")),
            )),
        }
    }

    async fn operators(
        &self,
        policy: &Policy,
        t: &Target,
        integrity: &str,
        id: Option<BlobId>,
    ) -> anyhow::Result<Check> {
        let signed = self.signed_records(&t.name).await?;
        // Mix-and-match: each record's packument CID must name bytes that hash to it and list
        // this version with the same integrity. Fetched by CID, hashed here.
        let mut packuments: HashMap<BlobId, Result<(), TrustError>> = HashMap::new();
        for s in signed.iter() {
            if let Ok(v) = s.verify() {
                let cid = v.get().packument;
                if let std::collections::hash_map::Entry::Vacant(e) = packuments.entry(cid) {
                    e.insert(
                        self.packument_matches(&t.name, cid, &t.version, integrity)
                            .await,
                    );
                }
            }
        }
        let seen = self.seen.lock().expect("seen poisoned").clone();
        let quorum = policy.quorum(
            &signed,
            &t.name,
            now_ms(),
            |p| {
                seen.get(t.name.as_str())
                    .and_then(|m| m.get(&p.to_string()))
                    .copied()
            },
            |v| {
                v.check_integrity(&t.version, integrity)?;
                let entry = &v.get().versions[&t.version];
                if let (Some(expected), Some(actual)) = (entry.tarball, id)
                    && expected != actual
                {
                    return Err(TrustError::TarballMismatch {
                        version: t.version.clone(),
                        expected,
                        actual,
                    });
                }
                packuments
                    .get(&v.get().packument)
                    .cloned()
                    .unwrap_or(Ok(()))
            },
        );
        match quorum {
            Ok(vs) => {
                let mut seen = self.seen.lock().expect("seen poisoned");
                let m = seen.entry(t.name.to_string()).or_default();
                for v in &vs {
                    let e = m.entry(v.signer().to_string()).or_default();
                    *e = (*e).max(v.get().seq);
                }
                let who: Vec<String> = vs.iter().map(|v| v.signer().short()).collect();
                Ok(Check::Ok(format!(
                    "{}/{} ({})",
                    vs.len(),
                    policy.threshold(),
                    who.join(",")
                )))
            }
            Err(e) => Ok(Check::Failed(e.to_string())),
        }
    }

    /// Fetches the packument bytes a record names and checks that they hash to its CID and list
    /// `version` with `integrity` (the metadata the gateway served).
    async fn packument_matches(
        &self,
        name: &PackageName,
        cid: BlobId,
        version: &str,
        integrity: &str,
    ) -> Result<(), TrustError> {
        let unchecked = |e: String| TrustError::Unchecked(format!("packument {cid}: {e}"));
        let r = self
            .get(&format!("-/open-registry/blobs/{cid}"))
            .await
            .map_err(|e| unchecked(e.to_string()))?;
        let bytes = r.bytes().await.map_err(|e| unchecked(e.to_string()))?;
        let actual = BlobId::of(&bytes);
        if actual != cid {
            return Err(TrustError::PackumentMismatch {
                expected: cid,
                actual,
            });
        }
        let d = doc::parse(name, &bytes).map_err(|e| unchecked(e.to_string()))?;
        let listed = doc::tarball_index(name, &d)
            .into_values()
            .find(|x| x.version == version)
            .and_then(|x| attested_integrity(&x));
        match listed {
            Some(i) if i == integrity => Ok(()),
            other => Err(TrustError::Disagrees {
                version: version.to_owned(),
                integrity: integrity.to_owned(),
                signed: other.unwrap_or_else(|| "nothing (version absent)".into()),
            }),
        }
    }

    /// Checks every target with bounded concurrency; `tick` is called after each.
    pub(crate) async fn run(&self, targets: &[Target], tick: impl Fn(&Report)) -> Vec<Report> {
        let mut out: Vec<Report> = futures::stream::iter(targets)
            .map(|t| self.check(t))
            .buffer_unordered(CONCURRENCY)
            .inspect(|r| tick(r))
            .collect()
            .await;
        out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        out
    }

    /// Whether operator records are checked (some operator is trusted).
    pub(crate) fn checks_operators(&self) -> bool {
        self.opts.policy.is_some()
    }

    /// Remembers the sequences seen (for rollback detection next time).
    pub(crate) fn save_seen(&self) -> anyhow::Result<()> {
        let Some(dir) = &self.opts.state_dir else {
            return Ok(());
        };
        let seen = self.seen.lock().expect("seen poisoned").clone();
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!("{SEEN_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&seen)?)?;
        std::fs::rename(&tmp, dir.join(SEEN_FILE))?;
        Ok(())
    }
}
