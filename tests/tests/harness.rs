//! The harness proves itself against a real registry: Verdaccio 6 with no uplinks, filled by
//! the real `npm publish`, installed from by the real `npm` and `pnpm`.
//!
//! If this fails, the end-to-end tests of the node cannot be trusted; if it passes, the
//! packages, projects and clients they use are known to work against a registry that is not
//! ours.

use std::{fs, time::Duration};

use anyhow::{Result, ensure};
use open_registry_tests::{PackageSpec, Verdaccio, fixtures, http, npm::Npm};

/// Bigger than 20 MiB, incompressible: the tarball is about this size too.
const BIG: usize = 21 * 1024 * 1024;

#[test]
fn verdaccio_round_trip_with_real_npm_and_pnpm() -> Result<()> {
    let verdaccio = Verdaccio::start()?;
    let work = tempfile::tempdir()?;
    let pkgs = work.path().join("pkgs");

    // plain, scoped, one depending on both, a prerelease under `next`, a big tarball.
    let plain = PackageSpec::new("or-plain", "1.0.0");
    let scoped = PackageSpec::new("@or-test/scoped", "1.2.0");
    let app = PackageSpec::new("or-app", "1.0.0")
        .dep("or-plain", "^1.0.0")
        .dep("@or-test/scoped", "^1.0.0");
    let pre_stable = PackageSpec::new("or-pre", "1.0.0");
    let pre_next = PackageSpec::new("or-pre", "2.0.0-beta.1");
    let big = PackageSpec::new("or-big", "1.0.0").big_file(BIG);
    for spec in [&plain, &scoped, &app, &pre_stable, &big] {
        verdaccio.publish_spec(spec, &pkgs, None)?;
    }
    verdaccio.publish_spec(&pre_next, &pkgs, Some("next"))?;

    // Verdaccio recorded the dist-tags npm set.
    let doc = http::get(
        &format!("{}/or-pre", verdaccio.url()),
        Duration::from_secs(10),
    )?;
    ensure!(doc.status == 200, "GET /or-pre: {}", doc.status);
    let doc: serde_json::Value = serde_json::from_slice(&doc.body)?;
    ensure!(
        doc["dist-tags"]["latest"] == "1.0.0",
        "dist-tags: {}",
        doc["dist-tags"]
    );
    ensure!(
        doc["dist-tags"]["next"] == "2.0.0-beta.1",
        "dist-tags: {}",
        doc["dist-tags"]
    );

    // The big package's tarball really is over 20 MiB.
    let big_doc = http::get(
        &format!("{}/or-big", verdaccio.url()),
        Duration::from_secs(10),
    )?;
    let big_doc: serde_json::Value = serde_json::from_slice(&big_doc.body)?;
    let url = big_doc["versions"]["1.0.0"]["dist"]["tarball"]
        .as_str()
        .unwrap_or_default();
    let tgz = http::get(url, Duration::from_secs(60))?;
    ensure!(tgz.status == 200, "GET {url}: {}", tgz.status);
    ensure!(
        tgz.body.len() > 20 << 20,
        "or-big's tarball is {} bytes",
        tgz.body.len()
    );

    let project = work.path().join("project");
    fixtures::write_project(
        &project,
        &[
            ("or-app", "^1.0.0"),
            ("or-pre", "next"),
            ("or-big", "1.0.0"),
        ],
    )?;
    let npm = Npm::new(verdaccio.url())?;
    npm.install(&project)?;
    check_tree(&npm, &project)?;

    // The lockfile has integrity for every package and, by the project's .npmrc, no download
    // addresses (which is what lets `npm ci` later run against a different registry).
    let lock = fs::read_to_string(project.join("package-lock.json"))?;
    ensure!(
        !lock.contains("\"resolved\""),
        "lockfile records addresses:\n{lock}"
    );
    let lock: serde_json::Value = serde_json::from_str(&lock)?;
    for name in ["or-app", "or-plain", "@or-test/scoped", "or-pre", "or-big"] {
        let entry = &lock["packages"][format!("node_modules/{name}")];
        ensure!(
            entry["integrity"]
                .as_str()
                .is_some_and(|i| i.starts_with("sha512-")),
            "{name} has no integrity in the lockfile: {entry}"
        );
    }

    // `npm ci` with an empty cache reproduces the tree from the lockfile alone.
    npm.clear_cache()?;
    fs::remove_dir_all(project.join("node_modules"))?;
    npm.ci(&project)?;
    check_tree(&npm, &project)?;

    // pnpm, pinned in tests/e2e, installs the same project.
    let pnpm_project = work.path().join("pnpm-project");
    fixtures::write_project(
        &pnpm_project,
        &[
            ("or-app", "^1.0.0"),
            ("or-pre", "next"),
            ("or-big", "1.0.0"),
        ],
    )?;
    npm.pnpm_install(&pnpm_project)?;
    check_tree(&npm, &pnpm_project)?;

    // No uplinks: a package nobody published here is a 404, not a download from elsewhere.
    let missing = work.path().join("missing");
    fixtures::write_project(&missing, &[("is-number", "^7.0.0")])?;
    let out = npm.run(&missing, &["install"])?;
    ensure!(
        !out.success(),
        "installing an unpublished package succeeded"
    );
    ensure!(
        out.stderr.contains("E404") || out.stderr.contains("404"),
        "{}",
        out.describe()
    );
    Ok(())
}

/// Node sees the versions the specs asked for, and the big file whole.
fn check_tree(npm: &Npm, project: &std::path::Path) -> Result<()> {
    let script = format!(
        r#"
const assert = require('assert');
const app = require('or-app');
assert.deepStrictEqual(app.deps, {{ 'or-plain': '1.0.0', '@or-test/scoped': '1.2.0' }});
assert.strictEqual(require('or-pre').version, '2.0.0-beta.1');
const big = require.resolve('or-big/big.bin');
assert.strictEqual(require('fs').statSync(big).size, {BIG});
console.log('tree ok');
"#
    );
    let out = npm.node(project, &script)?;
    ensure!(out.stdout.contains("tree ok"), "{}", out.describe());
    Ok(())
}
