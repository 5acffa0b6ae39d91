//! The `open-registry` command line as an operator uses it: `init` writes a commented config
//! and protects it, refuses a node that would mirror itself; `status` reads a running node and
//! fails clearly without one; SIGTERM stops a node cleanly and a restart serves what it stored,
//! with the upstream gone; `statement` checks, shows and imports into an operator's
//! `statement.toml`.

use std::{fs, time::Duration};

use anyhow::{Context, Result, ensure};
use open_registry_protocol::{Integrity, Status};
use open_registry_tests::{FakeUpstream, NodeProcess, PackageSpec, node::cli, probe, tools};

const CLI_TIMEOUT: Duration = Duration::from_secs(30);

fn arg(p: &std::path::Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

#[test]
fn init_writes_a_commented_config_and_will_not_overwrite_it() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let config = data.join("config.toml");

    let out = cli(
        &[
            "init",
            "--data-dir",
            arg(&data),
            "--upstream",
            "http://127.0.0.1:9/npm",
        ],
        CLI_TIMEOUT,
    )?
    .ok()?;
    ensure!(out.stdout.contains("wrote"), "{}", out.describe());
    let text = fs::read_to_string(&config).context("init wrote no config.toml")?;
    let comments = text
        .lines()
        .filter(|l| l.trim_start().starts_with('#'))
        .count();
    ensure!(comments >= 5, "only {comments} comment lines:\n{text}");
    ensure!(
        text.lines()
            .any(|l| l.trim() == r#"upstream = "http://127.0.0.1:9/npm/""#),
        "no upstream line:\n{text}"
    );
    for key in ["listen", "max_age", "upstream_timeout", "retries"] {
        ensure!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("{key} ="))),
            "no {key} setting:\n{text}"
        );
    }

    // A second init does not clobber the operator's edits.
    fs::write(&config, format!("{text}\n# edited by the operator\n"))?;
    let edited = fs::read(&config)?;
    let out = cli(
        &[
            "init",
            "--data-dir",
            arg(&data),
            "--upstream",
            "http://127.0.0.1:10/",
        ],
        CLI_TIMEOUT,
    )?;
    ensure!(
        !out.success(),
        "a second init succeeded:\n{}",
        out.describe()
    );
    ensure!(
        out.stderr.contains("already exists") && out.stderr.contains("--force"),
        "{}",
        out.describe()
    );
    ensure!(
        fs::read(&config)? == edited,
        "the refused init changed config.toml"
    );
    eprintln!("[cli] second init: {}", out.stderr.trim());

    let out = cli(
        &[
            "init",
            "--data-dir",
            arg(&data),
            "--upstream",
            "http://127.0.0.1:10/",
            "--force",
        ],
        CLI_TIMEOUT,
    )?
    .ok()?;
    ensure!(out.success());
    let text = fs::read_to_string(&config)?;
    ensure!(
        text.contains(r#"upstream = "http://127.0.0.1:10/""#),
        "{text}"
    );
    Ok(())
}

#[test]
fn a_node_is_never_its_own_upstream() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let port = tools::free_port()?;
    let listen = format!("127.0.0.1:{port}");
    for (i, upstream) in [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}/"),
        format!("http://0.0.0.0:{port}/"),
    ]
    .iter()
    .enumerate()
    {
        let data = tmp.path().join(format!("d{i}"));
        let out = cli(
            &[
                "init",
                "--data-dir",
                arg(&data),
                "--upstream",
                upstream,
                "--listen",
                &listen,
            ],
            CLI_TIMEOUT,
        )?;
        ensure!(
            !out.success(),
            "init accepted itself as upstream:\n{}",
            out.describe()
        );
        ensure!(
            out.stderr.contains("own gateway") || out.stderr.contains("mirror itself"),
            "{}",
            out.describe()
        );
        ensure!(
            !data.join("config.toml").exists(),
            "a refused init wrote a config"
        );
        eprintln!(
            "[cli] init --upstream {upstream} --listen {listen}: {}",
            out.stderr.trim()
        );
    }
    // `start` refuses too, before listening (so this returns instead of running on).
    let data = tmp.path().join("start");
    let out = cli(
        &[
            "start",
            "--data-dir",
            arg(&data),
            "--upstream",
            &format!("http://127.0.0.1:{port}/"),
            "--listen",
            &listen,
        ],
        Duration::from_secs(20),
    )?;
    ensure!(!out.success(), "start mirrored itself:\n{}", out.describe());
    ensure!(out.stderr.contains("mirror itself"), "{}", out.describe());
    Ok(())
}

#[test]
fn status_reads_a_running_node_and_fails_clearly_without_one() -> Result<()> {
    let up = FakeUpstream::start()?;
    let p = up.publish(&PackageSpec::new("or-status", "1.0.0").big_file(32 << 10))?;
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    cli(
        &["init", "--data-dir", arg(&data), "--upstream", up.url()],
        CLI_TIMEOUT,
    )?
    .ok()?;
    // No --upstream: the node runs on the config init wrote.
    let node = NodeProcess::builder().data_dir(&data).start()?;
    ensure!(node.get(&p.packument_path, &[])?.status == 200);
    ensure!(node.get(&p.tarball_path, &[])?.status == 200);

    let out = cli(&["status", "--data-dir", arg(&data), "--json"], CLI_TIMEOUT)?.ok()?;
    let s: Status = serde_json::from_str(&out.stdout)
        .with_context(|| format!("status --json printed: {}", out.stdout))?;
    ensure!(
        s.store.packuments == 1 && s.store.tarballs == 1,
        "{:?}",
        s.store
    );
    ensure!(s.store.bytes > 32 << 10, "{:?}", s.store);
    ensure!(
        s.upstream.as_deref() == Some(&*format!("{}/", up.url())),
        "{:?}",
        s.upstream
    );
    ensure!(
        s.gateway == node.gateway,
        "{} vs {}",
        s.gateway,
        node.gateway
    );
    ensure!(
        s.counters.get("tarball_ingests") == Some(&1),
        "{:?}",
        s.counters
    );

    let out = cli(&["status", "--data-dir", arg(&data)], CLI_TIMEOUT)?.ok()?;
    ensure!(out.stdout.contains(&node.gateway), "{}", out.stdout);
    ensure!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("store") && l.contains("1 packuments, 1 tarballs")),
        "{}",
        out.stdout
    );
    eprintln!("[cli] open-registry status:\n{}", out.stdout.trim_end());

    let out = cli(
        &["status", "--registry", &node.gateway, "--json"],
        CLI_TIMEOUT,
    )?
    .ok()?;
    ensure!(serde_json::from_str::<Status>(&out.stdout)?.store.tarballs == 1);

    // Nothing there: a clear error and a failing exit, quickly.
    let empty = tmp.path().join("empty");
    fs::create_dir_all(&empty)?;
    let nothing = format!("http://127.0.0.1:{}", tools::free_port()?);
    let (out, took) = probe::timed(|| {
        cli(
            &["status", "--data-dir", arg(&empty), "--registry", &nothing],
            CLI_TIMEOUT,
        )
    });
    let out = out?;
    ensure!(
        !out.success(),
        "status of nothing succeeded:\n{}",
        out.describe()
    );
    ensure!(
        out.stderr.contains("no node answering") && out.stderr.contains(&nothing),
        "{}",
        out.describe()
    );
    ensure!(
        took < Duration::from_secs(10),
        "status of nothing took {took:?}"
    );
    eprintln!("[cli] status of nothing: {}", out.stderr.trim());

    // Something that is not a node.
    let out = cli(&["status", "--registry", up.url()], CLI_TIMEOUT)?;
    ensure!(
        !out.success(),
        "status of a registry that is no node:\n{}",
        out.describe()
    );
    ensure!(out.stderr.contains("Open-Registry"), "{}", out.describe());
    Ok(())
}

#[test]
fn sigterm_stops_cleanly_and_a_restart_serves_the_store_offline() -> Result<()> {
    let up = FakeUpstream::start()?;
    let p = up.publish(&PackageSpec::new("or-restart", "1.0.0").big_file(64 << 10))?;
    let mut node = NodeProcess::start(&["--upstream", up.url()])?;
    let doc = node.get(&p.packument_path, &[])?;
    ensure!(doc.status == 200);
    let again = node.get(&p.packument_path, &[])?;
    ensure!(again.status == 200);
    // The start banner says where P2P listens and who can reach it; each request is logged,
    // with where its answer came from: the upstream first, then the node's memory.
    let access = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| {
                l.contains("open_registry::access")
                    && l.contains(&format!("path={} ", p.packument_path))
            })
            .map(str::to_owned)
            .collect()
    };
    let log = probe::wait_for(
        Duration::from_secs(10),
        "the banner and two access lines",
        || {
            let log = std::fs::read_to_string(node.log_path()).ok()?;
            (log.contains("Kademlia") && access(&log).len() == 2).then_some(log)
        },
    )?;
    let lines = access(&log);
    ensure!(
        lines[0].contains("source=upstream") && lines[1].contains("source=memory"),
        "{lines:#?}"
    );
    ensure!(
        log.contains("peer-to-peer: /ip4/127.0.0.1/tcp/")
            && log.contains("reachable from this host only")
            && log.contains("Kademlia server"),
        "{log}"
    );
    ensure!(
        log.lines().any(|l| l.contains("open_registry::access")
            && l.contains(&format!("path={}", p.packument_path))
            && l.contains("status=200")),
        "{log}"
    );
    let tgz = node.get(&p.tarball_path, &[])?;
    ensure!(tgz.status == 200 && Integrity::sha512_sri(&tgz.body) == p.integrity);

    let (exit, took) = probe::timed(|| node.stop());
    let exit = exit?.context("the node was not running")?;
    ensure!(
        exit.code() == Some(0),
        "SIGTERM: exit {exit:?}\n{}",
        node.log_tail(30)
    );
    let log = node.log_tail(30);
    ensure!(log.contains("store flushed"), "no flush in the log:\n{log}");
    ensure!(
        !node.data_dir.join("node.json").exists(),
        "node.json left behind"
    );
    eprintln!(
        "[cli] SIGTERM → exit 0 in {took:?}: {}",
        log.lines().last().unwrap_or("")
    );

    up.down();
    node.restart()?;
    let r = node.get(&p.packument_path, &[])?;
    ensure!(
        r.status == 200,
        "restarted, upstream down: {} {}",
        r.status,
        r.text()
    );
    let v = probe::json(&r)?;
    ensure!(v["versions"]["1.0.0"]["dist"]["integrity"] == p.integrity.as_str());
    ensure!(
        v["versions"]["1.0.0"]["dist"]["tarball"]
            == format!("{}{}", node.gateway, p.tarball_path).as_str()
    );
    let r = node.get(&p.tarball_path, &[])?;
    ensure!(
        r.status == 200 && r.body == tgz.body,
        "restarted tarball: {}",
        r.status
    );
    let s = node.status()?;
    ensure!(
        s.store.packuments == 1 && s.store.tarballs == 1,
        "{:?}",
        s.store
    );
    ensure!(
        s.counters.get("tarball_hits") == Some(&1),
        "{:?}",
        s.counters
    );
    let exit = node.stop()?.context("not running")?;
    ensure!(exit.code() == Some(0), "second SIGTERM: {exit:?}");
    Ok(())
}

#[test]
fn statement_check_show_and_import_as_an_operator_runs_them() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    fs::create_dir_all(&data)?;
    let statement = data.join("statement.toml");

    // No statement yet: a clear failure.
    let out = cli(
        &["statement", "check", "--data-dir", arg(&data)],
        CLI_TIMEOUT,
    )?;
    ensure!(!out.success(), "{}", out.describe());
    ensure!(out.stderr.contains("no statement"), "{}", out.describe());

    // Problems are FILE:LINE:COL: message, one a line, and fail the check.
    fs::write(
        &statement,
        "[operator]\nname = \"Co-op\"\n\n[[month]]\nmonth = \"2026-11\"\ncurrency = \"eur\"\n\
         cost = [ { provider = \"Hetzner\", item = \"CX32\", amount = \"-6.80\" } ]\n",
    )?;
    let out = cli(
        &["statement", "check", "--data-dir", arg(&data)],
        CLI_TIMEOUT,
    )?;
    ensure!(!out.success(), "{}", out.describe());
    let file = arg(&statement);
    for want in [
        format!("{file}:6:12: currency \"eur\""),
        format!("{file}:7:58: amount \"-6.80\" is negative"),
    ] {
        ensure!(
            out.stderr.contains(&want),
            "no {want:?}:\n{}",
            out.describe()
        );
    }

    fs::write(
        &statement,
        "# Our node.\n[operator]\nname = \"Co-op\"\n\n[[month]]\nmonth = \"2026-11\"\ncurrency = \"EUR\"\n\
         cost = [ { provider = \"Hetzner\", item = \"CX32\", amount = \"6.80\" } ]\n",
    )?;
    cli(
        &["statement", "check", "--data-dir", arg(&data)],
        CLI_TIMEOUT,
    )?
    .ok()?;

    let csv = tmp.path().join("transactions.csv");
    fs::write(
        &csv,
        "datetime,shortId,description,type,kind,amount,netAmount,currency\n\
         2026-11-03T10:00:00.000Z,aa11,\"Contribution from Alice, monthly\",CREDIT,CONTRIBUTION,25.00,24.41,EUR\n\
         2026-11-03T10:00:00.000Z,aa12,Stripe payment processor fee,DEBIT,PAYMENT_PROCESSOR_FEE,-0.59,-0.59,EUR\n\
         2026-11-28T09:00:00.000Z,aa13,Hetzner CX32 server,DEBIT,EXPENSE,-6.80,-6.80,EUR\n",
    )?;
    let out = cli(
        &[
            "statement",
            "import",
            "--opencollective",
            arg(&csv),
            "--data-dir",
            arg(&data),
        ],
        CLI_TIMEOUT,
    )?
    .ok()?;
    ensure!(
        out.stdout
            .contains("2026-11 EUR: 1 contribution, donated 25.00; 1 expense, spent 6.80")
            && out
                .stdout
                .contains("ignored 1 rows (PAYMENT_PROCESSOR_FEE 1)"),
        "{}",
        out.describe()
    );
    let text = fs::read_to_string(&statement)?;
    ensure!(text.starts_with("# Our node.\n"), "{text}");

    let out = cli(
        &["statement", "show", "--data-dir", arg(&data), "--json"],
        CLI_TIMEOUT,
    )?
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&out.stdout)?;
    let totals = &v["months"][0]["totals"];
    ensure!(
        totals["cost"] == "6.80"
            && totals["donated"] == "25.00"
            && totals["spent"] == "6.80"
            && totals["balance"] == "18.20",
        "{}",
        out.describe()
    );
    let out = cli(
        &["statement", "show", "--data-dir", arg(&data)],
        CLI_TIMEOUT,
    )?
    .ok()?;
    ensure!(
        out.stdout
            .contains("EUR: cost 6.80, donated 25.00, spent 6.80, balance 18.20"),
        "{}",
        out.describe()
    );
    Ok(())
}
