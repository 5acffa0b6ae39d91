//! `init` (a commented config.toml, the operator key, the pinned registry keys) and `start`
//! (run a node until Ctrl-C or SIGTERM, then shut it down in order).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::{InitArgs, StartArgs};
use crate::config::{self, CONFIG_FILE, Config, Settings};
use crate::fetch::keys::{KEYS_FILE, pin_keys};
use crate::fetch::upstream;
use crate::node;
use crate::records::{Identity, KEY_FILE};

pub(super) async fn init(a: InitArgs) -> anyhow::Result<()> {
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
        dir.join(KEY_FILE).display()
    );
    let upstream = upstream::Client::new(&c, Default::default())?;
    match pin_keys(&dir, upstream.as_ref().map(|u| u as &dyn upstream::Source)).await {
        Ok(Some(_)) => println!("registry keys: pinned in {}", dir.join(KEYS_FILE).display()),
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

pub(super) async fn start(a: StartArgs) -> anyhow::Result<()> {
    let dir = a.dir.path();
    let config = load_config(&dir, a.config, a.settings)?;
    let handle = node::start(config).await?;
    print!("{}", banner(&handle));
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        _ = handle.cancelled() => tracing::error!("the gateway stopped; shutting down"),
    }
    handle.shutdown().await
}

/// What `start` prints once the node serves: where the gateway and the peer-to-peer network
/// listen, and who can reach the latter.
fn banner(handle: &node::NodeHandle) -> String {
    let mut out = format!("gateway:      {}/\n", handle.url);
    match &handle.p2p {
        Some(p) => {
            let addrs: Vec<String> = p.addrs.iter().map(ToString::to_string).collect();
            out.push_str(&format!("peer-to-peer: {}\n", addrs.join(", ")));
            out.push_str(&format!("              {}\n", p.reach));
            out.push_str(&format!("              Kademlia {}\n", p.kad));
        }
        None => out.push_str("peer-to-peer: off (no_p2p)\n"),
    }
    out
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
