//! `pin add | ls | rm`: pins on a running node, through its admin API.

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use open_registry_protocol::PackageName;
use open_registry_protocol::admin::{PinAdded, PinList, Popular, Unpinned};

use super::{Failed, PinAddArgs, PinCommand, node_client};
use crate::client::pinning::{Expander, Target};
use crate::client::{NodeClient, verify};
use crate::config::units::format_size;
use crate::config::{CONFIG_FILE, Settings};

/// How many pins are asked for at once.
const CONCURRENCY: usize = 4;

pub(super) async fn pin(c: PinCommand) -> anyhow::Result<()> {
    match c {
        PinCommand::Add(a) => add(a).await,
        PinCommand::Ls(a) => {
            let node = node_client(&a.node)?;
            let v: PinList = node.get_json("/-/open-registry/pins").await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", render_pins(&v));
            }
            Ok(())
        }
        PinCommand::Rm(a) => {
            let node = node_client(&a.node)?;
            for n in &a.names {
                let name = PackageName::parse(n)?;
                let u: Unpinned = node
                    .admin("unpin", &serde_json::json!({"name": name.as_str()}))
                    .await?;
                if u.removed {
                    println!("unpinned {name}");
                } else {
                    println!("{name} was not pinned");
                }
            }
            Ok(())
        }
    }
}

async fn pin_one(node: &NodeClient, t: &Target) -> anyhow::Result<PinAdded> {
    Ok(node
        .admin(
            "pin",
            &serde_json::json!({"name": t.0.as_str(), "version": t.1}),
        )
        .await?)
}

async fn add(a: PinAddArgs) -> anyhow::Result<()> {
    let dir = a.node.dir.path();
    let latest = Settings::load(&dir.join(CONFIG_FILE))?
        .pin_latest
        .unwrap_or(3);
    let node = node_client(&a.node)?;
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
        let v: Popular = node
            .get_json(&format!("/-/open-registry/popular?limit={n}"))
            .await?;
        let names: Vec<String> = v.packages.into_iter().map(|p| p.name).collect();
        if names.is_empty() {
            bail!("the network has reported no requests yet; nothing to pin with --top");
        }
        println!("most requested: {}", names.join(", "));
        specs.extend(names);
    }
    let (mut targets, mut failures) = Expander::new(&node)
        .expand(&specs, latest, a.with_deps)
        .await;
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
    let results: Vec<(Target, anyhow::Result<PinAdded>)> =
        futures::stream::iter(targets.iter().cloned())
            .map(|t| {
                let node = &node;
                async move {
                    let r = pin_one(node, &t).await;
                    (t, r)
                }
            })
            .buffer_unordered(CONCURRENCY)
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
                bytes += v.size;
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

fn render_pins(v: &PinList) -> String {
    let rows: Vec<[String; 4]> = v
        .pins
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.versions.keys().cloned().collect::<Vec<_>>().join(" "),
                format_size(p.size),
                p.providers.map_or("-".to_owned(), |n| n.to_string()),
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
    let line = |c: [&str; 4]| {
        format!(
            "{:<a$}  {:<b$}  {:>c$}  {}\n",
            c[0],
            c[1],
            c[2],
            c[3],
            a = w[0],
            b = w[1],
            c = w[2]
        )
    };
    let mut out = line(head);
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3]]));
    }
    out.push_str(&format!("{} packages pinned\n", rows.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use open_registry_protocol::admin::Pinned;

    #[test]
    fn pins_render_as_a_table() {
        let v = PinList {
            pins: vec![Pinned {
                name: "left-pad".into(),
                versions: [("1.3.0".to_owned(), "left-pad-1.3.0.tgz".to_owned())].into(),
                size: 332,
                since: 0,
                providers: Some(2),
            }],
        };
        let out = render_pins(&v);
        assert!(
            out.starts_with("PACKAGE   VERSIONS   SIZE  PROVIDERS\n"),
            "{out}"
        );
        assert!(out.contains("left-pad  1.3.0     332 B  2\n"), "{out}");
        assert!(out.ends_with("1 packages pinned\n"), "{out}");
    }
}
