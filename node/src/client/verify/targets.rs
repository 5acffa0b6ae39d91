//! What to verify: the versions a spec means, or every registry package of a lockfile.

use anyhow::{Context as _, bail};
use open_registry_protocol::PackageName;
use serde_json::Value;

use super::{Target, Verify};

/// Expands `name`, `name@version`, `name@tag` or `name@range` into targets, using the packument.
pub(crate) async fn targets_for_spec(v: &Verify, spec: &str) -> anyhow::Result<Vec<Target>> {
    let (name, want) = crate::client::pinning::split_spec(spec)?;
    let doc = v.packument(&name).await?;
    let versions: Vec<String> = doc
        .get("versions")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let want = want.unwrap_or_else(|| "latest".to_owned());
    let chosen: Vec<String> = if versions.contains(&want) {
        vec![want.clone()]
    } else if let Some(tagged) = doc
        .pointer(&format!("/dist-tags/{want}"))
        .and_then(Value::as_str)
    {
        vec![tagged.to_owned()]
    } else {
        let range = nodejs_semver::Range::parse(&want).map_err(|_| {
            anyhow::anyhow!("{want:?} is not a version, dist-tag or range of {name}")
        })?;
        versions
            .into_iter()
            .filter(|s| nodejs_semver::Version::parse(s).is_ok_and(|ver| range.satisfies(&ver)))
            .collect()
    };
    if chosen.is_empty() {
        bail!("no version of {name} matches {want:?}");
    }
    Ok(chosen
        .into_iter()
        .map(|version| Target {
            name: name.clone(),
            version,
            locked: None,
        })
        .collect())
}

/// Every registry package in an npm lockfile (v2 or v3 `packages`).
pub(crate) fn lockfile_targets(text: &str) -> anyhow::Result<Vec<Target>> {
    let v: Value = serde_json::from_str(text).context("the lockfile is not JSON")?;
    let version = v
        .get("lockfileVersion")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let Some(pkgs) = v.get("packages").and_then(Value::as_object) else {
        bail!(
            "lockfile version {version} has no \"packages\" section (v2 or v3 needed; run npm install with npm 7 or newer)"
        );
    };
    let mut out: Vec<Target> = Vec::new();
    for (path, e) in pkgs {
        let Some(idx) = path.rfind("node_modules/") else {
            continue; // the root project, or a workspace folder
        };
        if e.get("link").and_then(Value::as_bool) == Some(true)
            || e.get("inBundle").and_then(Value::as_bool) == Some(true)
        {
            continue;
        }
        let Some(ver) = e.get("version").and_then(Value::as_str) else {
            continue;
        };
        if nodejs_semver::Version::parse(ver).is_err() {
            continue; // git, file: and other non-registry sources
        }
        let name = e
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or(&path[idx + "node_modules/".len()..]);
        let name = PackageName::parse(name)
            .with_context(|| format!("lockfile entry {path:?} has an invalid package name"))?;
        let t = Target {
            name,
            version: ver.to_owned(),
            locked: e
                .get("integrity")
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out.sort_by(|a, b| (a.name.as_str(), &a.version).cmp(&(b.name.as_str(), &b.version)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockfile_v3_entries() {
        let lock = r#"{
          "name": "app", "lockfileVersion": 3,
          "packages": {
            "": {"name": "app", "dependencies": {"a": "^1"}},
            "node_modules/a": {"version": "1.0.0", "integrity": "sha512-A"},
            "node_modules/a/node_modules/@s/b": {"version": "2.0.0", "integrity": "sha512-B"},
            "node_modules/alias": {"name": "c", "version": "3.0.0", "integrity": "sha512-C"},
            "node_modules/linked": {"resolved": "../x", "link": true},
            "node_modules/gitdep": {"version": "git+ssh://x", "integrity": "sha512-D"},
            "node_modules/a/node_modules/bundled": {"version": "1.0.0", "inBundle": true}
          }
        }"#;
        let t = lockfile_targets(lock).unwrap();
        let got: Vec<(&str, &str, Option<&str>)> = t
            .iter()
            .map(|t| (t.name.as_str(), t.version.as_str(), t.locked.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("@s/b", "2.0.0", Some("sha512-B")),
                ("a", "1.0.0", Some("sha512-A")),
                ("c", "3.0.0", Some("sha512-C")),
            ]
        );
        assert!(lockfile_targets(r#"{"lockfileVersion":1,"dependencies":{}}"#).is_err());
    }
}
