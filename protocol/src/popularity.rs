//! Signed popularity summaries: how often an operator's node served each package.
//!
//! Nodes count packument requests per package and periodically gossip a signed summary of their
//! top packages. Other nodes add up the newest summary of each operator they trust (and their
//! own counts) to learn what the network uses most, without asking the upstream — that is what
//! `pin add --top N` pins. Summaries are bounded ([`MAX_ENTRIES`] packages) and canonical:
//! entries sorted by name, unique.

use crate::name::PackageName;
use crate::record::{RecordError, Signable};

/// Domain of summary signatures.
pub const POPULARITY_DOMAIN: &[u8] = b"open-registry/popularity/v1\n";
/// Most packages one summary lists.
pub const MAX_ENTRIES: usize = 100;

/// One operator's request counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// When it was made (unix ms); a newer summary from the same operator replaces an older one.
    pub at: u64,
    /// (package, requests the node counted, kept across its restarts), sorted by name.
    pub counts: Vec<(PackageName, u64)>,
}

impl Summary {
    /// A summary of the `MAX_ENTRIES` most requested packages in `counts`.
    pub fn top(at: u64, counts: impl IntoIterator<Item = (PackageName, u64)>) -> Summary {
        let mut all: Vec<(PackageName, u64)> = counts.into_iter().filter(|(_, c)| *c > 0).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(MAX_ENTRIES);
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Summary { at, counts: all }
    }
}

impl Signable for Summary {
    const DOMAIN: &'static [u8] = POPULARITY_DOMAIN;

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![1];
        out.extend_from_slice(&self.at.to_be_bytes());
        out.extend_from_slice(&(self.counts.len() as u16).to_be_bytes());
        for (name, n) in &self.counts {
            let b = name.as_str().as_bytes();
            out.extend_from_slice(&(b.len() as u16).to_be_bytes());
            out.extend_from_slice(b);
            out.extend_from_slice(&n.to_be_bytes());
        }
        out
    }

    fn decode(b: &[u8]) -> Result<Self, RecordError> {
        let bad = |s: &str| RecordError::Malformed(format!("popularity summary: {s}"));
        let mut r = b;
        let mut take = |n: usize| -> Result<&[u8], RecordError> {
            if r.len() < n {
                return Err(bad("truncated"));
            }
            let (a, rest) = r.split_at(n);
            r = rest;
            Ok(a)
        };
        if take(1)? != [1] {
            return Err(bad("unknown format"));
        }
        let at = u64::from_be_bytes(take(8)?.try_into().expect("8 bytes"));
        let n = u16::from_be_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
        if n > MAX_ENTRIES {
            return Err(bad("too many entries"));
        }
        let mut counts: Vec<(PackageName, u64)> = Vec::with_capacity(n);
        for _ in 0..n {
            let len = u16::from_be_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
            let name = std::str::from_utf8(take(len)?).map_err(|_| bad("name is not UTF-8"))?;
            let name = PackageName::parse(name).map_err(|e| bad(&e.to_string()))?;
            if counts.last().is_some_and(|(last, _)| *last >= name) {
                return Err(bad("entries are not sorted and unique"));
            }
            let c = u64::from_be_bytes(take(8)?.try_into().expect("8 bytes"));
            counts.push((name, c));
        }
        if !r.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Summary { at, counts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn n(s: &str) -> PackageName {
        PackageName::parse(s).unwrap()
    }

    #[test]
    fn top_is_bounded_canonical_and_signed() {
        let counts = (0..150u64).map(|i| (n(&format!("p{i:03}")), i));
        let s = Summary::top(7, counts);
        assert_eq!(s.counts.len(), MAX_ENTRIES);
        assert_eq!(s.counts[0], (n("p050"), 50));
        let key = SigningKey::from_bytes(&[3; 32]);
        let signed = s.sign(&key);
        let v = signed.verify_as::<Summary>().unwrap();
        assert_eq!(v.get(), &s);
        // A record signature is not a summary signature.
        assert!(signed.verify().is_err());
        let mut bad = signed.clone();
        bad.body[12] ^= 1;
        assert!(bad.verify_as::<Summary>().is_err());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(Summary::decode(&[]).is_err());
        assert!(Summary::decode(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        let mut b = Summary::top(1, [(n("a"), 1), (n("b"), 2)]).encode();
        b.push(0);
        assert!(Summary::decode(&b).is_err());
    }
}
