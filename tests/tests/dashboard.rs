//! The operator dashboard is served as HTML and its script is valid JavaScript that reads the
//! node's JSON routes (each of which answers).

use std::process::Command;

use anyhow::{Context, Result, ensure};
use open_registry_tests::{FakeUpstream, NodeProcess, PackageSpec};

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
    Ok(())
}
