//! An Open-Registry node inside the test process, on a clock the test moves.
//!
//! [`InProcessNode`] takes the same arguments as [`NodeProcess`](crate::NodeProcess) (the
//! flags after `open-registry start --data-dir DIR`, with the same loopback defaults) and builds
//! its configuration the way the binary does — the flags parsed by clap into
//! [`Settings`], the data dir's `config.toml` under them, [`Config::resolve`] — then injects a
//! [`Clock::manual`] and calls [`open_registry_node::start`]. A test of `max_age` (or of any
//! other calendar decision) advances [`InProcessNode::clock`] instead of sleeping.
//!
//! Differences from the child process, all deliberate:
//! - `OPEN_REGISTRY_*` variables are not read (the child's are removed, too), and without
//!   `--upstream` or `--no-upstream` the node runs without an upstream: npm's configured
//!   registry is never asked.
//! - The node runs on a multi-thread tokio runtime owned by the value, so blocking tests call
//!   it with plain methods. Its threads log through a `tracing` subscriber of their own into
//!   `DATA_DIR/node.log` (`RUST_LOG` filters it, `info` by default), so [`Node::log_tail`] reads
//!   this node's log and nobody else's.
//! - It cannot be SIGKILLed or restarted as a process: tests of crashes and restarts keep
//!   [`NodeProcess`](crate::NodeProcess).
//!
//! [`InProcessNode::stop`] shuts the node down gracefully (stop accepting, finish in-flight
//! work, flush the store) and drops its runtime, closing every connection. Dropping the value
//! (or [`InProcessNode::kill`]) drops the runtime at once, cancelling in-flight work wherever it
//! is — as dropping a [`NodeProcess`](crate::NodeProcess) kills it — so a test that leaves a
//! fetch hanging on its upstream does not wait for it at the end.

use std::{
    cell::RefCell,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use clap::{CommandFactory as _, FromArgMatches as _};
use open_registry_node::{
    NodeHandle,
    clock::Clock,
    config::{CONFIG_FILE, Config, Settings},
};
use tempfile::TempDir;
use tracing::{Dispatch, dispatcher::DefaultGuard, instrument::WithSubscriber as _};

use crate::{
    node::{self, Builder, LOG_FILE, Node, START_TIMEOUT, STOP_GRACE},
    probe,
};

/// How long dropping the runtime may wait for the node's blocking tasks (store I/O).
const KILL_GRACE: Duration = Duration::from_secs(2);

/// A node running in this process, its calendar on a manual clock.
#[derive(Debug)]
pub struct InProcessNode {
    /// The gateway's base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub gateway: String,
    /// The node's data directory.
    pub data_dir: PathBuf,
    clock: Clock,
    running: Option<Running>,
    /// Owns the data dir when this helper created it.
    _tmp: Option<TempDir>,
}

/// The node and the runtime it runs on, with the subscriber its log goes to.
struct Running {
    handle: NodeHandle,
    rt: tokio::runtime::Runtime,
    log: Dispatch,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

/// The flags of `open-registry start` that configure a node, as the binary parses them.
#[derive(Debug, clap::Parser)]
#[command(name = "open-registry start (in-process)")]
struct StartFlags {
    #[command(flatten)]
    settings: Settings,
}

impl Builder {
    /// Starts the node in this process with a [`Clock::manual`] (see [`InProcessNode`]): same
    /// data dir and arguments as [`Builder::start`]. A custom binary or environment cannot
    /// apply to a node in this process, and is refused.
    pub fn start_in_process(self) -> Result<InProcessNode> {
        if let Some(b) = &self.binary {
            bail!(
                "an in-process node runs no binary (asked for {})",
                b.display()
            );
        }
        if !self.env.is_empty() {
            bail!(
                "an in-process node shares the test's environment (asked for {:?})",
                self.env
            );
        }
        let (data_dir, tmp) = node::data_dir(self.data_dir)?;
        let mut node = InProcessNode {
            gateway: String::new(),
            data_dir,
            clock: Clock::manual(),
            running: None,
            _tmp: tmp,
        };
        node.launch(&self.args)?;
        Ok(node)
    }
}

impl InProcessNode {
    /// Starts a node in a fresh temporary data dir, configured as
    /// `open-registry start --data-dir TMP ARGS…` would be (loopback gateway and p2p listen
    /// addresses unless `args` sets them), on a manual clock.
    pub fn start(args: &[&str]) -> Result<InProcessNode> {
        Builder::default()
            .args(args.iter().copied())
            .start_in_process()
    }

    /// The node's clock: it starts at the time the node was created and moves only by
    /// [`Clock::advance`].
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// True until [`stop`](Self::stop) or [`kill`](Self::kill).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Shuts the node down (in-flight work finishes, the store is flushed) and drops its
    /// runtime, which closes its listeners and connections. Stopping a stopped node does
    /// nothing.
    pub fn stop(&mut self) -> Result<()> {
        let Some(Running { handle, rt, log }) = self.running.take() else {
            return Ok(());
        };
        // On a thread of its own: blocking on (and dropping) a runtime is refused inside
        // another runtime, and the caller may be in one.
        std::thread::spawn(move || {
            let done = rt.block_on(handle.shutdown().with_subscriber(log));
            rt.shutdown_timeout(STOP_GRACE);
            done
        })
        .join()
        .map_err(|_| anyhow!("shutting the in-process node down panicked"))?
        .context("shutting the in-process node down")
    }

    /// Drops the node's runtime at once: every task is cancelled wherever it is, and every
    /// listener and connection closed, without the graceful shutdown's wait for in-flight work.
    /// (The store still closes as its last user goes, so this is no crash test: those need a
    /// [`NodeProcess`](crate::NodeProcess).)
    pub fn kill(&mut self) {
        let Some(Running { handle, rt, log: _ }) = self.running.take() else {
            return;
        };
        // On a thread of its own, as in `stop`.
        let _ = std::thread::spawn(move || {
            drop(handle);
            rt.shutdown_timeout(KILL_GRACE);
        })
        .join();
    }

    fn launch(&mut self, args: &[OsString]) -> Result<()> {
        let args = node::start_args(args);
        let mut config = config(&self.data_dir, &args)?;
        config.clock = self.clock.clone();
        // Anything logged outside the node's own threads goes to the test's output.
        crate::init_tracing();
        let log = log_to(&self.data_dir.join(LOG_FILE))?;
        let rt = runtime(&log)?;
        let described = describe(&args);
        let handle = rt
            .block_on(open_registry_node::start(config).with_subscriber(log.clone()))
            .with_context(|| {
                format!(
                    "starting {described}\n--- node.log (tail) ---\n{}",
                    self.log_tail(60)
                )
            })?;
        self.gateway = handle.url.trim_end_matches('/').to_owned();
        self.running = Some(Running { handle, rt, log });
        probe::wait_for(
            START_TIMEOUT,
            &format!("{}/-/ping to answer", self.gateway),
            || self.get("/-/ping", &[]).ok().filter(|r| r.status == 200),
        )?;
        eprintln!("[node] {described} → gateway {}", self.gateway);
        Ok(())
    }
}

impl Node for InProcessNode {
    fn gateway(&self) -> &str {
        &self.gateway
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.join(LOG_FILE)
    }
}

impl Drop for InProcessNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The configuration `open-registry start --data-dir DIR ARGS…` would run with, as the
/// binary's `start` builds it: flags over `DIR/config.toml`, then [`Config::resolve`]. The
/// flags' environment variables are ignored, and no npm registry is asked for.
fn config(data_dir: &Path, args: &[OsString]) -> Result<Config> {
    let command = StartFlags::command().mut_args(|a| a.env(None));
    let matches = command
        .try_get_matches_from(std::iter::once(OsString::from("start")).chain(args.iter().cloned()))
        .map_err(|e| anyhow!("{}", e.render()))?;
    let flags = StartFlags::from_arg_matches(&matches)
        .map_err(|e| anyhow!("{}", e.render()))?
        .settings;
    let file = Settings::load(&data_dir.join(CONFIG_FILE))?;
    Config::resolve(data_dir.to_path_buf(), flags.or(file), || None)
}

/// A subscriber appending plain-text lines to `path`, filtered by `RUST_LOG` (default `info`)
/// as the binary's is.
fn log_to(path: &Path) -> Result<Dispatch> {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_writer(Arc::new(file))
        .finish();
    Ok(Dispatch::new(subscriber))
}

thread_local! {
    /// On the node's runtime threads: its subscriber, set as the thread's default.
    static NODE_LOG: RefCell<Option<DefaultGuard>> = const { RefCell::new(None) };
}

/// The node's runtime: its threads (workers and blocking ones) log to `log`.
fn runtime(log: &Dispatch) -> Result<tokio::runtime::Runtime> {
    let log = log.clone();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("in-process-node")
        .enable_all()
        .on_thread_start(move || {
            let guard = tracing::dispatcher::set_default(&log);
            NODE_LOG.with(|l| *l.borrow_mut() = Some(guard));
        })
        .on_thread_stop(|| {
            NODE_LOG.with(|l| l.borrow_mut().take());
        })
        .build()
        .context("building the in-process node's runtime")
}

/// `open-registry start ARGS…` (in-process), for messages.
fn describe(args: &[OsString]) -> String {
    let mut s = String::from("open-registry start (in-process)");
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}
