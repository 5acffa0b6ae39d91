//! The client side: the `open-registry` command line and what it does against a running node.
//!
//! - [`cli`]: the commands (`init`, `start`, `status`, `id`, `verify`, `pin`, `peers`).
//! - `pinning`: which exact versions a pin request means, read off the node's packuments.
//! - `verify`: checking packages and lockfiles through a gateway, trusting nothing it says.
//! - `NodeClient`: the one HTTP client these use to talk to a node's gateway and operator
//!   routes, with the node's `{"error": ...}` messages turned into `ClientError`s.
//!
//! Nothing here reaches into a node's internals: a command talks to a node over HTTP, reads the
//! data dir's files a node leaves for it (`node.json`, `admin.token`, `keys.json`), or starts
//! one (`start`).

pub mod cli;
pub(crate) mod pinning;
pub(crate) mod verify;

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// How long connecting to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a plain read (status, lists, documents) may take.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an admin action may take (pinning fetches the tarball first).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a request to a node failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered.
    #[error("no node answering at {base}")]
    Unreachable {
        base: String,
        #[source]
        source: reqwest::Error,
    },
    /// The node answered with an error status; `message` is its `{"error": ...}`.
    #[error("{status} {message}")]
    Status { status: u16, message: String },
    /// The answer could not be read or parsed.
    #[error("unreadable answer from {url}")]
    Body {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An admin action without the admin token.
    #[error("no admin token (admin.token in the node's data dir; pass --data-dir)")]
    NoToken,
}

impl ClientError {
    /// The HTTP status, when the node answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A node's gateway, as the command line talks to it: one connection pool for every request.
#[derive(Debug, Clone)]
pub struct NodeClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl NodeClient {
    /// A client for the gateway at `base` (`http://host:port`), with the admin `token` if any.
    pub fn new(base: &str, token: Option<String>) -> Result<NodeClient, reqwest::Error> {
        Ok(NodeClient {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .build()?,
        })
    }

    /// The gateway's base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path` with `accept`, within `timeout`; the response once its status is a success.
    pub async fn get(
        &self,
        path: &str,
        accept: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, ClientError> {
        let url = format!("{}/{}", self.base, path.trim_start_matches('/'));
        let r = self
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, accept)
            .timeout(timeout)
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                base: self.base.clone(),
                source,
            })?;
        checked(r).await
    }

    /// `GET path` as JSON into `T`.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let r = self.get(path, "application/json", READ_TIMEOUT).await?;
        json(r).await
    }

    /// `POST /-/open-registry/admin/<action>` with the admin token and a JSON body.
    pub async fn admin<T: DeserializeOwned>(
        &self,
        action: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let token = self.token.as_deref().ok_or(ClientError::NoToken)?;
        let r = self
            .http
            .post(format!("{}/-/open-registry/admin/{action}", self.base))
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body).map_err(|e| ClientError::Body {
                url: action.to_owned(),
                source: e.into(),
            })?)
            .timeout(ADMIN_TIMEOUT)
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                base: self.base.clone(),
                source,
            })?;
        json(checked(r).await?).await
    }
}

/// The response if its status is a success, else the node's error message.
async fn checked(r: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    if r.status().is_success() {
        return Ok(r);
    }
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap_or_default();
    Err(ClientError::Status {
        status,
        message: error_message(&body),
    })
}

async fn json<T: DeserializeOwned>(r: reqwest::Response) -> Result<T, ClientError> {
    let url = r.url().to_string();
    let body = r.bytes().await.map_err(|e| ClientError::Body {
        url: url.clone(),
        source: e.into(),
    })?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Body {
        url,
        source: e.into(),
    })
}

/// The `error` of a `{"error": ...}` body, else the body as text.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_come_from_the_json_body() {
        assert_eq!(
            error_message(br#"{"error":"no such package"}"#),
            "no such package"
        );
        assert_eq!(error_message(b"plain"), "plain");
    }
}
