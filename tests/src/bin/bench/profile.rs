//! `--profile`: samples every CPU with `perf record -a -e cpu-clock -g` (software clock: it
//! works where hardware counters are not exposed, as on these VMs; system-wide, so the threads
//! a process starts during the run, such as tokio's blocking pool, are seen too) during the
//! node's first load run of each case, and writes the node's hottest symbols
//! (`perf report --pid --no-children`) next to the JSON results as
//! `<case>-<target>.perf.txt`, with the share of the machine's samples the node used.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::{Ctx, sys};

/// A `perf record` attached to a process.
#[derive(Debug)]
pub(crate) struct Recording {
    child: Child,
    data: PathBuf,
    out: PathBuf,
    pid: u32,
}

/// Starts sampling `pid` for the length of one load run; `None` (with a message) when perf is
/// missing or refuses.
pub(crate) fn start(ctx: &Ctx, pid: u32, label: &str) -> Option<Recording> {
    if sys::which("perf").is_none() {
        println!("   --profile: perf is not installed (apt-get install linux-perf)");
        return None;
    }
    let _ = std::fs::create_dir_all(&ctx.results);
    let data = ctx.results.join(format!("{label}.perf.data"));
    let out = ctx.results.join(format!("{label}.perf.txt"));
    let secs = ctx.duration.as_secs_f64().ceil().max(1.0);
    let child = Command::new("perf")
        .args(["record", "-a", "-e", "cpu-clock", "-F", "999", "-g", "-o"])
        .arg(&data)
        .args(["--", "sleep", &format!("{secs}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| println!("   --profile: perf record failed to start: {e}"))
        .ok()?;
    Some(Recording {
        child,
        data,
        out,
        pid,
    })
}

impl Recording {
    /// Waits for the recording and writes the report.
    pub(crate) fn finish(mut self) {
        let _ = self.child.wait();
        let report = Command::new("perf")
            .args([
                "report",
                "--no-children",
                "--percentage",
                "relative",
                "--percent-limit",
                "0.5",
                "--stdio",
                "-g",
                "none",
            ])
            .args(["--sort", "dso,symbol", "--pid", &self.pid.to_string(), "-i"])
            .arg(&self.data)
            .output();
        match report {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                let top: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                    .map(str::trim_end)
                    .take(40)
                    .collect();
                let share = self.share();
                let _ = std::fs::write(&self.out, format!("# {share}\n{text}"));
                println!(
                    "   profile: {} ({share}; top entries below)",
                    self.out.display()
                );
                for l in top.iter().take(15) {
                    println!("     {l}");
                }
            }
            Ok(o) => println!(
                "   --profile: perf report failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => println!("   --profile: perf report failed: {e}"),
        }
    }

    /// `the node had 12.6% of the machine's samples (0.25 of 2 CPUs)`.
    fn share(&self) -> String {
        let Ok(o) = Command::new("perf")
            .args(["script", "-F", "pid", "-i"])
            .arg(&self.data)
            .output()
        else {
            return "share unknown".into();
        };
        let text = String::from_utf8_lossy(&o.stdout);
        let pid = self.pid.to_string();
        let (mut all, mut mine) = (0u64, 0u64);
        for l in text.lines() {
            all += 1;
            if l.trim() == pid {
                mine += 1;
            }
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let frac = mine as f64 / all.max(1) as f64;
        format!(
            "the node had {:.1}% of the machine's samples ({:.2} of {cpus} CPUs)",
            frac * 100.0,
            frac * cpus as f64
        )
    }
}
