//! Deriving served documents straight from packument bytes, without building a JSON tree.
//!
//! A popular packument is megabytes of JSON (react: 4 MB). Parsing it into a
//! `serde_json::Value` costs many times its size in small allocations; here the document is
//! split into borrowed raw slices ([`RawValue`]) level by level, only the `dist` objects are
//! rewritten, and everything else is copied byte for byte. So `integrity`, `shasum`,
//! `signatures`, `attestations` and every number keep the exact text the source sent, and
//! deriving a form costs little more than copying it.
//!
//! The results are the same documents [`crate::packument::abbreviate`] and
//! [`crate::packument::rewrite_tarballs`] produce (tests check that).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::name::PackageName;
use crate::packument::{
    ABBREVIATED_VERSION_FIELDS, DistRef, INSTALL_SCRIPTS, PackumentError, tarball_file_of,
};
use crate::withhold::RESTRICTIONS;

/// How the error for a duplicate key starts.
const DUPLICATE: &str = "duplicate key";

/// A JSON object's members in document order, values left as raw text; an object with a
/// duplicate key is refused.
pub(crate) struct Entries<'a>(pub(crate) Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Entries<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entries<'a>, A::Error> {
                let mut out: Vec<(String, &'de RawValue)> = Vec::new();
                let mut seen = std::collections::HashSet::new();
                while let Some((k, v)) = m.next_entry::<String, &'de RawValue>()? {
                    // JSON.parse keeps the last of duplicate keys, this reader would keep the
                    // first: a document with any is refused, so that what is checked is what
                    // every client reads.
                    if !seen.insert(k.clone()) {
                        return Err(serde::de::Error::custom(format!("{DUPLICATE} {k:?}")));
                    }
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl<'a> Entries<'a> {
    pub(crate) fn parse(raw: &'a str) -> Result<Self, PackumentError> {
        serde_json::from_str(raw).map_err(|e| PackumentError::Json(e.to_string()))
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

/// Writes `{"k":raw,...}`.
pub(crate) fn write_object<'b, W: Write>(
    out: &mut W,
    entries: impl IntoIterator<Item = (&'b str, Raw<'b>)>,
) -> io::Result<()> {
    out.write_all(b"{")?;
    let mut first = true;
    for (k, v) in entries {
        if !first {
            out.write_all(b",")?;
        }
        first = false;
        write_key(out, k)?;
        match v {
            Raw::Borrowed(r) => out.write_all(r.get().as_bytes())?,
            Raw::Owned(s) => out.write_all(&s)?,
        }
    }
    out.write_all(b"}")
}

/// Writes `"k":`.
pub(crate) fn write_key<W: Write>(out: &mut W, k: &str) -> io::Result<()> {
    out.write_all(serde_json::to_string(k).expect("strings encode").as_bytes())?;
    out.write_all(b":")
}

/// A failure of the sink a document is derived into (a `Vec` never fails).
pub(crate) fn sink_err(e: io::Error) -> PackumentError {
    PackumentError::Write(e.to_string())
}

/// A value to write: borrowed from the source, or newly encoded.
pub(crate) enum Raw<'a> {
    Borrowed(&'a RawValue),
    Owned(Vec<u8>),
}

/// Checks the top level and returns its members.
pub(crate) fn top<'a>(name: &PackageName, text: &'a str) -> Result<Entries<'a>, PackumentError> {
    let entries: Entries<'a> = serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data if e.to_string().starts_with(DUPLICATE) => {
            PackumentError::Json(e.to_string())
        }
        serde_json::error::Category::Data => PackumentError::NotObject,
        _ => PackumentError::Json(e.to_string()),
    })?;
    let found: Option<String> = entries
        .get("name")
        .and_then(|r| serde_json::from_str(r.get()).ok());
    if found.as_deref() != Some(name.as_str()) {
        return Err(PackumentError::WrongName {
            expected: name.to_string(),
            found: found.unwrap_or_default(),
        });
    }
    match entries.get("versions") {
        Some(v) if v.get().trim_start().starts_with('{') => Ok(entries),
        None if entries.get("time").is_some() => Ok(entries),
        _ => Err(PackumentError::NoVersions),
    }
}

pub(crate) fn is_object(raw: &RawValue) -> bool {
    raw.get().trim_start().starts_with('{')
}

pub(crate) fn as_text(bytes: &[u8]) -> Result<&str, PackumentError> {
    std::str::from_utf8(bytes).map_err(|e| PackumentError::Json(e.to_string()))
}

/// `dist` with `tarball` set to `{base}/{name}/-/{file}`.
fn rewrite_dist(
    dist: &RawValue,
    name: &PackageName,
    version: &str,
    base: &str,
) -> Result<Vec<u8>, PackumentError> {
    let entries = Entries::parse(dist.get())?;
    let file = entries
        .get("tarball")
        .and_then(|r| serde_json::from_str::<String>(r.get()).ok())
        .and_then(|t| tarball_file_of(&t))
        .unwrap_or_else(|| format!("{}-{version}.tgz", name.unscoped()));
    let url = serde_json::to_vec(&format!("{base}/{name}/-/{file}")).expect("strings encode");
    let mut out = Vec::with_capacity(dist.get().len() + 64);
    let mut replaced = false;
    let mut members: Vec<(&str, Raw<'_>)> = entries
        .0
        .iter()
        .map(|(k, v)| {
            if k == "tarball" {
                replaced = true;
                (k.as_str(), Raw::Owned(url.clone()))
            } else {
                (k.as_str(), Raw::Borrowed(v))
            }
        })
        .collect();
    if !replaced {
        members.push(("tarball", Raw::Owned(url)));
    }
    write_object(&mut out, members).map_err(sink_err)?;
    Ok(out)
}

/// Writes the versions object with each version passed through `keep` and its `dist`
/// rewritten.
fn write_versions<W: Write>(
    out: &mut W,
    raw: &RawValue,
    name: &PackageName,
    base: &str,
    abbreviated: bool,
) -> Result<(), PackumentError> {
    let versions = Entries::parse(raw.get())?;
    out.write_all(b"{").map_err(sink_err)?;
    for (i, (version, doc)) in versions.0.iter().enumerate() {
        if i > 0 {
            out.write_all(b",").map_err(sink_err)?;
        }
        write_key(out, version).map_err(sink_err)?;
        // A version that is not an object is carried over as is (abbreviate: as `{}`).
        // An object with a duplicate key refuses the whole document.
        let parsed = if is_object(doc) {
            Some(Entries::parse(doc.get())?)
        } else {
            None
        };
        let Some(fields) = parsed else {
            let kept = if abbreviated { "{}" } else { doc.get() };
            out.write_all(kept.as_bytes()).map_err(sink_err)?;
            continue;
        };
        let mut members: Vec<(&str, Raw<'_>)> = Vec::with_capacity(fields.0.len());
        for (k, v) in &fields.0 {
            if abbreviated && !ABBREVIATED_VERSION_FIELDS.contains(&k.as_str()) {
                continue;
            }
            if k == "dist" && v.get().trim_start().starts_with('{') {
                members.push(("dist", Raw::Owned(rewrite_dist(v, name, version, base)?)));
            } else {
                members.push((k.as_str(), Raw::Borrowed(v)));
            }
        }
        if abbreviated && fields.get("hasInstallScript").is_none() && has_install_script(&fields) {
            members.push(("hasInstallScript", Raw::Owned(b"true".to_vec())));
        }
        write_object(out, members).map_err(sink_err)?;
    }
    out.write_all(b"}").map_err(sink_err)
}

fn has_install_script(fields: &Entries<'_>) -> bool {
    let Some(scripts) = fields.get("scripts") else {
        return false;
    };
    Entries::parse(scripts.get()).is_ok_and(|s| INSTALL_SCRIPTS.iter().any(|k| s.get(k).is_some()))
}

/// The abbreviated document npm installs from, tarballs pointing at `base`.
pub fn abbreviated_json(
    name: &PackageName,
    bytes: &[u8],
    base: &str,
) -> Result<Vec<u8>, PackumentError> {
    let mut out = Vec::with_capacity(bytes.len() / 2);
    write_abbreviated(&mut out, name, bytes, base)?;
    Ok(out)
}

/// Writes [`abbreviated_json`] into `out` as it is derived, never holding it whole (so it can
/// go straight into a compressor). On an error, what was written is not a document.
pub fn write_abbreviated<W: Write>(
    out: &mut W,
    name: &PackageName,
    bytes: &[u8],
    base: &str,
) -> Result<(), PackumentError> {
    let entries = top(name, as_text(bytes)?)?;
    let modified = entries.get("modified").or_else(|| {
        entries
            .get("time")
            .and_then(|t| Entries::parse(t.get()).ok())
            .and_then(|t| t.get("modified"))
    });
    let mut members: Vec<(&str, Raw<'_>)> = Vec::with_capacity(3);
    if let Some(n) = entries.get("name") {
        members.push(("name", Raw::Borrowed(n)));
    }
    if let Some(m) = modified {
        members.push(("modified", Raw::Borrowed(m)));
    }
    members.push((
        "dist-tags",
        match entries.get("dist-tags") {
            Some(t) => Raw::Borrowed(t),
            None => Raw::Owned(b"{}".to_vec()),
        },
    ));
    if let Some(r) = entries.get(RESTRICTIONS) {
        members.push((RESTRICTIONS, Raw::Borrowed(r)));
    }
    // The same object `write_object` would write, with the versions streamed as the last member.
    let mut head = Vec::new();
    write_object(&mut head, members).map_err(sink_err)?;
    head.pop();
    out.write_all(&head).map_err(sink_err)?;
    out.write_all(b",").map_err(sink_err)?;
    write_key(out, "versions").map_err(sink_err)?;
    match entries.get("versions") {
        Some(v) => write_versions(out, v, name, base, true)?,
        None => out.write_all(b"{}").map_err(sink_err)?,
    }
    out.write_all(b"}").map_err(sink_err)
}

/// The full document, tarballs pointing at `base`, everything else byte for byte.
pub fn full_json(name: &PackageName, bytes: &[u8], base: &str) -> Result<Vec<u8>, PackumentError> {
    let mut out = Vec::with_capacity(bytes.len() + 1024);
    write_full(&mut out, name, bytes, base)?;
    Ok(out)
}

/// Writes [`full_json`] into `out` as it is derived, never holding it whole. On an error, what
/// was written is not a document.
pub fn write_full<W: Write>(
    out: &mut W,
    name: &PackageName,
    bytes: &[u8],
    base: &str,
) -> Result<(), PackumentError> {
    let entries = top(name, as_text(bytes)?)?;
    out.write_all(b"{").map_err(sink_err)?;
    for (i, (k, v)) in entries.0.iter().enumerate() {
        if i > 0 {
            out.write_all(b",").map_err(sink_err)?;
        }
        write_key(out, k).map_err(sink_err)?;
        if k == "versions" && v.get().trim_start().starts_with('{') {
            write_versions(out, v, name, base, false)?;
        } else {
            out.write_all(v.get().as_bytes()).map_err(sink_err)?;
        }
    }
    out.write_all(b"}").map_err(sink_err)
}

/// Writes the document of one version, by exact version or dist-tag (what
/// [`crate::packument::resolve`] finds), its `dist.tarball` pointing at `base` and every other
/// value byte for byte. `Ok(false)`: this revision has no such version (nothing written).
pub fn write_version<W: Write>(
    out: &mut W,
    name: &PackageName,
    bytes: &[u8],
    base: &str,
    spec: &str,
) -> Result<bool, PackumentError> {
    let entries = top(name, as_text(bytes)?)?;
    let Some(versions) = entries.get("versions").filter(|v| is_object(v)) else {
        return Ok(false);
    };
    let versions = Entries::parse(versions.get())?;
    let mut found = versions.get(spec).map(|v| (spec.to_owned(), v));
    if found.is_none()
        && let Some(tags) = entries.get("dist-tags").filter(|t| is_object(t))
        && let Some(tagged) = Entries::parse(tags.get())?.get(spec)
        && let Ok(version) = serde_json::from_str::<String>(tagged.get())
    {
        found = versions.get(&version).map(|v| (version, v));
    }
    let Some((version, doc)) = found else {
        return Ok(false);
    };
    if !is_object(doc) {
        out.write_all(doc.get().as_bytes()).map_err(sink_err)?;
        return Ok(true);
    }
    let fields = Entries::parse(doc.get())?;
    let mut members: Vec<(&str, Raw<'_>)> = Vec::with_capacity(fields.0.len());
    for (k, v) in &fields.0 {
        if k == "dist" && is_object(v) {
            members.push(("dist", Raw::Owned(rewrite_dist(v, name, &version, base)?)));
        } else {
            members.push((k.as_str(), Raw::Borrowed(v)));
        }
    }
    write_object(out, members).map_err(sink_err)?;
    Ok(true)
}

/// The `dist-tags` object of a packument, byte for byte (`{}` when it has none).
pub fn dist_tags_json(name: &PackageName, bytes: &[u8]) -> Result<Vec<u8>, PackumentError> {
    let entries = top(name, as_text(bytes)?)?;
    Ok(match entries.get("dist-tags") {
        Some(t) if is_object(t) => t.get().as_bytes().to_vec(),
        _ => b"{}".to_vec(),
    })
}

/// What each version's `dist` says, by tarball file name (see
/// [`crate::packument::tarball_index`]), read without building a tree.
pub fn tarball_index_json(
    name: &PackageName,
    bytes: &[u8],
) -> Result<HashMap<String, DistRef>, PackumentError> {
    #[derive(Deserialize)]
    struct Dist {
        tarball: Option<String>,
        integrity: Option<String>,
        shasum: Option<String>,
    }
    #[derive(Deserialize)]
    struct Version {
        dist: Option<Dist>,
    }
    let entries = top(name, as_text(bytes)?)?;
    let mut out = HashMap::new();
    let Some(versions) = entries.get("versions") else {
        return Ok(out);
    };
    for (version, doc) in Entries::parse(versions.get())?.0 {
        // Duplicate keys in a version object or its `dist` refuse the document (a version or
        // `dist` that is not an object is carried as it is, with no tarball named).
        if is_object(doc) {
            let fields = Entries::parse(doc.get())?;
            if let Some(d) = fields.get("dist").filter(|d| is_object(d)) {
                Entries::parse(d.get())?;
            }
        }
        let dist = serde_json::from_str::<Version>(doc.get())
            .ok()
            .and_then(|v| v.dist);
        let (tarball, integrity, shasum) = match dist {
            Some(d) => (d.tarball, d.integrity, d.shasum),
            None => (None, None, None),
        };
        let file = tarball
            .as_deref()
            .and_then(tarball_file_of)
            .unwrap_or_else(|| format!("{}-{version}.tgz", name.unscoped()));
        out.insert(
            file,
            DistRef {
                version,
                integrity,
                shasum,
                tarball,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packument::{abbreviate, parse, rewrite_tarballs, tarball_index};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn sample() -> Value {
        json!({
            "_id": "@s/p",
            "name": "@s/p",
            "readme": "big\n\"quoted\" \u{e9}",
            "dist-tags": {"latest": "1.0.0", "next": "2.0.0-beta.1"},
            "time": {"modified": "2024-01-02T03:04:05.000Z", "1.0.0": "2024-01-01T00:00:00.000Z"},
            "policyRestrictions": {"versions": {"0.9.0": {"name": "@s/p", "version": "0.9.0"}}, "message": "held"},
            "versions": {
                "1.0.0": {
                    "name": "@s/p", "version": "1.0.0", "description": "dropped",
                    "scripts": {"postinstall": "node x.js"},
                    "dependencies": {"a": "^1"},
                    "dist": {
                        "tarball": "http://up.example:4873/@s/p/-/p-1.0.0.tgz",
                        "integrity": "sha512-AAAA", "shasum": "abcd",
                        "signatures": [{"keyid": "SHA256:k", "sig": "MEUC"}],
                        "unpackedSize": 1.50
                    }
                },
                "2.0.0-beta.1": {
                    "name": "@s/p", "version": "2.0.0-beta.1",
                    "dist": {"shasum": "ff"}
                },
                "3.0.0": "not an object"
            }
        })
    }

    fn same_as_tree(bytes: &[u8]) {
        let name = PackageName::parse("@s/p").unwrap();
        let base = "http://127.0.0.1:7373";
        let tree = parse(&name, bytes).unwrap();
        let mut want = abbreviate(&tree);
        rewrite_tarballs(&mut want, &name, base);
        let got: Value =
            serde_json::from_slice(&abbreviated_json(&name, bytes, base).unwrap()).unwrap();
        assert_eq!(got, want);
        let mut want = tree.clone();
        rewrite_tarballs(&mut want, &name, base);
        let got: Value = serde_json::from_slice(&full_json(&name, bytes, base).unwrap()).unwrap();
        assert_eq!(got, want);
        assert_eq!(
            tarball_index_json(&name, bytes).unwrap(),
            tarball_index(&name, &tree)
        );
        let mut rewritten = tree.clone();
        rewrite_tarballs(&mut rewritten, &name, base);
        let mut specs: Vec<String> = ["nope", "latest", "next"].map(String::from).to_vec();
        if let Some(v) = tree.get("versions").and_then(Value::as_object) {
            specs.extend(v.keys().cloned());
        }
        for spec in specs {
            let mut out = Vec::new();
            let found = write_version(&mut out, &name, bytes, base, &spec).unwrap();
            let want = crate::packument::resolve(&rewritten, &spec);
            assert_eq!(found, want.is_some(), "{spec}");
            if let Some(want) = want {
                let got: Value = serde_json::from_slice(&out).unwrap();
                assert_eq!(&got, want, "{spec}");
            }
        }
        let tags: Value = serde_json::from_slice(&dist_tags_json(&name, bytes).unwrap()).unwrap();
        let want = match tree.get("dist-tags") {
            Some(t @ Value::Object(_)) => t.clone(),
            _ => Value::Object(Default::default()),
        };
        assert_eq!(tags, want);
    }

    #[test]
    fn equals_the_tree_based_derivations() {
        same_as_tree(&serde_json::to_vec(&sample()).unwrap());
        same_as_tree(&serde_json::to_vec_pretty(&sample()).unwrap());
    }

    #[test]
    fn values_keep_their_exact_text() {
        let bytes = br#"{"name":"x","versions":{"1.0.0":{"dist":{"integrity":"sha512-\u002fAB==","n":1.50e0,"tarball":"http://u/x/-/x-1.0.0.tgz"}}}}"#;
        let name = PackageName::parse("x").unwrap();
        let out = String::from_utf8(full_json(&name, bytes, "http://g").unwrap()).unwrap();
        assert!(out.contains(r#""integrity":"sha512-\u002fAB==""#), "{out}");
        assert!(out.contains(r#""n":1.50e0"#), "{out}");
        assert!(
            out.contains(r#""tarball":"http://g/x/-/x-1.0.0.tgz""#),
            "{out}"
        );
    }

    #[test]
    fn duplicate_keys_refuse_the_document() {
        let name = PackageName::parse("demo").unwrap();
        let v = r#"{"name":"demo","version":"1.0.0","dist":{"tarball":"http://x/demo/-/demo-1.0.0.tgz","integrity":"sha512-a"}}"#;
        let ok = format!(r#"{{"name":"demo","versions":{{"1.0.0":{v}}}}}"#);
        assert!(tarball_index_json(&name, ok.as_bytes()).is_ok());
        for doc in [
            // Top level.
            format!(r#"{{"name":"demo","versions":{{"1.0.0":{v}}},"versions":{{}}}}"#),
            format!(r#"{{"name":"other","name":"demo","versions":{{"1.0.0":{v}}}}}"#),
            // In versions.
            format!(r#"{{"name":"demo","versions":{{"1.0.0":{v},"1.0.0":{{}}}}}}"#),
            // In a version object.
            r#"{"name":"demo","versions":{"1.0.0":{"version":"1.0.0","dist":{},"dist":{"integrity":"sha512-b"}}}}"#.to_owned(),
            // In dist.
            r#"{"name":"demo","versions":{"1.0.0":{"dist":{"integrity":"sha512-a","integrity":"sha512-b"}}}}"#.to_owned(),
        ] {
            let e = tarball_index_json(&name, doc.as_bytes()).unwrap_err();
            assert!(e.to_string().contains("duplicate key"), "{doc}: {e}");
            assert!(full_json(&name, doc.as_bytes(), "http://h").is_err(), "{doc}");
            assert!(abbreviated_json(&name, doc.as_bytes(), "http://h").is_err(), "{doc}");
        }
    }

    #[test]
    fn refuses_what_parse_refuses() {
        let name = PackageName::parse("x").unwrap();
        for bad in [
            &b"{"[..],
            b"[]",
            br#"{"name":"y","versions":{}}"#,
            br#"{"name":"x"}"#,
            b"\xff",
        ] {
            assert!(abbreviated_json(&name, bad, "http://g").is_err(), "{bad:?}");
            assert!(full_json(&name, bad, "http://g").is_err());
            assert!(tarball_index_json(&name, bad).is_err());
        }
    }

    proptest! {
        #[test]
        fn arbitrary_documents_agree_or_both_fail(
            versions in proptest::collection::btree_map("[0-9]\\.[0-9]\\.[0-9]", (any::<bool>(), "[a-z]{0,8}", any::<Option<u32>>()), 0..6),
        ) {
            let mut vs = serde_json::Map::new();
            for (v, (with_dist, s, n)) in versions {
                let mut doc = json!({"name": "@s/p", "version": v, "x": s, "n": n});
                if with_dist {
                    doc["dist"] = json!({"tarball": format!("http://h/@s/p/-/p-{v}.tgz"), "integrity": s});
                }
                vs.insert(v, doc);
            }
            let doc = json!({"name": "@s/p", "dist-tags": {}, "versions": vs});
            same_as_tree(&serde_json::to_vec(&doc).unwrap());
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let name = PackageName::parse("x").unwrap();
            let _ = abbreviated_json(&name, &b, "http://g");
            let _ = full_json(&name, &b, "http://g");
            let _ = tarball_index_json(&name, &b);
        }
    }
}
