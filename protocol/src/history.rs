//! A node's history: `GET /-/open-registry/history.json`, hourly buckets of the node's own
//! counters and of the network totals, for the dashboard's charts.
//!
//! Each bucket covers one hour of wall-clock time and is named by the hour's start (unix ms, a
//! multiple of [`HOUR_MS`]). Buckets come oldest first, and an hour in which the node recorded
//! nothing (it was down, say) is simply absent: readers must not assume the hours are
//! contiguous. What `values` holds is up to the node (`requests`, `errors`, `cached`...); a
//! value is either a count over the hour or the last reading of a gauge in it.
//!
//! Like [`crate::status`], fields are only ever added, and readers ignore what they do not know.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One hour, in milliseconds: the width of every bucket.
pub const HOUR_MS: u64 = 3_600_000;

/// The whole answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryView {
    /// When the view was made (unix ms).
    pub now_ms: u64,
    /// The width of a bucket ([`HOUR_MS`]).
    pub hour_ms: u64,
    /// How many hours the node keeps; older buckets are gone.
    pub kept_hours: u32,
    /// The node's own counters, oldest first.
    pub node: Vec<Bucket>,
    /// The network totals as this node saw them, oldest first.
    pub network: Vec<Bucket>,
}

/// One hour of one series.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Bucket {
    /// The start of the hour (unix ms, a multiple of [`HOUR_MS`]).
    pub at_ms: u64,
    /// The hour's values by name.
    pub values: BTreeMap<String, u64>,
}

/// The start of the hour `at_ms` falls in.
pub fn hour_start(at_ms: u64) -> u64 {
    at_ms - at_ms % HOUR_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_has_the_documented_shape_and_tolerates_unknown_and_missing_fields() {
        let v = HistoryView {
            now_ms: 1_764_547_200_000,
            hour_ms: HOUR_MS,
            kept_hours: 2160,
            node: vec![Bucket {
                at_ms: 1_764_543_600_000,
                values: BTreeMap::from([("errors".into(), 0), ("requests".into(), 12)]),
            }],
            network: vec![],
        };
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(
            json,
            r#"{"now_ms":1764547200000,"hour_ms":3600000,"kept_hours":2160,"node":[{"at_ms":1764543600000,"values":{"errors":0,"requests":12}}],"network":[]}"#
        );
        assert_eq!(serde_json::from_str::<HistoryView>(&json).unwrap(), v);
        // An older reader meets a newer node: unknown fields are ignored, missing ones default.
        let later: HistoryView =
            serde_json::from_str(r#"{"now_ms":5,"future":true,"node":[{"at_ms":0,"x":1}]}"#)
                .unwrap();
        assert_eq!(later.now_ms, 5);
        assert_eq!(later.node, vec![Bucket::default()]);
        assert!(later.network.is_empty());
    }

    #[test]
    fn hour_start_rounds_down_to_the_hour() {
        assert_eq!(hour_start(0), 0);
        assert_eq!(hour_start(HOUR_MS - 1), 0);
        assert_eq!(hour_start(HOUR_MS), HOUR_MS);
        assert_eq!(hour_start(1_764_547_200_000 + 59_999), 1_764_547_200_000);
    }
}
