//! The book and the view: what is taken, what is refused, how the figures add up.

use std::collections::BTreeMap;
use std::time::Duration;

use open_registry_protocol::Policy;
use open_registry_protocol::record::Signable as _;
use open_registry_protocol::report::Report;
use open_registry_protocol::statement::{SignedStatement, Statement};

use super::*;
use crate::records::Identity;

const WINDOW: u64 = 60_000;

fn report(clock: &Clock, seq: u64, values: &[(&str, u64)]) -> Report {
    Report {
        at_ms: clock.now_ms(),
        seq,
        started_ms: clock.now_ms() - 1000,
        window_ms: WINDOW,
        version: "0.1.0".into(),
        values: values.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
    }
}

fn statement(name: &str, currency: &str, cost: &str, donated: &str, spent: &str) -> Statement {
    Statement::parse(&format!(
        r#"[operator]
name = "{name}"

[[month]]
month = "2026-10"
currency = "{currency}"
cost = [ {{ provider = "Old", item = "server", amount = "100" }} ]

[[month]]
month = "2026-11"
currency = "{currency}"
cost = [ {{ provider = "Hetzner", item = "server", amount = "{cost}" }} ]
donations = [ {{ source = "OpenCollective", amount = "{donated}" }} ]
spent = [ {{ on = "server", amount = "{spent}" }} ]
"#
    ))
    .unwrap()
}

fn signed_statement(id: &Identity, seq: u64, s: Statement) -> Vec<u8> {
    SignedStatement {
        seq,
        at_ms: 1,
        statement: s,
    }
    .sign(id.signing_key())
    .to_bytes()
}

struct World {
    clock: Clock,
    me: Identity,
    friend: Identity,
    stranger: Identity,
    book: Book,
}

fn world() -> World {
    let clock = Clock::manual();
    let (me, friend, stranger) = (
        Identity::from_seed([1; 32]),
        Identity::from_seed([2; 32]),
        Identity::from_seed([3; 32]),
    );
    let book = Book::new(
        me.peer_id(),
        Policy::new([friend.peer_id()], 1),
        clock.clone(),
    );
    World {
        clock,
        me,
        friend,
        stranger,
        book,
    }
}

#[test]
fn trusted_figures_add_up_and_strangers_stay_apart() {
    let w = world();
    let served = [
        ("window.requests.packument", 5),
        ("total.requests.packument", 50),
        ("window.requests.tarball", 7),
        ("window.errors.server", 3),
        ("cached.packuments", 40),
        ("lag.seconds", 12),
        ("lag.seq", 2),
    ];
    for id in [&w.me, &w.friend] {
        let wire = report(&w.clock, 1, &served)
            .sign(id.signing_key())
            .to_bytes();
        w.book.take_report(&wire).unwrap();
    }
    let loud = report(
        &w.clock,
        1,
        &[
            ("window.requests.packument", 1_000_000),
            ("cached.packuments", 9_999_999),
        ],
    );
    w.book
        .take_report(&loud.sign(w.stranger.signing_key()).to_bytes())
        .unwrap();
    w.book
        .take_statement(&signed_statement(
            &w.me,
            1,
            statement("Me", "EUR", "6.80", "25.00", "6.80"),
        ))
        .unwrap();
    w.book
        .take_statement(&signed_statement(
            &w.friend,
            1,
            statement("Friend", "USD", "5", "0", "0"),
        ))
        .unwrap();
    w.book
        .take_statement(&signed_statement(
            &w.stranger,
            1,
            statement("Sybil", "EUR", "1000000", "0", "0"),
        ))
        .unwrap();

    // The history's window figures count each trusted report once.
    let window = w.book.drain_window();
    assert_eq!(window["packuments_served"], 10);
    assert_eq!(window["requests"], 24);
    assert_eq!(window["errors"], 6);
    assert!(w.book.drain_window().is_empty());

    let v = w.book.view();
    assert_eq!(v.instances.online, 3);
    assert_eq!(v.instances.trusted_online, 2);
    assert_eq!(v.instances.other_online, 1);
    assert_eq!(v.packages.served_window, 10);
    assert_eq!(v.packages.served_total, 100);
    assert_eq!(v.packages.cached_max, 40);
    assert_eq!(v.requests.window, 24);
    assert_eq!(v.errors.window, 6);
    assert_eq!(v.errors.per_minute, 6.0);
    assert_eq!(v.lag.max_seconds, 12);
    assert_eq!(v.lag.max_seq, 2);
    // Money: the latest month's costs; donations and spending over every month.
    let eur = &v.money["EUR"];
    assert_eq!(eur.monthly_cost, "6.80");
    assert_eq!(eur.cost_total, "106.80");
    assert_eq!(eur.donated, "25.00");
    assert_eq!(eur.balance, "18.20");
    assert_eq!(v.money["USD"].monthly_cost, "5.00");
    assert_eq!(v.costs.len(), 2, "{:?}", v.costs);
    assert!(v.costs.iter().all(|c| c.provider == "Hetzner"));
    assert_eq!(v.spent_items.len(), 2, "{:?}", v.spent_items);
    assert!(
        v.spent_items
            .iter()
            .all(|s| s.on == "server" && s.month == "2026-11")
    );
    // The sybil is listed apart and changes nothing above.
    assert_eq!(v.others.money["EUR"].monthly_cost, "1000000.00");
    assert_eq!(v.others.served_window, 1_000_000);
    assert_eq!(v.operators.len(), 3);
    assert!(v.operators[..2].iter().all(|o| o.trusted));
    let sybil = &v.operators[2];
    assert!(!sybil.trusted && sybil.online);
    assert_eq!(sybil.name.as_deref(), Some("Sybil"));

    let text = prometheus(&v);
    assert!(
        text.contains("open_registry_network_instances{trust=\"trusted\"} 2\n"),
        "{text}"
    );
    assert!(text.contains("open_registry_network_monthly_cost{currency=\"EUR\"} 6.80\n"));
}

#[test]
fn forged_replayed_oversized_and_stale_messages_are_refused_and_counted() {
    let w = world();
    let r = report(&w.clock, 2, &[("window.requests.packument", 1)]);
    let wire = r.sign(w.friend.signing_key()).to_bytes();
    w.book.take_report(&wire).unwrap();
    // The same report again, and an older one.
    assert_eq!(w.book.take_report(&wire), Err(Refusal::RolledBack));
    let older = Report {
        seq: 1,
        ..r.clone()
    };
    assert_eq!(
        w.book
            .take_report(&older.sign(w.friend.signing_key()).to_bytes()),
        Err(Refusal::RolledBack)
    );
    // Signed by someone else than it claims.
    let mut forged = Signed::from_bytes(&wire).unwrap();
    forged.body = Report {
        seq: 9,
        ..r.clone()
    }
    .encode();
    assert_eq!(w.book.take_report(&forged.to_bytes()), Err(Refusal::Forged));
    // Too large, garbage, from the future, too old.
    assert_eq!(
        w.book.take_report(&vec![1; MAX_REPORT_LEN + 200]),
        Err(Refusal::Oversized)
    );
    assert_eq!(w.book.take_report(b"nonsense"), Err(Refusal::Malformed));
    let future = Report {
        at_ms: w.clock.now_ms() + 3_600_000,
        ..r.clone()
    };
    assert_eq!(
        w.book
            .take_report(&future.sign(w.stranger.signing_key()).to_bytes()),
        Err(Refusal::Future)
    );
    let stale = Report {
        at_ms: w.clock.now_ms() - 5 * WINDOW,
        started_ms: 0,
        ..r.clone()
    };
    assert_eq!(
        w.book
            .take_report(&stale.sign(w.stranger.signing_key()).to_bytes()),
        Err(Refusal::Expired)
    );

    // Statements: a higher sequence replaces, the same one again is no news, a lower one is
    // a rollback.
    let s = |seq, cost| signed_statement(&w.friend, seq, statement("F", "EUR", cost, "0", "0"));
    assert_eq!(w.book.take_statement(&s(5, "1")), Ok(Taken::New));
    assert_eq!(w.book.take_statement(&s(5, "1")), Ok(Taken::Again));
    assert_eq!(w.book.take_statement(&s(4, "2")), Err(Refusal::RolledBack));
    assert_eq!(w.book.take_statement(&s(5, "3")), Err(Refusal::RolledBack));
    assert_eq!(w.book.take_statement(&s(6, "4")), Ok(Taken::New));
    assert_eq!(
        w.book.take_statement(&vec![1; MAX_STATEMENT_LEN + 200]),
        Err(Refusal::Oversized)
    );
    assert_eq!(w.book.view().money["EUR"].monthly_cost, "4.00");

    let refused = w.book.refused();
    let expect: BTreeMap<String, u64> = [
        ("report.rolled_back", 2),
        ("report.forged", 1),
        ("report.oversized", 1),
        ("report.malformed", 1),
        ("report.future", 1),
        ("report.expired", 1),
        ("statement.rolled_back", 2),
        ("statement.oversized", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(refused, expect);
}

#[test]
fn a_silent_node_goes_offline_after_two_windows_and_is_dropped_after_four() {
    let w = world();
    let wire = report(&w.clock, 1, &[])
        .sign(w.friend.signing_key())
        .to_bytes();
    w.book.take_report(&wire).unwrap();
    assert_eq!(w.book.view().instances.trusted_online, 1);
    w.clock.advance(Duration::from_millis(2 * WINDOW));
    assert_eq!(
        w.book.view().instances.trusted_online,
        1,
        "exactly two windows: still online"
    );
    w.clock.advance(Duration::from_millis(1));
    let v = w.book.view();
    assert_eq!(v.instances.trusted_online, 0);
    assert_eq!(v.instances.known, 1);
    assert!(!v.operators[0].online);
    w.clock.advance(Duration::from_millis(2 * WINDOW));
    assert_eq!(w.book.view().instances.known, 0);
}

#[test]
fn the_book_is_bounded_and_keeps_room_for_trusted_operators() {
    let w = world();
    for i in 0..MAX_OPERATORS {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i as u64 + 1000).to_be_bytes());
        let id = Identity::from_seed(seed);
        w.book
            .take_report(&report(&w.clock, 1, &[]).sign(id.signing_key()).to_bytes())
            .unwrap();
    }
    let one_more = report(&w.clock, 1, &[])
        .sign(w.stranger.signing_key())
        .to_bytes();
    assert_eq!(w.book.take_report(&one_more), Err(Refusal::Capacity));
    let friend = report(&w.clock, 1, &[])
        .sign(w.friend.signing_key())
        .to_bytes();
    w.book.take_report(&friend).unwrap();
    assert_eq!(w.book.reports().len(), MAX_OPERATORS);
    assert_eq!(w.book.view().instances.trusted_online, 1);
}

#[test]
fn the_served_view_lists_advisories_in_force_and_pending_and_the_cooldown() {
    use open_registry_protocol::PackageName;
    use open_registry_protocol::advisory::{Advisory, DEFAULT_LIFETIME_MS, Kind};

    use crate::store::Index;
    use crate::withhold::{Cooldown, Holds};

    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual();
    let index = Index::open(&dir.path().join("index"), clock.clone()).unwrap();
    let (me, b, c) = (
        Identity::from_seed([1; 32]),
        Identity::from_seed([2; 32]),
        Identity::from_seed([3; 32]),
    );
    let policy = Policy::new([b.peer_id(), c.peer_id()], 2);
    let advisories = Arc::new(
        AdvisoryBook::open(&index, me.peer_id(), policy.clone(), 2, clock.clone()).unwrap(),
    );
    let advisory = |name: &str, range: &str| Advisory {
        name: PackageName::parse(name).unwrap(),
        range: range.into(),
        kind: Kind::Malware,
        reason: "payload".into(),
        url: None,
        seq: 1,
        at_ms: clock.now_ms(),
        expires_at_ms: clock.now_ms() + DEFAULT_LIFETIME_MS,
        withdrawn: false,
    };
    // B and C sign left-pad@1.0.1 (in force); only B signs is-odd@3.0.1 (pending).
    for (id, name, range) in [
        (&b, "left-pad", "1.0.1"),
        (&c, "left-pad", "1.0.1"),
        (&b, "is-odd", "3.0.1"),
    ] {
        let wire = advisory(name, range).sign(id.signing_key()).to_bytes();
        advisories.take(&wire).unwrap();
    }
    let views = Views {
        book: Arc::new(Book::new(me.peer_id(), policy, clock.clone())),
        advisories,
        holds: Arc::new(Holds::new(
            Some(Cooldown::new(Duration::from_secs(3600), &[])),
            None,
            None,
            clock.clone(),
            8 << 20,
        )),
    };
    let v = views.network();
    let w = &v.withholding;
    assert_eq!(w.advisory_threshold, 2);
    assert_eq!(w.in_force.len(), 1, "{w:?}");
    assert_eq!(
        (w.in_force[0].name.as_str(), w.in_force[0].range.as_str()),
        ("left-pad", "1.0.1")
    );
    assert_eq!(w.in_force[0].signers.len(), 2);
    assert_eq!(w.pending.len(), 1, "{w:?}");
    assert_eq!(w.pending[0].name, "is-odd");
    assert_eq!(w.pending[0].signers[0].operator, b.peer_id().to_string());
    let cooldown = w.cooldown.as_ref().expect("the cooldown is on");
    assert_eq!(cooldown.min_release_age_secs, 3600);
    assert!(cooldown.held.is_empty());
    let text = prometheus(&v);
    for line in [
        "open_registry_network_advisories{state=\"in_force\"} 1\n",
        "open_registry_network_advisories{state=\"pending\"} 1\n",
        "open_registry_network_cooldown_held 0\n",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}
