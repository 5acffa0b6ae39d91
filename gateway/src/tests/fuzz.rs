//! Fuzzed request paths through the whole router: it never panics, every refusal is a JSON
//! error, and nothing that decodes to a traversal or breaks npm's name rules is ever a 2xx.
//!
//! The oracle is independent of `path::parse`: it decodes the path up to three times and looks
//! for `.`/`..` components, backslashes, NUL and empty segments itself.

use axum::http::Uri;
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use proptest::prelude::*;

use super::*;

/// Path segments: valid pieces of real routes mixed with every encoding trick we know.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "left-pad", "@s", "p", "@s%2fp", "@s%2Fp", "-", "1.0.0", "next", "latest",
            "p-1.0.0.tgz", "left-pad-1.3.0.tgz", "ping", "whoami", "npm", "v1", "keys", "search",
            "package", "dist-tags", "metrics", "open-registry", "status",
        ])
        .prop_map(str::to_owned),
        3 => prop::sample::select(vec![
            "..", ".", "%2e%2e", "%2E%2e", "%2e", ".%2e", "%252e%252e", "%25", "%00", "%5c", "\\",
            "%5C..", "..%2f..", "%2f", "%2F", "", "UPPER", "_x", ".x", "a%20b", "%c0%ae", "%ff",
            "%", "%2", "%zz", "~", "a..b",
        ])
        .prop_map(str::to_owned),
        2 => "[a-z0-9._~@-]{1,12}",
        1 => "%[0-9a-fA-F]{2}",
        1 => any::<String>().prop_map(|s| utf8_percent_encode(&s, NON_ALPHANUMERIC).to_string()),
    ]
}

fn path() -> impl Strategy<Value = String> {
    (prop::collection::vec(segment(), 0..6), any::<bool>()).prop_map(|(segs, trailing)| {
        let mut p = format!("/{}", segs.join("/"));
        if trailing {
            p.push('/');
        }
        p
    })
}

/// Real, successful paths.
const VALID: &[&str] = &[
    "/left-pad",
    "/left-pad/1.3.0",
    "/left-pad/latest",
    "/left-pad/-/left-pad-1.3.0.tgz",
    "/@s/p",
    "/@s%2fp",
    "/@s/p/next",
    "/@s/p/-/p-1.0.0.tgz",
    "/@s%2Fp/-/p-2.0.0-beta.1.tgz",
    "/-/ping",
    "/-/npm/v1/keys",
    "/-/package/@s/p/dist-tags",
];

/// A valid path with some characters percent-encoded (lower or upper hex), some letters
/// uppercased, and perhaps one trick spliced in: mostly still valid, so successes are common
/// and the oracle has something to judge.
fn mutated_valid() -> impl Strategy<Value = String> {
    (
        prop::sample::select(VALID),
        prop::collection::vec(0u8..12, 64),
        prop::option::of((segment(), 0usize..8)),
    )
        .prop_map(|(base, rolls, splice)| {
            let mut out = String::from("/");
            for (c, roll) in base[1..].chars().zip(rolls.iter().cycle()) {
                match roll {
                    0 => out.push_str(&format!("%{:02x}", c as u32)),
                    1 => out.push_str(&format!("%{:02X}", c as u32)),
                    2 => out.push(c.to_ascii_uppercase()),
                    _ => out.push(c),
                }
            }
            if let Some((trick, at)) = splice {
                let mut segs: Vec<String> = out[1..].split('/').map(str::to_owned).collect();
                let at = at % (segs.len() + 1);
                segs.insert(at, trick);
                out = format!("/{}", segs.join("/"));
            }
            out
        })
}

/// True when `path`, decoded once, twice or three times, has a component that is empty, `.`
/// or `..`, or contains a backslash or NUL: such a path must never succeed.
fn looks_like_traversal(path: &str) -> bool {
    let mut current = path.to_owned();
    for _ in 0..3 {
        let inner = current.strip_prefix('/').unwrap_or(&current);
        if inner.contains(['\\', '\0'])
            || inner
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return true;
        }
        current = percent_decode_str(&current)
            .decode_utf8_lossy()
            .into_owned();
    }
    false
}

/// True when the first package-name-looking part of the decoded path breaks npm's rules in a
/// way a quick independent check can see (uppercase, a leading `.` or `_`).
fn bad_first_name(path: &str) -> bool {
    let decoded = percent_decode_str(path).decode_utf8_lossy().into_owned();
    let first = decoded
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("");
    if first == "-" {
        return false;
    }
    let name = first.trim_start_matches('@');
    first.chars().any(|c| c.is_ascii_uppercase()) || name.starts_with(['.', '_'])
}

#[test]
fn fuzzed_paths_never_panic_and_never_succeed_when_invalid() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (_, app) = gateway();
    let config = ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    };
    let successes = std::cell::Cell::new(0u32);
    proptest!(config, |(p in prop_oneof![path(), mutated_valid()])| {
        // Only what an HTTP client can actually send.
        prop_assume!(Uri::try_from(p.as_str()).is_ok());
        let a = rt.block_on(get(&app, &p, &[]));
        let status = a.status.as_u16();
        prop_assert!(
            matches!(status, 200 | 304 | 400 | 401 | 404 | 405),
            "{p}: unexpected {status}"
        );
        if status >= 400 {
            prop_assert_eq!(a.header("content-type"), Some("application/json"));
            let v: serde_json::Value = serde_json::from_slice(&a.body)
                .map_err(|e| TestCaseError::fail(format!("{p}: body not JSON: {e}")))?;
            prop_assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "{p}: {v}");
        }
        if a.status.is_success() {
            successes.set(successes.get() + 1);
            prop_assert!(!looks_like_traversal(&p), "{p} succeeded");
            prop_assert!(!bad_first_name(&p), "{p} succeeded with an invalid name");
        }
    });
    // Otherwise the property above would hold vacuously.
    assert!(successes.get() >= 20, "only {} successes", successes.get());
}

/// Valid paths with one traversal trick spliced in at any position: always refused.
#[test]
fn spliced_traversal_is_always_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (reg, app) = gateway();
    let bases = [
        "/left-pad",
        "/left-pad/1.3.0",
        "/left-pad/-/left-pad-1.3.0.tgz",
        "/@s/p/-/p-1.0.0.tgz",
        "/@s%2fp/next",
        "/-/package/left-pad/dist-tags",
    ];
    let tricks = [
        "..",
        "%2e%2e",
        "%2E%2E",
        ".%2e",
        "%2e.",
        "%252e%252e",
        "..%2f..",
        "%2e%2e%2f",
        "%5c..",
        "..%5c",
        "\\..",
        "%00",
        ".",
        "%2e",
        "",
    ];
    let config = ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        base in prop::sample::select(bases.to_vec()),
        trick in prop::sample::select(tricks.to_vec()),
        at in 0usize..8,
    )| {
        let mut segs: Vec<&str> = base.trim_start_matches('/').split('/').collect();
        let at = at % (segs.len() + 1);
        segs.insert(at, trick);
        let p = format!("/{}", segs.join("/"));
        prop_assume!(Uri::try_from(p.as_str()).is_ok());
        let a = rt.block_on(get(&app, &p, &[]));
        prop_assert!(
            matches!(a.status.as_u16(), 400 | 404),
            "{p}: {} {:?}", a.status, String::from_utf8_lossy(&a.body)
        );
    });
    // Spliced paths may still parse to a real package with a bad spec or file, which is
    // refused before the registry; none of them may have fetched a tarball.
    assert_eq!(reg.tarball_calls(), 0);
}
