//! Signed advisories: an operator's statement that versions of a package must not be served.
//!
//! An [`Advisory`] says: "versions of `name` in the npm semver `range` are `kind` (malware, a
//! compromised release, a vulnerability) because `reason` (see `url`); this is my `seq`-th
//! statement about this package; believe it until `expires_at_ms`". A later advisory of the
//! same operator for the same package replaces the earlier one, so one operator has at most one
//! advisory in force per package (a range such as `1.0.1 || 2.0.3` covers several releases);
//! a signed withdrawal (`withdrawn: true`) replaces it with nothing.
//!
//! A node enforces an advisory only when enough operators it trusts sign one covering the
//! version (the quorum lives in the node, not here). This module is the format: a canonical
//! binary encoding (decode refuses anything else), bounded in size, signed under
//! [`ADVISORY_DOMAIN`], and the DHT key each operator publishes its advisory for a package
//! under ([`dht_key`], checked by [`validate`]). docs/protocol.md section 9 specifies it with a
//! test vector.

use std::fmt;

use nodejs_semver::{Range, Version};
use serde::{Deserialize, Serialize};

use crate::name::PackageName;
use crate::peer::PeerId;
use crate::record::{RecordError, Signable, Signed, Verified};

/// Domain of advisory signatures.
pub const ADVISORY_DOMAIN: &[u8] = b"open-registry/advisory/v1\n";
/// The encoding's format byte.
pub const ADVISORY_FORMAT: u8 = 1;
/// Longest range, in bytes.
pub const MAX_RANGE_LEN: usize = 256;
/// Longest reason, in bytes.
pub const MAX_REASON_LEN: usize = 500;
/// Longest URL, in bytes.
pub const MAX_URL_LEN: usize = 512;
/// The largest encoded advisory body accepted.
pub const MAX_ADVISORY_LEN: usize = 2048;
/// How long an advisory is valid unless its signer says otherwise: 90 days. Operators renew
/// theirs by signing again.
pub const DEFAULT_LIFETIME_MS: u64 = 90 * 24 * 3600 * 1000;
/// The longest validity an advisory may claim: 400 days.
pub const MAX_LIFETIME_MS: u64 = 400 * 24 * 3600 * 1000;
/// Prefix of the DHT keys holding advisories.
pub const KEY_PREFIX: &str = "/open-registry/advisories/v1/";

/// What is wrong with the covered versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The release carries a malicious payload.
    Malware,
    /// The release was published by someone who should not have (a stolen account or token).
    Compromised,
    /// The release has a vulnerability serious enough to withhold it.
    Vulnerable,
}

impl Kind {
    /// Every kind, in encoding order.
    pub const ALL: [Kind; 3] = [Kind::Malware, Kind::Compromised, Kind::Vulnerable];

    /// The encoded byte.
    pub fn byte(self) -> u8 {
        match self {
            Kind::Malware => 1,
            Kind::Compromised => 2,
            Kind::Vulnerable => 3,
        }
    }

    /// The kind of an encoded byte.
    pub fn from_byte(b: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.byte() == b)
    }

    /// The lowercase word (`malware`, `compromised`, `vulnerable`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Malware => "malware",
            Kind::Compromised => "compromised",
            Kind::Vulnerable => "vulnerable",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| format!("{s:?} is not malware, compromised or vulnerable"))
    }
}

/// An operator's advisory about one package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advisory {
    /// The package.
    pub name: PackageName,
    /// The versions covered: an npm semver range (`1.0.1`, `>=1.0.1 <1.0.4`, `1.0.1 || 2.0.3`).
    pub range: String,
    /// What is wrong with them.
    pub kind: Kind,
    /// Why, in a sentence (at most [`MAX_REASON_LEN`] bytes).
    pub reason: String,
    /// Where the evidence is (an `http://` or `https://` URL).
    pub url: Option<String>,
    /// Strictly increasing per operator and package.
    pub seq: u64,
    /// When it was signed (unix ms).
    pub at_ms: u64,
    /// When it stops being valid (unix ms); after that it is refused.
    pub expires_at_ms: u64,
    /// A signed withdrawal: the operator no longer holds these versions back.
    pub withdrawn: bool,
}

fn bad(s: impl fmt::Display) -> RecordError {
    RecordError::Malformed(format!("advisory: {s}"))
}

/// Whether `u` is an acceptable advisory URL: `http://` or `https://` and a host, printable
/// ASCII without spaces, at most [`MAX_URL_LEN`] bytes.
pub fn valid_url(u: &str) -> bool {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"));
    u.len() <= MAX_URL_LEN
        && rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
        && u.bytes().all(|b| b.is_ascii_graphic())
}

/// Parses an npm semver range as advisories use it: trimmed, non-empty, at most
/// [`MAX_RANGE_LEN`] bytes.
pub fn parse_range(range: &str) -> Result<Range, RecordError> {
    if range.is_empty() || range.len() > MAX_RANGE_LEN || range.trim() != range {
        return Err(bad(format!(
            "the range must be 1 to {MAX_RANGE_LEN} bytes without surrounding spaces"
        )));
    }
    Range::parse(range).map_err(|e| bad(format!("{range:?} is not an npm semver range: {e}")))
}

impl Advisory {
    /// Checks everything the encoding and the acceptance rules require of the content, so that
    /// a node never signs what others refuse: a valid range, a reason of at most
    /// [`MAX_REASON_LEN`] bytes without control characters, a valid URL if any, and an expiry
    /// after `at_ms` and at most [`MAX_LIFETIME_MS`] after it.
    pub fn check(&self) -> Result<(), RecordError> {
        parse_range(&self.range)?;
        if self.reason.len() > MAX_REASON_LEN {
            return Err(bad(format!("the reason is over {MAX_REASON_LEN} bytes")));
        }
        if self.reason.chars().any(char::is_control) {
            return Err(bad("the reason holds control characters"));
        }
        if let Some(u) = &self.url
            && !valid_url(u)
        {
            return Err(bad(format!(
                "the URL {u:.80?} is not an http(s) URL of at most {MAX_URL_LEN} bytes"
            )));
        }
        if self.expires_at_ms <= self.at_ms {
            return Err(bad("it expires before it was made"));
        }
        if self.expires_at_ms - self.at_ms > MAX_LIFETIME_MS {
            return Err(bad("it claims to be valid for more than 400 days"));
        }
        Ok(())
    }

    /// Whether `version` (an exact version) is in the range. Prerelease versions count: a
    /// range covers `1.0.1-rc.1` when the version satisfies it with prereleases included.
    /// Versions that are not semver are never covered.
    pub fn covers(&self, version: &str) -> bool {
        let (Ok(range), Ok(v)) = (parse_range(&self.range), Version::parse(version)) else {
            return false;
        };
        range.satisfies_with_prerelease(&v, true)
    }

    /// Whether this advisory is in force at `now` as far as its signer says: not withdrawn,
    /// not expired.
    pub fn active(&self, now_ms: u64) -> bool {
        !self.withdrawn && now_ms < self.expires_at_ms
    }

    /// The canonical encoding, or why the advisory does not fit it ([`Advisory::check`]).
    pub fn try_encode(&self) -> Result<Vec<u8>, RecordError> {
        self.check()?;
        Ok(Signable::encode(self))
    }
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

impl Signable for Advisory {
    const DOMAIN: &'static [u8] = ADVISORY_DOMAIN;

    /// Format byte 1; the name, the range, as u16 big-endian length and bytes; the kind byte
    /// (1 malware, 2 compromised, 3 vulnerable); the withdrawn byte (0 or 1); the reason and
    /// the URL (empty: none) as u16 length and bytes; `seq`, `at_ms`, `expires_at_ms` as
    /// big-endian u64. Call [`Advisory::check`] first (or [`Advisory::try_encode`]): an
    /// advisory outside the rules encodes to bytes decoders refuse.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.reason.len());
        out.push(ADVISORY_FORMAT);
        put_str16(&mut out, self.name.as_str());
        put_str16(&mut out, &self.range);
        out.push(self.kind.byte());
        out.push(u8::from(self.withdrawn));
        put_str16(&mut out, &self.reason);
        put_str16(&mut out, self.url.as_deref().unwrap_or(""));
        for n in [self.seq, self.at_ms, self.expires_at_ms] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out
    }

    fn decode(b: &[u8]) -> Result<Self, RecordError> {
        if b.len() > MAX_ADVISORY_LEN {
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
        if take(1)? != [ADVISORY_FORMAT] {
            return Err(bad("unknown format"));
        }
        let mut str16 = |what: &str| -> Result<String, RecordError> {
            let n = u16::from_be_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
            std::str::from_utf8(take(n)?)
                .map(str::to_owned)
                .map_err(|_| bad(format!("the {what} is not UTF-8")))
        };
        let name = str16("name")?;
        let name = PackageName::parse(&name).map_err(bad)?;
        let range = str16("range")?;
        let (kind, withdrawn) = {
            let kw = take(2)?;
            let kind = Kind::from_byte(kw[0]).ok_or_else(|| bad("unknown kind"))?;
            let withdrawn = match kw[1] {
                0 => false,
                1 => true,
                _ => return Err(bad("the withdrawn flag is not 0 or 1")),
            };
            (kind, withdrawn)
        };
        let mut str16 = |what: &str| -> Result<String, RecordError> {
            let n = u16::from_be_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
            std::str::from_utf8(take(n)?)
                .map(str::to_owned)
                .map_err(|_| bad(format!("the {what} is not UTF-8")))
        };
        let reason = str16("reason")?;
        let url = Some(str16("url")?).filter(|u| !u.is_empty());
        let mut u64s = [0u64; 3];
        for n in &mut u64s {
            *n = u64::from_be_bytes(take(8)?.try_into().expect("8 bytes"));
        }
        if !r.is_empty() {
            return Err(bad("trailing bytes"));
        }
        let [seq, at_ms, expires_at_ms] = u64s;
        let a = Advisory {
            name,
            range,
            kind,
            reason,
            url,
            seq,
            at_ms,
            expires_at_ms,
            withdrawn,
        };
        a.check()?;
        Ok(a)
    }
}

impl fmt::Display for Advisory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.withdrawn {
            "withdrawn"
        } else {
            self.kind.as_str()
        };
        write!(f, "{}@{} ({what}, #{})", self.name, self.range, self.seq)
    }
}

/// The DHT key under which `signer` publishes its advisory for `name`.
pub fn dht_key(name: &PackageName, signer: &PeerId) -> Vec<u8> {
    format!("{KEY_PREFIX}{name}/{signer}").into_bytes()
}

/// Parses a DHT key back into (name, signer).
pub fn parse_dht_key(key: &[u8]) -> Option<(PackageName, PeerId)> {
    let s = std::str::from_utf8(key).ok()?.strip_prefix(KEY_PREFIX)?;
    let (name, signer) = s.rsplit_once('/')?;
    Some((PackageName::parse(name).ok()?, signer.parse().ok()?))
}

/// Why an advisory DHT value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdvisoryError {
    #[error("not an advisory key")]
    Key,
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("advisory is signed by {found}, but stored under {expected}'s key")]
    WrongSigner { expected: PeerId, found: PeerId },
    #[error("advisory is for {found}, but stored under {expected}")]
    WrongName { expected: String, found: String },
    #[error("advisory expired")]
    Expired,
}

/// Validates a DHT key/value pair: the value must be an advisory correctly signed by the
/// operator named in the key, for the package named in the key, unexpired at `now` (unix ms).
pub fn validate(key: &[u8], value: &[u8], now: u64) -> Result<Verified<Advisory>, AdvisoryError> {
    let (name, signer) = parse_dht_key(key).ok_or(AdvisoryError::Key)?;
    if value.len() > MAX_ADVISORY_LEN + 97 {
        return Err(AdvisoryError::Record(bad("too large")));
    }
    let signed = Signed::from_bytes(value)?;
    if signed.signer != signer {
        return Err(AdvisoryError::WrongSigner {
            expected: signer,
            found: signed.signer,
        });
    }
    let v = signed.verify_as::<Advisory>()?;
    if v.get().name != name {
        return Err(AdvisoryError::WrongName {
            expected: name.to_string(),
            found: v.get().name.to_string(),
        });
    }
    if v.get().expires_at_ms <= now {
        return Err(AdvisoryError::Expired);
    }
    Ok(v)
}

/// A short id of a signed advisory: the first 16 hex digits of the BLAKE3 hash of its signed
/// wire bytes (for `advisory rm --id` and listings).
pub fn short_id(wire: &[u8]) -> String {
    hex::encode(&blake3::hash(wire).as_bytes()[..8])
}

/// One operator's advisory as the node lists it (`GET /-/open-registry/advisories`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvisoryView {
    /// [`short_id`] of the signed advisory.
    pub id: String,
    /// The signer.
    pub operator: String,
    /// Whether this node trusts the signer (its own operator included); only trusted
    /// operators' advisories count towards the quorum.
    pub trusted: bool,
    /// Whether the signer is this node's operator.
    pub this_node: bool,
    /// The package.
    pub name: String,
    /// The range.
    pub range: String,
    /// The kind.
    pub kind: Kind,
    /// The reason.
    pub reason: String,
    /// The URL, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The sequence.
    pub seq: u64,
    /// When it was signed (unix ms).
    pub at_ms: u64,
    /// When it expires (unix ms).
    pub expires_at_ms: u64,
    /// Whether it is a withdrawal.
    pub withdrawn: bool,
    /// The signed wire form, base64, so anyone can check the signature.
    pub signed: String,
}

/// Advisories about one package and range, and whether the quorum is met.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvisoryGroup {
    /// The package.
    pub name: String,
    /// The range some operator's advisory names.
    pub range: String,
    /// Whether at least `threshold` trusted operators' advisories cover the whole range: its
    /// versions are withheld. Otherwise it is pending.
    pub in_force: bool,
    /// The trusted operators' active advisories that cover the whole range (their count is
    /// measured against the threshold).
    pub signers: Vec<AdvisoryView>,
}

/// `GET /-/open-registry/advisories`: in force and pending advisories, and with `all=1` the
/// untrusted operators' ones and the withdrawals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AdvisoryList {
    /// Trusted operators that must sign before an advisory is in force.
    pub threshold: usize,
    /// In force first, then pending; by name and range.
    pub advisories: Vec<AdvisoryGroup>,
    /// With `all=1`: active advisories of operators this node does not trust (never enforced).
    #[serde(default)]
    pub untrusted: Vec<AdvisoryView>,
    /// With `all=1`: withdrawals held (until they expire).
    #[serde(default)]
    pub withdrawn: Vec<AdvisoryView>,
    /// Gossiped advisories refused since start, by reason.
    #[serde(default)]
    pub refused: std::collections::BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;

    pub(crate) fn sample() -> Advisory {
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
    fn round_trips_signed_and_covers() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let a = sample();
        let wire = a.sign(&key).to_bytes();
        let v = Signed::from_bytes(&wire)
            .unwrap()
            .verify_as::<Advisory>()
            .unwrap();
        assert_eq!(v.get(), &a);
        assert!(a.covers("1.0.1"));
        assert!(!a.covers("1.0.0") && !a.covers("1.0.2") && !a.covers("not-semver"));
        let mut r = sample();
        r.range = ">=1.0.1 <1.0.4 || 2.0.3".into();
        assert!(r.covers("1.0.1") && r.covers("1.0.3") && r.covers("2.0.3"));
        assert!(!r.covers("1.0.4") && !r.covers("2.0.2"));
        assert!(
            r.covers("1.0.2-rc.1"),
            "prereleases in the range are covered"
        );
        assert!(a.active(a.at_ms));
        assert!(!a.active(a.expires_at_ms));
        let mut w = sample();
        w.withdrawn = true;
        assert!(!w.active(w.at_ms));
        let back = Advisory::decode(&w.try_encode().unwrap()).unwrap();
        assert_eq!(back, w);
    }

    #[test]
    fn refuses_what_breaks_the_rules() {
        let ok = sample();
        let cases: Vec<fn(&mut Advisory)> = vec![
            |a| a.range = String::new(),
            |a| a.range = " 1.0.1".into(),
            |a| a.range = "not a range!".into(),
            |a| a.range = "1".repeat(MAX_RANGE_LEN + 1),
            |a| a.reason = "r".repeat(MAX_REASON_LEN + 1),
            |a| a.reason = "line\nbreak".into(),
            |a| a.url = Some("ftp://example.org/x".into()),
            |a| a.url = Some("https://".into()),
            |a| a.url = Some("https://example.org/a b".into()),
            |a| a.expires_at_ms = a.at_ms,
            |a| a.expires_at_ms = a.at_ms + MAX_LIFETIME_MS + 1,
        ];
        for (i, change) in cases.iter().enumerate() {
            let mut a = ok.clone();
            change(&mut a);
            assert!(a.check().is_err(), "case {i} passed check");
            assert!(a.try_encode().is_err(), "case {i} encoded");
            assert!(
                Advisory::decode(&Signable::encode(&a)).is_err(),
                "case {i} decoded"
            );
        }
        // Exactly at the limits still fits.
        let mut a = ok.clone();
        a.reason = "r".repeat(MAX_REASON_LEN);
        a.url = Some(format!("https://e.org/{}", "u".repeat(MAX_URL_LEN - 14)));
        a.expires_at_ms = a.at_ms + MAX_LIFETIME_MS;
        assert_eq!(Advisory::decode(&a.try_encode().unwrap()).unwrap(), a);
    }

    #[test]
    fn refuses_what_is_not_canonical() {
        let body = sample().try_encode().unwrap();
        assert!(Advisory::decode(&body[..body.len() - 1]).is_err());
        let mut long = body.clone();
        long.push(0);
        assert!(Advisory::decode(&long).is_err());
        let mut other = body.clone();
        other[0] = 2;
        assert!(Advisory::decode(&other).is_err());
        // The kind and withdrawn bytes sit after the name and range.
        let at = 1 + 2 + "left-pad".len() + 2 + "1.0.1".len();
        let mut k = body.clone();
        k[at] = 4;
        assert!(Advisory::decode(&k).is_err());
        let mut w = body.clone();
        w[at + 1] = 2;
        assert!(Advisory::decode(&w).is_err());
        // An empty URL field is "none", so a present URL is never encoded empty.
        let mut a = sample();
        a.url = Some(String::new());
        assert!(a.check().is_err());
        assert!(Advisory::decode(&vec![1; MAX_ADVISORY_LEN + 1]).is_err());
    }

    #[test]
    fn other_kinds_signatures_do_not_verify_as_advisories() {
        use ed25519_dalek::Signer as _;
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut s = sample().sign(&key);
        s.signature = key
            .sign(&crate::record::signed_message(
                crate::report::REPORT_DOMAIN,
                &s.body,
            ))
            .to_bytes();
        assert_eq!(
            s.verify_as::<Advisory>().unwrap_err(),
            RecordError::BadSignature
        );
    }

    #[test]
    fn dht_values_are_checked_against_their_key() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let me = PeerId::from_public_key(&key.verifying_key());
        let a = sample();
        let k = dht_key(&a.name, &me);
        assert!(k.starts_with(KEY_PREFIX.as_bytes()));
        assert_eq!(parse_dht_key(&k), Some((a.name.clone(), me)));
        let wire = a.sign(&key).to_bytes();
        assert_eq!(validate(&k, &wire, a.at_ms).unwrap().get(), &a);
        assert_eq!(
            validate(&k, &wire, a.expires_at_ms),
            Err(AdvisoryError::Expired)
        );
        assert!(matches!(
            validate(&k, &a.sign(&other).to_bytes(), a.at_ms),
            Err(AdvisoryError::WrongSigner { .. })
        ));
        let mut b = sample();
        b.name = PackageName::parse("right-pad").unwrap();
        assert!(matches!(
            validate(&k, &b.sign(&key).to_bytes(), a.at_ms),
            Err(AdvisoryError::WrongName { .. })
        ));
        assert_eq!(
            validate(b"/open-registry/records/v1/x/y", &wire, 0),
            Err(AdvisoryError::Key)
        );
        assert_eq!(short_id(&wire).len(), 16);
    }

    #[test]
    fn kinds_parse_and_print() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), k);
            assert_eq!(Kind::from_byte(k.byte()), Some(k));
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        assert!("benign".parse::<Kind>().is_err());
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Advisory::decode(&b);
        }

        #[test]
        fn valid_advisories_round_trip(
            reason in "[ -~]{0,120}",
            seq in any::<u64>(),
            at in 0u64..u64::MAX / 2,
            life in 1u64..MAX_LIFETIME_MS,
            withdrawn in any::<bool>(),
            k in 0usize..3,
        ) {
            let a = Advisory {
                reason, seq, at_ms: at, expires_at_ms: at + life, withdrawn,
                kind: Kind::ALL[k], ..sample()
            };
            let b = a.try_encode().unwrap();
            prop_assert_eq!(Advisory::decode(&b).unwrap(), a);
        }
    }
}
