//! The report as a table, and the inputs `verify` reads from the data dir.

use std::path::Path;

use anyhow::Context as _;
use open_registry_protocol::PeerId;
use open_registry_protocol::npm_sig::Keys;

use super::{Check, Report};

/// The human-readable table.
pub(crate) fn render_table(reports: &[Report]) -> String {
    let rows: Vec<[String; 6]> = reports
        .iter()
        .map(|r| {
            [
                format!("{}@{}", r.name, r.version),
                cell(&r.integrity),
                cell(&r.signature),
                match &r.operators {
                    Check::Ok(d) => d.split(' ').next().unwrap_or("ok").to_owned(),
                    c => cell(c),
                },
                cell(&r.advisory),
                if r.ok { "ok" } else { "FAIL" }.to_owned(),
            ]
        })
        .collect();
    let head = [
        "PACKAGE",
        "INTEGRITY",
        "NPM SIGNATURE",
        "OPERATORS",
        "ADVISORIES",
        "RESULT",
    ];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |c: [&str; 6]| {
        format!(
            "{:<a$}  {:<b$}  {:<c$}  {:<d$}  {:<e$}  {}\n",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            c[5],
            a = w[0],
            b = w[1],
            c = w[2],
            d = w[3],
            e = w[4]
        )
    };
    let mut out = line(head);
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]));
    }
    let failed: Vec<&Report> = reports.iter().filter(|r| !r.ok).collect();
    out.push('\n');
    // What was not checked, once per reason, and how to check it.
    let mut notes: Vec<String> = Vec::new();
    for r in reports {
        for (what, c, how) in [
            ("integrity", &r.integrity, ""),
            (
                "npm signatures",
                &r.signature,
                " (pin the registry's keys with `open-registry init`, or pass --keys FILE)",
            ),
            (
                "operators",
                &r.operators,
                " (pass --trust PEER_ID; --require-operators makes this an error)",
            ),
            ("advisories", &r.advisory, ""),
        ] {
            if let Check::Skipped(why) = c
                && why.starts_with("not checked")
            {
                let note = format!("{what}: {why}{how}\n");
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
        }
    }
    for n in &notes {
        out.push_str(n);
    }
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

/// A check's cell: one word, so the table splits on whitespace.
fn cell(c: &Check) -> String {
    match c {
        Check::Skipped(why) if why.starts_with("unsigned") => "unsigned".to_owned(),
        Check::Skipped(_) => "unchecked".to_owned(),
        c => c.word().to_owned(),
    }
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
            advisory: Check::Ok("0 in force, none covers it".into()),
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
    fn not_checked_is_not_unsigned() {
        let r = Report {
            name: "a".into(),
            version: "1.0.0".into(),
            ok: true,
            integrity: Check::Ok("sha512-x".into()),
            signature: Check::Skipped(super::super::NO_KEYS.into()),
            operators: Check::Skipped(super::super::NO_OPERATORS.into()),
            advisory: Check::Skipped(super::super::NO_ADVISORIES.into()),
        };
        let mut plain = r.clone();
        plain.name = "b".into();
        plain.signature = Check::Skipped(super::super::UNSIGNED.into());
        let t = render_table(&[r, plain]);
        let cols = |row: &str| -> Vec<String> {
            let line = t.lines().find(|l| l.starts_with(row)).unwrap();
            line.split_whitespace().map(str::to_owned).collect()
        };
        assert_eq!(
            cols("a@1.0.0"),
            ["a@1.0.0", "ok", "unchecked", "unchecked", "unchecked", "ok"]
        );
        assert_eq!(
            cols("b@1.0.0"),
            ["b@1.0.0", "ok", "unsigned", "unchecked", "unchecked", "ok"]
        );
        assert!(
            t.contains("npm signatures: not checked: no pinned keys (pin"),
            "{t}"
        );
        assert_eq!(
            t.matches("operators: not checked: no trusted operators")
                .count(),
            1,
            "{t}"
        );
        assert_eq!(
            t.matches("advisories: not checked: the registry lists no advisories")
                .count(),
            1,
            "{t}"
        );
        assert!(t.contains("2 packages verified"), "{t}");
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
