//! What search knows of a package, read from its packument: the [`SearchPackage`] npm shows,
//! and the text the index ranks (name, keywords, description), each cut to a bound.

use std::collections::{BTreeMap, HashMap};

use open_registry_gateway::{Person, SearchPackage};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// The longest description kept, in bytes.
pub(crate) const MAX_DESCRIPTION: usize = 512;
/// Keywords kept per package, and the longest one, in bytes.
pub(crate) const MAX_KEYWORDS: usize = 24;
const MAX_KEYWORD: usize = 64;
/// Maintainers kept per package.
pub(crate) const MAX_MAINTAINERS: usize = 16;
/// The longest URL or person field kept, in bytes.
const MAX_FIELD: usize = 256;

/// A package for the index: what is shown, and what is ranked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) package: SearchPackage,
    /// Name (twice: a match on the name counts more), keywords and description.
    pub(crate) text: String,
}

/// The fields of a packument that search reads, each taken only when it has the expected
/// shape (old packuments vary); the versions are left unparsed but the latest.
#[derive(Deserialize)]
struct Doc<'a> {
    name: Option<Value>,
    description: Option<Value>,
    #[serde(rename = "dist-tags")]
    dist_tags: Option<Value>,
    /// Left raw: a package of thousands of versions has as many dates.
    #[serde(borrow)]
    time: Option<&'a RawValue>,
    #[serde(default, borrow)]
    versions: HashMap<String, &'a RawValue>,
    keywords: Option<Value>,
    maintainers: Option<Value>,
    homepage: Option<Value>,
    repository: Option<Value>,
    bugs: Option<Value>,
}

/// The latest version's fields search reads.
#[derive(Deserialize)]
struct Version {
    description: Option<Value>,
    keywords: Option<Value>,
    #[serde(rename = "_npmUser")]
    npm_user: Option<Value>,
}

/// `keywords`: a list, or (in old packages) one comma- or space-separated string.
fn keywords(v: &Value) -> Vec<String> {
    let raw: Vec<&str> = match v {
        Value::Array(l) => l.iter().filter_map(Value::as_str).collect(),
        Value::String(t) => t.split([',', ' ']).collect(),
        _ => Vec::new(),
    };
    raw.into_iter()
        .map(|w| cut(w.trim(), MAX_KEYWORD))
        .filter(|w| !w.is_empty())
        .take(MAX_KEYWORDS)
        .collect()
}

/// A person: `{"name", "email"}`, or a bare name.
fn person(v: &Value) -> Option<Person> {
    let (name, email) = match v {
        Value::Object(o) => (
            o.get("name")?.as_str()?,
            o.get("email").and_then(Value::as_str),
        ),
        Value::String(t) => (t.as_str(), None),
        _ => return None,
    };
    let username = cut(name.trim(), MAX_FIELD);
    (!username.is_empty()).then(|| Person {
        username,
        email: email.map(|e| cut(e.trim(), MAX_FIELD)),
    })
}

/// A URL: a string, or an object with a `url`.
fn link(v: &Value) -> Option<&str> {
    match v {
        Value::String(t) => Some(t),
        Value::Object(o) => o.get("url")?.as_str(),
        _ => None,
    }
}

fn cut(s: &str, max: usize) -> String {
    open_registry_gateway::search::truncate(s, max).to_owned()
}

/// Reads `bytes` (a full packument of `name`); `Err` says why it cannot be indexed.
pub(crate) fn summarize(name: &str, bytes: &[u8]) -> Result<Summary, String> {
    let doc: Doc<'_> =
        serde_json::from_slice(bytes).map_err(|e| format!("packument of {name}: {e}"))?;
    if doc
        .name
        .as_ref()
        .and_then(Value::as_str)
        .is_some_and(|n| n != name)
    {
        return Err(format!("packument of {name} names another package"));
    }
    let version = doc
        .dist_tags
        .as_ref()
        .and_then(|t| t.get("latest"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("packument of {name} has no latest version"))?;
    let latest: Option<Version> = doc
        .versions
        .get(&version)
        .and_then(|raw| serde_json::from_str(raw.get()).ok());
    let latest = latest.unwrap_or(Version {
        description: None,
        keywords: None,
        npm_user: None,
    });
    let description = [&doc.description, &latest.description]
        .into_iter()
        .find_map(|d| d.as_ref().and_then(Value::as_str))
        .map(|d| cut(d.trim(), MAX_DESCRIPTION))
        .filter(|d| !d.is_empty());
    let keywords = [&doc.keywords, &latest.keywords]
        .into_iter()
        .flatten()
        .map(keywords)
        .find(|k| !k.is_empty())
        .unwrap_or_default();
    let maintainers = doc
        .maintainers
        .as_ref()
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(person).take(MAX_MAINTAINERS).collect())
        .unwrap_or_default();
    let publisher = latest.npm_user.as_ref().and_then(person);
    let mut links = BTreeMap::new();
    let urls = [
        ("homepage", doc.homepage.as_ref().and_then(Value::as_str)),
        ("repository", doc.repository.as_ref().and_then(link)),
        ("bugs", doc.bugs.as_ref().and_then(link)),
    ];
    for (k, v) in urls {
        if let Some(v) = v
            .map(|v| cut(v.trim(), MAX_FIELD))
            .filter(|v| !v.is_empty())
        {
            links.insert(k.to_owned(), v);
        }
    }
    let time: Option<HashMap<&str, &RawValue>> =
        doc.time.and_then(|t| serde_json::from_str(t.get()).ok());
    let date = [version.as_str(), "modified"]
        .into_iter()
        .find_map(|k| {
            let raw = time.as_ref()?.get(k)?;
            serde_json::from_str::<String>(raw.get()).ok()
        })
        .map(|d| cut(&d, MAX_FIELD));
    let words = name.replace(['@', '/', '-', '_', '.'], " ");
    let text = format!(
        "{name} {words} {words} {} {}",
        keywords.join(" "),
        description.as_deref().unwrap_or_default()
    );
    Ok(Summary {
        package: SearchPackage {
            name: name.to_owned(),
            version: cut(&version, MAX_FIELD),
            description,
            keywords,
            date,
            links,
            publisher,
            maintainers,
        },
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_npm_shows() {
        let doc = serde_json::json!({
            "name": "@s/left-pad",
            "description": "  Pads strings on the left  ",
            "dist-tags": {"latest": "1.3.0", "next": "2.0.0-beta.1"},
            "time": {"modified": "2024-02-01T00:00:00.000Z", "1.3.0": "2024-01-01T00:00:00.000Z"},
            "maintainers": [{"name": "alice", "email": "a@example.org"}, "bob", {"email": "x"}],
            "repository": {"type": "git", "url": "git+https://example.org/left-pad.git"},
            "versions": {
                "1.3.0": {"keywords": ["pad", 7, "string"], "_npmUser": {"name": "alice"}},
                "2.0.0-beta.1": {"this": "is never parsed"}
            }
        });
        let s = summarize("@s/left-pad", &serde_json::to_vec(&doc).unwrap()).unwrap();
        let p = &s.package;
        assert_eq!(p.version, "1.3.0");
        assert_eq!(p.description.as_deref(), Some("Pads strings on the left"));
        assert_eq!(p.keywords, vec!["pad", "string"]);
        assert_eq!(p.date.as_deref(), Some("2024-01-01T00:00:00.000Z"));
        assert_eq!(p.publisher.as_ref().unwrap().username, "alice");
        let names: Vec<&str> = p.maintainers.iter().map(|m| m.username.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        assert_eq!(
            p.links.get("repository").map(String::as_str),
            Some("git+https://example.org/left-pad.git")
        );
        assert!(
            s.text.contains("s left pad") && s.text.contains("string"),
            "{}",
            s.text
        );
    }

    #[test]
    fn bounds_and_refusals() {
        let doc = serde_json::json!({
            "name": "big",
            "description": "x".repeat(10_000),
            "keywords": "a,b c",
            "dist-tags": {"latest": "1.0.0"},
            "versions": {}
        });
        let s = summarize("big", &serde_json::to_vec(&doc).unwrap()).unwrap();
        assert_eq!(s.package.description.unwrap().len(), MAX_DESCRIPTION);
        assert_eq!(s.package.keywords, vec!["a", "b", "c"]);
        assert!(summarize("big", b"not json").is_err());
        assert!(summarize("other", &serde_json::to_vec(&doc).unwrap()).is_err());
        let no_latest = br#"{"name":"x","dist-tags":{},"versions":{}}"#;
        assert!(summarize("x", no_latest).unwrap_err().contains("no latest"));
    }
}
