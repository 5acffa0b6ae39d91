//! [`router`]: the npm registry HTTP API as an axum [`Router`], and its [`Config`].
//!
//! Routing is done here, by method and then by `path::parse`, rather than by axum's
//! path matcher: npm's paths need per-segment percent-decoding (`@scope%2fname`) and
//! traversal checks before anything is matched, and one dispatcher is also the one place that
//! counts requests, strips HEAD bodies and refuses writes.
//!
//! Method rules: GET and HEAD read (HEAD answers exactly what GET would, Content-Length
//! included, without the body); POST is accepted only for the two audit endpoints; PUT, DELETE
//! and PATCH are writes, refused with 405 since this node is a read-only mirror.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};

use crate::access::{self, Source};
use crate::cache::RenderCache;
use crate::error::ApiError;
use crate::metrics::{RouteClass, Traffic};
use crate::path::{self, Route};
use crate::registry::Registry;
use crate::shared::Shared;
use crate::{documents, meta, negotiate, search, tarball};

/// The default render cache budget: enough for the hot set of a busy mirror (react's two forms
/// with their gzip are about 7 MB).
pub const DEFAULT_RENDER_CACHE_BYTES: usize = 256 * 1024 * 1024;

/// How the gateway serves.
#[derive(Debug, Clone)]
pub struct Config {
    /// The URL clients reach this gateway at (e.g. behind a proxy or TLS terminator); tarball
    /// URLs in served documents point there. When `None`, `http://<Host header>` is used.
    pub public_url: Option<String>,
    /// Byte budget of the render cache (encoded and gzip forms of derived documents).
    pub render_cache_bytes: usize,
    /// Where derived forms whose gzip is over 256 KiB are kept, as files, instead of memory
    /// (each then weighs an eighth of its size in the cache); `None` keeps them in memory.
    /// The directory should be emptied at every start.
    pub render_spill_dir: Option<std::path::PathBuf>,
    /// The counters to record requests in, when the caller reads them too (a node's reports);
    /// `None` makes fresh ones.
    pub traffic: Option<Arc<Traffic>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            public_url: None,
            render_cache_bytes: DEFAULT_RENDER_CACHE_BYTES,
            render_spill_dir: None,
            traffic: None,
        }
    }
}

/// The npm registry API over `registry`.
pub fn router<R: Registry>(registry: Arc<R>, config: Config) -> Router {
    let public_url = config
        .public_url
        .map(|u| u.trim().trim_end_matches('/').to_owned())
        .filter(|u| !u.is_empty());
    let shared = Arc::new(Shared {
        registry,
        public_url,
        cache: RenderCache::new(config.render_cache_bytes),
        spill: config.render_spill_dir.map(crate::render::Spill::new),
        metrics: config.traffic.unwrap_or_default(),
    });
    Router::new().fallback(dispatch::<R>).with_state(shared)
}

/// Every request enters here.
async fn dispatch<R: Registry>(State(shared): State<Arc<Shared<R>>>, req: Request) -> Response {
    let head = req.method() == Method::HEAD;
    let (class, result) = handle(&shared, req).await;
    let source = source_of(class, &result);
    let mut res = result.unwrap_or_else(IntoResponse::into_response);
    if res.extensions().get::<Source>().is_none() {
        access::mark(&mut res, source);
    }
    let bytes = if head {
        0
    } else {
        res.headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let source = res.extensions().get::<Source>().copied().unwrap_or(source);
    shared
        .metrics
        .record(class, res.status().as_u16(), source, bytes);
    if head {
        // Handlers set Content-Length from the real body; only the body goes.
        *res.body_mut() = Body::empty();
    }
    res
}

/// Where an answer of `class` came from, unless its handler said more precisely.
fn source_of(class: RouteClass, result: &Result<Response, ApiError>) -> Source {
    match (class, result) {
        (RouteClass::Write | RouteClass::Rejected, _) => Source::Gateway,
        (RouteClass::Forward, Ok(_)) => Source::Upstream,
        // The node (or, for forwards, the node's upstream client) said no.
        (_, Err(ApiError::Registry(_))) => Source::Node,
        (_, Err(_)) => Source::Gateway,
        (_, Ok(_)) => Source::Node,
    }
}

async fn handle<R: Registry>(
    shared: &Shared<R>,
    req: Request,
) -> (RouteClass, Result<Response, ApiError>) {
    let method = req.method().clone();
    if let Err(e) = negotiate::single_host(req.headers()) {
        return (RouteClass::Rejected, Err(e.into()));
    }
    if matches!(method, Method::PUT | Method::DELETE | Method::PATCH) {
        return (RouteClass::Write, Err(ApiError::ReadOnly));
    }
    let route = match path::parse(req.uri().path()) {
        Ok(route) => route,
        // A POST to a path we do not know is some write (login, a publish variant): say why.
        Err(_) if method == Method::POST => return (RouteClass::Write, Err(ApiError::ReadOnly)),
        Err(e) => return (RouteClass::Rejected, Err(e.into())),
    };
    match method {
        Method::GET | Method::HEAD => read(shared, route, req).await,
        Method::POST => match route {
            Route::AdvisoriesBulk => (
                RouteClass::Forward,
                meta::audit(shared, "/-/npm/v1/security/advisories/bulk", req).await,
            ),
            Route::AuditsQuick => (
                RouteClass::Forward,
                meta::audit(shared, "/-/npm/v1/security/audits/quick", req).await,
            ),
            _ => (RouteClass::Write, Err(ApiError::ReadOnly)),
        },
        _ => (
            RouteClass::Rejected,
            Err(ApiError::Method {
                allow: "GET, HEAD, POST",
            }),
        ),
    }
}

/// GET and HEAD.
async fn read<R: Registry>(
    shared: &Shared<R>,
    route: Route,
    req: Request,
) -> (RouteClass, Result<Response, ApiError>) {
    let (parts, _) = req.into_parts();
    let headers = &parts.headers;
    let authority = parts.uri.authority().map(|a| a.as_str());
    match route {
        Route::Packument(name) => (
            RouteClass::Packument,
            documents::packument(shared, name, headers, authority).await,
        ),
        Route::Version(name, spec) => (
            RouteClass::Version,
            documents::version(shared, name, spec, headers, authority).await,
        ),
        Route::DistTags(name) => (
            RouteClass::Packument,
            documents::dist_tags(shared, name, headers, authority).await,
        ),
        Route::Tarball(name, file) => (
            RouteClass::Tarball,
            tarball::serve(shared, &name, &file, headers).await,
        ),
        Route::Search => {
            let req = Request::from_parts(parts, Body::empty());
            (RouteClass::Forward, search::serve(shared, req).await)
        }
        Route::AdvisoriesBulk | Route::AuditsQuick => {
            (RouteClass::Forward, Err(ApiError::Method { allow: "POST" }))
        }
        Route::Ping => {
            let mut res = meta::ping();
            access::mark(&mut res, Source::Gateway);
            (RouteClass::Meta, Ok(res))
        }
        Route::Whoami => (RouteClass::Meta, Err(ApiError::Anonymous)),
        Route::Keys => (RouteClass::Meta, meta::keys(shared).await),
        Route::Status => (RouteClass::Meta, meta::status(shared).await),
        Route::Records(name) => (RouteClass::Meta, meta::records(shared, &name).await),
        Route::Blob(id) => match shared.registry.blob(&id).await {
            Ok(blob) => (RouteClass::Tarball, tarball::respond(blob, headers)),
            Err(e) => (RouteClass::Tarball, Err(e.into())),
        },
        Route::Metrics => (RouteClass::Meta, Ok(meta::metrics(shared).await)),
    }
}
