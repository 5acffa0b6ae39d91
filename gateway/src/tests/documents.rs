//! Packuments, versions and dist-tags through the router.

use std::time::Duration;

use axum::http::Method;
use bytes::Bytes;
use open_registry_protocol::PackageName;
use open_registry_protocol::packument::ABBREVIATED_MEDIA_TYPE;
use serde_json::Value;

use super::*;

#[tokio::test]
async fn scope_encodings_all_serve_the_same_document() {
    let (_, app) = gateway();
    let plain = get(&app, "/@s%2fp", &[]).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.json()["name"], "@s/p");
    for path in ["/@s%2Fp", "/@s/p"] {
        let other = get(&app, path, &[]).await;
        assert_eq!(other.status, 200, "{path}");
        assert_eq!(other.body, plain.body, "{path}");
        assert_eq!(other.header("etag"), plain.header("etag"), "{path}");
    }
}

#[tokio::test]
async fn full_by_default_abbreviated_by_accept() {
    let (_, app) = gateway();
    let full = get(&app, "/left-pad", &[]).await;
    assert_eq!(full.status, 200);
    assert_eq!(full.header("content-type"), Some("application/json"));
    let full_json = full.json();
    assert!(full_json["readme"].is_string());
    assert!(full_json["versions"]["1.3.0"]["scripts"].is_object());

    let abbr = get(&app, "/left-pad", &[("accept", NPM_ACCEPT)]).await;
    assert_eq!(abbr.status, 200);
    assert_eq!(abbr.header("content-type"), Some(ABBREVIATED_MEDIA_TYPE));
    let abbr_json = abbr.json();
    assert!(abbr_json.get("readme").is_none());
    assert!(abbr_json["versions"]["1.3.0"].get("scripts").is_none());
    assert_eq!(abbr_json["dist-tags"]["latest"], "1.3.0");
    assert_ne!(abbr.header("etag"), full.header("etag"));
    assert!(abbr.body.len() < full.body.len());

    let json_only = get(&app, "/left-pad", &[("accept", "application/json")]).await;
    assert_eq!(json_only.body, full.body);
}

/// `dist.tarball` points at this gateway in both forms; every other dist field is as sent.
#[tokio::test]
async fn tarball_urls_rewritten_and_dist_otherwise_untouched() {
    let (reg, app) = gateway();
    let name = PackageName::parse("@s/p").expect("name");
    let original: Value =
        serde_json::from_slice(&reg.packument_of(&name).expect("packument").bytes).expect("json");
    for accept in ["application/json", NPM_ACCEPT] {
        let doc = get(&app, "/@s%2fp", &[("accept", accept)]).await.json();
        for (version, v) in doc["versions"].as_object().expect("versions") {
            let mut dist = v["dist"].clone();
            let mut want = original["versions"][version]["dist"].clone();
            assert_eq!(
                dist["tarball"],
                format!("http://{HOST}/@s/p/-/p-{version}.tgz"),
                "{accept}"
            );
            for field in ["integrity", "shasum", "signatures", "attestations"] {
                assert!(!want[field].is_null(), "{field} missing from the fixture");
            }
            dist["tarball"] = Value::Null;
            want["tarball"] = Value::Null;
            assert_eq!(dist, want, "{accept} {version}");
        }
    }
}

#[tokio::test]
async fn public_url_wins_over_host() {
    let (_, app) = gateway_with(Config {
        public_url: Some("https://npm.example.net/mirror/".into()),
        ..Config::default()
    });
    let doc = get(&app, "/left-pad", &[("host", "ignored:1")])
        .await
        .json();
    assert_eq!(
        doc["versions"]["1.3.0"]["dist"]["tarball"],
        "https://npm.example.net/mirror/left-pad/-/left-pad-1.3.0.tgz"
    );
    // Without public_url, each Host gets its own rewrite, and a hostile one is refused.
    let (_, app) = gateway();
    let doc = get(&app, "/left-pad", &[("host", "127.0.0.1:9")])
        .await
        .json();
    assert_eq!(
        doc["versions"]["1.3.0"]["dist"]["tarball"],
        "http://127.0.0.1:9/left-pad/-/left-pad-1.3.0.tgz"
    );
    get(&app, "/left-pad", &[("host", "evil.example/x?")])
        .await
        .assert_error(400);
}

#[tokio::test]
async fn etag_and_if_none_match() {
    let (_, app) = gateway();
    let first = get(&app, "/left-pad", &[("accept", NPM_ACCEPT)]).await;
    let etag = first.header("etag").expect("etag").to_owned();
    assert!(etag.starts_with("W/\""), "{etag}");
    assert_eq!(first.header("cache-control"), Some("public, max-age=300"));
    assert_eq!(first.header("vary"), Some("Accept, Accept-Encoding"));
    for inm in [etag.clone(), format!("\"nope\", {etag}"), "*".to_owned()] {
        let again = get(
            &app,
            "/left-pad",
            &[("accept", NPM_ACCEPT), ("if-none-match", &inm)],
        )
        .await;
        assert_eq!(again.status, 304, "{inm}");
        assert!(again.body.is_empty());
        assert_eq!(again.header("etag"), Some(etag.as_str()));
    }
    // The other form has another tag, so the abbreviated one does not match it.
    let full = get(&app, "/left-pad", &[("if-none-match", &etag)]).await;
    assert_eq!(full.status, 200);
    assert_eq!(
        metric(&app, "open_registry_gateway_not_modified_total").await,
        3
    );
}

#[tokio::test]
async fn gzip_when_accepted_and_it_decodes_to_the_identity_body() {
    let (_, app) = gateway();
    let plain = get(&app, "/@s/p", &[("accept", NPM_ACCEPT)]).await;
    assert!(plain.header("content-encoding").is_none());
    assert_eq!(
        plain.header("content-length"),
        Some(plain.body.len().to_string().as_str())
    );
    let gz = get(
        &app,
        "/@s/p",
        &[
            ("accept", NPM_ACCEPT),
            ("accept-encoding", "gzip, deflate, br"),
        ],
    )
    .await;
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(
        gz.header("content-length"),
        Some(gz.body.len().to_string().as_str())
    );
    assert_eq!(gz.decoded(), plain.body);
    assert_eq!(gz.header("etag"), plain.header("etag"));
    let refused = get(
        &app,
        "/@s/p",
        &[("accept", NPM_ACCEPT), ("accept-encoding", "gzip;q=0, *")],
    )
    .await;
    assert!(refused.header("content-encoding").is_none());
    assert_eq!(refused.body, plain.body);
}

#[tokio::test]
async fn head_has_headers_and_content_length_but_no_body() {
    let (_, app) = gateway();
    let got = get(&app, "/left-pad", &[("accept-encoding", "gzip")]).await;
    let head = send(
        &app,
        Method::HEAD,
        "/left-pad",
        &[("accept-encoding", "gzip")],
        Bytes::new(),
    )
    .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), got.header("content-length"));
    assert_eq!(head.header("etag"), got.header("etag"));
}

#[tokio::test]
async fn versions_and_dist_tags() {
    let (_, app) = gateway();
    let v = get(&app, "/@s%2fp/1.0.0", &[]).await;
    assert_eq!(v.status, 200);
    let doc = v.json();
    assert_eq!(doc["version"], "1.0.0");
    assert_eq!(
        doc["dist"]["tarball"],
        format!("http://{HOST}/@s/p/-/p-1.0.0.tgz")
    );
    assert!(v.header("etag").is_some());
    let next = get(&app, "/@s/p/next", &[]).await;
    assert_eq!(next.json()["version"], "2.0.0-beta.1");
    let latest = get(&app, "/left-pad/latest", &[("accept-encoding", "gzip")]).await;
    assert_eq!(latest.header("content-encoding"), Some("gzip"));
    let tags = get(&app, "/-/package/@s%2fp/dist-tags", &[]).await;
    assert_eq!(
        tags.json(),
        serde_json::json!({"latest": "1.0.0", "next": "2.0.0-beta.1"})
    );
}

#[tokio::test]
async fn a_missing_version_refreshes_once_then_404s() {
    let (reg, app) = gateway();
    reg.publish_on_refresh("left-pad", "1.4.0", &b"new"[..])
        .expect("stage");
    let v = get(&app, "/left-pad/1.4.0", &[]).await;
    assert_eq!(v.status, 200, "{v:?}");
    assert_eq!(v.json()["version"], "1.4.0");
    assert_eq!(reg.refresh_calls(), 1);

    let before = reg.packument_calls();
    let missing = get(&app, "/left-pad/9.9.9", &[]).await;
    assert_eq!(missing.assert_error(404), "version not found: 9.9.9");
    assert_eq!(reg.refresh_calls(), 2, "exactly one refresh per miss");
    assert_eq!(reg.packument_calls() - before, 2);

    // Present versions never refresh.
    get(&app, "/left-pad/1.3.0", &[]).await;
    assert_eq!(reg.refresh_calls(), 2);
}

#[tokio::test]
async fn missing_packages_are_404_json() {
    let (_, app) = gateway();
    let msg = get(&app, "/no-such-package", &[]).await.assert_error(404);
    assert!(msg.contains("no-such-package"), "{msg}");
    get(&app, "/no-such-package/1.0.0", &[])
        .await
        .assert_error(404);
}

#[tokio::test]
async fn a_new_revision_is_rendered_anew() {
    let (reg, app) = gateway();
    let a = get(&app, "/left-pad", &[]).await;
    reg.publish("left-pad", "1.3.1", &b"patch"[..])
        .expect("publish");
    let b = get(&app, "/left-pad", &[]).await;
    assert_ne!(a.header("etag"), b.header("etag"));
    assert_eq!(b.json()["dist-tags"]["latest"], "1.3.1");
}

/// Many first requests for one document at once: one render, identical answers, and the
/// next request is a cache hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_render_once() {
    let (reg, app) = gateway();
    // The registry answers all of them at about the same moment.
    reg.set_delay(Duration::from_millis(50));
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            get(
                &app,
                "/@s/p",
                &[("accept", NPM_ACCEPT), ("accept-encoding", "gzip")],
            )
            .await
        }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        let a = t.await.expect("task");
        assert_eq!(a.status, 200);
        bodies.push(a.body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(
        metric(&app, "open_registry_gateway_render_cache_renders_total").await,
        1
    );
    get(&app, "/@s/p", &[("accept", NPM_ACCEPT)]).await;
    assert_eq!(
        metric(&app, "open_registry_gateway_render_cache_renders_total").await,
        1
    );
    assert!(metric(&app, "open_registry_gateway_render_cache_hits_total").await >= 1);
    assert!(metric(&app, "open_registry_gateway_render_cache_bytes").await > 0);
}

/// A packument of `versions` versions with a readme of `readme` bytes.
fn big_packument(name: &str, versions: usize, readme: usize) -> Vec<u8> {
    let mut vs = serde_json::Map::new();
    for i in 0..versions {
        let v = format!("1.0.{i}");
        vs.insert(
            v.clone(),
            serde_json::json!({
                "name": name, "version": v, "description": "d".repeat(40),
                "scripts": {"test": "node test.js"},
                "dist": {"tarball": format!("https://up.example/{name}/-/{name}-{v}.tgz"),
                         "integrity": "sha512-AA==", "shasum": "ab"}
            }),
        );
    }
    serde_json::to_vec(&serde_json::json!({
        "name": name, "readme": "r".repeat(readme),
        "dist-tags": {"latest": format!("1.0.{}", versions - 1)},
        "versions": vs,
    }))
    .unwrap()
}

#[tokio::test]
async fn large_documents_are_kept_compressed_and_decompressed_for_clients_without_gzip() {
    let (reg, app) = gateway();
    let name = PackageName::parse("big").unwrap();
    reg.set_packument(&name, big_packument("big", 3000, 1 << 20));
    for accept in ["application/json", ABBREVIATED_MEDIA_TYPE] {
        let gz = get(
            &app,
            "/big",
            &[("accept", accept), ("accept-encoding", "gzip")],
        )
        .await;
        assert_eq!(gz.status, 200);
        assert_eq!(gz.header("content-encoding"), Some("gzip"));
        let plain = get(&app, "/big", &[("accept", accept)]).await;
        assert_eq!(plain.status, 200);
        assert_eq!(plain.header("content-encoding"), None);
        assert_eq!(
            plain.header("content-length"),
            Some(plain.body.len().to_string().as_str())
        );
        assert!(
            plain.body.len() > 256 << 10,
            "{accept}: {}",
            plain.body.len()
        );
        assert_eq!(gz.decoded(), plain.body.to_vec(), "{accept}");
        assert_eq!(gz.header("etag"), plain.header("etag"));
        let doc = plain.json();
        assert_eq!(doc["versions"].as_object().unwrap().len(), 3000);
        assert_eq!(
            doc["versions"]["1.0.7"]["dist"]["tarball"],
            format!("http://{HOST}/big/-/big-1.0.7.tgz")
        );
    }
    // The render cache weighs the big forms by their gzip, not their JSON.
    let held = metric(&app, "open_registry_gateway_render_cache_bytes").await;
    assert!(
        held < 1 << 20,
        "the cache holds {held} bytes for two big forms"
    );
}

/// `{"a":` nested `depth` times around `1`.
fn nested(depth: usize) -> String {
    format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
}

#[tokio::test]
async fn every_route_reads_a_deeply_nested_document_the_same_way() {
    // Every form is derived from raw slices of the document, which any depth passes (no
    // recursion): no route refuses what another serves, and the value comes back as sent.
    let (reg, app) = gateway();
    for depth in [100, 200, 5000, 100_000] {
        let name = PackageName::parse("deep").unwrap();
        let doc = format!(
            r#"{{"name":"deep","dist-tags":{{"latest":"1.0.0"}},"versions":{{"1.0.0":{{"name":"deep","version":"1.0.0","deep":{},"dist":{{"tarball":"https://up.example/deep/-/deep-1.0.0.tgz","integrity":"sha512-AA=="}}}}}}}}"#,
            nested(depth)
        );
        reg.set_packument(&name, doc);
        let routes: [(&str, &[(&str, &str)]); 5] = [
            ("/deep", &[]),
            ("/deep", &[("accept", ABBREVIATED_MEDIA_TYPE)]),
            ("/deep/1.0.0", &[]),
            ("/deep/latest", &[]),
            ("/-/package/deep/dist-tags", &[]),
        ];
        for (path, headers) in routes {
            let a = get(&app, path, headers).await;
            assert_eq!(a.status, 200, "depth {depth}: {path} {headers:?}");
            let text = String::from_utf8_lossy(&a.body);
            if path.starts_with("/deep/") || headers.is_empty() && path == "/deep" {
                assert!(text.contains(&nested(depth)), "depth {depth}: {path}");
            }
        }
    }
}

#[tokio::test]
async fn large_forms_are_kept_on_disk_and_served_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let spill = dir.path().join("rendered");
    let (reg, app) = gateway_with(Config {
        render_spill_dir: Some(spill.clone()),
        render_cache_bytes: 1 << 20,
        ..Config::default()
    });
    // Forms whose gzip is far over 256 KiB: incompressible descriptions.
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = || {
        (0..60)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect::<String>()
    };
    for pkg in ["disk-a", "disk-b", "disk-c"] {
        let mut vs = serde_json::Map::new();
        for i in 0..12_000 {
            let v = format!("1.0.{i}");
            vs.insert(
                v.clone(),
                serde_json::json!({"name": pkg, "version": v, "description": noise(),
                    "dist": {"tarball": format!("https://up.example/{pkg}/-/{pkg}-{v}.tgz"),
                             "integrity": "sha512-AA=="}}),
            );
        }
        let doc =
            serde_json::json!({"name": pkg, "dist-tags": {"latest": "1.0.0"}, "versions": vs});
        reg.set_packument(
            &PackageName::parse(pkg).unwrap(),
            serde_json::to_vec(&doc).unwrap(),
        );
    }
    // The full forms (the abbreviated ones leave descriptions out).
    let gz = [("accept-encoding", "gzip")];
    let mut first = Vec::new();
    for pkg in ["disk-a", "disk-b", "disk-c"] {
        let a = get(&app, &format!("/{pkg}"), &gz).await;
        assert_eq!(a.status, 200);
        assert!(
            a.body.len() > 256 << 10,
            "{pkg}: {} bytes of gzip",
            a.body.len()
        );
        first.push(a);
    }
    // Three forms of ~1 MB each on disk; together far over the 1 MiB cache, they are all kept.
    let files = std::fs::read_dir(&spill).unwrap().count();
    assert_eq!(files, 3);
    let hits = metric(&app, "open_registry_gateway_render_cache_hits_total").await;
    for (pkg, before) in ["disk-a", "disk-b", "disk-c"].iter().zip(&first) {
        let again = get(&app, &format!("/{pkg}"), &gz).await;
        assert_eq!(again.body, before.body, "{pkg}");
        assert_eq!(again.header("etag"), before.header("etag"));
        assert_eq!(
            again.header("content-length"),
            Some(before.body.len().to_string().as_str())
        );
        // A client without gzip gets it decompressed from the file.
        let plain = get(&app, &format!("/{pkg}"), &[]).await;
        assert_eq!(plain.body.to_vec(), before.decoded(), "{pkg}");
    }
    let after = metric(&app, "open_registry_gateway_render_cache_hits_total").await;
    assert_eq!(after - hits, 6, "every repeat was a hit");
    // The files go with the cache.
    drop(app);
    drop(reg);
    assert_eq!(std::fs::read_dir(&spill).unwrap().count(), 0);
}
