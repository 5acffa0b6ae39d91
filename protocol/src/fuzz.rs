//! Malformed input everywhere (R17 in docs/security.md): property tests that feed every decoder in
//! this crate bytes and documents no honest peer or registry would send.
//!
//! Each decoder gets both kinds of garbage: arbitrary input, which exercises the first checks,
//! and valid input with mutations (flipped, cut, inserted, enlarged length fields; documents
//! whose fields have the wrong types), which reaches the deep paths. Beyond "never panics",
//! the properties that make the decoders safe to build on are checked: whatever a binary
//! decoder accepts is canonical (it re-encodes to the same bytes), a signed value is only ever
//! read through a valid signature, derived packument forms keep their shape, and timestamps
//! decode to the right instant. Allocation bounds are in `protocol/tests/alloc.rs`, which needs
//! a counting allocator of its own.

use std::collections::BTreeMap;

use ed25519_dalek::{Signer as _, SigningKey};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::name::{MAX_NAME_LEN, PackageName, TarballFile};
use crate::packument::{self, DistRef};
use crate::pointer::{self, Pointer};
use crate::popularity::Summary;
use crate::record::{self, Record, Signable, Signed, VersionEntry};
use crate::{BlobId, Integrity, PeerId, npm_sig};

// ---- strategies --------------------------------------------------------------------------

/// Words packument, keys and record code looks for, so random documents hit real fields.
const FIELDS: &[&str] = &[
    "name",
    "versions",
    "dist-tags",
    "dist",
    "tarball",
    "integrity",
    "shasum",
    "signatures",
    "time",
    "modified",
    "scripts",
    "preinstall",
    "install",
    "postinstall",
    "hasInstallScript",
    "dependencies",
    "latest",
    "1.0.0",
    "keys",
    "keyid",
    "keytype",
    "key",
    "expires",
    "sig",
    "signer",
    "signature",
    "record",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(FIELDS).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// Arbitrary JSON, biased towards the field names the decoders read.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        word().prop_map(Value::String),
        tarball_url().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((word(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Tarball URLs as upstreams write them, and as attackers would.
fn tarball_url() -> impl Strategy<Value = String> {
    prop_oneof![
        "https://registry\\.example/[a-z@%/.-]{0,30}/-/[a-zA-Z0-9%._+-]{0,20}\\.tgz",
        prop::sample::select(vec![
            "https://r.example/p/-/p-1.0.0.tgz",
            "https://r.example/p/-/..%2f..%2fetc%2fpasswd.tgz",
            "https://r.example/p/-/%2e%2e.tgz",
            "https://r.example/p/-/p-1.0.0.tgz?x=../../y#z",
            "/p/-/p%zz.tgz",
            "http://169.254.169.254/latest/meta-data.tgz",
            "%",
            "%f",
            "%ff.tgz",
            "",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ]
}

/// A packument for `name` with versions whose fields are plausible, missing or wrong-typed.
fn packument_doc(name: &'static str) -> impl Strategy<Value = Value> {
    let dist = prop_oneof![
        3 => (tarball_url(), json_value(), json_value()).prop_map(|(t, i, s)| {
            json!({"tarball": t, "integrity": i, "shasum": s})
        }),
        1 => json_value(),
    ];
    let version = prop_oneof![
        3 => (dist, json_value()).prop_map(|(d, scripts)| {
            json!({"name": "x", "version": "y", "dist": d, "scripts": scripts, "extra": 1})
        }),
        1 => json_value(),
    ];
    let versions = prop_oneof![
        4 => prop::collection::btree_map(word(), version, 0..5).prop_map(|m| json!(m)),
        1 => json_value(),
    ];
    (versions, json_value(), json_value()).prop_map(move |(versions, tags, time)| {
        json!({"name": name, "versions": versions, "dist-tags": tags, "time": time})
    })
}

fn version_entries() -> impl Strategy<Value = BTreeMap<String, VersionEntry>> {
    prop::collection::btree_map(
        "[0-9a-z.+-]{1,12}",
        ("[a-zA-Z0-9+/=-]{0,40}", any::<Option<[u8; 4]>>()).prop_map(|(integrity, t)| {
            VersionEntry {
                integrity,
                tarball: t.map(|b| BlobId::of(&b)),
            }
        }),
        0..6,
    )
}

fn record() -> impl Strategy<Value = Record> {
    (
        "(@[a-z0-9]{1,5}/)?[a-z0-9][a-z0-9._-]{0,12}",
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<[u8; 4]>(),
        version_entries(),
    )
        .prop_filter_map("a valid name", |(n, seq, f, e, p, versions)| {
            Some(Record {
                name: PackageName::parse(&n).ok()?,
                seq,
                fetched_at: f,
                expires_at: e,
                packument: BlobId::of(&p),
                versions,
            })
        })
}

/// One way to damage an encoding.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Cut(usize),
    Insert(usize, u8),
    /// Overwrite two bytes with a large big-endian length (u16 fields).
    Len16(usize, u16),
    /// Overwrite four bytes with a large big-endian count (u32 fields).
    Len32(usize, u32),
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<usize>().prop_map(Mutation::Cut),
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Mutation::Insert(i, x)),
        (any::<usize>(), prop_oneof![Just(u16::MAX), any::<u16>()])
            .prop_map(|(i, x)| Mutation::Len16(i, x)),
        (
            any::<usize>(),
            prop_oneof![Just(u32::MAX), Just(record::MAX_VERSIONS + 1), any::<u32>()]
        )
            .prop_map(|(i, x)| Mutation::Len32(i, x)),
        prop::collection::vec(any::<u8>(), 1..8).prop_map(Mutation::Append),
    ]
}

fn mutate(mut b: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
        match m {
            Mutation::Flip(i, x) if !b.is_empty() => {
                let i = at(*i, b.len());
                b[i] ^= x;
            }
            Mutation::Cut(i) => b.truncate(at(*i, b.len() + 1)),
            Mutation::Insert(i, x) => b.insert(at(*i, b.len() + 1), *x),
            Mutation::Len16(i, x) if b.len() >= 2 => {
                let i = at(*i, b.len() - 1);
                b[i..i + 2].copy_from_slice(&x.to_be_bytes());
            }
            Mutation::Len32(i, x) if b.len() >= 4 => {
                let i = at(*i, b.len() - 3);
                b[i..i + 4].copy_from_slice(&x.to_be_bytes());
            }
            Mutation::Append(tail) => b.extend_from_slice(tail),
            _ => {}
        }
    }
    b
}

fn signing_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// A correctly signed envelope around arbitrary `body` bytes: the decoder behind the signature
/// check sees them.
fn sign_raw(key: &SigningKey, domain: &[u8], body: Vec<u8>) -> Signed {
    Signed {
        signer: PeerId::from_public_key(&key.verifying_key()),
        signature: key.sign(&record::signed_message(domain, &body)).to_bytes(),
        body,
    }
}

/// Days since the epoch, counted the slow way, for checking `parse_iso8601_ms`.
fn days_naive(y: i64, m: i64, d: i64) -> i64 {
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mut days = 0;
    for year in 1970..y {
        days += if leap(year) { 366 } else { 365 };
    }
    let months = [
        31,
        if leap(y) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    days + months[..(m - 1) as usize].iter().sum::<i64>() + d - 1
}

// ---- names -------------------------------------------------------------------------------

proptest! {
    #[test]
    fn names_never_panic_and_accepted_ones_are_canonical(s in prop_oneof![
        any::<String>(),
        "@?[a-zA-Z0-9._~%-]{0,8}/?[a-zA-Z0-9._~%/-]{0,8}",
        "[a-z]{200,230}",
    ]) {
        if let Ok(n) = PackageName::parse(&s) {
            prop_assert_eq!(n.as_str(), s.as_str());
            prop_assert!(n.as_str().len() <= MAX_NAME_LEN);
            prop_assert_eq!(s.parse::<PackageName>().unwrap(), n.clone());
            let scope = n.scope().map(|sc| format!("@{sc}/")).unwrap_or_default();
            prop_assert_eq!(format!("{scope}{}", n.unscoped()), s.clone());
            prop_assert!(!n.url_segment().contains('/'));
        }
        if let Ok(f) = TarballFile::parse(&s) {
            prop_assert_eq!(f.as_str(), s.as_str());
            prop_assert!(!s.contains(['/', '\\', '%', '\0']) && !s.starts_with('.'));
        }
    }

    #[test]
    fn ids_and_peers_from_garbage_never_panic(s in any::<String>(), b in prop::collection::vec(any::<u8>(), 0..80)) {
        let _ = s.parse::<PeerId>();
        let _ = PeerId::from_bytes(&b);
        if let Ok(id) = BlobId::from_bytes(&b) {
            prop_assert_eq!(id.to_bytes(), b);
        }
        let _ = Integrity::parse(&s);
        let _ = Integrity::from_shasum(&s);
        let _ = Integrity::for_dist(Some(&s), Some(&s));
    }
}

// ---- packuments --------------------------------------------------------------------------

proptest! {
    #[test]
    fn packument_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..300), s in any::<String>()) {
        let name = PackageName::parse("p").unwrap();
        let _ = packument::parse(&name, &b);
        let _ = packument::parse(&name, s.as_bytes());
        let _ = packument::tarball_file_of(&s);
        let _ = packument::url_path(&s);
    }

    #[test]
    fn derived_forms_of_any_document_keep_their_shape(
        doc in prop_oneof![json_value(), packument_doc("p"), packument_doc("@s/p")],
        spec in word(),
    ) {
        for n in ["p", "@s/p"] {
            let name = PackageName::parse(n).unwrap();
            let bytes = serde_json::to_vec(&doc).unwrap();
            let parsed = packument::parse(&name, &bytes);
            if let Ok(p) = &parsed {
                prop_assert_eq!(p, &doc);
                prop_assert_eq!(doc["name"].as_str(), Some(n));
            }

            // The abbreviated document: name, dist-tags and an object of versions, each
            // with a subset of the version's fields; deriving it again changes nothing.
            let abbreviated = packument::abbreviate(&doc);
            if !doc.is_object() {
                prop_assert_eq!(abbreviated, json!({}));
                continue;
            }
            prop_assert_eq!(packument::abbreviate(&abbreviated), abbreviated.clone());
            prop_assert!(abbreviated.get("dist-tags").is_some());
            let versions = abbreviated["versions"].as_object().unwrap();
            if let Some(Value::Object(full)) = doc.get("versions") {
                prop_assert_eq!(versions.len(), full.len());
                for (v, a) in versions {
                    for (k, x) in a.as_object().unwrap() {
                        let from_doc = full[v].get(k) == Some(x);
                        let derived = k == "hasInstallScript" && *x == Value::Bool(true);
                        prop_assert!(from_doc || derived, "{} of {} is invented", k, v);
                    }
                }
            }

            // Rewritten links all point under the gateway's own path for the package.
            let mut rewritten = doc.clone();
            packument::rewrite_tarballs(&mut rewritten, &name, "http://gw");
            if let Some(Value::Object(vs)) = rewritten.get("versions") {
                for v in vs.values() {
                    if let Some(t) = v.get("dist").filter(|d| d.is_object()).map(|d| &d["tarball"]) {
                        let t = t.as_str().unwrap();
                        prop_assert!(t.starts_with(&format!("http://gw/{n}/-/")), "{}", t);
                    }
                }
            }

            // Every file the index names either is a valid file name taken from the link, or
            // the npm default for its version.
            for (file, DistRef { version, .. }) in packument::tarball_index(&name, &doc) {
                let default = format!("{}-{version}.tgz", name.unscoped());
                prop_assert!(TarballFile::parse(&file).is_ok() || file == default, "{}", file);
            }
            let _ = packument::resolve(&doc, &spec);
        }
    }
}

// ---- signed records, pointers, summaries -------------------------------------------------

proptest! {
    #[test]
    fn record_decoding_accepts_only_canonical_bytes(r in record(), ms in prop::collection::vec(mutation(), 1..4)) {
        let b = mutate(r.encode(), &ms);
        if let Ok(d) = Record::decode(&b) {
            prop_assert_eq!(d.encode(), b);
        }
    }

    #[test]
    fn signed_wire_and_json_forms_never_panic(
        r in record(),
        ms in prop::collection::vec(mutation(), 0..4),
        garbage in prop::collection::vec(any::<u8>(), 0..200),
        j in json_value(),
    ) {
        let key = signing_key(1);
        let wire = mutate(r.sign(&key).to_bytes(), &ms);
        for b in [&wire, &garbage] {
            if let Ok(s) = Signed::from_bytes(b) {
                prop_assert_eq!(&s.to_bytes(), b);
                // Anything that verifies is the record signed, unchanged.
                if let Ok(v) = s.verify() {
                    prop_assert_eq!(v.get(), &r);
                }
            }
        }
        let _ = Signed::from_json(&j);
        let mut obj = r.sign(&key).to_json();
        if let (Value::Object(o), Value::Object(extra)) = (&mut obj, &j) {
            o.extend(extra.clone());
        }
        if let Ok(s) = Signed::from_json(&obj) {
            let _ = s.verify();
        }
    }

    #[test]
    fn garbage_behind_a_valid_signature_is_refused_or_canonical(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            (record(), prop::collection::vec(mutation(), 1..4)).prop_map(|(r, ms)| mutate(r.encode(), &ms)),
            (any::<u64>(), prop::collection::vec(mutation(), 1..4)).prop_map(|(seq, ms)| {
                let p = Pointer { name: PackageName::parse("@s/p").unwrap(), seq, expires_at: seq, record: BlobId::of(b"r") };
                mutate(p.encode(), &ms)
            }),
            (any::<u64>(), prop::collection::vec(mutation(), 1..4)).prop_map(|(at, ms)| {
                let s = Summary::top(at, [("a", 3u64), ("b", 1), ("c-d", 9)].map(|(n, c)| (PackageName::parse(n).unwrap(), c)));
                mutate(s.encode(), &ms)
            }),
        ],
    ) {
        let key = signing_key(2);
        let record = sign_raw(&key, Record::DOMAIN, body.clone());
        if let Ok(v) = record.verify() {
            prop_assert_eq!(v.get().encode(), body.clone());
        }
        let ptr = sign_raw(&key, Pointer::DOMAIN, body.clone());
        if let Ok(v) = ptr.verify_as::<Pointer>() {
            prop_assert_eq!(v.get().encode(), body.clone());
        }
        let sum = sign_raw(&key, Summary::DOMAIN, body.clone());
        if let Ok(v) = sum.verify_as::<Summary>() {
            prop_assert_eq!(v.get().encode(), body.clone());
            prop_assert!(v.get().counts.len() <= crate::popularity::MAX_ENTRIES);
        }
        // A signature over one kind never verifies as another.
        prop_assert!(ptr.verify().is_err());
        prop_assert!(record.verify_as::<Summary>().is_err());
    }

    #[test]
    fn dht_values_are_validated_without_panics(
        key in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..120),
            (any::<String>()).prop_map(|s| format!("{}{s}", pointer::KEY_PREFIX).into_bytes()),
            Just(pointer::dht_key(&PackageName::parse("@s/p").unwrap(), &PeerId::from_public_key(&signing_key(3).verifying_key()))),
        ],
        seq in any::<u64>(),
        now in any::<u64>(),
        ms in prop::collection::vec(mutation(), 0..3),
        garbage in prop::collection::vec(any::<u8>(), 0..160),
    ) {
        let p = Pointer { name: PackageName::parse("@s/p").unwrap(), seq, expires_at: seq, record: BlobId::of(b"r") };
        let value = mutate(p.sign(&signing_key(3)).to_bytes(), &ms);
        for v in [&value, &garbage] {
            if let Ok(ok) = pointer::validate(&key, v, now) {
                prop_assert!(ok.get().expires_at > now);
                let (name, signer) = pointer::parse_dht_key(&key).unwrap();
                prop_assert_eq!(&ok.get().name, &name);
                prop_assert_eq!(ok.signer(), &signer);
            }
        }
        let _ = pointer::parse_dht_key(&garbage);
    }
}

proptest! {
    /// Advisories (R35): whatever a mutated encoding or a mutated signed wire form decodes to
    /// is canonical, and only an unexpired advisory signed by the key's operator for the key's
    /// package validates as a DHT value.
    #[test]
    fn advisories_accept_only_canonical_bytes(
        seq in any::<u64>(),
        at in 0u64..u64::MAX / 2,
        now in any::<u64>(),
        withdrawn in any::<bool>(),
        range in prop_oneof![Just("1.0.1"), Just(">=1.0.1 <1.0.4 || 2.0.3"), Just("*")],
        ms in prop::collection::vec(mutation(), 1..4),
    ) {
        use crate::advisory::{self, Advisory, DEFAULT_LIFETIME_MS, Kind};
        let a = Advisory {
            name: PackageName::parse("@s/p").unwrap(),
            range: range.into(),
            kind: Kind::Compromised,
            reason: "stolen token".into(),
            url: Some("https://example.org/x".into()),
            seq,
            at_ms: at,
            expires_at_ms: at + DEFAULT_LIFETIME_MS,
            withdrawn,
        };
        let b = mutate(a.try_encode().unwrap(), &ms);
        if let Ok(d) = Advisory::decode(&b) {
            prop_assert_eq!(d.try_encode().unwrap(), b.clone());
        }
        let key = signing_key(4);
        let signed = sign_raw(&key, Advisory::DOMAIN, b.clone());
        if let Ok(v) = signed.verify_as::<Advisory>() {
            prop_assert_eq!(v.get().try_encode().unwrap(), b);
        }
        prop_assert!(signed.verify().is_err(), "an advisory signature is not a record's");
        let k = advisory::dht_key(&a.name, &PeerId::from_public_key(&key.verifying_key()));
        let wire = mutate(a.sign(&key).to_bytes(), &ms);
        if let Ok(ok) = advisory::validate(&k, &wire, now) {
            prop_assert!(ok.get().expires_at_ms > now);
            prop_assert_eq!(&ok.get().name, &a.name);
        }
    }
}

// ---- npm registry keys and timestamps ----------------------------------------------------

fn real_key_der() -> String {
    use base64::Engine as _;
    use p256::pkcs8::EncodePublicKey as _;
    let sk = p256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap();
    base64::engine::general_purpose::STANDARD
        .encode(sk.verifying_key().to_public_key_der().unwrap().as_bytes())
}

fn timestamp() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9+-]{4}-[0-9+]{2}-[0-9]{2}([Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?(Z|[+-][0-9]{2}:[0-9]{2})?)?",
        "2025-01-29T00:00:00\\.[0-9]{1,3}[é€😀]{1,3}[0-9Z]?",
    ]
}

proptest! {
    #[test]
    fn registry_keys_documents_never_panic(
        j in json_value(),
        keyid in word(),
        keytype in prop_oneof![Just(Value::from("ecdsa-sha2-nistp256")), json_value()],
        key in prop_oneof![Just(Value::from(real_key_der())), json_value()],
        expires in prop_oneof![timestamp().prop_map(Value::from), json_value()],
        sig in prop_oneof![any::<String>(), "[A-Za-z0-9+/]{0,100}={0,2}"],
        published in timestamp(),
    ) {
        let _ = npm_sig::Keys::parse(&serde_json::to_vec(&j).unwrap());
        let doc = json!({"keys": [j, {"keyid": keyid, "keytype": keytype, "key": key, "expires": expires}]});
        if let Ok(keys) = npm_sig::Keys::parse(&serde_json::to_vec(&doc).unwrap()) {
            let sigs = json!([{"keyid": keyid, "sig": sig}]);
            prop_assert!(keys.verify("a", "1.0.0", "sha512-x", Some(&sigs), Some(&published)).is_err());
        }
    }

    #[test]
    fn timestamps_never_panic(s in timestamp()) {
        let _ = npm_sig::parse_iso8601_ms(&s);
    }

    #[test]
    fn timestamps_decode_to_the_right_instant(
        y in 1970i64..2200, mo in 1i64..=12, d in 1i64..=28,
        h in 0i64..24, mi in 0i64..60, s in 0i64..60, ms in 0i64..1000,
        off in -(14i64 * 60)..=(14 * 60),
    ) {
        let base = ((days_naive(y, mo, d) * 24 + h) * 60 + mi) * 60_000 + s * 1000;
        let sign = if off < 0 { '-' } else { '+' };
        let (oh, om) = (off.abs() / 60, off.abs() % 60);
        let date = format!("{y:04}-{mo:02}-{d:02}");
        let cases = [
            (format!("{date}T{h:02}:{mi:02}:{s:02}.{ms:03}Z"), base + ms),
            (format!("{date}T{h:02}:{mi:02}:{s:02}Z"), base),
            (format!("{date} {h:02}:{mi:02}:{s:02}.{ms:03}123456"), base + ms),
            (format!("{date}T{h:02}:{mi:02}:{s:02}{sign}{oh:02}:{om:02}"), base - off * 60_000),
            (date.clone(), days_naive(y, mo, d) * 86_400_000),
        ];
        for (text, want) in cases {
            prop_assert_eq!(npm_sig::parse_iso8601_ms(&text), Some(want), "{}", text);
        }
    }
}
