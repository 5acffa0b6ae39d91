//! The `/-/` routes, forwarding, writes, invalid paths and error mapping through the router.

use axum::http::Method;
use bytes::Bytes;
use open_registry_protocol::Status;

use super::*;
use crate::{Error, ForwardMethod, Forwarded, MAX_FORWARD_BODY};

#[tokio::test]
async fn ping_keys_status_metrics() {
    let (reg, app) = gateway();
    let ping = get(&app, "/-/ping?write=true", &[]).await;
    assert_eq!(
        (ping.status.as_u16(), ping.json()),
        (200, serde_json::json!({}))
    );

    reg.set_keys(&br#"{"keys":[{"keyid":"SHA256:k"}]}"#[..]);
    let keys = get(&app, "/-/npm/v1/keys", &[]).await;
    assert_eq!(keys.status, 200);
    assert_eq!(keys.header("content-type"), Some("application/json"));
    assert_eq!(keys.json()["keys"][0]["keyid"], "SHA256:k");

    reg.set_status(Status {
        version: "9.9.9".into(),
        ..Status::default()
    });
    let status = get(&app, "/-/open-registry/status", &[]).await;
    assert_eq!(status.json()["version"], "9.9.9");

    reg.set_metrics("node_things_total 5");
    let m = get(&app, "/-/metrics", &[]).await;
    assert_eq!(m.status, 200);
    assert_eq!(m.header("content-type"), Some("text/plain; version=0.0.4"));
    let text = String::from_utf8_lossy(&m.body).into_owned();
    assert!(text.starts_with("node_things_total 5\n"), "{text}");
    assert!(
        text.contains("open_registry_gateway_requests_total{route=\"meta\",status=\"2xx\"} 3\n"),
        "{text}"
    );
}

#[tokio::test]
async fn whoami_is_401_and_writes_are_405() {
    let (_, app) = gateway();
    let msg = get(&app, "/-/whoami", &[]).await.assert_error(401);
    assert!(msg.contains("read-only mirror"), "{msg}");
    for (method, path) in [
        (Method::PUT, "/left-pad"),
        (Method::PUT, "/@s%2fp"),
        (Method::PUT, "/-/user/org.couchdb.user:alice"),
        (Method::DELETE, "/left-pad/-rev/3-abc"),
        (Method::PUT, "/-/package/left-pad/dist-tags/beta"),
        (Method::DELETE, "/-/package/left-pad/dist-tags/beta"),
        (Method::PATCH, "/left-pad"),
        (Method::POST, "/-/v1/login"),
        (Method::PUT, "/UPPER%2e%2e"),
    ] {
        let a = send(
            &app,
            method.clone(),
            path,
            &[("content-type", "application/json")],
            Bytes::from_static(b"{}"),
        )
        .await;
        let msg = a.assert_error(405);
        assert!(
            msg.contains("publish to the upstream registry"),
            "{method} {path}: {msg}"
        );
        assert_eq!(a.header("allow"), Some("GET, HEAD"));
    }
    let a = send(&app, Method::OPTIONS, "/left-pad", &[], Bytes::new()).await;
    a.assert_error(405);
    get(&app, "/-/npm/v1/security/audits/quick", &[])
        .await
        .assert_error(405);
}

#[tokio::test]
async fn search_and_audits_are_forwarded() {
    let (reg, app) = gateway();
    reg.set_forward_answer(Forwarded {
        status: 200,
        content_type: Some("application/json; charset=utf-8".into()),
        body: Bytes::from_static(br#"{"objects":[],"total":0}"#),
    });
    let s = get(&app, "/-/v1/search?text=left&size=20", &[]).await;
    assert_eq!(s.status, 200);
    assert_eq!(
        s.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(s.json()["total"], 0);

    let body = Bytes::from_static(b"\x1f\x8bgzipped-audit");
    let a = send(
        &app,
        Method::POST,
        "/-/npm/v1/security/advisories/bulk",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(a.status, 200);
    send(
        &app,
        Method::POST,
        "/-/npm/v1/security/audits/quick",
        &[],
        Bytes::from_static(b"{}"),
    )
    .await;

    let fwd = reg.forwarded();
    assert_eq!(fwd.len(), 3);
    assert_eq!(fwd[0].method, ForwardMethod::Get);
    assert_eq!(fwd[0].path_and_query, "/-/v1/search?text=left&size=20");
    assert!(fwd[0].body.is_empty());
    assert_eq!(fwd[1].method, ForwardMethod::Post);
    assert_eq!(fwd[1].path_and_query, "/-/npm/v1/security/advisories/bulk");
    assert_eq!(fwd[1].content_type.as_deref(), Some("application/json"));
    assert_eq!(fwd[1].content_encoding.as_deref(), Some("gzip"));
    assert_eq!(fwd[1].body, body);
    assert_eq!(fwd[2].path_and_query, "/-/npm/v1/security/audits/quick");

    // The upstream's status comes back as is.
    reg.set_forward_answer(Forwarded {
        status: 429,
        content_type: None,
        body: Bytes::from_static(b"{\"error\":\"slow down\"}"),
    });
    let limited = get(&app, "/-/v1/search?text=x", &[]).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn missing_audit_and_search_endpoints_answer_json_errors() {
    let (reg, app) = gateway();
    let answer = |status, body: &'static [u8]| Forwarded {
        status,
        content_type: Some("text/html".into()),
        body: Bytes::from_static(body),
    };
    let audit = |path: &'static str| {
        let app = app.clone();
        async move { send(&app, Method::POST, path, &[], Bytes::from_static(b"{}")).await }
    };
    for status in [404, 405, 501] {
        reg.set_forward_answer(answer(status, b"<h1>Not Found</h1>"));
        for path in [
            "/-/npm/v1/security/audits/quick",
            "/-/npm/v1/security/advisories/bulk",
        ] {
            let msg = audit(path).await.assert_error(501);
            assert!(
                msg.contains("the upstream registry provides no audit endpoint")
                    && msg.contains(&status.to_string()),
                "{status} {path}: {msg}"
            );
        }
        // No search upstream, and the memory registry has none of its own.
        let msg = get(&app, "/-/v1/search?text=x", &[])
            .await
            .assert_error(501);
        assert!(
            msg.contains("the upstream registry provides no search endpoint")
                && msg.contains("no search index of its own"),
            "{status}: {msg}"
        );
    }
    // An empty body is never passed on: a 200 becomes a 502, an error keeps its status.
    reg.set_forward_answer(answer(200, b""));
    let msg = audit("/-/npm/v1/security/audits/quick")
        .await
        .assert_error(502);
    assert!(msg.contains("empty body"), "{msg}");
    get(&app, "/-/v1/search?text=x", &[])
        .await
        .assert_error(501);
    reg.set_forward_answer(answer(503, b"\n"));
    let msg = audit("/-/npm/v1/security/advisories/bulk")
        .await
        .assert_error(503);
    assert!(msg.contains("status 503 and an empty body"), "{msg}");
}

#[tokio::test]
async fn oversized_forward_bodies_are_413() {
    let (reg, app) = gateway();
    let big = Bytes::from(vec![b' '; MAX_FORWARD_BODY + 1]);
    let a = send(
        &app,
        Method::POST,
        "/-/npm/v1/security/audits/quick",
        &[],
        big,
    )
    .await;
    a.assert_error(413);
    assert!(reg.forwarded().is_empty());
}

#[tokio::test]
async fn invalid_paths_are_400_or_404_json() {
    let (reg, app) = gateway();
    let long = format!("/{}", "a".repeat(215));
    for (path, status) in [
        ("/%2e%2e/x", 400),
        ("/..%2f..%2fetc%2fpasswd", 400),
        ("/a%00b", 400),
        ("/UPPER", 400),
        (long.as_str(), 400),
        ("/%252e%252e/x", 400),
        ("/a%5c..%5cb", 400),
        ("//left-pad", 400),
        ("/left-pad/-/..%2f..%2fsecret.tgz", 400),
        ("/_private", 400),
        ("/@s/p/x/y", 404),
        ("/-/nothing/here", 404),
        ("/", 404),
    ] {
        let msg = get(&app, path, &[]).await.assert_error(status);
        assert!(!msg.is_empty(), "{path}");
    }
    let msg = get(&app, "/UPPER", &[]).await.assert_error(400);
    assert!(msg.contains("lowercase"), "{msg}");
    assert_eq!(
        reg.packument_calls(),
        0,
        "invalid paths never reach the registry"
    );
    assert!(
        metric(
            &app,
            "open_registry_gateway_requests_total{route=\"rejected\",status=\"4xx\"}"
        )
        .await
            >= 13
    );
}

#[tokio::test]
async fn registry_errors_become_statuses() {
    let (reg, app) = gateway();
    for (err, status) in [
        (Error::BadGateway("upstream sent garbage".into()), 502),
        (Error::Timeout("upstream too slow".into()), 504),
        (Error::Unavailable("no upstream configured".into()), 503),
        (Error::BadRequest("nope".into()), 400),
        (Error::Internal("disk on fire at /data".into()), 500),
    ] {
        reg.set_failure(Some(err.clone()));
        let msg = get(&app, "/left-pad", &[]).await.assert_error(status);
        if status == 500 {
            assert!(!msg.contains("/data"), "internal detail leaked: {msg}");
        } else {
            assert_eq!(msg, err.to_string());
        }
        get(&app, "/left-pad/-/left-pad-1.3.0.tgz", &[])
            .await
            .assert_error(status);
    }
}

#[tokio::test]
async fn an_unusable_packument_is_502_and_not_cached() {
    let (reg, app) = gateway();
    let name = open_registry_protocol::PackageName::parse("broken").expect("name");
    reg.set_packument(&name, &b"{not json"[..]);
    get(&app, "/broken", &[]).await.assert_error(502);
    get(&app, "/broken", &[]).await.assert_error(502);
    assert_eq!(
        metric(&app, "open_registry_gateway_render_cache_renders_total").await,
        2
    );
    assert_eq!(
        metric(&app, "open_registry_gateway_render_cache_entries").await,
        0
    );
}

#[tokio::test]
async fn records_and_blobs_by_id() {
    let (reg, app) = gateway();
    let name = open_registry_protocol::PackageName::parse("@s/p").unwrap();
    reg.set_records(&name, &br#"{"name":"@s/p","records":[]}"#[..]);
    for path in [
        "/-/open-registry/records/@s/p",
        "/-/open-registry/records/@s%2fp",
    ] {
        let r = get(&app, path, &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json()["name"], "@s/p");
    }
    let r = get(&app, "/-/open-registry/records/left-pad", &[]).await;
    assert_eq!(r.status, 404);
    let r = get(&app, "/-/open-registry/records/..%2f..", &[]).await;
    assert_eq!(r.status, 400);

    // The raw packument, by the id the registry reports: exact bytes, ETag = id.
    let p = reg.packument_of(&name).unwrap();
    let r = get(&app, &format!("/-/open-registry/blobs/{}", p.id), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, p.bytes);
    assert_eq!(r.header("etag"), Some(format!("\"{}\"", p.id).as_str()));
    let missing = open_registry_protocol::BlobId::of(b"nothing");
    let r = get(&app, &format!("/-/open-registry/blobs/{missing}"), &[]).await;
    assert_eq!(r.status, 404);
    let r = get(&app, "/-/open-registry/blobs/not-a-cid", &[]).await;
    assert_eq!(r.status, 400);
}
