//! The node-process helper against a stand-in binary that keeps the node's startup contract
//! (writes `DATA_DIR/node.json` once listening, answers `/-/ping`, exits on SIGTERM). The real
//! binary goes through the same helper in the end-to-end tests.

use std::{fs, os::unix::fs::PermissionsExt, path::Path, time::Duration};

use anyhow::{Result, ensure};
use open_registry_tests::{NodeProcess, http};

/// A shell script that execs node (so the pid stays the one the helper spawned).
const STAND_IN: &str = r#"#!/bin/sh
DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) DIR="$2"; shift 2 ;;
    --fail) echo "stand-in: refusing to start" >&2; exit 3 ;;
    *) shift ;;
  esac
done
exec node -e '
const fs = require("fs"), http = require("http"), path = require("path");
const dir = process.argv[1];
const server = http.createServer((req, res) => {
  res.setHeader("content-type", "application/json");
  res.end(req.url === "/-/ping" ? "{}" : JSON.stringify({ pid: process.pid }));
});
process.on("SIGTERM", () => {
  fs.writeFileSync(path.join(dir, "terminated"), "yes");
  process.exit(0);
});
server.listen(0, "127.0.0.1", () => {
  const gateway = "http://127.0.0.1:" + server.address().port;
  console.error("stand-in listening on " + gateway);
  fs.writeFileSync(path.join(dir, "node.json"), JSON.stringify({ gateway, pid: process.pid }));
});
' "$DIR"
"#;

fn stand_in(dir: &Path) -> Result<std::path::PathBuf> {
    let bin = dir.join("open-registry-stand-in");
    fs::write(&bin, STAND_IN)?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    Ok(bin)
}

fn ping(gateway: &str) -> bool {
    http::get(&format!("{gateway}/-/ping"), Duration::from_secs(2)).is_ok_and(|r| r.status == 200)
}

#[test]
fn starts_stops_restarts_and_kills() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let bin = stand_in(tmp.path())?;
    let data = tmp.path().join("data");
    // A stale node.json from an earlier run must not be believed.
    fs::create_dir_all(&data)?;
    fs::write(
        data.join("node.json"),
        r#"{"gateway":"http://127.0.0.1:1","pid":1}"#,
    )?;

    let mut node = NodeProcess::builder()
        .binary(&bin)
        .data_dir(&data)
        .args(["--no-upstream"])
        .start()?;
    ensure!(
        node.gateway.starts_with("http://127.0.0.1:"),
        "{}",
        node.gateway
    );
    ensure!(!node.gateway.ends_with(":1"), "read the stale node.json");
    ensure!(ping(&node.gateway));
    ensure!(
        node.log_tail(10).contains("stand-in listening"),
        "{}",
        node.log_tail(10)
    );

    // stop: SIGTERM reaches the process, which exits cleanly.
    let first = node.gateway.clone();
    let status = node.stop()?;
    ensure!(status.is_some_and(|s| s.success()), "{status:?}");
    ensure!(data.join("terminated").exists(), "SIGTERM not delivered");
    ensure!(!ping(&first));

    // restart: same data dir, a new process and gateway.
    fs::remove_file(data.join("terminated"))?;
    node.restart()?;
    ensure!(ping(&node.gateway));
    let pid = node.pid();
    ensure!(pid.is_some());

    // kill: SIGKILL, no chance to clean up.
    let gateway = node.gateway.clone();
    node.kill();
    ensure!(!data.join("terminated").exists(), "SIGKILL ran a handler");
    ensure!(!ping(&gateway));
    ensure!(!node.is_running());
    Ok(())
}

#[test]
fn a_node_that_fails_to_start_reports_its_log() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let bin = stand_in(tmp.path())?;
    let err = NodeProcess::builder()
        .binary(&bin)
        .arg("--fail")
        .start()
        .expect_err("the stand-in was told to fail");
    let msg = format!("{err:#}");
    ensure!(msg.contains("exited during startup"), "{msg}");
    ensure!(msg.contains("stand-in: refusing to start"), "{msg}");
    Ok(())
}

#[test]
fn dropping_a_node_kills_it() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let bin = stand_in(tmp.path())?;
    let node = NodeProcess::builder().binary(&bin).start()?;
    let gateway = node.gateway.clone();
    ensure!(ping(&gateway));
    drop(node);
    ensure!(!ping(&gateway));
    Ok(())
}
