//! Test packages: directories for `npm publish`, and npm tarballs built in Rust.
//!
//! A [`PackageSpec`] describes one version of a package: its name, version, dependencies and an
//! optional large file of incompressible bytes (so a tarball's size is what the test asks for).
//! Its `index.js` exports `{ name, version, deps }`, where `deps` maps every dependency to the
//! version `require` found, so a test can check an installed tree by running node.
//!
//! Everything is deterministic: the same spec always yields the same bytes, so integrity
//! strings are stable across runs (npm's own pack also fixes mtimes, to 1985-10-26).

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use flate2::{Compression, write::GzEncoder};
use open_registry_protocol::Integrity;
use serde_json::{Value, json};

/// The mtime npm's packer writes into every tarball entry (1985-10-26T08:15:00Z).
const NPM_MTIME: u64 = 499_162_500;

/// One version of a test package.
#[derive(Debug, Clone)]
pub struct PackageSpec {
    /// The package name, scoped (`@scope/name`) or not.
    pub name: String,
    /// The semver version.
    pub version: String,
    /// Dependencies: name → range.
    pub dependencies: BTreeMap<String, String>,
    /// Size in bytes of `big.bin`, a file of seeded pseudo-random bytes; none when `None`.
    pub big_file: Option<usize>,
    /// Free text for `description` (search tests look for it).
    pub description: String,
}

impl PackageSpec {
    /// A package with no dependencies and no big file.
    pub fn new(name: &str, version: &str) -> Self {
        PackageSpec {
            name: name.to_owned(),
            version: version.to_owned(),
            dependencies: BTreeMap::new(),
            big_file: None,
            description: format!("open-registry test package {name}"),
        }
    }

    /// Adds a dependency on `name` at `range`.
    pub fn dep(mut self, name: &str, range: &str) -> Self {
        self.dependencies.insert(name.to_owned(), range.to_owned());
        self
    }

    /// Adds `big.bin` with `bytes` incompressible bytes.
    pub fn big_file(mut self, bytes: usize) -> Self {
        self.big_file = Some(bytes);
        self
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// The contents of `package.json`.
    pub fn manifest(&self) -> Value {
        let mut m = json!({
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "main": "index.js",
            "license": "MIT",
        });
        if !self.dependencies.is_empty() {
            m["dependencies"] = json!(self.dependencies);
        }
        m
    }

    /// The files of the package, relative to its root, in a fixed order.
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        let manifest = serde_json::to_vec_pretty(&self.manifest()).unwrap_or_default();
        let mut files = vec![
            ("package.json".to_owned(), manifest),
            ("index.js".to_owned(), self.index_js().into_bytes()),
        ];
        if let Some(n) = self.big_file {
            files.push(("big.bin".to_owned(), pseudo_random_bytes(self.seed(), n)));
        }
        files
    }

    fn index_js(&self) -> String {
        let deps: Vec<String> = self
            .dependencies
            .keys()
            .map(|d| format!("    {d:?}: require({d:?}).version,"))
            .collect();
        format!(
            "module.exports = {{\n  name: {:?},\n  version: {:?},\n  deps: {{\n{}\n  }},\n}};\n",
            self.name,
            self.version,
            deps.join("\n")
        )
    }

    /// A seed derived from name and version, so different packages get different bytes.
    fn seed(&self) -> u64 {
        self.id().bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    }

    /// Writes the package into a new directory under `parent` and returns its path.
    pub fn write_dir(&self, parent: &Path) -> Result<PathBuf> {
        let dir = parent.join(format!(
            "{}-{}",
            self.name.replace('@', "").replace('/', "__"),
            self.version
        ));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (path, bytes) in self.files() {
            fs::write(dir.join(&path), bytes)
                .with_context(|| format!("writing {}", dir.join(&path).display()))?;
        }
        Ok(dir)
    }

    /// Builds the npm tarball of this package in memory.
    pub fn tarball(&self) -> Result<Tarball> {
        Tarball::build(&self.files())
    }

    /// The tarball's file name as npm names it: `<unscoped name>-<version>.tgz`.
    pub fn tarball_file(&self) -> String {
        let unscoped = self.name.rsplit('/').next().unwrap_or(&self.name);
        format!("{unscoped}-{}.tgz", self.version)
    }
}

/// An npm tarball: gzip of a tar whose entries sit under `package/`.
#[derive(Debug, Clone)]
pub struct Tarball {
    /// The `.tgz` bytes.
    pub bytes: Vec<u8>,
    /// `sha512-<base64>`, as `dist.integrity` holds it.
    pub integrity: String,
    /// Hex sha1, as `dist.shasum` holds it.
    pub shasum: String,
}

impl Tarball {
    /// Builds a tarball from `(path, contents)` pairs; paths are relative to `package/`.
    pub fn build(files: &[(String, Vec<u8>)]) -> Result<Tarball> {
        let gz = GzEncoder::new(Vec::new(), Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (path, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(NPM_MTIME);
            header.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut header, format!("package/{path}"), bytes.as_slice())
                .with_context(|| format!("adding {path} to the tarball"))?;
        }
        let mut gz = tar.into_inner().context("finishing the tar stream")?;
        gz.flush()?;
        let bytes = gz.finish().context("finishing gzip")?;
        Ok(Tarball::from_bytes(bytes))
    }

    /// Wraps existing bytes, computing their integrity and shasum.
    pub fn from_bytes(bytes: Vec<u8>) -> Tarball {
        Tarball {
            integrity: Integrity::sha512_sri(&bytes),
            shasum: Integrity::sha1_hex(&bytes),
            bytes,
        }
    }
}

/// `len` bytes from a seeded xorshift generator: incompressible, and identical for one seed.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    // splitmix64 to spread the seed, then xorshift64*; good enough that gzip gains nothing.
    let mut x = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    if x == 0 {
        x = 1;
    }
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes a consumer project into `dir`: a private `package.json` depending on `deps`
/// (name → range), and an `.npmrc` with `omit-lockfile-registry-resolved=true`, so the lockfile
/// records no download addresses and a later `npm ci --registry OTHER` fetches from `OTHER`
/// rather than from whichever registry the lockfile was made against.
pub fn write_project(dir: &Path, deps: &[(&str, &str)]) -> Result<()> {
    fs::create_dir_all(dir)?;
    let deps: BTreeMap<&str, &str> = deps.iter().copied().collect();
    let pkg = json!({
        "name": "open-registry-consumer",
        "version": "1.0.0",
        "private": true,
        "dependencies": deps,
    });
    fs::write(dir.join("package.json"), serde_json::to_vec_pretty(&pkg)?)?;
    fs::write(dir.join(".npmrc"), "omit-lockfile-registry-resolved=true\n")?;
    Ok(())
}
