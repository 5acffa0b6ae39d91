//! The `open-registry` command line: `init`, `start`, `status`.
//!
//! Parsing only builds [`Settings`]; [`Config::resolve`] validates them. Every command returns
//! an `anyhow::Result` that `main` prints with its causes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use open_registry_protocol::Status;

use crate::config::{self, CONFIG_FILE, Config, Settings};
use crate::node::{self, RUN_FILE};
use crate::units::format_size;

/// A community-run, decentralized npm registry node.
#[derive(Debug, Parser)]
#[command(name = "open-registry", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a commented config.toml into the data dir
    Init(InitArgs),
    /// Run the node and its gateway until Ctrl-C or SIGTERM
    Start(StartArgs),
    /// Ask a running node how it is doing
    Status(StatusArgs),
}

#[derive(Debug, Clone, Args)]
struct DataDir {
    /// Data directory [default: <user data dir>/open-registry]
    #[arg(
        long,
        env = "OPEN_REGISTRY_DATA_DIR",
        value_name = "DIR",
        global = true
    )]
    data_dir: Option<PathBuf>,
}

impl DataDir {
    fn path(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(config::default_data_dir)
    }
}

#[derive(Debug, Args)]
struct InitArgs {
    #[command(flatten)]
    dir: DataDir,
    /// Overwrite an existing config.toml
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Debug, Args)]
struct StartArgs {
    #[command(flatten)]
    dir: DataDir,
    /// Config file [default: <data dir>/config.toml]
    #[arg(long, env = "OPEN_REGISTRY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    dir: DataDir,
    /// The node's gateway URL [default: the node running on the data dir, else 127.0.0.1:7373]
    #[arg(long, env = "OPEN_REGISTRY_REGISTRY", value_name = "URL")]
    registry: Option<String>,
    /// Print the raw JSON status
    #[arg(long)]
    json: bool,
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init(a) => init(a),
        Command::Start(a) => start(a).await,
        Command::Status(a) => status(a).await,
    }
}

fn init(a: InitArgs) -> anyhow::Result<()> {
    let dir = a.dir.path();
    let path = dir.join(CONFIG_FILE);
    if path.exists() && !a.force {
        bail!(
            "{} already exists; edit it, or pass --force to write a fresh one",
            path.display()
        );
    }
    let mut from_npm = false;
    let c = Config::resolve(dir.clone(), a.settings, || {
        from_npm = true;
        config::npm_registry()
    })?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(&path, config::render_toml(&c))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    match &c.upstream {
        Some(u) if from_npm => println!("upstream: {u} (from the npm client's registry setting)"),
        Some(u) => println!("upstream: {u}"),
        None => println!("upstream: none (serving only what this node stores)"),
    }
    println!(
        "start it:       open-registry start --data-dir {}",
        dir.display()
    );
    println!(
        "point npm at it: npm config set registry {}/",
        c.gateway_url()
    );
    Ok(())
}

fn load_config(dir: &Path, file: Option<PathBuf>, flags: Settings) -> anyhow::Result<Config> {
    let file = file.unwrap_or_else(|| dir.join(CONFIG_FILE));
    let from_file = Settings::load(&file)?;
    Config::resolve(dir.to_owned(), flags.or(from_file), config::npm_registry)
}

async fn start(a: StartArgs) -> anyhow::Result<()> {
    let dir = a.dir.path();
    let config = load_config(&dir, a.config, a.settings)?;
    let handle = node::start(config).await?;
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        _ = handle.cancelled() => tracing::error!("the gateway stopped; shutting down"),
    }
    handle.shutdown().await
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// The gateway URL `status` asks: the flag, else the node running on the data dir, else the
/// default address.
fn registry_url(a: &StatusArgs) -> String {
    if let Some(r) = &a.registry {
        return r.trim_end_matches('/').to_owned();
    }
    let run = a.dir.path().join(RUN_FILE);
    if let Ok(text) = std::fs::read_to_string(run)
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(g) = v.get("gateway").and_then(|g| g.as_str())
    {
        return g.to_owned();
    }
    format!("http://{}", config::DEFAULT_LISTEN)
}

async fn status(a: StatusArgs) -> anyhow::Result<()> {
    let url = registry_url(&a);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let resp = http
        .get(format!("{url}/-/open-registry/status"))
        .send()
        .await
        .with_context(|| format!("no node answering at {url}"))?;
    if !resp.status().is_success() {
        bail!(
            "{url} answered {} (is it an Open-Registry node?)",
            resp.status()
        );
    }
    let text = resp.text().await?;
    let s: Status = serde_json::from_str(&text)
        .with_context(|| format!("{url} did not answer with an Open-Registry status"))?;
    if a.json {
        println!("{text}");
        return Ok(());
    }
    print!("{}", render_status(&url, &s));
    Ok(())
}

fn render_status(url: &str, s: &Status) -> String {
    let c = |k: &str| s.counters.get(k).copied().unwrap_or(0);
    let up = s.uptime_secs;
    format!(
        "open-registry {} at {url}: up {}h {}m {}s\n\
         upstream   {}\n\
         store      {} packuments, {} tarballs, {} blobs, {}\n\
         served     packuments {} ({} from store), tarballs {} ({} from store), {} coalesced\n\
         upstream   {} requests, {} errors, {} received, {} stale answers\n\
         integrity  {} blobs refused\n",
        s.version,
        up / 3600,
        up / 60 % 60,
        up % 60,
        s.upstream.as_deref().unwrap_or("none"),
        s.store.packuments,
        s.store.tarballs,
        s.store.blobs,
        format_size(s.store.bytes),
        c("packument_requests"),
        c("packument_hits"),
        c("tarball_requests"),
        c("tarball_hits"),
        c("coalesced"),
        c("upstream_requests"),
        c("upstream_errors"),
        format_size(c("upstream_bytes")),
        c("stale_served"),
        c("integrity_failures"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "open-registry",
            "start",
            "--data-dir",
            "/d",
            "--listen",
            "127.0.0.1:0",
            "--no-upstream",
        ])
        .unwrap();
        let Command::Start(a) = cli.command else {
            panic!("not start")
        };
        assert_eq!(a.settings.no_upstream, Some(true));
        assert_eq!(a.dir.path(), PathBuf::from("/d"));
        assert!(
            Cli::try_parse_from([
                "open-registry",
                "start",
                "--upstream",
                "http://x",
                "--no-upstream"
            ])
            .is_err()
        );
    }

    #[test]
    fn status_renders() {
        let mut s = Status {
            version: "0.1.0".into(),
            uptime_secs: 3723,
            ..Default::default()
        };
        s.counters.insert("tarball_hits".into(), 4);
        let out = render_status("http://127.0.0.1:1", &s);
        assert!(out.contains("up 1h 2m 3s"), "{out}");
        assert!(out.contains("(4 from store)"), "{out}");
    }
}
