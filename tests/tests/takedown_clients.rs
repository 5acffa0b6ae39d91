//! Issue 12, item 5: the real npm clients against versions a node withholds — a signed
//! advisory in force (R35) and the release cooldown (R34) — so that what a user sees is
//! tested, not only the node's HTTP answers.
//!
//! 1. **Advisory** ([`an_advisory_in_force_takes_a_version_away_from_every_client`]): three
//!    operators A, B and C that trust each other, advisory threshold 2; B mirrors an upstream
//!    with `or-takedown` 1.0.0 and 1.0.1 (latest). With A's signature alone nothing is
//!    enforced and npm installs 1.0.1. Once C signs too and B holds the advisory in force,
//!    npm, pnpm, yarn 1, yarn 4 and bun (each in a fresh project with empty caches) install
//!    1.0.0; `npm ci` of a lockfile pinning 1.0.1 at B and `npm install or-takedown@1.0.1`
//!    fail, showing the node's message (taken down, the kind, the signers). A's withdrawal
//!    lifts it: npm and pnpm install 1.0.1 again.
//! 2. **Incident replay** ([`an_incident_is_held_by_the_cooldown_then_by_the_advisory`]):
//!    node B (in this process, on a manual clock, `min_release_age` 1h, trusting A and C with
//!    threshold 2) serves `or-incident` 1.0.0, published days ago and installed once. A
//!    "compromised" 1.0.1 is published: the cooldown holds it (npm gets 1.0.0, a pin fails
//!    with "release cooldown"); A and C sign an advisory on it, and once B's clock is past
//!    the hour it is still withheld, now by the advisory; a lockfile that picked 1.0.1 up
//!    straight from the upstream fails `open-registry verify --lockfile` against B, which
//!    names the advisory.
//!
//! The cooldown with pnpm, yarn and bun is in `cooldown.rs`, next to npm's. Every upstream is
//! a [`FakeUpstream`] on 127.0.0.1; every wait polls with a deadline. The `[takedown]` and
//! `[incident]` lines printed are the record of a run: what each client installed and the
//! error lines it printed.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use open_registry_protocol::advisory::{AdvisoryGroup, AdvisoryList};
use open_registry_tests::installed::{self, Client, fresh_add, fresh_version, lines_with};
use open_registry_tests::node::{cli, verify_lockfile};
use open_registry_tests::public::Operator;
use open_registry_tests::upstream::iso_time;
use open_registry_tests::{FakeUpstream, Node, Npm, Output, PackageSpec, Published, probe};

/// How long gossip may take to bring an advisory.
const GOSSIP: Duration = Duration::from_secs(60);
/// How long one `open-registry` command may take.
const CLI: Duration = Duration::from_secs(30);
const DAY: u64 = 86_400;

fn say(line: &str) {
    eprintln!("[takedown] {line}");
}

fn story(line: &str) {
    eprintln!("[incident] {line}");
}

/// `GET /-/open-registry/advisories?all=1` (pending and untrusted ones too).
fn advisories(node: &impl Node) -> Result<AdvisoryList> {
    let path = "/-/open-registry/advisories?all=1";
    let r = node.get(path, &[])?;
    ensure!(r.status == 200, "{path}: {} {}", r.status, r.text());
    serde_json::from_slice(&r.body).context("not an advisory list")
}

/// Waits until `node` lists the advisory about `name@range` as `check` wants; returns it.
fn wait_advisory(
    node: &impl Node,
    name: &str,
    range: &str,
    what: &str,
    check: impl Fn(Option<&AdvisoryGroup>) -> bool,
) -> Result<Option<AdvisoryGroup>> {
    let mut last = None;
    probe::wait_for(GOSSIP, what, || {
        let l = advisories(node).ok()?;
        let g = l
            .advisories
            .iter()
            .find(|g| g.name == name && g.range == range)
            .cloned();
        let ok = check(g.as_ref());
        last = Some(l);
        ok.then_some(g)
    })
    .with_context(|| format!("the last list: {last:#?}"))
}

/// In force with exactly the signers `ids`.
fn in_force_by(g: Option<&AdvisoryGroup>, ids: &[&str]) -> bool {
    g.is_some_and(|g| {
        let mut signers: Vec<&str> = g.signers.iter().map(|s| s.operator.as_str()).collect();
        signers.sort_unstable();
        let mut want = ids.to_vec();
        want.sort_unstable();
        g.in_force && signers == want
    })
}

/// `open-registry ARGS --data-dir OP` (the operator's running node); its stdout.
fn operator_cli(op: &Operator, args: &[&str]) -> Result<String> {
    let dir = op.dir().to_str().context("data dir")?;
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--data-dir", dir]);
    let out = cli(&all, CLI)?;
    ensure!(out.status.success(), "{}", out.describe());
    Ok(out.stdout)
}

/// `advisory add NAME@VERSION --kind compromised --reason REASON --url URL` on `op`'s node.
fn sign(op: &Operator, spec: &str, reason: &str, url: &str) -> Result<String> {
    operator_cli(
        op,
        &[
            "advisory",
            "add",
            spec,
            "--kind",
            "compromised",
            "--reason",
            reason,
            "--url",
            url,
        ],
    )
}

/// The arguments every operator's node gets: trust all three, thresholds 2, quick reports.
fn trusting(trust: &str) -> Vec<&str> {
    vec![
        "--report-interval",
        "1s",
        "--trust",
        trust,
        "--trust-threshold",
        "2",
        "--advisory-threshold",
        "2",
    ]
}

/// A project in `dir` depending on `pkg`'s exact version, with an npm lockfile (v3) that pins
/// it at `resolved` with its integrity, as a lockfile written elsewhere would.
fn pinned_project(dir: &Path, pkg: &Published, resolved: &str) -> Result<()> {
    fs::create_dir_all(dir)?;
    let manifest = serde_json::json!({
        "name": "app", "version": "1.0.0", "private": true,
        "dependencies": {&pkg.name: &pkg.version},
    });
    fs::write(
        dir.join("package.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    let lock = serde_json::json!({
        "name": "app", "version": "1.0.0", "lockfileVersion": 3, "requires": true,
        "packages": {
            "": {"name": "app", "version": "1.0.0", "dependencies": {&pkg.name: &pkg.version}},
            format!("node_modules/{}", pkg.name): {
                "version": &pkg.version,
                "resolved": resolved,
                "integrity": &pkg.integrity,
            },
        },
    });
    fs::write(
        dir.join("package-lock.json"),
        serde_json::to_vec_pretty(&lock)?,
    )?;
    Ok(())
}

/// stdout and stderr together.
fn text(out: &Output) -> String {
    format!("{}\n{}", out.stdout, out.stderr)
}

/// What a client printed about a failure: its error lines, however it words them.
fn error_lines(out: &Output) -> String {
    lines_with(out, &["ERR", "rror", "YN0082", "YN0035", "No candidates"]).join("\n")
}

/// Seconds since the epoch by the system clock.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

#[test]
fn an_advisory_in_force_takes_a_version_away_from_every_client() -> Result<()> {
    const NAME: &str = "or-takedown";
    const URL: &str = "https://example.org/incidents/or-takedown";
    let start = Instant::now();
    let (a, b, c) = (Operator::new(61)?, Operator::new(62)?, Operator::new(63)?);
    let trust = format!("{},{},{}", a.id, b.id, c.id);
    let up = FakeUpstream::start()?;
    up.publish(&PackageSpec::new(NAME, "1.0.0"))?;
    let bad = up.publish(&PackageSpec::new(NAME, "1.0.1"))?;
    let common = trusting(&trust);
    let na = a.start(&[&["--no-upstream"][..], &common].concat())?;
    let joined = |op: &Operator, upstream: &[&str]| {
        let mut args = vec!["--bootstrap", na.addr.as_str()];
        args.extend(&common);
        args.extend(upstream);
        op.start(&args)
    };
    let nb = joined(&b, &["--upstream", up.url()])?;
    let nc = joined(&c, &["--no-upstream"])?;
    let npm = Npm::new(nb.node.gateway())?;
    let work = tempfile::tempdir()?;
    say(&format!(
        "operators A {}, B {}, C {}; advisory threshold 2; B {} mirrors {NAME} 1.0.0 and 1.0.1",
        a.id,
        b.id,
        c.id,
        nb.node.gateway()
    ));

    // One signer: pending, nothing enforced.
    let out = sign(&a, &format!("{NAME}@1.0.1"), "stolen token publish", URL)?;
    ensure!(out.contains("1 of 2 signatures: pending"), "{out}");
    wait_advisory(&nb.node, NAME, "1.0.1", "B to hear A's advisory", |g| {
        g.is_some_and(|g| !g.in_force && g.signers.len() == 1)
    })?;
    let (got, _) = fresh_version(&npm, Client::Npm, work.path(), "one-signer", NAME)?;
    say(&format!(
        "A signed alone (1 of 2, pending): npm install {NAME} -> {got}"
    ));
    ensure!(
        got == "1.0.1",
        "one signature must not be enforced: npm got {got}"
    );

    // A second trusted signer: in force at B.
    let t = Instant::now();
    sign(&c, &format!("{NAME}@1.0.1"), "payload confirmed", URL)?;
    wait_advisory(
        &nb.node,
        NAME,
        "1.0.1",
        "B to hold the advisory in force",
        |g| in_force_by(g, &[&a.id, &c.id]),
    )?;
    say(&format!(
        "C signed too: in force at B (2 of 2) {:.1}s later",
        t.elapsed().as_secs_f64()
    ));
    for client in installed::ALL {
        let (got, out) = fresh_version(&npm, client, work.path(), "in-force", NAME)?;
        say(&format!(
            "in force: {} {NAME} -> {got} ({:.1}s)",
            client.add_command(),
            out.elapsed.as_secs_f64()
        ));
        ensure!(got == "1.0.0", "{} installed {got}", client.name());
    }

    // A lockfile pinning 1.0.1 at B: `npm ci` fails with the node's 451 message.
    let ci = work.path().join("ci");
    pinned_project(
        &ci,
        &bad,
        &format!("{}{}", nb.node.gateway(), bad.tarball_path),
    )?;
    npm.clear_cache()?;
    let out = npm.run(&ci, &["ci"])?;
    let all = text(&out);
    ensure!(
        !out.success(),
        "npm ci installed the taken-down version:\n{all}"
    );
    let taken_down = format!("{NAME}@1.0.1 is taken down on this registry: compromised");
    ensure!(
        all.contains("451")
            && all.contains(&taken_down)
            && all.contains(&a.id)
            && all.contains(&c.id)
            && all.contains(URL),
        "npm ci does not show the node's message:\n{all}"
    );
    say(&format!(
        "npm ci of a package-lock.json pinning {NAME}@1.0.1 at B fails:\n{}",
        lines_with(&out, &["npm error"]).join("\n")
    ));

    // A pin on the command line: npm fails with the node's message too.
    let (_, out) = fresh_add(
        &npm,
        Client::Npm,
        work.path(),
        "pinned",
        &format!("{NAME}@1.0.1"),
    )?;
    let all = text(&out);
    ensure!(!out.success(), "npm installed {NAME}@1.0.1:\n{all}");
    ensure!(
        all.contains(&taken_down) && all.contains(&a.id) && all.contains(&c.id),
        "npm install {NAME}@1.0.1 does not show the node's message:\n{all}"
    );
    say(&format!(
        "npm install {NAME}@1.0.1 fails:\n{}",
        lines_with(&out, &["npm error"]).join("\n")
    ));
    // The other clients refuse the pin too (in their own words: the version is not in the
    // packument they get).
    for client in [Client::Pnpm, Client::Yarn1, Client::Yarn4, Client::Bun] {
        let (_, out) = fresh_add(
            &npm,
            client,
            work.path(),
            "pinned",
            &format!("{NAME}@1.0.1"),
        )?;
        ensure!(
            !out.success(),
            "{} {NAME}@1.0.1 installed the taken-down version:\n{}",
            client.add_command(),
            out.describe()
        );
        say(&format!(
            "{} {NAME}@1.0.1 fails:\n{}",
            client.add_command(),
            error_lines(&out)
        ));
    }

    // A withdraws: one signer left, B no longer enforces it.
    let out = operator_cli(&a, &["advisory", "rm", &format!("{NAME}@1.0.1")])?;
    ensure!(out.contains("withdrew advisory"), "{out}");
    wait_advisory(&nb.node, NAME, "1.0.1", "B to hear A's withdrawal", |g| {
        g.is_some_and(|g| !g.in_force && g.signers.len() == 1)
    })?;
    for client in [Client::Npm, Client::Pnpm] {
        let (got, _) = fresh_version(&npm, client, work.path(), "withdrawn", NAME)?;
        say(&format!(
            "A withdrew (1 of 2 left): {} {NAME} -> {got}",
            client.add_command()
        ));
        ensure!(
            got == "1.0.1",
            "{} installed {got} after the withdrawal",
            client.name()
        );
    }
    drop(nc);
    say(&format!("done in {:.1}s", start.elapsed().as_secs_f64()));
    Ok(())
}

#[test]
fn an_incident_is_held_by_the_cooldown_then_by_the_advisory() -> Result<()> {
    const NAME: &str = "or-incident";
    const URL: &str = "https://example.org/incidents/or-incident";
    let start = Instant::now();
    let (a, b, c) = (Operator::new(71)?, Operator::new(72)?, Operator::new(73)?);
    let trust = format!("{},{},{}", a.id, c.id, b.id);
    let up = FakeUpstream::start()?;
    up.publish(&PackageSpec::new(NAME, "1.0.0"))?;
    up.set_time(NAME, "1.0.0", Some(&iso_time(now_secs() - 3 * DAY, 0)))?;
    let common = trusting(&trust);
    let na = a.start(&[&["--no-upstream"][..], &common].concat())?;
    let joined = [&["--bootstrap", na.addr.as_str()][..], &common].concat();
    let nc = c.start(&[&joined[..], &["--no-upstream"]].concat())?;
    // A short max-age, so that B sees the upstream's new version one clock step later.
    let nb = b.start_in_process(
        &[
            &joined[..],
            &[
                "--upstream",
                up.url(),
                "--min-release-age",
                "1h",
                "--max-age",
                "1s",
            ],
        ]
        .concat(),
    )?;
    let npm = Npm::new(nb.node.gateway())?;
    let work = tempfile::tempdir()?;
    let (got, _) = fresh_version(&npm, Client::Npm, work.path(), "before", NAME)?;
    story(&format!(
        "B {} (min_release_age 1h, trusts A and C, threshold 2) serves {NAME} 1.0.0, \
         published 3 days ago: npm install {NAME} -> {got}",
        nb.node.gateway()
    ));
    ensure!(got == "1.0.0", "installed {got}");

    // The compromised 1.0.1 is published now.
    let bad = up.publish(&PackageSpec::new(NAME, "1.0.1"))?;
    up.set_time(NAME, "1.0.1", Some(&iso_time(now_secs(), 0)))?;
    nb.node.clock().advance(Duration::from_secs(2));
    let doc = probe::json(&nb.node.get(&format!("/{NAME}"), &[])?)?;
    let why = doc["policyRestrictions"]["message"].as_str().unwrap_or("");
    ensure!(
        doc["dist-tags"]["latest"] == "1.0.0" && why.contains("release cooldown"),
        "B did not hold the new version: {doc}"
    );
    story(&format!(
        "{NAME}@1.0.1 (compromised) published upstream now; B holds it: {why}"
    ));

    // (a) The cooldown catches it.
    let (got, _) = fresh_version(&npm, Client::Npm, work.path(), "cooldown", NAME)?;
    story(&format!("(a) npm install {NAME} -> {got}"));
    ensure!(got == "1.0.0", "installed {got} in the cooldown");
    let (_, out) = fresh_add(
        &npm,
        Client::Npm,
        work.path(),
        "cooldown-pin",
        &format!("{NAME}@1.0.1"),
    )?;
    let all = text(&out);
    ensure!(
        !out.success(),
        "npm installed {NAME}@1.0.1 in its cooldown:\n{all}"
    );
    ensure!(
        all.contains(&format!("{NAME}@1.0.1 is in its release cooldown until ")),
        "npm does not show the cooldown:\n{all}"
    );
    story(&format!(
        "(a) npm install {NAME}@1.0.1 fails:\n{}",
        lines_with(&out, &["npm error"]).join("\n")
    ));

    // (b) A and C sign an advisory; B holds it in force. (B's manual clock has stood still
    // since B started while A and C sign by the wall clock; B refuses advisories dated more
    // than five minutes ahead of its own time, so it catches up first. Nothing else moves:
    // 1.0.1 is still minutes old by B's clock.)
    let lag = open_registry_node::clock::now_ms().saturating_sub(nb.node.clock().now_ms());
    nb.node.clock().advance(Duration::from_millis(lag));
    let t = Instant::now();
    sign(
        &a,
        &format!("{NAME}@1.0.1"),
        "maintainer token stolen; 1.0.1 ships a stealer",
        URL,
    )?;
    sign(&c, &format!("{NAME}@1.0.1"), "payload confirmed", URL)?;
    wait_advisory(
        &nb.node,
        NAME,
        "1.0.1",
        "B to hold the advisory in force",
        |g| in_force_by(g, &[&a.id, &c.id]),
    )?;
    story(&format!(
        "(b) A and C signed an advisory on 1.0.1 (compromised): in force at B {:.1}s later",
        t.elapsed().as_secs_f64()
    ));
    // Past the hour on B's clock: the cooldown is over, the advisory still holds it.
    nb.node.clock().advance(Duration::from_secs(3600 + 60));
    let r = nb.node.get(&format!("/{NAME}/1.0.1"), &[])?;
    ensure!(r.status == 451, "/{NAME}/1.0.1: {} {}", r.status, r.text());
    let message = probe::error_message(&r)?;
    ensure!(
        message.starts_with(&format!(
            "{NAME}@1.0.1 is taken down on this registry: compromised"
        )) && message.contains(&a.id)
            && message.contains(&c.id)
            && !message.contains("cooldown"),
        "{message}"
    );
    let tgz = nb.node.get(&bad.tarball_path, &[])?;
    ensure!(
        tgz.status == 451 && probe::error_message(&tgz)? == message,
        "{}: {} {}",
        bad.tarball_path,
        tgz.status,
        tgz.text()
    );
    story(&format!(
        "(b) an hour later by B's clock, GET /{NAME}/1.0.1: 451 {message}"
    ));
    let (got, _) = fresh_version(&npm, Client::Npm, work.path(), "advisory", NAME)?;
    story(&format!("(b) npm install {NAME} -> {got}"));
    ensure!(got == "1.0.0", "installed {got} with the advisory in force");

    // (c) A lockfile that picked 1.0.1 up straight from the upstream: verify against B fails.
    let elsewhere = work.path().join("elsewhere");
    pinned_project(&elsewhere, &bad, &bad.tarball_url)?;
    let lockfile = elsewhere.join("package-lock.json");
    let out = verify_lockfile(
        &lockfile,
        nb.node.gateway(),
        &work.path().join("verify-data"),
    )?;
    ensure!(!out.status.success(), "verify passed:\n{}", out.describe());
    let failure = out
        .stdout
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "{NAME}@1.0.1: advisory: taken down by advisory {NAME}@1.0.1"
            ))
        })
        .with_context(|| out.describe())?;
    ensure!(
        failure.contains(&a.id)
            && failure.contains(&c.id)
            && failure.contains("compromised")
            && failure.contains(URL),
        "{failure}"
    );
    story(&format!(
        "(c) open-registry verify --lockfile (1.0.1 resolved at the upstream) --registry B fails:\n{}",
        out.stdout.trim_end()
    ));
    drop((nb, nc));
    story(&format!("done in {:.1}s", start.elapsed().as_secs_f64()));
    Ok(())
}
