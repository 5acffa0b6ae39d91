//! The registry signing keys the operator pins: `keys.json` in the data dir.
//!
//! npm's registry signatures (`dist.signatures`) are only worth checking against keys the
//! operator chose, not keys a mirror hands out. When there is no pinned file, the upstream's
//! keys are fetched once and pinned (written atomically); an upstream without a keys endpoint
//! leaves nothing pinned.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;

use super::upstream::{Source, UpstreamError};
use crate::clock::Clock;

/// How long a failure to get the upstream's keys is answered from memory.
pub(crate) const KEYS_FAILURE_TTL: Duration = Duration::from_secs(30);

/// [`pin_keys`] for the node's requests: concurrent first requests share one upstream fetch
/// (the others wait for it, then read what it pinned or how it failed), and a failure is
/// answered at once for [`KEYS_FAILURE_TTL`] instead of asking the upstream for every request.
#[derive(Debug)]
pub(crate) struct KeysPin {
    clock: Clock,
    /// Until when (unix ms) the last failure stands, and what it was. tokio Mutex: held across
    /// the fetch, which is what makes waiters share it.
    failed: tokio::sync::Mutex<Option<(u64, String)>>,
}

impl KeysPin {
    pub(crate) fn new(clock: Clock) -> KeysPin {
        KeysPin {
            clock,
            failed: tokio::sync::Mutex::new(None),
        }
    }

    /// The pinned keys (see [`pin_keys`]), or the failure of a fetch less than
    /// [`KEYS_FAILURE_TTL`] ago.
    pub(crate) async fn get(
        &self,
        dir: &Path,
        upstream: Option<&dyn Source>,
    ) -> anyhow::Result<Option<Bytes>> {
        let mut failed = self.failed.lock().await;
        if let Some((until, why)) = &*failed
            && self.clock.now_ms() < *until
        {
            anyhow::bail!("{why} (a recent failure, tried again after {KEYS_FAILURE_TTL:?})");
        }
        match pin_keys(dir, upstream).await {
            Ok(k) => {
                *failed = None;
                Ok(k)
            }
            Err(e) => {
                let until = self.clock.now_ms() + KEYS_FAILURE_TTL.as_millis() as u64;
                *failed = Some((until, format!("{e:#}")));
                Err(e)
            }
        }
    }
}

/// The operator's pinned registry signing keys, if any.
pub(crate) const KEYS_FILE: &str = "keys.json";

/// The pinned keys in `dir`, pinning the upstream's on first use; `Ok(None)` when there are
/// none and the upstream publishes none.
pub(crate) async fn pin_keys(
    dir: &Path,
    upstream: Option<&dyn Source>,
) -> anyhow::Result<Option<Bytes>> {
    let pinned = dir.join(KEYS_FILE);
    match tokio::fs::read(&pinned).await {
        Ok(b) => return Ok(Some(Bytes::from(b))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", pinned.display())),
    }
    let Some(upstream) = upstream else {
        return Ok(None);
    };
    let b = match upstream.keys().await {
        Ok(b) => b,
        Err(UpstreamError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    open_registry_protocol::npm_sig::Keys::parse(&b)
        .with_context(|| format!("the upstream's keys at {}-/npm/v1/keys", upstream.base()))?;
    let tmp = dir.join(format!("{KEYS_FILE}.tmp"));
    tokio::fs::write(&tmp, &b).await?;
    tokio::fs::rename(&tmp, &pinned).await?;
    tracing::info!(path = %pinned.display(), "pinned the upstream's registry signing keys");
    Ok(Some(b))
}
