//! Signed node reports: what an operator's node did in the last window and since it started.
//!
//! Every node signs a [`Report`] every `report_interval` and gossips it; every node keeps the
//! newest report of each operator and adds them up into the network view. A report is a few
//! fixed fields and a sorted list of named counters ([`Report::values`]), so new counters can be
//! added without a new format; the names in use are the `KEY_*` constants and the
//! `window.`/`total.` families below (docs/protocol.md lists them all).
//!
//! Reports are ordered per operator by `(at_ms, seq)`: a report is newer than another from the
//! same operator when it was made later, or at the same millisecond with a higher `seq`. A
//! report that is not newer than the one held is a replay or a rollback and is refused.

use std::collections::BTreeMap;

use crate::record::{RecordError, Signable};

/// Domain of report signatures.
pub const REPORT_DOMAIN: &[u8] = b"open-registry/report/v1\n";
/// The encoding's format byte.
pub const REPORT_FORMAT: u8 = 1;
/// The largest encoded report body accepted.
pub const MAX_REPORT_LEN: usize = 8 * 1024;
/// Most counters one report carries.
pub const MAX_VALUES: usize = 256;
/// Longest counter name and longest version string, in bytes.
pub const MAX_KEY_LEN: usize = 64;

/// Requests the gateway answered in the window, by route class: `window.requests.packument`,
/// `.version`, `.tarball`, `.other`; the same since start under `total.`.
pub const REQUEST_KINDS: [&str; 4] = ["packument", "version", "tarball", "other"];
/// Where answers came from: `window.source.store` (memory or disk), `.peer`, `.upstream`,
/// `.node` (errors, keys, records, status); the same since start under `total.`.
pub const SOURCES: [&str; 4] = ["store", "peer", "upstream", "node"];
/// Error classes: `window.errors.client` (4xx answers), `.server` (5xx answers), `.upstream`
/// (failed upstream requests), `.peer` (failed peer fetches), `.integrity` (bytes refused),
/// `.store` (disk failures); the same since start under `total.`.
pub const ERROR_CLASSES: [&str; 6] = ["client", "server", "upstream", "peer", "integrity", "store"];

/// Body bytes served in the window (`total.bytes` since start).
pub const KEY_WINDOW_BYTES: &str = "window.bytes";
/// Body bytes served since start.
pub const KEY_TOTAL_BYTES: &str = "total.bytes";
/// Packages whose packument the node holds.
pub const KEY_PACKUMENTS: &str = "cached.packuments";
/// Tarballs the node holds.
pub const KEY_TARBALLS: &str = "cached.tarballs";
/// Bytes of the node's store.
pub const KEY_STORE_BYTES: &str = "store.bytes";
/// Packages pinned.
pub const KEY_PINS: &str = "pins";
/// Peers connected when the report was made.
pub const KEY_PEERS: &str = "peers";
/// Changes-feed sequences the node is behind the upstream (absent without a feed).
pub const KEY_LAG_SEQ: &str = "lag.seq";
/// Seconds the node is behind the upstream: since it last caught up with the feed, or the
/// age of its least recently confirmed pinned packument (absent when neither applies).
pub const KEY_LAG_SECONDS: &str = "lag.seconds";
/// 1 while the upstream's circuit breaker is open (the upstream does not answer).
pub const KEY_UPSTREAM_DOWN: &str = "upstream.down";
/// The sequence of the operator's current signed statement (absent without one).
pub const KEY_STATEMENT_SEQ: &str = "statement.seq";

/// One window of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// When the report was made (unix ms).
    pub at_ms: u64,
    /// Reports made by this process so far, this one included (orders reports made in the
    /// same millisecond).
    pub seq: u64,
    /// When the node started (unix ms); `at_ms - started_ms` is its uptime.
    pub started_ms: u64,
    /// The window's length (the node's `report_interval`, in ms): the `window.` counters cover
    /// `(at_ms - window_ms, at_ms]`, and a report is stale after two windows.
    pub window_ms: u64,
    /// The node software's version.
    pub version: String,
    /// Named counters, sorted by name (see the module docs).
    pub values: BTreeMap<String, u64>,
}

impl Report {
    /// Whether this report is newer than `other` from the same operator.
    pub fn newer_than(&self, other: &Report) -> bool {
        (self.at_ms, self.seq) > (other.at_ms, other.seq)
    }

    /// The counter `key`, 0 when absent.
    pub fn value(&self, key: &str) -> u64 {
        self.values.get(key).copied().unwrap_or(0)
    }

    /// The sum of `prefix.<name>` over `names`.
    pub fn sum(&self, prefix: &str, names: &[&str]) -> u64 {
        names
            .iter()
            .map(|n| self.value(&format!("{prefix}.{n}")))
            .fold(0, u64::saturating_add)
    }

    /// The node's uptime when it made the report, in seconds.
    pub fn uptime_secs(&self) -> u64 {
        self.at_ms.saturating_sub(self.started_ms) / 1000
    }

    /// Checks the limits the encoding enforces, so that a node never signs what others refuse.
    pub fn check(&self) -> Result<(), RecordError> {
        let bad = |s: String| RecordError::Malformed(format!("report: {s}"));
        if self.version.len() > MAX_KEY_LEN {
            return Err(bad(format!("version is over {MAX_KEY_LEN} bytes")));
        }
        if self.values.len() > MAX_VALUES {
            return Err(bad(format!("more than {MAX_VALUES} values")));
        }
        for k in self.values.keys() {
            if !valid_key(k) {
                return Err(bad(format!("invalid value name {k:?}")));
            }
        }
        if self.started_ms > self.at_ms {
            return Err(bad("started after it was made".into()));
        }
        if self.window_ms == 0 {
            return Err(bad("the window is empty".into()));
        }
        Ok(())
    }
}

/// A counter name: 1 to [`MAX_KEY_LEN`] bytes of `a-z`, `0-9`, `_` and `.`.
fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_KEY_LEN
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

impl Signable for Report {
    const DOMAIN: &'static [u8] = REPORT_DOMAIN;

    /// Format byte 1; `at_ms`, `seq`, `started_ms`, `window_ms` as big-endian u64; the version
    /// as a u8 length and its bytes; the number of values as a big-endian u16; each value as a
    /// u8 name length, the name, and a big-endian u64, names in ascending byte order. Call
    /// [`Report::check`] first: a report outside the limits encodes to something decoders
    /// refuse.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.values.len() * 32);
        out.push(REPORT_FORMAT);
        for n in [self.at_ms, self.seq, self.started_ms, self.window_ms] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        put_str8(&mut out, &self.version);
        out.extend_from_slice(&(self.values.len().min(u16::MAX as usize) as u16).to_be_bytes());
        for (k, v) in &self.values {
            put_str8(&mut out, k);
            out.extend_from_slice(&v.to_be_bytes());
        }
        out
    }

    fn decode(b: &[u8]) -> Result<Self, RecordError> {
        let bad = |s: &str| RecordError::Malformed(format!("report: {s}"));
        if b.len() > MAX_REPORT_LEN {
            return Err(bad("too large"));
        }
        let mut r = b;
        let mut take = |n: usize| -> Result<&[u8], RecordError> {
            if r.len() < n {
                return Err(bad("truncated"));
            }
            let (a, rest) = r.split_at(n);
            r = rest;
            Ok(a)
        };
        if take(1)? != [REPORT_FORMAT] {
            return Err(bad("unknown format"));
        }
        let mut u64s = [0u64; 4];
        for n in &mut u64s {
            *n = u64::from_be_bytes(take(8)?.try_into().expect("8 bytes"));
        }
        let [at_ms, seq, started_ms, window_ms] = u64s;
        let len = take(1)?[0] as usize;
        let version = std::str::from_utf8(take(len)?)
            .map_err(|_| bad("version is not UTF-8"))?
            .to_owned();
        let n = u16::from_be_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
        if n > MAX_VALUES {
            return Err(bad("too many values"));
        }
        let mut values = BTreeMap::new();
        let mut last: Option<String> = None;
        for _ in 0..n {
            let len = take(1)?[0] as usize;
            let key = std::str::from_utf8(take(len)?).map_err(|_| bad("name is not UTF-8"))?;
            if !valid_key(key) {
                return Err(bad("invalid value name"));
            }
            if last.as_deref().is_some_and(|l| l >= key) {
                return Err(bad("values are not sorted and unique"));
            }
            let v = u64::from_be_bytes(take(8)?.try_into().expect("8 bytes"));
            values.insert(key.to_owned(), v);
            last = Some(key.to_owned());
        }
        if !r.is_empty() {
            return Err(bad("trailing bytes"));
        }
        let report = Report {
            at_ms,
            seq,
            started_ms,
            window_ms,
            version,
            values,
        };
        report.check()?;
        Ok(report)
    }
}

/// A u8 length and the bytes (at most 255; [`Report::check`] keeps strings shorter).
fn put_str8(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u8::MAX as usize)];
    out.push(b.len() as u8);
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Signed;
    use ed25519_dalek::SigningKey;

    fn sample() -> Report {
        Report {
            at_ms: 1_764_547_200_000,
            seq: 7,
            started_ms: 1_764_540_000_000,
            window_ms: 300_000,
            version: "0.1.0".into(),
            values: [
                ("window.requests.tarball", 12),
                ("total.requests.tarball", 40),
                ("cached.packuments", 3),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        }
    }

    #[test]
    fn round_trips_signed() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let r = sample();
        let wire = r.sign(&key).to_bytes();
        let v = Signed::from_bytes(&wire)
            .unwrap()
            .verify_as::<Report>()
            .unwrap();
        assert_eq!(v.get(), &r);
        assert_eq!(v.get().uptime_secs(), 7200);
        assert_eq!(v.get().sum("window.requests", &REQUEST_KINDS), 12);
    }

    #[test]
    fn signatures_of_other_kinds_do_not_verify_as_reports() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let mut signed = sample().sign(&key);
        // The same body under the popularity domain is a different message.
        signed.signature = key
            .sign_with_domain(crate::popularity::POPULARITY_DOMAIN, &signed.body)
            .to_bytes();
        assert_eq!(
            signed.verify_as::<Report>().unwrap_err(),
            RecordError::BadSignature
        );
    }

    trait SignWithDomain {
        fn sign_with_domain(&self, d: &[u8], b: &[u8]) -> ed25519_dalek::Signature;
    }
    impl SignWithDomain for SigningKey {
        fn sign_with_domain(&self, d: &[u8], b: &[u8]) -> ed25519_dalek::Signature {
            use ed25519_dalek::Signer as _;
            self.sign(&crate::record::signed_message(d, b))
        }
    }

    #[test]
    fn refuses_what_is_not_canonical_or_too_big() {
        let body = sample().encode();
        // Truncated, trailing bytes, unknown format.
        assert!(Report::decode(&body[..body.len() - 1]).is_err());
        let mut long = body.clone();
        long.push(0);
        assert!(Report::decode(&long).is_err());
        let mut other = body.clone();
        other[0] = 2;
        assert!(Report::decode(&other).is_err());
        // Out of order names.
        let mut r = sample();
        r.values.clear();
        let mut b = r.encode();
        b.truncate(b.len() - 2);
        b.extend_from_slice(&2u16.to_be_bytes());
        for k in ["b", "a"] {
            put_str8(&mut b, k);
            b.extend_from_slice(&1u64.to_be_bytes());
        }
        assert!(
            Report::decode(&b)
                .unwrap_err()
                .to_string()
                .contains("sorted")
        );
        // Oversized.
        assert!(Report::decode(&vec![1; MAX_REPORT_LEN + 1]).is_err());
        // Bad names and limits are caught before signing.
        let mut r = sample();
        r.values.insert("Upper".into(), 1);
        assert!(r.check().is_err());
        let mut r = sample();
        r.values = (0..=MAX_VALUES).map(|i| (format!("k{i}"), 1)).collect();
        assert!(r.check().is_err());
        let mut r = sample();
        r.window_ms = 0;
        assert!(r.check().is_err());
    }

    #[test]
    fn orders_by_time_then_sequence() {
        let a = sample();
        let mut b = sample();
        assert!(!b.newer_than(&a), "the same report is a replay");
        b.seq += 1;
        assert!(b.newer_than(&a));
        let mut c = sample();
        c.at_ms += 1;
        c.seq = 0;
        assert!(c.newer_than(&b));
    }
}
