//! Operators for tests of the network's public operation: data dirs prepared with an
//! operator key (so each operator's id is known before any node starts, for `--trust`) and a
//! `statement.toml`, nodes started on them, and their `network.json` read back.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use open_registry_node::{Identity, KEY_FILE};
use open_registry_protocol::network::NetworkView;
use open_registry_protocol::statement::STATEMENT_FILE;
use tempfile::TempDir;

use crate::{InProcessNode, Node, NodeProcess, p2p::P2pNode, probe};

/// An operator: a data dir holding its key.
#[derive(Debug)]
pub struct Operator {
    /// Its operator key.
    pub identity: Identity,
    /// Its id (PeerId), for `--trust`.
    pub id: String,
    dir: TempDir,
}

impl Operator {
    /// An operator whose key is made from `seed`, in a fresh data dir.
    pub fn new(seed: u8) -> Result<Operator> {
        let dir = tempfile::Builder::new()
            .prefix("open-registry-operator-")
            .tempdir()?;
        let seed = [seed; 32];
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.path().join(KEY_FILE))
            .context("writing the operator key")?;
        f.write_all(&seed)?;
        let identity = Identity::from_seed(seed);
        Ok(Operator {
            id: identity.peer_id().to_string(),
            identity,
            dir,
        })
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `statement.toml` (a running node picks it up at its next report).
    pub fn write_statement(&self, text: &str) -> Result<()> {
        std::fs::write(self.dir().join(STATEMENT_FILE), text).context("writing statement.toml")
    }

    /// `open-registry start` on this data dir with `args`.
    pub fn start(&self, args: &[&str]) -> Result<P2pNode> {
        P2pNode::joined(
            NodeProcess::builder()
                .data_dir(self.dir())
                .args(args.iter().copied())
                .start()?,
        )
    }

    /// The same node in this process, on a manual clock.
    pub fn start_in_process(&self, args: &[&str]) -> Result<P2pNode<InProcessNode>> {
        P2pNode::joined(
            NodeProcess::builder()
                .data_dir(self.dir())
                .args(args.iter().copied())
                .start_in_process()?,
        )
    }
}

/// A one-month statement: `name` pays `costs` (provider, item, amount) in `currency` for
/// 2026-11 and received `donated`, of which it spent `spent` on its first cost's item.
pub fn statement(
    name: &str,
    currency: &str,
    costs: &[(&str, &str, &str)],
    donated: &str,
    spent: &str,
) -> String {
    let costs: Vec<String> = costs
        .iter()
        .map(|(p, i, a)| format!("{{ provider = \"{p}\", item = \"{i}\", amount = \"{a}\" }}"))
        .collect();
    let on = costs.first().map_or("servers", |_| "the server");
    format!(
        "[operator]\nname = \"{name}\"\nurl = \"https://example.org/{currency}\"\n\n[[month]]\n\
         month = \"2026-11\"\ncurrency = \"{currency}\"\ncost = [ {} ]\n\
         donations = [ {{ source = \"OpenCollective\", amount = \"{donated}\" }} ]\n\
         spent = [ {{ on = \"{on}\", amount = \"{spent}\" }} ]\n",
        costs.join(", ")
    )
}

/// `GET /-/open-registry/network.json`, parsed.
pub fn network_view(node: &impl Node) -> Result<NetworkView> {
    let r = node.get("/-/open-registry/network.json", &[])?;
    ensure!(
        r.status == 200,
        "{}/-/open-registry/network.json answered {}: {}",
        node.gateway(),
        r.status,
        r.text()
    );
    serde_json::from_slice(&r.body).context("network.json is not a network view")
}

/// Waits until `node`'s network view satisfies `check`, returning it.
pub fn wait_view(
    node: &impl Node,
    timeout: std::time::Duration,
    what: &str,
    check: impl Fn(&NetworkView) -> bool,
) -> Result<NetworkView> {
    let mut last = None;
    probe::wait_for(timeout, what, || {
        let v = network_view(node).ok()?;
        let ok = check(&v);
        last = Some(v.clone());
        ok.then_some(v)
    })
    .with_context(|| format!("the last view: {last:#?}"))
}
