//! A real Verdaccio 6 on 127.0.0.1, standing in for an upstream npm registry.
//!
//! It has no uplinks, so it serves exactly what a test published into it and can never reach
//! out to a public registry. Storage, config and the htpasswd file live in a temporary
//! directory. [`Verdaccio::start`] returns once `/-/ping` answers and a user exists;
//! [`Verdaccio::publish`] runs the real `npm publish`. The process group is killed on
//! [`Verdaccio::stop`] and on drop, so a failing test leaves no Verdaccio behind.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::json;
use tempfile::TempDir;

use crate::{
    fixtures::PackageSpec,
    http,
    npm::Npm,
    process::{self, Output},
    tools,
};

/// How long Verdaccio may take to answer its first ping.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes `config` as `dir/config.yaml` and starts `bin` with it on 127.0.0.1:`port`, in its
/// own process group, its output going to `dir/verdaccio.log`.
pub fn spawn(bin: &Path, dir: &Path, config: &str, port: u16) -> Result<Child> {
    let config_path = dir.join("config.yaml");
    fs::write(&config_path, config)?;
    let log = fs::File::create(dir.join("verdaccio.log"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(&config_path)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(dir)
        .env("NODE_ENV", "production")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    process::own_group(&mut cmd)
        .spawn()
        .context("spawning verdaccio")
}

/// A running Verdaccio with one user.
#[derive(Debug)]
pub struct Verdaccio {
    url: String,
    token: String,
    dir: TempDir,
    child: Option<Child>,
}

impl Verdaccio {
    /// Starts Verdaccio on a free port, waits for it, and creates a user.
    pub fn start() -> Result<Verdaccio> {
        let tools = tools::e2e_tools()?;
        let dir = tempfile::Builder::new()
            .prefix("verdaccio-")
            .tempdir()
            .context("creating Verdaccio's directory")?;
        let port = tools::free_port()?;
        let child = spawn(&tools.verdaccio, dir.path(), &config_yaml(dir.path()), port)?;
        let mut v = Verdaccio {
            url: format!("http://127.0.0.1:{port}"),
            token: String::new(),
            dir,
            child: Some(child),
        };
        v.wait_ready().map_err(|e| e.context(v.log_tail()))?;
        v.token = v.add_user("tester", "tester-password-1")?;
        eprintln!("[verdaccio] up at {}", v.url);
        Ok(v)
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The user's auth token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Verdaccio's storage directory.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Publishes the package in `dir` with the real `npm publish`, optionally under `tag`. A
    /// project `.npmrc` holding the token is written into `dir` first.
    pub fn publish(&self, dir: &Path, tag: Option<&str>) -> Result<Output> {
        let host = self.url.trim_start_matches("http:");
        fs::write(
            dir.join(".npmrc"),
            format!("{host}/:_authToken={}\n", self.token),
        )?;
        let npm = Npm::new(&self.url)?;
        npm.publish(dir, tag)
    }

    /// Writes `spec` into a directory under `parent` and publishes it.
    pub fn publish_spec(
        &self,
        spec: &PackageSpec,
        parent: &Path,
        tag: Option<&str>,
    ) -> Result<Output> {
        let dir = spec.write_dir(parent)?;
        self.publish(&dir, tag)
            .with_context(|| format!("publishing {} to Verdaccio", spec.id()))
    }

    /// Stops Verdaccio (SIGTERM, then SIGKILL) and waits for it. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = process::stop_group(&mut child, Duration::from_secs(5));
            eprintln!("[verdaccio] stopped {}", self.url);
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The last lines of Verdaccio's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("verdaccio.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!("verdaccio log (tail):\n{}", lines[from..].join("\n"))
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let ping = format!("{}/-/ping", self.url);
        while Instant::now() < deadline {
            if !self.is_running() {
                bail!("verdaccio exited during startup");
            }
            if http::get(&ping, Duration::from_secs(2)).is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("verdaccio did not answer {ping} within {START_TIMEOUT:?}")
    }

    fn add_user(&self, name: &str, password: &str) -> Result<String> {
        let body = json!({ "name": name, "password": password }).to_string();
        let url = format!("{}/-/user/org.couchdb.user:{name}", self.url);
        let res = http::request(
            "PUT",
            &url,
            &[("content-type", "application/json")],
            body.as_bytes(),
            Duration::from_secs(30),
        )?;
        let reply: serde_json::Value = serde_json::from_slice(&res.body).with_context(|| {
            format!(
                "Verdaccio's answer to adduser ({}): {}",
                res.status,
                res.text()
            )
        })?;
        match reply["token"].as_str() {
            Some(t) => Ok(t.to_owned()),
            None => bail!(
                "Verdaccio created no token ({}): {}",
                res.status,
                res.text()
            ),
        }
    }
}

impl Drop for Verdaccio {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_group(&mut child);
        }
    }
}

/// Verdaccio's config: local storage only, htpasswd auth, bodies up to 200 MB.
fn config_yaml(dir: &Path) -> String {
    format!(
        r#"# Written by open-registry-tests. No uplinks: this registry serves only what tests publish.
storage: {storage}
auth:
  htpasswd:
    file: {htpasswd}
    max_users: 1000
uplinks: {{}}
packages:
  '@*/*':
    access: $all
    publish: $authenticated
    unpublish: $authenticated
  '**':
    access: $all
    publish: $authenticated
    unpublish: $authenticated
max_body_size: 200mb
server:
  keepAliveTimeout: 60
web:
  enable: false
log:
  type: stdout
  format: pretty
  level: warn
"#,
        storage = dir.join("storage").display(),
        htpasswd = dir.join("htpasswd").display(),
    )
}
