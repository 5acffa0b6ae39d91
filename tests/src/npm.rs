//! The real `npm`, `pnpm`, yarn 1, yarn 4 and bun clients, run against one registry in an
//! isolated environment.
//!
//! Isolation is the point: every [`Npm`] has its own temporary home with an empty user and
//! global config (`.npmrc`, `.yarnrc`, no `.yarnrc.yml` or `.bunfig.toml`), an empty cache per
//! client and its own pnpm store, and inherits no `npm_config_*`, `pnpm_*`, `yarn_*`, `bun_*`
//! or `corepack_*` variables, so what a test observes depends only on the registry it names —
//! never on the machine's config files, a warm cache, or a registry configured elsewhere.
//!
//! yarn 4 and bun take their registry from a file in the project, which [`Npm::yarn4`] and
//! [`Npm::bun`] (over)write before every run: `.yarnrc.yml` and `bunfig.toml`. Every client is
//! told not to check for updates of itself and not to send telemetry.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
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
        // yarn 1 reads `~/.yarnrc`; without this it asks the internet for its latest version.
        fs::write(
            home.path().join(".yarnrc"),
            "disable-self-update-check true\n",
        )?;
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

    /// yarn 1's cache (`--cache-folder`).
    pub fn yarn1_cache(&self) -> PathBuf {
        self.home.path().join("yarn1-cache")
    }

    /// yarn 4's cache (`cacheFolder` in the project's `.yarnrc.yml`; the global cache and its
    /// mirror are off, and its `globalFolder` is `global/` in here).
    pub fn yarn4_cache(&self) -> PathBuf {
        self.home.path().join("yarn4-cache")
    }

    /// bun's cache (`[install.cache] dir` in the project's `bunfig.toml`).
    pub fn bun_cache(&self) -> PathBuf {
        self.home.path().join("bun-cache")
    }

    /// Empties every client's cache (npm, pnpm, yarn 1, yarn 4, bun), so the next install
    /// fetches everything again.
    pub fn clear_cache(&self) -> Result<()> {
        for dir in [
            self.cache_dir(),
            self.pnpm_store(),
            self.yarn1_cache(),
            self.yarn4_cache(),
            self.bun_cache(),
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
            if ["npm_config_", "pnpm_", "yarn_", "bun_", "corepack_"]
                .iter()
                .any(|p| lower.starts_with(p))
            {
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
            .env("NO_UPDATE_NOTIFIER", "1")
            // No telemetry or crash reports from yarn 4 or bun, and no corepack downloads.
            .env("DO_NOT_TRACK", "1")
            .env("YARN_ENABLE_TELEMETRY", "0")
            .env("COREPACK_ENABLE_DOWNLOAD_PROMPT", "0")
            .env("COREPACK_ENABLE_AUTO_PIN", "0")
            .env("COREPACK_ENABLE_STRICT", "0");
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

    /// Runs pinned yarn 1 (`node tests/e2e/node_modules/yarn/bin/yarn.js`) with
    /// `ARGS --registry R --cache-folder C --non-interactive` in `dir`.
    pub fn yarn1(&self, dir: &Path, args: &[&str]) -> Result<Output> {
        let tools = tools::e2e_tools()?;
        let yarn = existing("yarn 1 (npm package `yarn`)", &tools.yarn1)?;
        let mut cmd = self.command("node", dir);
        cmd.arg(yarn)
            .args(args)
            .arg(format!("--registry={}", self.registry))
            .arg(format!("--cache-folder={}", self.yarn1_cache().display()))
            .args(["--non-interactive", "--no-progress"])
            // A `yarnPath` in some `.yarnrc` must not swap in another yarn.
            .env("YARN_IGNORE_PATH", "1")
            .env("YARN_DISABLE_SELF_UPDATE_CHECK", "true");
        process::run(&mut cmd, self.timeout)
    }

    /// `yarn install` with yarn 1: `--frozen-lockfile` when `frozen` (the lockfile must exist
    /// and already say everything), otherwise it may write `yarn.lock`. An error unless it
    /// succeeds.
    pub fn yarn1_install(&self, dir: &Path, frozen: bool) -> Result<Output> {
        let args: &[&str] = if frozen {
            &["install", "--frozen-lockfile"]
        } else {
            &["install"]
        };
        self.yarn1(dir, args)?.ok()
    }

    /// Runs pinned yarn 4 (`node tests/e2e/node_modules/@yarnpkg/cli-dist/bin/yarn.js`) with
    /// `ARGS` in `dir`, after writing `dir/.yarnrc.yml` (this registry, the `node-modules`
    /// linker, a private cache, no telemetry, and no minimal age gate: yarn 4 quarantines
    /// versions published less than a day ago by default, and test packages are minutes old)
    /// and an empty `dir/yarn.lock` when there is none (it marks `dir` as the project root).
    pub fn yarn4(&self, dir: &Path, args: &[&str]) -> Result<Output> {
        let tools = tools::e2e_tools()?;
        let yarn = existing("yarn 4 (npm package `@yarnpkg/cli-dist`)", &tools.yarn4)?;
        let registry = self.registry.trim_end_matches('/');
        let host = registry
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split([':', '/']).next())
            .unwrap_or("127.0.0.1");
        let rc = format!(
            "npmRegistryServer: {registry:?}\n\
             unsafeHttpWhitelist:\n  - {host:?}\n\
             nodeLinker: node-modules\n\
             enableGlobalCache: false\n\
             cacheFolder: {:?}\n\
             enableMirror: false\n\
             globalFolder: {:?}\n\
             enableTelemetry: false\n\
             enableImmutableInstalls: false\n\
             enableHardenedMode: false\n\
             enableProgressBars: false\n\
             npmMinimalAgeGate: 0\n",
            self.yarn4_cache().display().to_string(),
            self.yarn4_cache().join("global").display().to_string()
        );
        fs::write(dir.join(".yarnrc.yml"), rc).context("writing .yarnrc.yml")?;
        if !dir.join("yarn.lock").exists() {
            fs::write(dir.join("yarn.lock"), "")?;
        }
        let mut cmd = self.command("node", dir);
        cmd.arg(yarn)
            .args(args)
            .env("YARN_IGNORE_PATH", "1")
            .env("YARN_ENABLE_GLOBAL_CACHE", "0");
        process::run(&mut cmd, self.timeout)
    }

    /// `yarn install` with yarn 4: `--immutable` when `frozen` (the lockfile must not change);
    /// an error unless it succeeds.
    pub fn yarn4_install(&self, dir: &Path, frozen: bool) -> Result<Output> {
        let args: &[&str] = if frozen {
            &["install", "--immutable"]
        } else {
            &["install"]
        };
        self.yarn4(dir, args)?.ok()
    }

    /// Runs pinned bun (its native executable from tests/e2e, see [`tools::bun_binary`]) with
    /// `ARGS` in `dir`, after writing `dir/bunfig.toml` (this registry, a private cache).
    pub fn bun(&self, dir: &Path, args: &[&str]) -> Result<Output> {
        let tools = tools::e2e_tools()?;
        let Some(bun) = tools.bun else {
            bail!(
                "bun is missing: neither tests/e2e/node_modules/bun/bin/bun.exe (linked by the \
                 `bun` package's postinstall) nor a `@oven/bun-{}-*` platform package's \
                 bin/bun is installed; run `(cd tests/e2e && npm ci)`",
                std::env::consts::OS
            );
        };
        let toml = format!(
            "[install]\nregistry = {:?}\n\n[install.cache]\ndir = {:?}\n",
            self.registry,
            self.bun_cache().display().to_string()
        );
        fs::write(dir.join("bunfig.toml"), toml).context("writing bunfig.toml")?;
        let mut cmd = self.command(&bun, dir);
        cmd.args(args)
            .env("BUN_CONFIG_REGISTRY", &self.registry)
            .env("BUN_INSTALL_CACHE_DIR", self.bun_cache())
            .env("BUN_INSTALL", self.home.path().join("bun-install"));
        process::run(&mut cmd, self.timeout)
    }

    /// `bun install`: `--frozen-lockfile` when `frozen`; an error unless it succeeds.
    pub fn bun_install(&self, dir: &Path, frozen: bool) -> Result<Output> {
        let args: &[&str] = if frozen {
            &["install", "--frozen-lockfile"]
        } else {
            &["install"]
        };
        self.bun(dir, args)?.ok()
    }

    /// Runs `node -e SCRIPT` in `dir` (to `require` what was installed); an error unless it
    /// succeeds.
    pub fn node(&self, dir: &Path, script: &str) -> Result<Output> {
        let mut cmd = self.command("node", dir);
        cmd.args(["-e", script]);
        process::run(&mut cmd, self.timeout)?.ok()
    }
}

/// `path` when it exists, else an error naming the missing client.
fn existing<'p>(client: &str, path: &'p Path) -> Result<&'p Path> {
    if !path.exists() {
        bail!(
            "{client} is missing: {} does not exist; run `(cd tests/e2e && npm ci)`",
            path.display()
        );
    }
    Ok(path)
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
