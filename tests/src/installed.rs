//! "Install X with client C into a fresh project and say which version it got": the one step
//! the tests of withheld versions (the release cooldown, advisories in force) repeat with
//! every real client.
//!
//! [`Client`] is one of npm, pnpm, yarn 1, yarn 4 and bun, run through [`Npm`] (its isolated
//! home and caches). [`fresh_add`] writes an empty project, empties every cache (so the client
//! asks the registry again instead of remembering an earlier answer) and runs the client's
//! "add a dependency" command (`npm install --prefer-online`, `pnpm add`, `yarn add`,
//! `bun add`); [`installed`] reads back the version that landed in `node_modules`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{Npm, Output, fixtures};

/// A real npm client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// npm (on `PATH`).
    Npm,
    /// pnpm, pinned in tests/e2e.
    Pnpm,
    /// yarn 1 (classic), pinned in tests/e2e.
    Yarn1,
    /// yarn 4 (berry), pinned in tests/e2e, with the `node-modules` linker.
    Yarn4,
    /// bun, pinned in tests/e2e.
    Bun,
}

/// Every client, npm first.
pub const ALL: [Client; 5] = [
    Client::Npm,
    Client::Pnpm,
    Client::Yarn1,
    Client::Yarn4,
    Client::Bun,
];

impl Client {
    /// Its name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Client::Npm => "npm",
            Client::Pnpm => "pnpm",
            Client::Yarn1 => "yarn 1",
            Client::Yarn4 => "yarn 4",
            Client::Bun => "bun",
        }
    }

    /// The command it is run with, for messages (`npm install`, `pnpm add`, …).
    pub fn add_command(self) -> &'static str {
        match self {
            Client::Npm => "npm install",
            Client::Pnpm => "pnpm add",
            Client::Yarn1 => "yarn 1 add",
            Client::Yarn4 => "yarn 4 add",
            Client::Bun => "bun add",
        }
    }

    /// A directory name for its projects.
    fn dir(self) -> &'static str {
        match self {
            Client::Npm => "npm",
            Client::Pnpm => "pnpm",
            Client::Yarn1 => "yarn1",
            Client::Yarn4 => "yarn4",
            Client::Bun => "bun",
        }
    }

    /// Adds `spec` (`name`, `name@version`) to the project in `dir`; the output, whether it
    /// succeeded or not.
    pub fn add(self, npm: &Npm, dir: &Path, spec: &str) -> Result<Output> {
        match self {
            Client::Npm => npm.run(dir, &["install", "--prefer-online", spec]),
            Client::Pnpm => npm.pnpm(dir, &["add", spec, "--reporter=append-only"]),
            Client::Yarn1 => npm.yarn1(dir, &["add", spec]),
            Client::Yarn4 => npm.yarn4(dir, &["add", spec]),
            Client::Bun => npm.bun(dir, &["add", spec]),
        }
    }
}

/// Adds `spec` with `client` to a fresh project `work/LABEL-CLIENT`, every cache emptied
/// first; the project and the output, whether it succeeded or not.
pub fn fresh_add(
    npm: &Npm,
    client: Client,
    work: &Path,
    label: &str,
    spec: &str,
) -> Result<(PathBuf, Output)> {
    let project = work.join(format!("{label}-{}", client.dir()));
    fixtures::write_project(&project, &[])?;
    npm.clear_cache()?;
    let out = client.add(npm, &project, spec)?;
    Ok((project, out))
}

/// [`fresh_add`] that must succeed: the version of `name` it installed.
pub fn fresh_version(
    npm: &Npm,
    client: Client,
    work: &Path,
    label: &str,
    name: &str,
) -> Result<(String, Output)> {
    let (project, out) = fresh_add(npm, client, work, label, name)?;
    let out = out
        .ok()
        .with_context(|| format!("{} {name}", client.add_command()))?;
    let version = installed(&project, name).with_context(|| out.describe())?;
    Ok((version, out))
}

/// The version of `name` installed in `project` (its `node_modules/NAME/package.json`).
pub fn installed(project: &Path, name: &str) -> Result<String> {
    let path = project.join("node_modules").join(name).join("package.json");
    let v: Value = serde_json::from_slice(
        &fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    v["version"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{} has no version", path.display()))
}

/// The lines of a client's output (stdout, then stderr) that contain any of `needles`,
/// trimmed: what a test prints of a failure.
pub fn lines_with<'o>(out: &'o Output, needles: &[&str]) -> Vec<&'o str> {
    out.stdout
        .lines()
        .chain(out.stderr.lines())
        .map(str::trim)
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .collect()
}
