//! Packuments: npm's per-package metadata documents, and the forms a gateway derives from them.
//!
//! A node stores the packument bytes exactly as its source sent them (the full document) and
//! derives everything else here, once per revision: the abbreviated "corgi" document npm asks
//! for with `Accept: application/vnd.npm.install-v1+json`, tarball URLs rewritten to the serving
//! gateway, and the index from tarball file name to the integrity it must have.
//!
//! Invariant: apart from `dist.tarball`, every value is carried over untouched, so
//! `dist.integrity`, `dist.shasum`, `dist.signatures` and `dist.attestations` keep the exact
//! values the upstream signed (serde_json keeps numbers verbatim with `arbitrary_precision` and
//! key order with `preserve_order`).

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::name::{PackageName, TarballFile};

/// The media type npm asks for when it wants the abbreviated document.
pub const ABBREVIATED_MEDIA_TYPE: &str = "application/vnd.npm.install-v1+json";

/// Version fields the abbreviated document keeps: what npm's installer reads.
pub(crate) const ABBREVIATED_VERSION_FIELDS: &[&str] = &[
    "name",
    "version",
    "deprecated",
    "dependencies",
    "optionalDependencies",
    "devDependencies",
    "peerDependencies",
    "peerDependenciesMeta",
    "bundleDependencies",
    "bundledDependencies",
    "acceptDependencies",
    "bin",
    "directories",
    "dist",
    "engines",
    "os",
    "cpu",
    "libc",
    "funding",
    "_hasShrinkwrap",
    "hasInstallScript",
];

/// Lifecycle scripts that make npm run something at install time.
pub(crate) const INSTALL_SCRIPTS: &[&str] = &["preinstall", "install", "postinstall"];

/// Why a document is not a usable packument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackumentError {
    #[error("packument is not valid JSON: {0}")]
    Json(String),
    #[error("packument is not a JSON object")]
    NotObject,
    #[error("packument is for {found:?}, not {expected:?}")]
    WrongName { expected: String, found: String },
    #[error("packument has no versions object")]
    NoVersions,
    #[error("could not write the derived document: {0}")]
    Write(String),
}

/// Parses packument bytes and checks that they describe `name`.
pub fn parse(name: &PackageName, bytes: &[u8]) -> Result<Value, PackumentError> {
    let doc: Value =
        serde_json::from_slice(bytes).map_err(|e| PackumentError::Json(e.to_string()))?;
    let obj = doc.as_object().ok_or(PackumentError::NotObject)?;
    let found = obj.get("name").and_then(Value::as_str).unwrap_or_default();
    if found != name.as_str() {
        return Err(PackumentError::WrongName {
            expected: name.to_string(),
            found: found.to_owned(),
        });
    }
    match obj.get("versions") {
        Some(Value::Object(_)) => Ok(doc),
        // A fully unpublished package has no versions but is still a valid answer.
        None if obj.contains_key("time") => Ok(doc),
        _ => Err(PackumentError::NoVersions),
    }
}

/// The abbreviated document derived from a full one: `name`, `modified`, `dist-tags`,
/// `policyRestrictions` when there is one, and each version's install fields.
pub fn abbreviate(full: &Value) -> Value {
    let mut out = Map::new();
    let Some(obj) = full.as_object() else {
        return Value::Object(out);
    };
    if let Some(name) = obj.get("name") {
        out.insert("name".into(), name.clone());
    }
    if let Some(modified) = obj
        .get("modified")
        .or_else(|| full.pointer("/time/modified"))
    {
        out.insert("modified".into(), modified.clone());
    }
    out.insert(
        "dist-tags".into(),
        obj.get("dist-tags")
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new())),
    );
    // What a registry withholds, and why (see `crate::withhold`): npm reads it from the
    // abbreviated document too.
    if let Some(r) = obj.get(crate::withhold::RESTRICTIONS) {
        out.insert(crate::withhold::RESTRICTIONS.into(), r.clone());
    }
    let mut versions = Map::new();
    if let Some(Value::Object(vs)) = obj.get("versions") {
        for (v, doc) in vs {
            versions.insert(v.clone(), abbreviate_version(doc));
        }
    }
    out.insert("versions".into(), Value::Object(versions));
    Value::Object(out)
}

fn abbreviate_version(doc: &Value) -> Value {
    let mut out = Map::new();
    let Some(obj) = doc.as_object() else {
        return Value::Object(out);
    };
    for field in ABBREVIATED_VERSION_FIELDS {
        if let Some(v) = obj.get(*field) {
            out.insert((*field).into(), v.clone());
        }
    }
    // Registries that do not compute hasInstallScript still ship the scripts in the full
    // document; derive it so npm knows to run them.
    if !out.contains_key("hasInstallScript")
        && let Some(Value::Object(scripts)) = obj.get("scripts")
        && INSTALL_SCRIPTS.iter().any(|s| scripts.contains_key(*s))
    {
        out.insert("hasInstallScript".into(), Value::Bool(true));
    }
    Value::Object(out)
}

/// Rewrites every `dist.tarball` to `{base}/{name}/-/{file}` so npm downloads through the
/// gateway at `base` (no trailing slash). Nothing else changes.
pub fn rewrite_tarballs(doc: &mut Value, name: &PackageName, base: &str) {
    let Some(Value::Object(versions)) = doc.get_mut("versions") else {
        return;
    };
    for (version, v) in versions.iter_mut() {
        let Some(Value::Object(dist)) = v.get_mut("dist") else {
            continue;
        };
        let file = dist
            .get("tarball")
            .and_then(Value::as_str)
            .and_then(tarball_file_of)
            .unwrap_or_else(|| format!("{}-{version}.tgz", name.unscoped()));
        dist.insert(
            "tarball".into(),
            Value::String(format!("{base}/{name}/-/{file}")),
        );
    }
}

/// The file name part of a tarball URL (`.../-/<file>.tgz`), if it is a valid file name.
pub fn tarball_file_of(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next()?;
    let file = path.rsplit('/').next()?;
    let decoded = percent_decode(file)?;
    TarballFile::parse(&decoded).ok().map(|_| decoded)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The path part of a URL (`/a/b` of `http://h:1/a/b?q`), or `None` if it is not an absolute
/// http(s) URL.
pub fn url_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let start = rest.find('/')?;
    let path = &rest[start..];
    Some(path.split(['?', '#']).next().unwrap_or(path))
}

/// What a packument says about one tarball.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistRef {
    /// The version it belongs to.
    pub version: String,
    /// `dist.integrity`, verbatim.
    pub integrity: Option<String>,
    /// `dist.shasum`, verbatim.
    pub shasum: Option<String>,
    /// `dist.tarball` as the source wrote it.
    pub tarball: Option<String>,
}

/// Tarball file name → what the packument says about it, for every version.
pub fn tarball_index(name: &PackageName, doc: &Value) -> HashMap<String, DistRef> {
    let mut out = HashMap::new();
    let Some(Value::Object(versions)) = doc.get("versions") else {
        return out;
    };
    for (version, v) in versions {
        let dist = v.get("dist");
        let s = |k: &str| {
            dist.and_then(|d| d.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let tarball = s("tarball");
        let file = tarball
            .as_deref()
            .and_then(tarball_file_of)
            .unwrap_or_else(|| format!("{}-{version}.tgz", name.unscoped()));
        out.insert(
            file,
            DistRef {
                version: version.clone(),
                integrity: s("integrity"),
                shasum: s("shasum"),
                tarball,
            },
        );
    }
    out
}

/// The version document for an exact version or a dist-tag.
pub fn resolve<'a>(doc: &'a Value, spec: &str) -> Option<&'a Value> {
    let versions = doc.get("versions")?.as_object()?;
    if let Some(v) = versions.get(spec) {
        return Some(v);
    }
    let tagged = doc.get("dist-tags")?.get(spec)?.as_str()?;
    versions.get(tagged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "_id": "@s/p",
            "_rev": "3-abc",
            "name": "@s/p",
            "description": "big readme follows",
            "readme": "x".repeat(1000),
            "dist-tags": {"latest": "1.0.0", "next": "2.0.0-beta.1"},
            "time": {"modified": "2024-01-02T03:04:05.000Z", "1.0.0": "2024-01-01T00:00:00.000Z"},
            "versions": {
                "1.0.0": {
                    "name": "@s/p", "version": "1.0.0",
                    "description": "dropped",
                    "scripts": {"postinstall": "node x.js", "test": "t"},
                    "dependencies": {"a": "^1"},
                    "peerDependenciesMeta": {"b": {"optional": true}},
                    "engines": {"node": ">=18"},
                    "dist": {
                        "tarball": "http://up.example:4873/@s/p/-/p-1.0.0.tgz",
                        "integrity": "sha512-AAAA",
                        "shasum": "abcd",
                        "signatures": [{"keyid": "SHA256:k", "sig": "MEUC"}],
                        "fileCount": 3, "unpackedSize": 1.50
                    }
                },
                "2.0.0-beta.1": {
                    "name": "@s/p", "version": "2.0.0-beta.1",
                    "dist": {"tarball": "http://up.example:4873/@s%2fp/-/p-2.0.0-beta.1.tgz?x=1", "shasum": "ff"}
                }
            }
        })
    }

    #[test]
    fn abbreviation_keeps_what_npm_reads() {
        let a = abbreviate(&sample());
        assert_eq!(a["name"], "@s/p");
        assert_eq!(a["modified"], "2024-01-02T03:04:05.000Z");
        assert_eq!(a["dist-tags"]["next"], "2.0.0-beta.1");
        let v = &a["versions"]["1.0.0"];
        assert_eq!(v["dependencies"]["a"], "^1");
        assert_eq!(v["peerDependenciesMeta"]["b"]["optional"], true);
        assert_eq!(v["engines"]["node"], ">=18");
        assert_eq!(v["hasInstallScript"], true);
        assert_eq!(v["dist"]["signatures"][0]["sig"], "MEUC");
        assert!(v.get("description").is_none() && v.get("scripts").is_none());
        assert!(a.get("readme").is_none() && a.get("_rev").is_none());
        assert!(
            a["versions"]["2.0.0-beta.1"]
                .get("hasInstallScript")
                .is_none()
        );
    }

    #[test]
    fn numbers_and_dist_survive_byte_for_byte() {
        let bytes = br#"{"name":"x","versions":{"1.0.0":{"dist":{"integrity":"sha512-\u002fAB==","unpackedSize":1.50,"big":123456789012345678901234567890,"tarball":"http://u/x/-/x-1.0.0.tgz"}}}}"#;
        let name = PackageName::parse("x").unwrap();
        let mut doc = parse(&name, bytes).unwrap();
        rewrite_tarballs(&mut doc, &name, "http://127.0.0.1:1");
        let out = serde_json::to_string(&doc).unwrap();
        assert!(out.contains(r#""unpackedSize":1.50"#), "{out}");
        assert!(out.contains("123456789012345678901234567890"), "{out}");
        assert_eq!(
            doc["versions"]["1.0.0"]["dist"]["integrity"],
            "sha512-/AB=="
        );
    }

    #[test]
    fn rewrites_tarballs_to_gateway() {
        let name = PackageName::parse("@s/p").unwrap();
        let mut doc = sample();
        rewrite_tarballs(&mut doc, &name, "http://127.0.0.1:7373");
        assert_eq!(
            doc["versions"]["1.0.0"]["dist"]["tarball"],
            "http://127.0.0.1:7373/@s/p/-/p-1.0.0.tgz"
        );
        assert_eq!(
            doc["versions"]["2.0.0-beta.1"]["dist"]["tarball"],
            "http://127.0.0.1:7373/@s/p/-/p-2.0.0-beta.1.tgz"
        );
        assert_eq!(doc["versions"]["1.0.0"]["dist"]["integrity"], "sha512-AAAA");
    }

    #[test]
    fn index_and_resolve() {
        let name = PackageName::parse("@s/p").unwrap();
        let idx = tarball_index(&name, &sample());
        assert_eq!(idx["p-1.0.0.tgz"].integrity.as_deref(), Some("sha512-AAAA"));
        assert_eq!(idx["p-2.0.0-beta.1.tgz"].version, "2.0.0-beta.1");
        let doc = sample();
        assert_eq!(resolve(&doc, "next").unwrap()["version"], "2.0.0-beta.1");
        assert_eq!(resolve(&doc, "1.0.0").unwrap()["version"], "1.0.0");
        assert!(resolve(&doc, "9.9.9").is_none());
    }

    #[test]
    fn parse_checks_shape_and_name() {
        let name = PackageName::parse("x").unwrap();
        assert!(matches!(parse(&name, b"{"), Err(PackumentError::Json(_))));
        assert_eq!(parse(&name, b"[]"), Err(PackumentError::NotObject));
        assert!(matches!(
            parse(&name, br#"{"name":"y","versions":{}}"#),
            Err(PackumentError::WrongName { .. })
        ));
        assert_eq!(
            parse(&name, br#"{"name":"x"}"#),
            Err(PackumentError::NoVersions)
        );
    }

    #[test]
    fn url_paths_and_files() {
        assert_eq!(url_path("https://h:1/a/-/a-1.tgz?q"), Some("/a/-/a-1.tgz"));
        assert_eq!(url_path("ftp://h/a"), None);
        assert_eq!(
            tarball_file_of("http://h/a/-/a-1.0.0.tgz"),
            Some("a-1.0.0.tgz".into())
        );
        assert_eq!(tarball_file_of("http://h/a/-/..%2f.tgz"), None);
    }
}
