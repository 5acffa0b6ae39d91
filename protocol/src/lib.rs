//! Open-Registry's protocol crate: the types every other crate agrees on, with no I/O.
//!
//! - [`name`]: npm package and tarball file names, validated under npm's rules.
//! - [`id`]: [`BlobId`], the content id (CIDv1 raw, BLAKE3) that names every blob.
//! - [`integrity`]: npm's integrity strings and the one-pass [`Verifier`] that checks a blob
//!   against them and computes its id.
//! - [`packument`]: parsing packuments and deriving the abbreviated and rewritten forms.
//! - [`mod@derive`]: the same derivations straight from the bytes, without a JSON tree (the hot
//!   path: multi-megabyte packuments).
//! - [`withhold`]: a packument without the versions a node holds back (release cooldown,
//!   advisories), its dist-tags moved down, straight from the bytes; and the release times.
//! - [`npm_sig`]: npm's own ECDSA registry signatures, checked against pinned keys.
//! - [`peer`]: operator identities ([`PeerId`], the libp2p id of the operator's ed25519 key).
//! - [`record`]: signed mirror records; [`Verified`] values come only from [`Signed::verify`].
//! - [`pointer`](mod@pointer): the small signed pointers the DHT holds to find a package's newest records.
//! - [`popularity`]: signed summaries of the packages a node serves most.
//! - [`report`]: signed node reports (what a node served, its errors, its lag) for the network
//!   view; [`network`]: that view's JSON.
//! - [`history`]: hourly buckets of a node's own counters and of the network totals, kept 90
//!   days (`history.json`).
//! - [`advisory`]: signed advisories, an operator's statement that versions of a package must
//!   not be served (enforced by a node when enough trusted operators sign one).
//! - [`trust`]: the trust policy (trusted signers, threshold) and its distinct rejections.
//! - [`status`]: the node's JSON self-report; [`admin`]: the JSON of its operator routes.
//! - [`statement`]: operator statements (`statement.toml`): what a node costs and receives,
//!   month by month, checked with line-accurate errors and summed exactly per currency, and
//!   signed for gossip.
//!
//! No tokio, no sockets, no disk: everything here is a pure function of its input, so it is
//! tested exhaustively and can be reimplemented from docs/protocol.md.

pub mod admin;
pub mod advisory;
pub mod derive;
pub mod history;
pub mod id;
pub mod integrity;
pub mod name;
pub mod network;
pub mod npm_sig;
pub mod packument;
pub mod peer;
pub mod pointer;
pub mod popularity;
pub mod record;
pub mod report;
pub mod statement;
pub mod status;
pub mod trust;
pub mod withhold;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod vectors;

pub use id::BlobId;
pub use integrity::{Integrity, IntegrityError, Verifier};
pub use name::{NameError, PackageName, TarballFile};
pub use peer::PeerId;
pub use record::{Record, Signed, Verified};
pub use status::Status;
pub use trust::{Policy, TrustError};
