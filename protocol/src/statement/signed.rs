//! A statement as a node signs and gossips it: the statement's text with a sequence number.
//!
//! The body is format byte 1, the sequence and the signing time (unix ms) as big-endian u64,
//! then the statement as UTF-8 TOML (what [`Statement::to_toml`] writes, though any text
//! [`Statement::parse`] accepts verifies). The sequence is strictly increasing per operator: a
//! node keeps the statement with the highest sequence it has verified from each operator and
//! refuses one that is not higher (a replayed or rolled-back statement).

use super::Statement;
use crate::record::{RecordError, Signable};

/// Domain of statement signatures.
pub const STATEMENT_DOMAIN: &[u8] = b"open-registry/statement/v1\n";
/// The encoding's format byte.
pub const STATEMENT_FORMAT: u8 = 1;
/// The largest encoded statement body accepted (it must fit one gossip message).
pub const MAX_STATEMENT_LEN: usize = 48 * 1024;

/// A statement with its place in the operator's sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedStatement {
    /// Strictly increasing per operator.
    pub seq: u64,
    /// When it was signed (unix ms).
    pub at_ms: u64,
    /// The statement.
    pub statement: Statement,
}

impl SignedStatement {
    /// The body that will be signed, or why it cannot be (too large to gossip).
    pub fn try_encode(&self) -> Result<Vec<u8>, RecordError> {
        let body = self.encode();
        if body.len() > MAX_STATEMENT_LEN {
            return Err(RecordError::Malformed(format!(
                "statement: {} bytes encoded, over the {MAX_STATEMENT_LEN} a statement may have; \
                 keep fewer months in statement.toml",
                body.len()
            )));
        }
        Ok(body)
    }
}

impl Signable for SignedStatement {
    const DOMAIN: &'static [u8] = STATEMENT_DOMAIN;

    fn encode(&self) -> Vec<u8> {
        let text = self.statement.to_toml();
        let mut out = Vec::with_capacity(17 + text.len());
        out.push(STATEMENT_FORMAT);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        out.extend_from_slice(text.as_bytes());
        out
    }

    fn decode(b: &[u8]) -> Result<Self, RecordError> {
        let bad = |s: String| RecordError::Malformed(format!("statement: {s}"));
        if b.len() > MAX_STATEMENT_LEN {
            return Err(bad("too large".into()));
        }
        if b.len() < 17 || b[0] != STATEMENT_FORMAT {
            return Err(bad("truncated or of an unknown format".into()));
        }
        let seq = u64::from_be_bytes(b[1..9].try_into().expect("8 bytes"));
        let at_ms = u64::from_be_bytes(b[9..17].try_into().expect("8 bytes"));
        let text = std::str::from_utf8(&b[17..]).map_err(|_| bad("text is not UTF-8".into()))?;
        let statement = Statement::parse(text).map_err(|p| bad(p.to_string()))?;
        Ok(SignedStatement {
            seq,
            at_ms,
            statement,
        })
    }
}
