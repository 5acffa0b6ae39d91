//! `statement show`, `statement check` and `statement import`: the operator's `statement.toml`,
//! what the node costs and what it receives (the format is
//! [`open_registry_protocol::statement`]).

use std::collections::BTreeMap;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use open_registry_protocol::statement::{
    Amount, Currency, Donation, MAX_TEXT, Month, STATEMENT_FILE, Spent, Statement, Totals,
    YearMonth,
};
use serde::Serialize;

use super::{Failed, StatementCommand, StatementFile};

pub(super) fn statement(c: StatementCommand) -> anyhow::Result<()> {
    match c {
        StatementCommand::Show(a) => {
            let (_, s) = load(&a.file)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&json_view(&s))?);
            } else {
                print!("{}", render(&s));
            }
            Ok(())
        }
        StatementCommand::Check(a) => {
            let (path, s) = load(&a)?;
            println!(
                "{}: ok, {}",
                path.display(),
                plural(s.months.len(), "month entry", "month entries")
            );
            Ok(())
        }
        StatementCommand::Import(a) => {
            let path = a.file.path();
            let text = read_statement(&path)?;
            let mut s = parse_or_report(&path, &text)?;
            let csv = std::fs::File::open(&a.opencollective)
                .with_context(|| format!("opening {}", a.opencollective.display()))?;
            let import = read_opencollective(csv)
                .with_context(|| format!("in {}", a.opencollective.display()))?;
            merge(&mut s, &import);
            let out = keep_leading_comments(&text, &s.to_toml());
            if let Err(p) = Statement::parse(&out) {
                bail!("the imported statement would not be valid:\n{p}");
            }
            write_atomically(&path, &out)?;
            print!("{}", render_import(&a.opencollective, &import));
            println!("wrote {}", path.display());
            Ok(())
        }
    }
}

impl StatementFile {
    /// The statement file: the flag, else `statement.toml` in the data dir.
    pub(super) fn path(&self) -> PathBuf {
        self.file
            .clone()
            .unwrap_or_else(|| self.dir.path().join(STATEMENT_FILE))
    }
}

fn read_statement(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no statement at {}: write one with an [operator] table (see docs/operators.md)",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Parses `text`; on problems prints each as `FILE:LINE:COL: message` and fails.
fn parse_or_report(path: &Path, text: &str) -> anyhow::Result<Statement> {
    Statement::parse(text).map_err(|problems| {
        for p in &problems.0 {
            eprintln!("{}:{p}", path.display());
        }
        Failed.into()
    })
}

fn load(f: &StatementFile) -> anyhow::Result<(PathBuf, Statement)> {
    let path = f.path();
    let text = read_statement(&path)?;
    let s = parse_or_report(&path, &text)?;
    Ok((path, s))
}

#[derive(Serialize)]
struct JsonView<'a> {
    operator: &'a open_registry_protocol::statement::Operator,
    months: Vec<JsonMonth<'a>>,
    totals: BTreeMap<String, Totals>,
}

#[derive(Serialize)]
struct JsonMonth<'a> {
    #[serde(flatten)]
    month: &'a Month,
    totals: Totals,
}

fn json_view(s: &Statement) -> JsonView<'_> {
    JsonView {
        operator: &s.operator,
        months: s
            .months
            .iter()
            .map(|m| JsonMonth {
                month: m,
                totals: m.totals(),
            })
            .collect(),
        totals: s
            .totals_by_currency()
            .into_iter()
            .map(|(c, t)| (c.to_string(), t))
            .collect(),
    }
}

fn render(s: &Statement) -> String {
    let mut out = s.operator.name.clone();
    if let Some(url) = &s.operator.url {
        out.push_str(&format!("  {url}"));
    }
    out.push('\n');
    for d in &s.operator.donate {
        out.push_str(&format!("donate: {d}\n"));
    }
    let line = |out: &mut String, what: String, amount: Amount| {
        let amount = amount.to_string();
        out.push_str(&format!("    {what:<48} {amount:>12}\n"));
    };
    for m in &s.months {
        out.push_str(&format!("\n{} ({})\n", m.month, m.currency));
        if !m.cost.is_empty() {
            out.push_str("  cost\n");
            for c in &m.cost {
                line(&mut out, format!("{}: {}", c.provider, c.item), c.amount);
            }
        }
        if !m.donations.is_empty() {
            out.push_str("  donations\n");
            for d in &m.donations {
                line(&mut out, d.source.clone(), d.amount);
            }
        }
        if !m.spent.is_empty() {
            out.push_str("  spent\n");
            for sp in &m.spent {
                line(&mut out, sp.on.clone(), sp.amount);
            }
        }
        out.push_str(&format!("  {}\n", render_totals(&m.totals(), &m.currency)));
    }
    let all = s.totals_by_currency();
    if !all.is_empty() {
        out.push_str("\nall months\n");
        for (c, t) in &all {
            out.push_str(&format!("  {}\n", render_totals(t, c)));
        }
    }
    out
}

fn render_totals(t: &Totals, c: &Currency) -> String {
    format!(
        "{c}: cost {}, donated {}, spent {}, balance {} (donated - spent)",
        t.cost, t.donated, t.spent, t.balance
    )
}

/// What an Open Collective export holds for the statement: per (month, currency), the donations
/// and the spent, each summed by source or description; and the rows left out, by kind.
#[derive(Debug, Default, PartialEq, Eq)]
struct Import {
    months: BTreeMap<(YearMonth, Currency), Imported>,
    /// Rows that are neither contributions received nor expenses paid, counted by kind.
    ignored: BTreeMap<String, usize>,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Imported {
    donations: BTreeMap<String, (Amount, usize)>,
    spent: BTreeMap<String, (Amount, usize)>,
}

/// The columns of a transactions export that the import reads, found by name in the header
/// (compared without case, spaces or punctuation: `datetime` and "Date & Time" are one).
struct Columns {
    date: usize,
    kind: usize,
    credit_debit: usize,
    description: Option<usize>,
    amount: usize,
    currency: usize,
}

impl Columns {
    fn find(header: &csv::StringRecord) -> anyhow::Result<Columns> {
        let names: Vec<String> = header
            .iter()
            .map(|h| {
                h.chars()
                    .filter(char::is_ascii_alphanumeric)
                    .collect::<String>()
                    .to_ascii_lowercase()
            })
            .collect();
        let find = |wanted: &[&str]| {
            wanted
                .iter()
                .find_map(|w| names.iter().position(|n| n == w))
        };
        let need = |wanted: &[&str]| {
            find(wanted).with_context(|| {
                format!(
                    "no {} column: is this an Open Collective transactions export?",
                    wanted[0]
                )
            })
        };
        Ok(Columns {
            date: need(&["datetime", "date", "createdat", "effectivedate"])?,
            kind: need(&["kind"])?,
            credit_debit: need(&["type", "creditdebit"])?,
            description: find(&["description"]),
            amount: need(&["amount"])?,
            currency: need(&["currency"])?,
        })
    }
}

/// Reads an Open Collective transactions CSV export: credits of kind CONTRIBUTION are
/// donations, debits of kind EXPENSE are spent; every other row is counted as ignored.
fn read_opencollective(input: impl Read) -> anyhow::Result<Import> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(input);
    let columns = Columns::find(reader.headers().context("reading the header")?)?;
    let mut import = Import::default();
    for row in reader.records() {
        let row = row?;
        let line = row.position().map_or(0, |p| p.line());
        let field = |i: usize| row.get(i).unwrap_or("").trim();
        let kind = field(columns.kind).to_ascii_uppercase();
        let credit_debit = field(columns.credit_debit).to_ascii_uppercase();
        let donation = credit_debit == "CREDIT" && kind == "CONTRIBUTION";
        let expense = credit_debit == "DEBIT" && kind == "EXPENSE";
        if !donation && !expense {
            let kind = if kind.is_empty() {
                "(no kind)".into()
            } else {
                kind
            };
            *import.ignored.entry(kind).or_default() += 1;
            continue;
        }
        let date = field(columns.date);
        let month: YearMonth = date
            .get(..7)
            .and_then(|m| m.parse().ok())
            .with_context(|| format!("line {line}: date {date:?} does not start with YYYY-MM"))?;
        let currency: Currency = field(columns.currency)
            .parse()
            .map_err(|e| anyhow::anyhow!("line {line}: {e}"))?;
        let amount = Amount::parse_abs(field(columns.amount))
            .map_err(|e| anyhow::anyhow!("line {line}: {e}"))?;
        let description = columns.description.map_or("", field);
        let entry = import.months.entry((month, currency)).or_default();
        let (list, text) = if donation {
            let source = if description.is_empty() {
                "OpenCollective".to_owned()
            } else {
                format!("OpenCollective: {description}")
            };
            (&mut entry.donations, source)
        } else {
            let on = if description.is_empty() {
                "Open Collective expense"
            } else {
                description
            };
            (&mut entry.spent, on.to_owned())
        };
        let sum = list.entry(clean_text(&text)).or_default();
        sum.0 = sum.0 + amount;
        sum.1 += 1;
    }
    Ok(import)
}

/// `s` as a statement text: control characters as spaces, at most [`MAX_TEXT`] characters.
fn clean_text(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() <= MAX_TEXT {
        return s;
    }
    let mut short: String = s.chars().take(MAX_TEXT - 1).collect();
    short.push('…');
    short
}

/// Replaces the donations and spent of every imported month (creating the months not listed
/// yet), keeping their costs and every other month; months end up sorted.
fn merge(s: &mut Statement, import: &Import) {
    for ((month, currency), imported) in &import.months {
        let i = match s
            .months
            .iter()
            .position(|m| m.month == *month && m.currency == *currency)
        {
            Some(i) => i,
            None => {
                s.months.push(Month::new(*month, currency.clone()));
                s.months.len() - 1
            }
        };
        let m = &mut s.months[i];
        m.donations = imported
            .donations
            .iter()
            .map(|(source, (amount, _))| Donation {
                source: source.clone(),
                amount: *amount,
            })
            .collect();
        m.spent = imported
            .spent
            .iter()
            .map(|(on, (amount, _))| Spent {
                on: on.clone(),
                amount: *amount,
            })
            .collect();
    }
    s.sort_months();
}

fn render_import(csv: &Path, import: &Import) -> String {
    let mut out = format!("imported from {}\n", csv.display());
    for ((month, currency), m) in &import.months {
        let total = |l: &BTreeMap<String, (Amount, usize)>| -> (Amount, usize) {
            l.values()
                .fold((Amount::ZERO, 0), |a, b| (a.0 + b.0, a.1 + b.1))
        };
        let (donated, d) = total(&m.donations);
        let (spent, sp) = total(&m.spent);
        out.push_str(&format!(
            "  {month} {currency}: {}, donated {donated}; {}, spent {spent}\n",
            plural(d, "contribution", "contributions"),
            plural(sp, "expense", "expenses"),
        ));
    }
    if import.months.is_empty() {
        out.push_str("  no contributions or expenses\n");
    }
    let ignored: usize = import.ignored.values().sum();
    if ignored > 0 {
        let kinds: Vec<String> = import
            .ignored
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        out.push_str(&format!(
            "  ignored {ignored} rows ({})\n",
            kinds.join(", ")
        ));
    }
    out
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `new` after the comment lines that start `old` (the only comments the rewrite keeps).
fn keep_leading_comments(old: &str, new: &str) -> String {
    let mut out = String::new();
    for l in old.lines() {
        let t = l.trim();
        if t.starts_with('#') || t.is_empty() {
            out.push_str(l);
            out.push('\n');
        } else {
            break;
        }
    }
    out.push_str(new);
    out
}

/// Writes `text` to `path` through a temporary file in the same dir and a rename, keeping the
/// old file's permissions.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    if let Ok(meta) = std::fs::metadata(path) {
        std::fs::set_permissions(tmp.path(), meta.permissions())?;
    }
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPORT: &str = include_str!("testdata/opencollective.csv");

    const STATEMENT: &str = r#"# What the example node costs.
# Amounts in EUR.

[operator]
name = "Example Hosting Co-op"
url = "https://example.org"
donate = ["https://opencollective.com/example"]

[[month]]
month = "2026-11"
currency = "EUR"
cost = [ { provider = "Hetzner", item = "CX32 server", amount = "6.80" } ]
donations = [ { source = "By hand", amount = "1.00" } ]
spent = []

[[month]]
month = "2026-09"
currency = "EUR"
cost = [ { provider = "Hetzner", item = "CX32 server", amount = "6.80" } ]
donations = [ { source = "Bank transfer", amount = "3.00" } ]
"#;

    fn ym(s: &str) -> YearMonth {
        s.parse().unwrap()
    }

    fn cur(s: &str) -> Currency {
        s.parse().unwrap()
    }

    #[test]
    fn reads_contributions_and_expenses_by_month_and_currency() {
        let import = read_opencollective(EXPORT.as_bytes()).unwrap();
        let keys: Vec<String> = import
            .months
            .keys()
            .map(|(m, c)| format!("{m} {c}"))
            .collect();
        assert_eq!(keys, ["2026-10 EUR", "2026-11 EUR", "2026-11 USD"]);

        let nov = &import.months[&(ym("2026-11"), cur("EUR"))];
        let donations: Vec<(String, String, usize)> = nov
            .donations
            .iter()
            .map(|(s, (a, n))| (s.clone(), a.to_string(), *n))
            .collect();
        assert_eq!(
            donations,
            [
                (
                    "OpenCollective: Contribution from Alice, monthly".to_owned(),
                    "10.00".to_owned(),
                    1
                ),
                (
                    "OpenCollective: Monthly financial contribution to Example (Backers)"
                        .to_owned(),
                    "30.50".to_owned(),
                    2
                ),
            ]
        );
        let spent: Vec<(String, String)> = nov
            .spent
            .iter()
            .map(|(s, (a, _))| (s.clone(), a.to_string()))
            .collect();
        assert_eq!(
            spent,
            [
                ("Domain renewal".to_owned(), "1.25".to_owned()),
                (
                    "Hetzner CX32 server, November".to_owned(),
                    "6.80".to_owned()
                ),
            ]
        );
        let usd = &import.months[&(ym("2026-11"), cur("USD"))];
        assert_eq!(usd.donations.values().next().unwrap().0.to_string(), "5.00");
        assert_eq!(
            import.ignored,
            BTreeMap::from([
                ("CONTRIBUTION".to_owned(), 1), // a debit: a refund or an outgoing contribution
                ("HOST_FEE".to_owned(), 1),
                ("PAYMENT_PROCESSOR_FEE".to_owned(), 2),
            ])
        );
    }

    #[test]
    fn merge_replaces_imported_months_and_keeps_the_rest() {
        let mut s = Statement::parse(STATEMENT).unwrap();
        let import = read_opencollective(EXPORT.as_bytes()).unwrap();
        merge(&mut s, &import);
        let months: Vec<String> = s
            .months
            .iter()
            .map(|m| format!("{} {}", m.month, m.currency))
            .collect();
        assert_eq!(
            months,
            ["2026-09 EUR", "2026-10 EUR", "2026-11 EUR", "2026-11 USD"]
        );
        // September was not in the export: untouched.
        assert_eq!(s.months[0].donations[0].source, "Bank transfer");
        // November keeps its cost; its donations are the export's.
        let nov = &s.months[2];
        assert_eq!(nov.cost.len(), 1);
        let t = nov.totals();
        assert_eq!(t.cost.to_string(), "6.80");
        assert_eq!(t.donated.to_string(), "40.50");
        assert_eq!(t.spent.to_string(), "8.05");
        assert_eq!(t.balance.to_string(), "32.45");
        let oct = &s.months[1];
        assert!(oct.cost.is_empty());
        assert_eq!(oct.totals().donated.to_string(), "12.00");

        // What is written parses back, with the leading comments kept.
        let out = keep_leading_comments(STATEMENT, &s.to_toml());
        assert!(
            out.starts_with("# What the example node costs.\n# Amounts in EUR.\n\n[operator]\n")
        );
        assert_eq!(Statement::parse(&out).unwrap(), s);

        // Importing again changes nothing.
        let mut again = s.clone();
        merge(&mut again, &import);
        assert_eq!(again, s);
    }

    #[test]
    fn exports_with_field_names_as_headers_are_read_too() {
        let csv = "\"Date & Time\",\"Description\",\"Credit / Debit\",\"Kind\",\"Amount\",\"Currency\"\n\
                   2026-11-02T10:00:00Z,\"Thanks, from Bob\",CREDIT,CONTRIBUTION,7.5,EUR\n";
        let import = read_opencollective(csv.as_bytes()).unwrap();
        let m = &import.months[&(ym("2026-11"), cur("EUR"))];
        assert_eq!(
            m.donations.keys().collect::<Vec<_>>(),
            ["OpenCollective: Thanks, from Bob"]
        );
    }

    #[test]
    fn bad_rows_and_headers_are_errors() {
        let header = "datetime,type,kind,description,amount,currency\n";
        let err = |body: &str| {
            read_opencollective(format!("{header}{body}").as_bytes())
                .unwrap_err()
                .to_string()
        };
        assert!(err("2026-11-01,CREDIT,CONTRIBUTION,x,1.23456,EUR\n").contains("line 2"));
        assert!(err("yesterday,CREDIT,CONTRIBUTION,x,1,EUR\n").contains("YYYY-MM"));
        assert!(err("2026-11-01,DEBIT,EXPENSE,x,-1,euro\n").contains("currency"));
        let no_kind = read_opencollective("datetime,type,amount,currency\n".as_bytes());
        assert!(no_kind.unwrap_err().to_string().contains("no kind column"));
    }

    #[test]
    fn long_descriptions_are_cut() {
        let long = "é".repeat(MAX_TEXT + 50);
        let c = clean_text(&long);
        assert_eq!(c.chars().count(), MAX_TEXT);
        assert_eq!(clean_text("a\tb"), "a b");
    }

    #[test]
    fn show_renders_months_and_totals() {
        let s = Statement::parse(STATEMENT).unwrap();
        let text = render(&s);
        assert!(text.starts_with("Example Hosting Co-op  https://example.org\n"));
        assert!(text.contains("\n2026-11 (EUR)\n  cost\n    Hetzner: CX32 server"));
        assert!(text.contains("EUR: cost 6.80, donated 1.00, spent 0.00, balance 1.00"));
        assert!(
            text.contains(
                "\nall months\n  EUR: cost 13.60, donated 4.00, spent 0.00, balance 4.00"
            )
        );
        let json = serde_json::to_value(json_view(&s)).unwrap();
        assert_eq!(json["months"][0]["month"], "2026-11");
        assert_eq!(json["months"][0]["cost"][0]["amount"], "6.80");
        assert_eq!(json["months"][0]["totals"]["balance"], "1.00");
        assert_eq!(json["totals"]["EUR"]["cost"], "13.60");
    }

    #[test]
    fn writes_atomically_and_keeps_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATEMENT_FILE);
        write_atomically(&path, "a").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            write_atomically(&path, "b").unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
