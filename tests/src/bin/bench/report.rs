//! What a benchmark returns: tables of figures, the checks against docs/benchmarks.md's targets,
//! notes (skipped references), and plumbing failures. Printed as text and saved as JSON.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use crate::sys;

/// One table: a title, column names, rows of cells.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(title: &str, header: &[&str]) -> Table {
        Table {
            title: title.to_owned(),
            header: header.iter().map(|s| (*s).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, out: &mut String) {
        let cols = self.header.len();
        let mut width = vec![0; cols];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let _ = writeln!(out, "\n   {}", self.title);
        let line = |r: &Vec<String>| {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .take(cols)
                .map(|(i, c)| format!("{c:<w$}", w = width[i]))
                .collect();
            format!("   | {} |", cells.join(" | "))
        };
        let _ = writeln!(out, "{}", line(&self.header));
        let sep: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
        let _ = writeln!(out, "   |-{}-|", sep.join("-|-"));
        for r in &self.rows {
            let _ = writeln!(out, "{}", line(r));
        }
    }

    fn json(&self) -> Value {
        json!({ "title": self.title, "header": self.header, "rows": self.rows })
    }
}

/// A target from docs/benchmarks.md and what was measured against it.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    what: String,
    target: String,
    value: String,
    /// `None`: not measurable in this run (a reference was skipped).
    met: Option<bool>,
}

/// A benchmark's outcome.
#[derive(Debug, Default)]
pub(crate) struct Report {
    id: String,
    smoke: bool,
    elapsed: Duration,
    notes: Vec<String>,
    tables: Vec<Table>,
    checks: Vec<Check>,
    failures: Vec<String>,
    data: serde_json::Map<String, Value>,
}

impl Report {
    pub(crate) fn new() -> Report {
        Report::default()
    }

    /// A line printed as is (and kept in the JSON), e.g. `skipped: nginx not installed`.
    pub(crate) fn note(&mut self, s: impl Into<String>) {
        let s = s.into();
        println!("   {s}");
        self.notes.push(s);
    }

    pub(crate) fn table(&mut self, t: Table) {
        self.tables.push(t);
    }

    /// Records a target check; `met` is `None` when it could not be measured.
    pub(crate) fn check(&mut self, what: &str, target: &str, value: String, met: Option<bool>) {
        self.checks.push(Check {
            what: what.to_owned(),
            target: target.to_owned(),
            value,
            met,
        });
    }

    /// A plumbing failure (wrong status, missing header): the run exits nonzero.
    pub(crate) fn fail(&mut self, s: impl Into<String>) {
        let s = s.into();
        eprintln!("   FAILED: {s}");
        self.failures.push(s);
    }

    /// Raw figures for the JSON file.
    pub(crate) fn data(&mut self, key: &str, v: Value) {
        self.data.insert(key.to_owned(), v);
    }

    pub(crate) fn failed(&self) -> bool {
        !self.failures.is_empty()
    }

    pub(crate) fn finish(&mut self, id: &str, smoke: bool, elapsed: Duration) {
        self.id = id.to_owned();
        self.smoke = smoke;
        self.elapsed = elapsed;
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        for t in &self.tables {
            t.render(&mut out);
        }
        if !self.checks.is_empty() {
            let mut t = Table::new(
                "targets (docs/benchmarks.md)",
                &["check", "measured", "target", "verdict"],
            );
            for c in &self.checks {
                t.row(vec![
                    c.what.clone(),
                    c.value.clone(),
                    c.target.clone(),
                    match c.met {
                        Some(true) => "met".into(),
                        Some(false) => "NOT MET".into(),
                        None => "n/a".into(),
                    },
                ]);
            }
            t.render(&mut out);
        }
        for f in &self.failures {
            let _ = writeln!(out, "   FAILED: {f}");
        }
        let _ = writeln!(
            out,
            "\n   {} done in {:.1}s{}",
            self.id,
            self.elapsed.as_secs_f64(),
            if self.smoke {
                " (smoke: the figures only show the plumbing works)"
            } else {
                ""
            }
        );
        out
    }

    /// Writes `<dir>/<ID>[-smoke].json` and returns its path.
    pub(crate) fn save(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!(
            "{}{}.json",
            self.id,
            if self.smoke { "-smoke" } else { "" }
        ));
        let checks: Vec<Value> = self
            .checks
            .iter()
            .map(|c| json!({"what": c.what, "target": c.target, "value": c.value, "met": c.met}))
            .collect();
        let doc = json!({
            "id": self.id,
            "smoke": self.smoke,
            "date": sys::date(),
            "machine": sys::machine_line(),
            "elapsed_secs": self.elapsed.as_secs_f64(),
            "notes": self.notes,
            "tables": self.tables.iter().map(Table::json).collect::<Vec<_>>(),
            "checks": checks,
            "failures": self.failures,
            "data": self.data,
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)?;
        Ok(path)
    }
}

/// The median of `xs` (the mean of the middle two for an even count); NaN when empty.
pub(crate) fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `a / b`, NaN when `b` is zero or either is NaN.
pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 || a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a / b
    }
}

/// Formats a ratio as `0.73×`, or `n/a`.
pub(crate) fn fmt_ratio(r: f64) -> String {
    if r.is_nan() {
        "n/a".into()
    } else if r.is_infinite() {
        "∞".into()
    } else {
        format!("{r:.2}×")
    }
}

/// Formats a rate with thousands separators: `131,204`.
pub(crate) fn fmt_rate(x: f64) -> String {
    if x.is_nan() {
        return "n/a".into();
    }
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Formats milliseconds: `0.84 ms`, `12.3 ms`, `1.20 s`.
pub(crate) fn fmt_ms(ms: f64) -> String {
    if ms.is_nan() {
        "n/a".into()
    } else if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

/// Formats a byte count: `4.8 KB`, `2.10 MB` (decimal, as docs/benchmarks.md writes them).
pub(crate) fn fmt_bytes(n: u64) -> String {
    let x = n as f64;
    if x >= 1e6 {
        format!("{:.2} MB", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} KB", x / 1e3)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_formats() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(fmt_rate(131_204.4), "131,204");
        assert_eq!(fmt_rate(999.0), "999");
        assert_eq!(fmt_ratio(0.7349), "0.73×");
        assert_eq!(fmt_ms(0.842), "0.84 ms");
        assert_eq!(fmt_bytes(4_800), "4.8 KB");
        assert!(ratio(1.0, 0.0).is_nan());
    }
}
