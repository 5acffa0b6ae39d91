//! [`Shared`]: what every request handler reads, built once by [`crate::router()`].
//!
//! It lives apart from the router so that the handlers (documents, tarballs, meta routes) depend
//! on it and the router depends on them, never the other way round.

use std::sync::Arc;

use crate::cache::RenderCache;
use crate::metrics::Traffic;
use crate::render::Spill;

/// What every request handler shares.
#[derive(Debug)]
pub(crate) struct Shared<R> {
    pub(crate) registry: Arc<R>,
    /// `Config::public_url` without a trailing `/`; `None` if unset or empty.
    pub(crate) public_url: Option<String>,
    pub(crate) cache: RenderCache,
    /// Where large derived forms go (`Config::render_spill_dir`).
    pub(crate) spill: Option<Arc<Spill>>,
    pub(crate) metrics: Arc<Traffic>,
}
