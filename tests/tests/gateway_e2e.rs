//! The real `open-registry` binary behind its gateway, mirroring a [`FakeUpstream`]: coalescing
//! (R10), version-miss refresh and 304s, SSRF through metadata (R9), and bad paths (R8).
//!
//! Every test starts its own node (`NodeProcess`, a child process on 127.0.0.1:0) and its own
//! upstream, and observes the node from outside only: HTTP answers, the upstream's request
//! counts, and the node's `/-/open-registry/status`. The test of revalidation past `max_age`
//! runs the node in this process instead (`InProcessNode`, same arguments, same observations)
//! and advances its clock rather than sleeping.

use std::{collections::HashMap, time::Duration};

use anyhow::{Context, Result, ensure};
use open_registry_protocol::Integrity;
use open_registry_tests::{
    FakeUpstream, Fault, InProcessNode, Node as _, NodeProcess, PackageSpec, UpstreamOptions, http,
    probe::{self, error_message},
};
use serde_json::Value;

const ABBREVIATED: &str = "application/vnd.npm.install-v1+json";

/// R10: 200 concurrent cold GETs of one tarball, with a 50 ms upstream, are one upstream fetch
/// of the tarball (and one of its packument), and 200 identical verified answers.
#[test]
fn r10_200_cold_tarball_gets_are_one_upstream_fetch() -> Result<()> {
    let up = FakeUpstream::start()?;
    let spec = PackageSpec::new("or-herd", "1.0.0").big_file(256 << 10);
    let p = up.publish(&spec)?;
    up.set_fault(
        p.tarball_path.as_str(),
        Fault::Delay(Duration::from_millis(50)),
    );
    let node = NodeProcess::start(&["--upstream", up.url()])?;
    let expected = up
        .tarball(&p.name, &spec.tarball_file())
        .context("published tarball")?;

    let url = format!("{}{}", node.gateway, p.tarball_path);
    let rt = probe::runtime()?;
    let client = probe::client(Duration::from_secs(30))?;
    let (answers, took) = rt.block_on(probe::timed_async(probe::get_all(
        &client,
        vec![(url.clone(), Vec::new()); 200],
    )));
    for (i, a) in answers.iter().enumerate() {
        let (status, body) = a
            .as_ref()
            .map_err(|e| anyhow::anyhow!("request {i}: {e}"))?;
        ensure!(
            *status == 200,
            "request {i}: {status} {:?}",
            String::from_utf8_lossy(body)
        );
        ensure!(
            *body == expected,
            "request {i}: {} bytes that differ from the upstream's {}",
            body.len(),
            expected.len()
        );
    }
    ensure!(Integrity::sha512_sri(&expected) == p.integrity);
    let status = node.status()?;
    eprintln!(
        "[r10] 200 tarball GETs in {took:?}: upstream tarball hits {}, packument hits {}, coalesced {}, store hits {}",
        up.hits(&p.tarball_path),
        up.hits(&p.packument_path),
        status.counters.get("coalesced").copied().unwrap_or(0),
        status.counters.get("tarball_hits").copied().unwrap_or(0),
    );
    ensure!(
        up.hits(&p.tarball_path) == 1,
        "{} upstream fetches of {}",
        up.hits(&p.tarball_path),
        p.tarball_path
    );
    ensure!(
        up.hits(&p.packument_path) == 1,
        "{} upstream fetches of {}",
        up.hits(&p.packument_path),
        p.packument_path
    );
    let c = |k: &str| status.counters.get(k).copied().unwrap_or(0);
    ensure!(c("tarball_requests") == 200, "{:?}", status.counters);
    ensure!(c("tarball_ingests") == 1, "{:?}", status.counters);
    ensure!(status.store.tarballs == 1, "{:?}", status.store);
    // The Prometheus view says the same.
    let metrics = node.get("/-/metrics", &[])?;
    ensure!(metrics.status == 200, "/-/metrics: {}", metrics.status);
    let text = metrics.text();
    for line in [
        "open_registry_tarball_requests_total 200",
        "open_registry_tarball_ingests_total 1",
        "open_registry_store_tarballs 1",
    ] {
        ensure!(
            text.lines().any(|l| l == line),
            "no {line:?} in /-/metrics:\n{text}"
        );
    }
    Ok(())
}

/// R10 for metadata: 200 concurrent cold GETs of one scoped packument — in all three scope
/// encodings, half of them abbreviated — are one upstream fetch and identical answers per form.
#[test]
fn r10_200_cold_packument_gets_are_one_upstream_fetch() -> Result<()> {
    let up = FakeUpstream::start()?;
    let p = up.publish(&PackageSpec::new("@or-herd/meta", "1.0.0"))?;
    up.set_fault(
        p.packument_path.as_str(),
        Fault::Delay(Duration::from_millis(50)),
    );
    let node = NodeProcess::start(&["--upstream", up.url()])?;

    let paths = ["/@or-herd%2fmeta", "/@or-herd%2Fmeta", "/@or-herd/meta"];
    let requests: Vec<(String, Vec<(String, String)>)> = (0..200)
        .map(|i| {
            let url = format!("{}{}", node.gateway, paths[i % 3]);
            let headers = if i % 2 == 0 {
                vec![("accept".to_owned(), ABBREVIATED.to_owned())]
            } else {
                vec![("accept".to_owned(), "application/json".to_owned())]
            };
            (url, headers)
        })
        .collect();
    let rt = probe::runtime()?;
    let client = probe::client(Duration::from_secs(30))?;
    let (answers, took) = rt.block_on(probe::timed_async(probe::get_all(&client, requests)));

    let mut bodies: HashMap<bool, bytes::Bytes> = HashMap::new();
    for (i, a) in answers.iter().enumerate() {
        let (status, body) = a
            .as_ref()
            .map_err(|e| anyhow::anyhow!("request {i}: {e}"))?;
        ensure!(
            *status == 200,
            "request {i}: {status} {:?}",
            String::from_utf8_lossy(body)
        );
        let first = bodies.entry(i % 2 == 0).or_insert_with(|| body.clone());
        ensure!(
            first == body,
            "request {i}: a different document than its form's first"
        );
    }
    for (abbreviated, body) in &bodies {
        let doc: Value = serde_json::from_slice(body)?;
        let dist = &doc["versions"]["1.0.0"]["dist"];
        ensure!(dist["integrity"] == p.integrity.as_str(), "{dist}");
        ensure!(
            dist["tarball"] == format!("{}/@or-herd/meta/-/meta-1.0.0.tgz", node.gateway).as_str(),
            "abbreviated={abbreviated}: {dist}"
        );
    }
    eprintln!(
        "[r10] 200 packument GETs in {took:?}: upstream packument hits {}, coalesced {}",
        up.hits(&p.packument_path),
        node.counter("coalesced")?
    );
    ensure!(
        up.hits(&p.packument_path) == 1,
        "{} upstream fetches of {}",
        up.hits(&p.packument_path),
        p.packument_path
    );
    ensure!(node.counter("packument_requests")? >= 200);
    Ok(())
}

/// A version or dist-tag missing from the stored packument, or a tarball it does not list,
/// revalidates once (conditionally) before the node answers; a bogus one is then a JSON 404,
/// and further misses of that package within the miss TTL (60 s) do not revalidate again.
#[test]
fn version_and_tarball_misses_refresh_once() -> Result<()> {
    let up = FakeUpstream::start()?;
    let p1 = up.publish(&PackageSpec::new("or-grow", "1.0.0"))?;
    // Default max-age (5 min): everything below that reaches the upstream is a miss refresh.
    // In this process, so that the miss TTL passes by advancing the node's clock.
    let node = InProcessNode::start(&["--upstream", up.url()])?;
    let path = p1.packument_path.as_str();

    let r = node.get(path, &[])?;
    ensure!(r.status == 200, "GET {path}: {} {}", r.status, r.text());
    ensure!(up.hits(path) == 1);

    let p11 = up.publish(&PackageSpec::new("or-grow", "1.1.0"))?;
    let r = node.get("/or-grow/1.1.0", &[])?;
    ensure!(
        r.status == 200,
        "GET /or-grow/1.1.0: {} {}",
        r.status,
        r.text()
    );
    let v = probe::json(&r)?;
    ensure!(v["version"] == "1.1.0", "{v}");
    ensure!(
        v["dist"]["tarball"] == format!("{}/or-grow/-/or-grow-1.1.0.tgz", node.gateway).as_str(),
        "{}",
        v["dist"]
    );
    ensure!(v["dist"]["integrity"] == p11.integrity.as_str());
    ensure!(up.hits(path) == 2, "{} packument fetches", up.hits(path));
    ensure!(node.counter("packument_updates")? == 2);

    // Now current: `latest` moved to 1.1.0 without another fetch.
    let r = node.get("/or-grow/latest", &[])?;
    ensure!(
        r.status == 200 && probe::json(&r)?["version"] == "1.1.0",
        "{}",
        r.text()
    );
    ensure!(up.hits(path) == 2);

    // A bogus version: one conditional revalidation (304), then a JSON 404.
    let r = node.get("/or-grow/9.9.9", &[])?;
    ensure!(
        r.status == 404,
        "GET /or-grow/9.9.9: {} {}",
        r.status,
        r.text()
    );
    let msg = error_message(&r)?;
    ensure!(msg.contains("9.9.9"), "{msg}");
    ensure!(up.hits(path) == 3, "{} packument fetches", up.hits(path));
    let last = up
        .requests()
        .into_iter()
        .rfind(|r| r.path == path)
        .context("no packument request")?;
    ensure!(
        last.if_none_match
            .as_deref()
            .is_some_and(|e| e.starts_with('"')),
        "the revalidation was not conditional: {last:?}"
    );
    ensure!(node.counter("packument_not_modified")? == 1);

    // The negative cache: more misses of the package within the miss TTL ask nothing, and sign
    // nothing new.
    for bogus in [
        "/or-grow/9.9.9",
        "/or-grow/8.8.8",
        "/or-grow/-/or-grow-6.6.6.tgz",
    ] {
        let r = node.get(bogus, &[])?;
        ensure!(r.status == 404, "GET {bogus}: {} {}", r.status, r.text());
    }
    ensure!(up.hits(path) == 3, "{} packument fetches", up.hits(path));
    ensure!(node.counter("miss_refreshes_skipped")? == 3);
    ensure!(node.counter("packument_updates")? == 2);
    node.clock().advance(Duration::from_secs(61));

    // A new dist-tag, once the miss TTL has passed.
    up.publish_tagged(&PackageSpec::new("or-grow", "2.0.0-beta.1"), "beta")?;
    let r = node.get("/or-grow/beta", &[])?;
    ensure!(
        r.status == 200,
        "GET /or-grow/beta: {} {}",
        r.status,
        r.text()
    );
    ensure!(probe::json(&r)?["version"] == "2.0.0-beta.1");
    ensure!(up.hits(path) == 4);

    // The tarball of a version published since: its miss refreshes the packument, then the
    // tarball is fetched and verified.
    let spec12 = PackageSpec::new("or-grow", "1.2.0");
    let p12 = up.publish(&spec12)?;
    let r = node.get(&p12.tarball_path, &[])?;
    ensure!(
        r.status == 200,
        "GET {}: {} {}",
        p12.tarball_path,
        r.status,
        r.text()
    );
    ensure!(Integrity::sha512_sri(&r.body) == p12.integrity);
    ensure!(up.hits(path) == 5);
    ensure!(up.hits(&p12.tarball_path) == 1);

    // A tarball no version lists: one refresh, then 404, and the upstream is not asked for it.
    let r = node.get("/or-grow/-/or-grow-7.7.7.tgz", &[])?;
    ensure!(r.status == 404, "bogus tarball: {} {}", r.status, r.text());
    error_message(&r)?;
    ensure!(up.hits(path) == 6);
    ensure!(up.hits("/or-grow/-/or-grow-7.7.7.tgz") == 0);
    let r = node.get("/or-grow/-/or-grow-7.7.8.tgz", &[])?;
    ensure!(r.status == 404, "bogus tarball: {} {}", r.status, r.text());
    ensure!(
        up.hits(path) == 6,
        "a second miss within the miss TTL refreshed"
    );

    // A package the upstream does not have: its 404, as JSON, not a 502.
    let r = node.get("/or-never-published", &[])?;
    ensure!(
        r.status == 404,
        "unknown package: {} {}",
        r.status,
        r.text()
    );
    error_message(&r)?;
    Ok(())
}

/// A version published right after the node last heard from the upstream is still found: its
/// miss must revalidate, whenever the stored copy was confirmed.
#[test]
fn a_version_published_just_after_a_fetch_is_found() -> Result<()> {
    let up = FakeUpstream::start()?;
    up.publish(&PackageSpec::new("or-quick", "1.0.0"))?;
    let node = NodeProcess::start(&["--upstream", up.url()])?;
    let r = node.get("/or-quick", &[])?;
    ensure!(r.status == 200, "GET /or-quick: {} {}", r.status, r.text());
    // No pause: on loopback the publish and the next request follow within milliseconds.
    up.publish(&PackageSpec::new("or-quick", "1.0.1"))?;
    let r = node.get("/or-quick/1.0.1", &[])?;
    ensure!(
        r.status == 200,
        "GET /or-quick/1.0.1 right after the publish: {} {} (upstream packument fetches: {}; \
         the miss did not revalidate)",
        r.status,
        r.text(),
        up.hits("/or-quick")
    );
    ensure!(up.hits("/or-quick") == 2);
    Ok(())
}

/// ETags: the gateway answers If-None-Match with 304 for both packument forms and tarballs; an
/// expired packument is revalidated upstream with If-None-Match, and a 304 there keeps it.
#[test]
fn etags_and_conditional_revalidation() -> Result<()> {
    let up = FakeUpstream::start()?;
    let p = up.publish(&PackageSpec::new("or-etag", "1.0.0"))?;
    let node = InProcessNode::start(&["--upstream", up.url(), "--max-age", "1s"])?;
    // Just past the node's max-age.
    let past_max_age = Duration::from_millis(1100);
    let path = p.packument_path.as_str();

    let full = node.get(path, &[])?;
    ensure!(full.status == 200, "{} {}", full.status, full.text());
    let etag = full
        .header("etag")
        .context("no ETag on the packument")?
        .to_owned();
    let r = node.get(path, &[("if-none-match", &etag)])?;
    ensure!(r.status == 304, "If-None-Match {etag}: {}", r.status);
    ensure!(r.body.is_empty());
    ensure!(r.header("etag") == Some(etag.as_str()));

    let abbr = node.get(path, &[("accept", ABBREVIATED)])?;
    ensure!(abbr.status == 200);
    let abbr_etag = abbr.header("etag").context("no ETag")?.to_owned();
    ensure!(abbr_etag != etag, "both forms have ETag {etag}");
    let r = node.get(
        path,
        &[("accept", ABBREVIATED), ("if-none-match", &abbr_etag)],
    )?;
    ensure!(r.status == 304, "abbreviated If-None-Match: {}", r.status);
    // The full form's tag does not validate the abbreviated form.
    let r = node.get(path, &[("accept", ABBREVIATED), ("if-none-match", &etag)])?;
    ensure!(r.status == 200, "cross-form If-None-Match: {}", r.status);

    let t = node.get(&p.tarball_path, &[])?;
    ensure!(t.status == 200);
    let tag = t
        .header("etag")
        .context("no ETag on the tarball")?
        .to_owned();
    let r = node.get(&p.tarball_path, &[("if-none-match", &tag)])?;
    ensure!(
        r.status == 304 && r.body.is_empty(),
        "tarball If-None-Match: {}",
        r.status
    );
    ensure!(up.hits(&p.tarball_path) == 1);

    // Past max-age: revalidated with the upstream's ETag; its 304 keeps the stored revision.
    node.clock().advance(past_max_age);
    let r = node.get(path, &[])?;
    ensure!(r.status == 200 && r.body == full.body);
    ensure!(up.hits(path) == 2, "{} packument fetches", up.hits(path));
    let reval = up
        .requests()
        .into_iter()
        .rfind(|r| r.path == path)
        .context("no revalidation")?;
    ensure!(
        reval.if_none_match.is_some(),
        "unconditional revalidation: {reval:?}"
    );
    ensure!(node.counter("packument_not_modified")? == 1);
    ensure!(node.counter("packument_updates")? == 1);

    // A publish upstream: the next revalidation stores a new revision with a new ETag.
    up.publish(&PackageSpec::new("or-etag", "1.1.0"))?;
    node.clock().advance(past_max_age);
    let r = node.get(path, &[("if-none-match", &etag)])?;
    ensure!(r.status == 200, "stale ETag after an update: {}", r.status);
    ensure!(
        probe::json(&r)?["versions"]["1.1.0"].is_object(),
        "1.1.0 missing"
    );
    ensure!(r.header("etag") != Some(etag.as_str()));
    ensure!(node.counter("packument_updates")? == 2);
    Ok(())
}

/// R9: a `dist.tarball` pointing at another host is fetched from the configured upstream, by
/// its path; the other host is never contacted, even though it would serve the same bytes.
#[test]
fn r9_tarball_urls_on_other_hosts_are_fetched_from_the_upstream() -> Result<()> {
    let up = FakeUpstream::start()?;
    let elsewhere = FakeUpstream::start()?;
    let spec = PackageSpec::new("or-ssrf", "1.0.0");
    let p = up.publish(&spec)?;
    elsewhere.publish(&spec)?;
    let foreign = format!("{}{}", elsewhere.url(), p.tarball_path);
    up.edit_version("or-ssrf", "1.0.0", |m| {
        m["dist"]["tarball"] = Value::String(foreign.clone());
    })?;
    ensure!(
        up.packument("or-ssrf").context("packument")?["versions"]["1.0.0"]["dist"]["tarball"]
            == foreign.as_str()
    );
    let node = NodeProcess::start(&["--upstream", up.url()])?;

    let r = node.get("/or-ssrf", &[])?;
    ensure!(r.status == 200);
    let served = probe::json(&r)?;
    ensure!(
        served["versions"]["1.0.0"]["dist"]["tarball"]
            == format!("{}{}", node.gateway, p.tarball_path).as_str(),
        "served dist: {}",
        served["versions"]["1.0.0"]["dist"]
    );
    let t = node.get(&p.tarball_path, &[])?;
    ensure!(t.status == 200, "{} {}", t.status, t.text());
    ensure!(Integrity::sha512_sri(&t.body) == p.integrity);
    ensure!(
        up.hits(&p.tarball_path) == 1,
        "upstream tarball hits {}",
        up.hits(&p.tarball_path)
    );
    ensure!(
        elsewhere.total_hits() == 0,
        "the other host was contacted: {:?}",
        elsewhere.requests()
    );
    Ok(())
}

/// R8 against the live node: traversal in any encoding, NUL, uppercase, over-long names and
/// unknown shapes are 400/404 with a JSON error and never reach the upstream; writes are 405,
/// whoami is 401.
#[test]
fn r8_bad_paths_writes_and_whoami() -> Result<()> {
    let up = FakeUpstream::start()?;
    up.publish(&PackageSpec::new("or-ok", "1.0.0"))?;
    let node = NodeProcess::start(&["--upstream", up.url()])?;
    let long = format!("/{}", "a".repeat(215));
    let cases: Vec<(&str, u16)> = vec![
        ("/%2e%2e/x", 400),
        ("/%2E%2E/%2E%2E/etc/passwd", 400),
        ("/..%2f..%2fetc%2fpasswd", 400),
        ("/../../etc/passwd", 400),
        ("/or-ok/-/..%2f..%2f..%2fetc%2fpasswd", 400),
        ("/%252e%252e/x", 400),
        ("/a%5c..%5cb", 400),
        ("/a%00b", 400),
        ("/UPPER", 400),
        (long.as_str(), 400),
        ("/_private", 400),
        ("/@s/p/x/y", 404),
        ("/or-ok/-/other-1.0.0.tgz", 404),
    ];
    for (path, want) in &cases {
        let r = node.get(path, &[])?;
        ensure!(
            r.status == *want,
            "GET {path}: {} (want {want}) {}",
            r.status,
            r.text()
        );
        let msg = error_message(&r).with_context(|| format!("GET {path}"))?;
        ensure!(
            r.header("content-type").is_some_and(|c| c.contains("json")),
            "GET {path}: content-type {:?}",
            r.header("content-type")
        );
        eprintln!(
            "[r8] GET {} → {} {msg}",
            &path[..path.len().min(40)],
            r.status
        );
    }
    // The node may ask for the upstream's signing keys on its own; nothing else may go out.
    let package_requests = |up: &FakeUpstream| {
        up.requests()
            .into_iter()
            .filter(|r| !r.path.starts_with("/-/"))
            .collect::<Vec<_>>()
    };
    ensure!(
        package_requests(&up).is_empty(),
        "bad paths reached the upstream: {:?}",
        package_requests(&up)
    );

    // npm publish is a PUT of the packument.
    let body = br#"{"name":"or-ok","versions":{},"_attachments":{}}"#;
    let r = http::request(
        "PUT",
        &format!("{}/or-ok", node.gateway),
        &[("content-type", "application/json")],
        body,
        Duration::from_secs(10),
    )?;
    ensure!(r.status == 405, "PUT: {} {}", r.status, r.text());
    let msg = error_message(&r)?;
    ensure!(msg.contains("mirror"), "{msg}");
    let r = http::request(
        "DELETE",
        &format!("{}/or-ok/-rev/1-x", node.gateway),
        &[],
        &[],
        Duration::from_secs(10),
    )?;
    ensure!(r.status == 405, "DELETE: {} {}", r.status, r.text());
    error_message(&r)?;

    let r = node.get("/-/whoami", &[])?;
    ensure!(r.status == 401, "whoami: {} {}", r.status, r.text());
    error_message(&r)?;

    // Still serving.
    let r = node.get("/or-ok", &[])?;
    ensure!(
        r.status == 200,
        "GET /or-ok after the bad requests: {}",
        r.status
    );
    ensure!(
        package_requests(&up).len() == 1,
        "{:?}",
        package_requests(&up)
    );
    Ok(())
}

/// R27: an upstream with no search and no audit endpoints (404). `/-/v1/search` is answered
/// from the node's own packages, ranked, in npm's shape (and the real `npm search` prints
/// them); the audits are JSON errors npm prints, never empty bodies.
#[test]
fn r27_search_answers_from_own_packages_and_audits_say_why() -> Result<()> {
    let up = FakeUpstream::start_with(UpstreamOptions {
        no_search_or_audit: true,
        ..UpstreamOptions::default()
    })?;
    let described = [
        ("or-left-pad", "String left pad"),
        ("or-right-pad", "Pads strings on the right"),
        ("or-colors", "Terminal colours and styles"),
    ];
    let mut published = Vec::new();
    for (name, description) in described {
        published.push(up.publish(&PackageSpec {
            description: description.to_owned(),
            ..PackageSpec::new(name, "1.0.0")
        })?);
    }
    let node = NodeProcess::start(&["--upstream", up.url()])?;
    for p in &published {
        ensure!(node.get(&p.packument_path, &[])?.status == 200);
    }

    // The index follows the store in the background: wait until all three are searchable.
    let search = |text: &str| -> Result<Value> {
        let r = node.get(&format!("/-/v1/search?text={text}&size=5"), &[])?;
        ensure!(r.status == 200, "search {text}: {} {}", r.status, r.text());
        Ok(serde_json::from_slice(&r.body)?)
    };
    probe::wait_for(Duration::from_secs(10), "the search index", || {
        search("pad+colours").ok()?["total"]
            .as_u64()
            .filter(|n| *n == 3)
    })?;
    let names = |v: &Value| -> Vec<String> {
        v["objects"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|o| o["package"]["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let left = search("left+pad")?;
    let found = names(&left);
    ensure!(
        found.first().map(String::as_str) == Some("or-left-pad"),
        "{left}"
    );
    ensure!(!found.contains(&"or-colors".to_owned()), "{left}");
    let best = &left["objects"][0];
    ensure!(best["package"]["version"] == "1.0.0", "{best}");
    ensure!(
        best["package"]["description"] == "String left pad",
        "{best}"
    );
    ensure!(best["score"]["final"] == 1.0, "{best}");
    ensure!(
        best["searchScore"].as_f64().is_some_and(|s| s > 0.0),
        "{best}"
    );
    ensure!(left["time"].is_string(), "{left}");
    let pad = search("pad")?;
    ensure!(pad["total"] == 2, "{pad}");
    let page = search("pad&from=1")?;
    ensure!(names(&page).len() == 1 && page["total"] == 2, "{page}");

    // The real npm prints them.
    let work = tempfile::tempdir()?;
    let npm = open_registry_tests::Npm::new(node.gateway())?;
    let out = npm.run(work.path(), &["search", "--json", "pad"])?.ok()?;
    let printed: Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("npm search --json printed {:?}", out.stdout))?;
    let printed: Vec<&str> = printed
        .as_array()
        .context("npm search --json prints a list")?
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    ensure!(
        printed.contains(&"or-left-pad") && printed.contains(&"or-right-pad"),
        "{printed:?}"
    );

    // Audits: a JSON error with the reason, for either endpoint.
    for path in [
        "/-/npm/v1/security/audits/quick",
        "/-/npm/v1/security/advisories/bulk",
    ] {
        let r = http::request(
            "POST",
            &format!("{}{path}", node.gateway()),
            &[("content-type", "application/json")],
            b"{}",
            Duration::from_secs(10),
        )?;
        ensure!(r.status == 501, "{path}: {} {}", r.status, r.text());
        let msg = error_message(&r)?;
        ensure!(
            msg.contains("the upstream registry provides no audit endpoint"),
            "{path}: {msg}"
        );
    }
    Ok(())
}
