//! Signed advisories across real nodes (R35): three operators that trust each other, advisory
//! threshold 2. An advisory signed on A is pending at B with one signer; the same advisory
//! signed on C puts it in force at B with two signers, and is found in the DHT under C's key;
//! a forgery gossiped by a bare peer is refused and counted; A's withdrawal lifts it.
//! While it is in force, `verify --lockfile` of a lockfile pinning the version fails and
//! names the advisory. Everything goes through the command line (`advisory add | rm | ls`) and gossip; waits poll
//! with a deadline.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use open_registry_node::net::ADVISORIES_TOPIC;
use open_registry_protocol::PackageName;
use open_registry_protocol::advisory::{self, AdvisoryGroup, AdvisoryList};
use open_registry_protocol::record::Signed;
use open_registry_tests::node::{cli, verify_lockfile};
use open_registry_tests::p2p::{EvilPeer, Values, now_ms};
use open_registry_tests::public::{Operator, network_view};
use open_registry_tests::{Node, probe};

/// How long gossip may take to bring an advisory.
const GOSSIP: Duration = Duration::from_secs(60);
const CLI: Duration = Duration::from_secs(30);

fn advisories(node: &impl Node, all: bool) -> Result<AdvisoryList> {
    let path = if all {
        "/-/open-registry/advisories?all=1"
    } else {
        "/-/open-registry/advisories"
    };
    let r = node.get(path, &[])?;
    ensure!(r.status == 200, "{path}: {} {}", r.status, r.text());
    serde_json::from_slice(&r.body).context("not an advisory list")
}

fn group<'a>(l: &'a AdvisoryList, name: &str, range: &str) -> Option<&'a AdvisoryGroup> {
    l.advisories
        .iter()
        .find(|g| g.name == name && g.range == range)
}

/// Waits until `node` lists the advisory about `left-pad@1.0.1` as `check` wants.
fn wait_group(
    node: &impl Node,
    what: &str,
    check: impl Fn(Option<&AdvisoryGroup>) -> bool,
) -> Result<AdvisoryList> {
    let mut last = None;
    probe::wait_for(GOSSIP, what, || {
        let l = advisories(node, true).ok()?;
        let ok = check(group(&l, "left-pad", "1.0.1"));
        last = Some(l.clone());
        ok.then_some(l)
    })
    .with_context(|| format!("the last list: {last:#?}"))
}

fn run(op: &Operator, args: &[&str]) -> Result<String> {
    let dir = op.dir().to_str().context("data dir")?;
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--data-dir", dir]);
    let out = cli(&all, CLI)?;
    ensure!(out.status.success(), "{}", out.describe());
    Ok(out.stdout)
}

#[test]
fn two_of_three_trusted_operators_take_a_version_down_and_a_withdrawal_lifts_it() -> Result<()> {
    let (a, b, c) = (Operator::new(41)?, Operator::new(42)?, Operator::new(43)?);
    let trust = format!("{},{},{}", a.id, b.id, c.id);
    // B mirrors left-pad from an upstream and enforces what is in force. The upstream has no
    // search (like many mirrors), so B answers search from its own index.
    let up = open_registry_tests::FakeUpstream::start_with(open_registry_tests::UpstreamOptions {
        no_search_or_audit: true,
        ..open_registry_tests::UpstreamOptions::default()
    })?;
    up.publish(&open_registry_tests::PackageSpec::new("left-pad", "1.0.0"))?;
    let bad = up.publish(&open_registry_tests::PackageSpec::new("left-pad", "1.0.1"))?;
    let common = [
        "--report-interval",
        "1s",
        "--trust",
        trust.as_str(),
        "--trust-threshold",
        "2",
        "--advisory-threshold",
        "2",
    ];
    let na = a.start(&[&["--no-upstream"][..], &common].concat())?;
    let joined = |op: &Operator, upstream: &[&str]| {
        let mut args = vec!["--bootstrap", na.addr.as_str()];
        args.extend(common);
        args.extend(upstream);
        op.start(&args)
    };
    let nb = joined(&b, &["--upstream", up.url()])?;
    let nc = joined(&c, &["--no-upstream"])?;
    let versions = |node: &open_registry_tests::NodeProcess| -> Result<Vec<String>> {
        let r = node.get("/left-pad", &[])?;
        ensure!(r.status == 200, "packument: {} {}", r.status, r.text());
        let v: serde_json::Value = serde_json::from_slice(&r.body)?;
        Ok(v["versions"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default())
    };
    ensure!(versions(&nb.node)? == ["1.0.0", "1.0.1"]);
    ensure!(nb.node.get(&bad.tarball_path, &[])?.status == 200);
    // What search offers as the newest version (the index follows the store in the
    // background).
    let searched = |node: &open_registry_tests::NodeProcess| -> Option<String> {
        let r = node.get("/-/v1/search?text=left-pad&size=5", &[]).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
        v["objects"]
            .as_array()?
            .iter()
            .find(|o| o["package"]["name"] == "left-pad")
            .and_then(|o| o["package"]["version"].as_str().map(str::to_owned))
    };
    probe::wait_for(GOSSIP, "B's search index to hold left-pad", || {
        (searched(&nb.node)? == "1.0.1").then_some(())
    })?;

    // One signer: pending everywhere, B included.
    let out = run(
        &a,
        &[
            "advisory",
            "add",
            "left-pad@1.0.1",
            "--kind",
            "compromised",
            "--reason",
            "stolen token publish",
            "--url",
            "https://example.org/incidents/1",
        ],
    )?;
    ensure!(
        out.contains("for left-pad@1.0.1 (compromised")
            && out.contains("1 of 2 signatures: pending"),
        "{out}"
    );
    let l = wait_group(&nb.node, "B to hear A's advisory", |g| {
        g.is_some_and(|g| !g.in_force && g.signers.len() == 1)
    })?;
    let g = group(&l, "left-pad", "1.0.1").context("listed")?;
    ensure!(g.signers[0].operator == a.id && g.signers[0].trusted && !g.signers[0].this_node);
    ensure!(g.signers[0].url.as_deref() == Some("https://example.org/incidents/1"));
    let ls = run(&b, &["advisory", "ls"])?;
    ensure!(
        ls.starts_with("left-pad@1.0.1  pending  1 of 2 signatures\n") && ls.contains(&a.id),
        "{ls}"
    );

    // A second trusted signer: in force at B with both.
    run(
        &c,
        &[
            "advisory",
            "add",
            "left-pad@1.0.1",
            "--reason",
            "payload confirmed",
        ],
    )?;
    let l = wait_group(&nb.node, "B to see the advisory in force", |g| {
        g.is_some_and(|g| g.in_force && g.signers.len() == 2)
    })?;
    let g = group(&l, "left-pad", "1.0.1").context("listed")?;
    let mut signers: Vec<&str> = g.signers.iter().map(|s| s.operator.as_str()).collect();
    signers.sort_unstable();
    let mut want = vec![a.id.as_str(), c.id.as_str()];
    want.sort_unstable();
    ensure!(signers == want, "{signers:?}");
    let ls = run(&b, &["advisory", "ls"])?;
    ensure!(
        ls.starts_with("left-pad@1.0.1  IN FORCE  2 of 2 signatures\n"),
        "{ls}"
    );
    let json: AdvisoryList = serde_json::from_str(&run(&b, &["advisory", "ls", "--json"])?)?;
    ensure!(group(&json, "left-pad", "1.0.1").is_some_and(|g| g.in_force));
    // The network view lists it in force, with both signers, and `network` says so.
    let w = network_view(&nb.node)?.withholding;
    ensure!(
        w.advisory_threshold == 2
            && w.pending.is_empty()
            && w.in_force.len() == 1
            && w.in_force[0].name == "left-pad"
            && w.in_force[0].signers.len() == 2,
        "{w:#?}"
    );
    let net = cli(&["network", "--registry", nb.node.gateway()], CLI)?;
    ensure!(
        net.stdout
            .contains("advisories  1 in force, 0 pending (in force at 2 trusted signers)\n")
            && net
                .stdout
                .contains("  left-pad@1.0.1  IN FORCE  2 of 2 signatures\n"),
        "{}",
        net.describe()
    );
    // In force, B withholds 1.0.1 from every client: gone from the packument (latest moved
    // down), its document and tarball answer 451 naming the advisory and its signers.
    ensure!(versions(&nb.node)? == ["1.0.0"]);
    ensure!(
        searched(&nb.node).as_deref() == Some("1.0.0"),
        "search offers {:?} while 1.0.1 is taken down",
        searched(&nb.node)
    );
    let doc: serde_json::Value = serde_json::from_slice(&nb.node.get("/left-pad", &[])?.body)?;
    ensure!(
        doc["dist-tags"]["latest"] == "1.0.0",
        "{}",
        doc["dist-tags"]
    );
    for path in [bad.tarball_path.as_str(), "/left-pad/1.0.1"] {
        let r = nb.node.get(path, &[])?;
        ensure!(r.status == 451, "{path}: {} {}", r.status, r.text());
        let text = r.text();
        ensure!(
            text.contains("taken down") && text.contains(&a.id) && text.contains(&c.id),
            "{path}: {text}"
        );
    }

    // A lockfile that picked 1.0.1 up elsewhere: `verify --lockfile` against B fails and
    // names the advisory, its kind and reason, its signers and its URL.
    let work = tempfile::tempdir()?;
    let lockfile = work.path().join("package-lock.json");
    let lock = serde_json::json!({
        "name": "app", "version": "1.0.0", "lockfileVersion": 3, "requires": true,
        "packages": {
            "": {"name": "app", "version": "1.0.0", "dependencies": {"left-pad": "1.0.1"}},
            "node_modules/left-pad": {
                "version": "1.0.1",
                "resolved": format!("{}{}", nb.node.gateway(), bad.tarball_path),
                "integrity": bad.integrity,
            },
        },
    });
    std::fs::write(&lockfile, serde_json::to_vec_pretty(&lock)?)?;
    let out = verify_lockfile(&lockfile, nb.node.gateway(), &work.path().join("data"))?;
    ensure!(!out.status.success(), "verify passed:\n{}", out.describe());
    let failure = out
        .stdout
        .lines()
        .find(|l| l.starts_with("left-pad@1.0.1: advisory: taken down by advisory left-pad@1.0.1"))
        .with_context(|| out.describe())?;
    ensure!(
        failure.contains(&a.id)
            && failure.contains(&c.id)
            && failure.contains("compromised: stolen token publish")
            && failure.contains("https://example.org/incidents/1")
            && !failure.contains("does not verify"),
        "{failure}"
    );

    // C's advisory is in the DHT under its key; a forgery on gossip (C's advisory claimed by
    // B) is refused and counted.
    let peer = EvilPeer::start(44, &[na.addr.as_str()], Values::Pointers)?;
    let theirs = g
        .signers
        .iter()
        .find(|s| s.operator == c.id)
        .context("C signed")?;
    let wire = base64::engine::general_purpose::STANDARD.decode(&theirs.signed)?;
    let key = advisory::dht_key(&PackageName::parse("left-pad")?, &c.id.parse()?);
    probe::wait_for(GOSSIP, "C's advisory in the DHT", || {
        peer.get_records(key.clone()).ok()?.into_iter().find(|v| {
            advisory::validate(&key, v, now_ms()).is_ok_and(|a| a.get().seq == theirs.seq)
        })
    })?;
    let mut forged = Signed::from_bytes(&wire)?;
    forged.signer = b.id.parse()?;
    probe::wait_for(GOSSIP, "A to refuse a forged advisory", || {
        let _ = peer.publish(ADVISORIES_TOPIC, forged.to_bytes());
        let refused = advisories(&na.node, false).ok()?.refused;
        refused.get("forged").is_some_and(|n| *n >= 1).then_some(())
    })?;
    ensure!(
        group(&advisories(&na.node, false)?, "left-pad", "1.0.1")
            .is_some_and(|g| g.signers.len() == 2),
        "the forgery changed nothing"
    );

    // A withdraws: one signer left, no longer in force; the withdrawal is listed with --all.
    let out = run(&a, &["advisory", "rm", "left-pad@1.0.1"])?;
    ensure!(
        out.contains("withdrew advisory for left-pad@1.0.1"),
        "{out}"
    );
    let l = wait_group(&nb.node, "B to hear A's withdrawal", |g| {
        g.is_some_and(|g| !g.in_force && g.signers.len() == 1)
    })?;
    let g = group(&l, "left-pad", "1.0.1").context("listed")?;
    ensure!(g.signers[0].operator == c.id);
    ensure!(
        l.withdrawn.iter().any(|w| w.operator == a.id),
        "{:?}",
        l.withdrawn
    );
    ensure!(
        versions(&nb.node)? == ["1.0.0", "1.0.1"],
        "the withdrawal restores 1.0.1"
    );
    ensure!(nb.node.get(&bad.tarball_path, &[])?.status == 200);
    ensure!(searched(&nb.node).as_deref() == Some("1.0.1"));
    let w = network_view(&nb.node)?.withholding;
    ensure!(
        w.in_force.is_empty() && w.pending.len() == 1 && w.pending[0].signers[0].operator == c.id,
        "after the withdrawal: {w:#?}"
    );
    let all = run(&b, &["advisory", "ls", "--all"])?;
    ensure!(all.contains("withdrawn:\n") && all.contains(&a.id), "{all}");
    // A's own node agrees, and nothing honest was refused.
    wait_group(&na.node, "A to see C's advisory pending", |g| {
        g.is_some_and(|g| !g.in_force && g.signers.len() == 1)
    })?;
    // (A republish in flight when the withdrawal was signed may be refused as rolled back;
    // the forgery may have reached B through A.)
    let refused = advisories(&nb.node, false)?.refused;
    ensure!(
        refused.keys().all(|k| k == "rolled_back" || k == "forged"),
        "honest gossip refused: {refused:?}"
    );
    drop(nc);
    Ok(())
}
