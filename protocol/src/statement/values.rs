//! The values a statement holds: exact amounts, months and currency codes.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use super::{MAX_AMOUNT_LEN, MAX_FRACTION_DIGITS};

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
