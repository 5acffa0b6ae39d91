//! The [`Registry`] trait: everything the gateway needs from a node, and nothing more.
//!
//! The gateway never sees sled, libp2p or an HTTP client. A node implements this trait (its
//! Fetcher decides where bytes come from); tests implement it in memory
//! ([`crate::memory::MemoryRegistry`]).

use std::fmt;
use std::future::Future;
use std::io;

use bytes::Bytes;
use futures::stream::BoxStream;
use open_registry_protocol::{BlobId, PackageName, Status, TarballFile};

use crate::access::Source;
use crate::budget::Lease;
use crate::search::{SearchQuery, SearchResults};

/// A packument revision: the full document exactly as the source sent it.
#[derive(Clone)]
pub struct Packument {
    /// The content id of `bytes`; the gateway caches derived forms under it.
    pub id: BlobId,
    /// The full document.
    pub bytes: Bytes,
    /// The share of the node's packument memory these bytes hold while they are in use
    /// (downloaded or read for this request); none when they are counted elsewhere (a cache).
    /// The gateway keeps it until it has derived what it serves.
    pub lease: Lease,
    /// Where the registry found it (the access log's `source`).
    pub source: Source,
    /// Versions the registry holds back (a release cooldown, an advisory in force): already
    /// absent from `bytes`, and answered 451 with their message when asked for by name.
    pub withheld: Vec<Withheld>,
}

/// A version a registry holds back from its clients, and what to tell them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withheld {
    /// The version, as the packument's `versions` names it.
    pub version: String,
    /// Why it is held back, for the person reading npm's output (the 451's `error`).
    pub message: String,
}

/// How many versions' messages [`Withheld::notice`] spells out.
const NOTICE_LISTS: usize = 8;

impl Withheld {
    /// The one explanation a packument carries for npm (`policyRestrictions.message`, see
    /// [`open_registry_protocol::withhold::withhold_with_notice`]) when `withheld` are held
    /// back: each version's message on a line of its own, newest version first, the first few
    /// only.
    pub fn notice(withheld: &[Withheld]) -> String {
        let mut sorted: Vec<&Withheld> = withheld.iter().collect();
        sorted.sort_by(|a, b| semver_desc(&a.version, &b.version));
        let mut lines: Vec<&str> = sorted
            .iter()
            .take(NOTICE_LISTS)
            .map(|w| w.message.as_str())
            .collect();
        let more = withheld.len().saturating_sub(NOTICE_LISTS);
        let tail = format!("... and {more} more versions held back by this registry");
        if more > 0 {
            lines.push(&tail);
        }
        lines.join("\n")
    }
}

/// Newest first by semver precedence where both parse, else by the strings.
fn semver_desc(a: &str, b: &str) -> std::cmp::Ordering {
    match (
        nodejs_semver::Version::parse(a),
        nodejs_semver::Version::parse(b),
    ) {
        (Ok(x), Ok(y)) => y.cmp(&x).then_with(|| b.cmp(a)),
        _ => b.cmp(a),
    }
}

impl Packument {
    /// A revision whose bytes are counted elsewhere (or nowhere), from an unsaid source, with
    /// nothing withheld.
    pub fn new(id: BlobId, bytes: Bytes) -> Packument {
        Packument {
            id,
            bytes,
            lease: Lease::none(),
            source: Source::Node,
            withheld: Vec::new(),
        }
    }

    /// The message of `version` if it is withheld.
    pub fn withheld(&self, version: &str) -> Option<&str> {
        self.withheld
            .iter()
            .find(|w| w.version == version)
            .map(|w| w.message.as_str())
    }

    /// The same, found at `source`.
    pub fn from(mut self, source: Source) -> Packument {
        self.source = source;
        self
    }
}

impl fmt::Debug for Packument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Packument")
            .field("id", &self.id)
            .field("len", &self.bytes.len())
            .field("lease", &self.lease)
            .field("withheld", &self.withheld.len())
            .finish()
    }
}

/// The bytes of a verified blob (a tarball).
pub struct Blob {
    /// The blob's content id.
    pub id: BlobId,
    /// Its length: exact, and sent as Content-Length, for [`Body::Bytes`] and [`Body::Stream`];
    /// for [`Body::Verifying`] the length its source announced, which is not promised.
    pub len: u64,
    /// Its bytes.
    pub body: Body,
    /// Where the registry found it (the access log's `source`).
    pub source: Source,
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blob")
            .field("id", &self.id)
            .field("len", &self.len)
            .finish()
    }
}

/// Blob bytes: in memory, or streamed (from disk) so large tarballs are never held whole.
pub enum Body {
    /// All of it, in memory.
    Bytes(Bytes),
    /// Chunks; the stream yields exactly `len` bytes in total.
    Stream(BoxStream<'static, io::Result<Bytes>>),
    /// Chunks of a blob still arriving and being verified (from a peer): how many there will be
    /// is not known before the end, so the answer carries no Content-Length and is sent chunked.
    /// The stream ends only once every byte it yielded verified as the blob; otherwise it yields
    /// an error, and the client sees the answer cut short.
    Verifying(BoxStream<'static, io::Result<Bytes>>),
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Bytes(b) => f.debug_tuple("Bytes").field(&b.len()).finish(),
            Body::Stream(_) => f.write_str("Stream"),
            Body::Verifying(_) => f.write_str("Verifying"),
        }
    }
}

/// A request the gateway forwards to the upstream unchanged (search, audits).
#[derive(Debug, Clone)]
pub struct Forward {
    /// `GET` or `POST`.
    pub method: ForwardMethod,
    /// Path and query, starting with `/-/`.
    pub path_and_query: String,
    /// Content-Type of `body`, if any.
    pub content_type: Option<String>,
    /// Content-Encoding of `body` (npm gzips audit bodies), if any.
    pub content_encoding: Option<String>,
    /// The request body (empty for GET).
    pub body: Bytes,
}

/// Methods that may be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardMethod {
    Get,
    Post,
}

/// The upstream's answer to a [`Forward`].
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// HTTP status.
    pub status: u16,
    /// Its Content-Type.
    pub content_type: Option<String>,
    /// Its (decoded) body.
    pub body: Bytes,
}

/// Why a registry could not answer. The gateway turns each into a status code and a JSON
/// `{"error": ...}` that npm prints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// 404: no such package, version or file.
    #[error("{0}")]
    NotFound(String),
    /// 400: the request itself is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// 401: the request needs a credential it lacks (the operator's admin token).
    #[error("{0}")]
    Unauthorized(String),
    /// 502: the upstream or every peer failed, or sent bytes that did not verify, and there is
    /// no cached copy. Retriable.
    #[error("{0}")]
    BadGateway(String),
    /// 504: the sources did not answer in time.
    #[error("{0}")]
    Timeout(String),
    /// 503: this node cannot do that now (no upstream configured, disk full...).
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or a local I/O failure.
    #[error("{0}")]
    Internal(String),
    /// 451: the version exists but this registry withholds it (a release cooldown, an advisory
    /// in force); the message says why and until when.
    #[error("{0}")]
    Withheld(String),
}

/// What a node offers to its gateway.
///
/// Methods return `Send` futures so the router can run them on any worker.
pub trait Registry: Send + Sync + 'static {
    /// The current packument of `name`, without the versions the registry withholds (listed in
    /// [`Packument::withheld`]). When `refresh` is true the caller looked for a version
    /// or dist-tag that the cached copy lacks: revalidate with the source once before answering
    /// (a registry may decline to while a recent refresh for a miss found nothing; see
    /// [`Registry::still_missing`]).
    fn packument(
        &self,
        name: &PackageName,
        refresh: bool,
    ) -> impl Future<Output = Result<Packument, Error>> + Send;

    /// What the caller looked for in `name` is missing even from the packument a refresh
    /// returned: a registry may remember that for a while, so that asking again for what does
    /// not exist does not reach its source every time.
    fn still_missing(&self, name: &PackageName) {
        let _ = name;
    }

    /// A tarball of `name`, verified against the integrity its packument promises;
    /// [`Error::Withheld`] when its version is withheld.
    fn tarball(
        &self,
        name: &PackageName,
        file: &TarballFile,
    ) -> impl Future<Output = Result<Blob, Error>> + Send;

    /// The signed mirror records held for `name`: the JSON document served at
    /// `/-/open-registry/records/<name>` (`{"name": ..., "records": [...]}`, docs/protocol.md).
    fn records(&self, name: &PackageName) -> impl Future<Output = Result<Bytes, Error>> + Send;

    /// A blob from the local store, by content id (never fetched from elsewhere): how verifiers
    /// get the exact packument bytes a record names.
    fn blob(&self, id: &BlobId) -> impl Future<Output = Result<Blob, Error>> + Send;

    /// The registry signing keys document served at `/-/npm/v1/keys`.
    fn keys(&self) -> impl Future<Output = Result<Bytes, Error>> + Send;

    /// Forwards a search or audit request to the upstream.
    fn forward(&self, req: Forward) -> impl Future<Output = Result<Forwarded, Error>> + Send;

    /// Searches the packages this registry holds itself: `/-/v1/search` when the upstream has
    /// no search, or there is no upstream. A registry without a search of its own answers
    /// `Error::NotFound` saying so (the default).
    fn search(
        &self,
        query: &SearchQuery,
    ) -> impl Future<Output = Result<SearchResults, Error>> + Send {
        let _ = query;
        async {
            Err(Error::NotFound(
                "this registry has no search index of its own".into(),
            ))
        }
    }

    /// The node's self-report.
    fn status(&self) -> impl Future<Output = Status> + Send;

    /// The node's Prometheus metrics, in the text exposition format (without the gateway's own,
    /// which the gateway appends).
    fn metrics(&self) -> impl Future<Output = String> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(version: &str) -> Withheld {
        Withheld {
            version: version.into(),
            message: format!("p@{version} held"),
        }
    }

    #[test]
    fn the_notice_lists_the_newest_few_then_counts_the_rest() {
        assert_eq!(Withheld::notice(&[w("1.0.1")]), "p@1.0.1 held");
        let many: Vec<Withheld> = (0..10).map(|i| w(&format!("1.{i}.0"))).collect();
        let notice = Withheld::notice(&many);
        let lines: Vec<&str> = notice.lines().collect();
        assert_eq!(lines.len(), NOTICE_LISTS + 1);
        assert_eq!(lines[0], "p@1.9.0 held");
        assert_eq!(lines[7], "p@1.2.0 held");
        assert_eq!(
            lines[8],
            "... and 2 more versions held back by this registry"
        );
        let p = Packument {
            withheld: many,
            ..Packument::new(BlobId::of(b"x"), Bytes::from_static(b"x"))
        };
        assert_eq!(p.withheld("1.3.0"), Some("p@1.3.0 held"));
        assert_eq!(p.withheld("2.0.0"), None);
    }
}
