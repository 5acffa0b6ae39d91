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

const WORDS: &[&str] = &[
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
                    spec = spec.big_file(tarball_size(rng));
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

#[cfg(test)]
mod tests {
    use super::*;

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
