//! R11 in docs/security.md, crash during write: a store killed with SIGKILL at any moment while it
//! ingests comes back with no blob whose bytes differ from its id, no index entry naming a
//! missing blob, and every acknowledged entry in place.
//!
//! The fast loop drives the node's own store code (`open_registry_node::store`) in a small
//! program, `open-registry-crashloop`, that prints an acknowledgement after each write is
//! durable; a thousand kills take well under a minute. A second test kills the real
//! `open-registry` node while npm-style traffic makes it cache tarballs.

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use open_registry_node::store::{Index, Store};
use open_registry_protocol::{BlobId, PackageName};
use open_registry_tests::{
    FakeUpstream, Fault, NodeProcess, PackageSpec, Published, Target, probe, process,
};

/// Kill-and-check rounds of the fast loop (R11 in docs/security.md asks for at least 1000).
const TRIALS: u64 = 1000;
/// Crashes on top of each other in one data dir.
const TRIALS_PER_DIR: u64 = 50;
/// Longest a child runs after `ready` before it is killed.
const MAX_DELAY_MS: u64 = 20;
/// How long opening the store may take in the crash loop.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

fn say(line: &str) {
    eprintln!("[r11] {line}");
}

/// Held by each test here for its whole run. sled locks its database with `flock`, which a
/// child process shares from `fork` until its `exec` closes the descriptor: a store open in
/// this process while the other test spawns a child could make the next open of that store
/// fail with "would block". One test at a time keeps every spawn away from an open store.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a crashed run acknowledged: `(name, file) → id` and `name → packument id`.
#[derive(Debug, Default)]
struct Acked {
    tarballs: HashMap<(String, String), BlobId>,
    packuments: HashMap<String, BlobId>,
}

impl Acked {
    fn line(&mut self, line: &str) -> Result<()> {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["ack", "tarball", name, file, id] => {
                self.tarballs
                    .insert(((*name).into(), (*file).into()), parse_id(id)?);
            }
            ["ack", "packument", name, id] => {
                self.packuments.insert((*name).into(), parse_id(id)?);
            }
            ["ready"] => {}
            _ => bail!("unexpected line from the crash loop: {line:?}"),
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.tarballs.len() + self.packuments.len()
    }
}

fn parse_id(s: &str) -> Result<BlobId> {
    s.parse().map_err(|e| anyhow!("bad blob id {s:?}: {e}"))
}

/// A tiny deterministic generator (splitmix64), so a failing trial can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Checks the store in `dir` as a restarting node finds it. `verified` holds blob files already
/// hashed in earlier rounds (blobs are immutable, so each is hashed once); it grows.
fn check_store(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    acked: &Acked,
    verified: &mut HashSet<PathBuf>,
) -> Result<(usize, usize)> {
    // Before the audit (which repairs the index): no entry may name a missing blob, i.e. the
    // crash never left one behind (the audit would hide it).
    let blob_path = |id: &BlobId| {
        dir.join("blobs")
            .join(format!("{:02x}", id.digest()[0]))
            .join(id.to_string())
    };
    {
        let index = Index::open(&dir.join("db"), open_registry_node::clock::Clock::system())
            .map_err(|e| anyhow!("index: {e}"))?;
        for (key, id) in index.tarball_entries()? {
            ensure!(
                blob_path(&id).is_file(),
                "dangling tarball entry {} → {id}",
                String::from_utf8_lossy(&key)
            );
        }
        for (name, e) in index.packument_entries()? {
            ensure!(
                blob_path(&e.id).is_file(),
                "dangling packument entry {name} → {}",
                e.id
            );
        }
    }
    let store = rt
        .block_on(Store::open(dir, open_registry_node::clock::Clock::system()))
        .map_err(|e| anyhow!("the store does not open after a crash: {e}"))?;
    let store = std::sync::Arc::new(store);
    let tmp = std::fs::read_dir(dir.join("tmp"))?.count();
    ensure!(tmp == 0, "{tmp} files left in tmp/ after open");
    // A crash is never a clean shutdown: the start owes an audit (unless the crash came before
    // the database existed), and after it the ledger's totals are exactly what the blob
    // directory holds.
    if store.needs_audit() {
        rt.block_on(store.audit())
            .map_err(|e| anyhow!("the audit after a crash failed: {e}"))?;
    }
    let listed = store.blobs.list()?;
    let (bytes, files) = (
        listed.iter().map(|(_, len)| len).sum::<u64>(),
        listed.len() as u64,
    );
    ensure!(
        store.blobs.usage() == (bytes, files),
        "after the audit the ledger says {:?}, the blob directory holds ({bytes}, {files})",
        store.blobs.usage()
    );

    // Every blob file's bytes hash to its name, in the right shard.
    let mut new = 0;
    for shard in std::fs::read_dir(dir.join("blobs"))? {
        let shard = shard?;
        for f in std::fs::read_dir(shard.path())? {
            let path = f?.path();
            if verified.contains(&path) {
                continue;
            }
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| anyhow!("odd file {}", path.display()))?;
            let id = parse_id(name)?;
            ensure!(
                path == blob_path(&id),
                "{} is in the wrong shard",
                path.display()
            );
            let bytes = std::fs::read(&path)?;
            ensure!(
                BlobId::of(&bytes) == id,
                "blob {id} holds {} bytes that hash to {}",
                bytes.len(),
                BlobId::of(&bytes)
            );
            verified.insert(path);
            new += 1;
        }
    }

    // Everything acknowledged is there, exactly as acknowledged.
    for ((name, file), id) in &acked.tarballs {
        let n = PackageName::parse(name)?;
        let got = store.index.tarball(&n, file)?;
        ensure!(
            got == Some(*id),
            "acknowledged tarball {name}/{file} → {id} is {got:?} after the crash"
        );
        ensure!(store.blobs.contains(id), "acknowledged blob {id} is gone");
    }
    for (name, id) in &acked.packuments {
        let n = PackageName::parse(name)?;
        let got = store.index.packument(&n)?.map(|e| e.id);
        ensure!(
            got == Some(*id),
            "acknowledged packument {name} → {id} is {got:?} after the crash"
        );
        ensure!(store.blobs.contains(id), "acknowledged blob {id} is gone");
    }
    let (packuments, tarballs) = store.index.counts();
    Ok((new, (packuments + tarballs) as usize))
}

/// Runs the crash loop once: spawn, wait for `ready` (or not), kill after `delay`, and return
/// what it acknowledged and whether the kill landed after `ready`.
fn crash_once(
    bin: &Path,
    dir: &Path,
    seed: u64,
    wait_ready: bool,
    delay: Duration,
) -> Result<(Acked, bool)> {
    let mut child = process::own_group(&mut Command::new(bin))
        .arg(dir)
        .arg(seed.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    let mut out = BufReader::new(child.stdout.take().context("no stdout")?);
    let mut acked = Acked::default();
    let mut line = String::new();
    if wait_ready {
        // A store that never finishes opening must fail the test, not hang it.
        let (done, watchdog) = std::sync::mpsc::channel::<()>();
        let pid = child.id();
        let dog = thread::spawn(move || {
            if watchdog.recv_timeout(READY_TIMEOUT).is_err() {
                process::signal_group(pid, "KILL");
                return true;
            }
            false
        });
        out.read_line(&mut line)?;
        let _ = done.send(());
        let hung = dog.join().map_err(|_| anyhow!("the watchdog panicked"))?;
        ensure!(
            !hung,
            "seed {seed}: the store did not open within {READY_TIMEOUT:?}"
        );
        if line.trim() != "ready" {
            let err = stderr_of(&mut child);
            bail!("seed {seed}: expected `ready`, got {line:?}; stderr: {err}");
        }
    }
    thread::sleep(delay);
    child.kill().context("SIGKILL")?;
    let status = child.wait()?;
    // The pipe keeps what was written before the kill.
    let mut ready = wait_ready;
    for l in out.lines() {
        let l = l?;
        ready |= l == "ready";
        acked.line(&l)?;
    }
    if status.code().is_some() {
        // It exited on its own before the kill: an error, not a crash.
        bail!(
            "seed {seed}: the crash loop exited with {status}: {}",
            stderr_of(&mut child)
        );
    }
    Ok((acked, ready))
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut s);
    }
    s
}

/// Counts over a run of crashes.
#[derive(Debug, Default)]
struct Tally {
    mid_ingest: u64,
    during_open: u64,
    acks: usize,
    blobs: usize,
    entries: usize,
}

/// `trials` crashes in one fresh data dir, each followed by the checks; then every blob is
/// hashed once more.
fn crash_epoch(bin: &Path, epoch: u64, trials: u64) -> Result<Tally> {
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rng = Rng(0x5eed_0011 ^ epoch);
    let mut all = Acked::default();
    let mut verified = HashSet::new();
    let mut tally = Tally::default();
    for trial in 0..trials {
        // One round in twenty is killed without waiting for `ready`: during open.
        let wait_ready = !rng.next().is_multiple_of(20);
        let delay = Duration::from_millis(rng.next() % (MAX_DELAY_MS + 1));
        let seed = epoch * trials + trial;
        let (acked, ready) = crash_once(bin, dir.path(), seed, wait_ready, delay)
            .with_context(|| format!("run {seed}"))?;
        if ready {
            tally.mid_ingest += 1;
        } else {
            tally.during_open += 1;
        }
        tally.acks += acked.len();
        all.tarballs.extend(acked.tarballs);
        all.packuments.extend(acked.packuments);
        check_store(&rt, dir.path(), &all, &mut verified).with_context(|| {
            format!(
                "after run {seed} (killed {delay:?} after {})",
                if wait_ready { "ready" } else { "spawn" }
            )
        })?;
    }
    // A last pass hashes every blob again, not only the new ones.
    let (blobs, entries) = check_store(&rt, dir.path(), &all, &mut HashSet::new())?;
    tally.blobs = blobs;
    tally.entries = entries;
    Ok(tally)
}

/// R11: 1000 SIGKILLs at random moments of ingest (one in twenty during start-up),
/// each followed by the checks a restarting node relies on. State accumulates over the
/// [`TRIALS_PER_DIR`] crashes of one data dir, so later runs crash on top of earlier crashes;
/// a fresh dir after that keeps each check (which, like the node's start, is linear in the
/// store's size) fast.
#[test]
fn r11_sigkill_during_ingest_never_corrupts_or_loses_acknowledged_writes() -> Result<()> {
    let _serial = one_at_a_time();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_open-registry-crashloop"));
    let start = Instant::now();
    let mut total = Tally::default();
    for e in 0..TRIALS / TRIALS_PER_DIR {
        let t = crash_epoch(&bin, e, TRIALS_PER_DIR).with_context(|| format!("data dir {e}"))?;
        total.mid_ingest += t.mid_ingest;
        total.during_open += t.during_open;
        total.acks += t.acks;
        total.blobs += t.blobs;
        total.entries += t.entries;
    }
    ensure!(total.mid_ingest + total.during_open == TRIALS);
    ensure!(
        total.acks > TRIALS as usize,
        "only {} writes were acknowledged in {TRIALS} runs: the kills did not land mid-ingest",
        total.acks
    );
    say(&format!(
        "{TRIALS} SIGKILLs ({} mid-ingest, {} during open) in {:.1}s: {} acknowledged writes all \
         present, {} blobs all match their ids, {} index entries none dangling",
        total.mid_ingest,
        total.during_open,
        start.elapsed().as_secs_f64(),
        total.acks,
        total.blobs,
        total.entries,
    ));
    Ok(())
}

/// Rounds of the real-node crash test.
const NODE_ROUNDS: u64 = 5;
/// Packages offered for pinning per round (more than a round has time for).
const PINS_PER_ROUND: usize = 60;
/// Pins in flight at once; each lane pins its packages one after another.
const PIN_LANES: usize = 3;

/// One admin pin: `(name, file, id)` once the node acknowledged it, `None` if it did not.
async fn pin(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    p: &Published,
) -> Option<(String, String, String)> {
    let r = client
        .post(format!("{base}/-/open-registry/admin/pin"))
        .bearer_auth(token)
        .json(&serde_json::json!({"name": p.name, "version": p.version}))
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    let v: serde_json::Value = r.json().await.ok()?;
    Some((
        p.name.clone(),
        v["file"].as_str()?.to_owned(),
        v["id"].as_str()?.to_owned(),
    ))
}

/// R11 against the real node: `open-registry start` is SIGKILLed at a random moment while
/// admin pins (each answered only once the package is fetched, verified, stored and pinned)
/// and tarball GETs make it ingest. After each crash the same checks run on its data dir and
/// the node restarts on it; at the end, with the upstream gone, every pin the node
/// acknowledged is still listed and served byte for byte.
#[test]
fn r11_sigkill_of_the_node_mid_ingest_keeps_every_acknowledged_pin() -> Result<()> {
    let _serial = one_at_a_time();
    let up = FakeUpstream::start()?;
    let total = NODE_ROUNDS as usize * PINS_PER_ROUND;
    let mut published = Vec::with_capacity(total);
    for i in 0..total {
        let size = (64 + i % 7 * 64) << 10;
        published
            .push(up.publish(&PackageSpec::new(&format!("or-r11-{i}"), "1.0.0").big_file(size))?);
    }
    // A little latency on every upstream answer spreads each round's pins over the time the
    // kill can land in.
    up.set_fault(Target::All, Fault::Delay(Duration::from_millis(5)));
    let dir = tempfile::tempdir()?;
    let mut node = NodeProcess::builder()
        .data_dir(dir.path())
        .args(["--upstream", up.url()])
        .start()?;
    let check_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rt = probe::runtime()?;
    let client = probe::client(Duration::from_secs(30))?;
    let mut rng = Rng(0x0de_0011);
    let mut acked = Acked::default();
    let mut verified = HashSet::new();
    let (mut cut, mut mid) = (0, 0);
    for round in 0..NODE_ROUNDS {
        let token = std::fs::read_to_string(dir.path().join("admin.token"))?;
        let token = token.trim().to_owned();
        let base = node.gateway.clone();
        let batch = published[round as usize * PINS_PER_ROUND..][..PINS_PER_ROUND].to_vec();
        let mut lanes = Vec::new();
        for lane in 0..PIN_LANES {
            let (client, base, token) = (client.clone(), base.clone(), token.clone());
            let mine: Vec<Published> = batch
                .iter()
                .skip(lane)
                .step_by(PIN_LANES + 1)
                .cloned()
                .collect();
            lanes.push(rt.spawn(async move {
                let mut done = Vec::new();
                for p in &mine {
                    match pin(&client, &base, &token, p).await {
                        Some(a) => done.push(a),
                        None => return (done, true),
                    }
                }
                (done, false)
            }));
        }
        // Plain npm-style traffic caches tarballs besides: the last lane's share.
        let gets: Vec<String> = batch
            .iter()
            .skip(PIN_LANES)
            .step_by(PIN_LANES + 1)
            .map(|p| format!("{base}{}", p.tarball_path))
            .collect();
        let load = {
            let client = client.clone();
            rt.spawn(async move {
                for url in gets {
                    if client.get(url).send().await.is_err() {
                        return;
                    }
                }
            })
        };
        let delay = 50 + rng.next() % 200;
        thread::sleep(Duration::from_millis(delay));
        node.kill();
        let mut done = 0;
        for lane in lanes {
            let (acks, interrupted) = rt.block_on(lane)?;
            done += acks.len();
            cut += usize::from(interrupted);
            for (name, file, id) in acks {
                acked.tarballs.insert((name, file), parse_id(&id)?);
            }
        }
        rt.block_on(load)?;
        mid += usize::from(done > 0);
        say(&format!(
            "node round {round}: SIGKILL after {delay} ms, {done} pins acknowledged"
        ));
        check_store(&check_rt, dir.path(), &acked, &mut verified)
            .with_context(|| format!("the node's data dir after round {round}"))?;
        node.restart()?;
    }
    ensure!(
        mid > 0 && cut > 0,
        "the kills landed before any pin ({mid} rounds acknowledged some) or after all of them ({cut} pins cut short)"
    );

    // Every acknowledged pin survives the crashes: listed, and served with no upstream.
    up.down();
    node.restart()?;
    let pins = probe::json(&node.get("/-/open-registry/pins", &[])?)?;
    for ((name, file), id) in &acked.tarballs {
        ensure!(
            pins["pins"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == name.as_str()),
            "acknowledged pin {name} is not in the pin list: {pins}"
        );
        let r = node.get(&format!("/{name}"), &[])?;
        ensure!(
            r.status == 200,
            "packument of pinned {name}: {} {}",
            r.status,
            r.text()
        );
        let r = node.get(&format!("/{name}/-/{file}"), &[])?;
        ensure!(
            r.status == 200,
            "pinned {name}/{file}: {} {}",
            r.status,
            r.text()
        );
        ensure!(
            BlobId::of(&r.body) == *id,
            "pinned {name}/{file}: the bytes changed"
        );
    }
    say(&format!(
        "{NODE_ROUNDS} SIGKILLs of the node: {} acknowledged pins all listed and served with the \
         upstream down; {cut} pins in flight at a kill left nothing dangling",
        acked.tarballs.len()
    ));
    Ok(())
}
