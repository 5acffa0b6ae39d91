//! The `open-registry` binary as a child process: start a node on 127.0.0.1:0 with a data dir,
//! learn where its gateway listens, stop it politely or kill it.
//!
//! Contract relied on: `open-registry start --data-dir DIR --listen 127.0.0.1:0 …` logs to
//! stderr and, once its gateway is bound, writes `DIR/node.json` holding
//! `{"gateway": "http://127.0.0.1:PORT", "pid": N}`. A stale `node.json` is removed before each
//! start, so what is read always comes from the process just spawned.
//!
//! The node runs in its own process group; its stdout and stderr are appended to
//! `DIR/node.log`, whose tail is part of every startup error. Dropping a [`NodeProcess`] kills
//! it.
//!
//! [`Node`] is what a test reads from a running node over its gateway (and its log), whether the
//! node is this child process or an [`InProcessNode`](crate::inproc::InProcessNode) started from
//! the same [`Builder`]; helpers that only probe a node take `&impl Node`.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use tempfile::TempDir;

use crate::{
    http,
    process::{self, Output},
    tools,
};

/// How long a node may take to bind and answer `/-/ping`.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a node may take to exit after SIGTERM before it is killed.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);
/// The node's log in its data dir.
pub(crate) const LOG_FILE: &str = "node.log";

/// A running node as a test sees it: a gateway to probe over HTTP (blocking, through [`http`],
/// so raw paths go out exactly as written) and a log. Implemented by [`NodeProcess`] and
/// [`InProcessNode`](crate::inproc::InProcessNode).
pub trait Node {
    /// The gateway's base URL, `http://127.0.0.1:PORT` (no trailing slash).
    fn gateway(&self) -> &str;

    /// `DATA_DIR/node.log`: everything the node logged, across restarts.
    fn log_path(&self) -> PathBuf;

    /// The last `lines` lines of the node's log.
    fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `GET <gateway><path>` with `headers`; `path` is sent verbatim (no normalisation).
    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<http::Response> {
        http::request(
            "GET",
            &format!("{}{path}", self.gateway()),
            headers,
            &[],
            Duration::from_secs(30),
        )
    }

    /// `GET /-/open-registry/status`, parsed.
    fn status(&self) -> Result<open_registry_protocol::Status> {
        let r = self.get("/-/open-registry/status", &[])?;
        if r.status != 200 {
            bail!("status answered {}: {}", r.status, r.text());
        }
        serde_json::from_slice(&r.body).with_context(|| format!("status JSON: {}", r.text()))
    }

    /// One counter of the status (`0` when the node does not report it).
    fn counter(&self, name: &str) -> Result<u64> {
        Ok(self.status()?.counters.get(name).copied().unwrap_or(0))
    }
}

/// What the node writes once its gateway is bound.
#[derive(Debug, Deserialize)]
struct NodeJson {
    gateway: String,
    #[serde(default)]
    pid: Option<u32>,
}

/// A running (or stopped) `open-registry start`.
#[derive(Debug)]
pub struct NodeProcess {
    /// The gateway's base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub gateway: String,
    /// The node's data directory.
    pub data_dir: PathBuf,
    /// The process while it runs.
    pub child: Option<Child>,
    binary: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    /// Owns the data dir when this helper created it.
    _tmp: Option<TempDir>,
}

/// How to start a node: binary, data dir, arguments, environment. [`Builder::start`] spawns the
/// binary; [`Builder::start_in_process`] runs the node in this process instead.
#[derive(Debug, Default, Clone)]
pub struct Builder {
    pub(crate) binary: Option<PathBuf>,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) args: Vec<OsString>,
    pub(crate) env: Vec<(OsString, OsString)>,
}

impl Builder {
    /// Uses this executable instead of the workspace's `open-registry`.
    pub fn binary(mut self, path: &Path) -> Self {
        self.binary = Some(path.to_path_buf());
        self
    }

    /// Uses (and keeps) this data dir instead of a fresh temporary one.
    pub fn data_dir(mut self, path: &Path) -> Self {
        self.data_dir = Some(path.to_path_buf());
        self
    }

    /// Appends an argument after `start --data-dir DIR`.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the node (e.g. `RUST_LOG`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Spawns the node and waits until its gateway answers `/-/ping`.
    pub fn start(self) -> Result<NodeProcess> {
        let (data_dir, tmp) = data_dir(self.data_dir)?;
        let binary = match self.binary {
            Some(b) => b,
            None => tools::node_binary()?,
        };
        let mut node = NodeProcess {
            gateway: String::new(),
            data_dir,
            child: None,
            binary,
            args: self.args,
            env: self.env,
            _tmp: tmp,
        };
        node.spawn()?;
        Ok(node)
    }
}

/// The given data dir (created if missing), or a fresh temporary one with its owner.
pub(crate) fn data_dir(given: Option<PathBuf>) -> Result<(PathBuf, Option<TempDir>)> {
    match given {
        Some(d) => {
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            Ok((d, None))
        }
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("open-registry-node-")
                .tempdir()
                .context("creating a data dir")?;
            Ok((tmp.path().to_path_buf(), Some(tmp)))
        }
    }
}

/// The arguments after `start --data-dir DIR`: `args`, preceded by the tests' defaults for
/// what `args` does not set — the gateway on `127.0.0.1:0` and peers on
/// `/ip4/127.0.0.1/tcp/0` (unless `--no-p2p`), since tests run nodes side by side.
pub(crate) fn start_args(args: &[OsString]) -> Vec<OsString> {
    let given = |prefixes: &[&str]| {
        args.iter().any(|a| {
            let a = a.to_string_lossy();
            prefixes.iter().any(|p| a.starts_with(p))
        })
    };
    let mut out: Vec<OsString> = Vec::with_capacity(args.len() + 4);
    if !given(&["--listen"]) {
        out.extend(["--listen", "127.0.0.1:0"].map(OsString::from));
    }
    if !given(&["--p2p-listen", "--no-p2p"]) {
        out.extend(["--p2p-listen", "/ip4/127.0.0.1/tcp/0"].map(OsString::from));
    }
    out.extend(args.iter().cloned());
    out
}

impl NodeProcess {
    /// Starts a node in a fresh temporary data dir:
    /// `open-registry start --data-dir TMP --listen 127.0.0.1:0 --p2p-listen
    /// /ip4/127.0.0.1/tcp/0 ARGS…` (each default only when `args` lacks it). Pass `--upstream URL` or `--no-upstream` in `args`.
    pub fn start(args: &[&str]) -> Result<NodeProcess> {
        Self::builder().args(args.iter().copied()).start()
    }

    /// A builder for other binaries, a kept data dir, or extra environment.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The gateway's base URL.
    pub fn gateway(&self) -> &str {
        Node::gateway(self)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `DATA_DIR/node.log`: everything the node printed, across restarts.
    pub fn log_path(&self) -> PathBuf {
        Node::log_path(self)
    }

    /// The last `lines` lines of the node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        Node::log_tail(self, lines)
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGTERM, then SIGKILL if it has not exited within a bound; returns its exit status.
    pub fn stop(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.child.take() {
            Some(mut child) => process::stop_group(&mut child, STOP_GRACE),
            None => Ok(None),
        }
    }

    /// SIGKILL at once (a crash, as far as the node can tell).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_group(&mut child);
        }
    }

    /// Stops the node (politely) and starts it again on the same data dir and arguments. The
    /// gateway port may change; [`gateway`](Self::gateway) is updated.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    fn spawn(&mut self) -> Result<()> {
        let node_json = self.data_dir.join("node.json");
        match fs::remove_file(&node_json) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("removing a stale node.json"),
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening node.log")?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("start").arg("--data-dir").arg(&self.data_dir);
        cmd.args(start_args(&self.args));
        isolate_env(&mut cmd);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let command = process::describe_command(&cmd);
        let child = spawn_retrying_busy(process::own_group(&mut cmd))
            .with_context(|| format!("spawning {command}"))?;
        self.child = Some(child);
        match self.wait_ready(&node_json) {
            Ok(gateway) => {
                eprintln!("[node] {command} → gateway {gateway}");
                self.gateway = gateway;
                Ok(())
            }
            Err(e) => {
                self.kill();
                Err(e.context(format!(
                    "starting `{command}`\n--- node.log (tail) ---\n{}",
                    self.log_tail(60)
                )))
            }
        }
    }

    fn wait_ready(&mut self, node_json: &Path) -> Result<String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let pid = self.pid();
        let gateway = loop {
            if !self.is_running() {
                bail!("the node exited during startup");
            }
            // A half-written file fails to parse and is read again on the next round.
            if let Some(info) = fs::read(node_json)
                .ok()
                .and_then(|b| serde_json::from_slice::<NodeJson>(&b).ok())
            {
                if info.pid.is_some() && info.pid != pid {
                    bail!(
                        "node.json names pid {:?}, but the node is {pid:?}",
                        info.pid
                    );
                }
                break info.gateway.trim_end_matches('/').to_owned();
            }
            if Instant::now() >= deadline {
                bail!("no node.json within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(25));
        };
        let ping = format!("{gateway}/-/ping");
        loop {
            match http::get(&ping, Duration::from_secs(2)) {
                Ok(r) if r.status == 200 => return Ok(gateway),
                Ok(r) if Instant::now() >= deadline => {
                    bail!("{ping} answered {} {}", r.status, r.text())
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("{ping} did not answer")));
                }
                _ => std::thread::sleep(Duration::from_millis(25)),
            }
            if !self.is_running() {
                bail!("the node exited before answering {ping}");
            }
        }
    }
}

impl Node for NodeProcess {
    fn gateway(&self) -> &str {
        &self.gateway
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.join(LOG_FILE)
    }
}

/// Reading the running node over HTTP: [`Node`]'s probes, callable without importing it.
impl NodeProcess {
    /// `GET <gateway><path>` with `headers`; `path` is sent verbatim (no normalisation).
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<http::Response> {
        Node::get(self, path, headers)
    }

    /// `GET /-/open-registry/status`, parsed.
    pub fn status(&self) -> Result<open_registry_protocol::Status> {
        Node::status(self)
    }

    /// One counter of the status (`0` when the node does not report it).
    pub fn counter(&self, name: &str) -> Result<u64> {
        Node::counter(self, name)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Removes inherited `OPEN_REGISTRY_*` settings so the developer's environment cannot change
/// what a test starts, and sets a log level when none is given.
fn isolate_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OPEN_REGISTRY_") {
            cmd.env_remove(&k);
        }
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    // Plain text in node.log: it is read by people and by assertions, not by a terminal.
    cmd.env("RUST_BACKTRACE", "1").env("NO_COLOR", "1");
}

/// Runs `open-registry ARGS…` to completion (for `init`, `status`, `verify`, `id`, …); the
/// result may be a failure.
pub fn cli(args: &[&str], timeout: Duration) -> Result<Output> {
    let bin = tools::node_binary()?;
    let mut cmd = Command::new(bin);
    cmd.args(args);
    isolate_env(&mut cmd);
    process::run(&mut cmd, timeout).map_err(|e| anyhow!("{e:#}"))
}

/// `open-registry verify --lockfile LOCKFILE --registry REGISTRY --data-dir DATA_DIR`; the
/// result may be a failure.
pub fn verify_lockfile(lockfile: &Path, registry: &str, data_dir: &Path) -> Result<Output> {
    let path = |p: &Path| {
        p.to_str()
            .map(str::to_owned)
            .context("a path that is not UTF-8")
    };
    let (lockfile, data_dir) = (path(lockfile)?, path(data_dir)?);
    cli(
        &[
            "verify",
            "--lockfile",
            &lockfile,
            "--registry",
            registry,
            "--data-dir",
            &data_dir,
        ],
        Duration::from_secs(60),
    )
}

/// Spawns `cmd`, again when the executable is busy (ETXTBSY): a test that has just written its
/// own script (slowloris.rs) can race a child another test thread forks while the script's
/// write descriptor is open, until that child execs. Each attempt is a fork of its own, so a
/// few hundred of them outlast the race without waiting on the clock.
fn spawn_retrying_busy(cmd: &mut Command) -> std::io::Result<std::process::Child> {
    const ETXTBSY: i32 = 26;
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && tries < 500 => {
                tries += 1;
                std::thread::yield_now();
            }
            r => return r,
        }
    }
}
