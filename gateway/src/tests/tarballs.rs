//! Tarballs through the router.

use axum::http::Method;
use bytes::Bytes;
use open_registry_protocol::{BlobId, Integrity};

use super::*;

#[tokio::test]
async fn tarball_headers_and_bytes() {
    let (_, app) = gateway();
    for path in [
        "/@s/p/-/p-1.0.0.tgz",
        "/@s%2fp/-/p-1.0.0.tgz",
        "/@s%2Fp/-/p-1.0.0.tgz",
    ] {
        let t = get(&app, path, &[("accept-encoding", "gzip, deflate")]).await;
        assert_eq!(t.status, 200, "{path}");
        assert_eq!(t.body, vec![1u8; 5000]);
        assert_eq!(t.header("content-type"), Some("application/octet-stream"));
        assert_eq!(t.header("content-length"), Some("5000"));
        assert!(
            t.header("content-encoding").is_none(),
            "tarballs are never re-compressed"
        );
        assert_eq!(
            t.header("cache-control"),
            Some("public, max-age=31536000, immutable")
        );
        assert_eq!(
            t.header("etag"),
            Some(format!("\"{}\"", BlobId::of(&t.body)).as_str())
        );
    }
}

/// What the rewritten document points at is what the gateway serves, and it verifies.
#[tokio::test]
async fn the_rewritten_url_serves_bytes_matching_integrity() {
    let (_, app) = gateway();
    let doc = get(&app, "/left-pad", &[("accept", NPM_ACCEPT)])
        .await
        .json();
    let dist = &doc["versions"]["1.3.0"]["dist"];
    let url = dist["tarball"].as_str().expect("tarball url");
    let path = url
        .strip_prefix(&format!("http://{HOST}"))
        .expect("our host");
    let t = get(&app, path, &[]).await;
    assert_eq!(t.status, 200);
    let integrity = Integrity::parse(dist["integrity"].as_str().expect("integrity")).expect("sri");
    integrity.check(&t.body).expect("integrity matches");
}

#[tokio::test]
async fn streamed_tarballs_keep_content_length() {
    let (reg, app) = gateway();
    reg.set_stream_chunks(Some(777));
    let t = get(&app, "/@s/p/-/p-1.0.0.tgz", &[("accept-encoding", "gzip")]).await;
    assert_eq!(t.status, 200);
    assert_eq!(t.header("content-length"), Some("5000"));
    assert!(t.header("content-encoding").is_none());
    assert_eq!(t.body, vec![1u8; 5000]);
}

#[tokio::test]
async fn tarball_304_and_head() {
    let (_, app) = gateway();
    let t = get(&app, "/left-pad/-/left-pad-1.3.0.tgz", &[]).await;
    let etag = t.header("etag").expect("etag").to_owned();
    let again = get(
        &app,
        "/left-pad/-/left-pad-1.3.0.tgz",
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    let weak = get(
        &app,
        "/left-pad/-/left-pad-1.3.0.tgz",
        &[("if-none-match", &format!("W/{etag}"))],
    )
    .await;
    assert_eq!(weak.status, 304);

    let head = send(
        &app,
        Method::HEAD,
        "/left-pad/-/left-pad-1.3.0.tgz",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(t.body.len().to_string().as_str())
    );
}

#[tokio::test]
async fn tarballs_of_other_packages_or_missing_ones_are_404() {
    let (reg, app) = gateway();
    // The file exists, but under left-pad: asking for it under @s/p must not serve it.
    let msg = get(&app, "/@s/p/-/left-pad-1.3.0.tgz", &[])
        .await
        .assert_error(404);
    assert!(msg.contains("left-pad-1.3.0.tgz"), "{msg}");
    get(&app, "/left-pad/-/left-pad-9.9.9.tgz", &[])
        .await
        .assert_error(404);
    assert_eq!(
        reg.tarball_calls(),
        1,
        "the foreign file never reached the registry"
    );
    get(&app, "/left-pad/-/left-pad-1.3.0.tar", &[])
        .await
        .assert_error(400);
}
