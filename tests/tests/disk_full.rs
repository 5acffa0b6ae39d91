//! R12: the store on a small tmpfs fills up. The node keeps answering, passes verified bytes
//! through without caching them, leaves no corrupt entry, and caches again once space returns.
//!
//! Mounting a tmpfs needs root (CI and these machines run tests as root); without it the test
//! fails and says so rather than passing without testing anything.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use open_registry_protocol::BlobId;
use open_registry_tests::{FakeUpstream, NodeProcess, PackageSpec};

/// A tmpfs mounted for the test (inside a temporary dir, kept alive with it), unmounted on drop.
struct Tmpfs(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("fs");
        std::fs::create_dir_all(&path)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .context("running mount")?;
        if !out.status.success() {
            bail!(
                "this test needs to mount a tmpfs (root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Tmpfs(path, dir))
    }

    fn resize(&self, size: &str) -> Result<()> {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()?;
        ensure!(out.status.success(), "remount failed");
        Ok(())
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn r12_a_full_disk_passes_verified_bytes_through_and_recovers() -> Result<()> {
    let up = FakeUpstream::start()?;
    let small = up.publish(&PackageSpec::new("df-small", "1.0.0"))?;
    // Larger than what the tmpfs has left once the node's index is there.
    let big = up.publish(&PackageSpec::new("df-big", "1.0.0").big_file(6 << 20))?;
    let fs = Tmpfs::mount("4m")?;
    let data = fs.path().join("data");
    let mut node = NodeProcess::builder()
        .data_dir(&data)
        .args(["--upstream", up.url(), "--no-p2p"])
        .start()?;

    // Room for the small one: stored.
    let r = node.get(
        &format!("/df-small/-/{}", file_of(&small.tarball_path)),
        &[],
    )?;
    ensure!(r.status == 200, "small tarball: {}", r.status);
    ensure!(
        node.counter("tarball_ingests")? == 1,
        "the small tarball was not stored"
    );

    // No room for the big one: served, verified, not stored.
    let big_file = file_of(&big.tarball_path);
    let upstream_bytes = up.tarball("df-big", &big_file).context("big tarball")?;
    let r = node.get(&format!("/df-big/-/{big_file}"), &[])?;
    ensure!(
        r.status == 200,
        "big tarball on a full disk: {} {}",
        r.status,
        r.text()
    );
    ensure!(
        r.body == upstream_bytes,
        "passed-through bytes differ from the upstream's"
    );
    ensure!(node.counter("store_errors")? >= 1, "no store error counted");
    let s = node.status()?;
    ensure!(
        s.store.tarballs == 1,
        "a tarball that did not fit is indexed: {:?}",
        s.store
    );
    let big_id = BlobId::of(&upstream_bytes);
    let r = node.get(&format!("/-/open-registry/blobs/{big_id}"), &[])?;
    ensure!(
        r.status == 404,
        "a blob that did not fit is visible under its id"
    );
    // Nothing half-written is left in the blob directory.
    for entry in walk(&data.join("blobs"))? {
        let bytes = std::fs::read(&entry)?;
        let name = entry
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        ensure!(
            BlobId::of(&bytes).to_string() == name,
            "{} does not hold the bytes its name says",
            entry.display()
        );
    }

    // A restart on the full disk still serves what was stored.
    node.stop()?;
    node.restart()?;
    let r = node.get(
        &format!("/df-small/-/{}", file_of(&small.tarball_path)),
        &[],
    )?;
    ensure!(
        r.status == 200,
        "after restart on a full disk: {}",
        r.status
    );

    // Space returns: the next request caches it.
    fs.resize("64m")?;
    let r = node.get(&format!("/df-big/-/{big_file}"), &[])?;
    ensure!(
        r.status == 200 && r.body == upstream_bytes,
        "big tarball after space returned"
    );
    let stored = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        node.status()
            .map(|s| s.store.tarballs == 2)
            .unwrap_or(false)
    });
    ensure!(stored, "the tarball was not cached once space returned");
    let r = node.get(&format!("/-/open-registry/blobs/{big_id}"), &[])?;
    ensure!(r.status == 200 && r.body == upstream_bytes, "stored blob");
    node.stop()?;
    Ok(())
}

fn file_of(path: &str) -> String {
    path.rsplit('/').next().unwrap_or_default().to_owned()
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for shard in std::fs::read_dir(dir)? {
        let shard = shard?.path();
        if shard.is_dir() {
            for f in std::fs::read_dir(&shard)? {
                out.push(f?.path());
            }
        }
    }
    Ok(out)
}
