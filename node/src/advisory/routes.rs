//! The advisory routes, next to the other operator routes:
//!
//! - `POST /-/open-registry/admin/advisory` `{"name", "range", "kind", "reason", "url"}` (admin
//!   token): signs this operator's advisory about the package (replacing its earlier one),
//!   stores it, publishes it; answers the signed advisory ([`AdvisoryView`]).
//! - `POST /-/open-registry/admin/advisory/withdraw` `{"name", "range"}` or `{"id"}` (admin
//!   token): signs, stores and publishes a withdrawal; answers it.
//! - `GET /-/open-registry/advisories[?all=1]`: [`AdvisoryList`], in force and pending with
//!   their signers so far; `all` adds untrusted operators' advisories and withdrawals.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use open_registry_gateway::{ApiError, Error};
use open_registry_protocol::PackageName;
use open_registry_protocol::advisory::{self, AdvisoryList, AdvisoryView, Kind};
use serde::Deserialize;

use super::{AdvisoryBook, Draft, Held, OwnError, Which};
use crate::admin::token;
use crate::records::Identity;
use crate::store::Store;
use crate::tasks::advisories::Publisher;

/// What the advisory routes work with.
#[derive(Debug)]
pub(crate) struct AdvisoryApi {
    pub book: Arc<AdvisoryBook>,
    pub store: Arc<Store>,
    pub identity: Identity,
    pub publisher: Arc<Publisher>,
    /// The admin token.
    pub token: String,
}

/// The advisory routes, to merge with the others.
pub(crate) fn router(api: Arc<AdvisoryApi>) -> Router {
    Router::new()
        .route("/-/open-registry/advisories", get(list))
        .route("/-/open-registry/admin/advisory", post(add))
        .route("/-/open-registry/admin/advisory/withdraw", post(withdraw))
        .with_state(api)
}

type Answer<T> = Result<Json<T>, ApiError>;

fn authorized(api: &AdvisoryApi, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if token::matches(&api.token, given) {
        Ok(())
    } else {
        Err(Error::Unauthorized(
            "signing advisories needs the node's admin token (admin.token in its data dir)".into(),
        )
        .into())
    }
}

#[derive(Debug, Deserialize)]
struct All {
    all: Option<String>,
}

async fn list(State(api): State<Arc<AdvisoryApi>>, Query(q): Query<All>) -> Json<AdvisoryList> {
    let all = q
        .all
        .as_deref()
        .is_some_and(|a| !matches!(a, "0" | "false" | "no"));
    Json(api.book.list(all))
}

#[derive(Debug, Deserialize)]
struct AddRequest {
    name: String,
    range: String,
    kind: Option<String>,
    reason: String,
    url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WithdrawRequest {
    name: Option<String>,
    range: Option<String>,
    id: Option<String>,
}

fn parse_name(s: &str) -> Result<PackageName, ApiError> {
    PackageName::parse(s).map_err(|e| Error::BadRequest(e.to_string()).into())
}

fn own_error(e: OwnError) -> ApiError {
    match e {
        OwnError::Invalid(m) => Error::BadRequest(m).into(),
        OwnError::NotFound(m) => Error::NotFound(m).into(),
        OwnError::Capacity => Error::Unavailable(e.to_string()).into(),
        OwnError::Store(e) => Error::Internal(format!("storing the advisory: {e}")).into(),
    }
}

/// The JSON view of one of this operator's advisories.
pub(crate) fn own_view(book: &AdvisoryBook, h: &Held) -> AdvisoryView {
    book.view(&book.me(), h)
}

async fn add(
    State(api): State<Arc<AdvisoryApi>>,
    headers: HeaderMap,
    Json(req): Json<AddRequest>,
) -> Answer<AdvisoryView> {
    authorized(&api, &headers)?;
    let name = parse_name(&req.name)?;
    let kind = match req.kind.as_deref() {
        None | Some("") => Kind::Malware,
        Some(k) => k
            .parse::<Kind>()
            .map_err(|e| ApiError::from(Error::BadRequest(e)))?,
    };
    if let Some(u) = req.url.as_deref().map(str::trim).filter(|u| !u.is_empty())
        && !advisory::valid_url(u)
    {
        return Err(Error::BadRequest(format!(
            "{u:?} is not an http:// or https:// URL (at most {} bytes)",
            advisory::MAX_URL_LEN
        ))
        .into());
    }
    let draft = Draft {
        name,
        range: req.range,
        kind,
        reason: req.reason,
        url: req.url,
    };
    let h = api
        .book
        .sign(&api.store.index, &api.identity, draft)
        .await
        .map_err(own_error)?;
    api.publisher.publish(&h.wire).await;
    Ok(Json(own_view(&api.book, &h)))
}

async fn withdraw(
    State(api): State<Arc<AdvisoryApi>>,
    headers: HeaderMap,
    Json(req): Json<WithdrawRequest>,
) -> Answer<AdvisoryView> {
    authorized(&api, &headers)?;
    let which = match (req.id, req.name) {
        (Some(id), None) => Which::Id(id.trim().to_ascii_lowercase()),
        (None, Some(name)) => Which::Name(parse_name(&name)?, req.range),
        _ => {
            return Err(Error::BadRequest(
                "a withdrawal names either the package (and its range) or the advisory's id".into(),
            )
            .into());
        }
    };
    let h = api
        .book
        .withdraw(&api.store.index, &api.identity, which)
        .await
        .map_err(own_error)?;
    api.publisher.publish(&h.wire).await;
    Ok(Json(own_view(&api.book, &h)))
}
