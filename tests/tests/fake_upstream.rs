//! The fake upstream behaves like an npm registry to the real clients and to npm's own
//! signature verifier, and breaks exactly as its faults say.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use open_registry_protocol::Integrity;
use open_registry_tests::{
    FakeUpstream, Fault, PackageSpec, Published, RegistryKey, Target, UpstreamOptions, fixtures,
    npm::Npm, npmsig, pacote_check, pacote_verify,
};
use serde_json::{Value, json};

fn signed() -> Result<FakeUpstream> {
    FakeUpstream::start_with(UpstreamOptions {
        sign: true,
        ..UpstreamOptions::default()
    })
}

/// plain, scoped, one depending on both, a stable and a `next` prerelease.
fn publish_set(up: &FakeUpstream) -> Result<Vec<Published>> {
    Ok(vec![
        up.publish(&PackageSpec::new("or-plain", "1.0.0"))?,
        up.publish(&PackageSpec::new("@or-test/scoped", "1.2.0"))?,
        up.publish(
            &PackageSpec::new("or-app", "1.0.0")
                .dep("or-plain", "^1.0.0")
                .dep("@or-test/scoped", "^1.0.0"),
        )?,
        up.publish(&PackageSpec::new("or-pre", "1.0.0"))?,
        up.publish_tagged(&PackageSpec::new("or-pre", "2.0.0-beta.1"), "next")?,
    ])
}

fn client() -> Result<reqwest::Client> {
    // No pooling: a test that takes the server down must not be fooled by an idle connection.
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()?)
}

#[test]
fn npm_and_pnpm_install_from_the_fake_upstream() -> Result<()> {
    let up = signed()?;
    let published = publish_set(&up)?;
    let work = tempfile::tempdir()?;
    let project = work.path().join("project");
    fixtures::write_project(&project, &[("or-app", "^1.0.0"), ("or-pre", "next")])?;
    let npm = Npm::new(up.url())?;
    npm.install(&project)?;
    let check = r#"
const assert = require('assert');
assert.deepStrictEqual(require('or-app').deps, { 'or-plain': '1.0.0', '@or-test/scoped': '1.2.0' });
assert.strictEqual(require('or-pre').version, '2.0.0-beta.1');
console.log('tree ok');
"#;
    npm.node(&project, check)?;
    for p in &published {
        if p.version == "1.0.0" && p.name == "or-pre" {
            continue; // the stable or-pre is not part of the tree
        }
        ensure!(
            up.hits(&p.packument_path) >= 1,
            "{} never asked for",
            p.packument_path
        );
        ensure!(
            up.hits(&p.tarball_path) == 1,
            "{}: {} hits",
            p.tarball_path,
            up.hits(&p.tarball_path)
        );
    }
    // npm asks for scoped packuments as /@scope%2fname; the count is under the decoded path.
    ensure!(
        up.requests()
            .iter()
            .any(|r| r.raw.contains("%2f") && r.path == "/@or-test/scoped"),
        "no encoded scoped request in {:?}",
        up.requests()
    );

    npm.clear_cache()?;
    std::fs::remove_dir_all(project.join("node_modules"))?;
    npm.ci(&project)?;
    npm.node(&project, check)?;

    let pnpm_project = work.path().join("pnpm-project");
    fixtures::write_project(&pnpm_project, &[("or-app", "^1.0.0"), ("or-pre", "next")])?;
    npm.pnpm_install(&pnpm_project)?;
    npm.node(&pnpm_project, check)?;
    Ok(())
}

#[test]
fn npm_pacote_verifies_registry_signatures() -> Result<()> {
    let up = signed()?;
    publish_set(&up)?;
    let keys = up.keys_document();
    let key = up.key().context("signed upstream without key")?.clone();
    ensure!(key.keyid().starts_with("SHA256:"), "keyid {}", key.keyid());
    ensure!(
        keys["keys"][0]["keytype"] == "ecdsa-sha2-nistp256",
        "{keys}"
    );
    ensure!(keys["keys"][0]["expires"].is_null(), "{keys}");

    let specs = [
        "or-plain@1.0.0",
        "@or-test/scoped@^1.0.0",
        "or-app",
        "or-pre@next",
    ];
    let ok = pacote_verify(up.url(), &specs, &keys)?;
    for o in &ok {
        ensure!(o.signatures == 1, "{o:?}");
        ensure!(
            o.resolved
                .as_deref()
                .is_some_and(|r| r.starts_with(up.url())),
            "{o:?}"
        );
    }
    ensure!(
        ok[3].id.as_deref() == Some("or-pre@2.0.0-beta.1"),
        "{:?}",
        ok[3]
    );

    // A keys document without the signing key: npm cannot find a key.
    let stranger = npmsig::keys_document(&[RegistryKey::from_seed("a stranger")?]);
    for o in pacote_check(up.url(), &specs[..2], &stranger)? {
        ensure!(
            !o.ok && o.code.as_deref() == Some("EMISSINGSIGNATUREKEY"),
            "{o:?}"
        );
    }
    // The right key, but expired before these versions were published.
    let expired = npmsig::keys_document(&[key.clone().expiring("2001-01-01T00:00:00.000Z")]);
    for o in pacote_check(up.url(), &specs[..2], &expired)? {
        ensure!(
            !o.ok && o.code.as_deref() == Some("EEXPIREDSIGNATUREKEY"),
            "{o:?}"
        );
    }
    ensure!(pacote_verify(up.url(), &specs[..1], &expired).is_err());

    // Integrity edited after signing: the signature no longer matches.
    up.edit_version("or-plain", "1.0.0", |m| {
        m["dist"]["integrity"] = json!(Integrity::sha512_sri(b"other bytes"));
    })?;
    let out = pacote_check(up.url(), &specs[..2], &keys)?;
    ensure!(
        !out[0].ok && out[0].code.as_deref() == Some("EINTEGRITYSIGNATURE"),
        "{:?}",
        out[0]
    );
    ensure!(out[1].ok, "{:?}", out[1]);

    // An upstream without signatures passes pacote but not pacote_verify.
    let unsigned = FakeUpstream::start()?;
    unsigned.publish(&PackageSpec::new("or-plain", "1.0.0"))?;
    let out = pacote_check(unsigned.url(), &["or-plain"], &keys)?;
    ensure!(out[0].ok && out[0].signatures == 0, "{:?}", out[0]);
    ensure!(pacote_verify(unsigned.url(), &["or-plain"], &keys).is_err());
    Ok(())
}

#[tokio::test]
async fn packuments_carry_etags_and_requests_are_counted() -> Result<()> {
    let up = signed()?;
    let published = publish_set(&up)?;
    let c = client()?;
    let url = format!("{}/@or-test%2fscoped", up.url());

    let first = c.get(&url).send().await?;
    ensure!(first.status() == 200);
    let etag = first.headers()["etag"].to_str()?.to_owned();
    let doc: Value = first.json().await?;
    ensure!(doc["dist-tags"]["latest"] == "1.2.0", "{doc}");
    let dist = &doc["versions"]["1.2.0"]["dist"];
    ensure!(dist["tarball"] == published[1].tarball_url, "{dist}");
    ensure!(dist["signatures"][0]["keyid"] == up.key().map(|k| k.keyid()).unwrap_or_default());
    ensure!(doc["time"]["1.2.0"].is_string() && doc["time"]["modified"].is_string());

    let again = c.get(&url).header("if-none-match", &etag).send().await?;
    ensure!(again.status() == 304, "{}", again.status());
    ensure!(again.bytes().await?.is_empty());
    ensure!(
        up.hits("/@or-test/scoped") == 2,
        "{}",
        up.hits("/@or-test/scoped")
    );
    ensure!(up.hits("/@or-test%2Fscoped") == 2);
    let inm: Vec<_> = up
        .requests()
        .iter()
        .map(|r| r.if_none_match.clone())
        .collect();
    ensure!(inm == vec![None, Some(etag.clone())], "{inm:?}");

    // The tarball is served whole and matches the published integrity.
    let tgz = c
        .get(&published[1].tarball_url)
        .send()
        .await?
        .bytes()
        .await?;
    Integrity::parse(&published[1].integrity)?.check(&tgz)?;
    ensure!(up.hits(&published[1].tarball_path) == 1);

    // Versions and dist-tags by name.
    let v: Value = c
        .get(format!("{}/or-pre/next", up.url()))
        .send()
        .await?
        .json()
        .await?;
    ensure!(v["version"] == "2.0.0-beta.1", "{v}");
    let v = c.get(format!("{}/or-pre/9.9.9", up.url())).send().await?;
    ensure!(v.status() == 404);

    // A runtime publish changes the document, its ETag and the latest tag.
    up.publish(&PackageSpec::new("@or-test/scoped", "1.3.0"))?;
    let after = c.get(&url).header("if-none-match", &etag).send().await?;
    ensure!(after.status() == 200, "{}", after.status());
    ensure!(after.headers()["etag"].to_str()? != etag);
    let doc: Value = after.json().await?;
    ensure!(doc["dist-tags"]["latest"] == "1.3.0", "{doc}");

    // Full document whatever the Accept header says, by default…
    let abbrev = "application/vnd.npm.install-v1+json";
    let r = c.get(&url).header("accept", abbrev).send().await?;
    ensure!(r.headers()["content-type"] == "application/json");
    // …and the abbreviated one when asked to serve it.
    let honest = FakeUpstream::start_with(UpstreamOptions {
        abbreviated: true,
        ..UpstreamOptions::default()
    })?;
    honest.publish(&PackageSpec::new("or-plain", "1.0.0"))?;
    let r = c
        .get(format!("{}/or-plain", honest.url()))
        .header("accept", abbrev)
        .send()
        .await?;
    ensure!(r.headers()["content-type"] == abbrev);
    let doc: Value = r.json().await?;
    ensure!(
        doc["versions"]["1.0.0"]["dist"]["integrity"].is_string(),
        "{doc}"
    );

    ensure!(
        c.get(format!("{}/no-such-pkg", up.url()))
            .send()
            .await?
            .status()
            == 404
    );
    Ok(())
}

#[tokio::test]
async fn faults_break_responses_as_specified() -> Result<()> {
    let up = FakeUpstream::start()?;
    let p = up.publish(&PackageSpec::new("or-big", "1.0.0").big_file(256 * 1024))?;
    let c = client()?;
    let get = |path: &str| c.get(format!("{}{path}", up.url())).send();
    let integrity = Integrity::parse(&p.integrity)?;

    up.set_fault(p.tarball_path.as_str(), Fault::Status(500));
    ensure!(get(&p.tarball_path).await?.status() == 500);

    up.set_fault(p.tarball_path.as_str(), Fault::EmptyBody);
    let r = get(&p.tarball_path).await?;
    ensure!(r.status() == 200);
    ensure!(r.bytes().await?.is_empty());

    up.set_fault(p.tarball_path.as_str(), Fault::FlipByte);
    let body = get(&p.tarball_path).await?.bytes().await?;
    let good = up
        .tarball("or-big", "or-big-1.0.0.tgz")
        .context("tarball")?;
    ensure!(body.len() == good.len());
    ensure!(body.iter().zip(good.iter()).filter(|(a, b)| a != b).count() == 1);
    ensure!(integrity.check(&body).is_err());

    up.set_fault(p.tarball_path.as_str(), Fault::Truncate);
    let r = get(&p.tarball_path).await?;
    ensure!(
        r.content_length() == Some(p.size as u64),
        "{:?}",
        r.content_length()
    );
    ensure!(r.bytes().await.is_err(), "a truncated body read completely");

    up.set_fault(
        p.tarball_path.as_str(),
        Fault::Delay(Duration::from_millis(300)),
    );
    let start = Instant::now();
    let body = get(&p.tarball_path).await?.bytes().await?;
    ensure!(start.elapsed() >= Duration::from_millis(300));
    integrity.check(&body)?;

    up.set_fault(p.tarball_path.as_str(), Fault::Hang);
    let r = c
        .get(format!("{}{}", up.url(), p.tarball_path))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    ensure!(r.as_ref().is_err_and(|e| e.is_timeout()), "{r:?}");

    // Counted faults expire; the request after them is answered normally.
    up.set_fault_times(p.tarball_path.as_str(), Fault::Status(503), 2);
    ensure!(get(&p.tarball_path).await?.status() == 503);
    ensure!(get(&p.tarball_path).await?.status() == 503);
    integrity.check(&get(&p.tarball_path).await?.bytes().await?)?;

    // A global fault hits every path, a path's own fault wins over it, clearing ends both.
    up.set_fault(Target::All, Fault::Status(502));
    up.set_fault("/or-big", Fault::EmptyBody);
    ensure!(get("/-/ping").await?.status() == 502);
    ensure!(get(&p.tarball_path).await?.status() == 502);
    let r = get("/or-big").await?;
    ensure!(r.status() == 200 && r.bytes().await?.is_empty());
    up.clear_fault("/or-big");
    ensure!(get("/or-big").await?.status() == 502);
    up.clear_faults();
    ensure!(get("/or-big").await?.status() == 200);
    ensure!(get("/-/ping").await?.status() == 200);
    Ok(())
}

#[tokio::test]
async fn down_refuses_and_cuts_connections_and_up_restores() -> Result<()> {
    let up = FakeUpstream::start()?;
    up.publish(&PackageSpec::new("or-plain", "1.0.0"))?;
    let c = client()?;
    up.set_fault("/or-plain", Fault::Hang);
    let hanging = tokio::spawn(c.get(format!("{}/or-plain", up.url())).send());
    // Wait until the hanging request has arrived.
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.hits("/or-plain") == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ensure!(up.hits("/or-plain") == 1);

    let start = Instant::now();
    up.down();
    ensure!(!up.is_up());
    let cut = tokio::time::timeout(Duration::from_secs(5), hanging).await??;
    ensure!(cut.is_err(), "a hanging request survived down(): {cut:?}");
    ensure!(start.elapsed() < Duration::from_secs(5));

    let refused = c.get(format!("{}/-/ping", up.url())).send().await;
    ensure!(
        refused.as_ref().is_err_and(|e| e.is_connect()),
        "{refused:?}"
    );
    up.down(); // idempotent

    up.up()?;
    up.up()?; // idempotent
    up.clear_faults();
    let r = c.get(format!("{}/or-plain", up.url())).send().await?;
    ensure!(r.status() == 200, "{}", r.status());
    ensure!(up.hits("/or-plain") == 2, "counts survive down/up");
    Ok(())
}

#[tokio::test]
async fn keys_search_audit_and_changes_endpoints() -> Result<()> {
    let up = FakeUpstream::start()?;
    let c = client()?;
    ensure!(
        c.get(format!("{}/-/npm/v1/keys", up.url()))
            .send()
            .await?
            .status()
            == 404
    );
    publish_set(&up)?;

    let signed = signed()?;
    let keys: Value = c
        .get(format!("{}/-/npm/v1/keys", signed.url()))
        .send()
        .await?
        .json()
        .await?;
    ensure!(keys == signed.keys_document(), "{keys}");

    let found: Value = c
        .get(format!("{}/-/v1/search?text=%40or-test&size=5", up.url()))
        .send()
        .await?
        .json()
        .await?;
    ensure!(found["total"] == 1, "{found}");
    ensure!(
        found["objects"][0]["package"]["name"] == "@or-test/scoped",
        "{found}"
    );

    let bulk = format!("{}/-/npm/v1/security/advisories/bulk", up.url());
    let r: Value = c.post(&bulk).body("{}").send().await?.json().await?;
    ensure!(r == json!({}), "{r}");
    let advisory =
        json!({ "or-plain": [{ "id": 1, "severity": "high", "vulnerable_versions": "<2" }] });
    up.set_advisories(advisory.clone());
    let r: Value = c.post(&bulk).body("{}").send().await?.json().await?;
    ensure!(r == advisory, "{r}");
    let quick = format!("{}/-/npm/v1/security/audits/quick", up.url());
    let r: Value = c.post(&quick).body("{}").send().await?.json().await?;
    ensure!(r["metadata"]["vulnerabilities"]["critical"] == 0, "{r}");

    let feed: Value = c
        .get(format!("{}/_changes?since=0", up.url()))
        .send()
        .await?
        .json()
        .await?;
    let ids: Vec<&str> = feed["results"]
        .as_array()
        .context("results")?
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    ensure!(
        ids == ["or-plain", "@or-test/scoped", "or-app", "or-pre", "or-pre"],
        "{feed}"
    );
    let last = feed["last_seq"].as_u64().context("last_seq")?;
    ensure!(last == 5, "{feed}");
    let none: Value = c
        .get(format!("{}/_changes?since={last}", up.url()))
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        none["results"] == json!([]) && none["last_seq"] == last,
        "{none}"
    );
    up.publish(&PackageSpec::new("or-late", "0.1.0"))?;
    let more: Value = c
        .get(format!("{}/_changes?since={last}", up.url()))
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        more["results"][0]["id"] == "or-late" && more["last_seq"] == 6,
        "{more}"
    );

    let put = c
        .put(format!("{}/or-plain", up.url()))
        .body("{}")
        .send()
        .await?;
    ensure!(put.status() == 405);
    Ok(())
}

#[tokio::test]
async fn given_packuments_are_served_byte_for_byte_and_without_validators() -> Result<()> {
    let up = FakeUpstream::start_with(UpstreamOptions {
        no_validators: true,
        ..UpstreamOptions::default()
    })?;
    let t = PackageSpec::new("or-given", "2.0.0").tarball()?;
    let body = format!(
        r#"{{"_id":"or-given","name":"or-given","dist-tags":{{"latest":"2.0.0"}},"versions":{{"2.0.0":{{"name":"or-given","version":"2.0.0","dist":{{"integrity":"{}","shasum":"{}","tarball":"{}/or-given/-/or-given-2.0.0.tgz"}}}}}}}}"#,
        t.integrity,
        t.shasum,
        up.url()
    );
    up.put_packument(
        "or-given",
        body.clone().into(),
        vec![("or-given-2.0.0.tgz".into(), t.bytes.clone().into())],
    );
    let c = client()?;
    let r = c
        .get(format!("{}/or-given", up.url()))
        .header("accept", "application/vnd.npm.install-v1+json")
        .header("if-none-match", "*")
        .send()
        .await?;
    ensure!(r.status() == 200, "{}", r.status());
    ensure!(r.headers().get("etag").is_none());
    ensure!(r.headers().get("last-modified").is_none());
    ensure!(r.headers()["content-type"] == "application/json");
    ensure!(r.bytes().await? == body.as_bytes());
    let v: Value = c
        .get(format!("{}/or-given/latest", up.url()))
        .send()
        .await?
        .json()
        .await?;
    ensure!(v["version"] == "2.0.0", "{v}");
    let tgz = c
        .get(format!("{}/or-given/-/or-given-2.0.0.tgz", up.url()))
        .send()
        .await?
        .bytes()
        .await?;
    ensure!(tgz == t.bytes);
    ensure!(up.packument("or-given").context("packument")?["dist-tags"]["latest"] == "2.0.0");
    Ok(())
}
