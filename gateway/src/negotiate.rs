//! Reading what the client asked for from its request headers: the document form (`Accept`), the
//! body encoding (`Accept-Encoding`), conditional requests (`If-None-Match`) and the base URL
//! that rewritten tarball URLs point at (`Host`).
//!
//! Everything here is a pure function of header values, and lenient in what it reads: a header
//! that cannot be parsed counts as absent, so a strange client gets the plain full document
//! rather than an error. The one exception is `Host`, which ends up inside served documents and
//! is therefore checked strictly.

use axum::http::{HeaderMap, header};
use open_registry_protocol::packument::ABBREVIATED_MEDIA_TYPE;

/// True when `Accept` asks for npm's abbreviated ("corgi") document with a non-zero q-value.
pub(crate) fn wants_abbreviated(headers: &HeaderMap) -> bool {
    header_values(headers, header::ACCEPT).any(|v| {
        list_items(v)
            .any(|(range, q)| q > 0.0 && range.eq_ignore_ascii_case(ABBREVIATED_MEDIA_TYPE))
    })
}

/// True when `Accept-Encoding` allows gzip: `gzip` (or `x-gzip`) with q > 0, or `*` with q > 0
/// when gzip is not listed on its own. `gzip;q=0` is a refusal, whatever `*` says.
pub(crate) fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut explicit: Option<bool> = None;
    let mut wildcard: Option<bool> = None;
    for v in header_values(headers, header::ACCEPT_ENCODING) {
        for (coding, q) in list_items(v) {
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                // Several listings: a refusal anywhere wins, as the safer reading.
                explicit = Some(explicit.unwrap_or(true) && q > 0.0);
            } else if coding == "*" {
                wildcard = Some(q > 0.0);
            }
        }
    }
    explicit.or(wildcard).unwrap_or(false)
}

/// True when `If-None-Match` matches `etag` under weak comparison (RFC 9110 §13.1.2), or is `*`
/// (the representation exists, since we are about to send it).
pub(crate) fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    let ours = opaque(etag);
    header_values(headers, header::IF_NONE_MATCH).any(|v| {
        v.split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || (!tag.is_empty() && opaque(tag) == ours))
    })
}

/// Why a request's base URL could not be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the request has no Host header; set the gateway's public_url or send one")]
    Missing,
    #[error("the Host header is not a valid host[:port]")]
    Invalid,
    #[error("the request has more than one Host header; send exactly one")]
    Duplicate,
}

/// Refuses a request with several Host headers (RFC 9112 §3.2: answer 400). Proxies and the
/// node could each read a different one, so none is trusted.
pub(crate) fn single_host(headers: &HeaderMap) -> Result<(), HostError> {
    if headers.get_all(header::HOST).iter().nth(1).is_some() {
        return Err(HostError::Duplicate);
    }
    Ok(())
}

/// The base URL (no trailing `/`) that tarball URLs are rewritten to: the configured public URL
/// if any, else `http://<Host>`.
///
/// The Host header is attacker-controlled and ends up inside cached documents, so only the
/// characters of a hostname, an IPv6 literal and a port are accepted.
pub(crate) fn base_url(
    public_url: Option<&str>,
    headers: &HeaderMap,
    uri_authority: Option<&str>,
) -> Result<String, HostError> {
    single_host(headers)?;
    if let Some(url) = public_url {
        return Ok(url.to_owned());
    }
    let host = match headers.get(header::HOST) {
        Some(v) => v.to_str().map_err(|_| HostError::Invalid)?,
        // HTTP/2 carries the authority in the URI rather than a Host header.
        None => uri_authority.ok_or(HostError::Missing)?,
    };
    let valid = !host.is_empty()
        && host.len() <= 260
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        });
    if valid {
        Ok(format!("http://{host}"))
    } else {
        Err(HostError::Invalid)
    }
}

/// The opaque part of an entity tag: without the weakness prefix.
fn opaque(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// Every value of `name` that is valid visible ASCII.
fn header_values(headers: &HeaderMap, name: header::HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
}

/// The items of a comma-separated list with their q-values (1 when absent, 0 when unparsable,
/// so that a garbled weight never turns a refusal into an acceptance).
fn list_items(value: &str) -> impl Iterator<Item = (&str, f32)> {
    value.split(',').filter_map(|item| {
        let mut parts = item.split(';');
        let token = parts.next()?.trim();
        if token.is_empty() {
            return None;
        }
        let mut q = 1.0;
        for param in parts {
            if let Some((k, v)) = param.split_once('=')
                && k.trim().eq_ignore_ascii_case("q")
            {
                q = v
                    .trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|q| q.is_finite())
                    .unwrap_or(0.0);
            }
        }
        Some((token, q))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn abbreviated_from_npm_accept() {
        let npm = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";
        assert!(wants_abbreviated(&headers(&[(header::ACCEPT, npm)])));
        assert!(wants_abbreviated(&headers(&[(
            header::ACCEPT,
            "Application/Vnd.Npm.Install-V1+Json"
        )])));
        assert!(!wants_abbreviated(&headers(&[(
            header::ACCEPT,
            "application/json"
        )])));
        assert!(!wants_abbreviated(&headers(&[(
            header::ACCEPT,
            "application/vnd.npm.install-v1+json;q=0, application/json"
        )])));
        assert!(!wants_abbreviated(&HeaderMap::new()));
    }

    #[test]
    fn gzip_q_values() {
        let g = |v: &str| accepts_gzip(&headers(&[(header::ACCEPT_ENCODING, v)]));
        assert!(g("gzip"));
        assert!(g("gzip, deflate, br"));
        assert!(g("br;q=1.0, gzip;q=0.5"));
        assert!(g("x-gzip"));
        assert!(g("*"));
        assert!(g("GZIP"));
        assert!(!g("gzip;q=0"));
        assert!(!g("gzip; q=0.000"));
        assert!(!g("*, gzip;q=0"));
        assert!(!g("*;q=0"));
        assert!(!g("identity"));
        assert!(!g("br, deflate"));
        assert!(!g("gzip;q=bogus"));
        assert!(!accepts_gzip(&HeaderMap::new()));
        // Two headers: a refusal in either wins.
        assert!(!accepts_gzip(&headers(&[
            (header::ACCEPT_ENCODING, "gzip"),
            (header::ACCEPT_ENCODING, "gzip;q=0"),
        ])));
    }

    #[test]
    fn if_none_match_lists_weak_and_star() {
        let etag = "W/\"abc\"";
        let m = |v: &str| none_match(&headers(&[(header::IF_NONE_MATCH, v)]), etag);
        assert!(m("W/\"abc\""));
        assert!(m("\"abc\""));
        assert!(m("\"x\", W/\"abc\""));
        assert!(m("*"));
        assert!(!m("\"abcd\""));
        assert!(!m(""));
        assert!(!none_match(&HeaderMap::new(), etag));
        assert!(none_match(
            &headers(&[(header::IF_NONE_MATCH, "W/\"t\"")]),
            "\"t\""
        ));
    }

    #[test]
    fn base_url_from_config_or_host() {
        let h = headers(&[(header::HOST, "127.0.0.1:7373")]);
        assert_eq!(base_url(None, &h, None).unwrap(), "http://127.0.0.1:7373");
        assert_eq!(
            base_url(Some("https://npm.example.org"), &h, None).unwrap(),
            "https://npm.example.org"
        );
        assert_eq!(
            base_url(None, &headers(&[(header::HOST, "[::1]:80")]), None).unwrap(),
            "http://[::1]:80"
        );
        assert_eq!(
            base_url(None, &HeaderMap::new(), Some("h:1")).unwrap(),
            "http://h:1"
        );
        assert_eq!(
            base_url(None, &HeaderMap::new(), None),
            Err(HostError::Missing)
        );
        let two = headers(&[(header::HOST, "a.test"), (header::HOST, "b.test")]);
        assert_eq!(base_url(None, &two, None), Err(HostError::Duplicate));
        assert_eq!(single_host(&two), Err(HostError::Duplicate));
        assert_eq!(single_host(&h), Ok(()));
        for bad in ["evil.com/x?", "a b", "a\"b", ""] {
            assert_eq!(
                base_url(None, &headers(&[(header::HOST, bad)]), None),
                Err(HostError::Invalid),
                "{bad:?}"
            );
        }
    }
}
