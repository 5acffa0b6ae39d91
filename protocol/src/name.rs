//! npm package names and tarball file names.
//!
//! A [`PackageName`] can only be built through [`PackageName::parse`], which applies npm's rules
//! for new package names: at most 214 characters, lowercase, URL-safe (only `a-z`, `0-9`, `-`,
//! `_` and `.`), no leading `.` or `_`, and `@scope/name` for scoped packages. Because the
//! character set excludes `/`, `\`, `%` and NUL and a part may not start with `.`, a valid name
//! can never be a path traversal, whatever encoding it arrived in.
//!
//! Non-goal: npm also accepts a few legacy names (uppercase, `~`, `!`) for packages published
//! before the rules tightened. They are refused here, as npm refuses to publish them today.

use std::fmt;
use std::str::FromStr;

/// The longest name npm accepts, scope included.
pub const MAX_NAME_LEN: usize = 214;

/// Why a package or file name was refused. The message is shown to npm users as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("package name is empty")]
    Empty,
    #[error("package name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("package name {0:?} must be lowercase")]
    Uppercase(String),
    #[error("package name {0:?} may not start with '.' or '_'")]
    LeadingDotOrUnderscore(String),
    #[error("package name {0:?} contains a character that is not URL-safe")]
    NotUrlSafe(String),
    #[error("scoped package name {0:?} must look like @scope/name")]
    BadScope(String),
    #[error("{0:?} is a reserved name")]
    Reserved(String),
    #[error("tarball file name {0:?} is not valid")]
    BadFile(String),
}

/// A validated npm package name, scoped (`@scope/name`) or not.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackageName {
    /// The full name, `@scope/name` or `name`.
    full: String,
    /// Byte offset of the unscoped part in `full` (0 when unscoped).
    split: usize,
}

impl PackageName {
    /// Validates `s` under npm's rules for new package names.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        if let Some(rest) = s.strip_prefix('@') {
            let (scope, name) = rest
                .split_once('/')
                .ok_or_else(|| NameError::BadScope(s.to_owned()))?;
            if scope.is_empty() || name.is_empty() {
                return Err(NameError::BadScope(s.to_owned()));
            }
            check_part(s, scope)?;
            check_part(s, name)?;
            Ok(Self {
                full: s.to_owned(),
                split: scope.len() + 2,
            })
        } else {
            check_part(s, s)?;
            if s == "node_modules" || s == "favicon.ico" {
                return Err(NameError::Reserved(s.to_owned()));
            }
            Ok(Self {
                full: s.to_owned(),
                split: 0,
            })
        }
    }

    /// The full name as npm writes it: `@scope/name` or `name`.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The scope without `@`, if any.
    pub fn scope(&self) -> Option<&str> {
        (self.split > 0).then(|| &self.full[1..self.split - 1])
    }

    /// The name without its scope: what tarball file names start with.
    pub fn unscoped(&self) -> &str {
        &self.full[self.split..]
    }

    /// The name as one URL path segment: `@scope%2fname` for scoped names, the way npm requests
    /// packuments.
    pub fn url_segment(&self) -> String {
        match self.scope() {
            Some(scope) => format!("@{scope}%2f{}", self.unscoped()),
            None => self.full.clone(),
        }
    }
}

fn check_part(full: &str, part: &str) -> Result<(), NameError> {
    if part.starts_with('.') || part.starts_with('_') {
        return Err(NameError::LeadingDotOrUnderscore(full.to_owned()));
    }
    for c in part.chars() {
        match c {
            'a'..='z' | '0'..='9' | '-' | '_' | '.' => {}
            'A'..='Z' => return Err(NameError::Uppercase(full.to_owned())),
            _ => return Err(NameError::NotUrlSafe(full.to_owned())),
        }
    }
    Ok(())
}

impl fmt::Display for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackageName({})", self.full)
    }
}

impl FromStr for PackageName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::parse(s)
    }
}

impl serde::Serialize for PackageName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

impl<'de> serde::Deserialize<'de> for PackageName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A tarball file name as it appears after `/-/` in a tarball URL, e.g. `lodash-4.17.21.tgz`.
///
/// Only `A-Z a-z 0-9 . _ + -` are allowed (what a semver version and a package name can contain),
/// it must end in `.tgz` and may not start with `.`: it is safe as a single path segment.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TarballFile(String);

impl TarballFile {
    /// Validates a tarball file name.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let ok = s.len() <= MAX_NAME_LEN + 64
            && s.len() > ".tgz".len()
            && s.ends_with(".tgz")
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::BadFile(s.to_owned()))
        }
    }

    /// The file name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TarballFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TarballFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TarballFile({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_plain_and_scoped() {
        let n = PackageName::parse("lodash.merge").unwrap();
        assert_eq!(n.scope(), None);
        assert_eq!(n.unscoped(), "lodash.merge");
        assert_eq!(n.url_segment(), "lodash.merge");
        let s = PackageName::parse("@types/node").unwrap();
        assert_eq!(s.scope(), Some("types"));
        assert_eq!(s.unscoped(), "node");
        assert_eq!(s.url_segment(), "@types%2fnode");
        assert_eq!(s.to_string(), "@types/node");
    }

    #[test]
    fn rejects_npm_invalid_names() {
        let long = "a".repeat(215);
        for bad in [
            "",
            ".hidden",
            "_private",
            "Upper",
            "has space",
            "a/b",
            "..",
            "%2e%2e",
            "a\0b",
            "@scope",
            "@/x",
            "@s/",
            "@s/p/x",
            "@S/x",
            "@s/.x",
            "node_modules",
            "caf\u{e9}",
            "a~b",
            long.as_str(),
        ] {
            assert!(PackageName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(PackageName::parse(&"a".repeat(214)).is_ok());
    }

    #[test]
    fn distinct_errors() {
        assert_eq!(
            PackageName::parse("Foo"),
            Err(NameError::Uppercase("Foo".into()))
        );
        assert_eq!(PackageName::parse(""), Err(NameError::Empty));
        assert!(matches!(
            PackageName::parse("@x"),
            Err(NameError::BadScope(_))
        ));
    }

    #[test]
    fn tarball_files() {
        assert!(TarballFile::parse("left-pad-1.3.0.tgz").is_ok());
        assert!(TarballFile::parse("x-1.0.0-RC.1+build.5.tgz").is_ok());
        for bad in [
            "../x.tgz",
            ".tgz",
            "x.tar",
            "a/b.tgz",
            "a%2fb.tgz",
            "a\\b.tgz",
        ] {
            assert!(TarballFile::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn valid_names_are_safe_path_segments(s in "\\PC{0,40}") {
            if let Ok(n) = PackageName::parse(&s) {
                for part in n.as_str().trim_start_matches('@').split('/') {
                    prop_assert!(!part.is_empty() && !part.starts_with('.'));
                    prop_assert!(!part.contains(['\\', '%', '\0']));
                }
                prop_assert_eq!(PackageName::parse(n.as_str()).unwrap(), n);
            }
        }
    }
}
