//! npm's own signature verifier, driven directly.
//!
//! `npm audit signatures` first contacts Sigstore's TUF service, which these machines cannot
//! reach, so the tests run the part of npm that does the checking: the pacote bundled inside the
//! installed npm, with `verifySignatures: true` and the registry keys passed as the
//! `//<host>/<path>:_keys` option, exactly as `npm audit signatures` passes them. pacote then
//! fetches each full packument from the registry and checks every `dist.signatures` entry
//! against those keys (`<name>@<version>:<integrity>`, ECDSA P-256, SHA-256).
//!
//! pacote accepts a version with *no* signatures; [`pacote_verify`] therefore also demands at
//! least one signature per package, while [`pacote_check`] reports what pacote said.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{npm, npmsig, process};

/// The script: reads `{pacote, registry, specs, keys, cache}` from the JSON file named by its
/// first argument and prints one outcome per spec as a JSON array.
const SCRIPT: &str = r#"
const fs = require('fs');
const input = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const pacote = require(input.pacote);
const parsed = new URL(input.registry);
const regKey = `//${parsed.host}${parsed.pathname}`;
(async () => {
  const out = [];
  for (const spec of input.specs) {
    try {
      const mani = await pacote.manifest(spec, {
        registry: input.registry,
        cache: input.cache,
        preferOnline: true,
        fullMetadata: true,
        verifySignatures: true,
        [`${regKey}:_keys`]: input.keys,
      });
      out.push({
        spec, ok: true, id: mani._id, integrity: mani._integrity || null,
        resolved: mani._resolved || null,
        signatures: (mani._signatures || []).length,
      });
    } catch (e) {
      out.push({ spec, ok: false, code: e.code || null, message: String(e.message || e) });
    }
  }
  process.stdout.write(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(2); });
"#;

/// What pacote said about one spec.
#[derive(Debug, Clone, Deserialize)]
pub struct PacoteOutcome {
    /// The spec as given (`name@range`).
    pub spec: String,
    /// True when pacote resolved the manifest and accepted every signature it carried.
    pub ok: bool,
    /// `name@version` that the spec resolved to.
    #[serde(default)]
    pub id: Option<String>,
    /// The integrity pacote read from `dist`.
    #[serde(default)]
    pub integrity: Option<String>,
    /// `dist.tarball` as served.
    #[serde(default)]
    pub resolved: Option<String>,
    /// How many `dist.signatures` entries pacote checked.
    #[serde(default)]
    pub signatures: usize,
    /// npm's error code on failure (`EINTEGRITYSIGNATURE`, `EMISSINGSIGNATUREKEY`, …).
    #[serde(default)]
    pub code: Option<String>,
    /// npm's error message on failure.
    #[serde(default)]
    pub message: Option<String>,
}

/// Runs pacote on every spec against `registry`, trusting the keys of `keys_document` (a
/// `/-/npm/v1/keys` document). Errors only when pacote itself could not be run.
pub fn pacote_check(
    registry: &str,
    specs: &[&str],
    keys_document: &Value,
) -> Result<Vec<PacoteOutcome>> {
    let pacote = pacote_dir()?;
    let dir = tempfile::Builder::new().prefix("pacote-").tempdir()?;
    let mut registry = registry.to_owned();
    if !registry.ends_with('/') {
        registry.push('/');
    }
    let input = json!({
        "pacote": pacote,
        "registry": registry,
        "specs": specs,
        "keys": npmsig::pacote_keys(keys_document)?,
        "cache": dir.path().join("cache"),
    });
    let script = dir.path().join("verify.js");
    let input_file = dir.path().join("input.json");
    fs::write(&script, SCRIPT)?;
    fs::write(&input_file, serde_json::to_vec(&input)?)?;
    let out = process::run(
        Command::new("node")
            .arg(&script)
            .arg(&input_file)
            .current_dir(dir.path()),
        Duration::from_secs(300),
    )?
    .ok()?;
    serde_json::from_str(&out.stdout)
        .with_context(|| format!("parsing the verifier's output: {}", out.describe()))
}

/// Like [`pacote_check`], but an error unless every spec resolved, carried at least one
/// registry signature, and every signature verified.
pub fn pacote_verify(
    registry: &str,
    specs: &[&str],
    keys_document: &Value,
) -> Result<Vec<PacoteOutcome>> {
    let outcomes = pacote_check(registry, specs, keys_document)?;
    let failures: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.ok || o.signatures == 0)
        .map(|o| match (&o.code, &o.message) {
            _ if o.ok => format!("{}: no registry signatures", o.spec),
            (code, Some(msg)) => format!("{}: {} {msg}", o.spec, code.as_deref().unwrap_or("")),
            (code, None) => format!("{}: failed {code:?}", o.spec),
        })
        .collect();
    if !failures.is_empty() {
        bail!("pacote rejected:\n{}", failures.join("\n"));
    }
    if outcomes.len() != specs.len() {
        bail!(
            "pacote answered {} of {} specs",
            outcomes.len(),
            specs.len()
        );
    }
    Ok(outcomes)
}

/// The directory of the pacote bundled with the npm on `PATH`.
pub fn pacote_dir() -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(root) = npm::global_root() {
        candidates.push(root.join("npm/node_modules/pacote"));
    }
    // `npm` on PATH is usually a symlink to <npm>/bin/npm-cli.js.
    if let Some(paths) = env::var_os("PATH") {
        for dir in env::split_paths(&paths) {
            let bin = dir.join("npm");
            if let Ok(real) = fs::canonicalize(&bin) {
                if let Some(npm_dir) = real.parent().and_then(Path::parent) {
                    candidates.push(npm_dir.join("node_modules/pacote"));
                }
                break;
            }
        }
    }
    candidates
        .iter()
        .find(|c| c.join("package.json").exists())
        .cloned()
        .ok_or_else(|| anyhow!("npm's bundled pacote not found; looked in {candidates:?}"))
}
