//! `advisory add | rm | ls`: this operator's signed advisories on a running node, through its
//! admin API, and the advisories the node holds from every operator.

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use open_registry_protocol::PackageName;
use open_registry_protocol::advisory::{AdvisoryList, AdvisoryView, Kind};

use super::{NodeRef, node_client};

#[derive(Debug, Subcommand)]
pub(super) enum AdvisoryCommand {
    /// Sign an advisory: the versions of NAME in RANGE are taken down once enough trusted
    /// operators sign one (replaces this operator's earlier advisory about NAME)
    Add(AddArgs),
    /// Withdraw this operator's advisory about NAME (a signed withdrawal)
    Rm(RmArgs),
    /// List the advisories in force and pending, with who signed them
    Ls(LsArgs),
}

#[derive(Debug, Args)]
pub(super) struct AddArgs {
    #[command(flatten)]
    node: NodeRef,
    /// NAME@RANGE: an npm semver range (`left-pad@1.0.1`, `@s/p@">=2.1.0 <2.1.3"`)
    #[arg(value_name = "NAME@RANGE")]
    spec: String,
    /// Why, in a sentence (at most 500 bytes)
    #[arg(long, value_name = "TEXT")]
    reason: String,
    /// Where the evidence is (http or https)
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// What is wrong with the versions
    #[arg(long, value_name = "KIND", default_value = "malware", value_parser = ["malware", "compromised", "vulnerable"])]
    kind: String,
    /// Print the signed advisory as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(super) struct RmArgs {
    #[command(flatten)]
    node: NodeRef,
    /// NAME or NAME@RANGE (the range must then be the advisory's)
    #[arg(value_name = "NAME[@RANGE]", required_unless_present = "id")]
    spec: Option<String>,
    /// The advisory's id instead (as `advisory ls` shows it)
    #[arg(long, value_name = "ID", conflicts_with = "spec")]
    id: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct LsArgs {
    #[command(flatten)]
    node: NodeRef,
    /// Also list advisories of operators this node does not trust (never enforced) and
    /// withdrawals
    #[arg(long)]
    all: bool,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// Splits `NAME@RANGE` (a scoped name keeps its leading `@`); the range is `None` without one.
fn split_spec(spec: &str) -> anyhow::Result<(PackageName, Option<String>)> {
    let spec = spec.trim();
    let at = spec
        .char_indices()
        .skip(1)
        .find(|(_, c)| *c == '@')
        .map(|(i, _)| i);
    let (name, range) = match at {
        Some(i) => (&spec[..i], Some(spec[i + 1..].trim().to_owned())),
        None => (spec, None),
    };
    let name = PackageName::parse(name).with_context(|| format!("{spec:?}: not NAME@RANGE"))?;
    Ok((name, range.filter(|r| !r.is_empty())))
}

pub(super) async fn advisory(c: AdvisoryCommand) -> anyhow::Result<()> {
    match c {
        AdvisoryCommand::Add(a) => {
            let (name, range) = split_spec(&a.spec)?;
            let Some(range) = range else {
                bail!(
                    "{:?}: give the versions as NAME@RANGE (e.g. {name}@1.0.1, or {name}@* for all)",
                    a.spec
                );
            };
            let kind: Kind = a.kind.parse().map_err(anyhow::Error::msg)?;
            let node = node_client(&a.node)?;
            let v: AdvisoryView = node
                .admin(
                    "advisory",
                    &serde_json::json!({
                        "name": name.as_str(),
                        "range": range,
                        "kind": kind,
                        "reason": a.reason,
                        "url": a.url,
                    }),
                )
                .await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "signed advisory {} for {}@{} ({}, seq {}): published",
                    v.id, v.name, v.range, v.kind, v.seq
                );
                let list: AdvisoryList = node.get_json("/-/open-registry/advisories").await?;
                if let Some(g) = list
                    .advisories
                    .iter()
                    .find(|g| g.name == v.name && g.range == v.range)
                {
                    println!(
                        "{} of {} signatures: {}",
                        g.signers.len(),
                        list.threshold,
                        if g.in_force { "in force" } else { "pending" }
                    );
                }
            }
            Ok(())
        }
        AdvisoryCommand::Rm(a) => {
            let node = node_client(&a.node)?;
            let body = match (&a.id, &a.spec) {
                (Some(id), _) => serde_json::json!({"id": id}),
                (None, Some(spec)) => {
                    let (name, range) = split_spec(spec)?;
                    serde_json::json!({"name": name.as_str(), "range": range})
                }
                (None, None) => bail!("give NAME[@RANGE] or --id"),
            };
            let v: AdvisoryView = node.admin("advisory/withdraw", &body).await?;
            println!(
                "withdrew advisory for {}@{} (seq {}): published",
                v.name, v.range, v.seq
            );
            Ok(())
        }
        AdvisoryCommand::Ls(a) => {
            let node = node_client(&a.node)?;
            let path = if a.all {
                "/-/open-registry/advisories?all=1"
            } else {
                "/-/open-registry/advisories"
            };
            let v: AdvisoryList = node.get_json(path).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", render(&v));
            }
            Ok(())
        }
    }
}

fn signer(v: &AdvisoryView) -> String {
    let mut s = v.operator.clone();
    if v.this_node {
        s.push_str(" (this node)");
    }
    s
}

/// The listing: one block per package and range, its state and its signers.
pub(super) fn render(v: &AdvisoryList) -> String {
    let mut out = String::new();
    if v.advisories.is_empty() {
        out.push_str("no advisories from trusted operators\n");
    }
    for g in &v.advisories {
        let state = if g.in_force { "IN FORCE" } else { "pending" };
        out.push_str(&format!(
            "{}@{}  {state}  {} of {} signatures\n",
            g.name,
            g.range,
            g.signers.len(),
            v.threshold
        ));
        for s in &g.signers {
            out.push_str(&format!(
                "  {}  {}@{}  {}: {}{}  [{}]\n",
                signer(s),
                s.name,
                s.range,
                s.kind,
                s.reason,
                s.url
                    .as_deref()
                    .map(|u| format!(" ({u})"))
                    .unwrap_or_default(),
                s.id
            ));
        }
    }
    if !v.untrusted.is_empty() {
        out.push_str("untrusted operators (never enforced):\n");
        for s in &v.untrusted {
            out.push_str(&format!(
                "  {}  {}@{}  {}: {}  [{}]\n",
                signer(s),
                s.name,
                s.range,
                s.kind,
                s.reason,
                s.id
            ));
        }
    }
    if !v.withdrawn.is_empty() {
        out.push_str("withdrawn:\n");
        for s in &v.withdrawn {
            out.push_str(&format!(
                "  {}  {}@{}  [{}]\n",
                signer(s),
                s.name,
                s.range,
                s.id
            ));
        }
    }
    let refused: u64 = v.refused.values().sum();
    if refused > 0 {
        let by: Vec<String> = v.refused.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out.push_str(&format!("refused from gossip: {}\n", by.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use open_registry_protocol::advisory::AdvisoryGroup;

    #[test]
    fn specs_split_at_the_version_at() {
        let (n, r) = split_spec("left-pad@1.0.1").unwrap();
        assert_eq!((n.as_str(), r.as_deref()), ("left-pad", Some("1.0.1")));
        let (n, r) = split_spec("@s/p@>=2.1.0 <2.1.3").unwrap();
        assert_eq!((n.as_str(), r.as_deref()), ("@s/p", Some(">=2.1.0 <2.1.3")));
        let (n, r) = split_spec("@s/p").unwrap();
        assert_eq!((n.as_str(), r), ("@s/p", None));
        assert!(split_spec("Not Valid@1").is_err());
    }

    #[test]
    fn listing_shows_state_and_signers() {
        let view = |op: &str, this_node: bool| AdvisoryView {
            id: "0011223344556677".into(),
            operator: op.into(),
            trusted: true,
            this_node,
            name: "left-pad".into(),
            range: "1.0.1".into(),
            kind: Kind::Malware,
            reason: "stolen token".into(),
            url: Some("https://example.org/a".into()),
            seq: 1,
            at_ms: 1,
            expires_at_ms: 2,
            withdrawn: false,
            signed: String::new(),
        };
        let v = AdvisoryList {
            threshold: 2,
            advisories: vec![AdvisoryGroup {
                name: "left-pad".into(),
                range: "1.0.1".into(),
                in_force: false,
                signers: vec![view("A", true)],
            }],
            ..AdvisoryList::default()
        };
        let out = render(&v);
        assert!(
            out.starts_with("left-pad@1.0.1  pending  1 of 2 signatures\n"),
            "{out}"
        );
        assert!(out.contains("  A (this node)  left-pad@1.0.1  malware: stolen token (https://example.org/a)  [0011223344556677]\n"), "{out}");
    }
}
