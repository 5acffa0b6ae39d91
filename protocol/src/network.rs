//! The network view: `GET /-/open-registry/network.json`, what `open-registry network` prints
//! and the dashboard draws.
//!
//! A node builds it from the newest verified report and statement of every operator it has
//! heard from, its own included. Operators the node trusts (itself and its trust policy) make
//! the totals; everyone else is listed with `trusted: false` and summed apart under `others`,
//! so a sybil claiming a huge cost or traffic changes nothing in the trusted figures.
//!
//! Like [`crate::status`], fields are only ever added, and readers ignore what they do not know.
//! Amounts are decimal strings, exact, per currency; no exchange rate is ever applied.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::advisory::AdvisoryGroup;
use crate::status::CooldownStatus;

/// The whole view.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkView {
    /// When the view was made (unix ms).
    pub at_ms: u64,
    /// The node that made it (its operator's id).
    pub node: String,
    /// How many instances run.
    pub instances: Instances,
    /// Packages served and cached, by the trusted operators online.
    pub packages: Packages,
    /// Requests answered by the trusted operators online.
    pub requests: Requests,
    /// Errors now.
    pub errors: Errors,
    /// How far behind the upstream the trusted operators online are.
    pub lag: Lag,
    /// Trusted operators online whose upstream does not answer.
    pub upstream_down: u64,
    /// Money by currency (ISO 4217 code), from the trusted operators' statements.
    pub money: BTreeMap<String, Money>,
    /// Where the money goes: every cost item of each trusted operator's latest month in each
    /// currency.
    pub costs: Vec<CostItem>,
    /// What the donated money was spent on: every `spent` entry of the trusted operators'
    /// statements, newest month first, at most [`MAX_SPENT_ITEMS`].
    pub spent_items: Vec<SpentItem>,
    /// What the operators outside the trust policy claim, never added into the figures above.
    pub others: Others,
    /// Every operator heard from, trusted first, then by id.
    pub operators: Vec<OperatorView>,
    /// Reports and statements refused since the node started, by `kind.reason` (for example
    /// `report.forged`, `statement.rolled_back`).
    pub refused: BTreeMap<String, u64>,
    /// The versions this node withholds and why: the advisories of trusted operators in force
    /// and pending, and the versions in their release cooldown.
    pub withholding: Withholding,
}

/// What the node that made the view withholds from every client, and what it may soon.
///
/// Advisories are the trusted operators' (this node's own included), as the node that made the
/// view holds them; the cooldown is that node's own setting. Other nodes may differ: each
/// enforces its own trust policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Withholding {
    /// Trusted operators that must sign before an advisory is in force.
    pub advisory_threshold: usize,
    /// Advisories in force: their versions are withheld.
    pub in_force: Vec<AdvisoryGroup>,
    /// Advisories signed by fewer trusted operators than the threshold, with the signers so far.
    pub pending: Vec<AdvisoryGroup>,
    /// The release cooldown and the versions it holds now; absent when it is off.
    pub cooldown: Option<CooldownStatus>,
}

/// Instance counts. "Online" means a report made within two of its windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Instances {
    /// Every operator online.
    pub online: u64,
    /// Trusted operators online (this node counts).
    pub trusted_online: u64,
    /// Operators online outside the trust policy.
    pub other_online: u64,
    /// Operators heard from, online or not.
    pub known: u64,
}

/// Packages served and cached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Packages {
    /// Packument requests answered in the last window, summed.
    pub served_window: u64,
    /// Packument requests answered since each node started, summed.
    pub served_total: u64,
    /// The most packuments any one node holds (the network holds at least that many packages).
    pub cached_max: u64,
    /// Packuments held, summed over nodes (copies counted once per node).
    pub cached_sum: u64,
    /// Tarballs held, summed over nodes.
    pub tarballs_sum: u64,
}

/// Requests answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Requests {
    /// In the last window, summed.
    pub window: u64,
    /// Since each node started, summed.
    pub total: u64,
    /// In the last window, by kind (packument, version, tarball, other).
    pub by_kind: BTreeMap<String, u64>,
    /// In the last window, by where the answer came from (store, peer, upstream, node).
    pub by_source: BTreeMap<String, u64>,
    /// Body bytes served in the last window, summed.
    pub bytes_window: u64,
    /// Body bytes served since each node started, summed.
    pub bytes_total: u64,
}

/// Errors now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Errors {
    /// Errors per minute: each node's errors of its last window over that window, summed.
    pub per_minute: f64,
    /// Errors in the last windows, summed.
    pub window: u64,
    /// Those by class (client, server, upstream, peer, integrity, store).
    pub by_class: BTreeMap<String, u64>,
}

/// Lag behind the upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Lag {
    /// The most seconds any node is behind.
    pub max_seconds: u64,
    /// The most changes-feed sequences any node is behind.
    pub max_seq: u64,
}

/// Money in one currency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Money {
    /// What a month costs: the costs of each operator's latest month in this currency, summed.
    pub monthly_cost: String,
    /// All costs stated, every month.
    pub cost_total: String,
    /// All donations received, every month.
    pub donated: String,
    /// All of the received money spent, every month.
    pub spent: String,
    /// Donated minus spent.
    pub balance: String,
}

/// One cost item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CostItem {
    /// The operator's id.
    pub operator: String,
    /// The operator's name, from its statement.
    pub name: String,
    /// The month (YYYY-MM).
    pub month: String,
    pub provider: String,
    pub item: String,
    pub currency: String,
    pub amount: String,
}

/// Most entries [`NetworkView::spent_items`] lists.
pub const MAX_SPENT_ITEMS: usize = 500;

/// One use of donated money.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpentItem {
    /// The operator's id.
    pub operator: String,
    /// The operator's name, from its statement.
    pub name: String,
    /// The month (YYYY-MM).
    pub month: String,
    /// On what.
    pub on: String,
    pub currency: String,
    pub amount: String,
}

/// What operators outside the trust policy claim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Others {
    /// Their money, by currency.
    pub money: BTreeMap<String, Money>,
    /// Packument requests they claim for the last window.
    pub served_window: u64,
}

/// One operator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OperatorView {
    /// The operator's id (PeerId).
    pub id: String,
    /// From its statement, if one was heard.
    pub name: Option<String>,
    pub url: Option<String>,
    pub donate: Vec<String>,
    /// A report made within two of its windows.
    pub online: bool,
    /// This node or one in its trust policy.
    pub trusted: bool,
    /// This node itself.
    pub this_node: bool,
    /// From its newest report.
    pub version: String,
    pub uptime_secs: u64,
    pub last_report_ms: Option<u64>,
    pub window_secs: u64,
    pub served_window: u64,
    pub requests_window: u64,
    pub errors_window: u64,
    pub packuments: u64,
    pub tarballs: u64,
    pub store_bytes: u64,
    pub peers: u64,
    pub lag_seconds: Option<u64>,
    pub lag_seq: Option<u64>,
    pub upstream_down: bool,
    /// The sequence of its newest statement held, if any.
    pub statement_seq: Option<u64>,
    /// Its statement's totals by currency.
    pub money: BTreeMap<String, Money>,
}
