//! The operator's own statement: `statement.toml` in the data dir, signed with a strictly
//! increasing sequence.
//!
//! The file is read again every window, so an operator edits it while the node runs. A new
//! sequence is taken only when what the file says changes (compared as the canonical text
//! `Statement::to_toml` writes): `max(last + 1, now in ms)`, durable in the store before the
//! statement carrying it is signed, so a restart (or a restore of an older data dir that kept
//! its clock) never reuses one. A file that does not parse keeps the last good statement in
//! force and is logged once per change.

use std::path::PathBuf;
use std::sync::Mutex;

use open_registry_protocol::record::Signable as _;
use open_registry_protocol::statement::{STATEMENT_FILE, SignedStatement, Statement};

use crate::records::Identity;
use crate::store::{Index, IndexError};

const SEQ_KEY: &[u8] = b"seq";
const AT_KEY: &[u8] = b"at";
const TEXT_KEY: &[u8] = b"text";

/// The statement this node signs.
#[derive(Debug)]
pub(crate) struct OwnStatement {
    path: PathBuf,
    tree: sled::Tree,
    /// The last file text that did not parse (logged once).
    bad: Mutex<Option<String>>,
}

impl OwnStatement {
    /// The statement in `data_dir`, its sequence kept in `index`.
    pub(crate) fn open(
        index: &Index,
        data_dir: &std::path::Path,
    ) -> Result<OwnStatement, IndexError> {
        Ok(OwnStatement {
            path: data_dir.join(STATEMENT_FILE),
            tree: index.tree("statement")?,
            bad: Mutex::new(None),
        })
    }

    /// Reads the file and returns the signed statement's wire bytes: the one signed before if
    /// nothing changed, a newly sequenced one if it did, the last good one if the file is now
    /// invalid, `None` without a statement.
    pub(crate) async fn signed(
        &self,
        index: &Index,
        identity: &Identity,
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, IndexError> {
        let file = match tokio::fs::read_to_string(&self.path).await {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the statement");
                None
            }
        };
        let parsed = file.as_deref().and_then(|text| match Statement::parse(text) {
            Ok(s) => Some(s),
            Err(problems) => {
                let mut bad = self.bad.lock().expect("statement poisoned");
                if bad.as_deref() != Some(text) {
                    tracing::warn!(path = %self.path.display(), %problems, "statement.toml has problems; the last good statement stays published");
                    *bad = Some(text.to_owned());
                }
                None
            }
        });
        let held_text = self
            .tree
            .get(TEXT_KEY)?
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        let held_seq = read_u64(&self.tree, SEQ_KEY)?;
        let statement = match (parsed, file.is_some()) {
            (Some(s), _) => s,
            // The file is invalid: the last good statement, if any.
            (None, true) => match held_text.as_deref().map(Statement::parse) {
                Some(Ok(s)) => s,
                _ => return Ok(None),
            },
            (None, false) => return Ok(None),
        };
        let text = statement.to_toml();
        let (seq, at_ms) = match (held_seq, held_text.as_deref() == Some(text.as_str())) {
            (Some(seq), true) => (seq, read_u64(&self.tree, AT_KEY)?.unwrap_or(now_ms)),
            (last, _) => {
                let seq = last.map_or(now_ms, |l| (l + 1).max(now_ms));
                self.tree.insert(SEQ_KEY, &seq.to_be_bytes())?;
                self.tree.insert(AT_KEY, &now_ms.to_be_bytes())?;
                self.tree.insert(TEXT_KEY, text.as_bytes())?;
                index.flush().await?;
                tracing::info!(seq, "statement.toml signed");
                (seq, now_ms)
            }
        };
        let s = SignedStatement {
            seq,
            at_ms,
            statement,
        };
        if let Err(e) = s.try_encode() {
            let mut bad = self.bad.lock().expect("statement poisoned");
            if bad.as_deref() != Some(text.as_str()) {
                tracing::warn!(error = %e, "statement.toml is not published");
                *bad = Some(text);
            }
            return Ok(None);
        }
        Ok(Some(s.sign(identity.signing_key()).to_bytes()))
    }
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<Option<u64>, IndexError> {
    Ok(tree
        .get(key)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use open_registry_protocol::record::Signed;

    const TEXT: &str = "[operator]\nname = \"Co-op\"\n\n[[month]]\nmonth = \"2026-11\"\ncurrency = \"EUR\"\ncost = [ { provider = \"Hetzner\", item = \"server\", amount = \"6.80\" } ]\n";

    fn seq_of(wire: &[u8]) -> u64 {
        Signed::from_bytes(wire)
            .unwrap()
            .verify_as::<SignedStatement>()
            .unwrap()
            .get()
            .seq
    }

    #[tokio::test]
    async fn sequences_grow_only_when_the_statement_changes_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::from_seed([5; 32]);
        let index_dir = dir.path().join("index");
        let index = Index::open(&index_dir, Clock::system()).unwrap();
        let own = OwnStatement::open(&index, dir.path()).unwrap();
        assert_eq!(
            own.signed(&index, &id, 1000).await.unwrap(),
            None,
            "no file yet"
        );

        std::fs::write(dir.path().join(STATEMENT_FILE), TEXT).unwrap();
        let first = own.signed(&index, &id, 1000).await.unwrap().unwrap();
        assert_eq!(seq_of(&first), 1000);
        // Unchanged (a comment is not a change): the very same signed bytes.
        std::fs::write(dir.path().join(STATEMENT_FILE), format!("# hi\n{TEXT}")).unwrap();
        assert_eq!(own.signed(&index, &id, 5000).await.unwrap().unwrap(), first);
        // Invalid: the last good one stays.
        std::fs::write(dir.path().join(STATEMENT_FILE), "[operator]\nname = 3\n").unwrap();
        assert_eq!(own.signed(&index, &id, 6000).await.unwrap().unwrap(), first);
        // Changed: a higher sequence, even if the clock went back.
        std::fs::write(
            dir.path().join(STATEMENT_FILE),
            TEXT.replace("6.80", "7.00"),
        )
        .unwrap();
        let second = own.signed(&index, &id, 10).await.unwrap().unwrap();
        assert_eq!(seq_of(&second), 1001);
        drop(own);
        drop(index);

        let index = Index::open(&index_dir, Clock::system()).unwrap();
        let own = OwnStatement::open(&index, dir.path()).unwrap();
        assert_eq!(own.signed(&index, &id, 20).await.unwrap().unwrap(), second);
        std::fs::write(dir.path().join(STATEMENT_FILE), TEXT).unwrap();
        let third = own.signed(&index, &id, 20).await.unwrap().unwrap();
        assert_eq!(seq_of(&third), 1002);
    }
}
