//! Parsing request paths into [`Route`]s, the only place the gateway reads a URL path.
//!
//! The raw path is split on `/` first and each segment is percent-decoded on its own, so an
//! encoded slash (`@scope%2fname`) stays inside its segment. Invariants, whatever the encoding:
//!
//! - no segment, and no `/`-separated part of a decoded segment, is empty, `.` or `..`;
//! - no decoded segment contains NUL, `\` or `%` (a `%` after one decoding means the path was
//!   encoded twice, e.g. `%252e`, which only evasion needs);
//! - package names pass [`PackageName::parse`] and tarball files [`TarballFile::parse`], and a
//!   tarball file belongs to the package it is requested under.
//!
//! So nothing that reaches a [`crate::Registry`] can name anything outside the registry's
//! namespace. Malformed paths are 400; well-formed paths that name no route are 404.

use std::borrow::Cow;

use open_registry_protocol::{BlobId, NameError, PackageName, TarballFile};
use percent_encoding::percent_decode_str;

/// The longest version or dist-tag accepted in `/<name>/<spec>`.
const MAX_SPEC_LEN: usize = 256;

/// What a request path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/<name>`: the packument.
    Packument(PackageName),
    /// `/<name>/<version-or-dist-tag>`.
    Version(PackageName, String),
    /// `/<name>/-/<file>.tgz`.
    Tarball(PackageName, TarballFile),
    /// `/-/package/<name>/dist-tags` (`npm dist-tag ls`).
    DistTags(PackageName),
    /// `/-/ping`.
    Ping,
    /// `/-/whoami`.
    Whoami,
    /// `/-/npm/v1/keys`.
    Keys,
    /// `/-/npm/v1/security/advisories/bulk`.
    AdvisoriesBulk,
    /// `/-/npm/v1/security/audits/quick`.
    AuditsQuick,
    /// `/-/v1/search`.
    Search,
    /// `/-/open-registry/status`.
    Status,
    /// `/-/open-registry/records/<name>`.
    Records(PackageName),
    /// `/-/open-registry/blobs/<cid>`.
    Blob(BlobId),
    /// `/-/metrics`.
    Metrics,
}

/// Why a path names nothing this gateway serves. Messages are shown to npm users.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// 400: the path is not a well-formed registry path.
    #[error("malformed request path: {0}")]
    Malformed(&'static str),
    /// 400: `.`/`..` segments, backslashes or NUL, in any encoding.
    #[error("path traversal is not allowed")]
    Traversal,
    /// 400: the package or tarball file name breaks npm's rules.
    #[error("{0}")]
    Name(#[from] NameError),
    /// 400: the version or dist-tag has characters neither can contain.
    #[error("invalid version or dist-tag {0:?}")]
    Spec(String),
    /// 404: a well-formed path that names no route.
    #[error("not found: {0}")]
    NoRoute(String),
    /// 404: a tarball file name that is not one of the package's.
    #[error("{file} is not a tarball of {name}")]
    ForeignTarball { name: String, file: String },
}

impl PathError {
    /// True when the client sent something invalid (400) rather than something absent (404).
    pub fn is_bad_request(&self) -> bool {
        !matches!(
            self,
            PathError::NoRoute(_) | PathError::ForeignTarball { .. }
        )
    }
}

/// Parses a raw (still percent-encoded) request path, without its query.
pub(crate) fn parse(raw: &str) -> Result<Route, PathError> {
    let rest = raw
        .strip_prefix('/')
        .ok_or(PathError::Malformed("the path must start with '/'"))?;
    if rest.is_empty() {
        return Err(PathError::NoRoute("/".into()));
    }
    let segs = rest.split('/').map(decode).collect::<Result<Vec<_>, _>>()?;
    let segs: Vec<&str> = segs.iter().map(|s| s.as_ref()).collect();
    match segs.as_slice() {
        ["-", special @ ..] => parse_special(special, raw),
        _ => parse_package(&segs, raw),
    }
}

/// Decodes one raw segment and checks the invariants in the module docs.
fn decode(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if raw.is_empty() {
        return Err(PathError::Malformed(
            "empty path segment (double or trailing slash)",
        ));
    }
    if raw.contains('\\') {
        return Err(PathError::Traversal);
    }
    let s = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| PathError::Malformed("path is not UTF-8"))?;
    if s.contains(['\0', '\\']) {
        return Err(PathError::Traversal);
    }
    if s.contains('%') {
        return Err(PathError::Malformed("stray or repeated percent-encoding"));
    }
    for part in s.split('/') {
        match part {
            "." | ".." => return Err(PathError::Traversal),
            "" => {
                return Err(PathError::Malformed(
                    "empty path segment (double or trailing slash)",
                ));
            }
            _ => {}
        }
    }
    Ok(s)
}

/// `/-/...` routes.
fn parse_special(segs: &[&str], raw: &str) -> Result<Route, PathError> {
    Ok(match segs {
        ["ping"] => Route::Ping,
        ["whoami"] => Route::Whoami,
        ["metrics"] => Route::Metrics,
        ["npm", "v1", "keys"] => Route::Keys,
        ["npm", "v1", "security", "advisories", "bulk"] => Route::AdvisoriesBulk,
        ["npm", "v1", "security", "audits", "quick"] => Route::AuditsQuick,
        ["v1", "search"] => Route::Search,
        ["open-registry", "status"] => Route::Status,
        ["open-registry", "records", name @ ..] if !name.is_empty() => {
            let (name, rest) = split_name(name)?;
            if !rest.is_empty() {
                return Err(PathError::NoRoute(raw.to_owned()));
            }
            Route::Records(name)
        }
        ["open-registry", "blobs", cid] => Route::Blob(
            cid.parse()
                .map_err(|_| PathError::Malformed("not a blob id"))?,
        ),
        ["package", name @ .., "dist-tags"] if !name.is_empty() => {
            let (name, rest) = split_name(name)?;
            if !rest.is_empty() {
                return Err(PathError::NoRoute(raw.to_owned()));
            }
            Route::DistTags(name)
        }
        _ => return Err(PathError::NoRoute(raw.to_owned())),
    })
}

/// `/<name>`, `/<name>/<spec>` and `/<name>/-/<file>`.
fn parse_package(segs: &[&str], raw: &str) -> Result<Route, PathError> {
    let (name, rest) = split_name(segs)?;
    match rest {
        [] => Ok(Route::Packument(name)),
        [spec] => Ok(Route::Version(name, check_spec(spec)?)),
        ["-", file] => {
            let file = TarballFile::parse(file)?;
            // npm names files `<unscoped>-<version>.tgz`; anything else under this package is
            // a request for another package's bytes.
            let owned = file
                .as_str()
                .strip_prefix(name.unscoped())
                .is_some_and(|tail| tail.starts_with('-'));
            if owned {
                Ok(Route::Tarball(name, file))
            } else {
                Err(PathError::ForeignTarball {
                    name: name.to_string(),
                    file: file.to_string(),
                })
            }
        }
        _ => Err(PathError::NoRoute(raw.to_owned())),
    }
}

/// Takes the package name off the front of decoded segments: `@scope/name` arrives as one
/// segment when the slash was encoded and as two when it was not.
fn split_name<'a, 'b>(segs: &'a [&'b str]) -> Result<(PackageName, &'a [&'b str]), PathError> {
    match segs {
        [first, second, rest @ ..] if first.starts_with('@') && !first.contains('/') => {
            Ok((PackageName::parse(&format!("{first}/{second}"))?, rest))
        }
        [first, rest @ ..] => Ok((PackageName::parse(first)?, rest)),
        [] => Err(PathError::Malformed("missing package name")),
    }
}

/// A version (`1.2.3-rc.1+build`) or a dist-tag: npm requires tags to survive
/// `encodeURIComponent` unchanged, so these characters cover both.
fn check_spec(spec: &str) -> Result<String, PathError> {
    let ok = !spec.is_empty()
        && spec.len() <= MAX_SPEC_LEN
        && spec.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'_' | b'.' | b'+' | b'~' | b'!' | b'*' | b'\'' | b'(' | b')'
                )
        });
    if ok {
        Ok(spec.to_owned())
    } else {
        Err(PathError::Spec(spec.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> PackageName {
        PackageName::parse(s).unwrap()
    }

    #[test]
    fn packuments_and_scope_encodings() {
        assert_eq!(parse("/lodash"), Ok(Route::Packument(name("lodash"))));
        for p in ["/@types%2fnode", "/@types%2Fnode", "/@types/node"] {
            assert_eq!(parse(p), Ok(Route::Packument(name("@types/node"))), "{p}");
        }
    }

    #[test]
    fn versions_and_tags() {
        assert_eq!(
            parse("/left-pad/1.3.0"),
            Ok(Route::Version(name("left-pad"), "1.3.0".into()))
        );
        assert_eq!(
            parse("/@s%2fp/next"),
            Ok(Route::Version(name("@s/p"), "next".into()))
        );
        assert_eq!(
            parse("/@s/p/1.0.0-rc.1+b.2"),
            Ok(Route::Version(name("@s/p"), "1.0.0-rc.1+b.2".into()))
        );
        assert!(matches!(parse("/x/a%20b"), Err(PathError::Spec(_))));
        assert!(matches!(parse("/x/a%3Cb"), Err(PathError::Spec(_))));
    }

    #[test]
    fn tarballs() {
        let file = TarballFile::parse("p-1.0.0.tgz").unwrap();
        for p in [
            "/@s/p/-/p-1.0.0.tgz",
            "/@s%2fp/-/p-1.0.0.tgz",
            "/@s%2Fp/-/p-1.0.0.tgz",
        ] {
            assert_eq!(
                parse(p),
                Ok(Route::Tarball(name("@s/p"), file.clone())),
                "{p}"
            );
        }
        assert!(matches!(
            parse("/left-pad/-/left-pad-1.3.0.tgz"),
            Ok(Route::Tarball(..))
        ));
        // Another package's file, or a prefix that is not followed by '-'.
        for p in ["/a/-/b-1.0.0.tgz", "/ab/-/a-1.tgz", "/a/-/ab.tgz"] {
            let e = parse(p).unwrap_err();
            assert!(matches!(e, PathError::ForeignTarball { .. }), "{p}: {e:?}");
            assert!(!e.is_bad_request());
        }
        // Prefix rule only: "left-pad-1.0.0.tgz" could be version "pad-1.0.0" of "left"; the
        // registry decides whether that file exists.
        assert!(parse("/left/-/left-pad-1.0.0.tgz").is_ok());
        assert!(matches!(parse("/a/-/a-1.tar"), Err(PathError::Name(_))));
    }

    #[test]
    fn special_routes() {
        assert_eq!(parse("/-/ping"), Ok(Route::Ping));
        assert_eq!(parse("/-/whoami"), Ok(Route::Whoami));
        assert_eq!(parse("/-/npm/v1/keys"), Ok(Route::Keys));
        assert_eq!(parse("/-/v1/search"), Ok(Route::Search));
        assert_eq!(
            parse("/-/npm/v1/security/advisories/bulk"),
            Ok(Route::AdvisoriesBulk)
        );
        assert_eq!(
            parse("/-/npm/v1/security/audits/quick"),
            Ok(Route::AuditsQuick)
        );
        assert_eq!(parse("/-/open-registry/status"), Ok(Route::Status));
        assert_eq!(parse("/-/metrics"), Ok(Route::Metrics));
        assert_eq!(
            parse("/-/package/@s/p/dist-tags"),
            Ok(Route::DistTags(name("@s/p")))
        );
        assert_eq!(
            parse("/-/package/@s%2fp/dist-tags"),
            Ok(Route::DistTags(name("@s/p")))
        );
        assert_eq!(
            parse("/-/package/x/dist-tags"),
            Ok(Route::DistTags(name("x")))
        );
        for p in [
            "/-/nope",
            "/-",
            "/-/package/dist-tags",
            "/-/package/a/b/dist-tags",
            "/-/user/org.couchdb.user:x",
        ] {
            assert!(matches!(parse(p), Err(PathError::NoRoute(_))), "{p}");
        }
    }

    #[test]
    fn traversal_in_any_encoding() {
        for p in [
            "/..",
            "/%2e%2e/x",
            "/%2E%2E",
            "/..%2f..%2fetc%2fpasswd",
            "/x/..",
            "/x/-/..",
            "/x/%2e",
            "/a%5cb",
            "/a\\b",
            "/a%00b",
            "/@s%2f..",
            "/@s/../x",
        ] {
            let e = parse(p).unwrap_err();
            assert!(e.is_bad_request(), "{p}: {e:?}");
        }
        for p in [
            "//x",
            "/x//",
            "/x/",
            "/%252e%252e",
            "/a%2",
            "/a%zz",
            "/%ff",
            "x",
        ] {
            assert!(matches!(parse(p), Err(PathError::Malformed(_))), "{p}");
        }
    }

    #[test]
    fn bad_names_and_unknown_shapes() {
        assert!(matches!(
            parse("/UPPER"),
            Err(PathError::Name(NameError::Uppercase(_)))
        ));
        let long = format!("/{}", "a".repeat(215));
        assert!(matches!(
            parse(&long),
            Err(PathError::Name(NameError::TooLong))
        ));
        assert!(parse(&format!("/{}", "a".repeat(214))).is_ok());
        assert!(matches!(parse("/@s"), Err(PathError::Name(_))));
        assert!(matches!(parse("/_private"), Err(PathError::Name(_))));
        assert!(matches!(parse("/@s%2fp%2fq"), Err(PathError::Name(_))));
        assert!(matches!(parse("/@s/p/x/y"), Err(PathError::NoRoute(_))));
        assert!(matches!(
            parse("/x/-/x-1.tgz/more"),
            Err(PathError::NoRoute(_))
        ));
        assert!(matches!(parse("/"), Err(PathError::NoRoute(_))));
    }
}
