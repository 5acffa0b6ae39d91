//! The handle the rest of the node uses to reach the network.
//!
//! [`Client`] is cheap to clone. DHT and connection calls become a `Command` carrying a
//! oneshot reply, sent over a bounded channel to the task that owns the Swarm; blob fetches
//! open a stream directly (through `libp2p-stream`'s control, which needs no Swarm access)
//! after asking that task to connect. Every call has a deadline: the caller's, or
//! [`COMMAND_TIMEOUT`] for calls that only touch local state.

use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use open_registry_protocol::BlobId;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::{Instant, timeout_at};

use super::blob::{self, BLOB_PROTOCOL, Status};
use super::record_ids::{self, RECORD_IDS_PROTOCOL};
use super::{Limits, NetError, Transfer};

/// The deadline for calls that only touch the swarm task's local state.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a blob or record-ids request whose stream closed before any answer is sent again.
pub const DROPPED_STREAM_RETRIES: u32 = 4;

/// How long past a query's own deadline the caller waits for the partial answer.
const REPLY_GRACE: Duration = Duration::from_secs(1);

pub(crate) type Reply<T> = oneshot::Sender<Result<T, NetError>>;

/// A request to the swarm task.
#[derive(Debug)]
pub(crate) enum Command {
    Provide {
        ids: Vec<BlobId>,
        /// Announce before the schedule (a package just stored), not after it (a start).
        fresh: bool,
        reply: Reply<()>,
    },
    Unprovide {
        id: BlobId,
        reply: Reply<()>,
    },
    FindProviders {
        id: BlobId,
        limit: usize,
        deadline: Instant,
        reply: Reply<Vec<PeerId>>,
    },
    PutRecord {
        values: Vec<OwnValue>,
        /// Put before the schedule (a value just made), not after it (a start).
        fresh: bool,
        reply: Reply<()>,
    },
    GetRecords {
        key: Vec<u8>,
        deadline: Instant,
        /// End the query at the first valid value a remote peer returns.
        first: bool,
        reply: Reply<Vec<FoundRecord>>,
    },
    Peers {
        reply: Reply<PeersInfo>,
    },
    Dial {
        addr: Multiaddr,
        deadline: Instant,
        reply: Reply<PeerId>,
    },
    Connect {
        peer: PeerId,
        reply: Reply<()>,
    },
    Bootstrap {
        deadline: Instant,
        reply: Reply<()>,
    },
    Subscribe {
        topic: String,
        reply: Reply<mpsc::Receiver<super::gossip::Message>>,
    },
    Publish {
        topic: String,
        data: Vec<u8>,
        reply: Reply<()>,
    },
}

/// A value this node publishes in the DHT under `key`, meant to live `lives` on the peers that
/// store it (capped at [`RECORD_TTL`](super::RECORD_TTL)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnValue {
    /// The DHT key.
    pub key: Vec<u8>,
    /// The value, as our validator accepts it.
    pub value: Vec<u8>,
    /// How long it stays valid from now.
    pub lives: Duration,
}

/// A value found in the DHT. Only the validator vouches for it: `from` answered the query, and
/// `publisher` is what that peer claims (unauthenticated). Trust comes from the value's own
/// signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundRecord {
    /// The peer that returned the value (our own id for our local copy).
    pub from: PeerId,
    /// The publisher the record names, if any.
    pub publisher: Option<PeerId>,
    /// The value; it passed the validator.
    pub value: Vec<u8>,
}

/// What `open-registry peers` shows.
#[derive(Debug, Clone)]
pub struct PeersInfo {
    /// Our peer id.
    pub local: PeerId,
    /// Connected peers and the addresses of their connections.
    pub connected: Vec<(PeerId, Vec<Multiaddr>)>,
    /// Peers in the Kademlia routing table.
    pub routing_table_size: usize,
    /// Addresses we listen on.
    pub listen: Vec<Multiaddr>,
    /// Addresses confirmed as reachable from outside.
    pub external: Vec<Multiaddr>,
    /// Whether Kademlia currently answers queries (server mode).
    pub kad_server: bool,
    /// What AutoNAT found out about reaching us from outside.
    pub reachability: crate::net::reach::Verdict,
    /// Relays that hold a reservation of ours (while private).
    pub relays: Vec<PeerId>,
    /// Whether we offer a circuit relay now (the hop protocol is advertised).
    pub relay_offered: bool,
    /// The last DCUtR outcome with each connected peer it was tried with (`true`: upgraded
    /// to a direct connection).
    pub dcutr: Vec<(PeerId, bool)>,
    /// Keys we provide (one per package held; blob ids given to [`Client::provide`]).
    pub provided: usize,
    /// Values we publish and republish while they live (signed pointers, advisories).
    pub published: usize,
    /// The announcer's budget, cost estimate and cycle.
    pub announcer: super::PacerStatus,
    /// Values we store for the network.
    pub records_stored: usize,
    /// Blob ids for which we store other peers' provider records.
    pub provider_keys_stored: usize,
}

/// A handle to the network; clone freely.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    local: PeerId,
    outbound: Arc<Semaphore>,
    max_blob_size: u64,
    stall: Duration,
    rtts: super::Rtts,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("local", &self.local)
            .finish()
    }
}

impl Client {
    pub(crate) fn new(
        commands: mpsc::Sender<Command>,
        control: libp2p_stream::Control,
        local: PeerId,
        limits: &Limits,
        rtts: super::Rtts,
    ) -> Client {
        Client {
            commands,
            control,
            local,
            outbound: Arc::new(Semaphore::new(limits.max_outbound_transfers)),
            max_blob_size: limits.max_blob_size,
            stall: limits.stall_timeout,
            rtts,
        }
    }

    /// The measured round-trip times of the connected peers.
    pub fn rtts(&self) -> &super::Rtts {
        &self.rtts
    }

    /// Our libp2p peer id (the same string as the operator's protocol `PeerId`).
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// Starts providing key `id` (a blob id, or a package's
    /// [`provider_key`](open_registry_protocol::pointer::provider_key)): we answer provider
    /// queries for it at once, and announce it as soon as we have peers and the message budget
    /// allows, before anything already scheduled, then once a cycle
    /// ([`REANNOUNCE_INTERVAL`](super::REANNOUNCE_INTERVAL) or longer, `net::pacer`).
    pub async fn provide(&self, id: &BlobId) -> Result<(), NetError> {
        let ids = vec![*id];
        self.local("provide", |reply| Command::Provide {
            ids,
            fresh: true,
            reply,
        })
        .await
    }

    /// Starts providing every key of `ids`, in one command (a start's whole announcement set):
    /// announced in turn behind what is already due, at the message budget's rate. Stops at
    /// the first the store refuses (its bound), keeping the ones before.
    pub async fn provide_many(&self, ids: Vec<BlobId>) -> Result<(), NetError> {
        self.local("provide", |reply| Command::Provide {
            ids,
            fresh: false,
            reply,
        })
        .await
    }

    /// Stops providing `id`. Records already on other peers expire within
    /// [`PROVIDER_RECORD_TTL`](super::PROVIDER_RECORD_TTL).
    pub async fn unprovide(&self, id: &BlobId) -> Result<(), NetError> {
        let id = *id;
        self.local("unprovide", |reply| Command::Unprovide { id, reply })
            .await
    }

    /// Up to `limit` peers that announced `id`, not counting us, found within `deadline`
    /// (what was found by then, possibly nothing). Found peers are dialed right away, while
    /// their addresses are known.
    pub async fn find_providers(
        &self,
        id: &BlobId,
        limit: usize,
        deadline: Duration,
    ) -> Result<Vec<PeerId>, NetError> {
        let id = *id;
        let at = Instant::now() + deadline;
        self.call("find_providers", at + REPLY_GRACE, |reply| {
            Command::FindProviders {
                id,
                limit,
                deadline: at,
                reply,
            }
        })
        .await
    }

    /// Stores `value` under `key` locally and publishes it to the closest peers for
    /// [`RECORD_TTL`](super::RECORD_TTL): see [`Client::put_record_for`].
    pub async fn put_record(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), NetError> {
        self.put_record_for(key, value, super::RECORD_TTL).await
    }

    /// Stores `value` under `key` locally and publishes it to the closest peers, to live
    /// `lives` there (at most [`RECORD_TTL`](super::RECORD_TTL)): put as soon as we have peers
    /// and the message budget allows, before anything already scheduled, then again once a
    /// cycle while it lives (the announcement schedule, `net::pacer`).
    /// [`NetError::InvalidRecord`] if our own validator refuses it.
    pub async fn put_record_for(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        lives: Duration,
    ) -> Result<(), NetError> {
        let values = vec![OwnValue { key, value, lives }];
        self.local("put_record", |reply| Command::PutRecord {
            values,
            fresh: true,
            reply,
        })
        .await
    }

    /// Republishes values we published before (a start's pointers): stored locally at once,
    /// put in turn behind what is already due, at the message budget's rate, then once a cycle
    /// while each lives. Stops at the first that is refused (our validator, the store's bound),
    /// keeping the ones before.
    pub async fn republish_records(&self, values: Vec<OwnValue>) -> Result<(), NetError> {
        self.local("put_record", |reply| Command::PutRecord {
            values,
            fresh: false,
            reply,
        })
        .await
    }

    /// The distinct valid values stored under `key` that were found within `deadline`, ours
    /// first if we hold one.
    pub async fn get_records(
        &self,
        key: Vec<u8>,
        deadline: Duration,
    ) -> Result<Vec<FoundRecord>, NetError> {
        self.records(key, deadline, false).await
    }

    /// Like [`Client::get_records`], but the query ends as soon as a remote peer returns a
    /// valid value (our own copy, if we hold one, is in the answer too). For values of which
    /// any valid one is good enough: a signed pointer, whose signer's newest the caller picks
    /// from what arrived, instead of waiting for every closest peer to answer or time out.
    pub async fn get_first_records(
        &self,
        key: Vec<u8>,
        deadline: Duration,
    ) -> Result<Vec<FoundRecord>, NetError> {
        self.records(key, deadline, true).await
    }

    async fn records(
        &self,
        key: Vec<u8>,
        deadline: Duration,
        first: bool,
    ) -> Result<Vec<FoundRecord>, NetError> {
        let at = Instant::now() + deadline;
        self.call("get_records", at + REPLY_GRACE, |reply| {
            Command::GetRecords {
                key,
                deadline: at,
                first,
                reply,
            }
        })
        .await
    }

    /// Subscribes to a gossip topic; messages arrive on the returned channel (bounded: when
    /// the receiver falls behind, new messages are dropped).
    pub async fn subscribe(
        &self,
        topic: &str,
    ) -> Result<mpsc::Receiver<super::gossip::Message>, NetError> {
        let topic = topic.to_owned();
        self.local("subscribe", |reply| Command::Subscribe { topic, reply })
            .await
    }

    /// Publishes `data` on a gossip topic to every subscribed peer.
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<(), NetError> {
        let topic = topic.to_owned();
        self.local("publish", |reply| Command::Publish { topic, data, reply })
            .await
    }

    /// Connected peers, routing table size and store sizes.
    pub async fn peers(&self) -> Result<PeersInfo, NetError> {
        self.local("peers", |reply| Command::Peers { reply }).await
    }

    /// The addresses we listen on now.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        Ok(self.peers().await?.listen)
    }

    /// Dials `addr` (with or without `/p2p/<id>`) and returns the peer once connected.
    pub async fn dial(&self, addr: Multiaddr, deadline: Duration) -> Result<PeerId, NetError> {
        let at = Instant::now() + deadline;
        self.call("dial", at + REPLY_GRACE, |reply| Command::Dial {
            addr,
            deadline: at,
            reply,
        })
        .await
    }

    /// Refreshes the routing table by looking up our own id; done when the lookup is.
    pub async fn bootstrap(&self, deadline: Duration) -> Result<(), NetError> {
        let at = Instant::now() + deadline;
        self.call("bootstrap", at + REPLY_GRACE, |reply| Command::Bootstrap {
            deadline: at,
            reply,
        })
        .await
    }

    /// The blob ids of the signed records `peer` holds for package `name` (the
    /// [record-ids protocol](super::record_ids)). Unverified: the caller fetches and checks each.
    pub async fn record_ids(
        &self,
        peer: PeerId,
        name: &str,
        deadline: Duration,
    ) -> Result<Vec<BlobId>, NetError> {
        let at = Instant::now() + deadline;
        let timeout = |what| NetError::Timeout {
            what,
            after: deadline,
        };
        self.call("connect", at, |reply| Command::Connect { peer, reply })
            .await?;
        retry_dropped(at, || async {
            let mut stream = self
                .open_stream(peer, RECORD_IDS_PROTOCOL, at, deadline)
                .await?;
            let io = |e: std::io::Error| NetError::Io {
                peer,
                reason: e.to_string(),
            };
            timeout_at(at, record_ids::write_request(&mut stream, name))
                .await
                .map_err(|_| timeout("sending a record-ids request"))?
                .map_err(io)?;
            timeout_at(at, record_ids::read_answer(&mut stream))
                .await
                .map_err(|_| timeout("waiting for record ids"))?
                .map_err(io)
        })
        .await
    }

    /// Fetches blob `id` from `peer`: see [`Client::fetch_at`] with offset 0.
    pub async fn fetch(
        &self,
        peer: PeerId,
        id: &BlobId,
        max_len: u64,
        deadline: Duration,
    ) -> Result<Transfer, NetError> {
        self.fetch_at(peer, id, 0, max_len, deadline).await
    }

    /// Fetches blob `id` from `peer`, starting at byte `offset`. Fails at once if the peer
    /// announces a blob longer than `max_len` (clamped to the configured maximum); the returned
    /// [`Transfer`] yields the bytes, aborting if `deadline` (counted from this call) passes or
    /// no byte arrives for the stall timeout. The bytes are not verified here.
    pub async fn fetch_at(
        &self,
        peer: PeerId,
        id: &BlobId,
        offset: u64,
        max_len: u64,
        deadline: Duration,
    ) -> Result<Transfer, NetError> {
        let started = Instant::now();
        let at = started + deadline;
        let timeout = |what| NetError::Timeout {
            what,
            after: deadline,
        };
        let max_len = max_len.min(self.max_blob_size);
        let permit = timeout_at(at, self.outbound.clone().acquire_owned())
            .await
            .map_err(|_| timeout("waiting for a transfer slot"))?
            .map_err(|_| NetError::Stopped)?;
        self.call("connect", at, |reply| Command::Connect { peer, reply })
            .await?;
        let (stream, status, remaining) =
            retry_dropped(at, || self.request(peer, id, offset, at, deadline)).await?;
        let remaining = match (Status::from_byte(status), remaining) {
            (Some(Status::Ok), Some(r)) => r,
            (Some(Status::NotFound), _) => return Err(NetError::NotFound { peer }),
            (Some(Status::BadRequest), _) => {
                return Err(NetError::Refused {
                    peer,
                    reason: "bad request",
                });
            }
            (Some(Status::Unavailable), _) => {
                return Err(NetError::Refused {
                    peer,
                    reason: "blob unavailable",
                });
            }
            _ => {
                return Err(NetError::Protocol {
                    peer,
                    reason: format!("unknown status {status}"),
                });
            }
        };
        let total = offset.saturating_add(remaining);
        if total > max_len {
            return Err(NetError::TooLarge {
                peer,
                len: total,
                max: max_len,
            });
        }
        Ok(Transfer::new(
            peer, stream, remaining, self.stall, started, deadline, permit,
        ))
    }

    /// Opens a blob stream to `peer`, sends the request and reads the response header.
    async fn request(
        &self,
        peer: PeerId,
        id: &BlobId,
        offset: u64,
        at: Instant,
        deadline: Duration,
    ) -> Result<(libp2p::Stream, u8, Option<u64>), NetError> {
        let timeout = |what| NetError::Timeout {
            what,
            after: deadline,
        };
        let mut stream = self.open_stream(peer, BLOB_PROTOCOL, at, deadline).await?;
        let io = |e: std::io::Error| NetError::Io {
            peer,
            reason: e.to_string(),
        };
        timeout_at(at, blob::write_request(&mut stream, id, offset))
            .await
            .map_err(|_| timeout("sending a blob request"))?
            .map_err(io)?;
        let header_by = at.min(Instant::now() + self.stall);
        let (status, remaining) = timeout_at(header_by, blob::read_header(&mut stream))
            .await
            .map_err(|_| {
                if header_by == at {
                    timeout("waiting for the blob header")
                } else {
                    NetError::Stalled {
                        peer,
                        after: self.stall,
                        got: 0,
                    }
                }
            })?
            .map_err(io)?;
        Ok((stream, status, remaining))
    }

    /// Opens a stream of `protocol` to `peer` (already connected) by `at`.
    async fn open_stream(
        &self,
        peer: PeerId,
        protocol: libp2p::StreamProtocol,
        at: Instant,
        deadline: Duration,
    ) -> Result<libp2p::Stream, NetError> {
        let mut control = self.control.clone();
        timeout_at(at, control.open_stream(peer, protocol))
            .await
            .map_err(|_| NetError::Timeout {
                what: "opening a stream",
                after: deadline,
            })?
            .map_err(|e| match e {
                // Its answer will not change: not worth asking again.
                libp2p_stream::OpenStreamError::UnsupportedProtocol(_) => NetError::Refused {
                    peer,
                    reason: "protocol not supported",
                },
                e => NetError::Open {
                    peer,
                    reason: e.to_string(),
                },
            })
    }

    /// Sends a command that only touches local state, with [`COMMAND_TIMEOUT`].
    async fn local<T>(
        &self,
        what: &'static str,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, NetError> {
        self.call(what, Instant::now() + COMMAND_TIMEOUT, make)
            .await
    }

    /// Sends a command and waits for its reply until `at`.
    async fn call<T>(
        &self,
        what: &'static str,
        at: Instant,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, NetError> {
        let after = at.saturating_duration_since(Instant::now());
        let (tx, rx) = oneshot::channel();
        timeout_at(at, self.commands.send(make(tx)))
            .await
            .map_err(|_| NetError::Timeout { what, after })?
            .map_err(|_| NetError::Stopped)?;
        timeout_at(at, rx)
            .await
            .map_err(|_| NetError::Timeout { what, after })?
            .map_err(|_| NetError::Stopped)?
    }
}

/// Runs `request` (one stream: open, ask, read the first of the answer) again when the stream
/// failed to open or closed before an answer (not when the peer answered or refused), up to [`DROPPED_STREAM_RETRIES`] times by `at`, with
/// jittered backoff. A server under a burst of requests may drop a new stream before reading
/// it (the stream layer queues few inbound streams per protocol): nothing was answered then,
/// so asking again is safe, where giving up would send the caller to the DHT or to a farther
/// peer.
async fn retry_dropped<T, F, Fut>(at: Instant, mut request: F) -> Result<T, NetError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, NetError>>,
{
    let mut attempt = 0u32;
    loop {
        match request().await {
            Ok(r) => return Ok(r),
            Err(NetError::Io { .. } | NetError::Open { .. })
                if attempt < DROPPED_STREAM_RETRIES && Instant::now() < at =>
            {
                attempt += 1;
                let jitter =
                    u64::from(std::process::id() ^ attempt.wrapping_mul(2_654_435_761)) % 20;
                let wait = Duration::from_millis(20 * (1 << attempt) + jitter);
                tokio::time::sleep(wait.min(at.saturating_duration_since(Instant::now()))).await;
            }
            Err(e) => return Err(e),
        }
    }
}
