//! The network's operation in public, across real nodes: signed reports and statements
//! gossiped between processes, added up by a third node; a sybil that claims a huge cost
//! changes no trusted figure; forged, replayed and oversized messages are refused and counted;
//! a node that stops goes offline after two windows. The dashboard shows the same figures in
//! headless Chromium.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use open_registry_node::net::{REPORTS_TOPIC, STATEMENTS_TOPIC};
use open_registry_protocol::record::{Signable as _, Signed};
use open_registry_protocol::report::Report;
use open_registry_protocol::statement::{SignedStatement, Statement};
use open_registry_tests::browser::open_dashboard;
use open_registry_tests::p2p::{EvilPeer, Values};
use open_registry_tests::public::{Operator, network_view, statement, wait_view};
use open_registry_tests::{FakeUpstream, Node as _, PackageSpec, node::cli};
use serde_json::Value;

/// How long gossip may take to bring every report.
const GOSSIP: Duration = Duration::from_secs(60);

#[test]
fn three_operators_add_up_a_sybil_changes_nothing_and_forgeries_are_refused() -> Result<()> {
    let up = FakeUpstream::start()?;
    let pkgs = [
        up.publish(&PackageSpec::new("public-a", "1.0.0"))?,
        up.publish(&PackageSpec::new("public-b", "2.0.0"))?,
    ];
    let (a, b, c, s) = (
        Operator::new(31)?,
        Operator::new(32)?,
        Operator::new(33)?,
        Operator::new(34)?,
    );
    a.write_statement(&statement(
        "Alpha Co-op",
        "EUR",
        &[
            ("Hetzner", "CX32 server", "6.80"),
            ("DNSimple", "domain", "1.25"),
        ],
        "25.00",
        "6.80",
    ))?;
    b.write_statement(&statement(
        "Beta Hosting",
        "USD",
        &[("Fly", "shared-cpu-1x", "5.70")],
        "10",
        "5.70",
    ))?;
    c.write_statement(&statement(
        "Gamma Community",
        "EUR",
        &[("OVH", "VPS", "4.20")],
        "0",
        "0",
    ))?;
    s.write_statement(&statement(
        "Sybil Inc",
        "EUR",
        &[("Nowhere", "claims", "1000000")],
        "0",
        "0",
    ))?;
    let trust = format!("{},{},{}", a.id, b.id, c.id);
    let common = ["--report-interval", "1s", "--trust", trust.as_str()];
    let na = a.start(&[&["--upstream", up.url()][..], &common].concat())?;
    let with_bootstrap = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["--bootstrap", na.addr.as_str()]
            .into_iter()
            .chain(common)
            .map(str::to_owned)
            .collect();
        v.extend(extra.iter().map(|e| (*e).to_owned()));
        v
    };
    let args_b = with_bootstrap(&["--upstream", up.url()]);
    let nb = b.start(&args_b.iter().map(String::as_str).collect::<Vec<_>>())?;
    // The third node, which sees it all, runs in this process on a manual clock.
    let args_c = with_bootstrap(&["--no-upstream"]);
    let nc = c.start_in_process(&args_c.iter().map(String::as_str).collect::<Vec<_>>())?;
    // The sybil trusts itself only; nobody trusts it.
    let args_s = [
        "--bootstrap",
        na.addr.as_str(),
        "--report-interval",
        "1s",
        "--no-upstream",
    ];
    let ns = s.start(&args_s)?;

    // Traffic through A and B: each packument twice and each tarball once.
    for node in [&na.node, &nb.node] {
        for p in &pkgs {
            for path in [&p.packument_path, &p.packument_path, &p.tarball_path] {
                let r = node.get(path, &[])?;
                ensure!(r.status == 200, "{path}: {} {}", r.status, r.text());
            }
        }
    }

    let v = wait_view(
        &nc.node,
        GOSSIP,
        "C to see A, B and itself online with their traffic, and the sybil apart",
        |v| {
            v.instances.trusted_online == 3
                && v.instances.other_online == 1
                && v.packages.served_total == 8
                && v.money.len() == 2
                && v.operators
                    .iter()
                    .filter(|o| o.statement_seq.is_some())
                    .count()
                    == 4
        },
    )?;
    let eur = &v.money["EUR"];
    ensure!(eur.monthly_cost == "12.25", "EUR cost: {eur:?}");
    ensure!(eur.donated == "25.00" && eur.spent == "6.80" && eur.balance == "18.20");
    let usd = &v.money["USD"];
    ensure!(usd.monthly_cost == "5.70" && usd.donated == "10.00" && usd.balance == "4.30");
    ensure!(v.costs.len() == 4, "costs: {:?}", v.costs);
    ensure!(
        v.costs
            .iter()
            .any(|c| c.operator == a.id && c.item == "domain" && c.amount == "1.25")
    );
    ensure!(
        v.costs.iter().all(|c| c.provider != "Nowhere"),
        "the sybil's claim is in the trusted costs"
    );
    ensure!(v.others.money["EUR"].monthly_cost == "1000000.00");
    ensure!(v.packages.cached_max == 2, "cached: {:?}", v.packages);
    ensure!(
        v.requests.total >= 12,
        "at least the 12 requests sent: {:?}",
        v.requests
    );
    let sybil = v
        .operators
        .iter()
        .find(|o| o.id == s.id)
        .context("the sybil is not listed")?;
    ensure!(!sybil.trusted && sybil.online && sybil.name.as_deref() == Some("Sybil Inc"));
    let me = v
        .operators
        .iter()
        .find(|o| o.this_node)
        .context("no this_node")?;
    ensure!(me.id == c.id && me.name.as_deref() == Some("Gamma Community"));

    // The same figures through the command line, and as Prometheus gauges.
    let out = cli(
        &["network", "--registry", nc.node.gateway()],
        Duration::from_secs(30),
    )?;
    ensure!(out.status.success(), "network: {}", out.stderr);
    eprintln!("{}", out.stdout);
    for want in [
        "instances   4 online: 3 trusted, 1 others",
        "cost        EUR 12.25, USD 5.70 a month",
        "donated     EUR 25.00, USD 10.00",
        "Sybil Inc",
    ] {
        ensure!(
            out.stdout.contains(want),
            "{want:?} not in:\n{}",
            out.stdout
        );
    }
    // And as a visitor sees them, in a real browser.
    let d = open_dashboard(nc.node.gateway())?;
    let t = Duration::from_secs(30);
    d.wait_text("instances", t, |s| {
        s.starts_with("4 online: 3 trusted, 1 other")
    })?;
    d.wait_text("monthly-cost", t, |s| {
        s.contains("EUR 12.25") && s.contains("USD 5.70")
    })?;
    d.wait_text("donated", t, |s| {
        s.contains("EUR 25.00") && s.contains("USD 10.00")
    })?;
    d.wait_text("spent", t, |s| {
        s.contains("EUR 6.80") && s.contains("USD 5.70")
    })?;
    d.wait_text("served", t, |s| !s.is_empty())?;
    ensure!(
        d.text("costs")?.contains("DNSimple") && !d.text("costs")?.contains("Nowhere"),
        "costs table: {}",
        d.text("costs")?
    );
    ensure!(d.text("operators-others")?.contains("Sybil Inc"));
    let errors = d.script_errors()?;
    ensure!(
        errors.is_empty(),
        "the dashboard's script failed: {errors:?}"
    );
    let shot = d.screenshot("dashboard-network")?;
    eprintln!(
        "dashboard of the three-operator network: {}",
        shot.display()
    );
    drop(d);

    let metrics = nc.node.get("/-/metrics", &[])?.text();
    ensure!(
        metrics.contains("open_registry_network_instances{trust=\"trusted\"} 3\n")
            && metrics.contains("open_registry_network_monthly_cost{currency=\"EUR\"} 12.25\n"),
        "network gauges: {metrics}"
    );
    // Each report and statement is served with its signed bytes, which verify.
    let held: Value =
        serde_json::from_slice(&nc.node.get("/-/open-registry/reports.json", &[])?.body)?;
    for r in held["reports"].as_array().context("no reports")? {
        let wire = base64_decode(r["signed"].as_str().context("no signed")?)?;
        Signed::from_bytes(&wire)?.verify_as::<Report>()?;
    }
    ensure!(held["statements"].as_array().map(Vec::len) == Some(4));
    let own: Value =
        serde_json::from_slice(&nc.node.get("/-/open-registry/statement.json", &[])?.body)?;
    ensure!(
        own["value"]["statement"]["operator"]["name"] == "Gamma Community",
        "{own}"
    );

    // Forgeries, replays and oversized messages, published by a peer of the network.
    let evil = EvilPeer::start(35, &[&na.addr], Values::Pointers)?;
    let key = &evil.identity;
    let now = open_registry_tests::p2p::now_ms();
    let report = Report {
        at_ms: now,
        seq: 1,
        started_ms: now - 1000,
        window_ms: 1000,
        version: "9.9.9".into(),
        values: [("window.requests.packument".to_owned(), 1_000_000)].into(),
    };
    let mut forged = report.sign(key.signing_key());
    forged.body = Report {
        seq: 2,
        ..report.clone()
    }
    .encode();
    let mut oversized = report.clone();
    oversized.version = "x".repeat(60);
    let mut body = oversized.encode();
    body.extend(std::iter::repeat_n(0u8, 20_000));
    let oversized = Signed {
        signer: forged.signer,
        signature: [0; 64],
        body,
    };
    let statement_of = |seq: u64| {
        SignedStatement {
            seq,
            at_ms: now,
            statement: Statement::parse(&statement("Evil", "EUR", &[("X", "y", "1")], "0", "0"))
                .expect("a valid statement"),
        }
        .sign(key.signing_key())
        .to_bytes()
    };
    // Published until C counts each kind (the peer's mesh may take a heartbeat to form).
    let refused = |k: &str| {
        network_view(&nc.node)
            .ok()
            .and_then(|v| v.refused.get(k).copied())
            .unwrap_or(0)
    };
    let mut seq = 10;
    open_registry_tests::probe::wait_for(GOSSIP, "C to refuse each forgery", || {
        seq += 2;
        let _ = evil.publish(REPORTS_TOPIC, forged.to_bytes());
        let _ = evil.publish(REPORTS_TOPIC, oversized.to_bytes());
        let _ = evil.publish(STATEMENTS_TOPIC, statement_of(seq));
        let _ = evil.publish(STATEMENTS_TOPIC, statement_of(seq - 1));
        (refused("report.forged") > 0
            && refused("report.oversized") > 0
            && refused("statement.rolled_back") > 0)
            .then_some(())
    })?;
    let v = network_view(&nc.node)?;
    ensure!(
        v.money["EUR"].monthly_cost == "12.25",
        "trusted money moved: {:?}",
        v.money
    );
    ensure!(
        v.operators
            .iter()
            .all(|o| o.id != evil.peer.to_string() || !o.trusted),
        "an unknown operator counted as trusted"
    );

    // B stops: C counts it offline once two of its windows have passed on C's clock.
    let last_b = v
        .operators
        .iter()
        .find(|o| o.id == b.id)
        .and_then(|o| o.last_report_ms)
        .context("no report from B")?;
    drop(nb);
    let now_c = nc.node.clock().now_ms();
    // Past B's last report by two windows and a bit (reports may still be in flight: B's
    // newest one could land after this read, so the wait below moves on from it).
    let mut target = last_b.max(now_c) + 2_000 + 500;
    nc.node
        .clock()
        .advance(Duration::from_millis(target - now_c));
    let v = open_registry_tests::probe::wait_for(GOSSIP, "C to count B offline", || {
        let v = network_view(&nc.node).ok()?;
        let b_view = v.operators.iter().find(|o| o.id == b.id)?;
        if b_view.online {
            // A report of B's arrived after the advance: move past it too.
            let at = b_view.last_report_ms?;
            let now = nc.node.clock().now_ms();
            if at + 2_500 > now {
                nc.node
                    .clock()
                    .advance(Duration::from_millis(at + 2_500 - now));
                target = at + 2_500;
            }
            return None;
        }
        (v.instances.trusted_online == 2).then_some(v)
    })?;
    ensure!(
        v.instances.known >= 4,
        "B is still known: {:?}",
        v.instances
    );
    ensure!(
        v.money["USD"].monthly_cost == "5.70",
        "an offline operator's statement still counts"
    );
    eprintln!("B offline on C's clock at {target}");
    drop((ns, na, up));
    Ok(())
}

fn base64_decode(s: &str) -> Result<Vec<u8>> {
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::STANDARD.decode(s)?)
}

#[test]
fn the_hourly_history_and_the_popularity_survive_a_restart() -> Result<()> {
    let up = FakeUpstream::start()?;
    let p = up.publish(&PackageSpec::new("history-demo", "1.0.0"))?;
    let mut node = open_registry_tests::NodeProcess::start(&[
        "--upstream",
        up.url(),
        "--no-p2p",
        "--report-interval",
        "1s",
    ])?;
    for _ in 0..3 {
        ensure!(node.get(&p.packument_path, &[])?.status == 200);
    }
    let history = |node: &open_registry_tests::NodeProcess| -> Option<Value> {
        let r = node
            .get("/-/open-registry/history.json?hours=2", &[])
            .ok()?;
        serde_json::from_slice(&r.body).ok()
    };
    let served = |h: &Value, series: &str| -> u64 {
        h[series]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| b["values"]["packuments_served"].as_u64().unwrap_or(0))
            .sum()
    };
    // The next report (within a second) records the three requests, here and network-wide.
    let before =
        open_registry_tests::probe::wait_for(GOSSIP, "the history to count the requests", || {
            history(&node).filter(|h| served(h, "node") == 3 && served(h, "network") == 3)
        })?;
    ensure!(
        before["network"][0]["values"]["instances_online"] == 1,
        "{before}"
    );
    let popular = node.get("/-/open-registry/popular", &[])?.text();
    ensure!(popular.contains("\"count\":3"), "{popular}");

    node.restart()?;
    let after = history(&node).context("history.json after the restart")?;
    ensure!(served(&after, "node") >= 3, "history lost: {after}");
    let popular = node.get("/-/open-registry/popular", &[])?.text();
    ensure!(
        popular.contains("\"name\":\"history-demo\"") && popular.contains("\"count\":3"),
        "popularity lost: {popular}"
    );
    Ok(())
}
