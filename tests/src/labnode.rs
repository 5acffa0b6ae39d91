//! Nodes inside the network laboratory: `open-registry start` on a [`Lab`] host, and the same
//! test API as on loopback ([`Node`]).
//!
//! A node is started from a thread that has entered the host's namespace, so the process (and
//! everything it starts) lives there: its gateway listens on the namespace's own loopback and
//! its peer-to-peer listener on the host's laboratory address. Every request a test makes of it
//! ([`Node::get`]) is sent from a thread inside the same namespace, and so are the npm
//! clients a test runs against it ([`LabNode::enter`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde_json::Value;

use crate::lab::Lab;
use crate::node::Node;
use crate::{NodeProcess, http, probe};

/// An `open-registry` node on a laboratory host.
#[derive(Debug)]
pub struct LabNode<'l> {
    lab: &'l Lab,
    /// The laboratory host it runs on.
    pub host: String,
    /// Its operator id.
    pub id: String,
    /// Its peer-to-peer address with `/p2p/<id>`, as other hosts dial it.
    pub addr: String,
    node: NodeProcess,
}

impl<'l> LabNode<'l> {
    /// Starts `open-registry start` on `host` with `args`, on the data dir `data_dir` (one
    /// prepared with an operator key, say) or a fresh one. Its peers listen on the host's
    /// laboratory address, TCP, a free port.
    pub fn start(
        lab: &'l Lab,
        host: &str,
        data_dir: Option<&std::path::Path>,
        args: &[&str],
    ) -> Result<LabNode<'l>> {
        Self::start_binary(lab, host, None, data_dir, args)
    }

    /// [`LabNode::start`] with the `open-registry` executable `binary` (a release build, say)
    /// instead of the workspace's default one, when given.
    pub fn start_binary(
        lab: &'l Lab,
        host: &str,
        binary: Option<&std::path::Path>,
        data_dir: Option<&std::path::Path>,
        args: &[&str],
    ) -> Result<LabNode<'l>> {
        let listen = format!("/ip4/{}/tcp/0", lab.addr(host));
        let mut b = NodeProcess::builder()
            .args(["--p2p-listen", listen.as_str()])
            .args(args.iter().copied());
        if let Some(bin) = binary {
            b = b.binary(bin);
        }
        if let Some(d) = data_dir {
            b = b.data_dir(d);
        }
        let node = lab
            .enter(host, || b.start())?
            .with_context(|| format!("starting a node on {host}"))?;
        let mut n = LabNode {
            lab,
            host: host.to_owned(),
            id: String::new(),
            addr: String::new(),
            node,
        };
        let peers = probe::json(&n.get("/-/open-registry/peers", &[])?)?;
        n.id = peers["peer_id"]
            .as_str()
            .ok_or_else(|| anyhow!("no peer_id in {peers}"))?
            .to_owned();
        let prefix = format!("/ip4/{}/tcp/", lab.addr(host));
        let listen = peers["listen"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find(|a| a.starts_with(&prefix))
            .ok_or_else(|| anyhow!("no {prefix}… listen address in {peers}"))?;
        n.addr = format!("{listen}/p2p/{}", n.id);
        eprintln!("[lab] node {} on {host} at {}", n.id, n.addr);
        Ok(n)
    }

    /// Runs `f` on a thread inside the node's namespace (an npm client against
    /// [`Node::gateway`], say: processes it starts live there too).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        self.lab.enter(&self.host, f)
    }

    /// The connected peers' round-trip times (µs) by peer id, from `/-/open-registry/peers`.
    pub fn rtts(&self) -> Result<Vec<(String, Option<u64>)>> {
        let v = probe::json(&self.get("/-/open-registry/peers", &[])?)?;
        Ok(v["connected"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["peer_id"].as_str().unwrap_or_default().to_owned(),
                    c["rtt_us"].as_u64(),
                )
            })
            .collect())
    }

    /// Waits until the node is connected to every one of `peers` and has measured its round
    /// trip to each.
    pub fn wait_measured(&self, peers: &[&str], timeout: Duration) -> Result<()> {
        probe::wait_for(
            timeout,
            &format!("{} to measure its round trips to {peers:?}", self.host),
            || {
                let rtts = self.rtts().ok()?;
                peers
                    .iter()
                    .all(|p| rtts.iter().any(|(id, rtt)| id == p && rtt.is_some()))
                    .then_some(())
            },
        )
    }

    /// The node's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.node.pid()
    }

    /// SIGKILL (a crash, or a host gone, as far as its peers can tell).
    pub fn kill(&mut self) {
        self.node.kill();
    }
}

impl Node for LabNode<'_> {
    fn gateway(&self) -> &str {
        self.node.gateway()
    }

    fn log_path(&self) -> PathBuf {
        self.node.log_path()
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<http::Response> {
        let url = format!("{}{path}", self.gateway());
        let r = self.lab.enter(&self.host, || {
            http::request("GET", &url, headers, &[], Duration::from_secs(30))
        })?;
        r.with_context(|| format!("GET {path} on {}", self.host))
    }
}
