//! The fake upstream's state: published packages, counts, faults, the changes feed.
//!
//! Held in one std `Mutex` inside `Shared`, locked briefly and never across an await.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use serde_json::{Value, json};

use super::{Fault, RequestRecord, Target};

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) packages: BTreeMap<String, Package>,
    pub(super) hits: HashMap<String, usize>,
    pub(super) log: Vec<RequestRecord>,
    pub(super) faults: HashMap<Target, FaultRule>,
    pub(super) changes: Vec<(u64, String)>,
    pub(super) seq: u64,
    pub(super) advisories: Option<Value>,
    pub(super) audit: Option<Value>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct FaultRule {
    pub(super) fault: Fault,
    /// `None`: until cleared.
    pub(super) remaining: Option<usize>,
}

#[derive(Debug, Default)]
pub(super) struct Package {
    pub(super) versions: BTreeMap<String, Value>,
    pub(super) dist_tags: BTreeMap<String, String>,
    pub(super) times: BTreeMap<String, String>,
    pub(super) created: String,
    pub(super) modified: String,
    /// tarball file name → bytes.
    pub(super) tarballs: HashMap<String, Bytes>,
    pub(super) rev: u64,
    /// The packument's bytes as given ([`FakeUpstream::put_packument`]); the fields above
    /// other than `tarballs` are then unused.
    ///
    /// [`FakeUpstream::put_packument`]: super::FakeUpstream::put_packument
    pub(super) raw: Option<Bytes>,
}

impl State {
    pub(super) fn record_change(&mut self, name: &str) {
        self.seq += 1;
        let seq = self.seq;
        self.changes.push((seq, name.to_owned()));
    }

    /// The fault for `path`, consuming one use of a counted rule.
    pub(super) fn take_fault(&mut self, path: &str) -> Option<Fault> {
        let key = [Target::Path(path.to_owned()), Target::All]
            .into_iter()
            .find(|t| self.faults.contains_key(t))?;
        let rule = self.faults.get_mut(&key)?;
        let fault = rule.fault;
        if let Some(n) = rule.remaining.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.faults.remove(&key);
            }
        }
        Some(fault)
    }
}

impl Package {
    /// The full packument, as npm's registry shapes it (or the given bytes, parsed).
    pub(super) fn document(&self, name: &str) -> Value {
        if let Some(raw) = &self.raw {
            return serde_json::from_slice(raw).unwrap_or(Value::Null);
        }
        let mut time = serde_json::Map::new();
        time.insert("created".into(), json!(self.created));
        time.insert("modified".into(), json!(self.modified));
        for (v, t) in &self.times {
            time.insert(v.clone(), json!(t));
        }
        let latest = self.dist_tags.get("latest");
        let description = latest
            .and_then(|v| self.versions.get(v))
            .and_then(|m| m.get("description"))
            .cloned()
            .unwrap_or(Value::Null);
        json!({
            "_id": name,
            "_rev": format!("{}-{:016x}", self.rev, self.rev.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            "name": name,
            "description": description,
            "dist-tags": self.dist_tags,
            "versions": self.versions,
            "time": time,
            "license": "MIT",
        })
    }
}
