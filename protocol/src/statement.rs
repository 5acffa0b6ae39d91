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

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde::{Deserialize, Serialize, Serializer};
use toml::Spanned;

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

/// Units of an [`Amount`] per currency unit (amounts are held in 10⁻⁴).
const SCALE: i128 = 10_i128.pow(MAX_FRACTION_DIGITS as u32);

/// An exact decimal amount of money, in 10⁻⁴ of the currency unit.
///
/// Parsed amounts are never negative; a computed balance can be. It is written with at least
/// two fraction digits ("6.80") and at most [`MAX_FRACTION_DIGITS`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(i128);

impl Amount {
    /// Zero.
    pub const ZERO: Amount = Amount(0);

    /// The amount in 10⁻⁴ of the currency unit.
    pub fn units(self) -> i128 {
        self.0
    }

    /// The amount of `units` 10⁻⁴ of the currency unit.
    pub fn from_units(units: i128) -> Amount {
        Amount(units)
    }

    /// The absolute amount that a signed decimal string ("-6.80", "+25") stands for: what an
    /// export's debit column holds. The digits follow the rules of [`Amount::from_str`].
    pub fn parse_abs(s: &str) -> Result<Amount, String> {
        let s = s.trim();
        let digits = s
            .strip_prefix('-')
            .or_else(|| s.strip_prefix('+'))
            .unwrap_or(s);
        digits.parse()
    }
}

impl std::ops::Add for Amount {
    type Output = Amount;
    fn add(self, o: Amount) -> Amount {
        Amount(self.0 + o.0)
    }
}

impl std::ops::Sub for Amount {
    type Output = Amount;
    fn sub(self, o: Amount) -> Amount {
        Amount(self.0 - o.0)
    }
}

impl std::iter::Sum for Amount {
    fn sum<I: Iterator<Item = Amount>>(iter: I) -> Amount {
        iter.fold(Amount::ZERO, |a, b| a + b)
    }
}

impl FromStr for Amount {
    type Err = String;

    /// Digits, optionally a point and 1 to [`MAX_FRACTION_DIGITS`] digits: "6.80", "25", "0.0125".
    fn from_str(s: &str) -> Result<Amount, String> {
        if s.is_empty() {
            return Err("amount is empty".into());
        }
        if s.chars().count() > MAX_AMOUNT_LEN {
            return Err(format!("amount is longer than {MAX_AMOUNT_LEN} characters"));
        }
        if s.starts_with('-') {
            return Err(format!("amount {s:?} is negative"));
        }
        if s.contains(['e', 'E']) {
            return Err(format!(
                "amount {s:?} has an exponent: write the digits out"
            ));
        }
        let (int, frac) = match s.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (s, None),
        };
        let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(int) || frac.is_some_and(|f| !all_digits(f)) {
            return Err(format!(
                "amount {s:?} is not a decimal number like \"6.80\""
            ));
        }
        let frac = frac.unwrap_or("");
        if frac.len() > MAX_FRACTION_DIGITS {
            return Err(format!(
                "amount {s:?} has more than {MAX_FRACTION_DIGITS} fraction digits"
            ));
        }
        // At most MAX_AMOUNT_LEN digits: far below i128's range.
        let whole: i128 = int
            .parse()
            .map_err(|_| format!("amount {s:?} is too large"))?;
        let mut part: i128 = 0;
        for (i, b) in frac.bytes().enumerate() {
            part += i128::from(b - b'0') * 10_i128.pow((MAX_FRACTION_DIGITS - 1 - i) as u32);
        }
        Ok(Amount(whole * SCALE + part))
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let scale = SCALE as u128;
        let frac = format!("{:0width$}", abs % scale, width = MAX_FRACTION_DIGITS);
        let frac = frac.trim_end_matches('0');
        let frac = format!("{frac:0<2}");
        write!(f, "{sign}{}.{frac}", abs / scale)
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A calendar month, "YYYY-MM".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct YearMonth {
    /// The year, 1000 to 9999.
    pub year: u16,
    /// The month, 1 to 12.
    pub month: u8,
}

impl FromStr for YearMonth {
    type Err = String;

    fn from_str(s: &str) -> Result<YearMonth, String> {
        let bad = || format!("month {s:?} is not YYYY-MM, like \"2026-11\"");
        let b = s.as_bytes();
        if b.len() != 7 || b[4] != b'-' {
            return Err(bad());
        }
        let (y, m) = (&s[..4], &s[5..]);
        if !y.bytes().chain(m.bytes()).all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        let year: u16 = y.parse().map_err(|_| bad())?;
        let month: u8 = m.parse().map_err(|_| bad())?;
        if year < 1000 || !(1..=12).contains(&month) {
            return Err(bad());
        }
        Ok(YearMonth { year, month })
    }
}

impl fmt::Display for YearMonth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl Serialize for YearMonth {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A currency code: three uppercase letters, as in ISO 4217 ("EUR", "USD").
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Currency(String);

impl Currency {
    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Currency {
    type Err = String;

    fn from_str(s: &str) -> Result<Currency, String> {
        if s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Currency(s.to_owned()))
        } else {
            Err(format!(
                "currency {s:?} is not a three-letter uppercase code like \"EUR\""
            ))
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

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

// The file as written, every checked value with its span.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatement {
    operator: RawOperator,
    #[serde(default)]
    month: Vec<Spanned<RawMonth>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperator {
    name: Spanned<String>,
    url: Option<Spanned<String>>,
    #[serde(default)]
    donate: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMonth {
    month: Spanned<String>,
    currency: Spanned<String>,
    #[serde(default)]
    cost: Vec<Spanned<RawCost>>,
    #[serde(default)]
    donations: Vec<Spanned<RawDonation>>,
    #[serde(default)]
    spent: Vec<Spanned<RawSpent>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCost {
    provider: Spanned<String>,
    item: Spanned<String>,
    amount: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDonation {
    source: Spanned<String>,
    amount: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpent {
    on: Spanned<String>,
    amount: Spanned<String>,
}

struct Validator<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn problem(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.problems
            .push(Problem::at(self.text, span.start, message));
    }

    fn statement(&mut self, raw: RawStatement) -> Statement {
        let operator = Operator {
            name: self.text_value("name", raw.operator.name),
            url: raw.operator.url.map(|u| self.url(u)),
            donate: self.bounded("donate links", raw.operator.donate, |v, u| v.url(u)),
        };
        if let Some(extra) = raw.month.get(MAX_MONTHS) {
            self.problem(
                extra.span(),
                format!("more than {MAX_MONTHS} months: drop the oldest"),
            );
        }
        let mut seen: HashMap<(YearMonth, Currency), usize> = HashMap::new();
        let mut months = Vec::new();
        for m in raw.month.into_iter().take(MAX_MONTHS) {
            let m = m.into_inner();
            let month_span = m.month.span();
            let month = self.parse::<YearMonth>(m.month);
            let currency = self.parse::<Currency>(m.currency);
            let cost = self.bounded("costs", m.cost, |v, c| {
                let c = c.into_inner();
                Cost {
                    provider: v.text_value("provider", c.provider),
                    item: v.text_value("item", c.item),
                    amount: v.amount(c.amount),
                }
            });
            let donations = self.bounded("donations", m.donations, |v, d| {
                let d = d.into_inner();
                Donation {
                    source: v.text_value("source", d.source),
                    amount: v.amount(d.amount),
                }
            });
            let spent = self.bounded("spent entries", m.spent, |v, s| {
                let s = s.into_inner();
                Spent {
                    on: v.text_value("on", s.on),
                    amount: v.amount(s.amount),
                }
            });
            let (Some(month), Some(currency)) = (month, currency) else {
                continue;
            };
            let (line, _) = line_column(self.text, month_span.start);
            if let Some(&first) = seen.get(&(month, currency.clone())) {
                self.problem(
                    month_span,
                    format!("month {month} in {currency} is already listed on line {first}"),
                );
                continue;
            }
            seen.insert((month, currency.clone()), line);
            months.push(Month {
                month,
                currency,
                cost,
                donations,
                spent,
            });
        }
        Statement { operator, months }
    }

    /// Checks at most [`MAX_ITEMS`] entries with `f`; a problem at the first one past it.
    fn bounded<R, T>(
        &mut self,
        what: &str,
        raw: Vec<Spanned<R>>,
        mut f: impl FnMut(&mut Self, Spanned<R>) -> T,
    ) -> Vec<T> {
        if let Some(extra) = raw.get(MAX_ITEMS) {
            self.problem(extra.span(), format!("more than {MAX_ITEMS} {what}"));
        }
        raw.into_iter()
            .take(MAX_ITEMS)
            .map(|r| f(self, r))
            .collect()
    }

    fn parse<T: FromStr<Err = String>>(&mut self, s: Spanned<String>) -> Option<T> {
        match s.get_ref().parse() {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(s.span(), e);
                None
            }
        }
    }

    fn amount(&mut self, s: Spanned<String>) -> Amount {
        self.parse(s).unwrap_or_default()
    }

    fn text_value(&mut self, what: &str, s: Spanned<String>) -> String {
        let span = s.span();
        let v = s.into_inner();
        if v.trim().is_empty() {
            self.problem(span, format!("{what} is empty"));
        } else if v.chars().count() > MAX_TEXT {
            self.problem(span, format!("{what} is longer than {MAX_TEXT} characters"));
        } else if v.chars().any(char::is_control) {
            self.problem(span, format!("{what} has a control character"));
        }
        v
    }

    fn url(&mut self, s: Spanned<String>) -> String {
        let span = s.span();
        let v = self.text_value("url", s);
        let rest = v
            .strip_prefix("https://")
            .or_else(|| v.strip_prefix("http://"));
        match rest {
            Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace) => {
            }
            _ if v.trim().is_empty() => {}
            _ => self.problem(span, format!("url {v:?} is not an http or https URL")),
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"[operator]
name = "Example Hosting Co-op"
url = "https://example.org"
donate = ["https://opencollective.com/example"]

[[month]]
month = "2026-11"
currency = "EUR"
cost = [ { provider = "Hetzner", item = "CX32 server", amount = "6.80" },
         { provider = "DNSimple", item = "domain", amount = "1.25" } ]
donations = [ { source = "OpenCollective", amount = "25.00" } ]
spent = [ { on = "Hetzner CX32 server", amount = "6.80" } ]

[[month]]
month = "2026-12"
currency = "EUR"
cost = [ { provider = "Hetzner", item = "CX32 server", amount = "6.80" } ]
donations = [ { source = "OpenCollective", amount = "10" } ]
spent = [ { on = "Hetzner CX32 server", amount = "6.80" },
          { on = "New disk", amount = "40.0001" } ]

[[month]]
month = "2026-12"
currency = "USD"
donations = [ { source = "GitHub Sponsors", amount = "5.00" } ]
"#;

    fn problems(text: &str) -> Vec<String> {
        Statement::parse(text)
            .unwrap_err()
            .0
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    /// A valid statement with one month whose `field = value` line is `line`.
    fn with_month_line(line: &str) -> String {
        format!(
            "[operator]\nname = \"Op\"\n\n[[month]]\nmonth = \"2026-11\"\ncurrency = \"EUR\"\n{line}\n"
        )
    }

    #[test]
    fn parses_the_example_and_sums_exactly() {
        let s = Statement::parse(EXAMPLE).unwrap();
        assert_eq!(s.operator.name, "Example Hosting Co-op");
        assert_eq!(s.operator.url.as_deref(), Some("https://example.org"));
        assert_eq!(s.operator.donate.len(), 1);
        assert_eq!(s.months.len(), 3);
        let nov = &s.months[0];
        assert_eq!(nov.month.to_string(), "2026-11");
        assert_eq!(nov.currency.as_str(), "EUR");
        let t = nov.totals();
        assert_eq!(t.cost.to_string(), "8.05");
        assert_eq!(t.donated.to_string(), "25.00");
        assert_eq!(t.spent.to_string(), "6.80");
        assert_eq!(t.balance.to_string(), "18.20");
        let dec = s.months[1].totals();
        assert_eq!(dec.spent.to_string(), "46.8001");
        assert_eq!(dec.balance.to_string(), "-36.8001");
        let all = s.totals_by_currency();
        let eur = &all[&"EUR".parse::<Currency>().unwrap()];
        assert_eq!(eur.cost.to_string(), "14.85");
        assert_eq!(eur.donated.to_string(), "35.00");
        assert_eq!(eur.balance.to_string(), "-18.6001");
        let usd = &all[&"USD".parse::<Currency>().unwrap()];
        assert_eq!(usd.donated.to_string(), "5.00");
        assert_eq!(usd.cost, Amount::ZERO);
    }

    #[test]
    fn to_toml_parses_back_to_the_same_statement() {
        let s = Statement::parse(EXAMPLE).unwrap();
        let text = s.to_toml();
        assert_eq!(Statement::parse(&text).unwrap(), s);
        let mut tricky = s.clone();
        tricky.operator.name = r#"The "Quoted" Co-op \ ça"#.into();
        tricky.months[0].spent[0].on = "it's 'single' and \"double\"".into();
        tricky.months[0].cost.clear();
        assert_eq!(Statement::parse(&tricky.to_toml()).unwrap(), tricky);
        let minimal = Statement::parse("[operator]\nname = \"Op\"\n").unwrap();
        assert_eq!(Statement::parse(&minimal.to_toml()).unwrap(), minimal);
    }

    #[test]
    fn amounts_are_exact_decimals() {
        let a = |s: &str| s.parse::<Amount>();
        assert_eq!(a("6.80").unwrap().units(), 68_000);
        assert_eq!(a("0.0001").unwrap().units(), 1);
        assert_eq!(a("25").unwrap().to_string(), "25.00");
        assert_eq!(a("1.5").unwrap().to_string(), "1.50");
        assert_eq!(a("1.234").unwrap().to_string(), "1.234");
        assert_eq!(a("007.10").unwrap().to_string(), "7.10");
        // 0.1 + 0.2 is 0.3, exactly.
        assert_eq!((a("0.1").unwrap() + a("0.2").unwrap()), a("0.3").unwrap());
        assert_eq!(
            a("99999999999999999999.99").unwrap().to_string(),
            "99999999999999999999.99"
        );
        for bad in [
            "",
            "-1",
            "1e3",
            "1E3",
            "1.",
            ".5",
            "1.23456",
            "1,5",
            "+1",
            " 1",
            "0x10",
            "1.2.3",
            "abc",
            "1234567890123456789012345",
        ] {
            assert!(a(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(Amount::parse_abs("-6.80").unwrap().to_string(), "6.80");
        assert_eq!(Amount::parse_abs("+25").unwrap().to_string(), "25.00");
        assert!(Amount::parse_abs("--1").is_err());
    }

    #[test]
    fn months_and_currencies() {
        assert_eq!(
            "2026-01".parse::<YearMonth>().unwrap(),
            YearMonth {
                year: 2026,
                month: 1
            }
        );
        for bad in [
            "2026-13",
            "2026-00",
            "2026-1",
            "26-01",
            "2026/01",
            "2026-01-01",
            "０２６-01",
        ] {
            assert!(bad.parse::<YearMonth>().is_err(), "{bad:?}");
        }
        assert!("EUR".parse::<Currency>().is_ok());
        for bad in ["eur", "EURO", "EU", "E1R", ""] {
            assert!(bad.parse::<Currency>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn syntax_errors_point_at_their_line_and_column() {
        let p = problems("[operator]\nname = \"Op\n");
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("2:11: "), "{p:?}");
        // A float where an amount string belongs: a shape error at the value.
        let p = problems(&with_month_line(
            "cost = [ { provider = \"H\", item = \"i\", amount = 6.80 } ]",
        ));
        assert!(p[0].starts_with("7:49: "), "{p:?}");
        // An unknown key, at the key.
        let p = problems("[operator]\nname = \"Op\"\nnmae = \"x\"\n");
        assert!(p[0].starts_with("3:1: "), "{p:?}");
        assert!(p[0].contains("nmae"), "{p:?}");
        // No operator at all.
        let p = problems("[[month]]\nmonth = \"2026-11\"\ncurrency = \"EUR\"\n");
        assert!(p[0].contains("operator"), "{p:?}");
    }

    #[test]
    fn each_checked_value_is_reported_where_it_is() {
        let cases: &[(&str, &str)] = &[
            (
                "cost = [ { provider = \"H\", item = \"i\", amount = \"-1\" } ]",
                "7:49: amount \"-1\" is negative",
            ),
            (
                "cost = [ { provider = \"H\", item = \"i\", amount = \"1e3\" } ]",
                "7:49: amount \"1e3\" has an exponent",
            ),
            (
                "cost = [ { provider = \"H\", item = \"i\", amount = \"1.23456\" } ]",
                "7:49: amount \"1.23456\" has more than 4 fraction digits",
            ),
            (
                "cost = [ { provider = \"\", item = \"i\", amount = \"1\" } ]",
                "7:23: provider is empty",
            ),
            (
                "donations = [ { source = \"  \", amount = \"1\" } ]",
                "7:26: source is empty",
            ),
            (
                "spent = [ { on = \"x\", amount = \"1,5\" } ]",
                "7:32: amount \"1,5\" is not a decimal number",
            ),
        ];
        for (line, want) in cases {
            let p = problems(&with_month_line(line));
            assert_eq!(p.len(), 1, "{line}: {p:?}");
            assert!(p[0].starts_with(want), "{line}: got {p:?}, want {want}");
        }
        let long = "x".repeat(MAX_TEXT + 1);
        let p = problems(&with_month_line(&format!(
            "spent = [ {{ on = \"{long}\", amount = \"1\" }} ]"
        )));
        assert_eq!(p, ["7:18: on is longer than 200 characters"]);
    }

    #[test]
    fn operator_fields_are_checked() {
        let p = problems(
            "[operator]\nname = \"\"\nurl = \"ftp://example.org\"\ndonate = [\"https://ok.example\", \"example.org\"]\n",
        );
        assert_eq!(
            p,
            [
                "2:8: name is empty",
                "3:7: url \"ftp://example.org\" is not an http or https URL",
                "4:33: url \"example.org\" is not an http or https URL",
            ]
        );
        assert!(
            Statement::parse("[operator]\nname = \"Op\"\nurl = \"http://x.example/a\"\n").is_ok()
        );
        assert_eq!(
            problems("[operator]\nname = \"Op\"\nurl = \"https://\"\n"),
            ["3:7: url \"https://\" is not an http or https URL"]
        );
    }

    #[test]
    fn months_currencies_and_duplicates_are_checked() {
        let text = "[operator]\nname = \"Op\"\n\n[[month]]\nmonth = \"2026-13\"\ncurrency = \"eur\"\n\n[[month]]\nmonth = \"2026-11\"\ncurrency = \"EUR\"\n\n[[month]]\nmonth = \"2026-11\"\ncurrency = \"USD\"\n\n[[month]]\nmonth = \"2026-11\"\ncurrency = \"EUR\"\n";
        assert_eq!(
            problems(text),
            [
                "5:9: month \"2026-13\" is not YYYY-MM, like \"2026-11\"",
                "6:12: currency \"eur\" is not a three-letter uppercase code like \"EUR\"",
                "17:9: month 2026-11 in EUR is already listed on line 9",
            ]
        );
    }

    #[test]
    fn counts_are_bounded() {
        let mut text = String::from("[operator]\nname = \"Op\"\n");
        for i in 0..=MAX_MONTHS {
            let (y, m) = (2000 + i / 12, i % 12 + 1);
            text.push_str(&format!(
                "[[month]]\nmonth = \"{y}-{m:02}\"\ncurrency = \"EUR\"\n"
            ));
        }
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("more than 120 months"), "{p:?}");
        assert!(
            p[0].starts_with(&format!("{}:", 3 + 3 * MAX_MONTHS)),
            "{p:?}"
        );

        let items: Vec<String> = (0..=MAX_ITEMS)
            .map(|_| "{ on = \"x\", amount = \"1\" }".to_owned())
            .collect();
        let p = problems(&with_month_line(&format!(
            "spent = [{}]",
            items.join(",\n")
        )));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with(&format!("{}:1: more than 100 spent entries", 7 + MAX_ITEMS)),
            "{p:?}"
        );
    }

    #[test]
    fn line_column_counts_characters() {
        let t = "ab\nçd\ne";
        assert_eq!(line_column(t, 0), (1, 1));
        assert_eq!(line_column(t, 3), (2, 1));
        assert_eq!(line_column(t, 5), (2, 2)); // after the two-byte ç
        assert_eq!(line_column(t, 7), (3, 1));
        assert_eq!(line_column(t, 100), (3, 2));
    }
}
