//! Child processes that can always be stopped: each runs in its own process group, so a
//! signal reaches it and everything it started (npm's scripts, Verdaccio's workers).
//!
//! Signals are sent with the `kill` program rather than libc, so the crate needs no unsafe code
//! and no extra dependency.

use std::{
    io::Read,
    os::unix::process::CommandExt,
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Puts the command into a new process group of its own (pgid = its pid).
pub fn own_group(cmd: &mut Command) -> &mut Command {
    cmd.process_group(0)
}

/// Sends `signal` (`"TERM"`, `"KILL"`, …) to the whole process group led by `pid`.
/// Errors (the group is already gone) are ignored: the goal is that nothing survives.
pub fn signal_group(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits up to `timeout` for `child` to exit.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Stops a process group politely: SIGTERM, then SIGKILL after `grace`; reaps the leader.
pub fn stop_group(child: &mut Child, grace: Duration) -> Result<Option<ExitStatus>> {
    if let Some(status) = child.try_wait()? {
        // The leader is gone, but children it started may not be.
        signal_group(child.id(), "KILL");
        return Ok(Some(status));
    }
    signal_group(child.id(), "TERM");
    let status = wait_timeout(child, grace)?;
    // KILL the group even after a clean exit: stragglers must not outlive the test.
    signal_group(child.id(), "KILL");
    match status {
        Some(s) => Ok(Some(s)),
        None => Ok(wait_timeout(child, Duration::from_secs(10))?),
    }
}

/// Kills a process group at once and reaps the leader.
pub fn kill_group(child: &mut Child) {
    signal_group(child.id(), "KILL");
    let _ = wait_timeout(child, Duration::from_secs(10));
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command line, for messages.
    pub command: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Output {
    /// True when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// `self` when it succeeded, otherwise an error holding the command and its output.
    pub fn ok(self) -> Result<Output> {
        if self.success() {
            Ok(self)
        } else {
            bail!("{}", self.describe())
        }
    }

    /// The command, its status and its output, for an assertion message.
    pub fn describe(&self) -> String {
        format!(
            "`{}` exited with {} after {:.1}s\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.status,
            self.elapsed.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `cmd` to completion in its own process group, capturing its output; kills the group
/// and fails after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let command = describe_command(cmd);
    let start = Instant::now();
    let mut child = own_group(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning `{command}`"))?;
    // Drain both pipes on threads: a child blocked on a full pipe would never exit.
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = wait_timeout(&mut child, timeout)?;
    let Some(status) = status else {
        kill_group(&mut child);
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        bail!(
            "`{command}` did not finish within {timeout:?}; killed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        );
    };
    // The leader exited; anything it left behind would keep the pipes open forever.
    signal_group(child.id(), "KILL");
    let output = Output {
        command,
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    };
    eprintln!(
        "[run] `{}` → {} in {:.1}s",
        output.command,
        output.status,
        output.elapsed.as_secs_f64()
    );
    Ok(output)
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// `program arg arg …` in the directory it runs in, for messages.
pub fn describe_command(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        // Scripts passed with `-e` would drown the message; their first line is enough.
        let a = a.to_string_lossy();
        let line = a.trim_start().lines().next().unwrap_or_default();
        if line.len() > 100 || line.len() < a.len() {
            let cut: String = line.chars().take(60).collect();
            s.push_str(&format!("{cut}…"));
        } else {
            s.push_str(line);
        }
    }
    if let Some(dir) = cmd.get_current_dir() {
        s.push_str(&format!(" (in {})", dir.display()));
    }
    s
}
