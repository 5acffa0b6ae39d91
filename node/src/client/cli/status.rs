//! `status`, `peers` and `id`: what a running node and this data dir's operator are.

use std::time::Duration;

use anyhow::Context as _;
use open_registry_protocol::Status;
use open_registry_protocol::admin::Peers;
use open_registry_protocol::status::{COOLDOWN_KEPT, CooldownStatus, SyncStatus};
use open_registry_protocol::withhold::format_utc;

use super::{IdArgs, PeersArgs, StatusArgs, node_client, registry_url};
use crate::client::NodeClient;
use crate::config::units::{format_duration, format_size};
use crate::records::Identity;

/// How long `status` waits for a node.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn peers(a: PeersArgs) -> anyhow::Result<()> {
    let node = node_client(&a.node)?;
    let v: Peers = node.get_json("/-/open-registry/peers").await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!("{}", render_peers(&v));
    Ok(())
}

fn render_peers(v: &Peers) -> String {
    let mut out = format!("peer id        {}\n", v.peer_id);
    out.push_str(&format!("listening on   {}\n", v.listen.join(", ")));
    out.push_str(&format!(
        "kademlia       {} mode, routing table {} peers\n",
        if v.kad_server { "server" } else { "client" },
        v.routing_table_size
    ));
    if !v.reachability.is_empty() {
        out.push_str(&format!(
            "reachability   {}{}\n",
            v.reachability,
            if v.relay_offered {
                ", offering a relay"
            } else {
                ""
            }
        ));
    }
    if !v.relays.is_empty() {
        out.push_str(&format!("relayed via    {}\n", v.relays.join(", ")));
    }
    out.push_str(&format!(
        "providing      {} package keys and {} values, each re-announced every {:.1} h (at most {} DHT messages/s)\n",
        v.provided,
        v.published,
        v.announce_cycle_secs as f64 / 3600.0,
        v.announce_rate
    ));
    let lifetime = crate::net::PROVIDER_RECORD_TTL.as_secs();
    if v.announce_cycle_secs > lifetime / 2 {
        out.push_str(&format!(
            "warning        the cycle is over half the {} days the DHT keeps an entry: one missed round lets it lapse; raise announce_rate to at least {}\n",
            lifetime / 86_400,
            rate_for_cycle(v, lifetime / 2)
        ));
    }
    out.push_str(&format!("connected      {} peers\n", v.connected.len()));
    for c in &v.connected {
        let rtt = c
            .rtt_us
            .map(|us| format!("  rtt {:.1} ms", us as f64 / 1000.0))
            .unwrap_or_default();
        let how = match (c.relayed, c.dcutr_upgraded) {
            (true, _) => "  relayed",
            (false, Some(true)) => "  direct (hole punched)",
            _ => "",
        };
        out.push_str(&format!(
            "  {}  {}{rtt}{how}\n",
            c.peer_id,
            c.addrs.join(" ")
        ));
    }
    out
}

/// The whole-number rate at which the entries `v` announces fit a cycle of `secs`, from the
/// rate and cycle it reports (the cycle is inversely proportional to the rate).
fn rate_for_cycle(v: &Peers, secs: u64) -> u64 {
    (v.announce_rate * v.announce_cycle_secs).div_ceil(secs.max(1))
}

pub(super) fn id(a: IdArgs) -> anyhow::Result<()> {
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

pub(super) async fn status(a: StatusArgs) -> anyhow::Result<()> {
    let url = registry_url(a.registry.as_deref(), &a.dir.path());
    let node = NodeClient::new(&url, None)?;
    let resp = match node
        .get(
            "/-/open-registry/status",
            "application/json",
            STATUS_TIMEOUT,
        )
        .await
    {
        Ok(r) => r,
        Err(e) if e.status().is_some() => {
            anyhow::bail!("{url} answered {e} (is it an Open-Registry node?)")
        }
        Err(e) => return Err(e.into()),
    };
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
         sync       {}\n\
         {}{}",
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
        render_unsigned(s),
        render_cooldown(s.cooldown.as_ref()),
    )
}

/// The release cooldown and the versions it holds (nothing when it is off).
pub(super) fn render_cooldown(c: Option<&CooldownStatus>) -> String {
    let Some(c) = c else {
        return String::new();
    };
    let age = format_duration(Duration::from_secs(c.min_release_age_secs));
    let mut out = format!(
        "cooldown   min_release_age {age}: {} held{}\n",
        match c.held.len() {
            0 => "no versions".to_owned(),
            1 => "1 version".to_owned(),
            n if n >= COOLDOWN_KEPT => format!("{n}+ versions"),
            n => format!("{n} versions"),
        },
        match c.first_seen_used {
            0 => String::new(),
            n => format!(
                "; {n} versions without a publish time in the packument, aged from when this node first saw them"
            ),
        }
    );
    for h in &c.held {
        out.push_str(&format!(
            "  {}@{} until {}{}\n",
            h.name,
            h.version,
            format_utc(h.until_ms.div_ceil(1000) * 1000),
            if h.from_first_seen {
                " (no publish time: aged from first sight)"
            } else {
                ""
            }
        ));
    }
    out
}

/// The packuments served without a signed record, and why (nothing when there are none).
fn render_unsigned(s: &Status) -> String {
    let mut out = String::new();
    if let Some(first) = s.unsigned.first() {
        out.push_str(&format!(
            "unsigned   {} packuments served without a record; latest {}: {}\n",
            s.counters.get("records_unsigned").copied().unwrap_or(0),
            first.name,
            first.reason
        ));
    }
    out
}

fn render_sync(s: Option<&SyncStatus>) -> String {
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
    use open_registry_protocol::status::CooldownHeld;

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
        assert!(!out.contains("unsigned"), "{out}");
        s.unsigned.push(open_registry_protocol::status::Unsigned {
            name: "huge".into(),
            reason: "too many versions".into(),
            at_ms: 1,
        });
        s.counters.insert("records_unsigned".into(), 2);
        let out = render_status("http://127.0.0.1:1", &s);
        assert!(
            out.contains(
                "unsigned   2 packuments served without a record; latest huge: too many versions"
            ),
            "{out}"
        );
    }

    #[test]
    fn cooldown_renders() {
        let mut s = Status::default();
        let out = render_status("http://127.0.0.1:1", &s);
        assert!(!out.contains("cooldown"), "{out}");
        s.cooldown = Some(CooldownStatus {
            min_release_age_secs: 3600,
            held: vec![
                CooldownHeld {
                    name: "@s/p".into(),
                    version: "1.0.1".into(),
                    until_ms: 1_796_292_000_000,
                    from_first_seen: false,
                },
                CooldownHeld {
                    name: "q".into(),
                    version: "2.0.0".into(),
                    until_ms: 1_796_291_999_001,
                    from_first_seen: true,
                },
            ],
            first_seen_used: 1,
        });
        let out = render_status("http://127.0.0.1:1", &s);
        assert!(
            out.contains(
                "cooldown   min_release_age 1h: 2 versions held; 1 versions without a publish time"
            ),
            "{out}"
        );
        assert!(
            out.contains("  @s/p@1.0.1 until 2026-12-03T10:00:00Z\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "  q@2.0.0 until 2026-12-03T10:00:00Z (no publish time: aged from first sight)\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn peers_render() {
        let v = Peers {
            peer_id: "12D3Koo".into(),
            kad_server: true,
            connected: vec![open_registry_protocol::admin::Connected {
                peer_id: "12D3Other".into(),
                addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
                rtt_us: Some(91_250),
                ..Default::default()
            }],
            reachability: "public".into(),
            relay_offered: true,
            provided: 3,
            published: 2,
            announce_rate: 8,
            announce_cycle_secs: 500_000,
            ..Default::default()
        };
        let out = render_peers(&v);
        assert!(
            out.contains(
                "providing      3 package keys and 2 values, each re-announced every 138.9 h (at most 8 DHT messages/s)\n"
            ),
            "{out}"
        );
        assert!(!out.contains("warning"), "{out}");
        let long = render_peers(&Peers {
            announce_cycle_secs: 1_000_000,
            ..v.clone()
        });
        assert!(
            long.contains(
                "warning        the cycle is over half the 14 days the DHT keeps an entry: one missed round lets it lapse; raise announce_rate to at least 14\n"
            ),
            "{long}"
        );
        assert!(out.contains("server mode"), "{out}");
        assert!(
            out.contains("reachability   public, offering a relay\n"),
            "{out}"
        );
        assert!(
            out.contains("  12D3Other  /ip4/127.0.0.1/tcp/1  rtt 91.2 ms\n"),
            "{out}"
        );
    }
}
