//! Issue 2's end-to-end test with real programs only: Verdaccio 6 (no uplinks) as the upstream,
//! filled by the real `npm publish`; our `open-registry` node mirroring it; the real `npm`,
//! `pnpm`, yarn 1, yarn 4 and bun installing through the node — and still installing once
//! Verdaccio is gone (issue 10: keep every client working).
//!
//! While Verdaccio is up: npm installs and re-installs (`npm ci`) with an empty cache; then each
//! of yarn 1, yarn 4 and bun installs its own copy of the project (writing its lockfile) and
//! re-installs it from that lockfile with an empty cache. Once Verdaccio is stopped: `npm ci`,
//! a fresh `pnpm install`, and yarn 1, yarn 4 and bun re-installing from their lockfiles, every
//! one with an empty cache. After every install node checks the tree ([`check_tree`]); each
//! lockfile must name every package with an integrity, record no download address but the
//! node's (yarn 1 and bun fetch from the addresses they recorded), never mention Verdaccio, and
//! not change on re-install; and each yarn or bun install must have fetched its tarballs from
//! the node (its tarball counter moves).
//!
//! The `[e2e]` lines it prints are the record of a run (timings, the clients' own summary
//! lines, the node's counters).
//!
//! The node runs in this process (`InProcessNode`, the arguments the binary would get), so that
//! its stored packuments pass their `max_age` by advancing its clock rather than by sleeping;
//! the clients and Verdaccio are real processes.

use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, ensure};
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

/// The clients besides npm and pnpm, each with a project and a lockfile of its own.
#[derive(Debug, Clone, Copy)]
enum Client {
    Yarn1,
    Yarn4,
    Bun,
}

const CLIENTS: [Client; 3] = [Client::Yarn1, Client::Yarn4, Client::Bun];

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::Yarn1 => "yarn 1",
            Client::Yarn4 => "yarn 4",
            Client::Bun => "bun",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Client::Yarn1 => "yarn1-project",
            Client::Yarn4 => "yarn4-project",
            Client::Bun => "bun-project",
        }
    }

    fn lockfile(self) -> &'static str {
        match self {
            Client::Yarn1 | Client::Yarn4 => "yarn.lock",
            Client::Bun => "bun.lock",
        }
    }

    /// `--version`, to fail early and clearly when the client is missing or cannot run here.
    fn version(self, npm: &Npm, dir: &Path) -> Result<String> {
        let out = match self {
            Client::Yarn1 => npm.yarn1(dir, &["--version"]),
            Client::Yarn4 => npm.yarn4(dir, &["--version"]),
            Client::Bun => npm.bun(dir, &["--version"]),
        }
        .and_then(Output::ok)
        .with_context(|| {
            format!(
                "`{} --version` failed: the client is missing or cannot run here",
                self.name()
            )
        })?;
        Ok(out.stdout.trim().to_owned())
    }

    /// Installs; from the lockfile alone (frozen or immutable) when `frozen`.
    fn install(self, npm: &Npm, dir: &Path, frozen: bool) -> Result<Output> {
        match self {
            Client::Yarn1 => npm.yarn1_install(dir, frozen),
            Client::Yarn4 => npm.yarn4_install(dir, frozen),
            Client::Bun => npm.bun_install(dir, frozen),
        }
        .with_context(|| format!("{} install in {}", self.name(), dir.display()))
    }
}

#[test]
fn every_client_installs_through_the_node_and_keeps_working_without_the_upstream() -> Result<()> {
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

    // 3. yarn 1, yarn 4 and bun, Verdaccio up: install (writing the lockfile), then re-install
    //    from the lockfile with an empty cache.
    let mut locks = Vec::new();
    for client in CLIENTS {
        let dir = work.path().join(client.dir());
        fixtures::write_project(&dir, &DEPS)?;
        say(&format!(
            "{} {}",
            client.name(),
            client.version(&npm, &dir)?
        ));
        // Past max-age: the node revalidates every packument with Verdaccio for this client.
        node.clock().advance(Duration::from_millis(1100));
        npm.clear_cache()?;
        let out = counted(&node, || client.install(&npm, &dir, false))?;
        report(
            &format!("{} install (through the node, Verdaccio up)", client.name()),
            &out,
        );
        check_tree(&npm, &dir)?;
        let lock = check_lock(client, &dir, &node.gateway, verdaccio.url())?;
        reinstall(client, &npm, &node, &dir, &lock, "Verdaccio up")?;
        locks.push((client, dir, lock));
    }

    // 4. Verdaccio gone: npm ci with an empty cache, from the node alone.
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

    // 5. pnpm, same project, Verdaccio still stopped.
    npm.clear_cache()?;
    let pnpm_project = work.path().join("pnpm-project");
    fixtures::write_project(&pnpm_project, &DEPS)?;
    let out = npm.pnpm_install(&pnpm_project)?;
    report("pnpm install (empty store, Verdaccio STOPPED)", &out);
    check_tree(&npm, &pnpm_project)?;

    // 6. yarn 1, yarn 4 and bun, Verdaccio still stopped: re-install from the lockfile with an
    //    empty cache.
    for (client, dir, lock) in &locks {
        reinstall(*client, &npm, &node, dir, lock, "Verdaccio STOPPED")?;
    }

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

/// Clears the caches and `node_modules`, re-installs from the lockfile, and checks the tree, the
/// lockfile (unchanged) and that the tarballs came from the node.
fn reinstall(
    client: Client,
    npm: &Npm,
    node: &InProcessNode,
    dir: &Path,
    lock: &str,
    upstream: &str,
) -> Result<()> {
    npm.clear_cache()?;
    for sub in ["node_modules", ".yarn"] {
        let p = dir.join(sub);
        if p.exists() {
            fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    let out = counted(node, || client.install(npm, dir, true))?;
    report(
        &format!(
            "{} re-install from {} (empty cache, {upstream})",
            client.name(),
            client.lockfile()
        ),
        &out,
    );
    check_tree(npm, dir)?;
    let now = fs::read_to_string(dir.join(client.lockfile()))?;
    ensure!(
        now == lock,
        "{} changed {} on re-install ({upstream}):\n--- before ---\n{lock}\n--- after ---\n{now}",
        client.name(),
        client.lockfile()
    );
    Ok(())
}

/// Runs `install` and fails unless the node handled at least one tarball request per package
/// meanwhile: the client really fetched through the node, not from some other registry or a
/// cache left over.
fn counted(node: &InProcessNode, install: impl FnOnce() -> Result<Output>) -> Result<Output> {
    let before = node.counter("tarball_requests")?;
    let out = install()?;
    let fetched = node.counter("tarball_requests")? - before;
    ensure!(
        fetched >= LOCKED.len() as u64,
        "`{}` made {fetched} tarball requests to the node, expected at least {}\n{}",
        out.command,
        LOCKED.len(),
        out.describe()
    );
    Ok(out)
}

/// The client's lockfile names every package with an sha512 integrity (yarn 4: its own
/// checksum), and points at nothing but the node: every download address in it is the node's,
/// and Verdaccio's address is nowhere. Returns the lockfile.
fn check_lock(client: Client, dir: &Path, gateway: &str, upstream: &str) -> Result<String> {
    let path = dir.join(client.lockfile());
    let lock = fs::read_to_string(&path)
        .with_context(|| format!("{} wrote no {}", client.name(), path.display()))?;
    let fail = |what: &str| anyhow!("{} {what}:\n{lock}", path.display());
    // yarn 4 percent-encodes an address it records (`::__archiveUrl=http%3A%2F%2F…`).
    let encoded = upstream.replace(':', "%3A").replace('/', "%2F");
    if lock.contains(upstream) || lock.contains(&encoded) {
        return Err(fail("records Verdaccio's address"));
    }
    for name in LOCKED {
        let entry = match client {
            Client::Yarn1 => format!("{name}@"),
            Client::Yarn4 => format!("\"{name}@npm:"),
            Client::Bun => format!("[\"{name}@"),
        };
        if !lock.contains(&entry) {
            return Err(fail(&format!("has no entry for {name}")));
        }
    }
    let hashes = match client {
        Client::Yarn1 | Client::Bun => lock.matches("sha512-").count(),
        Client::Yarn4 => lock.matches("checksum: ").count(),
    };
    if hashes < LOCKED.len() {
        return Err(fail(&format!("has only {hashes} integrity hashes")));
    }
    // yarn 1 and bun record where they downloaded each tarball (`resolved "…"`, the second
    // field of a bun.lock entry) and go there again: every address must be the node's.
    let gateway = format!("{gateway}/");
    let encoded_gateway = gateway.replace(':', "%3A").replace('/', "%2F");
    let mut addresses = 0;
    for (prefix, node) in [
        ("http://", gateway.as_str()),
        ("https://", gateway.as_str()),
        ("http%3A%2F%2F", encoded_gateway.as_str()),
        ("https%3A%2F%2F", encoded_gateway.as_str()),
    ] {
        for (at, _) in lock.match_indices(prefix) {
            let rest = &lock[at..];
            if !rest.starts_with(node) {
                let url: String = rest
                    .chars()
                    .take_while(|c| !"\"' \n".contains(*c))
                    .collect();
                return Err(fail(&format!("records an address outside the node: {url}")));
            }
            addresses += 1;
        }
    }
    if matches!(client, Client::Yarn1 | Client::Bun) && addresses < LOCKED.len() {
        return Err(fail(&format!(
            "records only {addresses} download addresses"
        )));
    }
    Ok(lock)
}

fn say(line: &str) {
    eprintln!("[e2e] {line}");
}

/// The step, its time, and the client's summary lines.
fn report(step: &str, out: &Output) {
    say(&format!("{step}: ok in {:.1}s", out.elapsed.as_secs_f64()));
    for line in out.stdout.lines().chain(out.stderr.lines()) {
        let l = line.trim();
        if l.starts_with("added")
            || l.starts_with("Packages:")
            || l.starts_with("Done in")
            || l.starts_with("dependencies:")
            || l.starts_with("+ ")
            || l.starts_with("➤ YN0000: · Done")
            || l.contains("packages installed")
            || l.starts_with("Saved lockfile")
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
