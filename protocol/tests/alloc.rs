//! R17 in docs/security.md, no unbounded allocation: whatever bytes a decoder is handed, it
//! allocates in proportion to them, never to a length or count the bytes merely claim (a record
//! that says it lists 100 000 versions, a string that says it is 64 KiB long, a body past the size
//! cap).
//!
//! This file is its own test binary so that it can count every allocation: the global
//! allocator is `stats_alloc`'s instrumented system allocator. The counters are
//! process-wide, so everything runs in one `#[test]`, on one thread.

use std::alloc::System;

use open_registry_protocol::pointer::{self, Pointer};
use open_registry_protocol::popularity::Summary;
use open_registry_protocol::record::{self, Record, Signable as _, Signed};
use open_registry_protocol::{BlobId, Integrity, PackageName, npm_sig, packument};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Budget per input byte for all binary decoders together: each copies what it keeps once.
const BINARY_PER_BYTE: usize = 4;
/// Budget per input byte for all text decoders together: three of them parse the whole JSON
/// into a `serde_json::Value` (an order-preserving map per object, growing by doubling), and
/// the packument is abbreviated and indexed besides; the total measured is about 75 per byte.
const TEXT_PER_BYTE: usize = 128;

/// Bytes allocated (in total, not net) while `f` runs.
fn allocated(f: impl FnOnce()) -> usize {
    let region = Region::new(GLOBAL);
    f();
    region.change().bytes_allocated
}

/// What decoding `len` bytes may cost: a small multiple of them, plus a constant.
fn budget(len: usize, per_byte: usize) -> usize {
    per_byte * len + (64 << 10)
}

/// Runs every decoder of binary input on `b`.
fn decode_binary(b: &[u8]) {
    let _ = Record::decode(b);
    let _ = Summary::decode(b);
    let _ = Pointer::decode(b);
    if let Ok(s) = Signed::from_bytes(b) {
        let _ = s.verify();
    }
    let key = pointer::dht_key(&PackageName::parse("p").unwrap(), &signer());
    let _ = pointer::validate(&key, b, 0);
    let _ = BlobId::from_bytes(b);
}

/// Runs every decoder of text input on `b`.
fn decode_text(b: &[u8]) {
    let name = PackageName::parse("p").unwrap();
    if let Ok(doc) = packument::parse(&name, b) {
        let _ = packument::abbreviate(&doc);
        let _ = packument::tarball_index(&name, &doc);
    }
    let _ = npm_sig::Keys::parse(b);
    if let Ok(s) = std::str::from_utf8(b) {
        let _ = npm_sig::parse_iso8601_ms(s);
        let _ = Integrity::parse(s);
        let _ = PackageName::parse(s);
        let _ = s.parse::<open_registry_protocol::PeerId>();
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(b) {
        let _ = Signed::from_json(&v);
    }
}

fn signer() -> open_registry_protocol::PeerId {
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    open_registry_protocol::PeerId::from_public_key(&key.verifying_key())
}

/// A record header for `p` followed by `tail`.
fn record_prefix(tail: &[u8]) -> Vec<u8> {
    let mut b = vec![record::FORMAT, 0, 1, b'p'];
    b.extend_from_slice(&[0; 24]);
    b.extend_from_slice(&BlobId::of(b"x").to_bytes());
    b.extend_from_slice(tail);
    b
}

fn check(what: &str, input: &[u8], per_byte: usize, decode: impl FnOnce(&[u8])) {
    let used = allocated(|| decode(input));
    let max = budget(input.len(), per_byte);
    assert!(
        used <= max,
        "{what}: decoding {} bytes allocated {used} bytes (budget {max})",
        input.len()
    );
}

#[test]
fn decoders_allocate_in_proportion_to_their_input_not_to_its_claims() {
    // Claims far beyond the bytes that follow them.
    let crafted: Vec<(&str, Vec<u8>)> = vec![
        (
            "record claiming 100 000 versions",
            record_prefix(&record::MAX_VERSIONS.to_be_bytes()),
        ),
        (
            "record claiming u32::MAX versions",
            record_prefix(&u32::MAX.to_be_bytes()),
        ),
        ("record with a 64 KiB name claim", {
            let mut b = vec![record::FORMAT, 0xff, 0xff];
            b.extend_from_slice(b"short");
            b
        }),
        ("record version with a 64 KiB integrity claim", {
            let mut t = 1u32.to_be_bytes().to_vec();
            t.extend_from_slice(&[0, 1, b'1', 0xff, 0xff, b'x']);
            record_prefix(&t)
        }),
        ("summary claiming 65 535 entries", {
            let mut b = vec![1];
            b.extend_from_slice(&[0; 8]);
            b.extend_from_slice(&u16::MAX.to_be_bytes());
            b
        }),
        ("summary claiming its 100 entries", {
            let mut b = vec![1];
            b.extend_from_slice(&[0; 8]);
            b.extend_from_slice(&100u16.to_be_bytes());
            b.extend_from_slice(&[0xff, 0xff]);
            b
        }),
        (
            "pointer with a 64 KiB name claim",
            vec![1, 0xff, 0xff, b'p'],
        ),
        ("signed record one byte past the size cap", {
            let mut b = vec![record::FORMAT];
            b.extend_from_slice(signer().key_bytes());
            b.resize(97 + record::MAX_RECORD_LEN + 1, 0);
            b
        }),
    ];
    for (what, b) in &crafted {
        check(what, b, BINARY_PER_BYTE, decode_binary);
    }

    // Text: deep nesting, long runs, many tokens.
    let deep = "[".repeat(100_000);
    let digits = format!("2025-01-01T00:00:00.{}Z", "9".repeat(1 << 20));
    let sri = format!(
        "sha512-{} ",
        Integrity::sha512_sri(b"x").trim_start_matches("sha512-")
    )
    .repeat(10_000);
    let big_record_json = serde_json::json!({
        "signer": signer().to_string(),
        "signature": "A".repeat(88),
        "record": "A".repeat(4 << 20),
    })
    .to_string();
    let versions: serde_json::Map<String, serde_json::Value> = (0..20_000)
        .map(|i| {
            let v = serde_json::json!({"dist": {"tarball": format!("https://r/p/-/p-{i}.tgz")}});
            (format!("1.0.{i}"), v)
        })
        .collect();
    let many_versions = serde_json::json!({"name": "p", "versions": versions}).to_string();
    for (what, text) in [
        ("100 000 open brackets", deep.as_str()),
        ("a timestamp with a 1 MiB fraction", &digits),
        ("10 000 integrity tokens", &sri),
        ("a signed record with a 3 MiB body", &big_record_json),
        ("a packument with 20 000 versions", &many_versions),
    ] {
        check(what, text.as_bytes(), TEXT_PER_BYTE, decode_text);
    }

    // Random and mutated input.
    let mut runner = TestRunner::new(Config {
        cases: 512,
        ..Config::default()
    });
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let valid = Record {
        name: PackageName::parse("p").unwrap(),
        seq: 1,
        fetched_at: 2,
        expires_at: 3,
        packument: BlobId::of(b"x"),
        versions: Default::default(),
    }
    .sign(&key)
    .to_bytes();
    let binary = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8)).prop_map(move |(at, patch)| {
            let mut b = valid.clone();
            let at = at % b.len();
            let end = (at + patch.len()).min(b.len());
            b[at..end].copy_from_slice(&patch[..end - at]);
            b
        }),
    ];
    runner
        .run(&binary, |b| {
            let used = allocated(|| decode_binary(&b));
            prop_assert!(
                used <= budget(b.len(), 4),
                "{} bytes: {used} allocated",
                b.len()
            );
            Ok(())
        })
        .unwrap();
    let text = prop_oneof![
        any::<String>(),
        "[\\[\\]{}\":,0-9a-z ]{0,400}",
        "\\{\"keys\":\\[\\{\"keyid\":\"[a-z]{0,5}\",\"key\":\"[A-Za-z0-9+/=]{0,80}\"\\}\\]\\}",
    ];
    runner
        .run(&text, |s| {
            let used = allocated(|| decode_text(s.as_bytes()));
            prop_assert!(
                used <= budget(s.len(), 64),
                "{} bytes: {used} allocated",
                s.len()
            );
            Ok(())
        })
        .unwrap();
}
