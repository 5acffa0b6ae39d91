//! `open-registry-bench`: runs one benchmark of `docs/benchmarks.md` and its references back to
//! back, and prints the ratios. `tests/bench/run` installs the references and builds this
//! binary and the node; run it through that script.
//!
//! ```text
//! open-registry-bench <ID> [--smoke] [--runs N] [--duration SECS] [--loadgen auto|wrk|builtin]
//!                          [--node-bin PATH] [--results DIR] [--no-nginx] [--no-verdaccio]
//!                          [--profile] [--sizes 10k,100k,1M] [--window SECS]
//! ```
//!
//! Each benchmark is one function `fn(&Ctx) -> Result<Report>` in [`BENCHMARKS`]: it sets up
//! its fixtures (a [`FakeUpstream`](open_registry_tests::FakeUpstream) in this process, with
//! generated packages), starts what it compares (the node, nginx, Verdaccio), measures them
//! back to back, and returns a [`report::Report`] that is printed and written as JSON.
//! B8 measures memory in real use (`npm install` of multi-megabyte packuments). B9 measures how
//! fast a signed takedown reaches every node of a network. B10 runs in the network laboratory
//! (`open_registry_tests::lab`): `npm ci` through a NATed laptop's node in every region vs npm
//! straight from the upstream, and B5's cold miss across real distances.
//! B11 measures how the node's costs grow with its store: stores of up to a million blobs are
//! generated with the node's own store code and cached between runs.
//! The peer benchmarks (B3p, B4, B5) start several nodes on loopback (`targets::start_peer`)
//! and compare with B3 and with in-process transport references (`perf`).

mod b1;
mod b10;
mod b11;
mod b2;
mod b3;
mod b3p;
mod b4;
mod b5;
mod b6;
mod b7;
mod b8;
mod b9;
mod load;
mod perf;
mod profile;
mod report;
mod synth;
mod sys;
mod targets;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};

use crate::load::LoadGen;
use crate::report::Report;

/// A benchmark: id, one-line description, entry point.
type Bench = (&'static str, &'static str, fn(&Ctx) -> Result<Report>);

/// Every benchmark this binary runs, in `tests/bench/run all` order. Ids match
/// case-insensitively (`b3p`, `B3P`).
const BENCHMARKS: &[Bench] = &[
    (
        "B1",
        "hot abbreviated packuments vs nginx and Verdaccio",
        b1::run,
    ),
    ("B2", "hot tarball vs nginx and Verdaccio", b2::run),
    (
        "B3",
        "npm ci through a warm node vs the offline floor and Verdaccio",
        b3::run,
    ),
    (
        "B3p",
        "npm ci through a cold node that gets everything from a peer vs B3",
        b3p::run,
    ),
    (
        "B4",
        "peer to peer: one big blob and many small tarballs vs loopback TCP and libp2p",
        b4::run,
    ),
    (
        "B5",
        "a cold miss resolved through the DHT in a network of nodes vs round trips",
        b5::run,
    ),
    (
        "B6",
        "ingest (sha512 + blake3 + durable write) vs sha512 alone",
        b6::run,
    ),
    (
        "B7",
        "200 concurrent cold GETs, upstream fetches, RSS",
        b7::run,
    ),
    (
        "B8",
        "npm install without a lockfile, 1–25 MB packuments, 16 in flight: peak RSS",
        b8::run,
    ),
    (
        "B9",
        "a takedown: from advisory add on one node to a 451 on every node of 20",
        b9::run,
    ),
    (
        "B10",
        "the regional benchmark: npm ci through a laptop node in every region vs npm direct",
        b10::run,
    ),
    (
        "B11",
        "scale: start, idle RSS, status, eviction, DHT and hot paths at 10k, 100k and 1M blobs",
        b11::run,
    ),
];

/// What every benchmark gets: the options and where things are.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    /// A tiny, quick version that checks the plumbing.
    pub(crate) smoke: bool,
    /// Measurements per target; the median is reported.
    pub(crate) runs: usize,
    /// Length of one load run.
    pub(crate) duration: Duration,
    /// Load generator for HTTP benchmarks.
    pub(crate) loadgen: LoadGen,
    /// The `open-registry` binary.
    pub(crate) node_bin: PathBuf,
    /// Compare against nginx (when installed).
    pub(crate) nginx: bool,
    /// Compare against Verdaccio (when installed).
    pub(crate) verdaccio: bool,
    /// Where JSON results go.
    pub(crate) results: PathBuf,
    /// Record a CPU profile of the node (`perf record`) during its load runs.
    pub(crate) profile: bool,
    /// B11's store sizes in blobs (`--sizes 10k,100k`), instead of its defaults.
    pub(crate) sizes: Option<Vec<u64>>,
    /// B11's DHT counting window (`--window SECS`), instead of its default.
    pub(crate) window: Option<Duration>,
}

fn usage() -> String {
    let mut s = String::from(
        "usage: open-registry-bench <ID> [--smoke] [--runs N] [--duration SECS]\n\
         \x20                          [--loadgen auto|wrk|builtin] [--node-bin PATH]\n\
         \x20                          [--results DIR] [--no-nginx] [--no-verdaccio] [--profile]\n\
         \x20                          [--sizes 10k,100k,1M] [--window SECS]   (B11)\n\nbenchmarks:\n",
    );
    for (id, what, _) in BENCHMARKS {
        s.push_str(&format!("  {id:<4} {what}\n"));
    }
    s
}

fn parse_args() -> Result<(String, Ctx)> {
    let mut args = std::env::args().skip(1);
    let mut id = None;
    let mut smoke = false;
    let mut runs = None;
    let mut duration = None;
    let mut loadgen = LoadGen::Auto;
    let mut node_bin = std::env::var_os("OPEN_REGISTRY_BIN").map(PathBuf::from);
    let mut results = None;
    let (mut nginx, mut verdaccio, mut profile) = (true, true, false);
    let (mut sizes, mut window) = (None, None);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| anyhow!("{name} needs a value"));
        match a.as_str() {
            "--smoke" => smoke = true,
            "--runs" => runs = Some(value("--runs")?.parse().context("--runs")?),
            "--duration" => {
                duration = Some(Duration::from_secs_f64(
                    value("--duration")?.parse().context("--duration")?,
                ));
            }
            "--loadgen" => loadgen = value("--loadgen")?.parse()?,
            "--node-bin" => node_bin = Some(PathBuf::from(value("--node-bin")?)),
            "--results" => results = Some(PathBuf::from(value("--results")?)),
            "--no-nginx" => nginx = false,
            "--no-verdaccio" => verdaccio = false,
            "--profile" => profile = true,
            "--sizes" => {
                sizes = Some(
                    value("--sizes")?
                        .split(',')
                        .map(b11::parse_size)
                        .collect::<Result<Vec<u64>>>()?,
                );
            }
            "--window" => {
                window = Some(Duration::from_secs_f64(
                    value("--window")?.parse().context("--window")?,
                ));
            }
            "-h" | "--help" => {
                print!("{}", usage());
                std::process::exit(0);
            }
            s if s.starts_with('-') => bail!("unknown option {s}\n{}", usage()),
            s if id.is_none() => id = Some(s.to_ascii_uppercase()),
            s => bail!("unexpected argument {s}\n{}", usage()),
        }
    }
    let id = id.ok_or_else(|| anyhow!("{}", usage()))?;
    let node_bin = match node_bin {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("no directory for this executable"))?
            .join("open-registry"),
    };
    if !node_bin.exists() {
        bail!(
            "the node binary {} does not exist (build it, or pass --node-bin)",
            node_bin.display()
        );
    }
    let results = results.unwrap_or_else(|| {
        open_registry_tests::tools::repo_root()
            .join("target")
            .join("bench")
    });
    Ok((
        id,
        Ctx {
            smoke,
            runs: runs.unwrap_or(if smoke { 1 } else { 3 }).max(1),
            duration: duration.unwrap_or(if smoke {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(5)
            }),
            loadgen,
            node_bin,
            nginx,
            verdaccio,
            results,
            profile,
            sizes,
            window,
        },
    ))
}

fn main() -> ExitCode {
    let (id, ctx) = match parse_args() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(2);
        }
    };
    let Some((id, what, run)) = BENCHMARKS
        .iter()
        .find(|(b, _, _)| b.eq_ignore_ascii_case(&id))
    else {
        eprintln!("unknown benchmark {id}\n{}", usage());
        return ExitCode::from(2);
    };
    println!("== {id}: {what}{}", if ctx.smoke { " (smoke)" } else { "" });
    println!("   {}", sys::machine_line());
    let started = std::time::Instant::now();
    let result = run(&ctx);
    // Every target was dropped (stopped) inside `run`.
    sys::clear_pids();
    match result {
        Ok(mut report) => {
            report.finish(id, ctx.smoke, started.elapsed());
            print!("{}", report.render());
            match report.save(&ctx.results) {
                Ok(path) => println!("   results: {}", path.display()),
                Err(e) => eprintln!("   could not save results: {e:#}"),
            }
            if report.failed() {
                eprintln!("{id}: the benchmark itself failed (see above)");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{id} failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
