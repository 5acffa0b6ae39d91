//! The file as written, every checked value with its span, and the checks that turn it into a
//! [`Statement`] or a list of [`Problem`]s.

use std::collections::HashMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStatement {
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

pub(super) struct Validator<'a> {
    pub(super) text: &'a str,
    pub(super) problems: Vec<Problem>,
}

impl Validator<'_> {
    fn problem(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.problems
            .push(Problem::at(self.text, span.start, message));
    }

    pub(super) fn statement(&mut self, raw: RawStatement) -> Statement {
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
