//! Issue 2's end-to-end test with real programs only: Verdaccio 6 (no uplinks) as the upstream,
//! filled by the real `npm publish`; our `open-registry` node mirroring it; the real `npm` and
//! `pnpm` installing through the node — and still installing once Verdaccio is gone.
//!
//! The `[e2e]` lines it prints are the record of a run (timings, npm's own summary lines, the
//! node's counters).
//!
//! The node runs in this process (`InProcessNode`, the arguments the binary would get), so that
//! its stored packuments pass their `max_age` by advancing its clock rather than by sleeping;
//! npm, pnpm and Verdaccio are real processes.

use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use open_registry_tests::{
    InProcessNode, Node as _, Output, PackageSpec, Verdaccio, fixtures, npm::Npm, probe,
};

/// Bigger than 20 MiB and incompressible, so the tarball is too.
const BIG: usize = 21 * 1024 * 1024;

const DEPS: [(&str, &str); 3] = [
    ("or-app", "^1.0.0"),
    ("or-pre", "next"),
    ("or-big", "1.0.0"),
];
const LOCKED: [&str; 5] = ["or-app", "or-plain", "@or-test/scoped", "or-pre", "or-big"];

#[test]
fn npm_and_pnpm_install_through_the_node_and_keep_working_without_the_upstream() -> Result<()> {
    let start = Instant::now();
    let mut verdaccio = Verdaccio::start()?;
    let work = tempfile::tempdir()?;
    let pkgs = work.path().join("pkgs");

    let plain = PackageSpec::new("or-plain", "1.0.0");
    let scoped = PackageSpec::new("@or-test/scoped", "1.2.0");
    let app = PackageSpec::new("or-app", "1.0.0")
        .dep("or-plain", "^1.0.0")
        .dep("@or-test/scoped", "^1.0.0");
    let pre_stable = PackageSpec::new("or-pre", "1.0.0");
    let pre_next = PackageSpec::new("or-pre", "2.0.0-beta.1");
    let big = PackageSpec::new("or-big", "1.0.0").big_file(BIG);
    let t = Instant::now();
    for spec in [&plain, &scoped, &app, &pre_stable, &big] {
        verdaccio.publish_spec(spec, &pkgs, None)?;
    }
    verdaccio.publish_spec(&pre_next, &pkgs, Some("next"))?;
    say(&format!(
        "published 6 versions (one over 20 MiB, one under `next`) to Verdaccio {} in {:.1}s",
        verdaccio.url(),
        t.elapsed().as_secs_f64()
    ));

    // A short max-age, so that once Verdaccio is gone the node really has to fall back on its
    // store (stale-if-error) instead of answering from fresh copies.
    let node = InProcessNode::start(&["--upstream", verdaccio.url(), "--max-age", "1s"])?;
    say(&format!(
        "node {} mirroring {}",
        node.gateway,
        verdaccio.url()
    ));
    let npm = Npm::new(&node.gateway)?;

    // 1. npm install through the node.
    let project = work.path().join("project");
    fixtures::write_project(&project, &DEPS)?;
    let out = npm.install(&project)?;
    report("npm install (through the node, Verdaccio up)", &out);
    check_tree(&npm, &project)?;
    let lock = fs::read_to_string(project.join("package-lock.json"))?;
    ensure!(
        !lock.contains("\"resolved\""),
        "the lockfile records addresses"
    );
    let lock: serde_json::Value = serde_json::from_str(&lock)?;
    for name in LOCKED {
        let entry = &lock["packages"][format!("node_modules/{name}")];
        ensure!(
            entry["integrity"]
                .as_str()
                .is_some_and(|i| i.starts_with("sha512-")),
            "{name} has no integrity in the lockfile: {entry}"
        );
    }
    let s = node.status()?;
    say(&format!(
        "node store after npm install: {} packuments, {} tarballs, {} bytes",
        s.store.packuments, s.store.tarballs, s.store.bytes
    ));
    ensure!(s.store.tarballs == 5, "{:?}", s.store);
    ensure!(s.store.bytes > BIG as u64, "{:?}", s.store);

    // 2. npm ci with an empty npm cache.
    npm.clear_cache()?;
    fs::remove_dir_all(project.join("node_modules"))?;
    let out = npm.ci(&project)?;
    report("npm ci (empty cache, Verdaccio up)", &out);
    check_tree(&npm, &project)?;

    // dist-tags through the node: npm view, the version route and the dist-tags route.
    let out = npm
        .run(&project, &["view", "or-pre@next", "version"])?
        .ok()?;
    ensure!(
        out.stdout.trim() == "2.0.0-beta.1",
        "npm view or-pre@next version: {:?}",
        out.stdout
    );
    say(&format!(
        "npm view or-pre@next version → {}",
        out.stdout.trim()
    ));
    let r = node.get("/or-pre/next", &[])?;
    ensure!(
        r.status == 200 && probe::json(&r)?["version"] == "2.0.0-beta.1",
        "{}",
        r.text()
    );
    let r = node.get("/-/package/or-pre/dist-tags", &[])?;
    let tags = probe::json(&r)?;
    ensure!(
        tags["next"] == "2.0.0-beta.1" && tags["latest"] == "1.0.0",
        "{tags}"
    );

    // 3. Verdaccio gone: npm ci with an empty cache, from the node alone.
    verdaccio.stop();
    ensure!(!verdaccio.is_running());
    let offline_since = Instant::now();
    // Let every stored packument pass its max-age, so each is revalidated and falls back.
    node.clock().advance(Duration::from_millis(1100));
    npm.clear_cache()?;
    fs::remove_dir_all(project.join("node_modules"))?;
    let out = npm.ci(&project)?;
    report("npm ci (empty cache, Verdaccio STOPPED)", &out);
    check_tree(&npm, &project)?;

    // 4. pnpm, same project, Verdaccio still stopped.
    npm.clear_cache()?;
    let pnpm_project = work.path().join("pnpm-project");
    fixtures::write_project(&pnpm_project, &DEPS)?;
    let out = npm.pnpm_install(&pnpm_project)?;
    report("pnpm install (empty store, Verdaccio STOPPED)", &out);
    check_tree(&npm, &pnpm_project)?;

    let s = node.status()?;
    let c = |k: &str| s.counters.get(k).copied().unwrap_or(0);
    say(&format!(
        "node after {:.1}s offline: packument requests {}, tarball requests {} ({} from store), \
         upstream requests {} ({} errors), stale answers {}, integrity failures {}",
        offline_since.elapsed().as_secs_f64(),
        c("packument_requests"),
        c("tarball_requests"),
        c("tarball_hits"),
        c("upstream_requests"),
        c("upstream_errors"),
        c("stale_served"),
        c("integrity_failures"),
    ));
    ensure!(
        c("stale_served") > 0,
        "the offline installs never needed the store's stale copies"
    );
    ensure!(c("integrity_failures") == 0);
    say(&format!("total {:.1}s", start.elapsed().as_secs_f64()));
    Ok(())
}

fn say(line: &str) {
    eprintln!("[e2e] {line}");
}

/// The step, its time, and npm's or pnpm's summary lines.
fn report(step: &str, out: &Output) {
    say(&format!("{step}: ok in {:.1}s", out.elapsed.as_secs_f64()));
    for line in out.stdout.lines().chain(out.stderr.lines()) {
        let l = line.trim();
        if l.starts_with("added")
            || l.starts_with("Packages:")
            || l.starts_with("Done in")
            || l.starts_with("dependencies:")
            || l.starts_with("+ ")
            || l.contains("WARN")
            || l.contains("ERR")
        {
            say(&format!("    {l}"));
        }
    }
}

/// Node sees the versions the specs asked for, and the big file whole.
fn check_tree(npm: &Npm, project: &Path) -> Result<()> {
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
    let out = npm
        .node(project, &script)
        .with_context(|| format!("checking the tree in {}", project.display()))?;
    ensure!(out.stdout.contains("tree ok"), "{}", out.describe());
    Ok(())
}
