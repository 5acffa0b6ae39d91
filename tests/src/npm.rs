//! The real `npm` and `pnpm` clients, run against one registry in an isolated environment.
//!
//! Isolation is the point: every [`Npm`] has its own temporary home with an empty user and
//! global config, an empty cache and its own pnpm store, and inherits no `npm_config_*`
//! variables, so what a test observes depends only on the registry it names — never on the
//! machine's `~/.npmrc`, a warm cache, or a registry configured elsewhere.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::{
    process::{self, Output},
    tools,
};

/// A configured npm client: one registry, one private home and cache.
#[derive(Debug)]
pub struct Npm {
    registry: String,
    home: TempDir,
    env: Vec<(OsString, OsString)>,
    args: Vec<String>,
    timeout: Duration,
}

impl Npm {
    /// A client for `registry` (`http://127.0.0.1:PORT/` style; a trailing slash is added).
    pub fn new(registry: &str) -> Result<Npm> {
        let home = tempfile::Builder::new()
            .prefix("npm-home-")
            .tempdir()
            .context("creating npm home")?;
        fs::write(home.path().join(".npmrc"), "")?;
        fs::write(home.path().join("global-npmrc"), "")?;
        let mut registry = registry.to_owned();
        if !registry.ends_with('/') {
            registry.push('/');
        }
        Ok(Npm {
            registry,
            home,
            env: Vec::new(),
            args: Vec::new(),
            timeout: Duration::from_secs(300),
        })
    }

    /// The registry URL, with a trailing slash.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The private home directory (holds the user config and caches).
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// npm's cache directory (`--cache`).
    pub fn cache_dir(&self) -> PathBuf {
        self.home.path().join("npm-cache")
    }

    /// pnpm's content-addressed store (`--store-dir`).
    pub fn pnpm_store(&self) -> PathBuf {
        self.home.path().join("pnpm-store")
    }

    /// Empties npm's and pnpm's caches, so the next install fetches everything again.
    pub fn clear_cache(&self) -> Result<()> {
        for dir in [
            self.cache_dir(),
            self.pnpm_store(),
            self.home.path().join("xdg-cache"),
        ] {
            if dir.exists() {
                fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            }
        }
        Ok(())
    }

    /// Sets an environment variable for every command (e.g. `npm_config_fetch_retries`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Appends an argument to every npm command (e.g. `--fetch-timeout=5000`).
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// The bound after which a command is killed (default 300 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A command for `program` in `dir` with the isolated environment applied.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>, dir: &Path) -> Command {
        let home = self.home.path();
        let mut cmd = Command::new(program);
        cmd.current_dir(dir);
        for (k, _) in std::env::vars_os() {
            let lower = k.to_string_lossy().to_ascii_lowercase();
            if lower.starts_with("npm_config_") || lower.starts_with("pnpm_") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join("xdg-config"))
            .env("XDG_CACHE_HOME", home.join("xdg-cache"))
            .env("XDG_DATA_HOME", home.join("xdg-data"))
            .env("XDG_STATE_HOME", home.join("xdg-state"))
            .env("npm_config_userconfig", home.join(".npmrc"))
            .env("npm_config_globalconfig", home.join("global-npmrc"))
            .env("npm_config_cache", self.cache_dir())
            .env("npm_config_registry", &self.registry)
            .env("npm_config_audit", "false")
            .env("npm_config_fund", "false")
            .env("npm_config_update_notifier", "false")
            .env("npm_config_progress", "false")
            .env("NO_UPDATE_NOTIFIER", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `npm ARGS --registry R --cache C …` in `dir`; the result may be a failure.
    pub fn run(&self, dir: &Path, args: &[&str]) -> Result<Output> {
        let mut cmd = self.command("npm", dir);
        cmd.args(args)
            .arg(format!("--registry={}", self.registry))
            .arg(format!("--cache={}", self.cache_dir().display()))
            .args(["--no-audit", "--no-fund", "--update-notifier=false"])
            .args(&self.args);
        process::run(&mut cmd, self.timeout)
    }

    /// `npm install --prefer-online`; an error unless it succeeds.
    pub fn install(&self, dir: &Path) -> Result<Output> {
        self.run(dir, &["install", "--prefer-online"])?.ok()
    }

    /// `npm ci`; an error unless it succeeds.
    pub fn ci(&self, dir: &Path) -> Result<Output> {
        self.run(dir, &["ci"])?.ok()
    }

    /// `npm publish [--tag TAG]` of the package in `dir`; the caller provides credentials
    /// (a project `.npmrc`). An error unless it succeeds.
    pub fn publish(&self, dir: &Path, tag: Option<&str>) -> Result<Output> {
        let mut args = vec!["publish"];
        if let Some(tag) = tag {
            args.extend(["--tag", tag]);
        }
        self.run(dir, &args)?.ok()
    }

    /// Runs pinned pnpm (from tests/e2e) with `ARGS --registry R --store-dir S` in `dir`.
    pub fn pnpm(&self, dir: &Path, args: &[&str]) -> Result<Output> {
        let tools = tools::e2e_tools()?;
        let mut cmd = self.command(&tools.pnpm, dir);
        cmd.args(args)
            .arg(format!("--registry={}", self.registry))
            .arg(format!("--store-dir={}", self.pnpm_store().display()))
            .arg("--config.update-notifier=false");
        process::run(&mut cmd, self.timeout)
    }

    /// `pnpm install` (never frozen: the project may have no pnpm lockfile); an error unless
    /// it succeeds.
    pub fn pnpm_install(&self, dir: &Path) -> Result<Output> {
        self.pnpm(
            dir,
            &["install", "--no-frozen-lockfile", "--reporter=append-only"],
        )?
        .ok()
    }

    /// Runs `node -e SCRIPT` in `dir` (to `require` what was installed); an error unless it
    /// succeeds.
    pub fn node(&self, dir: &Path, script: &str) -> Result<Output> {
        let mut cmd = self.command("node", dir);
        cmd.args(["-e", script]);
        process::run(&mut cmd, self.timeout)?.ok()
    }
}

/// `npm root -g`: where the globally installed npm (and its bundled pacote) lives.
pub fn global_root() -> Result<PathBuf> {
    let out = process::run(
        Command::new("npm").args(["root", "-g"]),
        Duration::from_secs(60),
    )?
    .ok()?;
    Ok(PathBuf::from(out.stdout.trim()))
}
