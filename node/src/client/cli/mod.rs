//! The `open-registry` command line.
//!
//! Parsing only builds [`Settings`] and the arguments below; [`crate::config::Config::resolve`]
//! validates a node's settings. Every command returns an `anyhow::Result` that `main` prints
//! with its causes; a failed check (verify, pin) prints its report and exits nonzero. The
//! commands live by what they do: `start` (`init`, `start`), `status` (`status`, `peers`,
//! `id`), `pin`, `verify`, `statement` (the operator's `statement.toml`), `network` (the
//! network view of a running node) and `advisory` (signed takedowns).

mod advisory;
mod network;
mod pin;
mod start;
mod statement;
mod status;
mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use super::NodeClient;
use crate::admin::token::TOKEN_FILE;
use crate::config::{self, Settings};
use crate::node::RUN_FILE;

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
    /// The operator's statement.toml: what the node costs and what it receives
    #[command(subcommand)]
    Statement(StatementCommand),
    /// The whole network as a running node sees it: instances, costs, donations, errors, lag
    Network(NetworkArgs),
    /// Signed advisories: take versions down across the network (enforced by quorum)
    #[command(subcommand)]
    Advisory(advisory::AdvisoryCommand),
}

#[derive(Debug, Subcommand)]
enum StatementCommand {
    /// Print the statement: per month costs, donations, spent and totals per currency
    Show(StatementShowArgs),
    /// Check the statement; problems are printed as FILE:LINE:COL: message
    Check(StatementFile),
    /// Fill donations and spent from an Open Collective transactions export (CSV)
    Import(StatementImportArgs),
}

#[derive(Debug, Args)]
struct StatementFile {
    #[command(flatten)]
    dir: DataDir,
    /// The statement [default: <data dir>/statement.toml]
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct StatementShowArgs {
    #[command(flatten)]
    file: StatementFile,
    /// Print JSON, with the totals of each month and of each currency
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct StatementImportArgs {
    #[command(flatten)]
    file: StatementFile,
    /// An Open Collective transactions export: its contributions received become the donations
    /// and its expenses the spent of their months (costs are kept)
    #[arg(long, value_name = "FILE.csv")]
    opencollective: PathBuf,
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
    /// Fail when no operator is trusted (by default operator records are then not checked)
    #[arg(long)]
    require_operators: bool,
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

#[derive(Debug, Args)]
struct NetworkArgs {
    #[command(flatten)]
    dir: DataDir,
    /// The node's gateway URL [default: the node running on the data dir, else 127.0.0.1:7373]
    #[arg(long, env = "OPEN_REGISTRY_REGISTRY", value_name = "URL")]
    registry: Option<String>,
    /// Print the raw JSON view
    #[arg(long)]
    json: bool,
}

/// Runs the parsed command line; the exit code is nonzero when a check failed.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init(a) => start::init(a).await,
        Command::Start(a) => start::start(a).await,
        Command::Status(a) => status::status(a).await,
        Command::Id(a) => status::id(a),
        Command::Verify(a) => verify::verify(a).await,
        Command::Pin(c) => pin::pin(c).await,
        Command::Peers(a) => status::peers(a).await,
        Command::Statement(c) => statement::statement(c),
        Command::Network(a) => network::network(a).await,
        Command::Advisory(c) => advisory::advisory(c).await,
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

/// A client for the node `n` names, with the admin token of its data dir if there is one.
fn node_client(n: &NodeRef) -> anyhow::Result<NodeClient> {
    let dir = n.dir.path();
    let token = std::fs::read_to_string(dir.join(TOKEN_FILE))
        .ok()
        .map(|t| t.trim().to_owned());
    Ok(NodeClient::new(
        &registry_url(n.registry.as_deref(), &dir),
        token,
    )?)
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
        let cli = Cli::try_parse_from([
            "open-registry",
            "statement",
            "import",
            "--opencollective",
            "tx.csv",
            "--data-dir",
            "/d",
        ])
        .unwrap();
        let Command::Statement(StatementCommand::Import(a)) = cli.command else {
            panic!("not statement import")
        };
        assert_eq!(a.opencollective, PathBuf::from("tx.csv"));
        assert_eq!(a.file.path(), PathBuf::from("/d/statement.toml"));
        assert!(
            Cli::try_parse_from(["open-registry", "statement", "import"]).is_err(),
            "--opencollective is required"
        );
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
}
