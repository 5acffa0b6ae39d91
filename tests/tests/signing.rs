//! Issue 3 end to end: npm's own verifier accepts the registry signatures served through the
//! gateway, and `open-registry verify --lockfile` checks integrity, pinned npm signatures and
//! operator records — and names exactly the package that was tampered with.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use open_registry_tests::node::cli;
use open_registry_tests::{
    FakeUpstream, NodeProcess, PackageSpec, UpstreamOptions, fixtures, npm::Npm, pacote_check,
    pacote_verify,
};
use serde_json::Value;

const CLI_TIMEOUT: Duration = Duration::from_secs(120);

fn signed_upstream() -> Result<FakeUpstream> {
    let up = FakeUpstream::start_with(UpstreamOptions {
        sign: true,
        ..UpstreamOptions::default()
    })?;
    up.publish(&PackageSpec::new("sig-plain", "1.0.0"))?;
    up.publish(&PackageSpec::new("@sig-test/scoped", "1.2.0"))?;
    up.publish(
        &PackageSpec::new("sig-app", "1.0.0")
            .dep("sig-plain", "^1.0.0")
            .dep("@sig-test/scoped", "^1.0.0"),
    )?;
    up.publish(&PackageSpec::new("sig-pre", "1.0.0"))?;
    up.publish_tagged(&PackageSpec::new("sig-pre", "2.0.0-beta.1"), "next")?;
    Ok(up)
}

fn verify_lockfile(data: &Path, gateway: &str, lockfile: &Path) -> Result<(bool, String)> {
    let out = cli(
        &[
            "verify",
            "--data-dir",
            &data.display().to_string(),
            "--registry",
            gateway,
            "--lockfile",
            &lockfile.display().to_string(),
        ],
        CLI_TIMEOUT,
    )?;
    eprintln!(
        "$ open-registry verify --lockfile {}\n{}{}",
        lockfile.display(),
        out.stdout,
        out.stderr
    );
    Ok((out.success(), out.stdout.clone()))
}

/// The lines of the verify table that failed.
fn failing_lines(table: &str) -> Vec<String> {
    table
        .lines()
        .filter(|l| l.contains('@') && l.trim_end().ends_with("FAIL"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn signatures_and_records_verify_end_to_end_and_tampering_is_named() -> Result<()> {
    let up = signed_upstream()?;
    let data = tempfile::tempdir()?;
    let data_s = data.path().display().to_string();

    // init creates the operator key and pins the upstream's registry keys.
    let init = cli(
        &[
            "init",
            "--data-dir",
            &data_s,
            "--upstream",
            up.url(),
            "--listen",
            "127.0.0.1:0",
        ],
        CLI_TIMEOUT,
    )?
    .ok()?;
    eprintln!("{}", init.stdout);
    let pinned: Value = serde_json::from_slice(&std::fs::read(data.path().join("keys.json"))?)?;
    ensure!(
        pinned == up.keys_document(),
        "init pinned other keys: {pinned}"
    );
    let id = cli(&["id", "--data-dir", &data_s], CLI_TIMEOUT)?.ok()?;
    ensure!(
        id.stdout.trim().starts_with("12D3KooW"),
        "id printed {:?}",
        id.stdout
    );

    let mut node = NodeProcess::builder().data_dir(data.path()).start()?;
    let gateway = node.gateway().to_owned();
    ensure!(
        node.status()?.peer_id == id.stdout.trim(),
        "the node signs as another operator"
    );

    // The real npm installs through the gateway; the lockfile is what we verify later.
    let work = tempfile::tempdir()?;
    let project = work.path().join("project");
    fixtures::write_project(&project, &[("sig-app", "^1.0.0"), ("sig-pre", "next")])?;
    Npm::new(&gateway)?.install(&project)?;
    let lockfile = project.join("package-lock.json");

    // npm's own verifier (pacote with verifySignatures) through our gateway, with the keys the
    // gateway serves: every signature must be accepted.
    let keys = node.get("/-/npm/v1/keys", &[])?;
    ensure!(keys.status == 200, "keys: {}", keys.status);
    let keys: Value = serde_json::from_slice(&keys.body)?;
    ensure!(
        keys == pinned,
        "the gateway serves keys other than the pinned ones"
    );
    let specs = [
        "sig-app@^1.0.0",
        "sig-plain@1.0.0",
        "@sig-test/scoped@1.2.0",
        "sig-pre@next",
    ];
    let outcomes = pacote_verify(&gateway, &specs, &keys)?;
    for o in &outcomes {
        eprintln!(
            "pacote: {} -> {:?}, {} signature(s) ok",
            o.spec, o.id, o.signatures
        );
        let resolved = o.resolved.as_deref().unwrap_or_default();
        ensure!(
            resolved.starts_with(&gateway),
            "tarball not via the gateway: {resolved}"
        );
    }

    // verify --lockfile passes on the project as installed.
    let (ok, table) = verify_lockfile(data.path(), &gateway, &lockfile)?;
    ensure!(ok, "verify failed on an untouched project:\n{table}");
    ensure!(table.contains("4 packages verified"), "{table}");
    ensure!(
        !table.contains("unsigned"),
        "npm signatures were not checked:\n{table}"
    );

    // One package's integrity changed in the lockfile: only that package fails, by name.
    let mut lock: Value = serde_json::from_slice(&std::fs::read(&lockfile)?)?;
    lock["packages"]["node_modules/sig-plain"]["integrity"] = Value::String(
        open_registry_protocol::Integrity::sha512_sri(b"something else"),
    );
    let tampered_lock = work.path().join("tampered-lock.json");
    std::fs::write(&tampered_lock, serde_json::to_vec_pretty(&lock)?)?;
    let (ok, table) = verify_lockfile(data.path(), &gateway, &tampered_lock)?;
    ensure!(!ok, "a wrong lockfile integrity passed:\n{table}");
    let failing = failing_lines(&table);
    ensure!(
        failing.len() == 1 && failing[0].starts_with("sig-plain@1.0.0"),
        "expected exactly sig-plain to fail: {failing:?}\n{table}"
    );
    ensure!(
        table.contains("sig-plain@1.0.0: integrity: tarball does not match the lockfile"),
        "{table}"
    );

    // One byte of one stored record changed on disk: only that package fails, as forged.
    node.stop()?;
    flip_record_byte(&data.path().join("db"), "@sig-test/scoped")?;
    node.restart()?;
    let gateway = node.gateway().to_owned();
    let (ok, table) = verify_lockfile(data.path(), &gateway, &lockfile)?;
    ensure!(!ok, "a tampered record passed:\n{table}");
    let failing = failing_lines(&table);
    ensure!(
        failing.len() == 1 && failing[0].starts_with("@sig-test/scoped@1.2.0"),
        "expected exactly @sig-test/scoped to fail: {failing:?}\n{table}"
    );
    ensure!(
        table.contains(
            "@sig-test/scoped@1.2.0: operator records: forged: record signature is invalid"
        ),
        "{table}"
    );
    Ok(())
}

/// Flips one bit in the body of the stored record for `name` (the node must be stopped).
fn flip_record_byte(db: &Path, name: &str) -> Result<()> {
    let db = sled::open(db).context("opening the node's sled database")?;
    let tree = db.open_tree("records")?;
    let mut prefix = name.as_bytes().to_vec();
    prefix.push(0);
    let (key, value) = tree
        .scan_prefix(&prefix)
        .next()
        .context("no stored record for the package")??;
    let mut v = value.to_vec();
    // 1 format byte + 32 key bytes + 64 signature bytes precede the record body.
    let at = 97 + 20;
    ensure!(v.len() > at, "record too short");
    v[at] ^= 0x01;
    tree.insert(key, v)?;
    db.flush()?;
    Ok(())
}

#[test]
fn forged_metadata_is_caught_by_npm_and_by_verify() -> Result<()> {
    let up = signed_upstream()?;
    // The upstream's metadata is edited after signing: integrity no longer matches the signature.
    let forged = open_registry_protocol::Integrity::sha512_sri(b"evil tarball");
    up.edit_version("sig-plain", "1.0.0", |m| {
        m["dist"]["integrity"] = Value::String(forged.clone());
    })?;
    let data = tempfile::tempdir()?;
    let data_s = data.path().display().to_string();
    cli(
        &[
            "init",
            "--data-dir",
            &data_s,
            "--upstream",
            up.url(),
            "--listen",
            "127.0.0.1:0",
        ],
        CLI_TIMEOUT,
    )?
    .ok()?;
    let node = NodeProcess::builder().data_dir(data.path()).start()?;
    let keys: Value = serde_json::from_slice(&node.get("/-/npm/v1/keys", &[])?.body)?;

    let outcomes = pacote_check(node.gateway(), &["sig-plain@1.0.0", "sig-app@1.0.0"], &keys)?;
    let plain = &outcomes[0];
    ensure!(!plain.ok, "pacote accepted a forged integrity: {plain:?}");
    ensure!(
        plain.code.as_deref() == Some("EINTEGRITYSIGNATURE"),
        "unexpected pacote error: {plain:?}"
    );
    ensure!(
        outcomes[1].ok,
        "an untouched package was refused: {:?}",
        outcomes[1]
    );

    let out = cli(
        &[
            "verify",
            "--data-dir",
            &data_s,
            "--registry",
            node.gateway(),
            "sig-plain@1.0.0",
            "sig-app",
        ],
        CLI_TIMEOUT,
    )?;
    eprintln!("{}{}", out.stdout, out.stderr);
    ensure!(!out.success(), "verify accepted forged metadata");
    // The node refused to serve bytes that do not match (502), and the registry signature over
    // the forged metadata does not verify under the pinned key. The operator's record agrees
    // with the metadata: it attests what the upstream said, and that is what was said.
    let failing = failing_lines(&out.stdout);
    ensure!(failing.len() == 1, "{}", out.stdout);
    let cols: Vec<&str> = failing[0].split_whitespace().collect();
    ensure!(
        cols == ["sig-plain@1.0.0", "FAIL", "FAIL", "1/1", "ok", "FAIL"],
        "{}",
        out.stdout
    );
    ensure!(
        out.stdout.contains("sig-plain@1.0.0: integrity:")
            && out
                .stdout
                .contains("upstream sent bytes that do not verify"),
        "{}",
        out.stdout
    );
    Ok(())
}
