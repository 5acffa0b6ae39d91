//! The report as a table, and the inputs `verify` reads from the data dir.

use std::path::Path;

use anyhow::Context as _;
use open_registry_protocol::PeerId;
use open_registry_protocol::npm_sig::Keys;

use super::{Check, Report};

/// The human-readable table.
pub(crate) fn render_table(reports: &[Report]) -> String {
    let rows: Vec<[String; 5]> = reports
        .iter()
        .map(|r| {
            [
                format!("{}@{}", r.name, r.version),
                r.integrity.word().to_owned(),
                match &r.signature {
                    Check::Skipped(_) => "unsigned".to_owned(),
                    c => c.word().to_owned(),
                },
                match &r.operators {
                    Check::Ok(d) => d.split(' ').next().unwrap_or("ok").to_owned(),
                    c => c.word().to_owned(),
                },
                if r.ok { "ok" } else { "FAIL" }.to_owned(),
            ]
        })
        .collect();
    let head = [
        "PACKAGE",
        "INTEGRITY",
        "NPM SIGNATURE",
        "OPERATORS",
        "RESULT",
    ];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |c: [&str; 5]| {
        format!(
            "{:<a$}  {:<b$}  {:<c$}  {:<d$}  {}\n",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            a = w[0],
            b = w[1],
            c = w[2],
            d = w[3]
        )
    };
    let mut out = line(head);
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
    }
    let failed: Vec<&Report> = reports.iter().filter(|r| !r.ok).collect();
    out.push('\n');
    if failed.is_empty() {
        out.push_str(&format!("{} packages verified\n", reports.len()));
    } else {
        for r in &failed {
            out.push_str(&format!(
                "{}@{}: {}\n",
                r.name,
                r.version,
                r.reason().unwrap_or_default()
            ));
        }
        out.push_str(&format!(
            "{} of {} packages failed verification\n",
            failed.len(),
            reports.len()
        ));
    }
    out
}

/// Reads pinned keys from `path`, if the file exists.
pub(crate) fn load_keys(path: &Path) -> anyhow::Result<Option<Keys>> {
    match std::fs::read(path) {
        Ok(b) => {
            Ok(Some(Keys::parse(&b).with_context(|| {
                format!("pinned keys in {}", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The operators `verify` trusts: the ones given, else the config's plus this data dir's own.
pub(crate) fn trusted(given: &[PeerId], config: &[PeerId], own: Option<PeerId>) -> Vec<PeerId> {
    if !given.is_empty() {
        return given.to_vec();
    }
    let mut t = config.to_vec();
    if let Some(o) = own
        && !t.contains(&o)
    {
        t.push(o);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_failures() {
        let ok = Report {
            name: "a".into(),
            version: "1.0.0".into(),
            ok: true,
            integrity: Check::Ok("sha512-x".into()),
            signature: Check::Skipped("no keys".into()),
            operators: Check::Ok("1/1 (abc)".into()),
        };
        let mut bad = ok.clone();
        bad.name = "b".into();
        bad.ok = false;
        bad.operators = Check::Failed("forged: record signature is invalid".into());
        let t = render_table(&[ok, bad]);
        assert!(t.contains("b@1.0.0: operator records: forged"), "{t}");
        assert!(t.contains("1 of 2 packages failed"), "{t}");
    }

    #[test]
    fn trust_defaults() {
        let a = crate::records::identity::Identity::from_seed([1; 32]).peer_id();
        let b = crate::records::identity::Identity::from_seed([2; 32]).peer_id();
        assert_eq!(trusted(&[a], &[b], Some(b)), vec![a]);
        assert_eq!(trusted(&[], &[a], Some(b)), vec![a, b]);
        assert_eq!(trusted(&[], &[], None), Vec::<PeerId>::new());
    }
}
