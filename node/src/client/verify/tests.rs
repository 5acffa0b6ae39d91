//! `verify` against a plain registry URL (a gateway over an in-memory registry on 127.0.0.1):
//! with no keys pinned and no operator trusted, integrity is checked, a signed version is "not
//! checked: no pinned keys" (never "unsigned"), an unsigned one is "unsigned", operators are
//! "not checked", and none of that fails.

use std::sync::Arc;

use open_registry_gateway::{self as gateway, MemoryRegistry};
use open_registry_protocol::PackageName;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::*;

async fn serve(reg: Arc<MemoryRegistry>) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let app = gateway::router(reg, gateway::Config::default());
    tokio::spawn(gateway::serve(
        listener,
        app,
        gateway::Limits::default(),
        stop.clone(),
    ));
    (url, stop)
}

fn target(name: &str, version: &str) -> Target {
    Target {
        name: PackageName::parse(name).unwrap(),
        version: version.into(),
        locked: None,
    }
}

#[tokio::test]
async fn a_registry_url_is_enough() {
    let reg = Arc::new(MemoryRegistry::new());
    reg.publish("signed", "1.0.0", &b"signed tarball"[..])
        .unwrap();
    reg.publish("plain", "2.0.0", &b"plain tarball"[..])
        .unwrap();
    // The registry signed nothing for `plain`.
    let name = PackageName::parse("plain").unwrap();
    let mut doc: Value = serde_json::from_slice(&reg.packument_of(&name).unwrap().bytes).unwrap();
    doc["versions"]["2.0.0"]["dist"]
        .as_object_mut()
        .unwrap()
        .remove("signatures");
    reg.set_packument(&name, serde_json::to_vec(&doc).unwrap());
    let (registry, stop) = serve(reg).await;

    let v = Verify::new(Options {
        registry,
        keys: None,
        policy: None,
        state_dir: None,
    })
    .unwrap();
    assert!(!v.checks_operators());
    let reports = v
        .run(
            &[target("signed", "1.0.0"), target("plain", "2.0.0")],
            |_| {},
        )
        .await;
    let [plain, signed] = &reports[..] else {
        panic!("{reports:?}")
    };
    for r in [plain, signed] {
        assert!(r.ok, "{r:?}");
        assert!(matches!(r.integrity, Check::Ok(_)), "{r:?}");
        assert_eq!(r.operators, Check::Skipped(NO_OPERATORS.into()));
    }
    assert_eq!(signed.signature, Check::Skipped(NO_KEYS.into()));
    assert_eq!(plain.signature, Check::Skipped(UNSIGNED.into()));

    // A version the metadata lacks still fails, keys or not.
    let bad = v.run(&[target("signed", "9.9.9")], |_| {}).await;
    assert!(!bad[0].ok, "{:?}", bad[0]);
    stop.cancel();
}
