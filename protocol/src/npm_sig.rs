//! npm registry signatures: ECDSA P-256 signatures in `dist.signatures` over
//! `<name>@<version>:<integrity>`, checked against a registry keys document (the format served
//! at `/-/npm/v1/keys`).
//!
//! Verification uses keys the caller pinned, never keys the thing being verified hands out.
//! Expired keys are treated as npm treats them: a signature by a key with an `expires` date is
//! valid only for a version published before that date (a version with no publish time counts
//! as published at the epoch, as in npm). Every signature present must verify.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;

/// Why a keys document or a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("registry keys document is invalid: {0}")]
    BadKeys(String),
    #[error("{0} has no registry signature")]
    Missing(String),
    #[error("{spec} is signed with key {keyid}, which is not among the pinned keys")]
    UnknownKey { spec: String, keyid: String },
    #[error("{spec} is signed with key {keyid}, which expired {expires} before it was published")]
    ExpiredKey {
        spec: String,
        keyid: String,
        expires: String,
    },
    #[error("{spec} has an invalid registry signature by key {keyid}")]
    Invalid { spec: String, keyid: String },
}

/// One pinned registry key.
#[derive(Debug, Clone)]
pub struct RegistryKey {
    /// `SHA256:<base64>` as npm names keys.
    pub keyid: String,
    /// Expiry as written in the document (ISO 8601), if any.
    pub expires: Option<String>,
    expires_ms: Option<i64>,
    key: VerifyingKey,
}

/// A parsed keys document.
#[derive(Debug, Clone, Default)]
pub struct Keys(Vec<RegistryKey>);

impl Keys {
    /// Parses `{"keys": [{"keyid", "expires", "keytype", "scheme", "key"}]}`; keys of other
    /// types are skipped.
    pub fn parse(json: &[u8]) -> Result<Keys, SigError> {
        let v: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| SigError::BadKeys(e.to_string()))?;
        let arr = v
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| SigError::BadKeys("no \"keys\" array".into()))?;
        let mut out = Vec::new();
        for k in arr {
            let s = |f: &str| k.get(f).and_then(|x| x.as_str());
            if s("keytype").is_some_and(|t| t != "ecdsa-sha2-nistp256") {
                continue;
            }
            let keyid = s("keyid").ok_or_else(|| SigError::BadKeys("key without keyid".into()))?;
            let der = B64
                .decode(s("key").unwrap_or_default())
                .map_err(|_| SigError::BadKeys(format!("key {keyid} is not base64")))?;
            let key = VerifyingKey::from_public_key_der(&der)
                .map_err(|_| SigError::BadKeys(format!("key {keyid} is not a P-256 public key")))?;
            let expires = s("expires").map(str::to_owned);
            let expires_ms = match &expires {
                Some(e) => Some(
                    parse_iso8601_ms(e)
                        .ok_or_else(|| SigError::BadKeys(format!("bad expiry {e:?}")))?,
                ),
                None => None,
            };
            out.push(RegistryKey {
                keyid: keyid.to_owned(),
                expires,
                expires_ms,
                key,
            });
        }
        Ok(Keys(out))
    }

    /// Whether no key is pinned.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys.
    pub fn keys(&self) -> &[RegistryKey] {
        &self.0
    }

    /// Checks the `dist.signatures` of one version. `signatures` is the JSON array; `published`
    /// the version's publish time (`time[version]`). Returns the key ids that signed.
    pub fn verify(
        &self,
        name: &str,
        version: &str,
        integrity: &str,
        signatures: Option<&serde_json::Value>,
        published: Option<&str>,
    ) -> Result<Vec<String>, SigError> {
        let spec = format!("{name}@{version}");
        let sigs = signatures
            .and_then(|s| s.as_array())
            .filter(|a| !a.is_empty())
            .ok_or_else(|| SigError::Missing(spec.clone()))?;
        let published_ms = published.and_then(parse_iso8601_ms).unwrap_or(0);
        let message = format!("{name}@{version}:{integrity}");
        let mut signed_by = Vec::new();
        for s in sigs {
            let keyid = s.get("keyid").and_then(|k| k.as_str()).unwrap_or_default();
            let key =
                self.0
                    .iter()
                    .find(|k| k.keyid == keyid)
                    .ok_or_else(|| SigError::UnknownKey {
                        spec: spec.clone(),
                        keyid: keyid.to_owned(),
                    })?;
            if let Some(exp) = key.expires_ms
                && published_ms >= exp
            {
                return Err(SigError::ExpiredKey {
                    spec,
                    keyid: keyid.to_owned(),
                    expires: key.expires.clone().unwrap_or_default(),
                });
            }
            let invalid = || SigError::Invalid {
                spec: spec.clone(),
                keyid: keyid.to_owned(),
            };
            let der = s
                .get("sig")
                .and_then(|x| x.as_str())
                .and_then(|x| B64.decode(x).ok())
                .ok_or_else(invalid)?;
            let sig = Signature::from_der(&der).map_err(|_| invalid())?;
            // Node's crypto accepts either S; normalizing is sound (both are valid signatures).
            let sig = sig.normalize_s();
            key.key
                .verify(message.as_bytes(), &sig)
                .map_err(|_| invalid())?;
            signed_by.push(keyid.to_owned());
        }
        Ok(signed_by)
    }
}

/// Parses an ISO 8601 / RFC 3339 timestamp (`2025-01-29T00:00:00.000Z`, offsets allowed, a bare
/// date means midnight UTC) into unix milliseconds.
pub fn parse_iso8601_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let num = |a: usize, b: usize| s.get(a..b).and_then(|x| x.parse::<i64>().ok());
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    if s.get(4..5)? != "-"
        || s.get(7..8)? != "-"
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
    {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    if s.len() == 10 {
        return Some(days * 86_400_000);
    }
    if !matches!(s.get(10..11)?, "T" | "t" | " ") {
        return None;
    }
    let (h, mi, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let mut rest = s.get(19..)?;
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits: String = frac.chars().take_while(char::is_ascii_digit).collect();
        let padded = format!("{digits:0<3}");
        ms = padded.get(..3)?.parse::<i64>().ok()?;
        rest = &frac[digits.len()..];
    }
    let offset_min = match rest {
        "Z" | "z" | "" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) => {
            let oh: i64 = o.get(1..3)?.parse().ok()?;
            let om: i64 = o.get(4..6)?.parse().ok()?;
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (oh * 60 + om)
        }
        _ => return None,
    };
    Some(((days * 24 + h) * 60 + mi - offset_min) * 60_000 + sec * 1000 + ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::EncodePublicKey as _;
    use serde_json::json;

    fn keys_doc(sk: &SigningKey, expires: Option<&str>) -> Vec<u8> {
        let der = sk.verifying_key().to_public_key_der().unwrap();
        json!({"keys": [{
            "expires": expires, "keyid": "SHA256:test", "keytype": "ecdsa-sha2-nistp256",
            "scheme": "ecdsa-sha2-nistp256", "key": B64.encode(der.as_bytes()),
        }]})
        .to_string()
        .into_bytes()
    }

    fn sign(sk: &SigningKey, msg: &str) -> serde_json::Value {
        let sig: Signature = sk.sign(msg.as_bytes());
        json!([{"keyid": "SHA256:test", "sig": B64.encode(sig.to_der().as_bytes())}])
    }

    fn key() -> SigningKey {
        SigningKey::from_slice(&[0x42; 32]).unwrap()
    }

    #[test]
    fn verifies_npm_style_signatures() {
        let sk = key();
        let keys = Keys::parse(&keys_doc(&sk, None)).unwrap();
        let sigs = sign(&sk, "a@1.0.0:sha512-xyz");
        assert_eq!(
            keys.verify("a", "1.0.0", "sha512-xyz", Some(&sigs), None)
                .unwrap(),
            vec!["SHA256:test".to_owned()]
        );
        assert!(matches!(
            keys.verify("a", "1.0.0", "sha512-xyZ", Some(&sigs), None),
            Err(SigError::Invalid { .. })
        ));
        assert!(matches!(
            keys.verify("a", "1.0.0", "sha512-xyz", None, None),
            Err(SigError::Missing(_))
        ));
        let other =
            Keys::parse(&keys_doc(&SigningKey::from_slice(&[7; 32]).unwrap(), None)).unwrap();
        assert!(matches!(
            other.verify("a", "1.0.0", "sha512-xyz", Some(&sigs), None),
            Err(SigError::Invalid { .. })
        ));
        let mut wrong_id = sigs.clone();
        wrong_id[0]["keyid"] = json!("SHA256:other");
        assert!(matches!(
            keys.verify("a", "1.0.0", "sha512-xyz", Some(&wrong_id), None),
            Err(SigError::UnknownKey { .. })
        ));
    }

    #[test]
    fn expired_keys_as_npm_treats_them() {
        let sk = key();
        let keys = Keys::parse(&keys_doc(&sk, Some("2025-01-29T00:00:00.000Z"))).unwrap();
        let sigs = sign(&sk, "a@1.0.0:sha512-xyz");
        // Published before expiry: fine.
        keys.verify(
            "a",
            "1.0.0",
            "sha512-xyz",
            Some(&sigs),
            Some("2024-06-01T10:00:00.000Z"),
        )
        .unwrap();
        // Published after: refused.
        assert!(matches!(
            keys.verify(
                "a",
                "1.0.0",
                "sha512-xyz",
                Some(&sigs),
                Some("2025-02-01T00:00:00Z")
            ),
            Err(SigError::ExpiredKey { .. })
        ));
        // Unknown publish time counts as the epoch, as in npm.
        keys.verify("a", "1.0.0", "sha512-xyz", Some(&sigs), None)
            .unwrap();
    }

    #[test]
    fn iso_dates() {
        assert_eq!(parse_iso8601_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(parse_iso8601_ms("1970-01-02"), Some(86_400_000));
        assert_eq!(
            parse_iso8601_ms("2025-01-29T00:00:00.000Z"),
            Some(1_738_108_800_000)
        );
        assert_eq!(
            parse_iso8601_ms("2025-01-29T01:00:00+01:00"),
            Some(1_738_108_800_000)
        );
        assert_eq!(
            parse_iso8601_ms("2025-01-29T00:00:00.5Z"),
            Some(1_738_108_800_500)
        );
        assert_eq!(parse_iso8601_ms("yesterday"), None);
        assert_eq!(parse_iso8601_ms("2025-13-01"), None);
    }
}
