//! What an operator and the community look at: the dashboard at `/-/open-registry/` and the
//! Prometheus exposition at `/-/metrics`.
//!
//! - The dashboard is served as HTML, its script is valid JavaScript (`node --check`) and
//!   every JSON route it reads answers.
//! - In Chromium (headless, over WebDriver) it draws a running node: its peer id, no script
//!   errors, and the "upstream unreachable" banner once the upstream fails. A screenshot is
//!   saved under `target/artifacts/`.
//! - Fed a network view and a history from a stand-in server, it shows the nine network figures
//!   exactly (amounts as the JSON gives them), the cost table and charts, the operators apart by
//!   trust; and "not available" when those routes fail.
//! - `promtool check metrics` finds nothing to say about `/-/metrics`.
//!
//! The browser tests need Debian's `chromium` and `chromium-driver`, the metrics test its
//! `prometheus` (for `promtool`); `.ci/run` installs them. Without them the tests fail, saying
//! so.

use std::io::Write as _;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use open_registry_protocol::advisory::{AdvisoryGroup, AdvisoryView, Kind};
use open_registry_protocol::network::{
    CostItem, Errors, Instances, Lag, Money, NetworkView, OperatorView, Others, Packages,
    Withholding,
};
use open_registry_protocol::status::{CooldownHeld, CooldownStatus};
use open_registry_tests::{
    Dashboard, FakeUpstream, Fault, NodeProcess, PackageSpec, Target, open_dashboard, probe,
};
use serde_json::{Value, json};

/// The page, as the node serves it.
const DASHBOARD_HTML: &str = include_str!("../../node/src/admin/dashboard.html");

/// A page whose script throws.
const BROKEN_PAGE: &str =
    "<!doctype html><title>broken</title><script>no_such_function();</script>";

/// The nine network figures, by element id.
const FIGURES: [&str; 9] = [
    "instances",
    "monthly-cost",
    "costs",
    "donated",
    "spent",
    "errors",
    "served",
    "cached",
    "lag",
];

#[test]
fn the_dashboard_is_served_and_its_data_routes_answer() -> Result<()> {
    let up = FakeUpstream::start()?;
    up.publish(&PackageSpec::new("dash-demo", "1.0.0"))?;
    let node = NodeProcess::start(&["--upstream", up.url()])?;
    ensure!(node.get("/dash-demo", &[])?.status == 200);

    let r = node.get("/-/open-registry/", &[])?;
    ensure!(r.status == 200, "dashboard: {}", r.status);
    ensure!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "dashboard content type: {:?}",
        r.header("content-type")
    );
    let html = r.text();
    ensure!(html.contains("<title>Open-Registry node</title>"), "{html}");
    ensure!(html == DASHBOARD_HTML, "the node serves another page");

    // Every route the page reads answers with JSON.
    for path in [
        "/-/open-registry/status",
        "/-/open-registry/peers",
        "/-/open-registry/popular?limit=15",
        "/-/open-registry/pins",
    ] {
        ensure!(
            html.contains(path.split('?').next().unwrap_or(path)),
            "{path} not read"
        );
        let r = node.get(path, &[])?;
        ensure!(r.status == 200, "{path}: {}", r.status);
        serde_json::from_slice::<serde_json::Value>(&r.body)
            .with_context(|| format!("{path} is not JSON"))?;
    }
    // The network routes are read too (a node without them shows "not available").
    for path in [
        "/-/open-registry/network.json",
        "/-/open-registry/history.json",
    ] {
        ensure!(html.contains(path), "{path} not read");
    }
    let popular: serde_json::Value =
        serde_json::from_slice(&node.get("/-/open-registry/popular", &[])?.body)?;
    ensure!(
        popular["packages"][0]["name"] == "dash-demo",
        "the request was not counted: {popular}"
    );

    // The script parses (node --check), so a typo cannot ship a blank dashboard.
    let start = html.find("<script>").context("no script")? + "<script>".len();
    let end = html.find("</script>").context("script not closed")?;
    let dir = tempfile::tempdir()?;
    let js = dir.path().join("dashboard.js");
    std::fs::write(&js, &html[start..end])?;
    let out = Command::new("node").arg("--check").arg(&js).output()?;
    ensure!(
        out.status.success(),
        "the dashboard script does not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No external assets: the page works on a node with no other site reachable.
    for external in ["src=\"http", "href=\"http", "@import", "url(http"] {
        ensure!(
            !html.contains(external),
            "the dashboard loads something from outside: {external}"
        );
    }
    Ok(())
}

/// Fails with every script error the page logged or shows.
fn no_script_errors(d: &Dashboard) -> Result<()> {
    let errors = d.script_errors()?;
    ensure!(
        errors.is_empty(),
        "the dashboard's script failed: {errors:#?}"
    );
    Ok(())
}

#[test]
fn the_dashboard_shows_a_running_node_in_chromium() -> Result<()> {
    let t0 = Instant::now();
    let up = FakeUpstream::start()?;
    up.publish(&PackageSpec::new("dash-browser", "1.0.0"))?;
    let node = NodeProcess::start(&["--upstream", up.url()])?;
    ensure!(node.get("/dash-browser", &[])?.status == 200);
    let peer_id = node.status()?.peer_id;
    ensure!(!peer_id.is_empty(), "the status has no peer id");

    let d = open_dashboard(&node.gateway)?;
    eprintln!(
        "[dashboard] browser up and page drawn after {:?}",
        t0.elapsed()
    );
    // "This node" is this node.
    let id = d.text("node-id")?;
    ensure!(id.contains(&peer_id), "#node-id {id:?} lacks {peer_id}");
    ensure!(d.text("who")?.contains(&peer_id));
    ensure!(
        d.text("cards")?.contains("packages cached"),
        "{}",
        d.text("cards")?
    );
    ensure!(
        d.text("popular")?.contains("dash-browser"),
        "{}",
        d.text("popular")?
    );
    // Every network figure says something: a value, or "not available" where the node has no
    // network view to give.
    for f in FIGURES {
        let t = d.text(f)?;
        ensure!(!t.trim().is_empty() && t != "…", "#{f} is {t:?}");
    }
    for plot in ["plot-requests", "plot-lag"] {
        ensure!(d.browser.exists(plot)?, "no #{plot}");
        ensure!(
            !d.text(plot)?.trim().is_empty() || has_svg(&d, plot)?,
            "#{plot} is blank"
        );
    }
    // Nothing withheld: no advisories, no cooldown configured.
    ensure!(d.text("advisories-in-force")? == "none");
    ensure!(
        d.text("cooldown-held")?
            .starts_with("no release cooldown on this node"),
        "{}",
        d.text("cooldown-held")?
    );
    // The upstream answers: no banner.
    ensure!(
        d.text("upstream-banner")?.is_empty(),
        "banner with a healthy upstream: {}",
        d.text("upstream-banner")?
    );
    no_script_errors(&d)?;
    let png = d.screenshot("dashboard")?;
    ensure!(
        std::fs::metadata(&png)?.len() > 10_000,
        "the screenshot is nearly empty"
    );

    // The upstream fails: the breaker opens and the page says so.
    up.set_fault(Target::All, Fault::Status(503));
    let mut n = 0;
    probe::wait_for(
        Duration::from_secs(30),
        "the upstream breaker to open",
        || {
            n += 1;
            let _ = node.get(&format!("/dash-missing-{n}"), &[]);
            let state = node.status().ok()?.upstream_health?.state;
            (state != "closed").then_some(())
        },
    )?;
    d.reload()?;
    let banner = d.text("upstream-banner")?;
    ensure!(
        banner.contains("Upstream unreachable"),
        "no banner with the upstream down: {banner:?}"
    );
    no_script_errors(&d)?;
    d.screenshot("dashboard-upstream-down")?;
    eprintln!("[dashboard] browser test took {:?}", t0.elapsed());
    Ok(())
}

fn has_svg(d: &Dashboard, id: &str) -> Result<bool> {
    let v = d.browser.execute(
        "return document.querySelectorAll('[id=\"' + arguments[0] + '\"] svg').length;",
        vec![json!(id)],
    )?;
    Ok(v.as_u64().unwrap_or(0) > 0)
}

fn count_in(d: &Dashboard, selector: &str) -> Result<u64> {
    let v = d.browser.execute(
        "return document.querySelectorAll(arguments[0]).length;",
        vec![json!(selector)],
    )?;
    v.as_u64()
        .with_context(|| format!("count of {selector}: {v}"))
}

/// Two trusted operators (one of them this node) and a sybil claiming a fortune.
fn network_fixture() -> NetworkView {
    let eur = |monthly: &str| {
        [(
            "EUR".to_owned(),
            Money {
                monthly_cost: monthly.into(),
                ..Money::default()
            },
        )]
        .into()
    };
    let cost = |operator: &str, name: &str, provider: &str, item: &str, cur: &str, amount: &str| {
        CostItem {
            operator: operator.into(),
            name: name.into(),
            month: "2026-11".into(),
            provider: provider.into(),
            item: item.into(),
            currency: cur.into(),
            amount: amount.into(),
        }
    };
    NetworkView {
        at_ms: 1_800_000_000_000,
        node: "12D3KooWDashAlpha".into(),
        instances: Instances {
            online: 3,
            trusted_online: 2,
            other_online: 1,
            known: 4,
        },
        packages: Packages {
            served_window: 1234,
            served_total: 98765,
            cached_max: 420,
            cached_sum: 700,
            tarballs_sum: 1500,
        },
        errors: Errors {
            per_minute: 0.25,
            window: 3,
            by_class: [("upstream".to_owned(), 2), ("client".to_owned(), 1)].into(),
        },
        lag: Lag {
            max_seconds: 150,
            max_seq: 12,
        },
        upstream_down: 0,
        money: [
            (
                "EUR".to_owned(),
                Money {
                    monthly_cost: "11.05".into(),
                    cost_total: "40.20".into(),
                    donated: "50.00".into(),
                    spent: "33.10".into(),
                    balance: "16.90".into(),
                },
            ),
            (
                "USD".to_owned(),
                Money {
                    monthly_cost: "5.00".into(),
                    cost_total: "5.00".into(),
                    donated: "0".into(),
                    spent: "0".into(),
                    balance: "0".into(),
                },
            ),
        ]
        .into(),
        costs: vec![
            cost(
                "12D3KooWDashAlpha",
                "Alpha Co-op",
                "Hetzner",
                "CX32 server",
                "EUR",
                "6.80",
            ),
            cost(
                "12D3KooWDashAlpha",
                "Alpha Co-op",
                "DNSimple",
                "domain",
                "EUR",
                "1.25",
            ),
            cost("12D3KooWDashBeta", "Beta", "OVH", "VPS", "EUR", "3.00"),
            cost(
                "12D3KooWDashBeta",
                "Beta",
                "Backblaze",
                "backups",
                "USD",
                "5.00",
            ),
        ],
        others: Others {
            served_window: 99999,
            ..Others::default()
        },
        operators: vec![
            OperatorView {
                id: "12D3KooWDashAlpha".into(),
                name: Some("Alpha Co-op".into()),
                online: true,
                trusted: true,
                this_node: true,
                version: "0.1.0".into(),
                served_window: 1000,
                packuments: 420,
                lag_seconds: Some(3),
                money: eur("8.05"),
                ..OperatorView::default()
            },
            OperatorView {
                id: "12D3KooWDashBeta".into(),
                name: Some("Beta".into()),
                online: true,
                trusted: true,
                version: "0.1.0".into(),
                served_window: 234,
                packuments: 280,
                lag_seconds: Some(150),
                money: eur("3.00"),
                ..OperatorView::default()
            },
            OperatorView {
                id: "12D3KooWDashSybil".into(),
                name: Some("Sybil".into()),
                online: true,
                trusted: false,
                version: "0.0.1".into(),
                served_window: 99999,
                money: eur("99999.00"),
                ..OperatorView::default()
            },
        ],
        refused: [("report.forged".to_owned(), 2)].into(),
        withholding: withholding_fixture(),
        ..NetworkView::default()
    }
}

/// An advisory in force (both trusted operators signed), one pending (one signer), and a
/// version in its release cooldown.
fn withholding_fixture() -> Withholding {
    let signer = |operator: &str, name: &str, reason: &str, url: Option<&str>| AdvisoryView {
        id: "0011223344556677".into(),
        operator: operator.into(),
        trusted: true,
        this_node: operator == "12D3KooWDashAlpha",
        name: name.into(),
        range: "1.0.1".into(),
        kind: Kind::Compromised,
        reason: reason.into(),
        url: url.map(str::to_owned),
        seq: 1,
        at_ms: 1_800_000_000_000,
        expires_at_ms: 1_807_776_000_000,
        withdrawn: false,
        signed: String::new(),
    };
    Withholding {
        advisory_threshold: 2,
        in_force: vec![AdvisoryGroup {
            name: "left-pad".into(),
            range: "1.0.1".into(),
            in_force: true,
            signers: vec![
                signer(
                    "12D3KooWDashAlpha",
                    "left-pad",
                    "stolen token publish",
                    Some("https://example.org/incidents/1"),
                ),
                signer("12D3KooWDashBeta", "left-pad", "payload confirmed", None),
            ],
        }],
        pending: vec![AdvisoryGroup {
            name: "is-odd".into(),
            range: "1.0.1".into(),
            in_force: false,
            signers: vec![signer("12D3KooWDashBeta", "is-odd", "suspicious", None)],
        }],
        cooldown: Some(CooldownStatus {
            min_release_age_secs: 86_400,
            held: vec![CooldownHeld {
                name: "or-cd".into(),
                version: "2.0.0".into(),
                until_ms: 1_800_000_000_000,
                from_first_seen: false,
            }],
            first_seen_used: 0,
        }),
    }
}

/// A day of hourly buckets, this node's and the network's.
fn history_fixture() -> Value {
    let hour = 3_600_000u64;
    let now = 1_800_000_000_000u64 / hour * hour;
    let bucket = |k: u64, network: bool| {
        let mut v = json!({
            "requests": 100 + (k * 37) % 90,
            "errors": (k * 7) % 5,
            "bytes": 1000 * k,
            "packuments_served": 50 + k,
            "lag_seconds": (k * 13) % 40,
        });
        if network {
            v["instances_online"] = json!(3);
        }
        json!({ "at_ms": now - k * hour, "values": v })
    };
    json!({
        "now_ms": now,
        "hour_ms": hour,
        "kept_hours": 2160,
        "node": (0..24).map(|k| bucket(k, false)).collect::<Vec<_>>(),
        "network": (0..24).map(|k| bucket(k, true)).collect::<Vec<_>>(),
    })
}

/// A stand-in for a node's operator routes on 127.0.0.1: the real page and fixed JSON. While
/// `broken` is set, `network.json` answers 500 and `history.json` 404.
struct FixtureServer {
    url: String,
    broken: Arc<AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FixtureServer {
    fn start(status: Value, network: NetworkView, history: Value) -> Result<FixtureServer> {
        use axum::http::{StatusCode, header};
        use axum::response::{Html, IntoResponse};
        use axum::routing::get;

        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let broken = Arc::new(AtomicBool::new(false));
        let network = serde_json::to_value(network)?;
        let json_answer = |v: Value| {
            move || {
                let v = v.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], v.to_string()) }
            }
        };
        let (b1, b2) = (broken.clone(), broken.clone());
        let app = axum::Router::new()
            .route("/-/open-registry/", get(|| async { Html(DASHBOARD_HTML) }))
            .route("/-/open-registry/status", get(json_answer(status)))
            .route(
                "/-/open-registry/popular",
                get(json_answer(
                    json!({ "packages": [{ "name": "left-pad", "count": 7 }] }),
                )),
            )
            .route(
                "/-/open-registry/pins",
                get(json_answer(json!({ "pins": [] }))),
            )
            .route(
                "/-/open-registry/network.json",
                get(move || {
                    let (network, broken) = (network.clone(), b1.clone());
                    async move {
                        if broken.load(Ordering::SeqCst) {
                            (StatusCode::INTERNAL_SERVER_ERROR, "broken").into_response()
                        } else {
                            (
                                [(header::CONTENT_TYPE, "application/json")],
                                network.to_string(),
                            )
                                .into_response()
                        }
                    }
                }),
            )
            .route(
                "/-/open-registry/history.json",
                get(move || {
                    let (history, broken) = (history.clone(), b2.clone());
                    async move {
                        if broken.load(Ordering::SeqCst) {
                            (StatusCode::NOT_FOUND, "no such route").into_response()
                        } else {
                            (
                                [(header::CONTENT_TYPE, "application/json")],
                                history.to_string(),
                            )
                                .into_response()
                        }
                    }
                }),
            );
        // (No /-/open-registry/peers: the page must cope with a 404 there too.)
        // A page whose script fails, to show that the harness sees such failures.
        let app = app.route("/broken.html", get(|| async { Html(BROKEN_PAGE) }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Ok(FixtureServer {
            url,
            broken,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for FixtureServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn the_dashboard_draws_the_network_view_and_copes_without_it() -> Result<()> {
    let status = json!({
        "version": "0.1.0",
        "uptime_secs": 3725,
        "peer_id": "12D3KooWDashAlpha",
        "upstream": "http://127.0.0.1:9",
        "store": { "blobs": 10, "bytes": 123456, "packuments": 4, "tarballs": 6 },
        "counters": { "packument_requests": 12 },
        "upstream_health": { "state": "closed", "consecutive_failures": 0 },
    });
    let server = FixtureServer::start(status, network_fixture(), history_fixture())?;
    let d = open_dashboard(&server.url)?;

    let expect = [
        ("instances", "3 online: 2 trusted, 1 other"),
        ("monthly-cost", "EUR 11.05 · USD 5.00"),
        ("donated", "EUR 50.00 · USD 0"),
        ("spent", "EUR 33.10 · USD 0"),
        ("errors", "0.25 per minute"),
        ("served", "1,234"),
        ("cached", "420"),
        ("lag", "2 min 30 s"),
    ];
    for (id, want) in expect {
        let got = d.text(id)?;
        ensure!(got == want, "#{id}: {got:?}, expected {want:?}");
    }
    ensure!(d.text("monthly-cost-detail")?.contains("EUR 40.20"));
    ensure!(d.text("donated-detail")?.contains("EUR 16.90"));
    ensure!(d.text("served-detail")?.contains("98,765 since start"));
    ensure!(d.text("errors-detail")?.contains("upstream 2"));
    // The cost table, one row per item, amounts as given; and a bar for each.
    let costs = d.text("costs")?;
    for cell in [
        "Hetzner",
        "CX32 server",
        "EUR 6.80",
        "EUR 1.25",
        "OVH",
        "USD 5.00",
    ] {
        ensure!(costs.contains(cell), "#costs lacks {cell:?}: {costs}");
    }
    ensure!(count_in(&d, "#costs tr")? == 5, "#costs: {costs}");
    ensure!(
        count_in(&d, "#costs-chart rect")? == 4,
        "one bar per cost item"
    );
    ensure!(d.text("costs-chart")?.contains("EUR 6.80"));
    // Operators, trusted and others apart; the sybil's claims are not in the figures.
    let trusted = d.text("operators-trusted")?;
    ensure!(
        trusted.contains("Alpha Co-op")
            && trusted.contains("(this node)")
            && trusted.contains("Beta"),
        "{trusted}"
    );
    ensure!(!trusted.contains("Sybil"), "{trusted}");
    let others = d.text("operators-others")?;
    ensure!(
        others.contains("Sybil") && others.contains("online"),
        "{others}"
    );
    ensure!(!d.text("monthly-cost")?.contains("99999"));
    // Plots drawn from the network's hours: two lines for requests and errors, one for lag.
    ensure!(count_in(&d, "#plot-requests polyline")? == 2);
    ensure!(count_in(&d, "#plot-lag polyline")? == 1);
    ensure!(d.text("history-note")?.contains("trusted nodes"));
    ensure!(d.text("upstream-banner")?.is_empty());
    // What the node withholds: the advisory in force with both signers, the pending one with
    // its one signer so far, and the version in its cooldown with when it is released.
    let in_force = d.text("advisories-in-force")?;
    for cell in [
        "left-pad@1.0.1",
        "2 of 2: 12D3KooWDashAlpha (this node), 12D3KooWDashBeta",
        "compromised",
        "stolen token publish (details); payload confirmed",
    ] {
        ensure!(
            in_force.contains(cell),
            "#advisories-in-force lacks {cell:?}: {in_force}"
        );
    }
    ensure!(count_in(&d, "#advisories-in-force tr")? == 2, "{in_force}");
    ensure!(
        count_in(
            &d,
            "#advisories-in-force a[href=\"https://example.org/incidents/1\"]"
        )? == 1,
        "the advisory's link: {in_force}"
    );
    let pending = d.text("advisories-pending")?;
    ensure!(
        pending.contains("is-odd@1.0.1")
            && pending.contains("1 of 2: 12D3KooWDashBeta")
            && !pending.contains("left-pad"),
        "{pending}"
    );
    let held = d.text("cooldown-held")?;
    ensure!(
        held.contains("or-cd") && held.contains("2.0.0") && held.contains("2027-01-15 08:00"),
        "{held}"
    );
    no_script_errors(&d)?;
    d.screenshot("dashboard-network")?;

    // The routes fail: every figure says so, the rest of the page is still drawn.
    server.broken.store(true, Ordering::SeqCst);
    d.reload()?;
    for f in FIGURES {
        let got = d.text(f)?;
        ensure!(got == "not available", "#{f} with no network view: {got:?}");
    }
    ensure!(count_in(&d, "#costs-chart rect")? == 0);
    ensure!(d.text("plot-requests")? == "not available");
    ensure!(d.text("plot-lag")? == "not available");
    for id in ["advisories-in-force", "advisories-pending", "cooldown-held"] {
        ensure!(d.text(id)? == "not available", "#{id}: {}", d.text(id)?);
    }
    ensure!(d.text("node-id")?.contains("12D3KooWDashAlpha"));
    ensure!(d.text("popular")?.contains("left-pad"));
    no_script_errors(&d)?;

    // The harness is no blind eye: a failing script is reported.
    d.browser.goto(&format!("{}/broken.html", server.url))?;
    let logged = d.browser.wait_for_console(Duration::from_secs(10), |e| {
        e.is_script_error() && e.message.contains("no_such_function")
    })?;
    ensure!(logged.source == "javascript", "{logged:?}");
    Ok(())
}

#[test]
fn the_metrics_pass_promtool() -> Result<()> {
    let promtool = std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("promtool"))
                .find(|p| p.is_file())
        })
        .context(
            "`promtool` is not on PATH: install Debian's package `prometheus` \
             (apt-get install prometheus; .ci/run does it on a fresh machine)",
        )?;
    let up = FakeUpstream::start()?;
    let published = up.publish(&PackageSpec::new("dash-metrics", "1.0.0"))?;
    let node = NodeProcess::start(&["--upstream", up.url()])?;
    // Some traffic, so that the counters are not all zero.
    ensure!(node.get("/dash-metrics", &[])?.status == 200);
    ensure!(node.get("/dash-metrics", &[])?.status == 200);
    ensure!(node.get(&published.tarball_path, &[])?.status == 200);
    ensure!(node.get("/dash-metrics-missing", &[])?.status == 404);

    let r = node.get("/-/metrics", &[])?;
    ensure!(r.status == 200, "/-/metrics: {}", r.status);
    let body = r.text();
    ensure!(
        body.contains("open_registry_packument_requests_total"),
        "{body}"
    );

    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", promtool.display()))?;
    child
        .stdin
        .take()
        .context("promtool's stdin")?
        .write_all(body.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || !said.trim().is_empty() {
        bail!(
            "`promtool check metrics` ({}) on /-/metrics:\n{said}\n--- exposition ---\n{body}",
            out.status
        );
    }
    Ok(())
}
