//! The node's own package search: `/-/v1/search` when the upstream has none, or there is no
//! upstream (the gateway decides when; see `open_registry_gateway::search`).
//!
//! [`SearchIndex`] ranks the packages whose packuments this node stores with BM25 (the `bm25`
//! crate's in-memory engine: English tokenizing, stemming and stop words) over each package's
//! name, keywords and description; an exact name match comes first. It is kept up to date by
//! [`watch`], which follows the store's packument index, so a search never reads the store.
//!
//! Bounded: at most [`MAX_PACKAGES`] packages are indexed (more are left out, with a warning),
//! and each contributes a few hundred bytes of text at most (`summary`'s caps).

mod summary;
pub(crate) mod watch;

use std::collections::HashMap;
use std::sync::Mutex;

use bm25::{Document, Language, SearchEngine, SearchEngineBuilder};
use open_registry_gateway::{SearchHit, SearchPackage, SearchQuery, SearchResults};
use open_registry_protocol::{BlobId, PackageName};

use summary::{Summary, summarize};

/// The most packages indexed.
pub(crate) const MAX_PACKAGES: usize = 50_000;
/// The expected length of a package's text in tokens, for BM25's length normalization before
/// the corpus is known (name twice, a few keywords, a sentence of description).
const AVERAGE_TOKENS: f32 = 24.0;

/// See the module docs.
pub(crate) struct SearchIndex {
    // std Mutex: held to update or to rank, never across an await.
    inner: Mutex<Inner>,
    /// The most packages indexed ([`MAX_PACKAGES`]).
    cap: usize,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex")
            .field("packages", &self.len())
            .finish()
    }
}

struct Inner {
    engine: SearchEngine<u32>,
    ids: HashMap<PackageName, u32>,
    packages: HashMap<u32, Indexed>,
    next: u32,
    /// Whether the "index full" warning was logged.
    warned_full: bool,
}

struct Indexed {
    /// The packument revision indexed.
    revision: BlobId,
    /// What a hit shows (the ranked text lives in the engine only).
    package: SearchPackage,
}

impl Default for SearchIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl SearchIndex {
    /// An empty index.
    pub(crate) fn new() -> Self {
        Self::with_cap(MAX_PACKAGES)
    }

    /// An empty index of at most `cap` packages.
    fn with_cap(cap: usize) -> Self {
        let engine = SearchEngineBuilder::<u32>::with_avgdl(AVERAGE_TOKENS)
            .language_mode(Language::English)
            .build();
        SearchIndex {
            inner: Mutex::new(Inner {
                engine,
                ids: HashMap::new(),
                packages: HashMap::new(),
                next: 0,
                warned_full: false,
            }),
            cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Packages indexed.
    pub(crate) fn len(&self) -> usize {
        self.lock().packages.len()
    }

    /// Whether `revision` of `name` is the one indexed.
    pub(crate) fn has(&self, name: &PackageName, revision: &BlobId) -> bool {
        let inner = self.lock();
        inner
            .ids
            .get(name)
            .and_then(|id| inner.packages.get(id))
            .is_some_and(|p| p.revision == *revision)
    }

    /// Whether the index is full and `name` is not in it: indexing it would be refused, so
    /// its packument need not be read.
    pub(crate) fn full_without(&self, name: &PackageName) -> bool {
        let inner = self.lock();
        inner.packages.len() >= self.cap && !inner.ids.contains_key(name)
    }

    /// Indexes `revision` of `name` (its full packument `bytes`), replacing an older one.
    /// Parses outside the lock; `Err` says why the package cannot be indexed.
    pub(crate) fn upsert(
        &self,
        name: &PackageName,
        revision: BlobId,
        bytes: &[u8],
    ) -> Result<(), String> {
        let summary = summarize(name.as_str(), bytes)?;
        let mut inner = self.lock();
        let id = match inner.ids.get(name) {
            Some(id) => *id,
            None if inner.packages.len() >= self.cap => {
                if !inner.warned_full {
                    inner.warned_full = true;
                    tracing::warn!(
                        max = self.cap,
                        "search index full; further packages are not searchable on this node"
                    );
                }
                return Ok(());
            }
            None => {
                let id = inner.next;
                inner.next += 1;
                inner.ids.insert(name.clone(), id);
                id
            }
        };
        let Summary { package, text } = summary;
        inner.engine.upsert(Document::new(id, text));
        inner.packages.insert(id, Indexed { revision, package });
        Ok(())
    }

    /// Forgets `name`.
    pub(crate) fn remove(&self, name: &PackageName) {
        let mut inner = self.lock();
        if let Some(id) = inner.ids.remove(name) {
            inner.engine.remove(&id);
            inner.packages.remove(&id);
        }
    }

    /// One page of results for `q`, best first.
    pub(crate) fn search(&self, q: &SearchQuery) -> SearchResults {
        let text = q.text.trim();
        if text.is_empty() {
            return SearchResults::default();
        }
        let inner = self.lock();
        let mut found: Vec<(f32, &Indexed)> = inner
            .engine
            .search(text, None)
            .into_iter()
            .filter_map(|r| Some((r.score, inner.packages.get(&r.document.id)?)))
            .collect();
        // The package named exactly what was asked for first; then by relevance (the engine's
        // order), names breaking ties so that equal scores list the same way every time.
        let wanted = text.to_ascii_lowercase();
        found.sort_by(|(sa, a), (sb, b)| {
            let exact = |p: &Indexed| p.package.name != wanted;
            exact(a)
                .cmp(&exact(b))
                .then(sb.total_cmp(sa))
                .then_with(|| a.package.name.cmp(&b.package.name))
        });
        let best = found
            .iter()
            .map(|(s, _)| *s)
            .fold(f32::MIN_POSITIVE, f32::max);
        let hits = found
            .iter()
            .skip(q.from)
            .take(q.size)
            .map(|(score, p)| SearchHit {
                package: p.package.clone(),
                score: f64::from((score / best).min(1.0)),
                search_score: f64::from(*score),
            })
            .collect();
        SearchResults {
            total: found.len(),
            hits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packument(name: &str, description: &str, keywords: &[&str]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "name": name,
            "description": description,
            "keywords": keywords,
            "dist-tags": {"latest": "1.0.0"},
            "time": {"1.0.0": "2024-01-01T00:00:00.000Z"},
            "versions": {"1.0.0": {}}
        }))
        .unwrap()
    }

    fn add(index: &SearchIndex, name: &str, description: &str, keywords: &[&str]) {
        let bytes = packument(name, description, keywords);
        index
            .upsert(
                &PackageName::parse(name).unwrap(),
                BlobId::of(&bytes),
                &bytes,
            )
            .unwrap();
    }

    fn query(text: &str) -> SearchQuery {
        SearchQuery {
            text: text.into(),
            size: 20,
            from: 0,
        }
    }

    fn names(r: &SearchResults) -> Vec<&str> {
        r.hits.iter().map(|h| h.package.name.as_str()).collect()
    }

    fn sample() -> SearchIndex {
        let index = SearchIndex::new();
        add(&index, "left-pad", "String left pad", &["pad", "string"]);
        add(&index, "right-pad", "Pads strings on the right", &["pad"]);
        add(
            &index,
            "@s/colors",
            "Terminal colours and styles",
            &["ansi"],
        );
        add(&index, "pad", "A notepad", &[]);
        index
    }

    #[test]
    fn ranks_by_relevance_with_the_exact_name_first() {
        let index = sample();
        let r = index.search(&query("left pad"));
        assert_eq!(names(&r)[0], "left-pad", "{r:?}");
        assert!(!names(&r).contains(&"@s/colors"));
        assert_eq!(r.hits[0].score, 1.0);
        assert!(r.hits.iter().all(|h| h.score > 0.0 && h.score <= 1.0));

        let r = index.search(&query("pad"));
        assert_eq!(names(&r)[0], "pad", "{r:?}");
        assert_eq!(r.total, 3);
        // Stemming: "style" finds "styles".
        let r = index.search(&query("style"));
        assert_eq!(names(&r), ["@s/colors"]);
        assert_eq!(index.search(&query("")).total, 0);
        assert_eq!(index.search(&query("nothing-like-it")).total, 0);
    }

    #[test]
    fn pages_replaces_and_removes() {
        let index = sample();
        let all = names(&index.search(&query("pad")))
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        let page = index.search(&SearchQuery {
            text: "pad".into(),
            size: 1,
            from: 1,
        });
        assert_eq!(page.total, 3);
        assert_eq!(names(&page), [all[1].as_str()]);

        // A new revision replaces the old text; the old one is no longer found.
        add(&index, "right-pad", "Aligns text to the margin", &[]);
        assert_eq!(index.len(), 4);
        assert!(names(&index.search(&query("pad"))).contains(&"right-pad"));
        assert!(!names(&index.search(&query("strings"))).contains(&"right-pad"));
        assert_eq!(names(&index.search(&query("margin"))), ["right-pad"]);

        let name = PackageName::parse("left-pad").unwrap();
        let bytes = packument("left-pad", "String left pad", &["pad", "string"]);
        assert!(index.has(&name, &BlobId::of(&bytes)));
        index.remove(&name);
        assert!(!index.has(&name, &BlobId::of(&bytes)));
        assert!(!names(&index.search(&query("left"))).contains(&"left-pad"));
    }

    #[test]
    fn a_full_index_refuses_new_packages_but_keeps_updating_its_own() {
        let index = SearchIndex::with_cap(2);
        add(&index, "left-pad", "String left pad", &[]);
        add(&index, "right-pad", "String right pad", &[]);
        let third = PackageName::parse("center-pad").unwrap();
        let left = PackageName::parse("left-pad").unwrap();
        assert!(index.full_without(&third), "a new package is not read");
        assert!(!index.full_without(&left), "an indexed one still is");
        add(&index, "center-pad", "String center pad", &[]);
        assert_eq!(index.len(), 2);
        assert!(names(&index.search(&query("center"))).is_empty());
        add(&index, "left-pad", "Pads on the margin", &[]);
        assert_eq!(names(&index.search(&query("margin"))), ["left-pad"]);
    }
}
