//! The book: the quorum, what is refused, what survives a restart.

use std::time::Duration;

use open_registry_protocol::advisory::{Advisory, DEFAULT_LIFETIME_MS, Kind};
use open_registry_protocol::record::Signable as _;
use open_registry_protocol::{PackageName, Policy};

use super::*;
use crate::records::Identity;
use crate::store::Index;
use crate::withhold::AdvisoryHolds;

struct World {
    _dir: tempfile::TempDir,
    index: Index,
    clock: Clock,
    /// This node's operator, and two more it trusts.
    me: Identity,
    b: Identity,
    c: Identity,
    /// Nobody trusts this one.
    stranger: Identity,
    book: AdvisoryBook,
}

fn open(index: &Index, me: &Identity, trusted: &[&Identity], clock: &Clock) -> AdvisoryBook {
    AdvisoryBook::open(
        index,
        me.peer_id(),
        Policy::new(trusted.iter().map(|i| i.peer_id()), 2),
        2,
        clock.clone(),
    )
    .unwrap()
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual();
    let index = Index::open(&dir.path().join("index"), clock.clone()).unwrap();
    let (me, b, c, stranger) = (
        Identity::from_seed([1; 32]),
        Identity::from_seed([2; 32]),
        Identity::from_seed([3; 32]),
        Identity::from_seed([4; 32]),
    );
    let book = open(&index, &me, &[&b, &c], &clock);
    World {
        _dir: dir,
        index,
        clock,
        me,
        b,
        c,
        stranger,
        book,
    }
}

fn name() -> PackageName {
    PackageName::parse("left-pad").unwrap()
}

fn advisory(clock: &Clock, seq: u64, range: &str, withdrawn: bool) -> Advisory {
    Advisory {
        name: name(),
        range: range.into(),
        kind: Kind::Compromised,
        reason: "stolen token publish".into(),
        url: Some("https://example.org/incident".into()),
        seq,
        at_ms: clock.now_ms(),
        expires_at_ms: clock.now_ms() + DEFAULT_LIFETIME_MS,
        withdrawn,
    }
}

fn wire(id: &Identity, a: &Advisory) -> Vec<u8> {
    a.sign(id.signing_key()).to_bytes()
}

fn draft(range: &str) -> Draft {
    Draft {
        name: name(),
        range: range.into(),
        kind: Kind::Malware,
        reason: "payload in postinstall".into(),
        url: Some("https://example.org/a/1".into()),
    }
}

fn held(book: &AdvisoryBook, v: &str) -> Vec<String> {
    book.holds(&name(), &[v])
        .into_iter()
        .map(|(v, _)| v)
        .collect()
}

#[tokio::test]
async fn two_of_three_trusted_signers_put_it_in_force_and_a_withdrawal_lifts_it() {
    let w = world();
    // One signer (this node): pending.
    let mine = w.book.sign(&w.index, &w.me, draft("1.0.1")).await.unwrap();
    assert!(!mine.advisory.withdrawn);
    assert!(w.book.in_force(&name(), "1.0.1").is_none());
    assert!(held(&w.book, "1.0.1").is_empty());
    let list = w.book.list(false);
    assert_eq!(list.advisories.len(), 1);
    assert!(!list.advisories[0].in_force);
    assert_eq!(list.advisories[0].signers.len(), 1);

    // A second trusted operator, with a wider range: in force for 1.0.1, not 1.0.0.
    let theirs = advisory(&w.clock, 5, ">=1.0.1 <1.0.3", false);
    assert_eq!(w.book.take(&wire(&w.b, &theirs)), Ok(Taken::New));
    assert_eq!(w.book.take(&wire(&w.b, &theirs)), Ok(Taken::Again));
    let holds = w.book.holds(&name(), &["1.0.0", "1.0.1", "1.0.2"]);
    assert_eq!(holds.len(), 1, "{holds:?}");
    let (v, msg) = &holds[0];
    assert_eq!(v, "1.0.1");
    assert!(
        msg.starts_with("left-pad@1.0.1 is taken down on this registry: malware — payload in postinstall (advisory signed by "),
        "{msg}"
    );
    for want in [
        w.me.peer_id().to_string(),
        w.b.peer_id().to_string(),
        "https://example.org/a/1".into(),
    ] {
        assert!(msg.contains(&want), "{want} not in {msg}");
    }
    let list = w.book.list(false);
    let g = list.advisories.iter().find(|g| g.range == "1.0.1").unwrap();
    assert!(g.in_force && g.signers.len() == 2, "{list:?}");
    let wide = list
        .advisories
        .iter()
        .find(|g| g.range == ">=1.0.1 <1.0.3")
        .unwrap();
    assert!(!wide.in_force && wide.signers.len() == 1, "{list:?}");
    assert!(list.advisories[0].in_force, "in force first");

    // This node withdraws: one signer left, not in force.
    let bad = w
        .book
        .withdraw(&w.index, &w.me, Which::Name(name(), Some("2.0.0".into())))
        .await;
    assert!(matches!(bad, Err(OwnError::Invalid(_))), "{bad:?}");
    let gone = w
        .book
        .withdraw(&w.index, &w.me, Which::Name(name(), Some("1.0.1".into())))
        .await
        .unwrap();
    assert!(gone.advisory.withdrawn && gone.advisory.seq > mine.advisory.seq);
    assert!(held(&w.book, "1.0.1").is_empty());
    assert!(matches!(
        w.book
            .withdraw(&w.index, &w.me, Which::Name(name(), None))
            .await,
        Err(OwnError::NotFound(_))
    ));
    // The withdrawal is still published, so others learn of it.
    assert_eq!(w.book.own_wires(), vec![gone.wire.clone()]);
    assert_eq!(w.book.list(true).withdrawn.len(), 1);

    // The third trusted operator signs: in force again, without this node.
    let third = advisory(&w.clock, 1, "1.0.1", false);
    w.book.take(&wire(&w.c, &third)).unwrap();
    assert_eq!(held(&w.book, "1.0.1"), ["1.0.1"]);
    // Signed again by this node, by id withdrawn again.
    let again = w.book.sign(&w.index, &w.me, draft("1.0.1")).await.unwrap();
    assert!(again.advisory.seq > gone.advisory.seq);
    let id = open_registry_protocol::advisory::short_id(&again.wire);
    w.book
        .withdraw(&w.index, &w.me, Which::Id(id))
        .await
        .unwrap();
}

#[tokio::test]
async fn untrusted_signers_never_count() {
    let w = world();
    w.book.sign(&w.index, &w.me, draft("1.0.1")).await.unwrap();
    let a = advisory(&w.clock, 1, "1.0.1", false);
    assert_eq!(w.book.take(&wire(&w.stranger, &a)), Ok(Taken::New));
    assert!(held(&w.book, "1.0.1").is_empty());
    let list = w.book.list(false);
    assert!(list.untrusted.is_empty(), "only with all");
    assert_eq!(list.advisories[0].signers.len(), 1);
    let all = w.book.list(true);
    assert_eq!(all.untrusted.len(), 1);
    assert!(!all.untrusted[0].trusted);
}

#[test]
fn forged_rolled_back_expired_and_oversized_are_refused_and_counted() {
    let w = world();
    let a = advisory(&w.clock, 10, "1.0.1", false);
    // Forged: B's advisory claimed by C.
    let mut forged = a.sign(w.b.signing_key());
    forged.signer = w.c.peer_id();
    assert_eq!(w.book.take(&forged.to_bytes()), Err(Refusal::Forged));
    // A flipped bit in the body.
    let mut flipped = a.sign(w.b.signing_key()).to_bytes();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert_eq!(w.book.take(&flipped), Err(Refusal::Forged));
    // Newer taken, then an older one (a replay of a withdrawn takedown) refused.
    let withdrawal = advisory(&w.clock, 11, "1.0.1", true);
    w.book.take(&wire(&w.b, &withdrawal)).unwrap();
    assert_eq!(w.book.take(&wire(&w.b, &a)), Err(Refusal::RolledBack));
    // The same sequence with other content: equivocation, refused too.
    let mut other = withdrawal.clone();
    other.withdrawn = false;
    assert_eq!(w.book.take(&wire(&w.b, &other)), Err(Refusal::RolledBack));
    // Expired.
    let mut old = advisory(&w.clock, 12, "1.0.1", false);
    old.at_ms -= DEFAULT_LIFETIME_MS + 1;
    old.expires_at_ms -= DEFAULT_LIFETIME_MS + 1;
    assert_eq!(w.book.take(&wire(&w.c, &old)), Err(Refusal::Expired));
    // Dated in the future.
    let mut future = advisory(&w.clock, 1, "1.0.1", false);
    future.at_ms += 3_600_000;
    future.expires_at_ms += 3_600_000;
    assert_eq!(w.book.take(&wire(&w.c, &future)), Err(Refusal::Future));
    // Oversized and malformed.
    assert_eq!(w.book.take(&vec![1; 4096]), Err(Refusal::Oversized));
    assert_eq!(w.book.take(b"nonsense"), Err(Refusal::Malformed));
    let mut bad = a.clone();
    bad.range = "not a range!".into();
    assert_eq!(w.book.take(&wire(&w.b, &bad)), Err(Refusal::Malformed));
    let refused = w.book.refused();
    for (k, n) in [
        ("forged", 2),
        ("rolled_back", 2),
        ("expired", 1),
        ("future", 1),
        ("oversized", 1),
        ("malformed", 2),
    ] {
        assert_eq!(refused.get(k), Some(&n), "{k}: {refused:?}");
    }
    assert_eq!(w.book.list(false).refused, refused);
    // Expiry while held: dropped, no longer counted.
    let c1 = advisory(&w.clock, 1, "1.0.1", false);
    w.book.take(&wire(&w.c, &c1)).unwrap();
    w.clock
        .advance(Duration::from_millis(DEFAULT_LIFETIME_MS + 1));
    w.book.prune();
    assert!(w.book.list(true).advisories.is_empty());
}

#[test]
fn each_operator_has_a_bounded_share() {
    let w = world();
    for i in 0..MAX_PER_OPERATOR {
        let mut a = advisory(&w.clock, 1, "1.0.1", false);
        a.name = PackageName::parse(&format!("pkg-{i}")).unwrap();
        assert_eq!(w.book.take(&wire(&w.stranger, &a)), Ok(Taken::New));
    }
    let mut a = advisory(&w.clock, 1, "1.0.1", false);
    a.name = PackageName::parse("one-too-many").unwrap();
    assert_eq!(w.book.take(&wire(&w.stranger, &a)), Err(Refusal::Capacity));
    // Others still have room.
    assert_eq!(w.book.take(&wire(&w.b, &a)), Ok(Taken::New));
}

#[tokio::test]
async fn the_book_survives_reopening_and_sequences_keep_rising() {
    let w = world();
    let mine = w.book.sign(&w.index, &w.me, draft("1.0.1")).await.unwrap();
    w.book
        .take(&wire(&w.b, &advisory(&w.clock, 3, "1.0.1", false)))
        .unwrap();
    w.book
        .take(&wire(&w.stranger, &advisory(&w.clock, 3, "*", false)))
        .unwrap();
    w.index.flush().await.unwrap();
    assert_eq!(held(&w.book, "1.0.1"), ["1.0.1"]);
    drop(w.book);
    let book = open(&w.index, &w.me, &[&w.b, &w.c], &w.clock);
    assert_eq!(held(&book, "1.0.1"), ["1.0.1"]);
    assert_eq!(book.list(true).untrusted.len(), 1);
    // A replay of B's older advisory is still refused after the restart.
    assert_eq!(
        book.take(&wire(&w.b, &advisory(&w.clock, 2, "1.0.1", true))),
        Err(Refusal::RolledBack)
    );
    // The sequence never goes back, even on the same millisecond.
    let next = book.sign(&w.index, &w.me, draft("1.0.2")).await.unwrap();
    assert!(next.advisory.seq > mine.advisory.seq);
    assert_eq!(book.own(&name()).unwrap().advisory.range, "1.0.2");
    // An entry whose bytes were altered on disk is dropped at load.
    let key = held_key(&w.b.peer_id(), &name());
    let tree = w.index.tree("advisories").unwrap();
    let mut v = tree.get(&key).unwrap().unwrap().to_vec();
    let last = v.len() - 1;
    v[last] ^= 1;
    tree.insert(&key, v).unwrap();
    drop(book);
    let book = open(&w.index, &w.me, &[&w.b, &w.c], &w.clock);
    assert!(held(&book, "1.0.2").is_empty(), "only this node's left");
    assert!(tree.get(&key).unwrap().is_none());
}

#[tokio::test]
async fn own_advisories_are_checked_before_signing() {
    let w = world();
    for d in [
        draft("not a range!"),
        Draft {
            reason: " ".into(),
            ..draft("1.0.1")
        },
        Draft {
            reason: "r".repeat(501),
            ..draft("1.0.1")
        },
    ] {
        let r = w.book.sign(&w.index, &w.me, d).await;
        assert!(matches!(r, Err(OwnError::Invalid(_))), "{r:?}");
    }
    assert!(w.book.own_wires().is_empty());
}

#[tokio::test]
async fn the_routes_need_the_token_check_the_request_and_answer_the_signed_advisory() {
    use std::sync::Arc;

    use open_registry_protocol::advisory::{AdvisoryList, AdvisoryView};

    use crate::client::{ClientError, NodeClient};
    use crate::tasks::advisories::Publisher;

    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual();
    let store = Arc::new(
        crate::store::Store::open(dir.path(), clock.clone())
            .await
            .unwrap(),
    );
    let me = Identity::from_seed([9; 32]);
    let book = Arc::new(
        AdvisoryBook::open(&store.index, me.peer_id(), Policy::new([], 1), 1, clock).unwrap(),
    );
    let api = Arc::new(routes::AdvisoryApi {
        book: book.clone(),
        store,
        identity: me.clone(),
        publisher: Arc::new(Publisher { peers: None }),
        token: "secret".into(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, routes::router(api)).await });
    let body = serde_json::json!({
        "name": "left-pad", "range": "1.0.1", "kind": "compromised",
        "reason": "stolen token publish", "url": "https://example.org/i/1",
    });

    let anonymous = NodeClient::new(&base, Some("wrong".into())).unwrap();
    let e = anonymous
        .admin::<AdvisoryView>("advisory", &body)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    let admin = NodeClient::new(&base, Some("secret".into())).unwrap();
    for (field, value) in [
        ("kind", "benign"),
        ("url", "ftp://example.org/x"),
        ("range", "not a range!"),
        ("name", "Not A Name"),
        ("reason", ""),
    ] {
        let mut b = body.clone();
        b[field] = value.into();
        let e: ClientError = admin
            .admin::<AdvisoryView>("advisory", &b)
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(400), "{field}: {e}");
    }
    let v: AdvisoryView = admin.admin("advisory", &body).await.unwrap();
    assert!(v.this_node && !v.withdrawn && v.kind == Kind::Compromised);
    assert_eq!(v.operator, me.peer_id().to_string());
    // Threshold 1 and this node's own advisory: in force at once.
    let l: AdvisoryList = admin.get_json("/-/open-registry/advisories").await.unwrap();
    assert!(l.advisories[0].in_force, "{l:?}");
    assert_eq!(held(&book, "1.0.1"), ["1.0.1"]);
    let e = admin
        .admin::<AdvisoryView>(
            "advisory/withdraw",
            &serde_json::json!({"id": "0000000000000000"}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    let w: AdvisoryView = admin
        .admin("advisory/withdraw", &serde_json::json!({"id": v.id}))
        .await
        .unwrap();
    assert!(w.withdrawn && w.seq > v.seq);
    assert!(held(&book, "1.0.1").is_empty());
    let all: AdvisoryList = admin
        .get_json("/-/open-registry/advisories?all=1")
        .await
        .unwrap();
    assert!(
        all.advisories.is_empty() && all.withdrawn.len() == 1,
        "{all:?}"
    );
}
