//! The network view, added up from the book: trusted operators make the figures, the others
//! are summed apart; and the view's Prometheus gauges.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use open_registry_protocol::PeerId;
use open_registry_protocol::network::{
    CostItem, Errors, MAX_SPENT_ITEMS, Money, NetworkView, OperatorView, Others, Packages,
    Requests, SpentItem,
};
use open_registry_protocol::report::{
    ERROR_CLASSES, KEY_LAG_SECONDS, KEY_LAG_SEQ, KEY_PACKUMENTS, KEY_PEERS, KEY_STORE_BYTES,
    KEY_TARBALLS, KEY_UPSTREAM_DOWN, KEY_WINDOW_BYTES, REQUEST_KINDS, Report, SOURCES,
};
use open_registry_protocol::statement::{Amount, SignedStatement, Totals};

use super::{Held, ONLINE_WINDOWS};

/// What a view is built from.
pub(super) struct Inputs<'a> {
    pub now_ms: u64,
    pub me: PeerId,
    pub trusts: &'a dyn Fn(&PeerId) -> bool,
    pub reports: &'a [(PeerId, Held<Report>)],
    pub statements: &'a [(PeerId, Held<SignedStatement>)],
    pub refused: BTreeMap<String, u64>,
}

/// Money totals in one currency, exact.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    monthly: Amount,
    totals: Totals,
}

impl Sums {
    fn add(&mut self, o: Sums) {
        self.monthly = self.monthly + o.monthly;
        self.totals = self.totals + o.totals;
    }

    fn money(self) -> Money {
        Money {
            monthly_cost: self.monthly.to_string(),
            cost_total: self.totals.cost.to_string(),
            donated: self.totals.donated.to_string(),
            spent: self.totals.spent.to_string(),
            balance: self.totals.balance.to_string(),
        }
    }
}

/// One statement's sums by currency: its latest month's costs, and every month's totals.
fn sums(s: &SignedStatement) -> BTreeMap<String, Sums> {
    let mut out: BTreeMap<String, Sums> = BTreeMap::new();
    let mut latest: BTreeMap<String, (open_registry_protocol::statement::YearMonth, Amount)> =
        BTreeMap::new();
    for m in &s.statement.months {
        let cur = m.currency.as_str().to_owned();
        let t = m.totals();
        let e = out.entry(cur.clone()).or_default();
        e.totals = e.totals + t;
        match latest.get(&cur) {
            Some((month, _)) if *month >= m.month => {}
            _ => {
                latest.insert(cur, (m.month, t.cost));
            }
        }
    }
    for (cur, (_, cost)) in latest {
        if let Some(e) = out.get_mut(&cur) {
            e.monthly = cost;
        }
    }
    out
}

/// The cost items of a statement's latest month in each currency.
fn latest_costs(id: &PeerId, s: &SignedStatement) -> Vec<CostItem> {
    let mut latest: BTreeMap<&str, &open_registry_protocol::statement::Month> = BTreeMap::new();
    for m in &s.statement.months {
        let cur = m.currency.as_str();
        if latest.get(cur).is_none_or(|held| held.month < m.month) {
            latest.insert(cur, m);
        }
    }
    latest
        .values()
        .flat_map(|m| {
            m.cost.iter().map(|c| CostItem {
                operator: id.to_string(),
                name: s.statement.operator.name.clone(),
                month: m.month.to_string(),
                provider: c.provider.clone(),
                item: c.item.clone(),
                currency: m.currency.as_str().to_owned(),
                amount: c.amount.to_string(),
            })
        })
        .collect()
}

fn is_online(r: &Report, now_ms: u64) -> bool {
    now_ms <= r.at_ms + ONLINE_WINDOWS * r.window_ms
}

/// The view.
pub(super) fn build(i: Inputs<'_>) -> NetworkView {
    let statements: BTreeMap<PeerId, &SignedStatement> =
        i.statements.iter().map(|(p, h)| (*p, &h.value)).collect();
    let reports: BTreeMap<PeerId, &Report> =
        i.reports.iter().map(|(p, h)| (*p, &h.value)).collect();
    let mut ids: Vec<PeerId> = reports.keys().chain(statements.keys()).copied().collect();
    ids.sort_by_key(|p| (!(i.trusts)(p), p.to_string()));
    ids.dedup();

    let mut v = NetworkView {
        at_ms: i.now_ms,
        node: i.me.to_string(),
        refused: i.refused,
        ..NetworkView::default()
    };
    let mut trusted_money: BTreeMap<String, Sums> = BTreeMap::new();
    let mut other_money: BTreeMap<String, Sums> = BTreeMap::new();
    let mut minutes_errors = 0.0;
    for id in ids {
        let trusted = (i.trusts)(&id);
        let report = reports.get(&id).copied();
        let statement = statements.get(&id).copied();
        let online = report.is_some_and(|r| is_online(r, i.now_ms));
        let money = statement.map(sums).unwrap_or_default();
        let mut op = OperatorView {
            id: id.to_string(),
            online,
            trusted,
            this_node: id == i.me,
            statement_seq: statement.map(|s| s.seq),
            money: money.iter().map(|(c, s)| (c.clone(), s.money())).collect(),
            ..OperatorView::default()
        };
        if let Some(s) = statement {
            op.name = Some(s.statement.operator.name.clone());
            op.url = s.statement.operator.url.clone();
            op.donate = s.statement.operator.donate.clone();
        }
        if let Some(r) = report {
            op.version = r.version.clone();
            op.uptime_secs = r.uptime_secs();
            op.last_report_ms = Some(r.at_ms);
            op.window_secs = r.window_ms / 1000;
            op.served_window = r.value("window.requests.packument");
            op.requests_window = r.sum("window.requests", &REQUEST_KINDS);
            op.errors_window = r.sum("window.errors", &ERROR_CLASSES);
            op.packuments = r.value(KEY_PACKUMENTS);
            op.tarballs = r.value(KEY_TARBALLS);
            op.store_bytes = r.value(KEY_STORE_BYTES);
            op.peers = r.value(KEY_PEERS);
            op.lag_seconds = r.values.get(KEY_LAG_SECONDS).copied();
            op.lag_seq = r.values.get(KEY_LAG_SEQ).copied();
            op.upstream_down = r.value(KEY_UPSTREAM_DOWN) > 0;
        }
        v.instances.known += 1;
        if online {
            v.instances.online += 1;
        }
        if trusted {
            for (c, s) in &money {
                trusted_money.entry(c.clone()).or_default().add(*s);
            }
            if let Some(s) = statement {
                v.costs.extend(latest_costs(&id, s));
                for m in &s.statement.months {
                    v.spent_items.extend(m.spent.iter().map(|x| SpentItem {
                        operator: id.to_string(),
                        name: s.statement.operator.name.clone(),
                        month: m.month.to_string(),
                        on: x.on.clone(),
                        currency: m.currency.as_str().to_owned(),
                        amount: x.amount.to_string(),
                    }));
                }
            }
        } else {
            for (c, s) in &money {
                other_money.entry(c.clone()).or_default().add(*s);
            }
        }
        match (online, trusted, report) {
            (true, true, Some(r)) => {
                v.instances.trusted_online += 1;
                add_traffic(&mut v, r);
                let minutes = (r.window_ms as f64 / 60_000.0).max(1.0 / 60.0);
                minutes_errors += op.errors_window as f64 / minutes;
                v.lag.max_seconds = v.lag.max_seconds.max(op.lag_seconds.unwrap_or(0));
                v.lag.max_seq = v.lag.max_seq.max(op.lag_seq.unwrap_or(0));
                v.upstream_down += u64::from(op.upstream_down);
            }
            (true, false, _) => {
                v.instances.other_online += 1;
                v.others.served_window += op.served_window;
            }
            _ => {}
        }
        v.operators.push(op);
    }
    v.errors.per_minute = (minutes_errors * 100.0).round() / 100.0;
    v.spent_items.sort_by(|a, b| {
        b.month
            .cmp(&a.month)
            .then_with(|| a.operator.cmp(&b.operator))
    });
    v.spent_items.truncate(MAX_SPENT_ITEMS);
    v.money = trusted_money
        .into_iter()
        .map(|(c, s)| (c, s.money()))
        .collect();
    v.others = Others {
        money: other_money
            .into_iter()
            .map(|(c, s)| (c, s.money()))
            .collect(),
        ..v.others
    };
    v
}

/// Adds one trusted online report's traffic into the view.
fn add_traffic(v: &mut NetworkView, r: &Report) {
    let Packages {
        served_window,
        served_total,
        cached_max,
        cached_sum,
        tarballs_sum,
    } = &mut v.packages;
    *served_window += r.value("window.requests.packument");
    *served_total += r.value("total.requests.packument");
    *cached_max = (*cached_max).max(r.value(KEY_PACKUMENTS));
    *cached_sum += r.value(KEY_PACKUMENTS);
    *tarballs_sum += r.value(KEY_TARBALLS);
    let Requests {
        window,
        total,
        by_kind,
        by_source,
        bytes_window,
        bytes_total,
    } = &mut v.requests;
    *window += r.sum("window.requests", &REQUEST_KINDS);
    *total += r.sum("total.requests", &REQUEST_KINDS);
    for k in REQUEST_KINDS {
        *by_kind.entry(k.to_owned()).or_default() += r.value(&format!("window.requests.{k}"));
    }
    for s in SOURCES {
        *by_source.entry(s.to_owned()).or_default() += r.value(&format!("window.source.{s}"));
    }
    *bytes_window += r.value(KEY_WINDOW_BYTES);
    *bytes_total += r.value("total.bytes");
    let Errors {
        window, by_class, ..
    } = &mut v.errors;
    for c in ERROR_CLASSES {
        let n = r.value(&format!("window.errors.{c}"));
        *window += n;
        *by_class.entry(c.to_owned()).or_default() += n;
    }
}

/// The view's gauges in Prometheus text (prefixed `open_registry_network_`).
pub(crate) fn prometheus(v: &NetworkView) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(String, String)]| {
        let _ = writeln!(
            out,
            "# HELP open_registry_network_{name} {help}\n# TYPE open_registry_network_{name} gauge"
        );
        for (labels, value) in samples {
            let _ = writeln!(out, "open_registry_network_{name}{labels} {value}");
        }
    };
    let one = |n: u64| vec![(String::new(), n.to_string())];
    gauge(
        "instances",
        "Operators with a report within two windows, by trust (trusted: this node and its trust policy).",
        &[
            (
                "{trust=\"trusted\"}".into(),
                v.instances.trusted_online.to_string(),
            ),
            (
                "{trust=\"other\"}".into(),
                v.instances.other_online.to_string(),
            ),
        ],
    );
    gauge(
        "operators_known",
        "Operators whose report or statement this node holds.",
        &one(v.instances.known),
    );
    gauge(
        "packages_served_window",
        "Packument requests the trusted operators online answered in their last window.",
        &one(v.packages.served_window),
    );
    gauge(
        "packages_cached_max",
        "The most packuments one trusted node online holds.",
        &one(v.packages.cached_max),
    );
    gauge(
        "requests_window",
        "Requests the trusted operators online answered in their last window.",
        &one(v.requests.window),
    );
    gauge(
        "errors_per_minute",
        "Errors per minute at the trusted operators online (their last windows).",
        &[(String::new(), v.errors.per_minute.to_string())],
    );
    gauge(
        "lag_max_seconds",
        "The most seconds a trusted node online is behind the upstream.",
        &one(v.lag.max_seconds),
    );
    gauge(
        "lag_max_seq",
        "The most changes-feed sequences a trusted node online is behind the upstream.",
        &one(v.lag.max_seq),
    );
    gauge(
        "upstream_down",
        "Trusted nodes online whose upstream does not answer.",
        &one(v.upstream_down),
    );
    let money = |f: fn(&Money) -> &String| -> Vec<(String, String)> {
        v.money
            .iter()
            .map(|(c, m)| (format!("{{currency=\"{c}\"}}"), f(m).clone()))
            .collect()
    };
    gauge(
        "monthly_cost",
        "What a month of the network costs, per currency: each trusted operator's latest month.",
        &money(|m| &m.monthly_cost),
    );
    gauge(
        "donated",
        "Donations the trusted operators received, all months, per currency.",
        &money(|m| &m.donated),
    );
    gauge(
        "spent",
        "Donated money the trusted operators spent, all months, per currency.",
        &money(|m| &m.spent),
    );
    gauge(
        "balance",
        "Donated minus spent, per currency.",
        &money(|m| &m.balance),
    );
    let w = &v.withholding;
    gauge(
        "advisories",
        "Advisories of trusted operators this node holds: in force (versions withheld) or pending (fewer signers than the threshold).",
        &[
            ("{state=\"in_force\"}".into(), w.in_force.len().to_string()),
            ("{state=\"pending\"}".into(), w.pending.len().to_string()),
        ],
    );
    gauge(
        "cooldown_held",
        "Versions this node holds back in their release cooldown now (0 when the cooldown is off).",
        &one(w.cooldown.as_ref().map_or(0, |c| c.held.len() as u64)),
    );
    let _ = writeln!(
        out,
        "# HELP open_registry_network_refused_total Reports and statements refused, by kind and reason.\n# TYPE open_registry_network_refused_total counter"
    );
    for (k, n) in &v.refused {
        let (kind, reason) = k.split_once('.').unwrap_or((k, ""));
        let _ = writeln!(
            out,
            "open_registry_network_refused_total{{kind=\"{kind}\",reason=\"{reason}\"}} {n}"
        );
    }
    out
}
