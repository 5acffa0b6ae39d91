//! The test vector published in docs/protocol.md, recomputed: if the encoding, the signed
//! message or the id formats change, this fails until the documentation says the same.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;

use crate::record::{Record, VersionEntry};
use crate::{BlobId, Integrity, PackageName, PeerId};

const DOC: &str = include_str!("../../docs/protocol.md");

/// The `key: value` lines of the ```test-vector block, in order.
fn vector_lines() -> Vec<(String, String)> {
    let start = DOC
        .find("```test-vector\n")
        .expect("docs/protocol.md has a test vector block");
    let block = &DOC[start + "```test-vector\n".len()..];
    let block = &block[..block.find("```").expect("the block is closed")];
    block
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn documented_vector_matches_the_code() {
    let lines = vector_lines();
    let get = |k: &str| {
        lines
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("vector has no {k:?} line"))
    };
    let seed: [u8; 32] = hex::decode(get("seed")).unwrap().try_into().unwrap();
    let key = SigningKey::from_bytes(&seed);
    assert_eq!(
        hex::encode(key.verifying_key().to_bytes()),
        get("public key")
    );
    assert_eq!(
        PeerId::from_public_key(&key.verifying_key()).to_string(),
        get("peer id")
    );
    let packument = BlobId::of(br#"{"name":"@demo/pkg"}"#);
    assert_eq!(packument.to_string(), get("packument"));
    let mut versions = BTreeMap::new();
    for (k, v) in &lines {
        if k != "version" {
            continue;
        }
        let parts: Vec<&str> = v.split_whitespace().collect();
        let tarball = match parts[2] {
            "-" => None,
            id => Some(id.parse::<BlobId>().unwrap()),
        };
        versions.insert(
            parts[0].to_owned(),
            VersionEntry {
                integrity: parts[1].to_owned(),
                tarball,
            },
        );
    }
    assert_eq!(
        versions["1.0.0"].integrity,
        Integrity::sha512_sri(b"hello world")
    );
    assert_eq!(versions["1.0.0"].tarball, Some(BlobId::of(b"hello world")));
    let record = Record {
        name: PackageName::parse(&get("name")).unwrap(),
        seq: get("seq").parse().unwrap(),
        fetched_at: get("fetched_at").parse().unwrap(),
        expires_at: get("expires_at").parse().unwrap(),
        packument,
        versions,
    };
    assert_eq!(hex::encode(record.encode()), get("record"));
    let signed = record.sign(&key);
    assert_eq!(hex::encode(signed.signature), get("signature"));
    // And the documented bytes verify on their own.
    let doc_signed = crate::record::Signed {
        signer: PeerId::from_public_key(&key.verifying_key()),
        signature: hex::decode(get("signature")).unwrap().try_into().unwrap(),
        body: hex::decode(get("record")).unwrap(),
    };
    assert_eq!(doc_signed.verify().unwrap().get(), &record);
}

/// The `key: value` lines of the fenced block named `name`.
fn block_lines(name: &str) -> Vec<(String, String)> {
    let fence = format!("```{name}\n");
    let start = DOC
        .find(&fence)
        .unwrap_or_else(|| panic!("docs/protocol.md has a {name} block"));
    let block = &DOC[start + fence.len()..];
    let block = &block[..block.find("```").expect("the block is closed")];
    block
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The statement of the documented statement vector.
const VECTOR_STATEMENT: &str = "[operator]\nname = \"Example Hosting Co-op\"\n\n[[month]]\nmonth = \"2026-11\"\ncurrency = \"EUR\"\ncost = [\n  { provider = \"Hetzner\", item = \"CX32 server\", amount = \"6.80\" },\n]\ndonations = [\n  { source = \"OpenCollective\", amount = \"25.00\" },\n]\nspent = [\n  { on = \"Hetzner CX32 server\", amount = \"6.80\" },\n]\n";

#[test]
fn documented_report_and_statement_vectors_match_the_code() {
    use crate::record::Signable as _;
    use crate::report::Report;
    use crate::statement::{SignedStatement, Statement};

    let seed: [u8; 32] = (0u8..32).collect::<Vec<u8>>().try_into().unwrap();
    let key = SigningKey::from_bytes(&seed);
    let report = Report {
        at_ms: 1_764_547_200_000,
        seq: 3,
        started_ms: 1_764_540_000_000,
        window_ms: 300_000,
        version: "0.1.0".into(),
        values: [
            ("cached.packuments", 2),
            ("total.requests.packument", 5),
            ("window.requests.packument", 5),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    };
    let statement = SignedStatement {
        seq: 1_764_547_200_000,
        at_ms: 1_764_547_200_000,
        statement: Statement::parse(VECTOR_STATEMENT).unwrap(),
    };
    assert_eq!(
        statement.statement.to_toml(),
        VECTOR_STATEMENT,
        "the text is canonical"
    );
    assert!(
        DOC.contains(&format!("```toml\n{VECTOR_STATEMENT}```")),
        "docs/protocol.md shows the statement"
    );
    for (block, body, signature) in [
        (
            "report-vector",
            report.encode(),
            report.sign(&key).signature,
        ),
        (
            "statement-vector",
            statement.encode(),
            statement.sign(&key).signature,
        ),
    ] {
        let lines = block_lines(block);
        let get = |k: &str| {
            lines
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{block} has no {k:?} line"))
        };
        assert_eq!(hex::encode(&body), get("body"), "{block}");
        assert_eq!(hex::encode(signature), get("signature"), "{block}");
    }
}

/// The advisory of the documented advisory vector (docs/protocol.md, section 9).
fn vector_advisory() -> crate::advisory::Advisory {
    use crate::advisory::{Advisory, DEFAULT_LIFETIME_MS, Kind};
    Advisory {
        name: PackageName::parse("left-pad").unwrap(),
        range: "1.0.1".into(),
        kind: Kind::Malware,
        reason: "stolen token publish".into(),
        url: Some("https://example.org/advisories/1".into()),
        seq: 1_764_547_200_000,
        at_ms: 1_764_547_200_000,
        expires_at_ms: 1_764_547_200_000 + DEFAULT_LIFETIME_MS,
        withdrawn: false,
    }
}

#[test]
fn documented_advisory_vector_matches_the_code() {
    use crate::advisory::{self, Advisory};
    use crate::record::Signable as _;

    let seed: [u8; 32] = (0u8..32).collect::<Vec<u8>>().try_into().unwrap();
    let key = SigningKey::from_bytes(&seed);
    let a = vector_advisory();
    let body = a.try_encode().unwrap();
    let signed = a.sign(&key);
    let lines = block_lines("advisory-vector");
    let get = |k: &str| {
        lines
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("advisory-vector has no {k:?} line"))
    };
    assert_eq!(hex::encode(&body), get("body"));
    assert_eq!(hex::encode(signed.signature), get("signature"));
    let signer = PeerId::from_public_key(&key.verifying_key());
    assert_eq!(
        String::from_utf8(advisory::dht_key(&a.name, &signer)).unwrap(),
        get("dht key")
    );
    // The documented bytes verify on their own, as an advisory and as nothing else.
    let doc = crate::record::Signed {
        signer,
        signature: hex::decode(get("signature")).unwrap().try_into().unwrap(),
        body: hex::decode(get("body")).unwrap(),
    };
    assert_eq!(doc.verify_as::<Advisory>().unwrap().get(), &a);
    assert!(doc.verify().is_err(), "an advisory is not a record");
    assert!(a.covers("1.0.1") && !a.covers("1.0.0"));
}
