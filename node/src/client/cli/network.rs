//! `network`: the network as a running node sees it (its `network.json`), in words.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use open_registry_protocol::advisory::AdvisoryList;
use open_registry_protocol::network::{NetworkView, Withholding};

use super::{NetworkArgs, advisory, registry_url, status};
use crate::client::NodeClient;
use crate::config::units::format_size;

/// How long `network` waits for a node.
const TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn network(a: NetworkArgs) -> anyhow::Result<()> {
    let url = registry_url(a.registry.as_deref(), &a.dir.path());
    let node = NodeClient::new(&url, None)?;
    let resp = match node
        .get("/-/open-registry/network.json", "application/json", TIMEOUT)
        .await
    {
        Ok(r) => r,
        Err(e) if e.status().is_some() => {
            anyhow::bail!("{url} answered {e} (is it an Open-Registry node of this version?)")
        }
        Err(e) => return Err(e.into()),
    };
    let text = resp.text().await?;
    let v: NetworkView = serde_json::from_str(&text)
        .with_context(|| format!("{url} did not answer with an Open-Registry network view"))?;
    if a.json {
        println!("{text}");
        return Ok(());
    }
    print!("{}", render(&url, &v));
    Ok(())
}

/// The view in words: the nine figures first, then the costs and the operators.
fn render(url: &str, v: &NetworkView) -> String {
    let mut out = String::new();
    let i = &v.instances;
    let _ = writeln!(out, "the network as {url} sees it");
    let _ = writeln!(
        out,
        "instances   {} online: {} trusted, {} others ({} known)",
        i.online, i.trusted_online, i.other_online, i.known
    );
    let money = |f: fn(&open_registry_protocol::network::Money) -> &String| {
        if v.money.is_empty() {
            return "none stated".to_owned();
        }
        v.money
            .iter()
            .map(|(c, m)| format!("{c} {}", f(m)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(out, "cost        {} a month", money(|m| &m.monthly_cost));
    let _ = writeln!(out, "donated     {}", money(|m| &m.donated));
    let _ = writeln!(out, "spent       {}", money(|m| &m.spent));
    let _ = writeln!(out, "balance     {}", money(|m| &m.balance));
    let _ = writeln!(
        out,
        "errors      {} per minute ({} in the last windows)",
        v.errors.per_minute, v.errors.window
    );
    let _ = writeln!(
        out,
        "served      {} packuments in the last windows, {} since the nodes started; {} requests, {}",
        v.packages.served_window,
        v.packages.served_total,
        v.requests.window,
        format_size(v.requests.bytes_window)
    );
    let _ = writeln!(
        out,
        "cached      {} packages at the node holding most ({} tarballs over all nodes)",
        v.packages.cached_max, v.packages.tarballs_sum
    );
    let _ = writeln!(
        out,
        "lag         {} s, {} feed sequences behind the upstream at most{}",
        v.lag.max_seconds,
        v.lag.max_seq,
        if v.upstream_down > 0 {
            format!(
                "; the upstream is unreachable from {} nodes",
                v.upstream_down
            )
        } else {
            String::new()
        }
    );
    if !v.costs.is_empty() {
        let _ = writeln!(out, "\nwhere the money goes (each operator's latest month)");
        for c in &v.costs {
            let _ = writeln!(
                out,
                "  {:<24} {:<16} {:<24} {} {:>10} {}",
                truncate(&c.name, 24),
                truncate(&c.provider, 16),
                truncate(&c.item, 24),
                c.month,
                c.amount,
                c.currency
            );
        }
    }
    let _ = writeln!(out, "\noperators");
    for o in &v.operators {
        let _ = writeln!(
            out,
            "  {} {:<8} {:<9} {}{}",
            o.id,
            if o.trusted { "trusted" } else { "other" },
            if o.online { "online" } else { "offline" },
            o.name.as_deref().unwrap_or("(no statement)"),
            if o.this_node { " (this node)" } else { "" }
        );
    }
    if !v.others.money.is_empty() || v.others.served_window > 0 {
        let claims: Vec<String> = v
            .others
            .money
            .iter()
            .map(|(c, m)| format!("{c} {} a month", m.monthly_cost))
            .collect();
        let _ = writeln!(
            out,
            "\noperators outside the trust policy claim (not in the figures above): {} packuments served; {}",
            v.others.served_window,
            if claims.is_empty() {
                "no costs".to_owned()
            } else {
                claims.join(", ")
            }
        );
    }
    if !v.refused.is_empty() {
        let r: Vec<String> = v.refused.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(out, "refused     {}", r.join(", "));
    }
    out.push_str(&render_withholding(&v.withholding));
    out
}

/// What the node withholds: its advisories in force and pending with their signers, and the
/// versions in their release cooldown (nothing when there are none and the cooldown is off).
fn render_withholding(w: &Withholding) -> String {
    let mut out = String::new();
    if !w.in_force.is_empty() || !w.pending.is_empty() {
        let _ = writeln!(
            out,
            "\nadvisories  {} in force, {} pending (in force at {} trusted signers)",
            w.in_force.len(),
            w.pending.len(),
            w.advisory_threshold
        );
        let list = AdvisoryList {
            threshold: w.advisory_threshold,
            advisories: w.in_force.iter().chain(&w.pending).cloned().collect(),
            ..AdvisoryList::default()
        };
        for line in advisory::render(&list).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    let cooldown = status::render_cooldown(w.cooldown.as_ref());
    if !cooldown.is_empty() {
        out.push('\n');
        out.push_str(&cooldown);
    }
    out
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use open_registry_protocol::advisory::{AdvisoryGroup, AdvisoryView, Kind};
    use open_registry_protocol::status::{CooldownHeld, CooldownStatus};

    use super::*;

    fn group(name: &str, in_force: bool, signers: &[&str]) -> AdvisoryGroup {
        AdvisoryGroup {
            name: name.into(),
            range: "1.0.1".into(),
            in_force,
            signers: signers
                .iter()
                .map(|op| AdvisoryView {
                    id: "0011223344556677".into(),
                    operator: (*op).into(),
                    trusted: true,
                    this_node: false,
                    name: name.into(),
                    range: "1.0.1".into(),
                    kind: Kind::Compromised,
                    reason: "stolen token".into(),
                    url: None,
                    seq: 1,
                    at_ms: 1,
                    expires_at_ms: 2,
                    withdrawn: false,
                    signed: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn withholding_lists_advisories_and_the_cooldown() {
        assert_eq!(render_withholding(&Withholding::default()), "");
        let w = Withholding {
            advisory_threshold: 2,
            in_force: vec![group("left-pad", true, &["A", "C"])],
            pending: vec![group("is-odd", false, &["B"])],
            cooldown: Some(CooldownStatus {
                min_release_age_secs: 3600,
                held: vec![CooldownHeld {
                    name: "or-cd".into(),
                    version: "1.0.1".into(),
                    until_ms: 1_800_000_000_000,
                    from_first_seen: false,
                }],
                first_seen_used: 0,
            }),
        };
        let out = render_withholding(&w);
        for want in [
            "advisories  1 in force, 1 pending (in force at 2 trusted signers)\n",
            "  left-pad@1.0.1  IN FORCE  2 of 2 signatures\n",
            "  is-odd@1.0.1  pending  1 of 2 signatures\n",
            "    B  is-odd@1.0.1  compromised: stolen token  [0011223344556677]\n",
            "cooldown   min_release_age 1h: 1 version held\n",
            "  or-cd@1.0.1 until 2027-01-15T08:00:00Z\n",
        ] {
            assert!(out.contains(want), "{want:?} missing from\n{out}");
        }
    }
}
