//! The `open-registry` command line: `init`, `start`, `status`.
//!
//! Parsing only builds [`Settings`]; [`Config::resolve`] validates them. Every command returns
//! an `anyhow::Result` that `main` prints with its causes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use open_registry_protocol::Status;

use std::process::ExitCode;

use open_registry_protocol::{PeerId, Policy};

use crate::client::pinning::{self, NodeApi};
use crate::client::verify;
use crate::config::units::format_size;
use crate::config::{self, CONFIG_FILE, Config, Settings};
use crate::node::{self, RUN_FILE};
use crate::records::identity::Identity;
use futures::StreamExt as _;
use open_registry_protocol::PackageName;

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
    /// Print this operator's id (the PeerId that signs its records)
    Id(IdArgs),
    /// Verify packages or a lockfile: integrity, npm registry signatures, operator records
    Verify(VerifyArgs),
    /// Pin packages so they stay available offline and are never evicted
    #[command(subcommand)]
    Pin(PinCommand),
    /// List connected peers and the routing table size
    Peers(PeersArgs),
}

#[derive(Debug, Args)]
struct PeersArgs {
    #[command(flatten)]
    node: NodeRef,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum PinCommand {
    /// Pin packages: NAME (newest versions and dist-tags), NAME@RANGE, a lockfile, a list
    Add(PinAddArgs),
    /// List pinned packages
    Ls(PinLsArgs),
    /// Unpin packages
    Rm(PinRmArgs),
}

#[derive(Debug, Args)]
struct NodeRef {
    #[command(flatten)]
    dir: DataDir,
    /// The node's gateway URL [default: the node running on the data dir, else 127.0.0.1:7373]
    #[arg(long, env = "OPEN_REGISTRY_REGISTRY", value_name = "URL")]
    registry: Option<String>,
}

#[derive(Debug, Args)]
struct PinAddArgs {
    #[command(flatten)]
    node: NodeRef,
    /// NAME, NAME@VERSION, NAME@TAG or NAME@RANGE
    #[arg(value_name = "SPEC")]
    specs: Vec<String>,
    /// Exactly the packages of an npm lockfile (v2 or v3)
    #[arg(long, value_name = "FILE")]
    lockfile: Option<PathBuf>,
    /// Specs from a file, one per line (# starts a comment)
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,
    /// Also pin what each version depends on, as npm would resolve it
    #[arg(long)]
    with_deps: bool,
    /// The N packages most requested across the network (this node and trusted operators)
    #[arg(long, value_name = "N")]
    top: Option<usize>,
}

#[derive(Debug, Args)]
struct PinLsArgs {
    #[command(flatten)]
    node: NodeRef,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct PinRmArgs {
    #[command(flatten)]
    node: NodeRef,
    /// Package names
    #[arg(value_name = "NAME", required = true)]
    names: Vec<String>,
}

#[derive(Debug, Args)]
struct IdArgs {
    #[command(flatten)]
    dir: DataDir,
    /// Also print the public key, as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    #[command(flatten)]
    dir: DataDir,
    /// Packages to check: NAME, NAME@VERSION, NAME@TAG or NAME@RANGE
    #[arg(value_name = "SPEC", required_unless_present = "lockfile")]
    specs: Vec<String>,
    /// Check every registry package of an npm lockfile (v2 or v3)
    #[arg(long, value_name = "FILE", conflicts_with = "specs")]
    lockfile: Option<PathBuf>,
    /// The gateway to check through [default: the node running on the data dir, else 127.0.0.1:7373]
    #[arg(long, env = "OPEN_REGISTRY_REGISTRY", value_name = "URL")]
    registry: Option<String>,
    /// Pinned registry keys [default: <data dir>/keys.json]
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
    /// Trust this operator (repeatable) [default: config.toml's trust plus this data dir's operator]
    #[arg(long = "trust", value_name = "PEER_ID", value_delimiter = ',')]
    trust: Vec<String>,
    /// How many trusted operators must agree [default: config.toml's, else 1]
    #[arg(long, value_name = "K")]
    trust_threshold: Option<usize>,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
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

/// Runs the parsed command line; the exit code is nonzero when a check failed.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init(a) => init(a).await,
        Command::Start(a) => start(a).await,
        Command::Status(a) => status(a).await,
        Command::Id(a) => id(a),
        Command::Verify(a) => verify(a).await,
        Command::Pin(c) => pin(c).await,
        Command::Peers(a) => peers(a).await,
    }
    .map(|()| ExitCode::SUCCESS)
    .or_else(|e| match e.downcast_ref::<Failed>() {
        Some(_) => Ok(ExitCode::FAILURE),
        None => Err(e),
    })
}

/// A check failed and its report was printed: exit nonzero without another message.
#[derive(Debug, thiserror::Error)]
#[error("verification failed")]
struct Failed;

fn node_api(n: &NodeRef) -> anyhow::Result<NodeApi> {
    let dir = n.dir.path();
    let token = std::fs::read_to_string(dir.join(crate::admin::token::TOKEN_FILE))
        .ok()
        .map(|t| t.trim().to_owned());
    NodeApi::new(&registry_url(n.registry.as_deref(), &dir), token)
}

async fn peers(a: PeersArgs) -> anyhow::Result<()> {
    let api = node_api(&a.node)?;
    let v = api.get_json("/-/open-registry/peers").await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_owned();
    let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    println!("peer id        {}", s("peer_id"));
    let listen: Vec<String> = v
        .get("listen")
        .and_then(|l| l.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    println!("listening on   {}", listen.join(", "));
    println!(
        "kademlia       {} mode, routing table {} peers",
        if v.get("kad_server").and_then(serde_json::Value::as_bool) == Some(true) {
            "server"
        } else {
            "client"
        },
        n("routing_table_size")
    );
    println!("providing      {} blobs", n("provided"));
    let connected = v
        .get("connected")
        .and_then(|c| c.as_array())
        .cloned()
        .unwrap_or_default();
    println!("connected      {} peers", connected.len());
    for c in &connected {
        let addrs: Vec<&str> = c
            .get("addrs")
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        println!(
            "  {}  {}",
            c.get("peer_id").and_then(|p| p.as_str()).unwrap_or("?"),
            addrs.join(" ")
        );
    }
    Ok(())
}

async fn pin(c: PinCommand) -> anyhow::Result<()> {
    match c {
        PinCommand::Add(a) => pin_add(a).await,
        PinCommand::Ls(a) => {
            let api = node_api(&a.node)?;
            let v = api.pins().await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", render_pins(&v));
            }
            Ok(())
        }
        PinCommand::Rm(a) => {
            let api = node_api(&a.node)?;
            for n in &a.names {
                let name = PackageName::parse(n)?;
                if api.unpin(&name).await? {
                    println!("unpinned {name}");
                } else {
                    println!("{name} was not pinned");
                }
            }
            Ok(())
        }
    }
}

async fn pin_add(a: PinAddArgs) -> anyhow::Result<()> {
    let dir = a.node.dir.path();
    let latest = Settings::load(&dir.join(CONFIG_FILE))?
        .pin_latest
        .unwrap_or(3);
    let mut api = node_api(&a.node)?;
    let mut specs = a.specs.clone();
    if let Some(f) = &a.from_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        specs.extend(
            text.lines()
                .map(|l| l.split('#').next().unwrap_or("").trim())
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        );
    }
    if let Some(n) = a.top {
        let v = api
            .get_json(&format!("/-/open-registry/popular?limit={n}"))
            .await?;
        let names: Vec<String> = v
            .get("packages")
            .and_then(|p| p.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.get("name").and_then(|n| n.as_str()).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if names.is_empty() {
            bail!("the network has reported no requests yet; nothing to pin with --top");
        }
        println!("most requested: {}", names.join(", "));
        specs.extend(names);
    }
    let (mut targets, mut failures) = api.expand(&specs, latest, a.with_deps).await;
    if let Some(path) = &a.lockfile {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        for t in verify::lockfile_targets(&text)? {
            let t = (t.name, t.version);
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
    }
    if targets.is_empty() && failures.is_empty() {
        bail!("nothing to pin: give package specs, --lockfile or --from-file");
    }
    let bar = indicatif::ProgressBar::new(targets.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("pinning {bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let results: Vec<(pinning::Target, anyhow::Result<serde_json::Value>)> =
        futures::stream::iter(targets.iter().cloned())
            .map(|t| {
                let api = &api;
                async move {
                    let r = api.pin(&t).await;
                    (t, r)
                }
            })
            .buffer_unordered(4)
            .inspect(|(t, _)| {
                bar.set_message(format!("{}@{}", t.0, t.1));
                bar.inc(1);
            })
            .collect()
            .await;
    bar.finish_and_clear();
    let (mut bytes, mut ok, mut packages) = (0u64, 0usize, std::collections::BTreeSet::new());
    for (t, r) in results {
        match r {
            Ok(v) => {
                ok += 1;
                bytes += v
                    .get("size")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0);
                packages.insert(t.0.to_string());
            }
            Err(e) => failures.push((format!("{}@{}", t.0, t.1), format!("{e:#}"))),
        }
    }
    println!(
        "pinned {ok} versions of {} packages ({})",
        packages.len(),
        format_size(bytes)
    );
    if failures.is_empty() {
        return Ok(());
    }
    println!("{} failed:", failures.len());
    for (what, why) in &failures {
        println!("  {what}: {why}");
    }
    Err(Failed.into())
}

fn render_pins(v: &serde_json::Value) -> String {
    let mut out = String::new();
    let pins = v
        .get("pins")
        .and_then(|p| p.as_array())
        .cloned()
        .unwrap_or_default();
    let rows: Vec<[String; 4]> = pins
        .iter()
        .map(|p| {
            let versions: Vec<String> = p
                .get("versions")
                .and_then(|v| v.as_object())
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            [
                p.get("name")
                    .and_then(|n| n.as_str())
                    .unwrap_or("?")
                    .to_owned(),
                versions.join(" "),
                format_size(
                    p.get("size")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0),
                ),
                p.get("providers")
                    .and_then(serde_json::Value::as_u64)
                    .map_or("-".to_owned(), |n| n.to_string()),
            ]
        })
        .collect();
    let head = ["PACKAGE", "VERSIONS", "SIZE", "PROVIDERS"];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut line = |c: [&str; 4]| {
        out.push_str(&format!(
            "{:<a$}  {:<b$}  {:>c$}  {}\n",
            c[0],
            c[1],
            c[2],
            c[3],
            a = w[0],
            b = w[1],
            c = w[2]
        ));
    };
    line(head);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3]]);
    }
    out.push_str(&format!("{} packages pinned\n", rows.len()));
    out
}

fn id(a: IdArgs) -> anyhow::Result<()> {
    let identity = Identity::load_or_create(&a.dir.path())?;
    if a.json {
        use base64::Engine as _;
        let key = identity.signing_key().verifying_key().to_bytes();
        let v = serde_json::json!({
            "peer_id": identity.peer_id().to_string(),
            "public_key": base64::engine::general_purpose::STANDARD.encode(key),
            "key_type": "ed25519",
        });
        println!("{v}");
    } else {
        println!("{}", identity.peer_id());
    }
    Ok(())
}

async fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let dir = a.dir.path();
    let file = Settings::load(&dir.join(CONFIG_FILE))?;
    let parse_ids = |v: &[String]| -> anyhow::Result<Vec<PeerId>> {
        v.iter()
            .map(|t| {
                t.parse::<PeerId>()
                    .with_context(|| format!("{t:?} is not an operator id (a PeerId)"))
            })
            .collect()
    };
    let given = parse_ids(&a.trust)?;
    let configured = parse_ids(file.trust.as_deref().unwrap_or_default())?;
    let own = Identity::load(&dir)?.map(|i| i.peer_id());
    let trusted = verify::trusted(&given, &configured, own);
    let threshold = a.trust_threshold.or(file.trust_threshold).unwrap_or(1);
    if trusted.is_empty() {
        bail!(
            "no trusted operators: pass --trust PEER_ID, or set trust in {}",
            dir.join(CONFIG_FILE).display()
        );
    }
    if threshold > trusted.len() {
        bail!(
            "--trust-threshold {threshold} is more than the {} trusted operators",
            trusted.len()
        );
    }
    let keys_path = a
        .keys
        .clone()
        .unwrap_or_else(|| dir.join(crate::fetch::keys::KEYS_FILE));
    let keys = verify::load_keys(&keys_path)?;
    if keys.is_none() && a.keys.is_some() {
        bail!("{} does not exist", keys_path.display());
    }
    let registry = registry_url(a.registry.as_deref(), &dir);
    let v = verify::Verify::new(verify::Options {
        registry,
        keys,
        policy: Policy::new(trusted, threshold),
        state_dir: Some(dir),
    })?;
    let targets = match &a.lockfile {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            verify::lockfile_targets(&text)?
        }
        None => {
            let mut t = Vec::new();
            for spec in &a.specs {
                t.extend(verify::targets_for_spec(&v, spec).await?);
            }
            t
        }
    };
    let bar = indicatif::ProgressBar::new(targets.len() as u64);
    if a.lockfile.is_some() {
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let reports = v
        .run(&targets, |r| {
            bar.set_message(format!("{}@{}", r.name, r.version));
            bar.inc(1);
        })
        .await;
    bar.finish_and_clear();
    v.save_seen()?;
    let ok = reports.iter().all(|r| r.ok);
    if a.json {
        let doc = serde_json::json!({"ok": ok, "packages": reports});
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", verify::render_table(&reports));
    }
    if ok { Ok(()) } else { Err(Failed.into()) }
}

async fn init(a: InitArgs) -> anyhow::Result<()> {
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
    let identity = Identity::load_or_create(&dir)?;
    println!(
        "operator: {} (key in {})",
        identity.peer_id(),
        dir.join(crate::records::identity::KEY_FILE).display()
    );
    let upstream = crate::fetch::upstream::Client::new(&c, Default::default())?;
    match crate::fetch::keys::pin_keys(
        &dir,
        upstream
            .as_ref()
            .map(|u| u as &dyn crate::fetch::upstream::Source),
    )
    .await
    {
        Ok(Some(_)) => println!(
            "registry keys: pinned in {}",
            dir.join(crate::fetch::keys::KEYS_FILE).display()
        ),
        Ok(None) if upstream.is_some() => println!(
            "registry keys: the upstream publishes none (/-/npm/v1/keys); npm registry signatures cannot be verified"
        ),
        Ok(None) => {}
        Err(e) => {
            println!("registry keys: could not fetch them now ({e:#}); `start` will try again")
        }
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

/// The gateway URL to ask: the flag, else the node running on the data dir, else the default
/// address.
fn registry_url(flag: Option<&str>, dir: &Path) -> String {
    if let Some(r) = flag {
        return r.trim_end_matches('/').to_owned();
    }
    let run = dir.join(RUN_FILE);
    if let Ok(text) = std::fs::read_to_string(run)
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(g) = v.get("gateway").and_then(|g| g.as_str())
    {
        return g.to_owned();
    }
    format!("http://{}", config::DEFAULT_LISTEN)
}

async fn status(a: StatusArgs) -> anyhow::Result<()> {
    let url = registry_url(a.registry.as_deref(), &a.dir.path());
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
         peers      {} blobs fetched ({}), {} failed tries, {} records refused\n\
         integrity  {} blobs refused\n\
         sync       {}\n",
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
        c("peer_ingests"),
        format_size(c("peer_bytes")),
        c("peer_errors"),
        c("records_rejected"),
        c("integrity_failures"),
        render_sync(s.sync.as_ref()),
    )
}

fn render_sync(s: Option<&open_registry_protocol::status::SyncStatus>) -> String {
    let Some(s) = s else {
        return "-".into();
    };
    let pinned = s.oldest_pinned_age_secs.map_or("no pins".to_owned(), |a| {
        format!("oldest pinned packument confirmed {a}s ago")
    });
    match &s.changes_feed {
        Some(feed) => format!(
            "following {feed}: upstream seq {}, processed {}, lag {}; {pinned}",
            s.upstream_seq.unwrap_or(0),
            s.processed_seq.unwrap_or(0),
            s.lag.unwrap_or(0),
        ),
        None => format!("no changes feed (pins revalidated on an interval); {pinned}"),
    }
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
