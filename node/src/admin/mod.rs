//! The operator's API, next to the public npm API on the same port: the dashboard, pins,
//! peers, popularity and history.
//!
//! Reading is public (what a community node keeps is no secret); changing pins needs the admin
//! token ([`token`]). Answers are the typed views of `open_registry_protocol::admin`; failures
//! go through the gateway's one error mapping (`ApiError`), so a client gets a status and a
//! message and internal details stay in the log. Routes:
//!
//! - `GET /-/open-registry/`: an HTML dashboard drawn by its script from the JSON routes: the
//!   network's instances, cost per month and by item, donations and spending, errors now,
//!   packages served and cached, lag, operators, the withheld versions and hourly plots (from
//!   `network.json` and `history.json`, "not available" where a node lacks them), then this
//!   node, its peers, popularity and pins.
//! - `GET /-/open-registry/pins`: [`PinList`].
//! - `GET /-/open-registry/peers`: [`protocol::admin::Peers`](open_registry_protocol::admin::Peers), 404 without
//!   the network.
//! - `GET /-/open-registry/popular?limit=N`: [`Popular`],
//!   here and at trusted operators' nodes (from their signed gossip summaries).
//! - `GET /-/open-registry/network.json`: the network view
//!   ([`NetworkView`](open_registry_protocol::network::NetworkView)), from every operator's
//!   newest verified report and statement, with what this node withholds (advisories in force
//!   and pending, versions in their release cooldown).
//! - `GET /-/open-registry/reports.json`: those reports and statements, each with its signed
//!   wire form (base64) so that anyone can check the signatures.
//! - `GET /-/open-registry/statement.json`: this node's own signed statement (404 without one).
//! - `GET /-/open-registry/history.json?hours=N`: [`HistoryView`], the last N hours (default
//!   168, at most 2160) of this node's counters and of the network totals, by the hour.
//! - `POST /-/open-registry/admin/pin` `{"name", "version"}`: fetch, verify, store, pin.
//! - `POST /-/open-registry/admin/unpin` `{"name"}`: unpin every version of a package.

pub(crate) mod token;
mod views;

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use open_registry_gateway::{ApiError, Error};
use open_registry_protocol::PackageName;
use open_registry_protocol::admin::{Peers as PeersView, PinAdded, PinList, Popular, Unpinned};
use open_registry_protocol::history::HistoryView;
use serde::Deserialize;

use crate::fetch::Fetcher;
use crate::history::{History, KEPT_HOURS};
use crate::peer::Peers;
use crate::peer::popularity::Popularity;
use crate::public::{Book, Views};
use crate::store::pins::Pins;

/// What the operator routes work with.
#[derive(Debug)]
pub(crate) struct Admin {
    pub fetcher: Arc<Fetcher>,
    pub pins: Arc<Pins>,
    pub peers: Option<Arc<Peers>>,
    pub popularity: Arc<Popularity>,
    /// Every operator's reports and statements.
    pub book: Arc<Book>,
    /// The network view (the book's figures and what this node withholds).
    pub views: Arc<Views>,
    /// The hourly buckets `history.json` reads.
    pub history: Arc<History>,
    /// The admin token (see [`token`]).
    pub token: String,
}

/// The admin routes, to merge with the gateway's router.
pub(crate) fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/-/open-registry/", get(dashboard))
        .route("/-/open-registry/pins", get(list))
        .route("/-/open-registry/peers", get(peers))
        .route("/-/open-registry/popular", get(popular))
        .route("/-/open-registry/network.json", get(network))
        .route("/-/open-registry/reports.json", get(reports))
        .route("/-/open-registry/statement.json", get(statement))
        .route("/-/open-registry/history.json", get(history))
        .route("/-/open-registry/admin/pin", post(pin))
        .route("/-/open-registry/admin/unpin", post(unpin))
        .with_state(admin)
}

type Answer<T> = Result<Json<T>, ApiError>;

fn authorized(admin: &Admin, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if token::matches(&admin.token, given) {
        Ok(())
    } else {
        Err(Error::Unauthorized(
            "changing pins needs the node's admin token (admin.token in its data dir)".into(),
        )
        .into())
    }
}

/// The dashboard: one static page that reads the JSON routes.
const DASHBOARD: &str = include_str!("dashboard.html");

async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(DASHBOARD)
}

async fn list(State(admin): State<Arc<Admin>>) -> Answer<PinList> {
    Ok(Json(admin.pin_list().await?))
}

async fn peers(State(admin): State<Arc<Admin>>) -> Answer<PeersView> {
    match admin.peers().await? {
        Some(v) => Ok(Json(v)),
        None => Err(Error::NotFound(
            "this node does not take part in the peer-to-peer network (no_p2p)".into(),
        )
        .into()),
    }
}

#[derive(Debug, Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn popular(State(admin): State<Arc<Admin>>, Query(q): Query<Limit>) -> Answer<Popular> {
    Ok(Json(admin.popular(q.limit.unwrap_or(20).min(1000))))
}

async fn network(
    State(admin): State<Arc<Admin>>,
) -> Json<open_registry_protocol::network::NetworkView> {
    Json(admin.views.network())
}

async fn reports(State(admin): State<Arc<Admin>>) -> Json<serde_json::Value> {
    Json(views::reports(&admin.book))
}

async fn statement(State(admin): State<Arc<Admin>>) -> Answer<serde_json::Value> {
    views::own_statement(&admin.book).map(Json).ok_or_else(|| {
        Error::NotFound(
            "this node publishes no statement (no valid statement.toml in its data dir)".into(),
        )
        .into()
    })
}

#[derive(Debug, Deserialize)]
struct Hours {
    hours: Option<u32>,
}

async fn history(State(admin): State<Arc<Admin>>, Query(q): Query<Hours>) -> Json<HistoryView> {
    // A sled range scan of at most two series of KEPT_HOURS small buckets.
    Json(admin.history.view(q.hours.unwrap_or(168).min(KEPT_HOURS)))
}

#[derive(Debug, Deserialize)]
struct PinRequest {
    name: String,
    version: Option<String>,
}

fn parse_name(s: &str) -> Result<PackageName, ApiError> {
    PackageName::parse(s).map_err(|e| Error::BadRequest(e.to_string()).into())
}

async fn pin(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Json(req): Json<PinRequest>,
) -> Answer<PinAdded> {
    authorized(&admin, &headers)?;
    let name = parse_name(&req.name)?;
    let version = req
        .version
        .ok_or_else(|| Error::BadRequest("a pin names an exact version".into()))?;
    Ok(Json(admin.pin(&name, &version).await?))
}

async fn unpin(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Json(req): Json<PinRequest>,
) -> Answer<Unpinned> {
    authorized(&admin, &headers)?;
    let name = parse_name(&req.name)?;
    Ok(Json(admin.unpin(&name).await?))
}
