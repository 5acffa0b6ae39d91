//! Withheld versions: gone from both forms with their dist-tags moved, and answered 451 with
//! the registry's message when asked for by name, as a document or as a tarball.

use open_registry_protocol::PackageName;

use super::*;
use crate::Withheld;

const MESSAGE: &str = "@s/p@1.0.1 is in its release cooldown until 2026-12-03T10:00:00Z \
                       (min_release_age 2d on this registry)";

/// `@s/p` with 1.0.0, 1.0.1 (`latest`) and 2.0.0-beta.1 (`next`), 1.0.1 withheld.
fn withheld() -> (Arc<MemoryRegistry>, Router) {
    let (reg, app) = gateway();
    reg.publish("@s/p", "1.0.1", vec![3u8; 100])
        .expect("publish");
    let name = PackageName::parse("@s/p").expect("name");
    reg.set_withheld(
        &name,
        vec![Withheld {
            version: "1.0.1".into(),
            message: MESSAGE.into(),
        }],
    );
    (reg, app)
}

#[tokio::test]
async fn withheld_versions_are_absent_and_their_tags_moved() {
    let (_, app) = withheld();
    for accept in ["application/json", NPM_ACCEPT] {
        let doc = get(&app, "/@s%2fp", &[("accept", accept)]).await;
        assert_eq!(doc.status, 200);
        let doc = doc.json();
        assert!(doc["versions"].get("1.0.1").is_none(), "{accept}");
        assert!(doc["versions"].get("1.0.0").is_some(), "{accept}");
        assert_eq!(doc["dist-tags"]["latest"], "1.0.0", "{accept}");
        assert_eq!(doc["dist-tags"]["next"], "2.0.0-beta.1", "{accept}");
        // npm reads why from both forms.
        assert_eq!(doc["policyRestrictions"]["message"], MESSAGE, "{accept}");
        assert!(doc["policyRestrictions"]["versions"]["1.0.1"].is_object());
        if accept == "application/json" {
            assert!(doc["time"].get("1.0.1").is_none());
        }
    }
    let tags = get(&app, "/-/package/@s%2fp/dist-tags", &[]).await.json();
    assert_eq!(tags["latest"], "1.0.0");
    // The moved tag resolves to the allowed version.
    let latest = get(&app, "/@s%2fp/latest", &[]).await;
    assert_eq!(latest.status, 200);
    assert_eq!(latest.json()["version"], "1.0.0");
}

#[tokio::test]
async fn a_withheld_version_and_its_tarball_answer_451_with_the_message() {
    let (reg, app) = withheld();
    let refreshes = reg.refresh_calls();
    let doc = get(&app, "/@s%2fp/1.0.1", &[]).await;
    assert_eq!(doc.assert_error(451), MESSAGE);
    // Known withheld: no refresh is spent looking for it.
    assert_eq!(reg.refresh_calls(), refreshes);
    let tgz = get(&app, "/@s%2fp/-/p-1.0.1.tgz", &[]).await;
    assert_eq!(tgz.assert_error(451), MESSAGE);
    // The others are served as before; a version that does not exist is still a 404.
    assert_eq!(get(&app, "/@s%2fp/1.0.0", &[]).await.status, 200);
    assert_eq!(get(&app, "/@s%2fp/-/p-1.0.0.tgz", &[]).await.status, 200);
    get(&app, "/@s%2fp/9.9.9", &[]).await.assert_error(404);
    // Released again: everything is back.
    reg.set_withheld(&PackageName::parse("@s/p").expect("name"), Vec::new());
    assert_eq!(get(&app, "/@s%2fp/1.0.1", &[]).await.status, 200);
    assert_eq!(get(&app, "/@s%2fp/-/p-1.0.1.tgz", &[]).await.status, 200);
    let doc = get(&app, "/@s%2fp", &[]).await.json();
    assert_eq!(doc["dist-tags"]["latest"], "1.0.1");
}

#[tokio::test]
async fn withheld_only_after_a_refresh_still_answers_451() {
    let (reg, app) = gateway();
    let name = PackageName::parse("left-pad").expect("name");
    reg.publish_on_refresh("left-pad", "1.3.1", &b"new"[..])
        .expect("stage");
    reg.set_withheld(
        &name,
        vec![Withheld {
            version: "1.3.1".into(),
            message: "held".into(),
        }],
    );
    // Not in the cached revision, so the gateway refreshes, and the refreshed one withholds it.
    assert_eq!(
        get(&app, "/left-pad/1.3.1", &[]).await.assert_error(451),
        "held"
    );
    assert_eq!(reg.refresh_calls(), 1);
    let doc = get(&app, "/left-pad", &[]).await.json();
    assert_eq!(doc["dist-tags"]["latest"], "1.3.0");
}
