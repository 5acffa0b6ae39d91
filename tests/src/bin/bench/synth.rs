//! Synthetic but realistic registry content, published into a FakeUpstream:
//!
//! - packuments of a chosen abbreviated size: many versions shaped like real npm manifests
//!   (dependencies, devDependencies, engines, scripts, repository, maintainers, signed `dist`
//!   with incompressible integrity/shasum/signatures), so the gzip ratio is close to real ones
//!   (docs/benchmarks.md's reference figures: 4.8 KB → 1.3 KB, 111 KB → 20 KB, 2.1 MB → 450 KB);
//! - tarballs of a chosen size (incompressible content, as a `.tgz` is);
//! - a dependency graph of a few hundred packages for `npm ci` (B3).
//!
//! Everything is seeded: the same run publishes the same bytes.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use open_registry_tests::fixtures::pseudo_random_bytes;
use open_registry_tests::{FakeUpstream, PackageSpec, Published, Tarball};
use serde_json::{Value, json};

/// xorshift64*: small, seeded, good enough for shapes.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub(crate) fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.next() as usize % xs.len()]
    }
}

pub(crate) const WORDS: &[&str] = &[
    "ansi",
    "array",
    "async",
    "babel",
    "buffer",
    "cache",
    "chalk",
    "color",
    "core",
    "debug",
    "deep",
    "define",
    "emitter",
    "escape",
    "event",
    "fast",
    "fs",
    "function",
    "glob",
    "graceful",
    "has",
    "http",
    "inherits",
    "is",
    "json",
    "kind",
    "lodash",
    "merge",
    "mime",
    "minimatch",
    "ms",
    "node",
    "object",
    "once",
    "parse",
    "path",
    "promise",
    "readable",
    "regex",
    "resolve",
    "safe",
    "semver",
    "signal",
    "source",
    "stream",
    "string",
    "strip",
    "supports",
    "through",
    "type",
    "util",
    "which",
    "wrap",
    "yargs",
];

fn word_name(rng: &mut Rng) -> String {
    let n = rng.range(1, 3);
    let parts: Vec<&str> = (0..n).map(|_| *rng.pick(WORDS)).collect();
    parts.join("-")
}

fn semver_range(rng: &mut Rng) -> String {
    let (ma, mi, pa) = (rng.range(0, 12), rng.range(0, 30), rng.range(0, 20));
    match rng.range(0, 5) {
        0 => format!("~{ma}.{mi}.{pa}"),
        1 => format!("{ma}.{mi}.{pa}"),
        2 => format!(">={ma}.{mi}.{pa} <{}.0.0", ma + 1),
        _ => format!("^{ma}.{mi}.{pa}"),
    }
}

fn deps(rng: &mut Rng, lo: u64, hi: u64) -> BTreeMap<String, String> {
    let n = rng.range(lo, hi);
    (0..n)
        .map(|_| (word_name(rng), semver_range(rng)))
        .collect()
}

/// A version manifest as publishers send it (the registry adds `_id` and `dist`): the fields
/// the abbreviated form keeps, plus the ones it drops (about half of a real full document).
///
/// As in real packuments, consecutive versions mostly repeat each other (same dependencies,
/// same metadata; ranges move now and then), so what does not compress is mainly `dist`: the
/// integrity, shasum and signature of each version.
pub(crate) fn manifest(name: &str, version: &str, rng: &mut Rng) -> Value {
    // The package's shape comes from its name; the version only nudges it.
    let mut shape = Rng::new(name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }));
    let mut dependencies = deps(&mut shape, 1, 6);
    let dev = deps(&mut shape, 3, 9);
    if rng.chance(30)
        && let Some((_, range)) = dependencies.iter_mut().next()
    {
        *range = semver_range(rng);
    }
    let user = word_name(&mut shape);
    let gh = hex::encode(pseudo_random_bytes(rng.next(), 20));
    let mut m = json!({
        "name": name,
        "version": version,
        "description": format!("{} {} for {}", word_name(&mut shape), word_name(&mut shape), name),
        "main": "index.js",
        "license": "MIT",
        "keywords": [word_name(&mut shape), word_name(&mut shape), word_name(&mut shape)],
        "author": {"name": user, "email": format!("{user}@example.org")},
        "repository": {"type": "git", "url": format!("git+https://git.example.org/{name}.git")},
        "bugs": {"url": format!("https://git.example.org/{name}/issues")},
        "homepage": format!("https://git.example.org/{name}#readme"),
        "scripts": {"test": "node test.js", "build": "tsc -p .", "lint": "eslint ."},
        "dependencies": dependencies,
        "devDependencies": dev,
        "engines": {"node": format!(">={}", shape.range(8, 18))},
        "gitHead": gh,
        "_npmVersion": format!("{}.{}.{}", shape.range(6, 10), shape.range(0, 20), rng.range(0, 5)),
        "_nodeVersion": format!("{}.{}.{}", shape.range(12, 22), shape.range(0, 20), rng.range(0, 5)),
        "_npmUser": {"name": user, "email": format!("{user}@example.org")},
        "maintainers": [{"name": user, "email": format!("{user}@example.org")}],
        "directories": {},
        "_hasShrinkwrap": false,
    });
    if shape.chance(10) {
        m["peerDependencies"] = json!(deps(&mut shape, 1, 2));
    }
    if shape.chance(5) {
        m["bin"] = json!({ name.rsplit('/').next().unwrap_or(name): "cli.js" });
    }
    m
}

/// Publishes `name` with `count` versions (`1.0.0`, `1.0.1`, ...; the last is `latest`), each
/// with a small stand-in tarball (random bytes: these benchmarks never download them).
pub(crate) fn publish_versions(
    up: &FakeUpstream,
    name: &str,
    from: usize,
    count: usize,
    rng: &mut Rng,
) -> Result<()> {
    for i in from..from + count {
        let version = format!("{}.{}.{}", 1 + i / 400, (i / 20) % 20, i % 20);
        let tarball = Tarball::from_bytes(pseudo_random_bytes(rng.next(), 64));
        let file = format!("{}-{version}.tgz", name.rsplit('/').next().unwrap_or(name));
        up.add_version(
            manifest(name, &version, rng),
            tarball,
            &file,
            Some("latest"),
        )?;
    }
    Ok(())
}

/// Publishes a package whose abbreviated packument is about `target` bytes; returns the number
/// of versions.
pub(crate) fn publish_sized(
    up: &FakeUpstream,
    name: &str,
    target: usize,
    rng: &mut Rng,
) -> Result<usize> {
    let probe = 4.min(target / 1000).max(1);
    publish_versions(up, name, 0, probe, rng)?;
    let size = |up: &FakeUpstream| -> Result<usize> {
        let doc = up
            .packument(name)
            .ok_or_else(|| anyhow::anyhow!("{name} was not published"))?;
        Ok(serde_json::to_vec(&open_registry_protocol::packument::abbreviate(&doc))?.len())
    };
    let first = size(up)?;
    let per = (first / probe).max(1);
    let mut count = probe;
    if target > first {
        let more = (target - first).div_ceil(per);
        publish_versions(up, name, count, more, rng)?;
        count += more;
    }
    Ok(count)
}

/// Publishes `name@1.0.0` with a tarball of about `bytes` bytes (mostly incompressible).
pub(crate) fn publish_tarball(up: &FakeUpstream, name: &str, bytes: usize) -> Result<Published> {
    // The tar and gzip framing adds a little; aim under the target.
    let spec = PackageSpec::new(name, "1.0.0").big_file(bytes.saturating_sub(700));
    up.publish(&spec)
}

/// A generated dependency graph, published: the root project's dependencies.
#[derive(Debug, Clone)]
pub(crate) struct Graph {
    pub(crate) root_deps: Vec<(String, String)>,
    pub(crate) packages: usize,
    pub(crate) versions: usize,
    pub(crate) tarball_bytes: u64,
}

/// Publishes `packages` packages `b3-<word>-<i>` forming a DAG: the root depends on `roots` of
/// them; every other package is depended on by at least one earlier package; about one in six
/// has a second major version, both majors in use, so npm nests duplicates as in real trees.
/// Installed versions carry tarballs of 2–200 KB (median ~20 KB); older versions get tiny ones;
/// each package also has a history of 0 to ~250 pre-1.0 versions, so packuments have real sizes.
pub(crate) fn publish_graph(
    up: &FakeUpstream,
    packages: usize,
    roots: usize,
    rng: &mut Rng,
) -> Result<Graph> {
    publish_graph_sized(up, packages, roots, rng, tarball_size)
}

/// [`publish_graph`] with the installed versions' tarball sizes drawn by `size` instead of
/// 2–200 KB log-uniform.
pub(crate) fn publish_graph_sized(
    up: &FakeUpstream,
    packages: usize,
    roots: usize,
    rng: &mut Rng,
    size: fn(&mut Rng) -> usize,
) -> Result<Graph> {
    let names: Vec<String> = (0..packages)
        .map(|i| format!("b3-{}-{i}", rng.pick(WORDS)))
        .collect();
    let majors: Vec<u64> = (0..packages)
        .map(|_| if rng.chance(16) { 2 } else { 1 })
        .collect();
    // Edges i → j (i < j) with the major of j each depends on.
    let mut deps: Vec<BTreeMap<usize, u64>> = vec![BTreeMap::new(); packages];
    for (j, &major) in majors.iter().enumerate().skip(roots.min(packages)) {
        let parent = rng.range(0, j as u64 - 1) as usize;
        deps[parent].insert(j, rng.range(1, major));
    }
    for (i, d) in deps.iter_mut().enumerate() {
        let extra = rng.range(0, 3);
        for _ in 0..extra {
            if i + 1 >= packages {
                break;
            }
            let j = rng.range(i as u64 + 1, packages as u64 - 1) as usize;
            d.entry(j).or_insert_with(|| rng.range(1, majors[j]));
        }
    }
    let mut used_majors: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); packages];
    let mut root_deps = Vec::new();
    for i in 0..roots.min(packages) {
        let m = rng.range(1, majors[i]);
        used_majors[i].insert(m);
        root_deps.push((names[i].clone(), format!("^{m}.0.0")));
    }
    for d in &deps {
        for (&j, &m) in d {
            used_majors[j].insert(m);
        }
    }
    let (mut versions, mut tarball_bytes) = (0, 0u64);
    for i in 0..packages {
        // A history of pre-1.0 releases first, as long as real packages' (log-uniform, 0 to
        // ~250 versions): it makes packuments of realistic size (median ~15 KB, some
        // ~250 KB). No range of the graph matches them, so their stand-in tarballs are never
        // downloaded.
        let history = (256f64.powf(rng.next() as f64 / u64::MAX as f64) - 1.0) as usize;
        for h in 0..history {
            let version = format!("0.{}.{}", h / 20, h % 20);
            let tarball = Tarball::from_bytes(pseudo_random_bytes(rng.next(), 64));
            let file = format!("{}-{version}.tgz", names[i]);
            up.add_version(manifest(&names[i], &version, rng), tarball, &file, None)?;
            versions += 1;
        }
        let minors = rng.range(1, 6);
        for major in 1..=majors[i] {
            for minor in 0..minors {
                let version = format!("{major}.{minor}.0");
                let newest = minor + 1 == minors;
                let mut spec = PackageSpec::new(&names[i], &version);
                for (&j, &m) in &deps[i] {
                    spec = spec.dep(&names[j], &format!("^{m}.0.0"));
                }
                if newest && used_majors[i].contains(&major) {
                    spec = spec.big_file(size(rng));
                }
                let tarball = spec.tarball()?;
                tarball_bytes += tarball.bytes.len() as u64;
                let mut m = spec.manifest();
                if let Value::Object(extra) = manifest(&names[i], &version, rng) {
                    for (k, v) in extra {
                        // Peer dependencies and bins of made-up names would break the install.
                        if !matches!(
                            k.as_str(),
                            "dependencies"
                                | "peerDependencies"
                                | "bin"
                                | "main"
                                | "name"
                                | "version"
                        ) {
                            m[k] = v;
                        }
                    }
                }
                up.add_version(m, tarball, &spec.tarball_file(), Some("latest"))?;
                versions += 1;
            }
        }
    }
    Ok(Graph {
        root_deps,
        packages,
        versions,
        tarball_bytes,
    })
}

/// Log-uniform 2 KB .. 200 KB.
fn tarball_size(rng: &mut Rng) -> usize {
    let x = rng.next() as f64 / u64::MAX as f64;
    (2_000.0 * 100f64.powf(x)) as usize
}

/// A full packument written straight as JSON text, for documents of many megabytes (B8):
/// building them as `serde_json::Value` trees would cost seconds and several times their size
/// in memory.
#[derive(Debug)]
pub(crate) struct BigPackument {
    /// The document, as served.
    pub(crate) body: Vec<u8>,
    pub(crate) versions: usize,
    /// The `latest` dist-tag: a version without dependencies, with a real tarball.
    pub(crate) latest: String,
    /// The latest version's tarball (file name, bytes). The other versions' `dist` entries
    /// point at files that are never downloaded (and not served).
    pub(crate) tarball: (String, Vec<u8>),
}

/// `n` characters of base64 from `rng` (integrities, signatures: incompressible as real ones).
fn push_b64(out: &mut String, rng: &mut Rng, n: usize) {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut left = n;
    while left > 0 {
        let mut x = rng.next();
        for _ in 0..left.min(10) {
            out.push(char::from(B64[(x & 63) as usize]));
            x >>= 6;
        }
        left -= left.min(10);
    }
}

/// `n` hex digits from `rng`.
fn push_hex(out: &mut String, rng: &mut Rng, n: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut left = n;
    while left > 0 {
        let mut x = rng.next();
        for _ in 0..left.min(16) {
            out.push(char::from(HEX[(x & 15) as usize]));
            x >>= 4;
        }
        left -= left.min(16);
    }
}

/// `{"a":"^1.2.3","b":"~0.4.0"}`.
fn push_map(out: &mut String, entries: &[(String, String)]) {
    use std::fmt::Write as _;
    out.push('{');
    for (i, (k, v)) in entries.iter().enumerate() {
        let _ = write!(out, "{}\"{k}\":\"{v}\"", if i == 0 { "" } else { "," });
    }
    out.push('}');
}

/// A markdown readme of about `n` bytes, JSON-escaped (newlines as `\n`).
fn push_readme(out: &mut String, name: &str, rng: &mut Rng, n: usize) {
    use std::fmt::Write as _;
    let start = out.len();
    let _ = write!(out, "# {name}\\n\\n");
    let mut section = 0;
    while out.len() - start < n {
        match rng.range(0, 9) {
            0 => {
                section += 1;
                let _ = write!(out, "\\n## {} {section}\\n\\n", word_name(rng));
            }
            1 => {
                let _ = write!(
                    out,
                    "```js\\nconst {} = require('{name}');\\n{}({{ {}: true }});\\n```\\n\\n",
                    word_name(rng).replace('-', "_"),
                    word_name(rng).replace('-', "_"),
                    rng.pick(WORDS)
                );
            }
            _ => {
                for _ in 0..rng.range(8, 40) {
                    let w: &&str = rng.pick(WORDS);
                    out.push_str(w);
                    out.push(' ');
                }
                out.push_str("\\n\\n");
            }
        }
    }
}

/// Generates `name`'s full packument of about `target` bytes (never less than one version):
/// as many versions as fit, shaped like the largest real packuments — thousands of versions,
/// each manifest with scripts, dependencies and a long devDependencies list that drift from
/// version to version, a signed `dist`; about a third of the releases preceded by `-dev.N`
/// prereleases; a `time` entry per version; a readme (target / 25, up to 1 MB) and `users` in
/// the root. Tarball URLs point at `base_url`. The last version (`latest`) has no dependencies
/// and a real tarball, so `npm install name@^latest` works.
pub(crate) fn big_packument(
    base_url: &str,
    name: &str,
    target: usize,
    rng: &mut Rng,
) -> Result<BigPackument> {
    use std::fmt::Write as _;
    let mut shape = Rng::new(name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }));
    let file_base = name.rsplit('/').next().unwrap_or(name);
    let user = word_name(&mut shape);
    let person = format!(r#"{{"name":"{user}","email":"{user}@example.org"}}"#);
    let description = format!(
        "{} {} for {name}",
        word_name(&mut shape),
        word_name(&mut shape)
    );
    let keywords: Vec<String> = (0..shape.range(3, 8))
        .map(|_| format!("\"{}\"", word_name(&mut shape)))
        .collect();
    let keywords = format!("[{}]", keywords.join(","));
    let repo = format!(r#"{{"type":"git","url":"git+https://git.example.org/{name}.git"}}"#);
    let bugs = format!(r#"{{"url":"https://git.example.org/{name}/issues"}}"#);
    let homepage = format!("https://git.example.org/{name}#readme");

    // The root's other fields, written first to know their size.
    let mut tail = String::new();
    let _ = write!(
        tail,
        r#","maintainers":[{person}],"description":"{description}","homepage":"{homepage}","keywords":{keywords},"repository":{repo},"author":{person},"bugs":{bugs},"license":"MIT","readme":""#
    );
    push_readme(
        &mut tail,
        name,
        &mut shape,
        (target / 25).clamp(1_000, 1_000_000),
    );
    tail.push_str(r#"","readmeFilename":"README.md","users":{"#);
    for i in 0..(target / 2_000).min(5_000) {
        let _ = write!(
            tail,
            "{}\"{}{i}\":true",
            if i == 0 { "" } else { "," },
            word_name(&mut shape)
        );
    }
    tail.push_str("}}");

    let mut dev: Vec<(String, String)> = (0..shape.range(8, 20))
        .map(|_| (word_name(&mut shape), semver_range(&mut shape)))
        .collect();
    let mut deps: Vec<(String, String)> = (0..shape.range(0, 5))
        .map(|_| (word_name(&mut shape), semver_range(&mut shape)))
        .collect();
    let mut versions = String::with_capacity(target + (64 << 10));
    let mut time = String::with_capacity(target / 40);
    let (mut secs, mut count, mut stable, mut dev_n) = (1_400_000_000u64, 0usize, 0usize, 0usize);
    let mut next_tag = None;
    let stable_version = |s: usize| format!("{}.{}.{}", 1 + s / 300, (s / 20) % 15, s % 20);
    let latest_tarball;
    let latest;
    loop {
        let room = versions.len() + time.len() + tail.len() + 400 < target;
        let last = !room || count == 0 && target < 4_000;
        let (version, prerelease) = if !last && rng.chance(30) {
            dev_n += 1;
            (format!("{}-dev.{dev_n}", stable_version(stable)), true)
        } else {
            stable += 1;
            (stable_version(stable - 1), false)
        };
        // The shape drifts: a range moves, a devDependency comes or goes.
        if rng.chance(10) && !dev.is_empty() {
            let i = rng.range(0, dev.len() as u64 - 1) as usize;
            dev[i].1 = semver_range(rng);
        }
        if rng.chance(3) && dev.len() < 45 {
            dev.push((word_name(rng), semver_range(rng)));
        }
        if rng.chance(1) && dev.len() > 4 {
            dev.remove(0);
        }
        if rng.chance(5) && !deps.is_empty() {
            let i = rng.range(0, deps.len() as u64 - 1) as usize;
            deps[i].1 = semver_range(rng);
        }
        if count > 0 {
            versions.push(',');
            time.push(',');
        }
        let file = format!("{file_base}-{version}.tgz");
        let _ = write!(
            versions,
            r#""{version}":{{"name":"{name}","version":"{version}","description":"{description}","main":"index.js","types":"index.d.ts","license":"MIT","keywords":{keywords},"author":{person},"repository":{repo},"bugs":{bugs},"homepage":"{homepage}","scripts":{{"build":"tsc -p tsconfig.build.json","test":"jest --coverage","lint":"eslint src --ext .ts","prepublishOnly":"npm run build","format":"prettier --write src","bench":"node bench/index.js"}},"#
        );
        let (integrity, shasum, tarball) = if last {
            let spec = PackageSpec::new(name, &version);
            let t = spec.tarball()?;
            (
                t.integrity.clone(),
                t.shasum.clone(),
                Some((file.clone(), t.bytes)),
            )
        } else {
            versions.push_str(r#""dependencies":"#);
            push_map(&mut versions, &deps);
            versions.push(',');
            let mut i = String::from("sha512-");
            push_b64(&mut i, rng, 86);
            i.push_str("==");
            let mut s = String::new();
            push_hex(&mut s, rng, 40);
            (i, s, None)
        };
        versions.push_str(r#""devDependencies":"#);
        push_map(&mut versions, &dev);
        let _ = write!(
            versions,
            r#","engines":{{"node":">={}"}},"gitHead":""#,
            shape.range(12, 20)
        );
        push_hex(&mut versions, rng, 40);
        let _ = write!(
            versions,
            r#"","_id":"{name}@{version}","_nodeVersion":"{}.{}.0","_npmVersion":"{}.{}.{}","dist":{{"integrity":"{integrity}","shasum":"{shasum}","tarball":"{base_url}/{name}/-/{file}","fileCount":{},"unpackedSize":{},"signatures":[{{"keyid":"SHA256:"#,
            rng.range(14, 22),
            rng.range(0, 12),
            rng.range(6, 10),
            rng.range(0, 20),
            rng.range(0, 5),
            rng.range(5, 400),
            rng.range(10_000, 5_000_000),
        );
        push_b64(&mut versions, rng, 43);
        versions.push_str(r#"","sig":"MEUCI"#);
        push_b64(&mut versions, rng, 91);
        let _ = write!(
            versions,
            r#""}}]}},"_npmUser":{person},"directories":{{}},"maintainers":[{person}],"_npmOperationalInternal":{{"host":"s3://packages","tmp":"tmp/{file_base}_{version}_{}_0.{}"}},"_hasShrinkwrap":false}}"#,
            secs * 1000,
            rng.range(100_000, 999_999)
        );
        secs += rng.range(3_600, 5 * 86_400);
        let _ = write!(
            time,
            "\"{version}\":\"{}\"",
            open_registry_tests::upstream::iso_time(secs, rng.range(0, 999) as u32)
        );
        count += 1;
        if prerelease {
            next_tag = Some(version);
        } else if last {
            latest = version;
            latest_tarball = tarball;
            break;
        }
    }
    let Some(tarball) = latest_tarball else {
        anyhow::bail!("no tarball for the latest version of {name}");
    };
    let mut body = String::with_capacity(versions.len() + time.len() + tail.len() + 512);
    let _ = write!(body, r#"{{"_id":"{name}","_rev":"{count}-"#);
    push_hex(&mut body, rng, 32);
    let _ = write!(
        body,
        r#"","name":"{name}","dist-tags":{{"latest":"{latest}""#
    );
    if let Some(next) = &next_tag {
        let _ = write!(body, r#","next":"{next}""#);
    }
    body.push_str(r#"},"versions":{"#);
    body.push_str(&versions);
    drop(versions);
    let _ = write!(
        body,
        r#"}},"time":{{"created":"{}","modified":"{}","#,
        open_registry_tests::upstream::iso_time(1_400_000_000, 0),
        open_registry_tests::upstream::iso_time(secs, 0)
    );
    body.push_str(&time);
    body.push('}');
    body.push_str(&tail);
    Ok(BigPackument {
        body: body.into_bytes(),
        versions: count,
        latest,
        tarball,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_packuments_are_json_of_the_size_asked() -> Result<()> {
        for target in [2_000, 50_000, 400_000] {
            let p = big_packument("http://127.0.0.1:1", "big-doc", target, &mut Rng::new(8))?;
            let doc: Value = serde_json::from_slice(&p.body)?;
            let n = doc["versions"].as_object().map_or(0, |v| v.len());
            assert_eq!(n, p.versions);
            assert_eq!(doc["time"].as_object().map_or(0, |t| t.len()), n + 2);
            assert_eq!(doc["dist-tags"]["latest"], json!(p.latest));
            let latest = &doc["versions"][&p.latest];
            assert!(latest.get("dependencies").is_none());
            assert!(
                latest["dist"]["tarball"]
                    .as_str()
                    .is_some_and(|t| t.ends_with(&p.tarball.0))
            );
            if target > 10_000 {
                let ratio = p.body.len() as f64 / target as f64;
                assert!((0.9..1.1).contains(&ratio), "{target}: {}", p.body.len());
            }
        }
        Ok(())
    }

    #[test]
    fn rng_is_seeded_and_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..100 {
            assert_eq!(a.next(), b.next());
            let x = a.range(3, 5);
            b.range(3, 5);
            assert!((3..=5).contains(&x));
        }
    }
}
