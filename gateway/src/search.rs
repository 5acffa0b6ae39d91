//! `GET /-/v1/search`: the upstream's search, or, when the upstream has none (it answers 404,
//! 405 or 501, or an empty body) or there is no upstream, the registry's own
//! ([`Registry::search`]: on a node, the packages it stores).
//!
//! The types here are what a registry's own search returns ([`SearchQuery`] in,
//! [`SearchResults`] out); the gateway writes them in npm's search response shape
//! (`{"objects":[{"package":…,"score":…,"searchScore":…}],"total":…,"time":…}`), the shape npm,
//! pnpm and yarn print. When neither search exists, the answer is a JSON error npm prints, never
//! an empty body.

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use percent_encoding::percent_decode_str;
use serde::Serialize;

use crate::access::{self, Source};
use crate::error::{ApiError, json_response};
use crate::meta;
use crate::registry::{Error, ForwardMethod, Forwarded, Registry};
use crate::shared::Shared;

/// Results per page when the client does not say (npm's default).
pub const DEFAULT_SIZE: usize = 20;
/// The most results one page may ask for (npm's registry caps `size` at 250).
pub const MAX_SIZE: usize = 250;
/// The deepest offset served: past it, a page costs more than any client needs.
pub const MAX_FROM: usize = 10_000;
/// The longest search text looked at, in bytes.
pub const MAX_TEXT: usize = 256;

/// A search request: `text`, `size` and `from` of `/-/v1/search`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    /// What to look for (words; npm's `keywords:`-style qualifiers are searched as words).
    pub text: String,
    /// Results wanted, 1 to [`MAX_SIZE`].
    pub size: usize,
    /// Results to skip, up to [`MAX_FROM`].
    pub from: usize,
}

impl SearchQuery {
    /// Reads a query string (`text=left+pad&size=5`); bad or missing numbers take the
    /// defaults, and everything is clamped to the caps above.
    pub fn parse(query: &str) -> SearchQuery {
        let mut q = SearchQuery {
            text: String::new(),
            size: DEFAULT_SIZE,
            from: 0,
        };
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = v.replace('+', " ");
            let v = percent_decode_str(&v).decode_utf8_lossy();
            match k {
                "text" => q.text = truncate(v.trim(), MAX_TEXT).to_owned(),
                "size" => q.size = v.parse().unwrap_or(DEFAULT_SIZE).clamp(1, MAX_SIZE),
                "from" => q.from = v.parse().unwrap_or(0).min(MAX_FROM),
                _ => {}
            }
        }
        q
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One page of a registry's own search.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchResults {
    /// How many packages matched in all.
    pub total: usize,
    /// This page's hits, best first.
    pub hits: Vec<SearchHit>,
}

/// One package found.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    /// What npm shows of it.
    pub package: SearchPackage,
    /// Relevance, normalized so that the best match of the query is 1.
    pub score: f64,
    /// The search library's raw relevance score.
    pub search_score: f64,
}

/// A package as search results describe it (from its packument).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SearchPackage {
    /// Its name.
    pub name: String,
    /// Its `latest` version.
    pub version: String,
    /// Its description, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its keywords.
    pub keywords: Vec<String>,
    /// When `latest` was published (ISO 8601), if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    /// `homepage`, `repository` and `bugs` URLs, where the packument has them.
    pub links: std::collections::BTreeMap<String, String>,
    /// Who published `latest`, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publisher: Option<Person>,
    /// Its maintainers.
    pub maintainers: Vec<Person>,
}

/// A publisher or maintainer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Person {
    /// npm user name.
    pub username: String,
    /// E-mail address, if listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// True when an upstream's answer means it has no such endpoint.
pub(crate) fn no_endpoint(answer: &Forwarded) -> bool {
    matches!(answer.status, 404 | 405 | 501) || answer.body.iter().all(u8::is_ascii_whitespace)
}

/// `GET /-/v1/search`.
pub(crate) async fn serve<R: Registry>(
    shared: &Shared<R>,
    req: Request,
) -> Result<Response, ApiError> {
    let query = SearchQuery::parse(req.uri().query().unwrap_or_default());
    let upstream = meta::forward_raw(shared, ForwardMethod::Get, "/-/v1/search", req).await;
    let why = match upstream {
        Ok(answer) if !no_endpoint(&answer) => {
            let mut res = meta::respond(answer)?;
            access::mark(&mut res, Source::Upstream);
            return Ok(res);
        }
        Ok(answer) => format!(
            "the upstream registry provides no search endpoint (it answered {}{})",
            answer.status,
            if answer.body.is_empty() {
                " with an empty body"
            } else {
                ""
            }
        ),
        Err(ApiError::Registry(Error::Unavailable(e))) => e,
        Err(e) => return Err(e),
    };
    match shared.registry.search(&query).await {
        Ok(results) => {
            let mut res = json_response(StatusCode::OK, &render(&results));
            access::mark(&mut res, Source::Index);
            Ok(res)
        }
        Err(Error::NotFound(own)) => Err(ApiError::NoEndpoint(format!("{why}; {own}"))),
        Err(e) => Err(e.into()),
    }
}

/// npm's search response for `results`.
pub(crate) fn render(results: &SearchResults) -> Bytes {
    let objects: Vec<serde_json::Value> = results
        .hits
        .iter()
        .map(|h| {
            serde_json::json!({
                "package": h.package,
                "score": {
                    // This node measures none of npm's three quality signals.
                    "final": h.score,
                    "detail": {"quality": 0.0, "popularity": 0.0, "maintenance": 0.0},
                },
                "searchScore": h.search_score,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "objects": objects,
        "total": results.total,
        "time": httpdate::fmt_http_date(std::time::SystemTime::now()),
    });
    // A document of strings and numbers always encodes.
    Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_decodes_and_clamps() {
        let q = SearchQuery::parse("text=left+pad%21&size=5&from=2&quality=0.65");
        assert_eq!(
            q,
            SearchQuery {
                text: "left pad!".into(),
                size: 5,
                from: 2
            }
        );
        let q = SearchQuery::parse("size=100000&from=99999999&text=");
        assert_eq!((q.size, q.from, q.text.as_str()), (MAX_SIZE, MAX_FROM, ""));
        let q = SearchQuery::parse("size=zero");
        assert_eq!(q.size, DEFAULT_SIZE);
        let long = format!("text={}", "é".repeat(400));
        assert!(SearchQuery::parse(&long).text.len() <= MAX_TEXT);
    }

    #[test]
    fn results_render_in_npm_search_shape() {
        let results = SearchResults {
            total: 7,
            hits: vec![SearchHit {
                package: SearchPackage {
                    name: "left-pad".into(),
                    version: "1.3.0".into(),
                    description: Some("pads".into()),
                    keywords: vec!["pad".into()],
                    date: Some("2024-01-01T00:00:00.000Z".into()),
                    publisher: Some(Person {
                        username: "alice".into(),
                        email: None,
                    }),
                    ..SearchPackage::default()
                },
                score: 1.0,
                search_score: 3.5,
            }],
        };
        let v: serde_json::Value = serde_json::from_slice(&render(&results)).unwrap();
        assert_eq!(v["total"], 7);
        assert!(v["time"].is_string());
        let o = &v["objects"][0];
        assert_eq!(o["package"]["name"], "left-pad");
        assert_eq!(o["package"]["version"], "1.3.0");
        assert_eq!(o["package"]["keywords"][0], "pad");
        assert_eq!(o["package"]["publisher"]["username"], "alice");
        assert!(o["package"]["links"].is_object());
        assert!(o["package"]["maintainers"].is_array());
        assert_eq!(o["score"]["final"], 1.0);
        assert!(o["score"]["detail"]["popularity"].is_number());
        assert_eq!(o["searchScore"], 3.5);
    }

    #[test]
    fn missing_endpoints_are_recognized() {
        let answer = |status, body: &'static [u8]| Forwarded {
            status,
            content_type: None,
            body: Bytes::from_static(body),
        };
        assert!(no_endpoint(&answer(404, b"{}")));
        assert!(no_endpoint(&answer(405, b"")));
        assert!(no_endpoint(&answer(501, b"nope")));
        assert!(no_endpoint(&answer(200, b"")));
        assert!(no_endpoint(&answer(200, b" \n")));
        assert!(!no_endpoint(&answer(200, b"{\"objects\":[]}")));
        assert!(!no_endpoint(&answer(500, b"{\"error\":\"x\"}")));
    }
}
