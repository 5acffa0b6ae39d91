//! The operator's API, next to the public npm API on the same port: pinning.
//!
//! Reading the pin list is public (what a community node keeps is no secret); changing it needs
//! the admin token, a random secret the node writes to `admin.token` in its data dir (mode 0600)
//! on first start, which the `pin` CLI reads from there. Routes:
//!
//! - `GET /-/open-registry/`: an HTML dashboard (packages served and cached, errors now, lag,
//!   peers, popularity, pins), drawn from the JSON routes.
//! - `GET /-/open-registry/pins`: `{"pins": [{"name", "versions": {version: file}, "size",
//!   "since"}]}`
//! - `GET /-/open-registry/peers`: the peer-to-peer view (connected peers, routing table).
//! - `GET /-/open-registry/popular?limit=N`: the most requested packages, here and at
//!   trusted operators' nodes (from their signed gossip summaries).
//! - `POST /-/open-registry/admin/pin` `{"name", "version"}`: fetch, verify, store, pin.
//! - `POST /-/open-registry/admin/unpin` `{"name"}`: unpin every version of a package.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use open_registry_protocol::PackageName;
use serde::Deserialize;
use serde_json::json;

use crate::node::Node;

/// The admin token's file name in the data dir.
pub const TOKEN_FILE: &str = "admin.token";

/// Reads the admin token, creating it on first use.
pub fn load_or_create_token(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut b = [0u8; 32];
    let mut f = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut b)?;
    let token = hex::encode(b);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut f, token.as_bytes())?;
    f.sync_all()?;
    Ok(token)
}

#[derive(Debug)]
struct Admin {
    node: Arc<Node>,
    token: String,
}

/// The admin routes, to merge with the gateway's router.
pub fn router(node: Arc<Node>, token: String) -> Router {
    Router::new()
        .route("/-/open-registry/", get(dashboard))
        .route("/-/open-registry/pins", get(list))
        .route("/-/open-registry/peers", get(peers))
        .route("/-/open-registry/popular", get(popular))
        .route("/-/open-registry/admin/pin", post(pin))
        .route("/-/open-registry/admin/unpin", post(unpin))
        .with_state(Arc::new(Admin { node, token }))
}

/// An admin API failure: a status and a message, sent as `{"error": ...}`.
#[derive(Debug)]
struct AdminError(StatusCode, String);

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

type Answer = Result<Json<serde_json::Value>, AdminError>;

fn authorized(admin: &Admin, headers: &HeaderMap) -> Result<(), AdminError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compare without an early exit: the token is a secret.
    let ok = given.is_some_and(|g| {
        g.len() == admin.token.len()
            && g.bytes()
                .zip(admin.token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if ok {
        Ok(())
    } else {
        Err(AdminError(
            StatusCode::UNAUTHORIZED,
            "changing pins needs the node's admin token (admin.token in its data dir)".into(),
        ))
    }
}

fn internal(e: impl std::fmt::Display) -> AdminError {
    AdminError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn list(State(admin): State<Arc<Admin>>) -> Answer {
    admin.node.pin_list().await.map(Json).map_err(internal)
}

/// The dashboard: one static page that reads the JSON routes below.
const DASHBOARD: &str = include_str!("dashboard.html");

async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(DASHBOARD)
}

async fn peers(State(admin): State<Arc<Admin>>) -> Answer {
    match admin.node.peers().await {
        Ok(Some(v)) => Ok(Json(v)),
        Ok(None) => Err(AdminError(
            StatusCode::NOT_FOUND,
            "this node does not take part in the peer-to-peer network (no_p2p)".into(),
        )),
        Err(e) => Err(internal(e)),
    }
}

#[derive(Debug, Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn popular(
    State(admin): State<Arc<Admin>>,
    axum::extract::Query(q): axum::extract::Query<Limit>,
) -> Answer {
    Ok(Json(admin.node.popular(q.limit.unwrap_or(20).min(1000))))
}

#[derive(Debug, Deserialize)]
struct PinRequest {
    name: String,
    version: Option<String>,
}

fn parse_name(s: &str) -> Result<PackageName, AdminError> {
    PackageName::parse(s).map_err(|e| AdminError(StatusCode::BAD_REQUEST, e.to_string()))
}

async fn pin(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Json(req): Json<PinRequest>,
) -> Answer {
    authorized(&admin, &headers)?;
    let name = parse_name(&req.name)?;
    let version = req.version.ok_or_else(|| {
        AdminError(
            StatusCode::BAD_REQUEST,
            "a pin names an exact version".into(),
        )
    })?;
    admin
        .node
        .pin(&name, &version)
        .await
        .map(Json)
        .map_err(|e| {
            use open_registry_gateway::Error as E;
            let status = match &e {
                E::NotFound(_) => StatusCode::NOT_FOUND,
                E::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                E::BadGateway(_) => StatusCode::BAD_GATEWAY,
                E::BadRequest(_) => StatusCode::BAD_REQUEST,
                E::Unavailable(_) | E::Internal(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            AdminError(status, e.to_string())
        })
}

async fn unpin(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Json(req): Json<PinRequest>,
) -> Answer {
    authorized(&admin, &headers)?;
    let name = parse_name(&req.name)?;
    let removed = admin.node.unpin(&name).await.map_err(internal)?;
    Ok(Json(json!({"name": name, "removed": removed})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_token(dir.path()).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), a);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
