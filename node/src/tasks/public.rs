//! Publishing what the node does and costs: every `report_interval`, the node makes its signed
//! report, reads and signs its statement, keeps both in its own book and gossips them; it takes
//! every report and statement heard on gossip into the book (the book refuses and counts what
//! is forged, rolled back, oversized or stale).
//!
//! Each window also goes into the hourly history (this node's figures and the network's, each
//! trusted report counted once), and the popularity counts are saved, so both survive
//! restarts.
//!
//! Without the peer-to-peer network the node still makes its reports, so its own view (a
//! network of one) is current.

use std::sync::Arc;
use std::time::Duration;

use open_registry_gateway::Traffic;
use open_registry_protocol::record::Signable as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::every;
use crate::clock::Clock;
use crate::fetch::Fetcher;
use crate::history::{History, Series};
use crate::metrics::Metrics;
use crate::net;
use crate::peer::Peers;
use crate::peer::popularity::Popularity;
use crate::public::{Book, Gathered, OwnStatement, Reporter, window_figures};
use crate::records::Identity;
use crate::store::pins::Pins;
use crate::tasks::sync::Sync;

/// What the reporting tasks work with.
#[derive(Debug, Clone)]
pub(crate) struct Public {
    pub book: Arc<Book>,
    pub reporter: Arc<Reporter>,
    pub statement: Arc<OwnStatement>,
    pub identity: Identity,
    pub fetcher: Arc<Fetcher>,
    pub metrics: Arc<Metrics>,
    pub traffic: Arc<Traffic>,
    pub pins: Arc<Pins>,
    pub sync: Arc<Sync>,
    pub peers: Option<Arc<Peers>>,
    pub history: Arc<History>,
    pub popularity: Arc<Popularity>,
    pub clock: Clock,
    pub interval: Duration,
}

impl Public {
    /// Makes the first report at once (so this node is in its own view from the start),
    /// subscribes to the topics and starts the tasks on `tracker`.
    pub(crate) async fn spawn(
        self,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        self.tick().await;
        if let Some(peers) = &self.peers {
            for topic in [net::REPORTS_TOPIC, net::STATEMENTS_TOPIC] {
                let mut rx = peers.client().subscribe(topic).await?;
                let (book, stop) = (self.book.clone(), cancel.clone());
                tracker.spawn(async move {
                    loop {
                        let msg = tokio::select! {
                            _ = stop.cancelled() => return,
                            m = rx.recv() => match m { Some(m) => m, None => return },
                        };
                        let taken = if topic == net::REPORTS_TOPIC {
                            book.take_report(&msg.data).map(|_| ())
                        } else {
                            book.take_statement(&msg.data).map(|_| ())
                        };
                        if let Err(why) = taken {
                            tracing::debug!(from = ?msg.source, topic, ?why, "refused a gossiped message");
                        }
                    }
                });
            }
        }
        tracker.spawn(async move {
            let this = &self;
            every(self.interval, &cancel, None, |_| this.tick()).await;
        });
        Ok(())
    }

    /// One window: the report and the statement, kept and gossiped.
    async fn tick(&self) {
        let now = self.clock.now_ms();
        let statement = match self
            .statement
            .signed(&self.fetcher.store().index, &self.identity, now)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not sign the statement");
                None
            }
        };
        let mut statement_seq = None;
        if let Some(wire) = &statement {
            match self.book.take_statement(wire) {
                Ok(_) => {}
                Err(why) => tracing::warn!(?why, "this node's own statement was refused"),
            }
            statement_seq = self
                .book
                .statements()
                .into_iter()
                .find(|(p, _)| *p == self.book.me())
                .map(|(_, h)| h.value.seq);
        }
        let gathered = self.gather(statement_seq).await;
        let report = self.reporter.make(now, &self.metrics, &gathered);
        let wire = match report.check() {
            Ok(()) => report.sign(self.identity.signing_key()).to_bytes(),
            Err(e) => {
                tracing::warn!(error = %e, "this node's report is out of bounds");
                return;
            }
        };
        if let Err(why) = self.book.take_report(&wire) {
            tracing::warn!(?why, "this node's own report was refused");
        }
        self.remember(&report).await;
        let Some(peers) = &self.peers else { return };
        let mut out = vec![(net::REPORTS_TOPIC, wire)];
        out.extend(statement.map(|s| (net::STATEMENTS_TOPIC, s)));
        for (topic, data) in out {
            if let Err(e) = peers.client().publish(topic, data).await {
                tracing::debug!(topic, error = %e, "could not gossip");
            }
        }
    }

    /// The window into the hourly history, and the popularity counts into the store.
    async fn remember(&self, report: &open_registry_protocol::report::Report) {
        use open_registry_protocol::report::{KEY_LAG_SECONDS, KEY_LAG_SEQ, KEY_PACKUMENTS};
        let gauges = |v: [(&str, Option<u64>); 3]| {
            v.into_iter()
                .filter_map(|(k, v)| Some((k.to_owned(), v?)))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let own = gauges([
            ("lag_seconds", report.values.get(KEY_LAG_SECONDS).copied()),
            ("lag_seq", report.values.get(KEY_LAG_SEQ).copied()),
            (
                "packuments_cached",
                report.values.get(KEY_PACKUMENTS).copied(),
            ),
        ]);
        let view = self.book.view();
        let mut network = gauges([
            ("lag_seconds", Some(view.lag.max_seconds)),
            ("lag_seq", Some(view.lag.max_seq)),
            ("packuments_cached", Some(view.packages.cached_max)),
        ]);
        network.insert("instances_online".into(), view.instances.trusted_online);
        let samples = [
            (Series::Node, window_figures(report), own),
            (Series::Network, self.book.drain_window(), network),
        ];
        for (series, adds, gauges) in samples {
            if let Err(e) = self.history.record(series, &adds, &gauges).await {
                tracing::warn!(error = %e, "could not record the hourly history");
            }
        }
        // Durable with the history's writes: the save ends in the index's flush.
        if let Err(e) = self.popularity.save(&self.fetcher.store().index).await {
            tracing::warn!(error = %e, "could not save the popularity counts");
        }
    }

    async fn gather(&self, statement_seq: Option<u64>) -> Gathered {
        let connected = match &self.peers {
            Some(p) => p.client().peers().await.map_or(0, |i| i.connected.len()),
            None => 0,
        };
        let (pins, sync) = (self.pins.clone(), self.sync.clone());
        // A scan of the pins and their packument entries: off the runtime.
        let (pins, sync) = tokio::task::spawn_blocking(move || {
            (pins.list().map_or(0, |l| l.len() as u64), sync.status())
        })
        .await
        .unwrap_or_default();
        Gathered {
            traffic: self.traffic.snapshot(),
            store: self.fetcher.store().stats(),
            pins,
            peers: connected as u64,
            sync,
            upstream_down: self
                .fetcher
                .upstream()
                .and_then(|u| u.health())
                .is_some_and(|h| h.state != "closed"),
            statement_seq,
        }
    }
}
