//! Content codings from the upstream (R20 in docs/security.md): packuments may come gzip-encoded
//! and are capped by their decoded size (a decompression bomb is refused, not cached); tarballs
//! are requested as `identity` and stored exactly as sent, whatever the upstream labels them.
//! And a packument with a duplicate key (R22) is refused rather than read differently from
//! the way npm reads it. Popularity (R23) counts only packuments that were answered. A
//! packument bigger than the packument memory (R21) goes through the disk.

use anyhow::{Result, ensure};
use open_registry_tests::{FakeUpstream, Fault, InProcessNode, Node as _, PackageSpec, probe};

/// A small gzip-encoded packument is decoded and served; one that expands beyond
/// `--max-packument-size` (64 MiB of padding in ~64 KiB on the wire, against a 1 MiB cap) is
/// refused with a 502 and not stored, and the node keeps serving.
#[test]
fn r20_a_gzip_bomb_packument_is_refused_by_its_decoded_size() -> Result<()> {
    let up = FakeUpstream::start()?;
    let node = InProcessNode::start(&[
        "--upstream",
        up.url(),
        "--retries",
        "0",
        "--max-packument-size",
        "1MiB",
    ])?;

    let small = up.publish(&PackageSpec::new("or-r20-small", "1.0.0"))?;
    up.set_fault(small.packument_path.as_str(), Fault::Gzip { pad: 1000 });
    let r = node.get(&small.packument_path, &[])?;
    ensure!(
        r.status == 200,
        "small gzip packument: {} {}",
        r.status,
        r.text()
    );
    ensure!(probe::json(&r)?["versions"]["1.0.0"]["dist"]["integrity"] == small.integrity.as_str());
    let sent = up
        .requests()
        .into_iter()
        .find(|q| q.path == small.packument_path)
        .and_then(|q| q.accept_encoding);
    ensure!(
        sent.as_deref() == Some("gzip"),
        "packuments accept gzip: {sent:?}"
    );

    let bomb = up.publish(&PackageSpec::new("or-r20-bomb", "1.0.0"))?;
    up.set_fault(bomb.packument_path.as_str(), Fault::Gzip { pad: 64 << 20 });
    let before = node.status()?.store;
    for _ in 0..2 {
        let r = node.get(&bomb.packument_path, &[])?;
        ensure!(r.status == 502, "gzip bomb: {} {}", r.status, r.text());
        probe::error_message(&r)?;
    }
    let after = node.status()?.store;
    ensure!(
        after.packuments == before.packuments,
        "the bomb was stored: {before:?} → {after:?}"
    );
    ensure!(
        up.hits(&bomb.packument_path) == 2,
        "a refused bomb is not cached: each request asks the upstream again"
    );

    up.clear_fault(bomb.packument_path.as_str());
    let r = node.get(&bomb.packument_path, &[])?;
    ensure!(r.status == 200, "fault cleared: {} {}", r.status, r.text());
    Ok(())
}

/// A tarball is requested with `Accept-Encoding: identity`; an upstream that labels the `.tgz`
/// `Content-Encoding: gzip` anyway gets its bytes stored and served as sent (not gunzipped,
/// which would break their integrity).
#[test]
fn r20_tarballs_are_requested_as_identity_and_stored_as_sent() -> Result<()> {
    let up = FakeUpstream::start()?;
    let node = InProcessNode::start(&["--upstream", up.url(), "--retries", "0"])?;
    let p = up.publish(&PackageSpec::new("or-r20-tgz", "1.0.0").big_file(32 << 10))?;
    ensure!(node.get(&p.packument_path, &[])?.status == 200);

    up.set_fault(p.tarball_path.as_str(), Fault::LabelGzip);
    let r = node.get(&p.tarball_path, &[])?;
    ensure!(
        r.status == 200,
        "tarball labelled gzip: {} {}",
        r.status,
        r.text()
    );
    let published = up
        .tarball("or-r20-tgz", "or-r20-tgz-1.0.0.tgz")
        .expect("published");
    ensure!(
        r.body[..] == published[..],
        "served bytes differ from the published tarball"
    );
    let sent: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|q| q.path == p.tarball_path)
        .map(|q| q.accept_encoding)
        .collect();
    ensure!(
        !sent.is_empty() && sent.iter().all(|a| a.as_deref() == Some("identity")),
        "tarball requests' Accept-Encoding: {sent:?}"
    );
    // Stored as sent: served again from the store, byte for byte, without the upstream.
    up.clear_fault(p.tarball_path.as_str());
    let hits = up.hits(&p.tarball_path);
    let again = node.get(&p.tarball_path, &[])?;
    ensure!(again.status == 200 && again.body[..] == published[..]);
    ensure!(up.hits(&p.tarball_path) == hits);
    Ok(())
}

/// R22: a packument with a duplicate top-level key (`versions` twice) is refused with a 502 and
/// not stored; the same document without it is served.
#[test]
fn r22_a_packument_with_a_duplicate_key_is_refused() -> Result<()> {
    let up = FakeUpstream::start()?;
    let node = InProcessNode::start(&["--upstream", up.url(), "--retries", "0"])?;
    let p = up.publish(&PackageSpec::new("or-r22-dup", "1.0.0"))?;
    up.set_fault(p.packument_path.as_str(), Fault::DuplicateVersions);
    let before = node.status()?.store;
    for path in [
        p.packument_path.clone(),
        format!("{}/1.0.0", p.packument_path),
    ] {
        let r = node.get(&path, &[])?;
        ensure!(
            r.status == 502,
            "duplicate key, GET {path}: {} {}",
            r.status,
            r.text()
        );
        ensure!(probe::error_message(&r)?.contains("duplicate key"));
    }
    ensure!(node.status()?.store.packuments == before.packuments);
    up.clear_fault(p.packument_path.as_str());
    ensure!(node.get(&p.packument_path, &[])?.status == 200);
    Ok(())
}

/// R23: requests for names the upstream does not have, or whose packument fails, are not
/// counted as popular; a package answered 200 is.
#[test]
fn r23_only_answered_packuments_count_as_popular() -> Result<()> {
    let up = FakeUpstream::start()?;
    let node = InProcessNode::start(&["--upstream", up.url(), "--retries", "0"])?;
    let real = up.publish(&PackageSpec::new("or-r23-real", "1.0.0"))?;
    let broken = up.publish(&PackageSpec::new("or-r23-broken", "1.0.0"))?;
    up.set_fault(broken.packument_path.as_str(), Fault::Status(500));
    for _ in 0..3 {
        ensure!(node.get("/or-r23-missing", &[])?.status == 404);
        ensure!(node.get(&broken.packument_path, &[])?.status >= 500);
        ensure!(node.get(&real.packument_path, &[])?.status == 200);
    }
    let (_, packages) = open_registry_tests::sync::popular(&node, 50)?;
    ensure!(
        packages == vec![("or-r23-real".to_owned(), 3)],
        "popular: {packages:?}"
    );
    Ok(())
}

/// R21: with 1 MiB of packument memory, a 3 MB packument (plain, with its length announced) and
/// a gzip one that decodes to 3 MB are read through the disk, served whole, and every byte of
/// the budget is given back.
#[test]
fn r21_packuments_larger_than_the_packument_memory_are_read_through_the_disk() -> Result<()> {
    let up = FakeUpstream::start()?;
    let node = InProcessNode::start(&[
        "--upstream",
        up.url(),
        "--packument-memory",
        "1MiB",
        "--memory-cache-size",
        "4MiB",
    ])?;
    let readme = "r".repeat(3 << 20);
    let doc = serde_json::json!({
        "name": "or-r21-plain", "readme": readme,
        "dist-tags": {"latest": "1.0.0"},
        "versions": {"1.0.0": {"name": "or-r21-plain", "version": "1.0.0", "dist": {
            "tarball": format!("{}/or-r21-plain/-/or-r21-plain-1.0.0.tgz", up.url()),
            "integrity": "sha512-AA=="}}}
    });
    up.put_packument(
        "or-r21-plain",
        bytes::Bytes::from(serde_json::to_vec(&doc)?),
        Vec::new(),
    );
    let gz = up.publish(&PackageSpec::new("or-r21-gzip", "1.0.0"))?;
    up.set_fault(gz.packument_path.as_str(), Fault::Gzip { pad: 3 << 20 });

    let r = node.get("/or-r21-plain", &[])?;
    ensure!(r.status == 200, "plain: {} {}", r.status, r.text());
    ensure!(probe::json(&r)?["readme"].as_str().map(str::len) == Some(3 << 20));
    let r = node.get(&gz.packument_path, &[])?;
    ensure!(r.status == 200, "gzip: {} {}", r.status, r.text());
    ensure!(probe::json(&r)?["versions"]["1.0.0"]["dist"]["integrity"] == gz.integrity.as_str());
    ensure!(
        node.counter("packument_spills")? == 2,
        "spills: {}",
        node.counter("packument_spills")?
    );
    // Read back from the store (too big for the hot cache): within the budget again.
    let r = node.get("/or-r21-plain", &[("Accept-Encoding", "gzip")])?;
    ensure!(r.status == 200);
    let metrics = node.get("/-/metrics", &[])?.text();
    ensure!(
        metrics.contains("open_registry_packument_memory_bytes 0\n")
            && metrics.contains("open_registry_packument_memory_limit_bytes 1048576\n"),
        "{metrics}"
    );
    Ok(())
}
