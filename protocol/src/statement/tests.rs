//! The statement format's checks, totals and round trip.

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
    assert!(Statement::parse("[operator]\nname = \"Op\"\nurl = \"http://x.example/a\"\n").is_ok());
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

#[test]
fn signed_statements_round_trip_and_refuse_tampering() {
    use crate::record::{RecordError, Signable as _, Signed};
    let key = ed25519_dalek::SigningKey::from_bytes(&[4; 32]);
    let s = SignedStatement {
        seq: 3,
        at_ms: 1_764_547_200_000,
        statement: Statement::parse(EXAMPLE).unwrap(),
    };
    let wire = s.sign(&key).to_bytes();
    let back = Signed::from_bytes(&wire).unwrap();
    assert_eq!(back.verify_as::<SignedStatement>().unwrap().get(), &s);
    // One byte of the text changed: the signature no longer holds.
    let mut forged = back.clone();
    let at = forged.body.len() - 3;
    forged.body[at] ^= 1;
    assert_eq!(
        forged.verify_as::<SignedStatement>().unwrap_err(),
        RecordError::BadSignature
    );
    // A body that is not a valid statement is refused even when signed.
    let mut body = s.encode()[..17].to_vec();
    body.extend_from_slice(b"[operator]\nname = 1\n");
    assert!(SignedStatement::decode(&body).is_err());
    // Too large to gossip: refused before signing, and when received.
    let mut big = s.clone();
    let month = big.statement.months[0].clone();
    big.statement.months = (0..MAX_MONTHS)
        .map(|i| Month {
            month: format!("{}-{:02}", 2000 + i / 12, i % 12 + 1)
                .parse()
                .unwrap(),
            cost: vec![month.cost[0].clone(); MAX_ITEMS],
            ..month.clone()
        })
        .collect();
    assert!(big.try_encode().is_err());
    assert!(SignedStatement::decode(&big.encode()).is_err());
}
