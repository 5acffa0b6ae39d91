//! Operator statements: what a node costs its operator and what the operator receives for it.
//!
//! An operator keeps `statement.toml` in the node's data dir: who runs the node, and per month
//! (one currency per `[[month]]` entry) the costs by provider and item, the donations received
//! and what the money was spent on. Amounts are decimal strings ("6.80"), held exactly as
//! integers of 10⁻⁴ ([`Amount`]); no exchange rate is ever applied, so totals are per currency.
//!
//! [`Statement::parse`] checks everything and reports each problem with the line and column of
//! the offending value ([`Problem`]). A statement is bounded ([`MAX_MONTHS`], [`MAX_ITEMS`],
//! [`MAX_TEXT`]) so that it stays small enough to sign and gossip.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// The file name of the statement in a node's data dir.
pub const STATEMENT_FILE: &str = "statement.toml";
/// Most `[[month]]` entries one statement holds (ten years).
pub const MAX_MONTHS: usize = 120;
/// Most entries of each list (costs, donations, spent, donate links).
pub const MAX_ITEMS: usize = 100;
/// Longest name, item, source, description or URL, in characters.
pub const MAX_TEXT: usize = 200;
/// Most fraction digits of an amount.
pub const MAX_FRACTION_DIGITS: usize = 4;
/// Longest amount string, in characters.
pub const MAX_AMOUNT_LEN: usize = 24;

mod check;
mod signed;
#[cfg(test)]
mod tests;
mod values;

use check::{RawStatement, Validator};
pub use signed::{MAX_STATEMENT_LEN, STATEMENT_DOMAIN, STATEMENT_FORMAT, SignedStatement};
pub use values::{Amount, Currency, YearMonth};

/// A whole statement: who runs the node and its months.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Statement {
    /// Who runs the node.
    pub operator: Operator,
    /// The months (`[[month]]` in the file), each in one currency; (month, currency) is unique.
    pub months: Vec<Month>,
}

/// Who runs the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Operator {
    /// The operator's name.
    pub name: String,
    /// The operator's web page (http or https).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Where to donate (http or https).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub donate: Vec<String>,
}

/// One month in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Month {
    /// The month.
    pub month: YearMonth,
    /// The currency of every amount below.
    pub currency: Currency,
    /// What running the node cost.
    pub cost: Vec<Cost>,
    /// What the operator received.
    pub donations: Vec<Donation>,
    /// What the received money was spent on.
    pub spent: Vec<Spent>,
}

/// One cost: a provider's item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cost {
    /// Who is paid ("Hetzner").
    pub provider: String,
    /// For what ("CX32 server").
    pub item: String,
    /// How much.
    pub amount: Amount,
}

/// One donation received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Donation {
    /// From where or whom ("OpenCollective").
    pub source: String,
    /// How much.
    pub amount: Amount,
}

/// One use of donated money.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spent {
    /// On what.
    pub on: String,
    /// How much.
    pub amount: Amount,
}

/// A month's sums, in its currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// All costs.
    pub cost: Amount,
    /// All donations.
    pub donated: Amount,
    /// All spent.
    pub spent: Amount,
    /// Donated minus spent (can be negative).
    pub balance: Amount,
}

impl std::ops::Add for Totals {
    type Output = Totals;
    fn add(self, o: Totals) -> Totals {
        Totals {
            cost: self.cost + o.cost,
            donated: self.donated + o.donated,
            spent: self.spent + o.spent,
            balance: self.balance + o.balance,
        }
    }
}

impl Month {
    /// The month's sums.
    pub fn totals(&self) -> Totals {
        let donated = self.donations.iter().map(|d| d.amount).sum();
        let spent = self.spent.iter().map(|s| s.amount).sum();
        Totals {
            cost: self.cost.iter().map(|c| c.amount).sum(),
            donated,
            spent,
            balance: donated - spent,
        }
    }

    /// An empty month.
    pub fn new(month: YearMonth, currency: Currency) -> Month {
        Month {
            month,
            currency,
            cost: Vec::new(),
            donations: Vec::new(),
            spent: Vec::new(),
        }
    }
}

impl Statement {
    /// Parses and checks a statement; every problem found is returned, with where it is.
    pub fn parse(text: &str) -> Result<Statement, Problems> {
        let raw: RawStatement = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            Problems(vec![Problem::at(text, at, e.message().trim_end())])
        })?;
        let mut v = Validator {
            text,
            problems: Vec::new(),
        };
        let statement = v.statement(raw);
        if v.problems.is_empty() {
            Ok(statement)
        } else {
            v.problems.sort_by_key(|p| (p.line, p.column));
            Err(Problems(v.problems))
        }
    }

    /// The statement as TOML, in the shape [`Statement::parse`] reads: one `[[month]]` table
    /// per month, each list an array of inline tables, one per line.
    pub fn to_toml(&self) -> String {
        let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let mut out = String::from("[operator]\n");
        out.push_str(&format!("name = {}\n", q(&self.operator.name)));
        if let Some(url) = &self.operator.url {
            out.push_str(&format!("url = {}\n", q(url)));
        }
        if !self.operator.donate.is_empty() {
            let links: Vec<String> = self.operator.donate.iter().map(|d| q(d)).collect();
            out.push_str(&format!("donate = [{}]\n", links.join(", ")));
        }
        let list = |out: &mut String, key: &str, rows: Vec<String>| {
            if rows.is_empty() {
                out.push_str(&format!("{key} = []\n"));
                return;
            }
            out.push_str(&format!("{key} = [\n"));
            for r in rows {
                out.push_str(&format!("  {{ {r} }},\n"));
            }
            out.push_str("]\n");
        };
        for m in &self.months {
            out.push_str(&format!(
                "\n[[month]]\nmonth = \"{}\"\ncurrency = \"{}\"\n",
                m.month, m.currency
            ));
            let cost = m.cost.iter().map(|c| {
                format!(
                    "provider = {}, item = {}, amount = \"{}\"",
                    q(&c.provider),
                    q(&c.item),
                    c.amount
                )
            });
            list(&mut out, "cost", cost.collect());
            let donations = m
                .donations
                .iter()
                .map(|d| format!("source = {}, amount = \"{}\"", q(&d.source), d.amount));
            list(&mut out, "donations", donations.collect());
            let spent = m
                .spent
                .iter()
                .map(|s| format!("on = {}, amount = \"{}\"", q(&s.on), s.amount));
            list(&mut out, "spent", spent.collect());
        }
        out
    }

    /// The sums of all months, by currency.
    pub fn totals_by_currency(&self) -> BTreeMap<Currency, Totals> {
        let mut all: BTreeMap<Currency, Totals> = BTreeMap::new();
        for m in &self.months {
            let t = all.entry(m.currency.clone()).or_default();
            *t = *t + m.totals();
        }
        all
    }

    /// Sorts the months by month, then currency.
    pub fn sort_months(&mut self) {
        self.months
            .sort_by(|a, b| (a.month, &a.currency).cmp(&(b.month, &b.currency)));
    }
}

/// One problem in a statement: a message and where the offending value starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// A problem at byte `offset` of `text`.
    fn at(text: &str, offset: usize, message: impl Into<String>) -> Problem {
        let (line, column) = line_column(text, offset);
        Problem {
            line,
            column,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// Every problem found in a statement, in the order they appear; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl std::error::Error for Problems {}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}
