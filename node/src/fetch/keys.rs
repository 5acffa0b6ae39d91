//! The registry signing keys the operator pins: `keys.json` in the data dir.
//!
//! npm's registry signatures (`dist.signatures`) are only worth checking against keys the
//! operator chose, not keys a mirror hands out. When there is no pinned file, the upstream's
//! keys are fetched once and pinned (written atomically); an upstream without a keys endpoint
//! leaves nothing pinned.

use std::path::Path;

use anyhow::Context as _;
use bytes::Bytes;

use super::upstream::{Source, UpstreamError};

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
