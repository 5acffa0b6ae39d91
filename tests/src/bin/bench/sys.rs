//! The machine: cores, CPU model, date, a process's memory, whether a program is installed.

use std::path::{Path, PathBuf};

/// `2 cores, Intel(R) Xeon(R) Processor, Linux 6.1` — for every report.
pub(crate) fn machine_line() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| format!(", {} GiB", kb / (1024 * 1024)))
        .unwrap_or_default();
    format!("{cores} cores, {cpu}{mem}, Linux {kernel}")
}

/// Now, UTC, ISO 8601.
pub(crate) fn date() -> String {
    open_registry_tests::upstream::iso_now()
}

/// Memory of a process in KiB: (VmRSS, VmHWM = peak RSS). `None` when it is gone.
pub(crate) fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// `VmRSS 41.2 MiB, peak 52.0 MiB`, or `gone`.
pub(crate) fn fmt_rss(pid: Option<u32>) -> String {
    match pid.and_then(rss_kib) {
        Some((rss, hwm)) => format!(
            "RSS {:.1} MiB, peak {:.1} MiB",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        ),
        None => "not running".into(),
    }
}

/// The path of `prog` on `PATH`, if installed.
pub(crate) fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(prog))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The file system type of `dir` (`ext2/ext3`, `tmpfs`, `overlayfs`...), from `stat -f`.
pub(crate) fn fs_type(dir: &Path) -> String {
    std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Remembers a started process group in `$OPEN_REGISTRY_BENCH_PIDS`, so that `tests/bench/run`
/// kills it if this program dies before it could stop it.
pub(crate) fn register_pid(pid: Option<u32>) {
    use std::io::Write as _;
    let (Some(pid), Some(file)) = (pid, std::env::var_os("OPEN_REGISTRY_BENCH_PIDS")) else {
        return;
    };
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(file) {
        let _ = writeln!(f, "{pid}");
    }
}

/// Everything this program started has been stopped: forget the process groups.
pub(crate) fn clear_pids() {
    if let Some(file) = std::env::var_os("OPEN_REGISTRY_BENCH_PIDS") {
        let _ = std::fs::write(file, "");
    }
}
