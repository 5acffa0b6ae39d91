//! A real browser for the tests: Debian's headless Chromium driven over WebDriver.
//!
//! [`Browser::start`] runs `chromedriver` on a loopback port it picks itself (`--port=0`, the
//! port read back from what it prints), opens a headless Chromium session through the
//! `fantoccini` WebDriver client and hands out a blocking API: [`Browser::goto`],
//! [`Browser::text`], [`Browser::wait_for_text`] (polls until the text satisfies a condition,
//! with a deadline), [`Browser::console`] (what the page logged) and [`Browser::screenshot`]
//! (a PNG under the cargo target directory, `target/artifacts/`).
//!
//! [`open_dashboard`] opens a node's dashboard in a fresh browser and waits until its script
//! has drawn the page once; [`Dashboard::text`] then reads a figure by its element id.
//!
//! Chromium and chromedriver come from the Debian packages `chromium` and `chromium-driver`
//! (`.ci/run` installs them). When either is missing, [`Browser::start`] fails saying what to
//! install: a browser test never passes without a browser.
//!
//! Dropping a [`Browser`] ends the session (Chromium exits) and kills chromedriver's process
//! group, and removes the browser profile directory.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{process, tools};

/// The browser window's size in CSS pixels, and so the screenshots'.
pub const WINDOW: (u32, u32) = (1280, 2000);
/// How long one WebDriver command may take before the test fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long chromedriver may take to say which port it listens on.
const DRIVER_START: Duration = Duration::from_secs(20);

/// What to install when the browser is missing.
const INSTALL_HINT: &str = "install Debian's packages `chromium` and `chromium-driver` \
     (apt-get install chromium chromium-driver; .ci/run does it on a fresh machine)";

/// A headless Chromium session driven through a chromedriver child process.
#[derive(Debug)]
pub struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    /// The chromedriver URL, `http://127.0.0.1:PORT/`.
    driver_url: String,
    profile: TempDir,
}

/// One entry of the browser's console log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogEntry {
    /// `SEVERE`, `WARNING`, `INFO` or `DEBUG`.
    pub level: String,
    /// Where it came from: `javascript` (an uncaught error), `console-api` (`console.log` and
    /// the like), `network` (a failed or error response), ….
    pub source: String,
    /// The text.
    pub message: String,
}

impl LogEntry {
    /// True for an error of the page's own script: an uncaught exception or a
    /// `console.error`. A response with an error status (which Chromium logs as a `network`
    /// entry) is not one: the page may ask for a route that does not exist and cope.
    pub fn is_script_error(&self) -> bool {
        self.level == "SEVERE" && self.source != "network"
    }
}

/// `name` on `PATH`, if it is there.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session (window [`WINDOW`], no sandbox, no
    /// GPU, no background networking). Fails with what to install when `chromedriver` or
    /// `chromium` is not on `PATH`.
    pub fn start() -> Result<Browser> {
        let driver_bin = on_path("chromedriver")
            .ok_or_else(|| anyhow!("`chromedriver` is not on PATH: {INSTALL_HINT}"))?;
        let chromium = on_path("chromium")
            .ok_or_else(|| anyhow!("`chromium` is not on PATH: {INSTALL_HINT}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the WebDriver client's runtime")?;

        let mut cmd = Command::new(&driver_bin);
        cmd.args(["--port=0", "--allowed-ips=127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut driver = process::own_group(&mut cmd)
            .spawn()
            .with_context(|| format!("spawning {}", driver_bin.display()))?;
        let port = match driver_port(&mut driver) {
            Ok(p) => p,
            Err(e) => {
                process::kill_group(&mut driver);
                return Err(e);
            }
        };
        let driver_url = format!("http://127.0.0.1:{port}/");
        let profile = match tempfile::Builder::new()
            .prefix("open-registry-chromium-")
            .tempdir()
        {
            Ok(p) => p,
            Err(e) => {
                process::kill_group(&mut driver);
                return Err(e).context("creating the browser profile directory");
            }
        };
        let mut browser = Browser {
            runtime,
            client: None,
            driver,
            driver_url,
            profile,
        };
        let client = browser.connect(&chromium)?;
        browser.client = Some(client);
        Ok(browser)
    }

    fn connect(&self, chromium: &Path) -> Result<Client> {
        let (w, h) = WINDOW;
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--no-default-browser-check",
                    format!("--window-size={w},{h}"),
                    format!("--user-data-dir={}", self.profile.path().display()),
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(caps) = caps else {
            unreachable!("a JSON object")
        };
        let url = self.driver_url.clone();
        self.block_on("opening a Chromium session", async move {
            ClientBuilder::new(HttpConnector::new())
                .capabilities(caps)
                .connect(&url)
                .await
        })
        .with_context(|| format!("chromium through chromedriver: {INSTALL_HINT}"))
    }

    fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("the session is open until drop")
    }

    /// Runs one WebDriver exchange, failing after [`COMMAND_TIMEOUT`].
    fn block_on<T, E>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        self.runtime
            .block_on(async { tokio::time::timeout(COMMAND_TIMEOUT, f).await })
            .map_err(|_| anyhow!("{what}: no answer from chromedriver in {COMMAND_TIMEOUT:?}"))?
            .with_context(|| what.to_owned())
    }

    /// Opens `url` and waits for the page to load (its `load` event).
    pub fn goto(&self, url: &str) -> Result<()> {
        let c = self.client().clone();
        let u = url.to_owned();
        self.block_on(&format!("opening {url}"), async move { c.goto(&u).await })
    }

    /// The rendered text of the element with this `id` (as a person sees it: hidden elements
    /// have none).
    pub fn text(&self, id: &str) -> Result<String> {
        let c = self.client().clone();
        let sel = format!("[id=\"{id}\"]");
        self.block_on(&format!("reading #{id}"), async move {
            c.find(Locator::Css(&sel)).await?.text().await
        })
    }

    /// Whether an element with this `id` is on the page.
    pub fn exists(&self, id: &str) -> Result<bool> {
        let c = self.client().clone();
        let sel = format!("[id=\"{id}\"]");
        let found = self.block_on(&format!("looking for #{id}"), async move {
            c.find_all(Locator::Css(&sel)).await
        })?;
        Ok(!found.is_empty())
    }

    /// Polls the text of the element with this `id` until `ok` accepts it, and returns it;
    /// fails after `timeout` with the last text seen. A missing element counts as no text yet.
    pub fn wait_for_text(
        &self,
        id: &str,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let mut last = String::new();
        crate::probe::wait_for(
            timeout,
            &format!("#{id} to reach the expected text"),
            || match self.text(id) {
                Ok(t) if ok(&t) => Some(t),
                Ok(t) => {
                    last = t;
                    None
                }
                Err(e) => {
                    last = format!("(not readable: {e:#})");
                    None
                }
            },
        )
        .with_context(|| format!("last seen: {last:?}"))
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns what
    /// it returns.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        let c = self.client().clone();
        let s = script.to_owned();
        self.block_on("running a script in the page", async move {
            c.execute(&s, args).await
        })
    }

    /// The browser console entries logged since the last call (Chromium hands each out once).
    pub fn console(&self) -> Result<Vec<LogEntry>> {
        let c = self.client().clone();
        let v = self.block_on("reading the browser console", async move {
            c.issue_cmd(BrowserLog).await
        })?;
        let entries = match v {
            Value::Object(mut o) => o.remove("value").unwrap_or(Value::Null),
            other => other,
        };
        let Value::Array(entries) = entries else {
            bail!("the browser log is not a list: {entries}");
        };
        let field = |e: &Value, k: &str| e[k].as_str().unwrap_or_default().to_owned();
        Ok(entries
            .iter()
            .map(|e| LogEntry {
                level: field(e, "level"),
                source: field(e, "source"),
                message: field(e, "message"),
            })
            .collect())
    }

    /// Polls the console until an entry satisfies `ok` and returns it; fails after `timeout`
    /// with what was logged meanwhile. Entries read while waiting are consumed.
    pub fn wait_for_console(
        &self,
        timeout: Duration,
        ok: impl Fn(&LogEntry) -> bool,
    ) -> Result<LogEntry> {
        let mut seen = Vec::new();
        let mut failed = None;
        let found = crate::probe::wait_for(timeout, "a matching console entry", || {
            match self.console() {
                Ok(entries) => entries.into_iter().find_map(|e| {
                    if ok(&e) {
                        Some(e)
                    } else {
                        seen.push(e);
                        None
                    }
                }),
                Err(e) => {
                    failed = Some(e);
                    Some(LogEntry::default())
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        found.with_context(|| format!("logged: {seen:#?}"))
    }

    /// Saves a PNG of the window as `<target dir>/artifacts/<name>.png` and returns its path.
    pub fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let c = self.client().clone();
        let png = self.block_on("taking a screenshot", async move { c.screenshot().await })?;
        let dir = artifacts_dir()?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("[browser] screenshot saved: {}", path.display());
        Ok(path)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            // Ends the session, so chromedriver stops Chromium; bounded, because a wedged
            // driver must not hang the test's teardown.
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), c.close()).await });
        }
        process::kill_group(&mut self.driver);
    }
}

/// Reads chromedriver's stdout until it says which port it took.
fn driver_port(driver: &mut Child) -> Result<u16> {
    let out = driver.stdout.take().context("chromedriver's stdout")?;
    let (tx, rx) = mpsc::channel();
    // The reader keeps draining stdout after the port is known, so chromedriver never blocks
    // on a full pipe; it ends when chromedriver exits.
    thread::spawn(move || {
        let mut seen = Vec::new();
        let mut sent = false;
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if sent {
                continue;
            }
            let port = line
                .split_once("started successfully on port ")
                .and_then(|(_, rest)| rest.trim_end_matches('.').trim().parse::<u16>().ok());
            match port {
                Some(p) => {
                    sent = tx.send(Ok(p)).is_ok();
                }
                None => seen.push(line),
            }
        }
        if !sent {
            let _ = tx.send(Err(seen.join("\n")));
        }
    });
    match rx.recv_timeout(DRIVER_START) {
        Ok(Ok(port)) => Ok(port),
        Ok(Err(printed)) => bail!("chromedriver exited before listening; it printed:\n{printed}"),
        Err(_) => bail!("chromedriver did not report its port within {DRIVER_START:?}"),
    }
}

/// Where screenshots go: `artifacts/` in the cargo target directory (`CARGO_TARGET_DIR`, else
/// the directory the running test executable was built in, else the workspace's `target/`).
pub fn artifacts_dir() -> Result<PathBuf> {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                tools::repo_root().join(d)
            }
        }
        None => tools::profile_dir()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| tools::repo_root().join("target")),
    };
    Ok(target.join("artifacts"))
}

/// chromedriver's `POST /session/{id}/se/log {"type": "browser"}`: the console entries
/// gathered since the last such request.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (hyper::Method, Option<String>) {
        (
            hyper::Method::POST,
            Some(r#"{"type":"browser"}"#.to_owned()),
        )
    }
}

/// A node's dashboard (`/-/open-registry/`) open in its own browser.
#[derive(Debug)]
pub struct Dashboard {
    /// The browser showing it.
    pub browser: Browser,
    /// The dashboard's URL.
    pub url: String,
}

/// How long the dashboard may take to draw itself (once more): it redraws every 10 seconds.
pub const DASHBOARD_LOAD: Duration = Duration::from_secs(30);

/// Opens the dashboard of the node whose gateway is `gateway` (`http://127.0.0.1:PORT`) in a
/// new browser and waits until its script has drawn every section once.
pub fn open_dashboard(gateway: &str) -> Result<Dashboard> {
    let browser = Browser::start()?;
    let url = format!("{}/-/open-registry/", gateway.trim_end_matches('/'));
    browser.goto(&url)?;
    let dashboard = Dashboard { browser, url };
    dashboard.wait_until_drawn(1)?;
    Ok(dashboard)
}

impl Dashboard {
    /// The rendered text of the element with this `id` (the figures' ids are listed in the
    /// dashboard's source: `instances`, `monthly-cost`, `costs`, `donated`, `spent`, `errors`,
    /// `served`, `cached`, `lag`, `upstream-banner`, `operators-trusted`, …).
    pub fn text(&self, id: &str) -> Result<String> {
        self.browser.text(id)
    }

    /// Waits until the text of `id` satisfies `ok` (the page redraws every 10 seconds, so a
    /// figure that depends on gossip may take a refresh or two), failing after `timeout`.
    pub fn wait_text(
        &self,
        id: &str,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> Result<String> {
        self.browser.wait_for_text(id, timeout, ok)
    }

    /// How many times the page has drawn itself since it was loaded.
    pub fn refreshes(&self) -> Result<u64> {
        let v = self
            .browser
            .execute("return document.body.dataset.refreshes || '0';", vec![])?;
        Ok(v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0))
    }

    /// Waits until the page has drawn itself `times` times since it was loaded.
    fn wait_until_drawn(&self, times: u64) -> Result<()> {
        crate::probe::wait_for(DASHBOARD_LOAD, "the dashboard to finish drawing", || {
            self.refreshes().ok().filter(|&n| n >= times)
        })
        .with_context(|| {
            format!(
                "the dashboard at {} (page errors: {:?})",
                self.url,
                self.browser.text("page-errors").unwrap_or_default()
            )
        })
        .map(drop)
    }

    /// Waits until the page has drawn itself once more (it does every 10 seconds), so what it
    /// shows is at most that old.
    pub fn wait_for_refresh(&self) -> Result<()> {
        let before = self.refreshes()?;
        self.wait_until_drawn(before + 1)
    }

    /// Reloads the page and waits until it has drawn itself.
    pub fn reload(&self) -> Result<()> {
        self.browser.goto(&self.url)?;
        self.wait_until_drawn(1)
    }

    /// The page's script errors logged since the last call (uncaught exceptions,
    /// `console.error`), plus what the page itself shows in `#page-errors`.
    pub fn script_errors(&self) -> Result<Vec<String>> {
        let entries = self.browser.console()?;
        for e in &entries {
            eprintln!("[browser] console {} {}: {}", e.level, e.source, e.message);
        }
        let mut errors: Vec<String> = entries
            .into_iter()
            .filter(LogEntry::is_script_error)
            .map(|e| format!("{} {}: {}", e.level, e.source, e.message))
            .collect();
        let shown = self.browser.text("page-errors")?;
        if !shown.trim().is_empty() {
            errors.push(shown);
        }
        Ok(errors)
    }

    /// Saves a screenshot as `<target dir>/artifacts/<name>.png`.
    pub fn screenshot(&self, name: &str) -> Result<PathBuf> {
        self.browser.screenshot(name)
    }
}
