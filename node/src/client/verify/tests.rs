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
    // A plain registry lists no advisories: not checked, not a failure.
    for r in [plain, signed] {
        assert!(
            matches!(&r.advisory, Check::Skipped(w) if w.starts_with(NO_ADVISORIES)),
            "{r:?}"
        );
    }
    assert_eq!(plain.signature, Check::Skipped(UNSIGNED.into()));

    // A version the metadata lacks still fails, keys or not.
    let bad = v.run(&[target("signed", "9.9.9")], |_| {}).await;
    assert!(!bad[0].ok, "{:?}", bad[0]);
    stop.cancel();
}

#[tokio::test]
async fn a_withheld_version_is_reported_with_the_registry_message() {
    let reg = Arc::new(MemoryRegistry::new());
    reg.publish("held", "1.0.0", &b"old"[..]).unwrap();
    reg.publish("held", "1.0.1", &b"new"[..]).unwrap();
    let name = PackageName::parse("held").unwrap();
    let message = "held@1.0.1 is in its release cooldown until 2026-12-03T00:00:00Z";
    reg.set_withheld(
        &name,
        vec![gateway::Withheld {
            version: "1.0.1".into(),
            message: message.into(),
        }],
    );
    let (registry, stop) = serve(reg).await;
    let v = Verify::new(Options {
        registry,
        keys: None,
        policy: None,
        state_dir: None,
    })
    .unwrap();
    let r = v
        .run(&[target("held", "1.0.0"), target("held", "1.0.1")], |_| {})
        .await;
    assert!(r[0].ok, "{:?}", r[0]);
    assert!(!r[1].ok, "{:?}", r[1]);
    assert_eq!(
        r[1].advisory,
        Check::Failed(format!("withheld by the registry (451): {message}"))
    );
    assert!(!r[1].integrity.failed(), "{:?}", r[1]);
    let t = render_table(&r);
    assert!(
        t.contains(&format!(
            "held@1.0.1: advisory: withheld by the registry (451): {message}"
        )),
        "{t}"
    );
    stop.cancel();
}

#[test]
fn an_advisory_in_force_names_its_signers() {
    use base64::Engine as _;
    use open_registry_protocol::advisory::{
        Advisory, AdvisoryGroup, AdvisoryView, DEFAULT_LIFETIME_MS, Kind, short_id,
    };
    use open_registry_protocol::record::Signable as _;

    let now = now_ms();
    let id = crate::records::identity::Identity::from_seed([7; 32]);
    let a = Advisory {
        name: PackageName::parse("left-pad").unwrap(),
        range: "1.0.1 || 2.0.3".into(),
        kind: Kind::Compromised,
        reason: "stolen token publish".into(),
        url: Some("https://example.org/incident".into()),
        seq: 1,
        at_ms: now,
        expires_at_ms: now + DEFAULT_LIFETIME_MS,
        withdrawn: false,
    };
    let wire = a.sign(id.signing_key()).to_bytes();
    let view = |operator: String, signed: String| AdvisoryView {
        id: short_id(&wire),
        operator,
        trusted: true,
        this_node: false,
        name: a.name.to_string(),
        range: a.range.clone(),
        kind: a.kind,
        reason: a.reason.clone(),
        url: a.url.clone(),
        seq: 1,
        at_ms: a.at_ms,
        expires_at_ms: a.expires_at_ms,
        withdrawn: false,
        signed,
    };
    let other = crate::records::identity::Identity::from_seed([8; 32]).peer_id();
    let genuine = view(
        id.peer_id().to_string(),
        base64::engine::general_purpose::STANDARD.encode(&wire),
    );
    // The same bytes claimed by another operator do not verify.
    let claimed = view(other.to_string(), genuine.signed.clone());
    let mut group = AdvisoryGroup {
        name: "left-pad".into(),
        range: a.range.clone(),
        in_force: true,
        signers: vec![genuine, claimed],
    };
    let line = in_force_for(
        std::slice::from_ref(&group),
        &target("left-pad", "2.0.3"),
        now,
    )
    .expect("covered");
    assert!(
        line.starts_with("taken down by advisory left-pad@1.0.1 || 2.0.3 in force, signed by "),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "{} (compromised: stolen token publish, https://example.org/incident)",
            id.peer_id()
        )),
        "{line}"
    );
    assert!(
        line.contains(&format!("{other} (compromised: stolen token publish, https://example.org/incident; its signature does not verify)")),
        "{line}"
    );
    let groups = std::slice::from_ref(&group);
    assert!(in_force_for(groups, &target("left-pad", "1.0.0"), now).is_none());
    assert!(in_force_for(groups, &target("right-pad", "1.0.1"), now).is_none());
    group.in_force = false;
    assert!(in_force_for(&[group], &target("left-pad", "1.0.1"), now).is_none());
}
