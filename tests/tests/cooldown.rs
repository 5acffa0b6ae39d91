//! R34 in docs/security.md, the release cooldown (issue 12, item 3): a version published less
//! than `min_release_age` ago is treated as not yet released, for every client alike. It is
//! absent from the packuments the node serves (its dist-tags moved to the newest older
//! version), its version document and tarball answer 451 with a message that says until when,
//! pins do not override that, exempt packages are never held, and a version the upstream gives
//! no publish time for ages from when the node first saw it (and the status says so).
//!
//! The node runs in this process on a manual clock ([`InProcessNode`]): the cooldown ends by
//! advancing the clock, never by waiting. The upstream ([`FakeUpstream`]) sets each version's
//! publish time; the real npm client installs through the node in the second test, pnpm,
//! yarn 1, yarn 4 and bun in the third (each into a fresh project with empty caches, through
//! [`open_registry_tests::installed`]): the newest version they pick is the newest the node
//! released, a pin on the held version fails, and an exempt package's newest installs at once.

use std::fs;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use open_registry_tests::installed::{Client, fresh_add, fresh_version, installed, lines_with};
use open_registry_tests::upstream::iso_time;
use open_registry_tests::{FakeUpstream, InProcessNode, Node as _, Npm, PackageSpec, http, probe};

const DAY: u64 = 86_400;

fn say(line: &str) {
    eprintln!("[cooldown] {line}");
}

/// Seconds since the epoch by the system clock (the manual clocks start there).
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Publishes `name` 1.0.0 (three days ago) and 1.0.1 (a minute ago).
fn publish_pair(up: &FakeUpstream, name: &str) -> Result<()> {
    up.publish(&PackageSpec::new(name, "1.0.0"))?;
    up.publish(&PackageSpec::new(name, "1.0.1"))?;
    let now = now_secs();
    up.set_time(name, "1.0.0", Some(&iso_time(now - 3 * DAY, 0)))?;
    up.set_time(name, "1.0.1", Some(&iso_time(now - 60, 0)))?;
    Ok(())
}

/// The `error` of a JSON error answer with `status`.
fn error_of(r: &http::Response, status: u16) -> Result<String> {
    ensure!(
        r.status == status,
        "expected {status}, got {}: {}",
        r.status,
        r.text()
    );
    let v = probe::json(r)?;
    v["error"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no error field in {v}"))
}

#[test]
fn r34_versions_in_their_cooldown_are_withheld_until_the_clock_passes() -> Result<()> {
    let start = Instant::now();
    let up = FakeUpstream::start()?;
    publish_pair(&up, "or-cd")?;
    up.publish(&PackageSpec::new("@or-ex/lib", "2.0.0"))?;
    up.publish(&PackageSpec::new("or-cd-notime", "1.0.0"))?;
    up.set_time("or-cd-notime", "1.0.0", None)?;
    let node = InProcessNode::start(&[
        "--upstream",
        up.url(),
        "--min-release-age",
        "1h",
        "--cooldown-exempt",
        "@or-ex/*,unrelated",
    ])?;

    // The packument, both forms: 1.0.1 is not there, `latest` is back on 1.0.0.
    for accept in ["application/json", "application/vnd.npm.install-v1+json"] {
        let doc = probe::json(&node.get("/or-cd", &[("accept", accept)])?)?;
        ensure!(doc["versions"].get("1.0.1").is_none(), "{accept}: {doc}");
        ensure!(doc["versions"].get("1.0.0").is_some(), "{accept}: {doc}");
        ensure!(doc["dist-tags"]["latest"] == "1.0.0", "{accept}: {doc}");
        let why = doc["policyRestrictions"]["message"].as_str().unwrap_or("");
        ensure!(
            why.contains("or-cd@1.0.1 is in its release cooldown"),
            "{accept}: {doc}"
        );
    }
    let full = probe::json(&node.get("/or-cd", &[])?)?;
    ensure!(full["time"].get("1.0.1").is_none(), "{full}");

    // The version and its tarball: 451, saying until when.
    let message = error_of(&node.get("/or-cd/1.0.1", &[])?, 451)?;
    say(&format!("GET /or-cd/1.0.1: 451 {message}"));
    ensure!(
        message.starts_with("or-cd@1.0.1 is in its release cooldown until ")
            && message.ends_with(" (min_release_age 1h on this registry)"),
        "{message}"
    );
    let tgz = error_of(&node.get("/or-cd/-/or-cd-1.0.1.tgz", &[])?, 451)?;
    ensure!(tgz == message, "{tgz} vs {message}");
    ensure!(node.get("/or-cd/-/or-cd-1.0.0.tgz", &[])?.status == 200);
    ensure!(node.get("/or-cd/latest", &[])?.status == 200);

    // A pin stores the held version but does not make the node serve it.
    let token = fs::read_to_string(node.data_dir.join("admin.token"))?;
    let pin = http::request(
        "POST",
        &format!("{}/-/open-registry/admin/pin", node.gateway),
        &[
            ("authorization", &format!("Bearer {}", token.trim())),
            ("content-type", "application/json"),
        ],
        br#"{"name":"or-cd","version":"1.0.1"}"#,
        Duration::from_secs(30),
    )?;
    ensure!(pin.status == 200, "pin: {} {}", pin.status, pin.text());
    error_of(&node.get("/or-cd/-/or-cd-1.0.1.tgz", &[])?, 451)?;
    error_of(&node.get("/or-cd/1.0.1", &[])?, 451)?;

    // Exempt: served at once.
    let exempt = probe::json(&node.get("/@or-ex%2flib", &[])?)?;
    ensure!(exempt["dist-tags"]["latest"] == "2.0.0", "{exempt}");
    ensure!(node.get("/@or-ex/lib/-/lib-2.0.0.tgz", &[])?.status == 200);

    // No publish time: aged from the node's first sight of it, which is now.
    let notime = probe::json(&node.get("/or-cd-notime", &[])?)?;
    ensure!(notime["versions"] == serde_json::json!({}), "{notime}");
    ensure!(notime["dist-tags"].get("latest").is_none(), "{notime}");
    let m = error_of(&node.get("/or-cd-notime/1.0.0", &[])?, 451)?;
    ensure!(m.contains("first saw it"), "{m}");

    let status = node.status()?;
    let cooldown = status.cooldown.context("no cooldown in the status")?;
    say(&format!("status: {cooldown:?}"));
    ensure!(cooldown.min_release_age_secs == 3600);
    ensure!(cooldown.first_seen_used >= 1, "{cooldown:?}");
    let held: Vec<(&str, &str, bool)> = cooldown
        .held
        .iter()
        .map(|h| (h.name.as_str(), h.version.as_str(), h.from_first_seen))
        .collect();
    ensure!(
        held == [("or-cd-notime", "1.0.0", true), ("or-cd", "1.0.1", false)],
        "{held:?}"
    );

    // An hour later by the node's clock: released, everywhere.
    node.clock().advance(Duration::from_secs(3600 + 60));
    ensure!(node.get("/or-cd/1.0.1", &[])?.status == 200);
    ensure!(node.get("/or-cd/-/or-cd-1.0.1.tgz", &[])?.status == 200);
    let doc = probe::json(&node.get("/or-cd", &[])?)?;
    ensure!(doc["dist-tags"]["latest"] == "1.0.1", "{doc}");
    ensure!(doc.get("policyRestrictions").is_none(), "{doc}");
    ensure!(node.get("/or-cd-notime/1.0.0", &[])?.status == 200);
    let cooldown = node.status()?.cooldown.context("no cooldown")?;
    ensure!(cooldown.held.is_empty(), "{cooldown:?}");
    say(&format!("done in {:.1}s", start.elapsed().as_secs_f64()));
    Ok(())
}

#[test]
fn r34_npm_installs_only_what_the_cooldown_released() -> Result<()> {
    let start = Instant::now();
    let up = FakeUpstream::start()?;
    publish_pair(&up, "or-cool")?;
    let work = tempfile::tempdir()?;

    let node = InProcessNode::start(&["--upstream", up.url(), "--min-release-age", "1h"])?;
    let npm = Npm::new(&node.gateway)?;
    let (got, _) = fresh_version(&npm, Client::Npm, work.path(), "latest", "or-cool")?;
    say(&format!("npm install or-cool: {got}"));
    ensure!(got == "1.0.0", "installed {got}");

    let (_, out) = fresh_add(&npm, Client::Npm, work.path(), "pinned", "or-cool@1.0.1")?;
    let text = format!("{}\n{}", out.stdout, out.stderr);
    ensure!(
        !out.status.success(),
        "npm install or-cool@1.0.1 succeeded: {text}"
    );
    ensure!(
        text.contains("or-cool@1.0.1 is in its release cooldown until ")
            && text.contains("(min_release_age 1h on this registry)"),
        "npm does not show the node's message:\n{text}"
    );
    let shown: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("npm error"))
        .collect();
    say(&format!(
        "npm install or-cool@1.0.1 fails:\n{}",
        shown.join("\n")
    ));

    // Exempt on another node: the newest version at once.
    let exempt = InProcessNode::start(&[
        "--upstream",
        up.url(),
        "--min-release-age",
        "1h",
        "--cooldown-exempt",
        "or-cool",
    ])?;
    let npm_exempt = Npm::new(&exempt.gateway)?;
    let (got, _) = fresh_version(&npm_exempt, Client::Npm, work.path(), "exempt", "or-cool")?;
    say(&format!(
        "npm install or-cool with the package exempt: {got}"
    ));
    ensure!(got == "1.0.1", "installed {got}");

    // Past the hour on the first node's clock: 1.0.1 installs there too.
    node.clock().advance(Duration::from_secs(3600));
    let (project, out) = fresh_add(&npm, Client::Npm, work.path(), "later", "or-cool@1.0.1")?;
    out.ok()
        .context("npm install or-cool@1.0.1 after the cooldown")?;
    ensure!(installed(&project, "or-cool")? == "1.0.1");
    let (got, _) = fresh_version(&npm, Client::Npm, work.path(), "later-latest", "or-cool")?;
    say(&format!("an hour later, npm install or-cool: {got}"));
    ensure!(got == "1.0.1", "installed {got}");
    say(&format!("done in {:.1}s", start.elapsed().as_secs_f64()));
    Ok(())
}

/// What a client printed about a failed install: its error lines (each client words them its
/// own way).
fn failure_lines(out: &open_registry_tests::Output) -> String {
    lines_with(
        out,
        &["ERR", "rror", "YN0082", "No candidates", "not found"],
    )
    .join("\n")
}

#[test]
fn r34_pnpm_yarn_and_bun_install_only_what_the_cooldown_released() -> Result<()> {
    const NAME: &str = "or-cool-clients";
    let start = Instant::now();
    let up = FakeUpstream::start()?;
    publish_pair(&up, NAME)?;
    let work = tempfile::tempdir()?;
    let held = InProcessNode::start(&["--upstream", up.url(), "--min-release-age", "1h"])?;
    let exempt = InProcessNode::start(&[
        "--upstream",
        up.url(),
        "--min-release-age",
        "1h",
        "--cooldown-exempt",
        NAME,
    ])?;
    let (npm_held, npm_exempt) = (Npm::new(&held.gateway)?, Npm::new(&exempt.gateway)?);
    let pinned = format!("{NAME}@1.0.1");
    // npm is the test above.
    for client in [Client::Pnpm, Client::Yarn1, Client::Yarn4, Client::Bun] {
        let t = Instant::now();
        let (got, _) = fresh_version(&npm_held, client, work.path(), "held", NAME)?;
        say(&format!(
            "{} {NAME} (1.0.1 published a minute ago, min_release_age 1h): {got}",
            client.add_command()
        ));
        ensure!(got == "1.0.0", "{} installed {got}", client.name());

        let (_, out) = fresh_add(&npm_held, client, work.path(), "pinned", &pinned)?;
        ensure!(
            !out.success(),
            "{} {pinned} succeeded in its cooldown:\n{}",
            client.add_command(),
            out.describe()
        );
        say(&format!(
            "{} {pinned} fails:\n{}",
            client.add_command(),
            failure_lines(&out)
        ));

        let (got, _) = fresh_version(&npm_exempt, client, work.path(), "exempt", NAME)?;
        say(&format!(
            "{} {NAME} with the package exempt: {got} ({:.1}s for the three)",
            client.add_command(),
            t.elapsed().as_secs_f64()
        ));
        ensure!(got == "1.0.1", "{} installed {got} (exempt)", client.name());
    }
    say(&format!("done in {:.1}s", start.elapsed().as_secs_f64()));
    Ok(())
}
