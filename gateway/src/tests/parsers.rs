//! Malformed input to the gateway's own parsers, called directly (R17 in docs/security.md): the
//! path parser on strings no HTTP client could send (any Unicode, thousands of segments), and the
//! header readers on any bytes a header may carry.
//!
//! `fuzz` drives the whole router with requests; this file checks what it cannot reach, and
//! the properties the router relies on: a parsed route names only valid names and files, and
//! its canonical path parses back to the same route in every encoding npm uses; `Host` never
//! lets a character outside a host name into rewritten URLs; an unparsable q-value never
//! turns a refusal into an acceptance.

use axum::http::header::{ACCEPT, ACCEPT_ENCODING, HOST, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue};
use open_registry_protocol::{PackageName, TarballFile};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use proptest::prelude::*;

use crate::negotiate;
use crate::path::{self, Route};

/// The path of a route, as npm would request it (scoped names with an encoded slash).
fn render(route: &Route) -> String {
    match route {
        Route::Packument(n) => format!("/{}", n.url_segment()),
        Route::Version(n, spec) => format!("/{}/{spec}", n.url_segment()),
        Route::Tarball(n, f) => format!("/{}/-/{f}", n.url_segment()),
        Route::DistTags(n) => format!("/-/package/{}/dist-tags", n.url_segment()),
        Route::Records(n) => format!("/-/open-registry/records/{}", n.url_segment()),
        Route::Blob(id) => format!("/-/open-registry/blobs/{id}"),
        Route::Ping => "/-/ping".into(),
        Route::Whoami => "/-/whoami".into(),
        Route::Keys => "/-/npm/v1/keys".into(),
        Route::AdvisoriesBulk => "/-/npm/v1/security/advisories/bulk".into(),
        Route::AuditsQuick => "/-/npm/v1/security/audits/quick".into(),
        Route::Search => "/-/v1/search".into(),
        Route::Status => "/-/open-registry/status".into(),
        Route::Metrics => "/-/metrics".into(),
    }
}

/// Everything but `/` and `%`-free unreserved characters: what an over-eager client encodes.
const EAGER: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'@')
    .add(b'.')
    .add(b'-')
    .add(b'_')
    .add(b'~')
    .add(b'+')
    .add(b'!')
    .add(b'*')
    .add(b'\'')
    .add(b'(')
    .add(b')');

/// Real registry paths, some characters percent-encoded (either case) or case-flipped.
fn route_path() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        "[a-z][a-z0-9._-]{0,10}",
        "@[a-z0-9]{1,4}/[a-z0-9][a-z0-9._-]{0,6}"
    ];
    let shape = (
        name,
        0u8..7,
        "[0-9]{1,2}\\.[0-9]\\.[0-9](-[a-z]{1,3})?",
        "[a-z]{1,8}",
    )
        .prop_map(|(n, shape, v, tag)| {
            let seg = n.replace('/', "%2f");
            let unscoped = n.rsplit('/').next().unwrap_or_default().to_owned();
            match shape {
                0 => format!("/{seg}"),
                1 => format!("/{n}"),
                2 => format!("/{seg}/{v}"),
                3 => format!("/{n}/{tag}"),
                4 => format!("/{seg}/-/{unscoped}-{v}.tgz"),
                5 => format!("/-/package/{n}/dist-tags"),
                _ => format!("/-/open-registry/records/{seg}"),
            }
        });
    (shape, prop::collection::vec((any::<usize>(), 0u8..3), 0..3)).prop_map(|(p, edits)| {
        let mut chars: Vec<String> = p.chars().map(String::from).collect();
        for (at, how) in edits {
            let i = 1 + at % (chars.len() - 1);
            let c = chars[i].clone();
            chars[i] = match how {
                0 => c.bytes().map(|b| format!("%{b:02x}")).collect(),
                1 => c.bytes().map(|b| format!("%{b:02X}")).collect(),
                _ => c.to_uppercase(),
            };
        }
        chars.concat()
    })
}

fn raw_path() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => route_path(),
        1 => any::<String>().prop_map(|s| format!("/{s}")),
        1 => any::<String>(),
        1 => "(/[a-z0-9@.%~_-]{0,6}){0,8}/?",
        1 => "(/(@s|%40s|p|-|1\\.0\\.0|p-1\\.0\\.0\\.tgz|%2f|%2e|\\.\\.|%00|%ff|%c0%ae)){1,6}",
        1 => prop::collection::vec("[a-z]{1,3}", 1000..2000).prop_map(|v| format!("/{}", v.join("/"))),
        1 => "/[a-z]{300,400}",
    ]
}

#[test]
fn any_string_parses_to_a_safe_route_or_a_clear_error() {
    let config = ProptestConfig {
        cases: 1024,
        ..ProptestConfig::default()
    };
    let routes = std::cell::Cell::new(0u32);
    proptest!(config, |(raw in raw_path())| {
        match path::parse(&raw) {
            Ok(route) => {
                routes.set(routes.get() + 1);
                match &route {
                    Route::Tarball(n, f) => {
                        prop_assert!(TarballFile::parse(f.as_str()).is_ok());
                        let prefix = format!("{}-", n.unscoped());
                        prop_assert!(f.as_str().starts_with(&prefix), "{} under {}", f, n);
                    }
                    Route::Version(_, spec) => {
                        prop_assert!(!spec.is_empty() && spec.len() <= 256);
                        prop_assert!(!spec.contains(['/', '\\', '%', '\0']) && spec != "." && spec != "..");
                    }
                    _ => {}
                }
                // Canonical, and insensitive to encoding: the rendered path and an eagerly
                // encoded one name the same route.
                let canonical = render(&route);
                prop_assert_eq!(path::parse(&canonical), Ok(route.clone()), "{}", canonical);
                let eager = canonical
                    .split('/')
                    .map(|seg| utf8_percent_encode(seg, EAGER).to_string())
                    .collect::<Vec<_>>()
                    .join("/");
                prop_assert_eq!(path::parse(&eager), Ok(route), "{}", eager);
            }
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                // A 404 is only for well-formed paths: no traversal in any decoding.
                if !e.is_bad_request() {
                    let decoded = percent_encoding::percent_decode_str(&raw).decode_utf8_lossy();
                    prop_assert!(!decoded.split('/').any(|s| s == ".." || s == "."), "{}: {:?}", raw, e);
                }
            }
        }
    });
    // Otherwise the properties of parsed routes would hold vacuously.
    assert!(routes.get() >= 50, "only {} paths parsed", routes.get());
}

proptest! {
    #[test]
    fn header_readers_never_panic_on_any_header_bytes(
        values in prop::collection::vec(prop_oneof![
            prop::collection::vec(any::<u8>(), 0..60),
            "[ -~]{0,60}".prop_map(String::into_bytes),
            "(gzip|x-gzip|\\*|identity|application/vnd\\.npm\\.install-v1\\+json|W/\"[a-z]\"|\"[a-z]\")(;q=([0-9.e+-]{0,6}|NaN|inf|-0))?(, ?)?"
                .prop_map(String::into_bytes),
        ], 0..4),
        etag in "(W/)?\"[a-z]{0,3}\"",
    ) {
        let mut h = HeaderMap::new();
        for v in &values {
            let Ok(v) = HeaderValue::from_bytes(v) else { continue };
            for name in [ACCEPT, ACCEPT_ENCODING, IF_NONE_MATCH, HOST] {
                h.append(name, v.clone());
            }
        }
        let _ = negotiate::wants_abbreviated(&h);
        let _ = negotiate::accepts_gzip(&h);
        let _ = negotiate::none_match(&h, &etag);
        for host in h.get_all(HOST) {
            let mut one = HeaderMap::new();
            one.insert(HOST, host.clone());
            if let Ok(base) = negotiate::base_url(None, &one, None) {
                let rest = base.strip_prefix("http://").unwrap();
                prop_assert!(!rest.is_empty() && rest.len() <= 260);
                prop_assert!(
                    rest.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b)),
                    "{}", base
                );
            }
        }
    }

    #[test]
    fn unparsable_weights_refuse(q in prop_oneof![
        "[a-zA-Z]{1,5}", Just("NaN".to_owned()), Just("inf".to_owned()), Just("-inf".to_owned()),
        Just("1e40".to_owned()), Just("".to_owned()), Just("0".to_owned()), Just("-1".to_owned()),
    ]) {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, HeaderValue::from_str(&format!("gzip;q={q}, *")).unwrap());
        prop_assert!(!negotiate::accepts_gzip(&h), "gzip;q={} accepted", q);
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_str(&format!("application/vnd.npm.install-v1+json;q={q}")).unwrap());
        prop_assert!(!negotiate::wants_abbreviated(&h), "q={} accepted", q);
    }
}

#[test]
fn a_long_valid_name_round_trips() {
    let n = PackageName::parse(&format!("@{}/{}", "s".repeat(100), "p".repeat(112))).unwrap();
    let route = Route::Packument(n);
    assert_eq!(path::parse(&render(&route)), Ok(route));
}
