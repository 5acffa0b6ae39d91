//! `verify`: packages or a lockfile, checked through a gateway against pinned registry keys,
//! trusted operators and hashes computed here ([`crate::client::verify`] does the checking).
//!
//! Out of the box (no data dir, any registry URL) it checks integrity, and npm signatures when
//! keys are pinned; operator records are checked when operators are trusted, and
//! `--require-operators` makes trusting none an error.

use anyhow::{Context as _, bail};
use open_registry_protocol::{PeerId, Policy};

use super::{Failed, VerifyArgs, registry_url};
use crate::client::verify;
use crate::config::{CONFIG_FILE, Settings};
use crate::fetch::keys::KEYS_FILE;
use crate::records::Identity;

pub(super) async fn verify(a: VerifyArgs) -> anyhow::Result<()> {
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
    let policy = operator_policy(trusted, threshold, a.require_operators).with_context(|| {
        format!(
            "(trust can also be set in {})",
            dir.join(CONFIG_FILE).display()
        )
    })?;
    let keys_path = a.keys.clone().unwrap_or_else(|| dir.join(KEYS_FILE));
    let keys = verify::load_keys(&keys_path)?;
    if keys.is_none() && a.keys.is_some() {
        bail!("{} does not exist", keys_path.display());
    }
    let registry = registry_url(a.registry.as_deref(), &dir);
    let v = verify::Verify::new(verify::Options {
        registry,
        keys,
        policy,
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
    if v.checks_operators() {
        v.save_seen()?;
    }
    let ok = reports.iter().all(|r| r.ok);
    if a.json {
        let doc = serde_json::json!({"ok": ok, "packages": reports});
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", verify::render_table(&reports));
    }
    if ok { Ok(()) } else { Err(Failed.into()) }
}

/// The operator policy `verify` checks records against: `None` (operator records not checked)
/// when no operator is trusted, unless `require` makes that an error.
fn operator_policy(
    trusted: Vec<PeerId>,
    threshold: usize,
    require: bool,
) -> anyhow::Result<Option<Policy>> {
    if trusted.is_empty() {
        if require {
            bail!("--require-operators: no trusted operators; pass --trust PEER_ID (repeatable)");
        }
        return Ok(None);
    }
    if threshold == 0 || threshold > trusted.len() {
        bail!(
            "--trust-threshold {threshold} must be from 1 to the {} trusted operators",
            trusted.len()
        );
    }
    Ok(Some(Policy::new(trusted, threshold)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_are_optional_unless_required() {
        assert!(operator_policy(vec![], 1, false).unwrap().is_none());
        let e = operator_policy(vec![], 1, true).unwrap_err().to_string();
        assert!(e.contains("no trusted operators"), "{e}");
        let a = Identity::from_seed([1; 32]).peer_id();
        let p = operator_policy(vec![a], 1, true).unwrap().unwrap();
        assert!(p.trusts(&a));
        assert!(operator_policy(vec![a], 2, false).is_err());
    }
}
