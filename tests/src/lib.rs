//! Open-Registry's end-to-end test harness: real programs and fake ones, on 127.0.0.1 only.
//!
//! The tests in `tests/tests/` drive the node the way users do — the real `npm`, `pnpm`,
//! yarn 1, yarn 4 and bun clients, npm's own signature verifier — against registries the
//! harness controls:
//!
//! - [`tools`]: where things are (repo root, the pinned `tests/e2e` npm tools, the
//!   `open-registry` binary) and a free-port helper.
//! - [`process`]: child processes in their own process group, run with a deadline and always
//!   stoppable; [`Output`] is what a finished command printed.
//! - [`http`]: a tiny blocking HTTP client for harness plumbing (pings, setup calls).
//! - [`browser`]: [`Browser`], headless Chromium over WebDriver (chromedriver), and
//!   [`open_dashboard`], a node's dashboard open in it, read by element id.
//! - [`fixtures`]: test packages ([`PackageSpec`]) as directories to `npm publish` or as npm
//!   tarballs built in Rust ([`Tarball`]), and consumer projects.
//! - [`npm`]: [`Npm`], the real npm, pnpm, yarn 1, yarn 4 and bun clients with an
//!   isolated home, config and cache.
//! - [`installed`]: one of those clients adding a package to a fresh project, and the version
//!   it installed.
//! - [`verdaccio`]: [`Verdaccio`], a real Verdaccio 6 with no uplinks, as a realistic upstream.
//! - [`upstream`]: [`FakeUpstream`], an in-memory registry with fault injection, request
//!   counting, npm-style signatures and a changes feed.
//! - [`npmsig`]: npm registry signing keys and the `/-/npm/v1/keys` document.
//! - [`pacote`]: npm's bundled pacote verifying registry signatures ([`pacote_verify`]).
//! - [`node`]: [`NodeProcess`], the `open-registry` binary started on a temporary data dir,
//!   and [`Node`], the probes (HTTP and log) every kind of test node answers.
//! - [`inproc`]: [`InProcessNode`], the same node started in this process from the same
//!   arguments, on a manual clock that tests advance instead of sleeping past `max_age`.
//! - [`p2p`]: several nodes on one machine (child processes or in-process): their peer
//!   addresses, what a node holds for a package, and [`p2p::EvilPeer`], an in-process peer that
//!   serves lies on demand.
//! - [`public`]: operators with prepared keys and statements, and their nodes' network view.
//! - [`lab`]: [`Lab`], the network laboratory: hosts in four regions (Linux network
//!   namespaces) behind a router that delays each packet by the published one-way delay
//!   between their regions, and laptops behind NAT. Unlike the rest, it needs root.
//!   [`labnode`]: [`LabNode`], an `open-registry` node on one of its hosts.
//! - [`probe`]: shared checks for the node's tests (JSON errors, concurrent requests, polling).
//! - [`sync`]: pins, the cache budget and the changes feed: lag reports, pin lists, feed
//!   requests, and [`sync::DhtProbe`], a bare peer asking the DHT who provides a blob.
//!
//! Everything binds 127.0.0.1 and cleans up on drop: temporary directories are removed and
//! child process groups are killed, so a failing test leaves nothing running. No registry
//! address is built in; the only network the tests use is loopback, and the laboratory's
//! namespaces, which the tests create and remove themselves.

pub mod browser;
pub mod fixtures;
pub mod http;
pub mod inproc;
pub mod installed;
pub mod lab;
pub mod labnode;
pub mod node;
pub mod npm;
pub mod npmsig;
pub mod p2p;
pub mod pacote;
pub mod probe;
pub mod process;
pub mod public;
pub mod sync;
pub mod tools;
pub mod upstream;
pub mod verdaccio;

pub use browser::{Browser, Dashboard, open_dashboard};
pub use fixtures::{PackageSpec, Tarball};
pub use inproc::InProcessNode;
pub use lab::{Lab, Region};
pub use labnode::LabNode;
pub use node::{Node, NodeProcess};
pub use npm::Npm;
pub use npmsig::RegistryKey;
pub use pacote::{PacoteOutcome, pacote_check, pacote_verify};
pub use process::Output;
pub use upstream::{FakeUpstream, Fault, Options as UpstreamOptions, Published, Target};
pub use verdaccio::Verdaccio;

/// Installs a `tracing` subscriber writing to the test's captured output (once per process;
/// later calls do nothing). `RUST_LOG` filters it.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}
