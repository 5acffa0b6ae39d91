//! `open-registry pin`: deciding which exact versions a pin request means, and asking the node
//! to pin them.
//!
//! The CLI reads packuments through the node's gateway (so it sees what npm would see), expands
//! each request into exact versions with npm's semver rules (`nodejs-semver`), and then asks the
//! node's admin API to fetch, verify and pin each version. Failures are collected per version;
//! the rest are still pinned.
//!
//! - `NAME`: the newest `pin_latest` stable versions and every dist-tag's version;
//! - `NAME@RANGE` (or `NAME@TAG`, `NAME@VERSION`): every version the range matches;
//! - `--with-deps`: also, for every pinned version, the version npm would pick for each of its
//!   dependencies, optional dependencies and required peer dependencies, recursively.

use std::collections::{BTreeSet, HashMap, VecDeque};

use anyhow::{Context as _, bail};
use nodejs_semver::{Range, Version};
use open_registry_protocol::PackageName;
use open_registry_protocol::packument::ABBREVIATED_MEDIA_TYPE;
use serde_json::Value;

use super::{ClientError, NodeClient, READ_TIMEOUT};

/// One exact version to pin.
pub(crate) type Target = (PackageName, String);

/// Versions of a packument, parsed, newest first.
fn versions(doc: &Value) -> Vec<(Version, String)> {
    let mut v: Vec<(Version, String)> = doc
        .get("versions")
        .and_then(Value::as_object)
        .map(|m| {
            m.keys()
                .filter_map(|k| Version::parse(k).ok().map(|v| (v, k.clone())))
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| b.0.cmp(&a.0));
    v
}

/// The versions a spec selects: see the module docs.
pub(crate) fn select(
    doc: &Value,
    want: Option<&str>,
    latest: usize,
) -> anyhow::Result<Vec<String>> {
    let all = versions(doc);
    let tags: BTreeSet<String> = doc
        .get("dist-tags")
        .and_then(Value::as_object)
        .map(|m| {
            m.values()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut out: BTreeSet<String> = BTreeSet::new();
    match want {
        None => {
            out.extend(
                all.iter()
                    .filter(|(v, _)| !v.is_prerelease())
                    .take(latest)
                    .map(|(_, s)| s.clone()),
            );
            out.extend(tags.into_iter().filter(|t| all.iter().any(|(_, s)| s == t)));
        }
        Some(w) => {
            if let Some(tagged) = doc
                .pointer(&format!("/dist-tags/{w}"))
                .and_then(Value::as_str)
            {
                out.insert(tagged.to_owned());
            } else if all.iter().any(|(_, s)| s == w) {
                out.insert(w.to_owned());
            } else {
                let range = Range::parse(w).with_context(|| format!("{w:?} is not a range"))?;
                out.extend(
                    all.iter()
                        .filter(|(v, _)| range.satisfies(v))
                        .map(|(_, s)| s.clone()),
                );
            }
        }
    }
    if out.is_empty() {
        bail!("no version matches {}", want.unwrap_or("(latest)"));
    }
    Ok(out.into_iter().collect())
}

/// The version npm would install for `range` (a range or a dist-tag).
pub(crate) fn max_satisfying(doc: &Value, range: &str) -> Option<String> {
    if let Some(tagged) = doc
        .pointer(&format!("/dist-tags/{range}"))
        .and_then(Value::as_str)
    {
        return Some(tagged.to_owned());
    }
    let r = Range::parse(if range.trim().is_empty() { "*" } else { range }).ok()?;
    // npm prefers the `latest` tag when it satisfies the range.
    if let Some(latest) = doc.pointer("/dist-tags/latest").and_then(Value::as_str)
        && Version::parse(latest).is_ok_and(|v| r.satisfies(&v))
    {
        return Some(latest.to_owned());
    }
    versions(doc)
        .into_iter()
        .find(|(v, _)| r.satisfies(v))
        .map(|(_, s)| s)
}

/// What a version needs installed with it: dependencies, optional dependencies, and peer
/// dependencies not marked optional.
pub(crate) fn dependencies(doc: &Value, version: &str) -> Vec<(String, String)> {
    let Some(v) = doc.pointer(&format!("/versions/{}", version.replace('/', "~1"))) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for field in ["dependencies", "optionalDependencies", "peerDependencies"] {
        let Some(m) = v.get(field).and_then(Value::as_object) else {
            continue;
        };
        for (name, range) in m {
            let optional_peer = field == "peerDependencies"
                && v.pointer(&format!("/peerDependenciesMeta/{name}/optional"))
                    .and_then(Value::as_bool)
                    == Some(true);
            if let (false, Some(r)) = (optional_peer, range.as_str()) {
                out.push((name.clone(), r.to_owned()));
            }
        }
    }
    out
}

/// Splits `name@want`.
pub(crate) fn split_spec(spec: &str) -> anyhow::Result<(PackageName, Option<String>)> {
    let at = spec.get(1..).and_then(|s| s.rfind('@')).map(|i| i + 1);
    let (name, want) = match at {
        Some(i) => (&spec[..i], Some(spec[i + 1..].to_owned())),
        None => (spec, None),
    };
    Ok((
        PackageName::parse(name).with_context(|| format!("in {spec:?}"))?,
        want.filter(|w| !w.is_empty()),
    ))
}

/// Expands pin requests into exact versions, reading packuments through the node's gateway
/// (each at most once per run).
#[derive(Debug)]
pub(crate) struct Expander<'a> {
    node: &'a NodeClient,
    docs: HashMap<PackageName, Value>,
}

impl<'a> Expander<'a> {
    /// An expander reading through `node`.
    pub(crate) fn new(node: &'a NodeClient) -> Expander<'a> {
        Expander {
            node,
            docs: HashMap::new(),
        }
    }

    /// A packument (abbreviated: what npm reads), cached for this run.
    pub(crate) async fn packument(&mut self, name: &PackageName) -> anyhow::Result<&Value> {
        if !self.docs.contains_key(name) {
            let body = async {
                let r = self
                    .node
                    .get(&name.url_segment(), ABBREVIATED_MEDIA_TYPE, READ_TIMEOUT)
                    .await?;
                r.bytes().await.map_err(|e| ClientError::Body {
                    url: name.to_string(),
                    source: e.into(),
                })
            }
            .await
            .with_context(|| format!("{name}"))?;
            self.docs
                .insert(name.clone(), serde_json::from_slice(&body)?);
        }
        Ok(&self.docs[name])
    }

    /// Expands specs into exact versions (and, with `with_deps`, their dependency closure).
    /// Specs that cannot be expanded are returned as failures.
    pub(crate) async fn expand(
        &mut self,
        specs: &[String],
        latest: usize,
        with_deps: bool,
    ) -> (Vec<Target>, Vec<(String, String)>) {
        let mut targets: Vec<Target> = Vec::new();
        let mut failures = Vec::new();
        let mut queue: VecDeque<Target> = VecDeque::new();
        for spec in specs {
            let result = async {
                let (name, want) = split_spec(spec)?;
                let doc = self.packument(&name).await?;
                let vs = select(doc, want.as_deref(), latest)?;
                anyhow::Ok(
                    vs.into_iter()
                        .map(|v| (name.clone(), v))
                        .collect::<Vec<_>>(),
                )
            }
            .await;
            match result {
                Ok(ts) => queue.extend(ts),
                Err(e) => failures.push((spec.clone(), format!("{e:#}"))),
            }
        }
        while let Some(t) = queue.pop_front() {
            if targets.contains(&t) {
                continue;
            }
            if with_deps {
                let deps = match self.packument(&t.0).await {
                    Ok(doc) => dependencies(doc, &t.1),
                    Err(_) => Vec::new(),
                };
                for (dep, range) in deps {
                    let found = async {
                        let name = PackageName::parse(&dep)?;
                        let doc = self.packument(&name).await?;
                        let v = max_satisfying(doc, &range)
                            .with_context(|| format!("no version of {dep} matches {range:?}"))?;
                        anyhow::Ok((name, v))
                    }
                    .await;
                    match found {
                        Ok(d) => queue.push_back(d),
                        Err(e) => failures.push((format!("{dep}@{range}"), format!("{e:#}"))),
                    }
                }
            }
            targets.push(t);
        }
        (targets, failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "name": "p",
            "dist-tags": {"latest": "2.1.0", "next": "3.0.0-rc.1", "legacy": "0.9.0"},
            "versions": {
                "0.9.0": {}, "1.0.0": {}, "1.5.0": {}, "2.0.0": {},
                "2.1.0": {
                    "dependencies": {"a": "^1.0.0"},
                    "optionalDependencies": {"b": "~2.0.0"},
                    "peerDependencies": {"c": "*", "d": "^1"},
                    "peerDependenciesMeta": {"d": {"optional": true}}
                },
                "2.2.0-beta.0": {}, "3.0.0-rc.1": {}
            }
        })
    }

    #[test]
    fn latest_n_plus_dist_tags() {
        let v = select(&doc(), None, 2).unwrap();
        assert_eq!(v, vec!["0.9.0", "2.0.0", "2.1.0", "3.0.0-rc.1"]);
    }

    #[test]
    fn ranges_tags_and_exact() {
        assert_eq!(
            select(&doc(), Some("^1.0.0"), 3).unwrap(),
            vec!["1.0.0", "1.5.0"]
        );
        assert_eq!(select(&doc(), Some("next"), 3).unwrap(), vec!["3.0.0-rc.1"]);
        assert_eq!(select(&doc(), Some("1.5.0"), 3).unwrap(), vec!["1.5.0"]);
        assert!(select(&doc(), Some("^9"), 3).is_err());
        assert!(select(&doc(), Some("not a range !!"), 3).is_err());
    }

    #[test]
    fn npm_picks() {
        let d = doc();
        assert_eq!(max_satisfying(&d, "^2.0.0").as_deref(), Some("2.1.0"));
        assert_eq!(max_satisfying(&d, "^1").as_deref(), Some("1.5.0"));
        assert_eq!(max_satisfying(&d, "next").as_deref(), Some("3.0.0-rc.1"));
        assert_eq!(max_satisfying(&d, "").as_deref(), Some("2.1.0"));
        assert_eq!(max_satisfying(&d, ">=4"), None);
    }

    #[test]
    fn dependency_kinds() {
        let mut deps = dependencies(&doc(), "2.1.0");
        deps.sort();
        assert_eq!(
            deps,
            vec![
                ("a".into(), "^1.0.0".into()),
                ("b".into(), "~2.0.0".into()),
                ("c".into(), "*".into())
            ]
        );
        assert!(dependencies(&doc(), "9.9.9").is_empty());
    }

    #[test]
    fn specs() {
        let (n, w) = split_spec("@s/p@^1.2.0").unwrap();
        assert_eq!((n.as_str(), w.as_deref()), ("@s/p", Some("^1.2.0")));
        let (n, w) = split_spec("@s/p").unwrap();
        assert_eq!((n.as_str(), w), ("@s/p", None));
        let (n, w) = split_spec("left-pad@1.3.0").unwrap();
        assert_eq!((n.as_str(), w.as_deref()), ("left-pad", Some("1.3.0")));
        assert!(split_spec("Bad@1").is_err());
        assert!(split_spec("").is_err());
    }
}
