//! The programs the end-to-end tests drive, and where to find them.
//!
//! - The repository root, found from this crate's manifest directory.
//! - `tests/e2e/node_modules`: Verdaccio and the clients pnpm, yarn 1, yarn 4 and bun, pinned by
//!   `tests/e2e/package-lock.json`. When they are missing or differ from the lockfile,
//!   [`e2e_tools`] runs `npm ci` there once, under a lock directory, so that parallel test
//!   processes never install over each other.
//! - The `open-registry` binary next to the test executable ([`node_binary`]), built with cargo
//!   when it is missing or older than the crates it is built from.
//! - [`free_port`] for programs that cannot bind port 0 and report it back.
//!
//! Non-goal: installing node or npm themselves; they must be on `PATH`.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, OnceLock},
    thread,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result, anyhow, bail};

/// The packages in `tests/e2e/package.json` whose installed versions must match the lockfile,
/// each with a file (under `node_modules/`) that must exist once it is installed.
const E2E_PACKAGES: [(&str, &str); 5] = [
    ("verdaccio", ".bin/verdaccio"),
    ("pnpm", ".bin/pnpm"),
    ("yarn", "yarn/bin/yarn.js"),
    ("@yarnpkg/cli-dist", "@yarnpkg/cli-dist/bin/yarn.js"),
    ("bun", "bun/package.json"),
];

/// The repository root (the directory holding the workspace `Cargo.toml`).
pub fn repo_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is tests/; its parent is the workspace.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// `tests/e2e`, the npm project that pins the end-to-end tools.
pub fn e2e_dir() -> PathBuf {
    repo_root().join("tests").join("e2e")
}

/// Paths to the pinned npm-ecosystem programs.
#[derive(Debug, Clone)]
pub struct E2eTools {
    /// `tests/e2e/node_modules/.bin/verdaccio`.
    pub verdaccio: PathBuf,
    /// `tests/e2e/node_modules/.bin/pnpm`.
    pub pnpm: PathBuf,
    /// yarn 1 (classic): `tests/e2e/node_modules/yarn/bin/yarn.js`, run with `node`.
    pub yarn1: PathBuf,
    /// yarn 4 (berry): `tests/e2e/node_modules/@yarnpkg/cli-dist/bin/yarn.js`, run with `node`.
    /// (Both yarns declare a `yarn` bin, so `.bin/yarn` is whichever npm linked last.)
    pub yarn4: PathBuf,
    /// The native bun executable, when one for this platform is installed (see [`bun_binary`]).
    pub bun: Option<PathBuf>,
}

/// Makes sure `tests/e2e/node_modules` matches its lockfile (running `npm ci` at most once per
/// process, under a lock shared with other processes) and returns the tool paths.
pub fn e2e_tools() -> Result<E2eTools> {
    static DONE: OnceLock<std::result::Result<E2eTools, String>> = OnceLock::new();
    DONE.get_or_init(|| install_e2e_tools().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn install_e2e_tools() -> Result<E2eTools> {
    let dir = e2e_dir();
    let modules = dir.join("node_modules");
    let tools = || E2eTools {
        verdaccio: modules.join(".bin/verdaccio"),
        pnpm: modules.join(".bin/pnpm"),
        yarn1: modules.join("yarn/bin/yarn.js"),
        yarn4: modules.join("@yarnpkg/cli-dist/bin/yarn.js"),
        bun: bun_binary(&modules),
    };
    if e2e_installed(&dir) {
        return Ok(tools());
    }
    let _lock = DirLock::acquire(&dir.join(".install.lock"), Duration::from_secs(600))?;
    // Another process may have installed while we waited for the lock.
    if e2e_installed(&dir) {
        return Ok(tools());
    }
    eprintln!("[tools] installing tests/e2e/node_modules with `npm ci`");
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .output()
        .context("running `npm ci` in tests/e2e (is npm on PATH?)")?;
    if !out.status.success() {
        bail!(
            "`npm ci` in {} failed ({}):\n{}\n{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !e2e_installed(&dir) {
        bail!(
            "`npm ci` in {} succeeded but {:?} are not installed as the lockfile pins them",
            dir.display(),
            E2E_PACKAGES.map(|(pkg, _)| pkg)
        );
    }
    Ok(tools())
}

/// bun's native executable under `modules` (a `node_modules` directory). The `bun` package
/// holds a placeholder `bin/bun.exe` that its postinstall replaces with the binary of the
/// platform package (`@oven/bun-linux-x64` and the like); when the postinstall did not run, the
/// binary is still in the platform package's `bin/bun`. `None` when neither is there.
pub fn bun_binary(modules: &Path) -> Option<PathBuf> {
    // The placeholder is a few hundred bytes; the real executable is tens of megabytes.
    let linked = modules.join("bun/bin/bun.exe");
    if fs::metadata(&linked).is_ok_and(|m| m.len() > 1024 * 1024) {
        return Some(linked);
    }
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "aarch64",
        other => other,
    };
    ["", "-baseline", "-musl", "-musl-baseline"]
        .iter()
        .map(|variant| modules.join(format!("@oven/bun-{os}-{arch}{variant}/bin/bun")))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bun_binary_prefers_the_linked_executable_and_falls_back_to_the_platform_package() {
        let dir = tempfile::tempdir().unwrap();
        let modules = dir.path();
        assert_eq!(bun_binary(modules), None, "nothing installed");

        // Postinstall blocked: the placeholder stays, the binary is in the platform package.
        fs::create_dir_all(modules.join("bun/bin")).unwrap();
        fs::write(modules.join("bun/bin/bun.exe"), vec![b'#'; 450]).unwrap();
        assert_eq!(bun_binary(modules), None, "only the placeholder");
        let os = if cfg!(target_os = "macos") {
            "darwin"
        } else {
            std::env::consts::OS
        };
        let arch = if cfg!(target_arch = "x86_64") {
            "x64"
        } else {
            std::env::consts::ARCH
        };
        let platform = modules.join(format!("@oven/bun-{os}-{arch}-baseline/bin/bun"));
        fs::create_dir_all(platform.parent().unwrap()).unwrap();
        fs::write(&platform, b"elf").unwrap();
        assert_eq!(bun_binary(modules), Some(platform));

        // Postinstall ran: bun.exe is the executable itself.
        fs::write(modules.join("bun/bin/bun.exe"), vec![0u8; 2 * 1024 * 1024]).unwrap();
        assert_eq!(bun_binary(modules), Some(modules.join("bun/bin/bun.exe")));
    }
}

/// True when every pinned package is installed at the version `package-lock.json` names.
/// npm's hidden lockfile (`node_modules/.package-lock.json`) is written last by `npm ci`, so
/// its presence also means the previous install finished.
fn e2e_installed(dir: &Path) -> bool {
    let read = |p: PathBuf| -> Option<serde_json::Value> {
        serde_json::from_slice(&fs::read(p).ok()?).ok()
    };
    let (Some(lock), Some(hidden)) = (
        read(dir.join("package-lock.json")),
        read(dir.join("node_modules/.package-lock.json")),
    ) else {
        return false;
    };
    E2E_PACKAGES.iter().all(|(pkg, file)| {
        let key = format!("node_modules/{pkg}");
        let want = lock["packages"][&key]["version"].as_str();
        want.is_some()
            && want == hidden["packages"][&key]["version"].as_str()
            && dir.join("node_modules").join(file).exists()
    })
}

/// A port on 127.0.0.1 that was free a moment ago. Prefer binding port 0 where the program
/// reports the port back; this is for programs (Verdaccio) that need it up front.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The `open-registry` binary of the same cargo profile as the running test. `OPEN_REGISTRY_BIN`
/// overrides it. It is (re)built with `cargo build -p open-registry-node --bin open-registry`
/// once per process when missing or older than the sources of protocol/, gateway/ and node/.
pub fn node_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("OPEN_REGISTRY_BIN") {
        return Ok(PathBuf::from(p));
    }
    static DONE: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    DONE.get_or_init(|| build_node_binary().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

/// The profile directory (`target/debug`) the running test executable was built into:
/// test executables live in `<profile>/deps/`.
pub fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    exe.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "deps"))
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("{} is not inside a cargo deps directory", exe.display()))
}

fn build_node_binary() -> Result<PathBuf> {
    let profile = profile_dir()?;
    let bin = profile.join(format!("open-registry{}", std::env::consts::EXE_SUFFIX));
    if bin_is_fresh(&bin) {
        return Ok(bin);
    }
    // One build at a time across processes; cargo's own lock would serialise them too, but a
    // lock here also stops the second process from racing to read a half-linked binary.
    let _lock = DirLock::acquire(
        &profile.join(".open-registry-build.lock"),
        Duration::from_secs(1800),
    )?;
    if bin_is_fresh(&bin) {
        return Ok(bin);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-p",
        "open-registry-node",
        "--bin",
        "open-registry",
    ])
    .current_dir(repo_root());
    if profile.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    eprintln!("[tools] building the open-registry binary: {cmd:?}");
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("`cargo build -p open-registry-node --bin open-registry` failed ({status})");
    }
    if !bin.exists() {
        bail!(
            "cargo built open-registry but {} does not exist",
            bin.display()
        );
    }
    Ok(bin)
}

/// The binary exists and is newer than every source file it is built from.
fn bin_is_fresh(bin: &Path) -> bool {
    let Ok(built) = fs::metadata(bin).and_then(|m| m.modified()) else {
        return false;
    };
    let root = repo_root();
    let newest = ["protocol", "gateway", "node"]
        .iter()
        .filter_map(|c| newest_mtime(&root.join(c)))
        .chain(newest_mtime(&root.join("Cargo.lock")))
        .max();
    newest.is_none_or(|n| n <= built)
}

fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "target")
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}

/// A cross-process lock: a directory created atomically, holding the owner's pid. A lock whose
/// owner is gone (no `/proc/<pid>`) or that is older than `stale_after` is broken.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
}

impl DirLock {
    /// Waits for and takes the lock at `path` (at most `stale_after` plus a little).
    pub fn acquire(path: &Path, stale_after: Duration) -> Result<DirLock> {
        // Threads of one process share a pid, so they are serialised here first.
        static IN_PROCESS: Mutex<()> = Mutex::new(());
        let start = SystemTime::now();
        loop {
            {
                let _guard = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
                match fs::create_dir(path) {
                    Ok(()) => {
                        fs::write(path.join("pid"), std::process::id().to_string())?;
                        return Ok(DirLock {
                            path: path.to_path_buf(),
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        if Self::is_stale(path, stale_after) {
                            let _ = fs::remove_dir_all(path);
                            continue;
                        }
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("creating lock {}", path.display()));
                    }
                }
            }
            if start.elapsed().unwrap_or_default() > stale_after + Duration::from_secs(30) {
                bail!("timed out waiting for lock {}", path.display());
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn is_stale(path: &Path, stale_after: Duration) -> bool {
        let old = fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > stale_after);
        let owner_gone = fs::read_to_string(path.join("pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .is_some_and(|pid| {
                Path::new("/proc").exists() && !Path::new(&format!("/proc/{pid}")).exists()
            });
        old || owner_gone
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
