//! Open-Registry's protocol crate: the types every other crate agrees on, with no I/O.
//!
//! - [`name`]: npm package and tarball file names, validated under npm's rules.
//! - [`id`]: [`BlobId`], the content id (CIDv1 raw, BLAKE3) that names every blob.
//! - [`integrity`]: npm's integrity strings and the one-pass [`Verifier`] that checks a blob
//!   against them and computes its id.
//! - [`packument`]: parsing packuments and deriving the abbreviated and rewritten forms.
//! - [`status`]: the node's JSON self-report.
//!
//! No tokio, no sockets, no disk: everything here is a pure function of its input, so it is
//! tested exhaustively and can be reimplemented from docs/protocol.md.

pub mod id;
pub mod integrity;
pub mod name;
pub mod packument;
pub mod status;

pub use id::BlobId;
pub use integrity::{Integrity, IntegrityError, Verifier};
pub use name::{NameError, PackageName, TarballFile};
pub use status::Status;
